//! The processes and servers of the demo: the app's revisions, the exporter, Prometheus,
//! Envoy fed from watched files, and the load generator.
//!
//! The gateway has two revision clusters, `stable` and `canary` (the Canary's workloads). A
//! release points `canary` at the new revision's backend; a promotion points `stable` at it.
//! Both happen by rewriting the CDS file (renamed into the watched directory, as the controller's
//! router does for routes), so Envoy picks them up without a restart.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plover_controller::router::envoy_file;
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

use super::config::DemoConfig;
use super::prometheus::Prometheus;
use super::DemoError;
use crate::backend::Backend;
use crate::envoy::{clusters_document, Envoy, FileGatewaySpec, WasmFilter};
use crate::http::{client, get};

/// Bearer token between the filter and the exporter (both are ours, on loopback).
const TOKEN: &str = "plover-demo";
/// Header the demo app names its revision in.
const REVISION_HEADER: &str = "x-app-revision";

/// Which revision each workload (Envoy cluster) serves, and the backends behind them.
pub struct Workloads {
    stable_cluster: String,
    canary_cluster: String,
    clusters_file: PathBuf,
    stable: String,
    canary: String,
    backends: BTreeMap<String, Backend>,
}

impl Workloads {
    pub fn stable(&self) -> &str {
        &self.stable
    }

    pub fn canary(&self) -> &str {
        &self.canary
    }

    pub fn backend(&self, revision: &str) -> Option<&Backend> {
        self.backends.get(revision)
    }

    fn write_clusters(&mut self) -> Result<(), DemoError> {
        // Backends neither cluster serves any more are stopped.
        let (stable, canary) = (self.stable.clone(), self.canary.clone());
        self.backends
            .retain(|revision, _| *revision == stable || *revision == canary);
        let port = |revision: &str| self.backends[revision].port;
        let doc = clusters_document(&[
            (&self.stable_cluster, port(&stable)),
            (&self.canary_cluster, port(&canary)),
        ]);
        let text = serde_json::to_string_pretty(&doc).expect("a JSON value serializes");
        envoy_file::write_atomically(&self.clusters_file, &text)
            .map_err(|e| DemoError::Controller(e.to_string()))?;
        Ok(())
    }

    /// Deploys `backend` as the canary workload (a new release).
    pub fn release(&mut self, backend: Backend) -> Result<(), DemoError> {
        self.canary = backend.revision.clone();
        self.backends.insert(backend.revision.clone(), backend);
        self.write_clusters()
    }

    /// Points the stable workload at the backend of `revision` (the controller's promotion).
    pub fn promote(&mut self, revision: &str) -> Result<(), DemoError> {
        if !self.backends.contains_key(revision) {
            return Err(DemoError::Controller(format!(
                "promote: no backend runs revision {revision}"
            )));
        }
        self.stable = revision.to_owned();
        self.write_clusters()
    }
}

/// Locks the shared workloads (a panic elsewhere leaves plain data behind; keep using it).
pub fn lock(workloads: &Mutex<Workloads>) -> std::sync::MutexGuard<'_, Workloads> {
    workloads
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the load generator saw.
#[derive(Default)]
pub struct LoadCounters {
    pub sent: AtomicU64,
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    /// Transport failures (no HTTP answer at all).
    pub failed: AtomicU64,
    /// Ticks skipped because `maxInFlight` requests were outstanding.
    pub skipped: AtomicU64,
}

/// An open-loop load generator: `rps` GETs a second whatever the answers' latency, so a slow
/// revision cannot slow the load down (closed-loop load would hide it).
pub struct Load {
    pub counters: Arc<LoadCounters>,
    _stop: watch::Sender<bool>,
}

impl Load {
    pub fn start(url: String, rps: f64, max_in_flight: usize) -> Load {
        let counters = Arc::new(LoadCounters::default());
        let (stop, mut stopped) = watch::channel(false);
        let c = counters.clone();
        tokio::spawn(async move {
            let http = client();
            let slots = Arc::new(Semaphore::new(max_in_flight));
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rps));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => return,
                }
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    c.skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let (http, url, c) = (http.clone(), url.clone(), c.clone());
                tokio::spawn(async move {
                    c.sent.fetch_add(1, Ordering::Relaxed);
                    let counter = match get(&http, &url, "").await.0 {
                        0 => &c.failed,
                        500.. => &c.errors,
                        _ => &c.ok,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    drop(slot);
                });
            }
        });
        Load {
            counters,
            _stop: stop,
        }
    }
}

