//! Plover's cross-process contracts, shared by the filter (built for wasm32), the exporter and
//! the controller. Nothing here does I/O.
//!
//! Data flow: the filter labels each request with the [`series`] vocabulary and records
//! [`SeriesDelta`]s with [`histogram::Histogram`]s, and
//! every flush encodes a [`batch::Batch`] that the exporter decodes strictly and merges. The
//! filter is configured by [`config::FilterConfig`] (JSON). The controller reads the
//! exporter's windowed answers as [`stats::StatsResponse`], under the [`labels`] names.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod batch;
pub mod config;
pub mod histogram;
pub mod labels;
pub mod series;
pub mod stats;
pub mod varint;

pub use batch::{Batch, BatchView, DecodeBuffers, SeriesRef};
pub use config::FilterConfig;
pub use histogram::Histogram;
pub use series::{Role, SeriesDelta, SeriesKey, SeriesKeyRef, StatusClass, UpstreamFailure};

/// Why a batch or histogram could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("input ends in the middle of a field")]
    Truncated,
    #[error("malformed batch: {0}")]
    Malformed(&'static str),
    #[error("{what} exceeds its limit of {max}")]
    OutOfRange { what: &'static str, max: u64 },
    #[error("batch exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("unsupported batch version {0} (this build reads version 1)")]
    UnsupportedVersion(u8),
    #[error("bad histogram: {0}")]
    Histogram(&'static str),
}

/// Why a filter configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("plugin configuration is not valid JSON for Plover: {0}")]
    Json(String),
    #[error("plugin configuration field `{field}`: expected {expected}")]
    Invalid { field: String, expected: String },
}
