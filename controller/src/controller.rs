//! `plover controller`: the in-cluster process. Serves `/metrics` and `/healthz`, waits to
//! become leader on a Lease, then runs the Canary controller until a signal or until it
//! loses the lease (then it exits, to come back as a follower).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use k8s_openapi::{api::coordination::v1::Lease, jiff::Timestamp};
use kube::{
    api::Api,
    runtime::events::{Recorder, Reporter},
    Client,
};
use tracing::info;

use plover_analysis::provider::{Providers, Settings};

use crate::{
    lease::{Elector, LeaseError},
    metrics::{self, Metrics},
    observe::Exporter,
    reconcile::{self, Context},
    runner::Runner,
};

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("Canary CRD not reachable ({0}); install it with: plover crd | kubectl apply -f -")]
    Crd(#[source] kube::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("{0}")]
    Setup(String),
}

pub struct Options {
    /// Watch one namespace only.
    pub namespace: Option<String>,
    pub metrics_addr: SocketAddr,
    /// Compete for the Lease (off: run at once, for a single replica or development).
    pub leader_elect: bool,
    pub lease_name: String,
    pub lease_namespace: String,
    /// This replica's identity in the Lease (pod name).
    pub identity: String,
    pub lease_duration: Duration,
    /// Provider settings for analysis runs.
    pub settings: Settings,
    /// Notification targets of every Canary (`--notify`).
    pub notify: Vec<crate::notify::Target>,
}

pub async fn run(opts: Options) -> Result<(), ControllerError> {
    let client = Client::try_default()
        .await
        .map_err(ControllerError::Client)?;
    let metrics = Arc::new(Metrics::new());
    let listener = tokio::net::TcpListener::bind(opts.metrics_addr)
        .await
        .map_err(|source| ControllerError::Listen {
            addr: opts.metrics_addr,
            source,
        })?;
    info!(addr = %opts.metrics_addr, "Serving /metrics and /healthz.");
    tokio::spawn(metrics::serve(listener, metrics.clone()));

    let elector = Elector {
        api: Api::<Lease>::namespaced(client.clone(), &opts.lease_namespace),
        name: opts.lease_name.clone(),
        identity: opts.identity.clone(),
        duration: opts.lease_duration,
    };
    if opts.leader_elect {
        elector.acquire().await?;
    }

    let providers =
        Providers::new(opts.settings.clone()).map_err(|e| ControllerError::Setup(e.to_string()))?;
    let source = crate::job::JobSource::new(Arc::new(providers), client.clone());
    let (runner, _completed) = Runner::new(Arc::new(source), Arc::new(std::time::SystemTime::now));
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "plover".into(),
                instance: Some(opts.identity.clone()),
            },
        ),
        runner,
        traffic: Arc::new(Exporter::new().map_err(ControllerError::Setup)?),
        metrics,
        now: Arc::new(Timestamp::now),
        notifier: crate::notify::Notifier::new(
            opts.notify.clone(),
            crate::notify::RetryPolicy::default(),
        ),
    });
    let controller = reconcile::run(ctx, opts.namespace.clone());
    if opts.leader_elect {
        tokio::select! {
            result = controller => result.map_err(ControllerError::Crd),
            lost = elector.hold() => Err(lost.into()),
        }
    } else {
        controller.await.map_err(ControllerError::Crd)
    }
}
