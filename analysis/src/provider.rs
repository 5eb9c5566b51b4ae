//! Metric providers: the only part of the analysis engine that does I/O.
//!
//! A [`Source`] turns a metric into an [`Outcome`] (a value for the conditions, or a verdict
//! the provider reached itself, such as Plover's "too little traffic"). [`measure`] wraps one
//! query into a finished [`Measurement`]: provider failures become Error measurements, as in
//! Argo, and values are judged by [`judge`](super::judge).

pub mod jsonpath;
pub mod plover;
pub mod prometheus;
mod sigv4;
pub mod web;

use std::{
    collections::HashMap,
    future::Future,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use super::{
    judge,
    phase::Phase,
    provider::plover::vs_stable::EvidenceRecord,
    run::Measurement,
    template::{MetricSpec, ProviderSpec},
    value::Value,
};

/// What a provider found.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// A value for the conditions, and its text for the measurement (`0.98`, `[0.98]`).
    Value { value: Value, text: String },
    /// The provider decided the phase itself (Plover's `noData`); conditions are not evaluated.
    Decided {
        phase: Phase,
        text: String,
        message: String,
    },
    /// A canary-versus-stable judge decided, with the statistics of its look.
    Judged {
        phase: Phase,
        evidence: Box<EvidenceRecord>,
        message: String,
    },
}

/// Why a provider could not produce a value. Every variant makes the measurement an Error.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The metric's configuration cannot be used (bad address, both body kinds …).
    #[error("{0}")]
    Config(String),
    /// The request failed or timed out.
    #[error("{0}")]
    Transport(String),
    /// The server answered, but not with a usable result.
    #[error("{0}")]
    Response(String),
    /// The metric's provider cannot run here.
    #[error("{provider}: {reason}")]
    Unsupported { provider: String, reason: String },
}

/// Where an analysis run lives: its namespace, the Canary it judges and its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunIdentity {
    pub namespace: String,
    pub canary: String,
    pub run: String,
}

/// Why a job metric cannot be measured by a source without a cluster.
pub const JOB_NEEDS_A_CLUSTER: &str =
    "the job provider runs a Kubernetes Job, which needs a cluster (the controller, or plover analyze --kubeconfig)";

/// A boxed future, so that [`Source`] stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that can query a metric's provider.
pub trait Source: Send + Sync {
    fn query<'a>(&'a self, metric: &'a MetricSpec)
        -> BoxFuture<'a, Result<Outcome, ProviderError>>;

    /// A source for one new analysis run, when this one keeps state across a run's
    /// measurements (Plover's `…VsStable` judges): the caller should use it for every
    /// measurement of that run, so that each run starts its tests fresh. `None`: use `self`.
    fn for_run(&self) -> Option<Arc<dyn Source>> {
        None
    }

    /// [`Source::for_run`] for a run that has a place in a cluster: what the job provider
    /// needs to name its Jobs and put them in the run's namespace.
    fn for_named_run(&self, run: &RunIdentity) -> Option<Arc<dyn Source>> {
        let _ = run;
        self.for_run()
    }

    /// Why this source cannot measure `metric` at all, if so (see [`runnable`]).
    fn unsupported(&self, metric: &MetricSpec) -> Option<String> {
        match &metric.provider {
            ProviderSpec::Unsupported { reason, .. } => Some(reason.clone()),
            _ => None,
        }
    }
}

/// The metrics of an analysis that will be measured, and those left out with why.
#[derive(Clone, Debug)]
pub struct Runnable {
    pub metrics: Vec<MetricSpec>,
    pub skipped: Vec<(MetricSpec, String)>,
}

/// Sorts `metrics` by whether `source` can measure them. One rule for `plover analyze`, the
/// controller and local mode: a metric that cannot be measured here is refused before anything
/// runs (`Err` names it) — left out, it would drop a gate without a word; measured, it could
/// only ever be an Error and roll the release back — unless it is dry-run, which cannot change
/// the run's phase anyway: then it is left out and reported as skipped.
pub fn runnable(source: &dyn Source, metrics: &[MetricSpec]) -> Result<Runnable, String> {
    let mut out = Runnable {
        metrics: Vec::new(),
        skipped: Vec::new(),
    };
    for metric in metrics {
        match source.unsupported(metric) {
            None => out.metrics.push(metric.clone()),
            Some(reason) if metric.dry_run => out.skipped.push((metric.clone(), reason)),
            Some(reason) => {
                return Err(format!(
                    "metric {:?} cannot be measured here: {reason}; list it under dryRun to run \
                     the analysis without it",
                    metric.name
                ))
            }
        }
    }
    Ok(out)
}

/// Addresses that complete or override the templates' own, and the CAs https trusts.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Replaces every prometheus metric's `address` (`plover analyze --prometheus`).
    pub prometheus_override: Option<String>,
    /// Used when a prometheus metric has no address (Argo's `ARGO_ROLLOUTS_PROMETHEUS_ADDRESS`).
    pub prometheus_default: Option<String>,
    /// The exporter, for plover metrics without `address` (`--exporter`, `PLOVER_EXPORTER_ADDRESS`).
    pub exporter: Option<String>,
    /// PEM files of CA certificates https trusts besides the system's (`--ca-file`).
    pub ca_files: Vec<PathBuf>,
}

