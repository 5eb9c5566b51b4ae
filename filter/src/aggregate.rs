//! Per-VM aggregation between two flushes.
//!
//! Each worker VM counts its own requests; nothing is shared across threads. A flush turns the
//! counts into one [`Batch`] of deltas and starts a new interval, so the exporter only ever adds.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeMap;

use plover_wire::{Batch, SeriesDelta, SeriesKey, SeriesKeyRef};

/// Most series one VM keeps per interval. Labels come from configuration, status codes and (with
/// the header source) application-chosen revision ids; the cap keeps a misbehaving application
/// from growing the VM's memory or a batch past what the exporter accepts. Requests for new
/// series beyond it are counted as dropped.
pub const MAX_SERIES_PER_INTERVAL: usize = 4096;

/// Most revisions named by the application's response header that one service may have at a
/// time (in one VM): an application cannot create unbounded revisions. Requests naming a
/// revision beyond it are counted with role `unknown` and no revision.
pub const MAX_HEADER_REVISIONS_PER_SERVICE: usize = 16;

/// How long a header-named revision stays counted against its service after its last
/// request: the exporter's default series lifetime.
pub const HEADER_REVISION_MEMORY_MS: u64 = 10 * 60 * 1000;

/// A series key as a borrowed [`SeriesKeyRef`], so that an owned [`SeriesKey`] in a map can be
/// found from borrowed labels (the two order alike: same fields, same order).
trait AsKeyRef {
    fn key_ref(&self) -> SeriesKeyRef<'_>;
}

impl AsKeyRef for SeriesKey {
    fn key_ref(&self) -> SeriesKeyRef<'_> {
        self.as_ref()
    }
}

impl AsKeyRef for SeriesKeyRef<'_> {
    fn key_ref(&self) -> SeriesKeyRef<'_> {
        *self
    }
}

impl<'a> Borrow<dyn AsKeyRef + 'a> for SeriesKey {
    fn borrow(&self) -> &(dyn AsKeyRef + 'a) {
        self
    }
}

impl PartialEq for dyn AsKeyRef + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.key_ref() == other.key_ref()
    }
}

impl Eq for dyn AsKeyRef + '_ {}

impl PartialOrd for dyn AsKeyRef + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for dyn AsKeyRef + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key_ref().cmp(&other.key_ref())
    }
}

/// The series seen since the last flush.
#[derive(Debug)]
pub struct Aggregate {
    /// Ordered, because a batch lists its series in ascending key order.
    series: BTreeMap<SeriesKey, SeriesDelta>,
    interval_start_ms: u64,
    /// Requests not recorded because the series cap was hit.
    dropped_requests: u64,
    /// Some requests of the interval were counted without their sizes.
    sizes_unmeasured: bool,
    max_series: usize,
    /// Per namespace and service: the header-named revisions admitted, with the start of the
    /// interval they were last seen in. Nested so that a known revision is found without
    /// allocating.
    header_revisions: BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>>,
}

impl Aggregate {
    pub fn new(now_ms: u64) -> Aggregate {
        Aggregate::with_max_series(now_ms, MAX_SERIES_PER_INTERVAL)
    }

    pub fn with_max_series(now_ms: u64, max_series: usize) -> Aggregate {
        Aggregate {
            series: BTreeMap::new(),
            interval_start_ms: now_ms,
            dropped_requests: 0,
            sizes_unmeasured: false,
            max_series,
            header_revisions: BTreeMap::new(),
        }
    }

    /// Whether a revision the application named in its response header may be counted as
    /// such: it is one of the service's recent ones, or the service has fewer than
    /// [`MAX_HEADER_REVISIONS_PER_SERVICE`].
    pub fn admit_header_revision(
        &mut self,
        namespace: &str,
        service: &str,
        revision: &str,
    ) -> bool {
        let now = self.interval_start_ms;
        let known = self
            .header_revisions
            .get_mut(namespace)
            .and_then(|services| services.get_mut(service));
        let revisions = match known {
            Some(revisions) => revisions,
            None => self
                .header_revisions
                .entry(namespace.to_owned())
                .or_default()
                .entry(service.to_owned())
                .or_default(),
        };
        if let Some(seen) = revisions.get_mut(revision) {
            *seen = now;
            return true;
        }
        if revisions.len() >= MAX_HEADER_REVISIONS_PER_SERVICE {
            return false;
        }
        revisions.insert(revision.to_owned(), now);
        true
    }

