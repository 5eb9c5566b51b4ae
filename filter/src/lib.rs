//! Plover's proxy-wasm filter for Envoy and Istio gateways.
//!
//! For every request it works out which revision of which service served it (stable, canary,
//! or unknown), tags the upstream request and the downstream response with `role/revision`,
//! and counts the request (status, upstream failure, duration, bytes) per series. Each worker
//! VM aggregates on its own; every flush interval its root context sends one [`plover_wire::Batch`]
//! of deltas to the exporter, which merges the batches of all workers and gateways.
//!
//! ```text
//!  request headers ─ resolve::RevisionResolver (xds.cluster_name → rules) ─ tag upstream request
//!  response headers ─ app revision header? ─ final Resolution ─ tag downstream response
//!  on_log ─ one CEL evaluation → record::Completion (code, flags, duration, sizes, route)
//!          ─ aggregate::Aggregate
//!  on_tick ─ Aggregate::take_batch ─ outbox::Outbox (bounded, sequenced) ─ one callout ─ exporter
//!  on_done (plugin removed or replaced) ─ the open interval and the backlog go out first
//! ```
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