/// The exporter, in process, on a loopback port.
struct Exporter {
    port: u16,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

/// Everything running. Dropping it stops every process and removes the temp dir.
pub struct Stack {
    pub workloads: Arc<Mutex<Workloads>>,
    pub envoy: Envoy,
    pub prometheus: Prometheus,
    pub load: Load,
    pub routes_file: PathBuf,
    exporter: Exporter,
    // Dropped last: the processes above still write into it while they stop.
    pub dir: tempfile::TempDir,
}

impl Stack {
    pub fn exporter_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.exporter.port)
    }

    /// Starts everything, with `initialRevision` (demo.yaml) as the revision of both workloads.
    pub async fn start(config: &DemoConfig) -> Result<Stack, DemoError> {
        let dir = tempfile::Builder::new()
            .prefix("plover-demo-")
            .tempdir()
            .map_err(|e| DemoError::Io {
                what: "create the temp dir".into(),
                source: e,
            })?;
        let xds = dir.path().join("xds");
        std::fs::create_dir(&xds).map_err(|e| DemoError::Io {
            what: format!("create {}", xds.display()),
            source: e,
        })?;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| DemoError::Io {
                what: "bind the exporter".into(),
                source: e,
            })?;
        let exporter_port = listener
            .local_addr()
            .map_err(|e| DemoError::Io {
                what: "exporter address".into(),
                source: e,
            })?
            .port();
        let exporter_config =
            plover_exporter::Config::parse_from(["plover-exporter", "--token", TOKEN]).map_err(
                |e| DemoError::Start {
                    what: "exporter",
                    message: e.to_string(),
                },
            )?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            if let Err(e) = plover_exporter::run(exporter_config, listener, async {
                let _ = stopped.await;
            })
            .await
            {
                eprintln!("plover-demo: exporter stopped: {e}");
            }
        });
        let exporter = Exporter {
            port: exporter_port,
            stop: Some(stop),
            task,
        };

        let prometheus =
            Prometheus::start(dir.path(), &format!("127.0.0.1:{exporter_port}")).await?;

        let initial = &config.initial_revision;
        let backend = Backend::start(initial, config.revisions[initial].clone()).await;
        let workload = &config.canary.spec.workload;
        let mut workloads = Workloads {
            stable_cluster: workload.stable.clone(),
            canary_cluster: workload.canary.clone(),
            clusters_file: xds.join("clusters.json"),
            stable: initial.clone(),
            canary: initial.clone(),
            backends: BTreeMap::from([(initial.clone(), backend)]),
        };
        workloads.write_clusters()?;

        // The routes file is the controller's (its router writes it); the gateway needs one to
        // start with: everything on stable.
        let mut routing = config
            .canary
            .spec
            .traffic_routing
            .envoy
            .clone()
            .expect("checked when the config was loaded");
        let routes_file = xds.join(&routing.routes_file);
        routing.routes_file = routes_file.display().to_string();
        envoy_file::set_weights(&routing, &workload.stable, &workload.canary, 0, 100).map_err(
            |e| DemoError::Start {
                what: "routes file",
                message: e.to_string(),
            },
        )?;

        let (namespace, service) = (config.namespace(), config.service());
        let rule = |cluster: &str, role: &str| serde_json::json!({"match": {"exact": cluster}, "namespace": namespace, "service": service, "role": role});
        let filter = serde_json::json!({
            "exporter": {"cluster": "plover_exporter", "token": TOKEN},
            "sources": ["cluster", "response_header"],
            "response_header": {"name": REVISION_HEADER},
            "rules": [rule(&workload.stable, "stable"), rule(&workload.canary, "canary")],
        });
        let (watched_dir, routes, clusters_file) =
            (xds.clone(), routes_file.clone(), xds.join("clusters.json"));
        let route_config_name = routing.route_config_name.clone();
        let dir_path = dir.path().to_path_buf();
        // The harness reports a missing Envoy or filter, and a gateway that does not come up, by
        // panicking (and waits with blocking sleeps): run it off the runtime and catch that.
        let envoy = tokio::task::spawn_blocking(move || {
            std::panic::catch_unwind(move || {
                let gateway = FileGatewaySpec {
                    watched_dir,
                    routes_file: routes,
                    route_config_name,
                    clusters_file,
                    filter: Some(WasmFilter::plover(filter.to_string())),
                    exporter: Some(("plover_exporter".into(), exporter_port)),
                    // 200 rps need one worker; the second core is for everything else.
                    concurrency: 1,
                };
                Envoy::start_from_files(&gateway, &dir_path)
            })
        })
        .await
        .map_err(|e| DemoError::Start {
            what: "envoy",
            message: e.to_string(),
        })?
        .map_err(|panic| DemoError::Start {
            what: "envoy",
            message: panic_text(panic),
        })?;

        let load = Load::start(envoy.url("/"), config.load.rps, config.load.max_in_flight);
        Ok(Stack {
            workloads: Arc::new(Mutex::new(workloads)),
            envoy,
            prometheus,
            load,
            routes_file,
            exporter,
            dir,
        })
    }
}

/// The message of a caught panic (the harness reports start-up failures by panicking).
fn panic_text(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panicked".into())
}