    /// Counts one request; `sizes` are its request and response bytes, `None` when they were
    /// not measured (the batch then says so). Allocates only for a series new in the interval.
    pub fn record(
        &mut self,
        key: SeriesKeyRef<'_>,
        duration_micros: u64,
        sizes: Option<(u64, u64)>,
    ) {
        let (request_bytes, response_bytes) = sizes.unwrap_or_else(|| {
            self.sizes_unmeasured = true;
            (0, 0)
        });
        let full = self.series.len() >= self.max_series;
        let delta = match self.series.get_mut(&key as &dyn AsKeyRef) {
            Some(delta) => delta,
            None if full => {
                self.dropped_requests = self.dropped_requests.saturating_add(1);
                return;
            }
            None => self.series.entry(key.to_owned_key()).or_default(),
        };
        delta.requests = delta.requests.saturating_add(1);
        delta.request_bytes = delta.request_bytes.saturating_add(request_bytes);
        delta.response_bytes = delta.response_bytes.saturating_add(response_bytes);
        delta.duration.record(duration_micros);
    }

    /// Whether nothing happened since the last flush.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty() && self.dropped_requests == 0
    }

    /// Ends the interval at `now_ms`: its series and dropped count go into a batch (gateway,
    /// instance and sequence are left for the caller), and a new interval starts.
    pub fn take_batch(&mut self, now_ms: u64) -> Batch {
        // The host clock is wall time and may step back; a batch's interval must not.
        let end = now_ms.max(self.interval_start_ms);
        let batch = Batch {
            start_unix_ms: self.interval_start_ms,
            end_unix_ms: end,
            dropped_requests: std::mem::take(&mut self.dropped_requests),
            sizes_unmeasured: std::mem::take(&mut self.sizes_unmeasured),
            series: std::mem::take(&mut self.series).into_iter().collect(),
            ..Batch::default()
        };
        self.interval_start_ms = end;
        let forget_before = end.saturating_sub(HEADER_REVISION_MEMORY_MS);
        self.header_revisions.retain(|_, services| {
            services.retain(|_, revisions| {
                revisions.retain(|_, seen| *seen >= forget_before);
                !revisions.is_empty()
            });
            !services.is_empty()
        });
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plover_wire::Role;

    fn key(revision: &str, code: u16) -> SeriesKey {
        let role = if revision == "v2" {
            Role::Canary
        } else {
            Role::Stable
        };
        SeriesKey::answered("demo", "app", "r", revision, role, code)
    }

    #[test]
    fn an_interval_with_a_request_counted_without_sizes_says_so_once() {
        let mut agg = Aggregate::new(1_000);
        agg.record(key("v1", 200).as_ref(), 10, Some((5, 6)));
        agg.record(key("v1", 200).as_ref(), 10, None);
        let batch = agg.take_batch(2_000);
        assert!(batch.sizes_unmeasured);
        assert_eq!(batch.series[0].1.request_bytes, 5);
        agg.record(key("v1", 200).as_ref(), 10, Some((5, 6)));
        assert!(!agg.take_batch(3_000).sizes_unmeasured);
    }

    #[test]
    fn requests_are_summed_per_series_in_key_order() {
        let mut agg = Aggregate::new(1_000);
        agg.record(key("v2", 200).as_ref(), 1_500, Some((100, 1_000)));
        agg.record(key("v1", 200).as_ref(), 800, Some((10, 20)));
        agg.record(key("v2", 200).as_ref(), 2_500, Some((100, 1_000)));
        agg.record(key("v2", 503).as_ref(), 90, Some((1, 2)));
        let batch = agg.take_batch(2_000);
        assert_eq!(
            (
                batch.start_unix_ms,
                batch.end_unix_ms,
                batch.dropped_requests
            ),
            (1_000, 2_000, 0)
        );
        let keys: Vec<_> = batch
            .series
            .iter()
            .map(|(k, _)| (k.revision.as_str(), k.code))
            .collect();
        assert_eq!(keys, [("v1", 200), ("v2", 200), ("v2", 503)]);
        let (_, canary_ok) = &batch.series[1];
        assert_eq!(
            (
                canary_ok.requests,
                canary_ok.request_bytes,
                canary_ok.response_bytes
            ),
            (2, 200, 2_000)
        );
        assert_eq!(canary_ok.duration.count(), 2);
        assert_eq!(batch.requests(), 4);
        // The encoded batch passes the exporter's strict decoder.
        let mut sent = batch.clone();
        sent.gateway = "gw".into();
        sent.instance = "i-1".into();
        sent.sequence = 1;
        assert_eq!(Batch::decode(&sent.encode()).unwrap(), sent);
    }

    #[test]
    fn take_batch_starts_a_fresh_interval() {
        let mut agg = Aggregate::new(1_000);
        agg.record(key("v1", 200).as_ref(), 1, Some((0, 0)));
        assert!(!agg.is_empty());
        agg.take_batch(2_000);
        assert!(agg.is_empty());
        let next = agg.take_batch(3_000);
        assert!(next.series.is_empty());
        assert_eq!((next.start_unix_ms, next.end_unix_ms), (2_000, 3_000));
    }

    #[test]
    fn a_clock_stepping_back_never_inverts_the_interval() {
        let mut agg = Aggregate::new(5_000);
        let batch = agg.take_batch(4_000);
        assert_eq!((batch.start_unix_ms, batch.end_unix_ms), (5_000, 5_000));
    }

    #[test]
    fn requests_beyond_the_series_cap_are_counted_as_dropped() {
        let mut agg = Aggregate::with_max_series(0, 2);
        agg.record(key("v1", 200).as_ref(), 1, Some((0, 0)));
        agg.record(key("v2", 200).as_ref(), 1, Some((0, 0)));
        agg.record(key("v3", 200).as_ref(), 1, Some((0, 0)));
        agg.record(key("v3", 500).as_ref(), 1, Some((0, 0)));
        // Existing series still count.
        agg.record(key("v1", 200).as_ref(), 1, Some((0, 0)));
        let batch = agg.take_batch(1);
        assert_eq!(
            (batch.series.len(), batch.requests(), batch.dropped_requests),
            (2, 3, 2)
        );
        assert_eq!(agg.take_batch(2).dropped_requests, 0);
    }

    #[test]
    fn an_application_cannot_create_unbounded_revisions() {
        let mut agg = Aggregate::new(0);
        for i in 0..MAX_HEADER_REVISIONS_PER_SERVICE {
            assert!(agg.admit_header_revision("demo", "app", &format!("r{i}")));
        }
        assert!(!agg.admit_header_revision("demo", "app", "one-too-many"));
        assert!(
            agg.admit_header_revision("demo", "app", "r3"),
            "a known one"
        );
        assert!(
            agg.admit_header_revision("demo", "other", "x"),
            "per service"
        );
        // Revisions not seen for the memory period make room again.
        agg.take_batch(HEADER_REVISION_MEMORY_MS / 2);
        assert!(agg.admit_header_revision("demo", "app", "r0"));
        assert!(!agg.admit_header_revision("demo", "app", "new"));
        agg.take_batch(HEADER_REVISION_MEMORY_MS + 1);
        // r1…r15 were forgotten, r0 (seen since) was not: 15 places.
        for i in 0..MAX_HEADER_REVISIONS_PER_SERVICE - 1 {
            assert!(agg.admit_header_revision("demo", "app", &format!("n{i}")));
        }
        assert!(!agg.admit_header_revision("demo", "app", "one-too-many"));
    }
}
