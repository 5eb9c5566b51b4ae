//! Everything the exporter knows, and the only place that changes it: the series map, the
//! per-revision windows, exactly-once bookkeeping, the cardinality guard and expiry.
//!
//! The store is plain data with no I/O, no clock and no locks: every call that depends on
//! time takes `now_ms` (Unix milliseconds), so tests drive it directly. The HTTP layer wraps it
//! in one mutex and calls [`Store::tick`] every second.
//!
//! Data is nested the way it is labelled:
//!
//! ```text
//! namespace → service → revision → role ─┬─ window (per second: counts by class + histogram)
//!                                        └─ route ─┬─ outcome (class, code, grpc, failure) → totals
//!                                                  └─ bytes, duration buckets
//! ```
//!
//! An *outcome* under a route is one series of the wire format (one [`SeriesKey`]); it is
//! what `--max-series` counts.
//!
//! **The guard never drops what decides a rollout.** Every request reaches its revision's
//! window, whatever the series count: `/v1/stats` and the judges stay exact. At `--max-series`
//! a new series is *folded* instead of refused: a new code of a known route is counted under
//! code `other` of its status class, a new route under route `(other)`, so per-class totals
//! (success and error ratios) in `/metrics` stay exact too and only per-code detail is lost.
//! Only a brand-new revision beyond `--max-revisions` (a bound against unbounded label input)
//! is refused; its requests are counted as lost, told to the filter (which reports them as
//! dropped) and make every window that covers them say so (`lost_requests` in `/v1/stats`),
//! as do the requests gateways report dropped, over the interval they were lost in.
//!
//! The window is kept per revision and role rather than per series because every windowed
//! answer (`/v1/stats`, the window gauges) is per revision: keeping it per series would
//! multiply the dominant memory cost by the number of routes and codes for nothing.

use hashbrown::HashMap;
use plover_wire::histogram::{highest_value_at, index_of, lowest_value_at, COUNTS_LEN};
use plover_wire::{BatchView, Role, SeriesRef, StatusClass, UpstreamFailure};

use crate::window::{Accumulator, Summary, Window};

/// Why a decoded batch was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Sequences start at 1; 0 would be indistinguishable from "nothing seen yet".
    #[error("sequence must be at least 1")]
    ZeroSequence,
}

/// What [`Store::apply`] did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Merged: `series` kept as sent, `series_folded` counted under code `other` or route
    /// `(other)` at `--max-series`, and `refused_requests` requests of new revisions refused at
    /// `--max-revisions` (lost, and reported back to the filter).
    Merged {
        series: usize,
        series_folded: usize,
        refused_requests: u64,
    },
    /// Already applied (a retransmit): acknowledged and ignored.
    Duplicate,
}

/// Settings the store needs, validated by [`crate::config`].
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Most series (outcomes) kept as sent; new ones beyond are folded (see the module docs).
    pub max_series: usize,
    /// Most revisions (over all services) kept; requests of new ones beyond are refused.
    pub max_revisions: usize,
    /// Series, and sequence records, not updated for this long are dropped.
    pub series_ttl_ms: u64,
    /// Seconds of per-second data kept: the longest window that can be asked for.
    pub window_seconds: u64,
    /// Most payload bytes one revision's window may hold before old seconds are merged.
    pub window_budget_bytes: usize,
    /// Most payload bytes all windows together may hold: with many revisions each window's
    /// budget shrinks to its share, so that no input can exhaust memory.
    pub max_window_bytes: usize,
    /// Buckets of the exposition histogram: classic bounds, and native ones when enabled.
    pub buckets: DurationBuckets,
}

/// Counters about the store itself, exposed as the exporter's own metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounters {
    /// Series folded into code `other` or route `(other)` at `--max-series`.
    pub series_folded: u64,
    /// Requests of new revisions refused at `--max-revisions`.
    pub refused_requests: u64,
    pub series_expired: u64,
    pub dropped_requests: u64,
    /// Merges of old window seconds forced by the memory budget.
    pub window_merges: u64,
}

/// The exporter's state. See the module docs.
#[derive(Debug)]
pub struct Store {
    config: StoreConfig,
    namespaces: HashMap<String, HashMap<String, Service>>,
    /// gateway → instance → which sequences were applied.
    senders: HashMap<String, HashMap<String, SequenceRecord>>,
    series: usize,
    /// Revisions held (one per service and revision name, whatever its roles).
    revisions: usize,
    /// Requests known lost (dropped by a gateway, refused here), by the seconds they belong
    /// to, oldest first: the windows that cover them are incomplete.
    losses: std::collections::VecDeque<Loss>,
    counters: StoreCounters,
}

/// Requests lost somewhere in seconds `first..=last` (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loss {
    first: u64,
    last: u64,
    requests: u64,
}

/// Most loss records kept; beyond, the two oldest are merged (their span widens, nothing is
/// forgotten).
const MAX_LOSS_RECORDS: usize = 4096;

/// The route label of series folded at `--max-series` whose route was new.
pub const OVERFLOW_ROUTE: &str = "(other)";
/// The code of series folded at `--max-series` (exposed as `code="other"`); no HTTP code.
pub const FOLDED_CODE: u16 = u16::MAX;

/// What became of one series of a batch.
enum Merge {
    Kept,
    Folded,
    Refused(u64),
}

/// One service: its revisions, each possibly seen under several roles.
#[derive(Debug, Default)]
pub struct Service {
    revisions: HashMap<String, [Option<Box<Revision>>; Role::ALL.len()]>,
}

/// One revision in one role.
#[derive(Debug, Default)]
pub struct Revision {
    pub window: Window,
    pub routes: HashMap<String, Route>,
}

/// One route of a revision.
#[derive(Debug, Default)]
pub struct Route {
    pub outcomes: HashMap<Outcome, Totals>,
    /// Body bytes of all outcomes. Kept per route rather than per series: byte volumes are
    /// read per route and revision, and per series they would triple the exposition's size.
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Some requests of this route came without their sizes (a filter with `record.sizes`
    /// off): the byte totals are not its volume, and are not published.
    pub sizes_unmeasured: bool,
    /// Cumulative duration buckets of all outcomes (per route for the same reason; the exact
    /// per-revision quantiles come from the window).
    pub durations: Option<Box<Durations>>,
}

/// The part of a series key below the route: how the requests ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Outcome {
    pub status_class: StatusClass,
    pub code: u16,
    pub grpc_status: Option<u8>,
    pub upstream_failure: UpstreamFailure,
}

