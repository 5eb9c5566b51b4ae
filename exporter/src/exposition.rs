//! `/metrics`: renders the store at scrape time through a prometheus-client [`Collector`].
//!
//! The store already holds pre-aggregated data (cumulative counters, HDR histograms, windows),
//! so nothing is mirrored into prometheus-client metric objects: the collector copies what it
//! shows out of the store (a [`Snapshot`]) and writes each family with the `MetricEncoder`
//! directly. The same collector writes the text exposition and the protobuf one (which
//! Prometheus asks for when its native histograms are enabled); only the duration histogram
//! differs between them, by [`NativeHistograms`]. Writing the text for 100k series takes hundreds of milliseconds; the store's lock
//! is held only while copying (the counters under one lock, then each service's window answers
//! under its own), so ingest is not stalled for the whole scrape. Every metric and label is
//! listed in `exporter/METRICS.md`.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use plover_wire::labels;
use plover_wire::Role;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::prometheus_protobuf::{self, prometheus_data_model::MetricFamily};
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel, EncodeLabelSet, LabelSetEncoder, NativeHistogram,
    NativeHistogramBuckets, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::config::NativeHistograms;
use crate::store::{Durations, Outcome, Store, StoreCounters};
use crate::window::{Accumulator, Summary};

/// Quantiles exposed by `plover_request_duration_window_seconds`, with their label values.
pub const QUANTILES: [(f64, &str); 5] = [
    (0.5, "0.5"),
    (0.9, "0.9"),
    (0.95, "0.95"),
    (0.99, "0.99"),
    (0.999, "0.999"),
];

/// Renders the store on each scrape.
#[derive(Debug)]
pub struct StoreCollector {
    store: Arc<Mutex<Store>>,
    settings: Arc<Settings>,
    clock: fn() -> u64,
}

/// How the store is shown.
#[derive(Debug)]
struct Settings {
    /// Gauge windows in seconds, ascending.
    windows: Vec<u64>,
    /// Their `window` label values (`30s`, `1m`, `5m`).
    window_labels: Vec<String>,
    /// `--series-per-code`: false sums each route's outcomes per status class.
    series_per_code: bool,
    /// The duration histogram's buckets: `Off` (classic) for the text exposition, the
    /// configured form for the protobuf one.
    native_histograms: NativeHistograms,
}

/// Routes per protobuf part: prometheus-client builds each part's messages whole, so the
/// protobuf exposition is built and sent a part at a time (a family then spans several
/// consecutive messages, which Prometheus reads as one).
pub const ROUTES_PER_PART: usize = 1024;

impl StoreCollector {
    /// `clock` returns the current Unix time in milliseconds.
    pub fn new(
        store: Arc<Mutex<Store>>,
        windows: Vec<u64>,
        series_per_code: bool,
        native_histograms: NativeHistograms,
        clock: fn() -> u64,
    ) -> Self {
        let window_labels = windows.iter().map(|&w| window_label(w)).collect();
        StoreCollector {
            store,
            settings: Arc::new(Settings {
                windows,
                window_labels,
                series_per_code,
                native_histograms,
            }),
            clock,
        }
    }

    /// The protobuf exposition of the store, handed to `each` a part at a time: the routes'
    /// families [`ROUTES_PER_PART`] routes at a time, then the window gauges and the health
    /// figures. All parts show one snapshot.
    pub fn encode_protobuf(
        &self,
        mut each: impl FnMut(Vec<MetricFamily>) -> fmt::Result,
    ) -> fmt::Result {
        let snapshot = Arc::new(self.snapshot((self.clock)()));
        let routes = snapshot.routes.len();
        let parts = (0..routes)
            .step_by(ROUTES_PER_PART)
            .map(|start| Part::Routes(start..routes.min(start + ROUTES_PER_PART)))
            .chain([Part::WindowsAndHealth]);
        for part in parts {
            let mut registry = Registry::default();
            registry.register_collector(Box::new(PartCollector {
                snapshot: snapshot.clone(),
                settings: self.settings.clone(),
                part,
            }));
            each(prometheus_protobuf::encode(&registry)?)?;
        }
        Ok(())
    }
}

/// A part of the protobuf exposition.
#[derive(Debug)]
enum Part {
    /// The routes' families, for these routes of the snapshot.
    Routes(Range<usize>),
    WindowsAndHealth,
}