/// The real providers over HTTP.
#[derive(Clone, Debug)]
pub struct Providers {
    /// For `http://` addresses.
    http: reqwest::Client,
    /// For `https://`: verifies against the system's roots and `ca_files`. An error (no roots
    /// at all, e.g. in a scratch image without `--ca-file`) is kept and reported only where
    /// https is used, so that http keeps working.
    https: Result<reqwest::Client, String>,
    /// For `https://` with the metric's `insecure: true`: no certificate checks (as Argo).
    insecure: reqwest::Client,
    settings: Settings,
    /// The `…VsStable` judges of this run, by metric name and spec (see [`plover::vs_stable`]).
    judges: Arc<Mutex<HashMap<String, plover::vs_stable::JudgeState>>>,
    /// AWS credentials for SigV4, kept while valid.
    aws_credentials: Arc<sigv4::CredentialCache>,
}

/// The connection timeout of every provider request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Providers::reachable`] waits for an answer.
const REACHABLE_TIMEOUT: Duration = Duration::from_secs(10);

impl Providers {
    pub fn new(settings: Settings) -> Result<Self, ProviderError> {
        install_tls_provider();
        let extra_roots = read_ca_files(&settings.ca_files)?;
        let builder = || reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT);
        let built = |client: reqwest::Result<reqwest::Client>| {
            client.map_err(|e| format!("cannot build the https client: {}", error_chain(&e)))
        };
        let config = |e: String| ProviderError::Config(e);
        Ok(Providers {
            // Never used for https, so it needs no roots.
            http: built(builder().tls_certs_only(Vec::new()).build()).map_err(config)?,
            https: built(builder().tls_certs_merge(extra_roots).build()),
            insecure: built(builder().tls_danger_accept_invalid_certs(true).build())
                .map_err(config)?,
            settings,
            judges: Arc::default(),
            aws_credentials: Arc::default(),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The same providers (clients and settings shared) with no sequential judge yet: what a
    /// new analysis run should measure with ([`Source::for_run`]).
    pub fn for_run(&self) -> Providers {
        Providers {
            judges: Arc::default(),
            ..self.clone()
        }
    }

    /// Takes a metric's judge out (forgetting judges idle for longer than
    /// [`plover::vs_stable::IDLE_EXPIRY_MS`]); [`Providers::put_judge`] puts it back.
    pub(crate) fn take_judge(
        &self,
        key: &str,
        local_now_ms: u64,
    ) -> Option<plover::vs_stable::JudgeState> {
        let mut judges = self.judges.lock().unwrap_or_else(|e| e.into_inner());
        judges.retain(|_, j| {
            local_now_ms.saturating_sub(j.last_look_local_ms) < plover::vs_stable::IDLE_EXPIRY_MS
        });
        judges.remove(key)
    }

    pub(crate) fn put_judge(&self, key: String, judge: plover::vs_stable::JudgeState) {
        let mut judges = self.judges.lock().unwrap_or_else(|e| e.into_inner());
        judges.insert(key, judge);
    }

    /// The client for a URL: plain for http, verifying (or, with `insecure`, not) for https.
    pub(crate) fn client_for(
        &self,
        url: &str,
        insecure: bool,
    ) -> Result<&reqwest::Client, ProviderError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| ProviderError::Config(format!("{url:?} is not a URL: {e}")))?;
        match parsed.scheme() {
            "http" => Ok(&self.http),
            "https" if insecure => Ok(&self.insecure),
            "https" => self
                .https
                .as_ref()
                .map_err(|e| ProviderError::Config(format!("{url}: {e}"))),
            other => Err(ProviderError::Config(format!(
                "{url}: unsupported scheme {other:?} (http or https)"
            ))),
        }
    }

    /// Where a metric's provider connects (`scheme://host:port`) and whether it checks
    /// certificates there (`insecure`): `None` for a provider without an address (or with
    /// one that is not a URL: its measurement will say so).
    pub fn endpoint(&self, metric: &MetricSpec) -> Option<(String, bool)> {
        let (address, insecure) = match &metric.provider {
            ProviderSpec::Prometheus(spec) => (self.prometheus_address(spec)?, spec.insecure),
            ProviderSpec::Web(spec) => (spec.url.clone(), spec.insecure),
            ProviderSpec::Plover(spec) => (plover::address(self, spec).ok()?, false),
            ProviderSpec::Job(_) | ProviderSpec::Unsupported { .. } => return None,
        };
        let url = reqwest::Url::parse(&address).ok()?;
        let host = url.host_str()?;
        let port = url.port_or_known_default()?;
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        Some((format!("{}://{host}:{port}", url.scheme()), insecure))
    }

