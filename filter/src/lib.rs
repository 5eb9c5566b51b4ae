//! Plover's proxy-wasm filter for Envoy and Istio gateways.
//!
//! For every finished request it works out which revision of which service served it (stable,
//! canary, or unknown) and counts it (status, upstream failure, duration; route, sizes and gRPC
//! status where configured) per series. Each worker VM aggregates on its own; every flush
//! interval its root context sends one [`plover_wire::Batch`] of deltas to the exporter, which
//! merges the batches of all workers and gateways. Revision tags on requests and responses are
//! the router's job (Plover's routers write them beside the weights); the `tagging` build can
//! write them itself for routes Plover does not manage.
//!
//! ```text
//!  on_log ─ one CEL evaluation of record::Reading (cluster, code, flags, duration, …)
//!          ─ resolve::RevisionResolver (cluster → rules, revision header) ─ aggregate::Aggregate
//!  on_tick ─ Aggregate::take_batch ─ outbox::Outbox (bounded, sequenced) ─ one callout ─ exporter
//!  on_done (plugin removed or replaced) ─ the open interval and the backlog go out first
//! ```
//!
//! As an HTTP filter `on_log` runs on each stream's context; loaded as an access logger it runs
//! on the root context, and Envoy creates no stream context at all.
//!
//! Layout: everything but `host` is plain Rust, tested natively with `cargo test`:
//! [`resolve`], [`flags`], [`record`], [`aggregate`], [`outbox`], [`identity`], [`log_limit`],
//! and the two context halves, [`stream`] (one request) and [`flush`] (the root's tick and
//! callouts), which reach Envoy only through small traits. `host` (wasm32 only) is the one
//! file that touches the proxy-wasm ABI: it implements those traits with host calls.
//!
//! The filter never affects user traffic: no hook pauses a stream, failed reads fall back to
//! defaults, and an invalid configuration turns every stream into a passthrough.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod aggregate;
pub mod flags;
pub mod flush;
pub mod identity;
pub mod log_limit;
pub mod outbox;
pub mod record;
pub mod resolve;
pub mod stream;

#[cfg(target_arch = "wasm32")]
mod host;