/// Encodes one part of one snapshot.
struct PartCollector {
    snapshot: Arc<Snapshot>,
    settings: Arc<Settings>,
    part: Part,
}

impl fmt::Debug for PartCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartCollector")
            .field("part", &self.part)
            .finish_non_exhaustive()
    }
}

impl Collector for PartCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let (snapshot, settings) = (&*self.snapshot, &*self.settings);
        match &self.part {
            Part::Routes(range) => {
                let routes = snapshot.routes.get(range.clone()).unwrap_or_default();
                encode_routes(snapshot, routes, settings, &mut encoder)
            }
            Part::WindowsAndHealth => encode_windows_and_health(snapshot, settings, &mut encoder),
        }
    }
}

/// `window` label of a length in seconds: `30s`, `1m`, `90s`, `1h`.
pub fn window_label(seconds: u64) -> String {
    if seconds.is_multiple_of(3600) {
        format!("{}h", seconds / 3600)
    } else if seconds.is_multiple_of(60) {
        format!("{}m", seconds / 60)
    } else {
        format!("{seconds}s")
    }
}

impl StoreCollector {
    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic elsewhere while holding the lock leaves data that is still consistent
        // (every update is a few saturating additions), so keep serving it.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Copies what a scrape shows out of the store. Window answers end at the same second
    /// for every service, but each service's are computed under its own short lock.
    fn snapshot(&self, now_ms: u64) -> Snapshot {
        let (mut snapshot, services) = {
            let store = self.lock();
            let mut routes = Vec::with_capacity(store.series() / 2);
            let mut services = Vec::new();
            for (namespace, service, data) in store.services() {
                let (namespace, service): (Arc<str>, Arc<str>) = (namespace.into(), service.into());
                for (revision, role, rev) in data.revisions() {
                    let revision: Arc<str> = revision.into();
                    for (route, r) in &rev.routes {
                        routes.push(RouteRow {
                            namespace: namespace.clone(),
                            service: service.clone(),
                            revision: revision.clone(),
                            role,
                            route: route.as_str().into(),
                            outcomes: if self.settings.series_per_code {
                                r.outcomes.iter().map(|(o, t)| (*o, t.requests)).collect()
                            } else {
                                per_class(&r.outcomes)
                            },
                            bytes: (!r.sizes_unmeasured)
                                .then_some((r.request_bytes, r.response_bytes)),
                            durations: r.durations.as_deref().cloned(),
                        });
                    }
                }
                services.push((namespace, service));
            }
            let health = Health {
                series: store.series(),
                senders: store.senders(),
                window_bytes: store.window_heap_bytes(),
                counters: store.counters(),
            };
            let buckets = &store.config().buckets;
            let native_schema = match self.settings.native_histograms {
                NativeHistograms::Off => None,
                NativeHistograms::Both | NativeHistograms::Only => buckets.native_schema(),
            };
            (
                Snapshot {
                    routes,
                    services: Vec::new(),
                    bounds: buckets.bounds().to_vec(),
                    native_schema,
                    health,
                },
                services,
            )
        };
        let windows = &self.settings.windows;
        if windows.is_empty() {
            return snapshot;
        }
        let newest = (now_ms / 1000).saturating_sub(1);
        let mut acc = Accumulator::default();
        for (namespace, service) in services {
            let store = self.lock();
            // Gone since the first copy (expired): nothing to show.
            let Some(data) = store.service(&namespace, &service) else {
                continue;
            };
            // Mirrored copies are no revision's traffic: not in the windows' rates and shares.
            let revisions: Vec<_> = data
                .windows(newest, windows, &mut acc)
                .into_iter()
                .filter(|r| r.role != Role::Mirror)
                .map(|r| (Arc::<str>::from(r.revision), r.role, r.summaries))
                .collect();
            drop(store);
            let totals: Vec<u64> = (0..windows.len())
                .map(|w| {
                    revisions
                        .iter()
                        .map(|r| r.2[w].requests())
                        .fold(0, u64::saturating_add)
                })
                .collect();
            snapshot.services.push(ServiceWindows {
                namespace,
                service,
                revisions,
                totals,
            });
        }
        snapshot
    }
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let snapshot = self.snapshot((self.clock)());
        encode_routes(&snapshot, &snapshot.routes, &self.settings, &mut encoder)?;
        encode_windows_and_health(&snapshot, &self.settings, &mut encoder)
    }
}

