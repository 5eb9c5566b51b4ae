//! A loopback backend standing in for one revision of an application: it answers with its
//! revision id (body and `x-app-revision` header) after a configured delay, and fails an exact
//! configured share of requests. It counts what it served, which is the ground truth the
//! filter's and exporter's figures are checked against.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plover_wire::Histogram;
use tokio::sync::watch;

use crate::http::{respond, serve_thread_per_connection};

/// How the backend behaves; can be changed while it runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Behaviour {
    pub delay: Duration,
    /// Share of requests answered with `error_status`, spread evenly (exactly ⌊n·share⌋ of
    /// the first n requests).
    pub error_share: f64,
    pub error_status: u16,
    /// Whether responses carry `x-app-revision` (apps that do not leave it to the route).
    pub reports_revision: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            delay: Duration::ZERO,
            error_share: 0.0,
            error_status: 500,
            reports_revision: true,
        }
    }
}

#[derive(Default)]
struct State {
    behaviour: Behaviour,
    served: u64,
    /// Of which copies a proxy mirrored here (host ending in `-shadow`, possibly before a port).
    mirrored: u64,
    by_status: BTreeMap<u16, u64>,
    /// How long the backend itself took per request (µs), the floor of any latency measured
    /// in front of it.
    handling: Histogram,
    /// When the first and the latest request arrived: how long a revision really took traffic.
    first_at: Option<std::time::Instant>,
    last_at: Option<std::time::Instant>,
}

/// A running backend. Stops when dropped.
pub struct Backend {
    pub revision: String,
    pub port: u16,
    state: Arc<Mutex<State>>,
    _stop: watch::Sender<bool>,
}

impl Backend {
    /// Starts a backend for `revision` on a free loopback port.
    ///
    /// Each connection is served on a thread and runtime of its own, so that the backend's
    /// timing is not delayed by the test's tasks (load clients) or by its other connections.
    pub async fn start(revision: &str, behaviour: Behaviour) -> Backend {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind backend");
        Backend::serve(listener, revision, behaviour)
    }

    /// A backend for `revision` on `listener` (e.g. one bound in a pod's network namespace).
    pub fn serve(listener: std::net::TcpListener, revision: &str, behaviour: Behaviour) -> Backend {
        let port = listener.local_addr().expect("backend address").port();
        let state = Arc::new(Mutex::new(State {
            behaviour,
            ..State::default()
        }));
        let (stop, stopped) = watch::channel(false);
        let revision_owned = revision.to_owned();
        let handler_state = state.clone();
        let handler = move |req: hyper::Request<bytes::Bytes>| {
            let state = handler_state.clone();
            let revision = revision_owned.clone();
            let host = req
                .headers()
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
                .or_else(|| req.uri().authority().map(|a| a.to_string()))
                .unwrap_or_default();
            let mirrored = host
                .rsplit_once(':')
                .map_or(host.as_str(), |(name, _)| name)
                .ends_with("-shadow");
            async move {
                let received = std::time::Instant::now();
                let (delay, status, reports_revision) = {
                    let mut s = state.lock().expect("backend state");
                    let n = s.served;
                    s.served += 1;
                    s.mirrored += u64::from(mirrored);
                    s.first_at.get_or_insert(received);
                    s.last_at = Some(received);
                    let share = s.behaviour.error_share;
                    let fails = ((n + 1) as f64 * share).floor() > (n as f64 * share).floor();
                    let status = if fails { s.behaviour.error_status } else { 200 };
                    *s.by_status.entry(status).or_default() += 1;
                    (s.behaviour.delay, status, s.behaviour.reports_revision)
                };
                if !delay.is_zero() {
                    // Blocking is fine: this connection has its thread to itself.
                    wait_precisely_until(received + delay);
                }
                let took = received.elapsed().as_micros() as u64;
                state.lock().expect("backend state").handling.record(took);
                let headers: &[(&str, &str)] = if reports_revision {
                    &[
                        ("x-app-revision", &revision),
                        ("content-type", "text/plain"),
                    ]
                } else {
                    &[("content-type", "text/plain")]
                };
                respond(status, revision.clone(), headers)
            }
        };
        serve_thread_per_connection(listener, handler, stopped, &format!("backend-{revision}"));
        Backend {
            revision: revision.to_owned(),
            port,
            state,
            _stop: stop,
        }
    }

    /// Stops accepting and closes its connections (as dropping it does), keeping its counts.
    pub fn stop(&self) {
        let _ = self._stop.send(true);
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.state.lock().expect("backend state").behaviour = behaviour;
    }

    /// Requests served so far.
    pub fn served(&self) -> u64 {
        self.state.lock().expect("backend state").served
    }

    /// Requests served that were mirrored copies (`-shadow` host).
    pub fn mirrored(&self) -> u64 {
        self.state.lock().expect("backend state").mirrored
    }

    /// The backend's own handling time per request, µs.
    pub fn handling(&self) -> Histogram {
        self.state.lock().expect("backend state").handling.clone()
    }

    /// When the first request arrived (`None`: none yet).
    pub fn first_served_at(&self) -> Option<std::time::Instant> {
        self.state.lock().expect("backend state").first_at
    }

    /// When the latest request arrived (`None`: none yet).
    pub fn last_served_at(&self) -> Option<std::time::Instant> {
        self.state.lock().expect("backend state").last_at
    }

    /// Requests served so far, by status code.
    pub fn served_by_status(&self) -> BTreeMap<u16, u64> {
        self.state.lock().expect("backend state").by_status.clone()
    }
}

/// Blocks until `deadline`: a thread sleep for all but the last stretch, then a spin. Tokio's
/// timer rounds up to the next millisecond and a thread sleep alone overshoots by 100–200 µs
/// here; either would make the backend slower than configured and blur latency assertions.
fn wait_precisely_until(deadline: std::time::Instant) {
    const SPIN: Duration = Duration::from_micros(300);
    let now = std::time::Instant::now();
    if let Some(sleep) = deadline.checked_duration_since(now + SPIN) {
        std::thread::sleep(sleep);
    }
    while std::time::Instant::now() < deadline {
        std::hint::spin_loop();
    }
}

/// Delay of the stable revision in the latency tests, ms.
pub const STABLE_DELAY_MS: u64 = 20;
/// Delay of the canary revision in the latency tests, ms.
pub const CANARY_DELAY_MS: u64 = 50;

/// The two revisions the latency tests compare: stable `v1` answering after
/// [`STABLE_DELAY_MS`], canary `v2` after [`CANARY_DELAY_MS`] and failing exactly 10% of its
/// requests with `canary_error_status`.
pub async fn stable_and_slower_failing_canary(canary_error_status: u16) -> (Backend, Backend) {
    let stable = Backend::start(
        "v1",
        Behaviour {
            delay: Duration::from_millis(STABLE_DELAY_MS),
            ..Behaviour::default()
        },
    )
    .await;
    let canary = Backend::start(
        "v2",
        Behaviour {
            delay: Duration::from_millis(CANARY_DELAY_MS),
            error_share: 0.1,
            error_status: canary_error_status,
            ..Behaviour::default()
        },
    )
    .await;
    (stable, canary)
}
