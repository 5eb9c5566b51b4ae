//! Plover's exporter: the one place where the filters' per-request measurements become
//! numbers a rollout can be judged by.
//!
//! Every worker VM of the Plover filter POSTs a [`plover_wire::Batch`] once a second: the
//! deltas of each series (namespace, service, route, revision, role, status class, code, gRPC
//! status, upstream failure) with an HDR histogram of durations. The exporter authenticates it
//! and decodes it strictly ([`ingest`]), then merges it exactly once into the [`store`]:
//! cumulative counters per series, and per revision a one-second-resolution [`window`] of
//! counts and histograms. Two readers use that state: Prometheus scrapes `/metrics`
//! ([`exposition`]: counters, a duration histogram, and exact windowed quantile, success-ratio,
//! traffic-share and rate gauges), and the controller asks `/v1/stats` ([`stats`]) for exact
//! answers over any window it wants.
//!
//! ```text
//!  filter VMs ──POST /v1/batches──▶ ingest ──▶ store ─┬─ /metrics  ◀── Prometheus
//!                                  (auth, decode,     └─ /v1/stats ◀── controller
//!                                   exactly-once)
//! ```
//!
//! Layout: [`config`] (flags → validated [`Config`]), [`http`] (server, routing, shutdown),
//! [`ingest`], [`store`] and [`window`] (pure, no I/O), [`exposition`] and [`metrics`]
//! (`/metrics`), [`stats`] (`/v1/stats`). The binary is a thin `main.rs` around [`run`].

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod config;
pub mod exposition;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod stats;
pub mod store;
pub mod stream;
pub mod window;

pub use config::{Args, Config, ConfigError};
pub use http::{run, ServerError};