/// What one scrape shows, copied out of the store (see the module docs).
struct Snapshot {
    /// Every route of every revision, in the store's order.
    routes: Vec<RouteRow>,
    /// Window answers per service.
    services: Vec<ServiceWindows>,
    /// Bounds of the duration buckets.
    bounds: Vec<f64>,
    /// Schema of the native duration buckets, when this exposition carries them.
    native_schema: Option<i8>,
    health: Health,
}

/// One route of one revision: its series (outcomes) and route-level counters.
struct RouteRow {
    namespace: Arc<str>,
    service: Arc<str>,
    revision: Arc<str>,
    role: Role,
    route: Box<str>,
    /// Each outcome with its request count.
    outcomes: Vec<(Outcome, u64)>,
    /// Request and response body bytes; `None` where some sizes were not measured.
    bytes: Option<(u64, u64)>,
    durations: Option<Durations>,
}

/// One service's answers for every gauge window.
struct ServiceWindows {
    namespace: Arc<str>,
    service: Arc<str>,
    /// (revision, role, one summary per window).
    revisions: Vec<(Arc<str>, Role, Vec<Summary>)>,
    /// The service's requests per window.
    totals: Vec<u64>,
}

/// The exporter's own figures from the store.
struct Health {
    series: usize,
    senders: usize,
    window_bytes: usize,
    counters: StoreCounters,
}

/// Labels of one series (`plover_requests_total` and the byte counters).
struct SeriesLabels<'a> {
    path: PathLabels<'a>,
    outcome: &'a Outcome,
    /// With `code` and `grpc_status` (`--series-per-code`).
    per_code: bool,
}

/// Labels down to the route.
#[derive(Clone, Copy)]
struct PathLabels<'a> {
    namespace: &'a str,
    service: &'a str,
    route: &'a str,
    revision: &'a str,
    role: Role,
}

impl EncodeLabelSet for PathLabels<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        (labels::NAMESPACE, self.namespace).encode(encoder.encode_label())?;
        (labels::SERVICE, self.service).encode(encoder.encode_label())?;
        (labels::ROUTE, self.route).encode(encoder.encode_label())?;
        (labels::REVISION, self.revision).encode(encoder.encode_label())?;
        (labels::ROLE, self.role.as_str()).encode(encoder.encode_label())
    }
}

impl EncodeLabelSet for SeriesLabels<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        self.path.encode(encoder)?;
        let o = self.outcome;
        (labels::STATUS_CLASS, o.status_class.as_str()).encode(encoder.encode_label())?;
        if self.per_code {
            // A series folded at --max-series holds several codes of its class.
            if o.code == crate::store::FOLDED_CODE {
                (labels::CODE, "other").encode(encoder.encode_label())?;
            } else {
                (labels::CODE, o.code).encode(encoder.encode_label())?;
            }
            (labels::GRPC_STATUS, o.grpc_status).encode(encoder.encode_label())?;
        }
        (labels::UPSTREAM_FAILURE, o.upstream_failure.as_str()).encode(encoder.encode_label())
    }
}

/// Labels of the per-revision window gauges.
struct WindowLabels<'a> {
    namespace: &'a str,
    service: &'a str,
    revision: &'a str,
    role: Role,
    window: &'a str,
    quantile: Option<&'a str>,
}

impl EncodeLabelSet for WindowLabels<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        (labels::NAMESPACE, self.namespace).encode(encoder.encode_label())?;
        (labels::SERVICE, self.service).encode(encoder.encode_label())?;
        (labels::REVISION, self.revision).encode(encoder.encode_label())?;
        (labels::ROLE, self.role.as_str()).encode(encoder.encode_label())?;
        (labels::WINDOW, self.window).encode(encoder.encode_label())?;
        if let Some(q) = self.quantile {
            (labels::QUANTILE, q).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// Calls `f` for every route with its path labels: the routes of clients' requests, or with
/// `mirrored` those of mirrored copies (role `mirror`), which no other family counts.
fn for_each_route<'s>(
    routes: &'s [RouteRow],
    mirrored: bool,
    mut f: impl FnMut(PathLabels<'s>, &'s RouteRow) -> fmt::Result,
) -> fmt::Result {
    for r in routes
        .iter()
        .filter(|r| (r.role == Role::Mirror) == mirrored)
    {
        let path = PathLabels {
            namespace: &r.namespace,
            service: &r.service,
            route: &r.route,
            revision: &r.revision,
            role: r.role,
        };
        f(path, r)?;
    }
    Ok(())
}

