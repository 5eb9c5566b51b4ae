//! The processes and servers of the demo: the app's revisions, the exporter, Prometheus,
//! Envoy fed from watched files, and the load generator.
//!
//! The gateway has two fixed clusters, `stable` and `canary` (the spec's `stableCluster` and
//! `canaryCluster`), which the filter counts by role. A release starts the new revision's backend
//! and names it in the spec file; the controller (local mode) then points the `canary` cluster
//! at it, and on promotion the `stable` cluster, by rewriting the CDS file (renamed into the
//! watched directory, as it does the routes), so Envoy picks them up without a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plover_controller::canary::Canary;
use plover_controller::router::{envoy_file, Managed};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

use crate::config::DemoConfig;
use crate::local::point_at_exporter;
use crate::DemoError;
use plover_testkit::backend::Backend;
use plover_testkit::envoy::{Envoy, FileGatewaySpec, WasmFilter};
use plover_testkit::http::{client, get};
use plover_testkit::prometheus::Prometheus;

/// Bearer token between the filter and the exporter (both are ours, on loopback).
const TOKEN: &str = "plover-demo";
/// Header the demo app names its revision in.
const REVISION_HEADER: &str = "x-app-revision";

/// The Canary spec the controller reads (the demo's side of it: which revision is the canary,
/// and the backend of each revision) and the backends the demo runs.
pub struct Workloads {
    /// The spec file `plover local` reads on every reconcile.
    canary_file: PathBuf,
    canary: Canary,
    backends: BTreeMap<String, Backend>,
}

impl Workloads {
    pub fn canary_file(&self) -> &Path {
        &self.canary_file
    }

    pub fn backend(&self, revision: &str) -> Option<&Backend> {
        self.backends.get(revision)
    }

    /// Writes the spec by rename, so the controller never reads half of it.
    fn write_spec(&self) -> Result<(), DemoError> {
        let text = serde_yaml::to_string(&self.canary)
            .map_err(|e| DemoError::Controller(format!("canary spec: {e}")))?;
        envoy_file::write_atomically(&self.canary_file, &text)
            .map_err(|e| DemoError::Controller(e.to_string()))?;
        Ok(())
    }

    /// Deploys `backend` as the canary (a new release): the spec names its revision and
    /// backend. Backends that serve neither `stable` nor the new canary are stopped.
    pub fn release(&mut self, backend: Backend, stable: &str) -> Result<(), DemoError> {
        let revision = backend.revision.clone();
        let address = format!("127.0.0.1:{}", backend.port);
        self.backends.insert(revision.clone(), backend);
        self.backends
            .retain(|r, _| r.as_str() == stable || *r == revision);
        self.canary.spec.workload.canary = revision.clone();
        if let Some(envoy) = self.canary.spec.traffic_routing.envoy.as_mut() {
            envoy.backends.insert(revision, address);
            let backends = &self.backends;
            envoy.backends.retain(|r, _| backends.contains_key(r));
        }
        self.write_spec()
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
            crate::prometheus::start(dir.path(), &format!("127.0.0.1:{exporter_port}")).await?;

        // The spec the controller runs: both workloads on the initial revision (nothing to roll
        // out), its files in the watched dir, its traffic check on this exporter.
        let initial = &config.initial_revision;
        let backend = Backend::start(initial, config.revisions[initial].clone()).await;
        let mut canary = config.canary.clone();
        canary.spec.workload.stable = initial.clone();
        canary.spec.workload.canary = initial.clone();
        point_at_exporter(
            &mut canary.spec.traffic_check,
            &format!("http://127.0.0.1:{exporter_port}"),
        );
        let routing = canary
            .spec
            .traffic_routing
            .envoy
            .as_mut()
            .expect("checked when the config was loaded");
        // The spec's file names, in the watched dir.
        let routes_file = xds.join(&routing.routes_file);
        let clusters_file = xds.join(routing.clusters_file.as_deref().unwrap_or("clusters.json"));
        routing.routes_file = routes_file.display().to_string();
        routing.clusters_file = Some(clusters_file.display().to_string());
        routing
            .backends
            .insert(initial.clone(), format!("127.0.0.1:{}", backend.port));
        let routing = routing.clone();
        let (stable_cluster, canary_cluster) = routing
            .fixed_clusters()
            .map(|(s, c)| (s.to_owned(), c.to_owned()))
            .ok_or_else(|| DemoError::Start {
                what: "canary spec",
                message: "spec.trafficRouting.envoy: the demo needs stableCluster and canaryCluster (the filter counts requests by cluster)".into(),
            })?;
        // The gateway needs routes and clusters to start with (everything on stable); from then
        // on they are the controller's.
        let revision_header = canary.spec.traffic_routing.revision_header.as_deref();
        envoy_file::apply(
            &routing,
            (initial, initial),
            (0, 100),
            revision_header,
            &Managed::none(),
        )
        .map_err(|e| DemoError::Start {
            what: "routes and clusters files",
            message: e.to_string(),
        })?;
        let workloads = Workloads {
            canary_file: dir.path().join("canary.yaml"),
            canary,
            backends: BTreeMap::from([(initial.clone(), backend)]),
        };
        workloads.write_spec()?;

        let (namespace, service) = (config.namespace(), config.service());
        let rule = |cluster: &str, role: &str| serde_json::json!({"match": {"exact": cluster}, "namespace": namespace, "service": service, "role": role});
        let filter = serde_json::json!({
            "exporter": {"cluster": "plover_exporter", "token": TOKEN},
            "sources": ["cluster", "response_header"],
            "response_header": {"name": REVISION_HEADER},
            "rules": [rule(&stable_cluster, "stable"), rule(&canary_cluster, "canary")],
        });
        let (watched_dir, routes) = (xds.clone(), routes_file.clone());
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
