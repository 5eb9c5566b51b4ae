//! The exporter's own health metrics on the ingest path, and the registry `/metrics` encodes.
//!
//! Store-derived health figures (active series, series rejected, dropped requests…) are
//! written by [`crate::exposition::StoreCollector`] from the store's own counters, so there is
//! one source of truth for each number.

use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::exposition::StoreCollector;
use crate::store::Store;

/// Label set of `plover_exporter_batches_rejected_total`.
pub type ReasonLabels = [(&'static str, &'static str); 1];

/// Counters and timings of `POST /v1/batches`.
#[derive(Debug, Clone)]
pub struct IngestMetrics {
    accepted: Counter,
    duplicate: Counter,
    rejected: Family<ReasonLabels, Counter>,
    duration: Histogram,
}

impl IngestMetrics {
    /// Creates the metrics and registers them under `plover_exporter_`. (The registry ends
    /// help texts with a period itself.)
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = IngestMetrics {
            accepted: Counter::default(),
            duplicate: Counter::default(),
            rejected: Family::default(),
            // 50 µs … ~1.6 s: decoding and merging a batch normally takes well under a millisecond.
            duration: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
        };
        registry.register(
            "plover_exporter_batches_accepted",
            "Batches merged",
            metrics.accepted.clone(),
        );
        registry.register(
            "plover_exporter_batches_duplicate",
            "Batches acknowledged but ignored because they were already applied (retransmits)",
            metrics.duplicate.clone(),
        );
        registry.register(
            "plover_exporter_batches_rejected",
            "Batches refused, by reason (unauthorized, unsupported_media_type, too_large, malformed, body)",
            metrics.rejected.clone(),
        );
        registry.register_with_unit(
            "plover_exporter_ingest_duration",
            "Time to read, decode and merge one batch",
            Unit::Seconds,
            metrics.duration.clone(),
        );
        metrics
    }

    pub fn accepted(&self) {
        self.accepted.inc();
    }

    pub fn duplicate(&self) {
        self.duplicate.inc();
    }

    pub fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&[("reason", reason)]).inc();
    }

    pub fn observe(&self, seconds: f64) {
        self.duration.observe(seconds);
    }
}

/// Builds the registry: ingest metrics plus the store collector.
pub fn registry(
    store: Arc<Mutex<Store>>,
    windows: Vec<u64>,
    series_per_code: bool,
    clock: fn() -> u64,
) -> (Registry, IngestMetrics) {
    let mut registry = Registry::default();
    let ingest = IngestMetrics::register(&mut registry);
    registry.register_collector(Box::new(StoreCollector::new(
        store,
        windows,
        series_per_code,
        clock,
    )));
    (registry, ingest)
}