/// A counter family: name, help, and the field it shows.
type CounterFamily<T> = (&'static str, &'static str, fn(&T) -> u64);

/// A route's outcomes summed per status class and upstream failure (`--series-per-code=false`).
fn per_class(outcomes: &hashbrown::HashMap<Outcome, crate::store::Totals>) -> Vec<(Outcome, u64)> {
    let mut classes: Vec<(Outcome, u64)> = Vec::new();
    for (o, t) in outcomes {
        let class = Outcome {
            code: 0,
            grpc_status: None,
            ..*o
        };
        match classes.iter_mut().find(|(c, _)| *c == class) {
            Some((_, n)) => *n = n.saturating_add(t.requests),
            None => classes.push((class, t.requests)),
        }
    }
    classes
}

/// The families of `routes`: requests, bytes, durations.
fn encode_routes(
    snapshot: &Snapshot,
    routes: &[RouteRow],
    settings: &Settings,
    encoder: &mut DescriptorEncoder,
) -> fmt::Result {
    let series_per_code = settings.series_per_code;
    let classic_buckets = settings.native_histograms != NativeHistograms::Only;
    let requests = [
        ("plover_requests", "Requests completed, by series.", false),
        (
            "plover_mirrored_requests",
            "Copies of requests a route mirrored to a revision, by series: their answers reached no client, so no other family counts them.",
            true,
        ),
    ];
    for (name, help, mirrored) in requests {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for_each_route(routes, mirrored, |path, route| {
            for (outcome, requests) in &route.outcomes {
                let labels = SeriesLabels {
                    path,
                    outcome,
                    per_code: series_per_code,
                };
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(requests, None)?;
            }
            Ok(())
        })?;
    }

    // Routes whose filters do not measure sizes (`record.sizes` off) have no byte counters
    // rather than wrong ones.
    let bytes: [CounterFamily<(u64, u64)>; 2] = [
        (
            "plover_request_bytes",
            "Request body bytes received from clients, by route (where the filters measure sizes).",
            |b| b.0,
        ),
        (
            "plover_response_bytes",
            "Response body bytes sent to clients, by route (where the filters measure sizes).",
            |b| b.1,
        ),
    ];
    for (name, help, value) in bytes {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for_each_route(routes, false, |path, route| match &route.bytes {
            Some(bytes) => family
                .encode_family(&path)?
                .encode_counter::<NoLabelSet, _, u64>(&value(bytes), None),
            None => Ok(()),
        })?;
    }

    let mut family = encoder.encode_descriptor(
        "plover_request_duration",
        "Request duration by route, from the filters' HDR histograms (bucket edges exact to 0.8%).",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    let bounds = &snapshot.bounds;
    let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(bounds.len() + 1);
    for_each_route(routes, false, |path, route| {
        let Some(d): Option<&Durations> = route.durations.as_ref() else {
            return Ok(());
        };
        buckets.clear();
        if classic_buckets || snapshot.native_schema.is_none() {
            buckets.extend(
                bounds
                    .iter()
                    .copied()
                    .chain([f64::INFINITY])
                    .zip(d.buckets.iter().copied()),
            );
        }
        let mut metric = family.encode_family(&path)?;
        let Some(schema) = snapshot.native_schema else {
            return metric.encode_histogram::<NoLabelSet>(d.sum_seconds, d.count, &buckets, None);
        };
        let (spans, deltas) = d.native_spans();
        metric.encode_histogram_with_native::<NoLabelSet>(
            d.sum_seconds,
            d.count,
            &buckets,
            None,
            NativeHistogram {
                schema: i32::from(schema),
                // Only requests measured at 0 µs are in the zero bucket.
                zero_threshold: 0.0,
                zero_count: d.zero_count,
                negative: NativeHistogramBuckets {
                    spans: &[],
                    deltas: &[],
                },
                positive: NativeHistogramBuckets {
                    spans: &spans,
                    deltas: &deltas,
                },
                created: None,
            },
        )
    })
}

fn encode_windows_and_health(
    snapshot: &Snapshot,
    settings: &Settings,
    encoder: &mut DescriptorEncoder,
) -> fmt::Result {
    encode_windows(snapshot, settings, encoder)?;
    encode_health(&snapshot.health, encoder)
}

fn encode_windows(
    snapshot: &Snapshot,
    settings: &Settings,
    encoder: &mut DescriptorEncoder,
) -> fmt::Result {
    let (windows, window_labels) = (&settings.windows, &settings.window_labels);
    if windows.is_empty() {
        return Ok(());
    }
    type Gauge = fn(&Summary, u64, u64) -> Option<f64>;
    let gauges: [(&str, &str, Gauge); 3] = [
        ("plover_request_rate", "Requests per second over the window.", |s, seconds, _| {
            Some(s.requests() as f64 / seconds as f64)
        }),
        (
            "plover_success_ratio",
            "Share of requests in the window that were neither 5xx nor without response; absent without requests.",
            |s, _, _| {
                let requests = s.requests();
                (requests > 0).then(|| 1.0 - s.errors() as f64 / requests as f64)
            },
        ),
        (
            "plover_traffic_share",
            "This revision's share of the service's requests in the window.",
            |s, _, service_total| (service_total > 0).then(|| s.requests() as f64 / service_total as f64),
        ),
    ];
    for (name, help, value) in gauges {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for s in &snapshot.services {
            for (revision, role, summaries) in &s.revisions {
                for (w, summary) in summaries.iter().enumerate() {
                    let Some(v) = value(summary, windows[w], s.totals[w]) else {
                        continue;
                    };
                    let labels = WindowLabels {
                        namespace: &s.namespace,
                        service: &s.service,
                        revision,
                        role: *role,
                        window: &window_labels[w],
                        quantile: None,
                    };
                    family.encode_family(&labels)?.encode_gauge(&v)?;
                }
            }
        }
    }

    let mut family = encoder.encode_descriptor(
        "plover_request_duration_window",
        "Exact request duration quantiles over the window (within 1%); absent without requests.",
        Some(&Unit::Seconds),
        MetricType::Gauge,
    )?;
    for s in &snapshot.services {
        for (revision, role, summaries) in &s.revisions {
            for (w, summary) in summaries.iter().enumerate() {
                for (q, label) in QUANTILES {
                    let Some(micros) = summary.histogram.value_at_quantile(q) else {
                        continue;
                    };
                    let labels = WindowLabels {
                        namespace: &s.namespace,
                        service: &s.service,
                        revision,
                        role: *role,
                        window: &window_labels[w],
                        quantile: Some(label),
                    };
                    family
                        .encode_family(&labels)?
                        .encode_gauge(&(micros as f64 / 1e6))?;
                }
            }
        }
    }
    Ok(())
}

fn encode_health(health: &Health, encoder: &mut DescriptorEncoder) -> fmt::Result {
    let counters = health.counters;
    let gauge =
        |encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64| -> fmt::Result {
            encoder
                .encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_gauge(&value)
        };
    let counter =
        |encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64| -> fmt::Result {
            encoder
                .encode_descriptor(name, help, None, MetricType::Counter)?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)
        };
    gauge(
        encoder,
        "plover_exporter_active_series",
        "Series currently held.",
        health.series as i64,
    )?;
    gauge(
        encoder,
        "plover_exporter_active_senders",
        "Filter VMs whose sequence records are held.",
        health.senders as i64,
    )?;
    gauge(
        encoder,
        "plover_exporter_window_bytes",
        "Heap bytes held by the per-revision windows.",
        health.window_bytes as i64,
    )?;
    counter(
        encoder,
        "plover_exporter_series_folded",
        "New series counted under code other or route (other) because --max-series was reached (per-class totals stay exact).",
        counters.series_folded,
    )?;
    counter(
        encoder,
        "plover_exporter_refused_requests",
        "Requests of new revisions refused because --max-revisions was reached (lost; reported to the filter).",
        counters.refused_requests,
    )?;
    counter(
        encoder,
        "plover_exporter_series_expired",
        "Series dropped after --series-ttl without data.",
        counters.series_expired,
    )?;
    counter(
        encoder,
        "plover_exporter_filter_dropped_requests",
        "Requests the filters reported they could not record.",
        counters.dropped_requests,
    )?;
    counter(
        encoder,
        "plover_exporter_window_merges",
        "Old window seconds merged to keep a window within its memory budget.",
        counters.window_merges,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_labels_read_like_durations() {
        assert_eq!(window_label(30), "30s");
        assert_eq!(window_label(60), "1m");
        assert_eq!(window_label(300), "5m");
        assert_eq!(window_label(90), "90s");
        assert_eq!(window_label(7200), "2h");
    }
}