/// Cumulative counters of one series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    last_seen_ms: u64,
}

/// Cumulative duration histogram of one route, in the exposition buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct Durations {
    /// Count per bucket (not cumulative), the last one being `+Inf`.
    pub buckets: Box<[u64]>,
    pub count: u64,
    /// Sum of durations in seconds, from HDR bin midpoints (within 0.4% of the true sum).
    pub sum_seconds: f64,
    /// Native histogram buckets (`--native-histograms`): `(index, count)` by ascending index,
    /// only those with requests; empty when native histograms are off.
    pub native: Vec<(i32, u64)>,
    /// Requests measured at 0 µs: the native histogram's zero bucket.
    pub zero_count: u64,
}

/// The exposition histogram's buckets, with lookups from HDR index to bucket.
#[derive(Debug, Clone)]
pub struct DurationBuckets {
    bounds: Vec<f64>,
    /// Bucket of each HDR index: the first whose bound's index is at or above it, matching
    /// [`Histogram::count_at_or_below`].
    bucket_of: Box<[u8]>,
    /// Midpoint of each HDR index in seconds.
    midpoint: Box<[f64]>,
    /// Native histogram schema, when native buckets are kept.
    native_schema: Option<i8>,
    /// Native bucket of each HDR index (by its midpoint); empty without a schema.
    native_of: Box<[i32]>,
}

impl DurationBuckets {
    /// Most bounds accepted (the lookup stores bucket numbers in a byte).
    pub const MAX_BOUNDS: usize = 200;
    /// Native histogram schemas Prometheus accepts: bucket edges grow by `2^(2^-schema)`.
    pub const NATIVE_SCHEMAS: std::ops::RangeInclusive<i8> = -4..=8;

    /// `bounds` in seconds, ascending, positive and finite (checked by the config). With
    /// `native_schema` (in [`Self::NATIVE_SCHEMAS`], checked by the config), each route also
    /// keeps native histogram buckets.
    pub fn new(bounds: Vec<f64>, native_schema: Option<i8>) -> Self {
        let limits: Vec<u16> = bounds
            .iter()
            .map(|&b| index_of((b * 1e6).round() as u64))
            .collect();
        let bucket_of = (0..COUNTS_LEN as u16)
            .map(|i| limits.iter().position(|&l| i <= l).unwrap_or(limits.len()) as u8)
            .collect();
        let midpoint: Box<[f64]> = (0..COUNTS_LEN as u16)
            .map(|i| (lowest_value_at(i) + highest_value_at(i)) as f64 / 2.0 / 1e6)
            .collect();
        let native_of = match native_schema {
            Some(schema) => midpoint
                .iter()
                .map(|&seconds| native_index(seconds, schema))
                .collect(),
            None => Box::default(),
        };
        DurationBuckets {
            bounds,
            bucket_of,
            midpoint,
            native_schema,
            native_of,
        }
    }

    /// The native histogram schema, if native buckets are kept.
    pub fn native_schema(&self) -> Option<i8> {
        self.native_schema
    }

    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }
}

/// Index of the native bucket holding `seconds` (> 0): bucket `i` of schema `s` holds
/// `(2^((i-1)/2^s), 2^(i/2^s)]`. Seconds of 0 go to the zero bucket instead.
fn native_index(seconds: f64, schema: i8) -> i32 {
    if seconds <= 0.0 {
        return 0;
    }
    // The HDR range (1 µs … 1 h) keeps this within ±300 even at schema 8.
    (seconds.log2() * f64::from(schema).exp2()).ceil() as i32
}

impl Durations {
    fn new(buckets: &DurationBuckets) -> Self {
        Durations {
            buckets: vec![0; buckets.bounds.len() + 1].into(),
            count: 0,
            sum_seconds: 0.0,
            native: Vec::new(),
            zero_count: 0,
        }
    }

    /// The native buckets as Prometheus encodes them: spans of consecutive indices
    /// (`(offset from the previous span's end, length)`, the first offset being the first
    /// index) and each bucket's count as a difference from the previous bucket's. A histogram
    /// without buckets has the one empty span that marks it as native.
    pub fn native_spans(&self) -> (Vec<(i32, u32)>, Vec<i64>) {
        let mut spans: Vec<(i32, u32)> = Vec::new();
        let mut deltas = Vec::with_capacity(self.native.len());
        let (mut previous_index, mut previous_count) = (None::<i32>, 0u64);
        for &(index, count) in &self.native {
            match (previous_index, spans.last_mut()) {
                (Some(p), Some(span)) if index == p.saturating_add(1) => span.1 += 1,
                (Some(p), _) => spans.push((index.saturating_sub(p).saturating_sub(1), 1)),
                (None, _) => spans.push((index, 1)),
            }
            // Counts are far below 2^63; clamp rather than wrap if one were not.
            let delta = i128::from(count) - i128::from(previous_count);
            deltas.push(delta.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64);
            (previous_index, previous_count) = (Some(index), count);
        }
        if spans.is_empty() {
            spans.push((0, 0));
        }
        (spans, deltas)
    }

    /// Adds a histogram's `(index, count)` pairs.
    fn record(&mut self, bins: &[(u16, u64)], buckets: &DurationBuckets) {
        for &(index, count) in bins {
            let (Some(&bucket), Some(&midpoint)) = (
                buckets.bucket_of.get(usize::from(index)),
                buckets.midpoint.get(usize::from(index)),
            ) else {
                continue; // impossible: indices were validated when the batch was decoded
            };
            if let Some(b) = self.buckets.get_mut(usize::from(bucket)) {
                *b = b.saturating_add(count);
            }
            self.sum_seconds += midpoint * count as f64;
            self.count = self.count.saturating_add(count);
            if buckets.native_schema.is_some() {
                self.record_native(index, count, buckets);
            }
        }
    }

    fn record_native(&mut self, index: u16, count: u64, buckets: &DurationBuckets) {
        // HDR index 0 holds exactly 0 µs.
        if highest_value_at(index) == 0 {
            self.zero_count = self.zero_count.saturating_add(count);
            return;
        }
        let Some(&native) = buckets.native_of.get(usize::from(index)) else {
            return;
        };
        match self.native.binary_search_by_key(&native, |&(i, _)| i) {
            Ok(at) => self.native[at].1 = self.native[at].1.saturating_add(count),
            Err(at) => self.native.insert(at, (native, count)),
        }
    }
}