    /// Whether `endpoint` answers at all, as a measurement would reach it (name resolution,
    /// connection, TLS): one `GET /`, whose status does not matter. What `plover analyze`
    /// checks before a run, so that a wrong address or CA is reported at once with its cause
    /// instead of after the retries of several measurements.
    pub async fn reachable(&self, endpoint: &str, insecure: bool) -> Result<(), ProviderError> {
        let client = self.client_for(endpoint, insecure)?;
        client
            .get(format!("{endpoint}/"))
            .timeout(REACHABLE_TIMEOUT)
            .send()
            .await
            .map(drop)
            .map_err(|e| ProviderError::Transport(format!("{endpoint}: {}", error_chain(&e))))
    }

    /// The address a prometheus metric will query, after overrides and defaults.
    pub fn prometheus_address(&self, spec: &super::template::PrometheusSpec) -> Option<String> {
        self.settings
            .prometheus_override
            .clone()
            .or_else(|| (!spec.address.is_empty()).then(|| spec.address.clone()))
            .or_else(|| self.settings.prometheus_default.clone())
    }
}

/// Makes https usable by reqwest in this process: rustls needs a process-wide crypto
/// provider, and ring is the one kube already uses. Already installed (by an earlier call or by
/// the embedding program) is fine.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The certificates of every PEM file, each file read once with a clear error.
fn read_ca_files(paths: &[PathBuf]) -> Result<Vec<reqwest::Certificate>, ProviderError> {
    let mut certificates = Vec::new();
    for path in paths {
        let pem = std::fs::read(path).map_err(|e| {
            ProviderError::Config(format!("--ca-file {}: cannot read it: {e}", path.display()))
        })?;
        let found = reqwest::Certificate::from_pem_bundle(&pem)
            .ok()
            .filter(|found| !found.is_empty())
            .ok_or_else(|| {
                ProviderError::Config(format!(
                    "--ca-file {}: expected PEM certificates (-----BEGIN CERTIFICATE-----), found none",
                    path.display()
                ))
            })?;
        certificates.extend(found);
    }
    Ok(certificates)
}

/// An error with its causes (`error sending request: connection refused`): reqwest's own
/// message leaves the cause out.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl Source for Providers {
    fn query<'a>(
        &'a self,
        metric: &'a MetricSpec,
    ) -> BoxFuture<'a, Result<Outcome, ProviderError>> {
        Box::pin(async move {
            match &metric.provider {
                ProviderSpec::Prometheus(spec) => prometheus::query(self, spec).await,
                ProviderSpec::Web(spec) => web::query(self, spec).await,
                ProviderSpec::Plover(spec) => plover::query(self, &metric.name, spec).await,
                ProviderSpec::Job(_) => Err(ProviderError::Unsupported {
                    provider: "job".to_owned(),
                    reason: JOB_NEEDS_A_CLUSTER.to_owned(),
                }),
                ProviderSpec::Unsupported { provider, reason } => Err(ProviderError::Unsupported {
                    provider: provider.clone(),
                    reason: reason.clone(),
                }),
            }
        })
    }

    fn for_run(&self) -> Option<Arc<dyn Source>> {
        Some(Arc::new(Providers::for_run(self)))
    }

    /// Also what this build's providers cannot do: Prometheus range queries, OAuth2 and
    /// web OAuth2 (decided before the run starts).
    fn unsupported(&self, metric: &MetricSpec) -> Option<String> {
        match &metric.provider {
            ProviderSpec::Unsupported { reason, .. } => Some(reason.clone()),
            ProviderSpec::Prometheus(p) => prometheus::unsupported(p),
            ProviderSpec::Web(w) => web::unsupported(w),
            ProviderSpec::Plover(_) => None,
            ProviderSpec::Job(_) => Some(JOB_NEEDS_A_CLUSTER.to_owned()),
        }
    }
}

/// Takes one measurement of `metric`: query, then judge. `now` stamps start and finish.
pub async fn measure(
    source: &dyn Source,
    metric: &MetricSpec,
    now: &(dyn Fn() -> SystemTime + Sync),
) -> Measurement {
    let started_at = now();
    let mut evidence = None;
    let (phase, value, message) = match source.query(metric).await {
        Err(e) => (Phase::Error, String::new(), Some(e.to_string())),
        Ok(Outcome::Decided {
            phase,
            text,
            message,
        }) => (phase, text, Some(message)),
        Ok(Outcome::Judged {
            phase,
            evidence: record,
            message,
        }) => {
            // Plain numbers and strings: serializing cannot fail.
            let text = serde_json::to_string(&record).unwrap_or_default();
            evidence = Some(*record);
            (phase, text, Some(message))
        }
        Ok(Outcome::Value { value, text }) => {
            let j = judge::judge(
                &value,
                metric.success_condition.as_deref(),
                metric.failure_condition.as_deref(),
            );
            (j.phase, text, j.message)
        }
    };
    Measurement {
        phase,
        value,
        message,
        evidence,
        started_at,
        finished_at: now(),
    }
}
