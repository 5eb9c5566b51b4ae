//! The exporter's own health metrics on the ingest path, and the registries `/metrics`
//! encodes: one for the text exposition, one for the protobuf exposition.
//!
//! Store-derived health figures (active series, series rejected, dropped requests…) are
//! written by [`crate::exposition::StoreCollector`] from the store's own counters, so there is
//! one source of truth for each number.

use std::fmt;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::prometheus_protobuf::{self, prometheus_data_model::MetricFamily};
use prost::Message as _;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::config::NativeHistograms;
use crate::exposition::StoreCollector;
use crate::store::Store;
use crate::stream::ChunkWriter;

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

impl Default for IngestMetrics {
    fn default() -> Self {
        IngestMetrics {
            accepted: Counter::default(),
            duplicate: Counter::default(),
            rejected: Family::default(),
            // 50 µs … ~1.6 s: decoding and merging a batch normally takes well under a millisecond.
            duration: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
        }
    }
}

impl IngestMetrics {
    /// Registers the metrics under `plover_exporter_` (the registry ends help texts with a
    /// period itself). Registered in several registries, they share their values.
    pub fn register(&self, registry: &mut Registry) {
        let metrics = self;
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

/// What `/metrics` encodes: the same metrics, with the duration histogram in the form each
/// exposition carries.
#[derive(Debug)]
pub struct Registries {
    /// OpenMetrics text: classic buckets.
    pub text: Registry,
    /// Prometheus protobuf: buckets as `--native-histograms` says.
    pub protobuf: Protobuf,
}

/// The protobuf exposition: the ingest metrics, then the store in parts.
#[derive(Debug)]
pub struct Protobuf {
    ingest: Registry,
    store: StoreCollector,
}

impl Protobuf {
    /// Writes length-delimited `MetricFamily` messages, each part as soon as it is built.
    pub fn encode(&self, writer: &mut ChunkWriter) -> fmt::Result {
        let mut message = Vec::new();
        let mut write = |families: Vec<MetricFamily>| -> fmt::Result {
            for family in families {
                message.clear();
                family
                    .encode_length_delimited(&mut message)
                    .map_err(|_| fmt::Error)?;
                writer.write_bytes(&message)?;
            }
            Ok(())
        };
        write(prometheus_protobuf::encode(&self.ingest)?)?;
        self.store.encode_protobuf(write)
    }
}

/// Builds both registries: ingest metrics plus the store collector.
pub fn registries(
    store: Arc<Mutex<Store>>,
    windows: Vec<u64>,
    series_per_code: bool,
    native_histograms: NativeHistograms,
    clock: fn() -> u64,
) -> (Registries, IngestMetrics) {
    let ingest = IngestMetrics::default();
    let collector = |native_histograms| {
        StoreCollector::new(
            store.clone(),
            windows.clone(),
            series_per_code,
            native_histograms,
            clock,
        )
    };
    let mut text = Registry::default();
    ingest.register(&mut text);
    text.register_collector(Box::new(collector(NativeHistograms::Off)));
    let mut protobuf = Registry::default();
    ingest.register(&mut protobuf);
    let registries = Registries {
        text,
        protobuf: Protobuf {
            ingest: protobuf,
            store: collector(native_histograms),
        },
    };
    (registries, ingest)
}