/// Which sequences of one filter VM were applied: the highest, and a bitmap of the 128 below
/// it. The filter sends in order with one batch in flight, so anything older than that is a
/// stale retransmit; it is acknowledged and ignored (never applied twice).
#[derive(Debug, Clone, Copy, Default)]
struct SequenceRecord {
    highest: u64,
    /// Bit `i` set: sequence `highest - 1 - i` was applied.
    below: u128,
    last_seen_ms: u64,
}

impl SequenceRecord {
    /// Marks `sequence` as applied; false if it already was (or is too old to tell).
    fn mark(&mut self, sequence: u64) -> bool {
        if sequence > self.highest {
            let shift = sequence - self.highest;
            let moved = self
                .below
                .checked_shl(shift as u32)
                .filter(|_| shift < 128)
                .unwrap_or(0);
            let old_highest = 1u128
                .checked_shl((shift - 1) as u32)
                .filter(|_| shift <= 128)
                .unwrap_or(0);
            self.below = moved | if self.highest > 0 { old_highest } else { 0 };
            self.highest = sequence;
            return true;
        }
        let distance = self.highest - sequence;
        if distance == 0 || distance > 128 {
            return false;
        }
        let bit = 1u128 << (distance - 1);
        if self.below & bit != 0 {
            return false;
        }
        self.below |= bit;
        true
    }
}

impl Store {
    pub fn new(config: StoreConfig) -> Self {
        Store {
            config,
            namespaces: HashMap::new(),
            senders: HashMap::new(),
            series: 0,
            revisions: 0,
            losses: std::collections::VecDeque::new(),
            counters: StoreCounters::default(),
        }
    }

    /// Records `requests` lost in seconds `first..=last`.
    fn record_loss(&mut self, first: u64, last: u64, requests: u64) {
        if requests == 0 {
            return;
        }
        if let Some(back) = self.losses.back_mut() {
            if first <= back.last.saturating_add(1) && last.saturating_add(1) >= back.first {
                back.first = back.first.min(first);
                back.last = back.last.max(last);
                back.requests = back.requests.saturating_add(requests);
                return;
            }
        }
        self.losses.push_back(Loss {
            first,
            last,
            requests,
        });
        if self.losses.len() > MAX_LOSS_RECORDS {
            if let (Some(a), Some(b)) = (self.losses.pop_front(), self.losses.pop_front()) {
                self.losses.push_front(Loss {
                    first: a.first.min(b.first),
                    last: a.last.max(b.last),
                    requests: a.requests.saturating_add(b.requests),
                });
            }
        }
    }

    /// Requests known lost (any service) that may belong to seconds `first..=last`: when not
    /// zero, no window over those seconds is complete.
    pub fn lost_requests(&self, first: u64, last: u64) -> u64 {
        self.losses
            .iter()
            .filter(|l| l.first <= last && l.last >= first)
            .map(|l| l.requests)
            .fold(0, u64::saturating_add)
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Number of series (outcomes) held.
    pub fn series(&self) -> usize {
        self.series
    }

    pub fn counters(&self) -> StoreCounters {
        self.counters
    }

    /// Applies a decoded batch exactly once. The batch was fully validated by decoding (and the
    /// check below) before anything is changed, so a bad batch never leaves partial data.
    ///
    /// The batch is a view borrowing the request body: labels are copied only when a series,
    /// route, revision, service or sender is new.
    pub fn apply(&mut self, batch: &BatchView<'_>, now_ms: u64) -> Result<Applied, StoreError> {
        if batch.sequence == 0 {
            return Err(StoreError::ZeroSequence);
        }
        let record = self
            .senders
            .entry_ref(batch.gateway)
            .or_default()
            .entry_ref(batch.instance)
            .or_default();
        record.last_seen_ms = now_ms;
        if !record.mark(batch.sequence) {
            return Ok(Applied::Duplicate);
        }
        self.counters.dropped_requests = self
            .counters
            .dropped_requests
            .saturating_add(batch.dropped_requests);
        let second = self.slot_second(batch.end_unix_ms, now_ms);
        // A batch reporting drops spans the interval they were lost in (the filter widens its
        // start back to the first lost batch's).
        let first_lost = self
            .slot_second(batch.start_unix_ms.saturating_add(1), now_ms)
            .min(second);
        self.record_loss(first_lost, second, batch.dropped_requests);
        let Store {
            config,
            namespaces,
            series: held,
            revisions,
            counters,
            ..
        } = self;
        let (mut series, mut series_folded, mut refused_requests) = (0, 0, 0u64);
        // A decoded batch is sorted by namespace then service, and equal labels share one
        // string-table entry: a run of one service's series is recognised by comparing label
        // addresses, and the service is looked up once per run instead of once per series.
        let same_label = |a: &str, b: &str| std::ptr::eq(a, b);
        let mut all = batch.series();
        let mut next = all.next();
        while let Some(first) = next.take() {
            let (namespace, name) = (first.key.namespace, first.key.service);
            let service = namespaces
                .entry_ref(namespace)
                .or_default()
                .entry_ref(name)
                .or_default();
            let mut delta = first;
            loop {
                let arrival = Arrival {
                    second,
                    now_ms,
                    sizes_unmeasured: batch.sizes_unmeasured,
                };
                match service.apply_series(delta, arrival, config, held, revisions) {
                    Merge::Kept => series += 1,
                    Merge::Folded => series_folded += 1,
                    Merge::Refused(requests) => {
                        refused_requests = refused_requests.saturating_add(requests)
                    }
                }
                match all.next() {
                    Some(d)
                        if same_label(d.key.namespace, namespace)
                            && same_label(d.key.service, name) =>
                    {
                        delta = d
                    }
                    other => {
                        next = other;
                        break;
                    }
                }
            }
            if service.revisions.is_empty() {
                // Every series of a new service was refused: leave nothing behind.
                if let Some(services) = namespaces.get_mut(namespace) {
                    services.remove(name);
                    if services.is_empty() {
                        namespaces.remove(namespace);
                    }
                }
            }
        }
        counters.series_folded += series_folded as u64;
        counters.refused_requests = counters.refused_requests.saturating_add(refused_requests);
        self.record_loss(second, second, refused_requests);
        Ok(Applied::Merged {
            series,
            series_folded,
            refused_requests,
        })
    }

    /// The second a batch ending at `end_ms` belongs to: the one containing its last
    /// millisecond, clamped into the retained window (a gateway whose clock is ahead lands in
    /// the current second; data older than the window lands in its oldest second).
    pub fn slot_second(&self, end_ms: u64, now_ms: u64) -> u64 {
        let now_s = now_ms / 1000;
        let second = end_ms.saturating_sub(1) / 1000;
        second.clamp(now_s.saturating_sub(self.config.window_seconds), now_s)
    }

    #[cfg(test)]
    fn revision(
        &self,
        namespace: &str,
        service: &str,
        revision: &str,
        role: Role,
    ) -> Option<&Revision> {
        self.namespaces
            .get(namespace)?
            .get(service)?
            .revisions
            .get(revision)?[role as usize]
            .as_deref()
    }

    /// Housekeeping, once a second: packs complete seconds, drops seconds older than the window,
    /// enforces the window budget, and expires series and sequence records older than the TTL.
    pub fn tick(&mut self, now_ms: u64) {
        let now_s = now_ms / 1000;
        let oldest = now_s.saturating_sub(self.config.window_seconds);
        let cutoff = now_ms.saturating_sub(self.config.series_ttl_ms);
        let mut expired = 0usize;
        let mut merges = 0;
        let mut kept_revisions = 0;
        let revisions: usize = self
            .namespaces
            .values()
            .flat_map(|services| services.values())
            .flat_map(|service| service.revisions.values())
            .map(|roles| roles.iter().filter(|r| r.is_some()).count())
            .sum();
        let budget = self
            .config
            .window_budget_bytes
            .min(self.config.max_window_bytes / revisions.max(1));
        for services in self.namespaces.values_mut() {
            for service in services.values_mut() {
                for roles in service.revisions.values_mut() {
                    for slot in roles.iter_mut() {
                        let Some(rev) = slot else { continue };
                        rev.window.expire_before(oldest);
                        // Batches for a second arrive during the next one; seal after that.
                        rev.window.seal_before(now_s.saturating_sub(1));
                        merges += rev.window.enforce_budget(budget, now_s);
                        rev.routes.retain(|_, route| {
                            let before = route.outcomes.len();
                            route.outcomes.retain(|_, t| t.last_seen_ms >= cutoff);
                            expired += before - route.outcomes.len();
                            !route.outcomes.is_empty()
                        });
                        if rev.routes.is_empty() {
                            *slot = None;
                        }
                    }
                }
                service
                    .revisions
                    .retain(|_, roles| roles.iter().any(Option::is_some));
                kept_revisions += service.revisions.len();
            }
            services.retain(|_, s| !s.revisions.is_empty());
        }
        self.namespaces.retain(|_, s| !s.is_empty());
        for instances in self.senders.values_mut() {
            instances.retain(|_, r| r.last_seen_ms >= cutoff);
        }
        self.senders.retain(|_, i| !i.is_empty());
        self.series -= expired;
        self.revisions = kept_revisions;
        while self.losses.front().is_some_and(|l| l.last < oldest) {
            self.losses.pop_front();
        }
        self.counters.series_expired += expired as u64;
        self.counters.window_merges += merges;
    }

    /// Every service, as (namespace, service, data).
    pub fn services(&self) -> impl Iterator<Item = (&str, &str, &Service)> {
        self.namespaces.iter().flat_map(|(ns, services)| {
            services
                .iter()
                .map(move |(name, s)| (ns.as_str(), name.as_str(), s))
        })
    }

    /// One service, if anything was seen for it.
    pub fn service(&self, namespace: &str, service: &str) -> Option<&Service> {
        self.namespaces.get(namespace)?.get(service)
    }

    /// Sequence records held (one per live filter VM).
    pub fn senders(&self) -> usize {
        self.senders.values().map(HashMap::len).sum()
    }

    /// Heap bytes held by all windows (an estimate that leaves out map overheads).
    pub fn window_heap_bytes(&self) -> usize {
        self.services()
            .flat_map(|(_, _, s)| s.revisions())
            .map(|(_, _, r)| r.window.heap_bytes())
            .sum()
    }
}

/// When and how a batch's series arrived.
#[derive(Clone, Copy)]
struct Arrival {
    /// The second its requests are recorded in.
    second: u64,
    now_ms: u64,
    /// The batch says some of its requests came without sizes.
    sizes_unmeasured: bool,
}

impl Service {
    /// Merges one series of this service. `held` and `revisions` are the store's series and
    /// revision counts. The revision's window always gets the requests (unless the revision is
    /// new and `--max-revisions` is reached); the series is folded at `--max-series`.
    fn apply_series(
        &mut self,
        delta: SeriesRef<'_, '_>,
        arrival: Arrival,
        config: &StoreConfig,
        held: &mut usize,
        revisions: &mut usize,
    ) -> Merge {
        let Arrival {
            second,
            now_ms,
            sizes_unmeasured,
        } = arrival;
        let key = delta.key;
        if !self.revisions.contains_key(key.revision) {
            if *revisions >= config.max_revisions {
                return Merge::Refused(delta.requests);
            }
            *revisions += 1;
        }
        let roles = self.revisions.entry_ref(key.revision).or_default();
        let rev = roles[key.role as usize].get_or_insert_with(Default::default);
        rev.window
            .record(second, key.status_class, delta.requests, delta.duration);
        let mut outcome = Outcome {
            status_class: key.status_class,
            code: key.code,
            grpc_status: key.grpc_status,
            upstream_failure: key.upstream_failure,
        };
        let full = *held >= config.max_series;
        let route_name = if full && !rev.routes.contains_key(key.route) {
            OVERFLOW_ROUTE
        } else {
            key.route
        };
        let route = rev.routes.entry_ref(route_name).or_default();
        let folded = full && !route.outcomes.contains_key(&outcome);
        if folded {
            outcome = Outcome {
                code: FOLDED_CODE,
                grpc_status: None,
                ..outcome
            };
        }
        let totals = route.outcomes.entry(outcome).or_insert_with(|| {
            *held += 1;
            Totals::default()
        });
        totals.requests = totals.requests.saturating_add(delta.requests);
        totals.last_seen_ms = now_ms;
        route.request_bytes = route.request_bytes.saturating_add(delta.request_bytes);
        route.response_bytes = route.response_bytes.saturating_add(delta.response_bytes);
        route.sizes_unmeasured |= sizes_unmeasured;
        if !delta.duration.is_empty() {
            let durations = route
                .durations
                .get_or_insert_with(|| Box::new(Durations::new(&config.buckets)));
            durations.record(delta.duration, &config.buckets);
        }
        if folded {
            Merge::Folded
        } else {
            Merge::Kept
        }
    }

    /// Every (revision, role) of the service, sorted by role then revision.
    pub fn revisions(&self) -> impl Iterator<Item = (&str, Role, &Revision)> {
        let mut all: Vec<_> = self
            .revisions
            .iter()
            .flat_map(|(name, roles)| {
                Role::ALL
                    .into_iter()
                    .zip(roles)
                    .filter_map(move |(role, r)| Some((name.as_str(), role, r.as_deref()?)))
            })
            .collect();
        all.sort_by(|a, b| (a.1, a.0).cmp(&(b.1, b.0)));
        all.into_iter()
    }

    /// Windowed answers for every revision: `windows` are lengths in seconds (ascending),
    /// all ending at second `newest`.
    pub fn windows(
        &self,
        newest: u64,
        windows: &[u64],
        acc: &mut Accumulator,
    ) -> Vec<RevisionWindows<'_>> {
        self.revisions()
            .map(|(revision, role, rev)| {
                let mut summaries = vec![Summary::default(); windows.len()];
                rev.window.fold_windows(newest, windows, acc, |i, a| {
                    summaries[i] = a.summary(newest, windows[i])
                });
                RevisionWindows {
                    revision,
                    role,
                    summaries,
                }
            })
            .collect()
    }
}

/// One revision's answers for a list of windows.
#[derive(Debug, Clone)]
pub struct RevisionWindows<'a> {
    pub revision: &'a str,
    pub role: Role,
    pub summaries: Vec<Summary>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use plover_wire::{Batch, Histogram, SeriesDelta, SeriesKey};

    const T0: u64 = 1_700_000_000_000;

    fn config() -> StoreConfig {
        StoreConfig {
            max_series: 1000,
            max_revisions: 100,
            series_ttl_ms: 600_000,
            window_seconds: 600,
            window_budget_bytes: 224 * 1024,
            max_window_bytes: 1 << 30,
            buckets: DurationBuckets::new(vec![0.001, 0.01, 0.1, 1.0], None),
        }
    }

    fn key(revision: &str, role: Role, code: u16) -> SeriesKey {
        SeriesKey::answered("demo", "app", "r", revision, role, code)
    }

    fn delta(durations_us: &[u64]) -> SeriesDelta {
        let mut d = SeriesDelta {
            requests: durations_us.len() as u64,
            request_bytes: 10,
            response_bytes: 20,
            ..Default::default()
        };
        durations_us.iter().for_each(|&v| d.duration.record(v));
        d
    }

    fn batch(
        instance: &str,
        sequence: u64,
        end_ms: u64,
        series: Vec<(SeriesKey, SeriesDelta)>,
    ) -> Batch {
        Batch {
            gateway: "gw".into(),
            instance: instance.into(),
            sequence,
            start_unix_ms: end_ms - 1000,
            end_unix_ms: end_ms,
            dropped_requests: 0,
            sizes_unmeasured: false,
            series,
        }
    }

    /// Applies an owned batch, as the HTTP path applies a decoded view.
    fn apply(store: &mut Store, batch: Batch, now_ms: u64) -> Result<Applied, StoreError> {
        store.apply(&batch.view(), now_ms)
    }

    fn totals(store: &Store, revision: &str, role: Role, code: u16) -> Option<Totals> {
        let rev = store.revision("demo", "app", revision, role)?;
        let k = key(revision, role, code);
        let o = Outcome {
            status_class: k.status_class,
            code,
            grpc_status: None,
            upstream_failure: UpstreamFailure::None,
        };
        rev.routes.get("r")?.outcomes.get(&o).copied()
    }

    fn window(store: &Store, now_ms: u64, seconds: u64) -> Vec<(String, Summary)> {
        let newest = now_ms / 1000 - 1;
        let mut acc = Accumulator::default();
        store
            .service("demo", "app")
            .map(|s| s.windows(newest, &[seconds], &mut acc))
            .unwrap_or_default()
            .into_iter()
            .map(|r| (r.revision.to_owned(), r.summaries[0].clone()))
            .collect()
    }

    #[test]
    fn duplicates_and_out_of_order_batches_are_applied_exactly_once() {
        let mut store = Store::new(config());
        let b = |seq: u64| {
            batch(
                "vm-1",
                seq,
                T0 + seq * 1000,
                vec![(key("v1", Role::Stable, 200), delta(&[1000; 3]))],
            )
        };
        let now = T0 + 20_000;
        // 1, 3, 2 (out of order), then retransmits of each, then 5 before 4.
        for seq in [1, 3, 2, 3, 1, 2, 5, 4, 5] {
            apply(&mut store, b(seq), now).unwrap();
        }
        assert_eq!(
            totals(&store, "v1", Role::Stable, 200).unwrap().requests,
            15
        );
        assert_eq!(apply(&mut store, b(4), now), Ok(Applied::Duplicate));
        assert!(matches!(
            apply(&mut store, b(6), now),
            Ok(Applied::Merged {
                series: 1,
                series_folded: 0,
                refused_requests: 0
            })
        ));
        // Same sequence from another VM is another batch.
        apply(
            &mut store,
            batch(
                "vm-2",
                1,
                T0 + 1000,
                vec![(key("v1", Role::Stable, 200), delta(&[1000]))],
            ),
            now,
        )
        .unwrap();
        assert_eq!(
            totals(&store, "v1", Role::Stable, 200).unwrap().requests,
            19
        );
        // The window saw each batch once too.
        assert_eq!(window(&store, now, 600)[0].1.requests(), 19);
        assert_eq!(apply(&mut store, b(0), now), Err(StoreError::ZeroSequence));
    }

    #[test]
    fn sequence_records_remember_128_back() {
        let mut r = SequenceRecord::default();
        assert!(r.mark(1000));
        assert!(r.mark(1000 - 128));
        assert!(!r.mark(1000 - 128));
        assert!(
            !r.mark(1000 - 129),
            "too old to tell: treated as already applied"
        );
        assert!(r.mark(1128));
        assert!(
            !r.mark(1000),
            "the old highest is remembered after a shift of exactly 128"
        );
        assert!(r.mark(5000));
        assert!(r.mark(4999));
        assert!(!r.mark(5000));
    }

    #[test]
    fn batches_land_in_the_second_of_their_end_and_are_clamped() {
        let store = Store::new(config());
        let now = T0 + 500_500;
        assert_eq!(store.slot_second(T0 + 1000, now), T0 / 1000);
        assert_eq!(store.slot_second(T0 + 1001, now), T0 / 1000 + 1);
        assert_eq!(
            store.slot_second(now + 60_000, now),
            now / 1000,
            "clock ahead → now"
        );
        assert_eq!(
            store.slot_second(T0 - 3_600_000, now),
            now / 1000 - 600,
            "too old → oldest second"
        );
    }

    #[test]
    fn a_sample_exactly_at_the_window_boundary() {
        let mut store = Store::new(config());
        let now = T0 + 100_000; // newest complete second = T0/1000 + 99
        let newest = now / 1000 - 1;
        // A 30 s window covers seconds newest-29 ..= newest, i.e. batches ending in
        // (as_of - 30 s, as_of] where as_of = (newest + 1) * 1000.
        let as_of = (newest + 1) * 1000;
        let inside = batch(
            "a",
            1,
            as_of - 30_000 + 1,
            vec![(key("v1", Role::Stable, 200), delta(&[10]))],
        );
        let outside = batch(
            "b",
            1,
            as_of - 30_000,
            vec![(key("v1", Role::Stable, 200), delta(&[10, 10]))],
        );
        let at_end = batch(
            "c",
            1,
            as_of,
            vec![(key("v1", Role::Stable, 200), delta(&[10, 10, 10, 10]))],
        );
        let in_progress = batch(
            "d",
            1,
            as_of + 1,
            vec![(key("v1", Role::Stable, 200), delta(&[10; 8]))],
        );
        for b in [inside, outside, at_end, in_progress] {
            apply(&mut store, b, now).unwrap();
        }
        assert_eq!(window(&store, now, 30)[0].1.requests(), 1 + 4);
        assert_eq!(window(&store, now, 31)[0].1.requests(), 1 + 2 + 4);
        // The cumulative counter has everything, including the second still in progress.
        assert_eq!(
            totals(&store, "v1", Role::Stable, 200).unwrap().requests,
            15
        );
        // A second later, the in-progress second is complete and the oldest one left.
        assert_eq!(window(&store, now + 1000, 30)[0].1.requests(), 4 + 8);
    }

    #[test]
    fn quantiles_match_known_data() {
        let mut store = Store::new(config());
        let now = T0 + 10_000;
        // 1..=1000 ms, spread over several batches, series and seconds.
        let values: Vec<u64> = (1..=1000u64).map(|ms| ms * 1000).collect();
        for (i, chunk) in values.chunks(100).enumerate() {
            let code = if i % 2 == 0 { 200 } else { 503 };
            let end = T0 + 1000 + (i as u64 % 5) * 1000;
            apply(
                &mut store,
                batch(
                    "vm",
                    i as u64 + 1,
                    end,
                    vec![(key("v1", Role::Stable, code), delta(chunk))],
                ),
                now,
            )
            .unwrap();
        }
        let s = &window(&store, now, 60)[0].1;
        assert_eq!(s.requests(), 1000);
        assert_eq!(s.errors(), 500);
        for (q, exact) in [
            (0.5, 500_000.0),
            (0.9, 900_000.0),
            (0.99, 990_000.0),
            (0.999, 999_000.0),
            (1.0, 1_000_000.0),
        ] {
            let got = s.histogram.value_at_quantile(q).unwrap() as f64;
            assert!(
                (got - exact).abs() / exact <= 0.01,
                "q={q}: {got} vs {exact}"
            );
        }
    }

    #[test]
    fn at_the_series_limit_new_series_are_folded_and_every_request_reaches_its_window() {
        // Issue 17, item 1: a full table used to refuse a new canary revision and the canary's
        // first 503 while answering "applied", so /v1/stats never saw them.
        let mut store = Store::new(StoreConfig {
            max_series: 2,
            ..config()
        });
        let now = T0 + 10_000;
        let series = |revision: &str, role, code| (key(revision, role, code), delta(&[100]));
        let b = |seq, series: Vec<(SeriesKey, SeriesDelta)>| batch("vm", seq, T0 + 5000, series);
        assert_eq!(
            apply(
                &mut store,
                b(
                    1,
                    vec![
                        series("v1", Role::Stable, 200),
                        series("v1", Role::Stable, 404)
                    ]
                ),
                now
            ),
            Ok(Applied::Merged {
                series: 2,
                series_folded: 0,
                refused_requests: 0
            })
        );
        // The table is full: the stable's 500 and a new canary revision (a 200 and a 503)
        // arrive.
        assert_eq!(
            apply(
                &mut store,
                b(
                    2,
                    vec![
                        series("v1", Role::Stable, 200),
                        series("v1", Role::Stable, 500),
                        series("v2", Role::Canary, 200),
                        series("v2", Role::Canary, 503),
                    ]
                ),
                now
            ),
            Ok(Applied::Merged {
                series: 1,
                series_folded: 3,
                refused_requests: 0
            })
        );
        assert_eq!(store.counters().series_folded, 3);
        // Every request is in its revision's window, errors included.
        let windows = window(&store, now, 60);
        let of = |revision: &str| {
            windows
                .iter()
                .find(|(r, _)| r == revision)
                .map(|(_, s)| (s.requests(), s.errors()))
        };
        assert_eq!(of("v1"), Some((4, 1)));
        assert_eq!(of("v2"), Some((2, 1)));
        // Per class the folded series are exact: the stable's 500 under code `other` of 5xx in
        // its known route, the canary's under route `(other)`.
        let v1 = store.revision("demo", "app", "v1", Role::Stable).unwrap();
        let folded_500 = Outcome {
            status_class: StatusClass::ServerError,
            code: FOLDED_CODE,
            grpc_status: None,
            upstream_failure: UpstreamFailure::None,
        };
        assert_eq!(v1.routes["r"].outcomes[&folded_500].requests, 1);
        let v2 = store.revision("demo", "app", "v2", Role::Canary).unwrap();
        assert_eq!(v2.routes[OVERFLOW_ROUTE].outcomes[&folded_500].requests, 1);
        assert!(!v2.routes.contains_key("r"));
        // A folded series takes its place once: the next batch adds to it.
        apply(&mut store, b(3, vec![series("v2", Role::Canary, 503)]), now).unwrap();
        let v2 = store.revision("demo", "app", "v2", Role::Canary).unwrap();
        assert_eq!(v2.routes[OVERFLOW_ROUTE].outcomes[&folded_500].requests, 2);
        assert_eq!(store.lost_requests(0, u64::MAX), 0, "nothing was lost");
    }

    #[test]
    fn revisions_beyond_the_limit_are_refused_and_counted_as_lost() {
        let mut store = Store::new(StoreConfig {
            max_revisions: 2,
            ..config()
        });
        let now = T0 + 10_000;
        let series = |revision: &str| (key(revision, Role::Unknown, 200), delta(&[100, 100]));
        assert_eq!(
            apply(
                &mut store,
                batch(
                    "vm",
                    1,
                    T0 + 5000,
                    vec![series("a"), series("b"), series("c")]
                ),
                now
            ),
            Ok(Applied::Merged {
                series: 2,
                series_folded: 0,
                refused_requests: 2
            })
        );
        assert_eq!(store.counters().refused_requests, 2);
        // The windows over the batch's second say data was lost; earlier ones do not.
        let second = (T0 + 5000 - 1) / 1000;
        assert_eq!(store.lost_requests(second, second), 2);
        assert_eq!(store.lost_requests(second - 10, second - 1), 0);
        // A service all of whose series were refused leaves nothing behind.
        let mut other = key("z", Role::Unknown, 200);
        other.service = "other".into();
        apply(
            &mut store,
            batch("vm", 2, T0 + 5000, vec![(other, delta(&[1]))]),
            now,
        )
        .unwrap();
        assert!(store.service("demo", "other").is_none());
    }

    #[test]
    fn dropped_requests_mark_the_seconds_they_were_lost_in() {
        let mut store = Store::new(config());
        let now = T0 + 30_000;
        // The filter lost batches covering T0+2s..T0+6s and reports them with the batch ending
        // at T0+10s, whose start it widened to the first lost batch's.
        let mut b = batch(
            "vm",
            1,
            T0 + 10_000,
            vec![(key("v1", Role::Stable, 200), delta(&[100]))],
        );
        b.start_unix_ms = T0 + 2_000;
        b.dropped_requests = 40;
        apply(&mut store, b, now).unwrap();
        let s = |ms: u64| ms / 1000;
        assert_eq!(store.lost_requests(s(T0 + 3_000), s(T0 + 3_000)), 40);
        assert_eq!(store.lost_requests(s(T0 + 9_500), s(T0 + 20_000)), 40);
        assert_eq!(store.lost_requests(s(T0), s(T0 + 1_999)), 0);
        assert_eq!(store.lost_requests(s(T0 + 10_001), s(T0 + 20_000)), 0);
        // Losses older than the window are forgotten with it.
        store.tick(T0 + 10_000 + 601_000);
        assert_eq!(store.lost_requests(0, u64::MAX), 0);
    }

    #[test]
    fn decoded_batches_merge_per_service_runs_exactly() {
        // Decoded batches share label strings between series, which apply uses to look each
        // service up once per run: the result must equal applying owned series one by one.
        let series = |seq| {
            let mut all = Vec::new();
            for service in ["a", "b", "c"] {
                for (revision, role) in [("v1", Role::Stable), ("v2", Role::Canary)] {
                    for code in [200, 503] {
                        let mut k = key(revision, role, code);
                        k.service = service.into();
                        all.push((k, delta(&[100 * seq, 7])));
                    }
                }
            }
            batch("vm", seq, T0 + 5000, all)
        };
        let now = T0 + 10_000;
        let (mut decoded, mut owned) = (Store::new(config()), Store::new(config()));
        for seq in 1..=3 {
            let encoded = series(seq).encode();
            let view = BatchView::decode(&encoded).unwrap();
            assert_eq!(
                decoded.apply(&view, now),
                Ok(Applied::Merged {
                    series: 12,
                    series_folded: 0,
                    refused_requests: 0
                })
            );
            apply(&mut owned, series(seq), now).unwrap();
        }
        assert_eq!(decoded.series(), 12);
        let newest = now / 1000 - 1;
        let mut acc = Accumulator::default();
        for name in ["a", "b", "c"] {
            let (d, o) = (
                decoded.service("demo", name).unwrap(),
                owned.service("demo", name).unwrap(),
            );
            let summaries = |s: &Service, acc: &mut Accumulator| {
                s.windows(newest, &[60], acc)
                    .into_iter()
                    .map(|r| (r.role, r.summaries))
                    .collect::<Vec<_>>()
            };
            assert_eq!(summaries(d, &mut acc), summaries(o, &mut acc));
            assert_eq!(summaries(d, &mut acc)[0].1[0].requests(), 3 * 4);
        }
        // The guard folds from the middle of a run of a service on, and every request still
        // reaches its window.
        let mut guarded = Store::new(StoreConfig {
            max_series: 6,
            ..config()
        });
        let encoded = series(1).encode();
        let view = BatchView::decode(&encoded).unwrap();
        assert_eq!(
            guarded.apply(&view, now),
            Ok(Applied::Merged {
                series: 6,
                series_folded: 6,
                refused_requests: 0
            })
        );
        let c = guarded.service("demo", "c").unwrap();
        assert_eq!(
            c.windows(newest, &[60], &mut acc)
                .iter()
                .map(|r| r.summaries[0].requests())
                .sum::<u64>(),
            8
        );
    }

    #[test]
    fn idle_series_and_dead_instances_expire_after_the_ttl() {
        let mut store = Store::new(StoreConfig {
            series_ttl_ms: 600_000,
            ..config()
        });
        apply(
            &mut store,
            batch(
                "old",
                1,
                T0,
                vec![(key("v1", Role::Stable, 200), delta(&[100]))],
            ),
            T0,
        )
        .unwrap();
        apply(
            &mut store,
            batch(
                "new",
                1,
                T0 + 300_000,
                vec![(key("v2", Role::Canary, 200), delta(&[100]))],
            ),
            T0 + 300_000,
        )
        .unwrap();
        store.tick(T0 + 600_000);
        assert_eq!(store.series(), 2);
        store.tick(T0 + 600_001);
        assert_eq!(store.series(), 1);
        assert!(totals(&store, "v1", Role::Stable, 200).is_none());
        assert_eq!(store.senders(), 1);
        assert_eq!(store.counters().series_expired, 1);
        // After expiry the same sequence from the dead instance would be new again.
        store.tick(T0 + 900_001);
        assert_eq!((store.series(), store.senders()), (0, 0));
        assert!(store.service("demo", "app").is_none());
    }

    #[test]
    fn window_seconds_older_than_the_retention_are_dropped() {
        let mut store = Store::new(StoreConfig {
            window_seconds: 60,
            series_ttl_ms: 3_600_000,
            ..config()
        });
        apply(
            &mut store,
            batch(
                "vm",
                1,
                T0 + 1000,
                vec![(key("v1", Role::Stable, 200), delta(&[100]))],
            ),
            T0 + 2000,
        )
        .unwrap();
        store.tick(T0 + 30_000);
        assert_eq!(window(&store, T0 + 30_000, 60)[0].1.requests(), 1);
        store.tick(T0 + 61_999);
        assert_eq!(
            window(&store, T0 + 61_999, 60)[0].1.requests(),
            0,
            "outside the window"
        );
        store.tick(T0 + 62_000);
        let rev = store.revision("demo", "app", "v1", Role::Stable).unwrap();
        assert!(rev.window.is_empty());
        assert_eq!(
            totals(&store, "v1", Role::Stable, 200).unwrap().requests,
            1,
            "counters stay"
        );
    }

    #[test]
    fn all_windows_together_stay_within_the_global_cap() {
        let cap = 400 * 1024;
        let mut store = Store::new(StoreConfig {
            max_window_bytes: cap,
            ..config()
        });
        let dense = Histogram::from_bins((0..COUNTS_LEN as u16).map(|i| (i, 3))).unwrap();
        for second in 0..120u64 {
            let end = T0 + (second + 1) * 1000;
            let series = ["a", "b", "c", "d"]
                .iter()
                .map(|rev| {
                    let d = SeriesDelta {
                        requests: dense.count(),
                        duration: dense.clone(),
                        ..Default::default()
                    };
                    (key(rev, Role::Stable, 200), d)
                })
                .collect();
            apply(&mut store, batch("vm", second + 1, end, series), end).unwrap();
            store.tick(end + 1000);
        }
        assert!(store.counters().window_merges > 0);
        let payload: usize = store.window_heap_bytes();
        assert!(payload < cap + 4 * 40 * 1024, "{payload}");
        // Still exact over what each answer covers.
        for (_, s) in window(&store, T0 + 121_000, 120) {
            assert_eq!(s.requests(), dense.count() * s.covered_seconds.min(120));
        }
    }

    #[test]
    fn duration_buckets_match_count_at_or_below() {
        let buckets = DurationBuckets::new(vec![0.001, 0.01, 0.1, 1.0], None);
        let mut h = Histogram::new();
        for v in [
            5, 999, 1000, 1001, 9_999, 10_000, 50_000, 100_000, 2_000_000,
        ] {
            h.record(v);
        }
        let mut d = Durations::new(&buckets);
        d.record(h.bins(), &buckets);
        let mut cumulative = 0;
        for (i, &bound) in buckets.bounds().iter().enumerate() {
            cumulative += d.buckets[i];
            assert_eq!(
                cumulative,
                h.count_at_or_below((bound * 1e6) as u64),
                "le={bound}"
            );
        }
        assert_eq!(d.buckets.iter().sum::<u64>(), 9);
        let exact_sum =
            (5 + 999 + 1000 + 1001 + 9_999 + 10_000 + 50_000 + 100_000 + 2_000_000) as f64 / 1e6;
        assert!((d.sum_seconds - exact_sum).abs() / exact_sum < 0.004);
    }

    #[test]
    fn native_buckets_hold_each_duration_in_its_power_of_two_slice() {
        let buckets = DurationBuckets::new(vec![0.1], Some(3));
        let values = [1, 7, 1_000, 1_020, 9_999, 240_000, 240_100, 3_000_000];
        let mut h = Histogram::new();
        values.iter().for_each(|&v| h.record(v));
        let mut d = Durations::new(&buckets);
        d.record(h.bins(), &buckets);
        // The filter records 0 µs as 1 µs, but a batch may carry HDR index 0 (exactly 0 µs).
        d.record(&[(0, 2)], &buckets);
        assert_eq!(d.zero_count, 2);
        let mut expected: Vec<(i32, u64)> = Vec::new();
        for &v in &values {
            // None of these lies within 1% of a bucket edge, so the HDR bin cannot straddle one.
            let index = ((v as f64 / 1e6).log2() * 8.0).ceil() as i32;
            match expected.iter_mut().find(|(i, _)| *i == index) {
                Some((_, n)) => *n += 1,
                None => expected.push((index, 1)),
            }
        }
        expected.sort();
        assert_eq!(d.native, expected);
        assert_eq!(
            d.native.iter().map(|b| b.1).sum::<u64>() + d.zero_count,
            d.count
        );
        // Without a schema nothing native is kept.
        let classic = DurationBuckets::new(vec![0.1], None);
        let mut d = Durations::new(&classic);
        d.record(h.bins(), &classic);
        assert!(d.native.is_empty() && d.zero_count == 0);
    }

    #[test]
    fn native_spans_are_gaps_and_deltas_as_prometheus_reads_them() {
        let mut d = Durations::new(&DurationBuckets::new(vec![0.1], Some(3)));
        assert_eq!(d.native_spans(), (vec![(0, 0)], vec![]));
        d.native = vec![(-80, 3), (-79, 5), (-78, 1), (-60, 4), (10, 4)];
        assert_eq!(
            d.native_spans(),
            (vec![(-80, 3), (17, 1), (69, 1)], vec![3, 2, -4, 3, 0])
        );
    }

    /// `/v1/stats` is a contract with the controller and with users' own clients: its JSON for
    /// fixed traffic is pinned in `testdata/stats-v1.json` (`PLOVER_UPDATE_GOLDEN=1` rewrites
    /// it; a change there is a change of the API).
    #[test]
    fn stats_json_matches_the_golden_file() {
        let mut store = Store::new(config());
        let now = T0 + 100_000;
        let end = now - 2_000;
        let traffic = batch(
            "vm-a",
            1,
            end,
            vec![
                (
                    key("v1", Role::Stable, 200),
                    delta(&[900, 1_100, 2_500, 40_000]),
                ),
                (key("v2", Role::Canary, 200), delta(&[1_000, 3_000])),
                (key("v2", Role::Canary, 503), delta(&[150_000])),
            ],
        );
        apply(&mut store, traffic, now).unwrap();
        let query = crate::stats::StatsQuery {
            namespace: "demo".into(),
            service: "app".into(),
            window_seconds: 30,
        };
        let answer = crate::stats::answer(&store, &query, now);
        let json = serde_json::to_string_pretty(&answer).unwrap() + "\n";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/stats-v1.json");
        if std::env::var_os("PLOVER_UPDATE_GOLDEN").is_some() {
            std::fs::write(path, &json).unwrap();
        }
        let golden =
            std::fs::read_to_string(path).expect("golden file (PLOVER_UPDATE_GOLDEN=1 writes it)");
        assert_eq!(json, golden, "the /v1/stats JSON changed");
        // What clients read back is what was served.
        let parsed: plover_wire::stats::StatsResponse = serde_json::from_str(&golden).unwrap();
        assert_eq!(parsed, answer);
    }
}
