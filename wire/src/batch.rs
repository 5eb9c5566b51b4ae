//! The batch a filter VM sends to the exporter every flush: per-series deltas since its
//! previous batch, identified by (gateway, VM instance, sequence) so that a retransmit can be
//! recognised and applied exactly once.
//!
//! Layout (version 2), all integers LEB128 unless noted:
//!
//! ```text
//! "PLVB" u8:version
//! strings: count, then (len, UTF-8 bytes)…        one table, referenced by index below
//! gateway:str instance:str sequence start_unix_ms end_unix_ms dropped_requests
//! flags (bit 0: sizes not measured)               absent in version 1, which is still read
//! series: count, then per series:
//!   namespace:str service:str route:str revision:str role:u8 status_class:u8
//!   code grpc_status(0 = none, else status+1) upstream_failure:u8
//!   requests request_bytes response_bytes duration:HdrHistogram-V2 (self-delimiting)
//! ```
//!
//! Decoding is strict: anything truncated, oversized, out of range, duplicated or
//! inconsistent (a histogram whose count differs from `requests`) is an error.

use std::borrow::Cow;

use crate::histogram::Histogram;
use crate::series::{Role, SeriesDelta, SeriesKey, SeriesKeyRef, StatusClass, UpstreamFailure};
use crate::varint::{read_u64, write_u64};
use crate::WireError;

pub const MAGIC: [u8; 4] = *b"PLVB";
pub const VERSION: u8 = 2;
/// The version before `flags`; still decoded (flags 0), so filters of the previous release
/// keep reporting to a new exporter during an upgrade.
pub const VERSION_1: u8 = 1;
/// `flags` bit: some requests of the batch were counted without their sizes.
const FLAG_SIZES_UNMEASURED: u64 = 1;
/// Media type of an encoded batch.
pub const CONTENT_TYPE: &str = "application/vnd.plover.batch.v1";
/// Path the exporter receives batches on.
pub const INGEST_PATH: &str = "/v1/batches";
/// Header of a 2xx answer to a batch: how many of its requests the exporter could not keep
/// (new revisions beyond its limit). The filter counts them as dropped, so the loss is
/// reported like any other.
pub const REFUSED_REQUESTS_HEADER: &str = "x-plover-refused-requests";
/// Largest encoded batch any party accepts.
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Most series in one batch.
pub const MAX_SERIES: usize = 100_000;
/// Longest label value or identifier, in bytes.
pub const MAX_STRING_BYTES: usize = 512;

/// One flush of one filter VM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Which gateway (Envoy node) sent it.
    pub gateway: String,
    /// Which VM inside that gateway; new every time a VM starts.
    pub instance: String,
    /// Per-instance sequence number, starting at 1, incremented for every new batch.
    pub sequence: u64,
    /// Interval the deltas cover, in Unix milliseconds.
    pub start_unix_ms: u64,
    pub end_unix_ms: u64,
    /// Requests whose data the VM had to drop (buffer full) since its previous batch.
    pub dropped_requests: u64,
    /// Some requests were counted without their sizes (the filter's `record.sizes` is off):
    /// `request_bytes` and `response_bytes` are then not the traffic's volume.
    pub sizes_unmeasured: bool,
    /// Series, no key twice. Decoded batches hold them in ascending key order; `encode`
    /// writes them in that order whatever the order here.
    pub series: Vec<(SeriesKey, SeriesDelta)>,
}

impl Batch {
    /// Total requests carried by the batch.
    pub fn requests(&self) -> u64 {
        self.series
            .iter()
            .map(|(_, d)| d.requests)
            .fold(0, u64::saturating_add)
    }

    /// Encodes the batch, series in ascending key order (what `decode` requires). Series
    /// must be unique.
    pub fn encode(&self) -> Vec<u8> {
        let mut order: Vec<&(SeriesKey, SeriesDelta)> = self.series.iter().collect();
        order.sort_by(|a, b| a.0.cmp(&b.0));
        let mut strings = StringTable::default();
        let gateway = strings.index(&self.gateway);
        let instance = strings.index(&self.instance);
        let series_labels: Vec<[u64; 4]> = order
            .iter()
            .map(|(k, _)| {
                [
                    strings.index(&k.namespace),
                    strings.index(&k.service),
                    strings.index(&k.route),
                    strings.index(&k.revision),
                ]
            })
            .collect();

        let mut out = Vec::with_capacity(64 + self.series.len() * 64);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        write_u64(&mut out, strings.values.len() as u64);
        for s in &strings.values {
            write_u64(&mut out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        for v in [
            gateway,
            instance,
            self.sequence,
            self.start_unix_ms,
            self.end_unix_ms,
            self.dropped_requests,
            if self.sizes_unmeasured {
                FLAG_SIZES_UNMEASURED
            } else {
                0
            },
        ] {
            write_u64(&mut out, v);
        }
        write_u64(&mut out, self.series.len() as u64);
        for ((key, delta), labels) in order.into_iter().zip(series_labels) {
            for l in labels {
                write_u64(&mut out, l);
            }
            out.push(key.role.code());
            out.push(key.status_class as u8);
            write_u64(&mut out, u64::from(key.code));
            write_u64(&mut out, key.grpc_status.map_or(0, |g| u64::from(g) + 1));
            out.push(key.upstream_failure as u8);
            write_u64(&mut out, delta.requests);
            write_u64(&mut out, delta.request_bytes);
            write_u64(&mut out, delta.response_bytes);
            delta.duration.encode_v2(&mut out);
        }
        out
    }

    /// Decodes and validates a batch into owned data. The exporter, which only reads a batch
    /// once, uses [`BatchView::decode`] instead; both validate identically.
    pub fn decode(bytes: &[u8]) -> Result<Batch, WireError> {
        Ok(BatchView::decode(bytes)?.to_batch())
    }

    /// This batch as a [`BatchView`], e.g. to hand data built in memory to code that reads
    /// views. The view holds the series in this batch's order, which need not be ascending.
    pub fn view(&self) -> BatchView<'_> {
        let mut strings: Vec<&str> = Vec::with_capacity(2 + 4 * self.series.len());
        strings.extend([self.gateway.as_str(), self.instance.as_str()]);
        let mut bins = Vec::with_capacity(
            self.series
                .iter()
                .map(|(_, d)| d.duration.bins().len())
                .sum(),
        );
        let series = self
            .series
            .iter()
            .map(|(key, delta)| {
                let first = bins.len();
                bins.extend_from_slice(delta.duration.bins());
                let labels = [0, 1, 2, 3].map(|i| (strings.len() + i) as u32);
                strings.extend([
                    key.namespace.as_str(),
                    &key.service,
                    &key.route,
                    &key.revision,
                ]);
                SeriesHead {
                    labels,
                    role: key.role,
                    status_class: key.status_class,
                    code: key.code,
                    grpc_status: key.grpc_status,
                    upstream_failure: key.upstream_failure,
                    requests: delta.requests,
                    request_bytes: delta.request_bytes,
                    response_bytes: delta.response_bytes,
                    duration_count: delta.duration.count(),
                    bins: (first, bins.len()),
                }
            })
            .collect::<Vec<_>>();
        BatchView {
            gateway: &self.gateway,
            instance: &self.instance,
            sequence: self.sequence,
            start_unix_ms: self.start_unix_ms,
            end_unix_ms: self.end_unix_ms,
            dropped_requests: self.dropped_requests,
            sizes_unmeasured: self.sizes_unmeasured,
            strings,
            series: Cow::Owned(series),
            bins: Cow::Owned(bins),
        }
    }
}

/// One series of a [`BatchView`]: its key and what it saw, durations as the occupied
/// `(index, count)` pairs of its HDR histogram (ascending).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeriesRef<'v, 'a> {
    pub key: SeriesKeyRef<'a>,
    pub requests: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Sum of the counts in `duration`; equals `requests` in a decoded batch.
    pub duration_count: u64,
    pub duration: &'v [(u16, u64)],
}

/// A series as decoded, its labels as indices into the batch's string table, so that it
/// holds no borrow and [`DecodeBuffers`] can be kept from one batch to the next.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SeriesHead {
    /// namespace, service, route, revision.
    labels: [u32; 4],
    role: Role,
    status_class: StatusClass,
    code: u16,
    grpc_status: Option<u8>,
    upstream_failure: UpstreamFailure,
    requests: u64,
    request_bytes: u64,
    response_bytes: u64,
    duration_count: u64,
    /// Range of this series' pairs in the view's bins.
    bins: (usize, usize),
}

/// Storage for decoding batches, kept by a caller that decodes many
/// ([`BatchView::decode_with`]) so that decoding a batch allocates next to nothing.
#[derive(Debug, Default)]
pub struct DecodeBuffers {
    series: Vec<SeriesHead>,
    bins: Vec<(u16, u64)>,
}

impl DecodeBuffers {
    /// Heap bytes held.
    pub fn capacity_bytes(&self) -> usize {
        self.series.capacity() * core::mem::size_of::<SeriesHead>()
            + self.bins.capacity() * core::mem::size_of::<(u16, u64)>()
    }

    /// Frees the storage if it holds more than `bytes` (after an unusually large batch).
    pub fn shrink_to(&mut self, bytes: usize) {
        if self.capacity_bytes() > bytes {
            *self = DecodeBuffers::default();
        }
    }
}

/// A decoded batch that borrows its labels from the encoded bytes and keeps every series'
/// histogram pairs in one vector: decoding allocates a small string table per batch instead
/// of five allocations per series. Same validation as [`Batch::decode`] (built on it).
#[derive(Clone, Debug)]
pub struct BatchView<'a> {
    pub gateway: &'a str,
    pub instance: &'a str,
    pub sequence: u64,
    pub start_unix_ms: u64,
    pub end_unix_ms: u64,
    pub dropped_requests: u64,
    pub sizes_unmeasured: bool,
    strings: Vec<&'a str>,
    series: Cow<'a, [SeriesHead]>,
    bins: Cow<'a, [(u16, u64)]>,
}

impl<'a> BatchView<'a> {
    /// Decodes and validates a batch: anything truncated, oversized, out of range,
    /// duplicated or inconsistent is an error, and nothing is returned.
    pub fn decode(bytes: &'a [u8]) -> Result<BatchView<'a>, WireError> {
        let mut buffers = DecodeBuffers::default();
        let header = decode_into(bytes, &mut buffers)?;
        Ok(header.with(Cow::Owned(buffers.series), Cow::Owned(buffers.bins)))
    }

    /// [`BatchView::decode`] into `buffers`, reusing their storage.
    pub fn decode_with(
        bytes: &'a [u8],
        buffers: &'a mut DecodeBuffers,
    ) -> Result<BatchView<'a>, WireError> {
        let header = decode_into(bytes, buffers)?;
        Ok(header.with(Cow::Borrowed(&buffers.series), Cow::Borrowed(&buffers.bins)))
    }

    /// Number of series.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// The series, in the batch's order (ascending key order when decoded).
    pub fn series(&self) -> impl ExactSizeIterator<Item = SeriesRef<'_, 'a>> + '_ {
        self.series.iter().map(|head| {
            // Indices and ranges were checked while decoding (or built from an owned batch),
            // so the fallbacks are never taken.
            let label = |i: usize| {
                self.strings
                    .get(head.labels[i] as usize)
                    .copied()
                    .unwrap_or("")
            };
            SeriesRef {
                key: SeriesKeyRef {
                    namespace: label(0),
                    service: label(1),
                    route: label(2),
                    revision: label(3),
                    role: head.role,
                    status_class: head.status_class,
                    code: head.code,
                    grpc_status: head.grpc_status,
                    upstream_failure: head.upstream_failure,
                },
                requests: head.requests,
                request_bytes: head.request_bytes,
                response_bytes: head.response_bytes,
                duration_count: head.duration_count,
                duration: self.bins.get(head.bins.0..head.bins.1).unwrap_or(&[]),
            }
        })
    }

    /// The same batch with owned data.
    pub fn to_batch(&self) -> Batch {
        Batch {
            gateway: self.gateway.to_owned(),
            instance: self.instance.to_owned(),
            sequence: self.sequence,
            start_unix_ms: self.start_unix_ms,
            end_unix_ms: self.end_unix_ms,
            dropped_requests: self.dropped_requests,
            sizes_unmeasured: self.sizes_unmeasured,
            series: self
                .series()
                .map(|s| {
                    let delta = SeriesDelta {
                        requests: s.requests,
                        request_bytes: s.request_bytes,
                        response_bytes: s.response_bytes,
                        duration: Histogram::from_valid_bins(s.duration, s.duration_count),
                    };
                    (s.key.to_owned_key(), delta)
                })
                .collect(),
        }
    }
}

/// Everything of a decoded batch but its series.
struct Header<'a> {
    gateway: &'a str,
    instance: &'a str,
    sequence: u64,
    start_unix_ms: u64,
    end_unix_ms: u64,
    dropped_requests: u64,
    sizes_unmeasured: bool,
    strings: Vec<&'a str>,
}

impl<'a> Header<'a> {
    fn with(self, series: Cow<'a, [SeriesHead]>, bins: Cow<'a, [(u16, u64)]>) -> BatchView<'a> {
        let Header {
            gateway,
            instance,
            sequence,
            start_unix_ms,
            end_unix_ms,
            dropped_requests,
            sizes_unmeasured,
            strings,
        } = self;
        BatchView {
            gateway,
            instance,
            sequence,
            start_unix_ms,
            end_unix_ms,
            dropped_requests,
            sizes_unmeasured,
            strings,
            series,
            bins,
        }
    }
}

/// The one strict decoder: validates the whole batch, filling `buffers` with its series.
fn decode_into<'a>(bytes: &'a [u8], buffers: &mut DecodeBuffers) -> Result<Header<'a>, WireError> {
    if bytes.len() > MAX_BATCH_BYTES {
        return Err(WireError::TooLarge {
            limit: MAX_BATCH_BYTES,
        });
    }
    let mut input = bytes;
    let magic = take(&mut input, 4)?;
    if magic != MAGIC {
        return Err(WireError::Malformed("not a Plover batch (bad magic)"));
    }
    let version = take(&mut input, 1)?[0];
    if version != VERSION && version != VERSION_1 {
        return Err(WireError::UnsupportedVersion(version));
    }
    let string_count = bounded(
        read_u64(&mut input)?,
        (4 * MAX_SERIES + 2) as u64,
        "string count",
    )?;
    let mut strings: Vec<&'a str> = Vec::with_capacity(string_count.min(1024));
    for _ in 0..string_count {
        let len = bounded(
            read_u64(&mut input)?,
            MAX_STRING_BYTES as u64,
            "string length",
        )?;
        let raw = take(&mut input, len)?;
        let s =
            core::str::from_utf8(raw).map_err(|_| WireError::Malformed("string is not UTF-8"))?;
        strings.push(s);
    }
    let index = |input: &mut &'a [u8]| -> Result<u32, WireError> {
        let i = read_u64(input)?;
        if i < strings.len() as u64 {
            Ok(i as u32)
        } else {
            Err(WireError::Malformed("string index out of range"))
        }
    };
    let gateway = strings[index(&mut input)? as usize];
    let instance = strings[index(&mut input)? as usize];
    if gateway.is_empty() || instance.is_empty() {
        return Err(WireError::Malformed(
            "gateway and instance must not be empty",
        ));
    }
    let sequence = read_u64(&mut input)?;
    let start_unix_ms = read_u64(&mut input)?;
    let end_unix_ms = read_u64(&mut input)?;
    if start_unix_ms > end_unix_ms {
        return Err(WireError::Malformed("interval starts after it ends"));
    }
    let dropped_requests = read_u64(&mut input)?;
    let flags = if version == VERSION_1 {
        0
    } else {
        read_u64(&mut input)?
    };
    if flags & !FLAG_SIZES_UNMEASURED != 0 {
        return Err(WireError::Malformed("unknown batch flags"));
    }
    let series_count = bounded(read_u64(&mut input)?, MAX_SERIES as u64, "series count")?;
    let DecodeBuffers { series, bins } = buffers;
    series.clear();
    bins.clear();
    series.reserve(series_count.min(4096));
    for _ in 0..series_count {
        let labels = [
            index(&mut input)?,
            index(&mut input)?,
            index(&mut input)?,
            index(&mut input)?,
        ];
        let codes = take(&mut input, 2)?;
        let role = Role::from_code(codes[0]).ok_or(WireError::Malformed("unknown role"))?;
        let status_class =
            StatusClass::from_code(codes[1]).ok_or(WireError::Malformed("unknown status class"))?;
        let code = bounded(read_u64(&mut input)?, 999, "status code")? as u16;
        let grpc_status = match bounded(read_u64(&mut input)?, 17, "grpc status")? {
            0 => None,
            g => Some((g - 1) as u8),
        };
        let upstream_failure = UpstreamFailure::from_code(take(&mut input, 1)?[0])
            .ok_or(WireError::Malformed("unknown upstream failure"))?;
        let requests = read_u64(&mut input)?;
        let request_bytes = read_u64(&mut input)?;
        let response_bytes = read_u64(&mut input)?;
        let first = bins.len();
        let (duration_count, used) = Histogram::decode_v2_prefix_into(input, bins)?;
        input = &input[used..];
        if duration_count != requests {
            return Err(WireError::Malformed(
                "histogram count differs from the request count",
            ));
        }
        let head = SeriesHead {
            labels,
            role,
            status_class,
            code,
            grpc_status,
            upstream_failure,
            requests,
            request_bytes,
            response_bytes,
            duration_count,
            bins: (first, bins.len()),
        };
        // Ascending order makes duplicates adjacent: one comparison per series finds them.
        if series
            .last()
            .is_some_and(|previous| compare_keys(&strings, previous, &head).is_ge())
        {
            return Err(WireError::Malformed(
                "series out of ascending key order, or the same series appears twice",
            ));
        }
        series.push(head);
    }
    if !input.is_empty() {
        return Err(WireError::Malformed("trailing bytes after the last series"));
    }
    Ok(Header {
        gateway,
        instance,
        sequence,
        start_unix_ms,
        end_unix_ms,
        dropped_requests,
        sizes_unmeasured: flags & FLAG_SIZES_UNMEASURED != 0,
        strings,
    })
}

/// [`SeriesKey`] order of two decoded series. Labels from the same string-table entry are
/// equal without comparing their bytes: consecutive series share most labels, so this skips
/// most string comparisons. (Equal text under two entries still compares equal.)
fn compare_keys(strings: &[&str], a: &SeriesHead, b: &SeriesHead) -> core::cmp::Ordering {
    for (&x, &y) in a.labels.iter().zip(&b.labels) {
        if x != y {
            let ordering = strings.get(x as usize).cmp(&strings.get(y as usize));
            if ordering.is_ne() {
                return ordering;
            }
        }
    }
    (
        a.role,
        a.status_class,
        a.code,
        a.grpc_status,
        a.upstream_failure,
    )
        .cmp(&(
            b.role,
            b.status_class,
            b.code,
            b.grpc_status,
            b.upstream_failure,
        ))
}

#[derive(Default)]
struct StringTable<'a> {
    values: Vec<&'a str>,
}

impl<'a> StringTable<'a> {
    /// Index of `s`, adding it if new. Linear search: a batch has a handful of distinct labels.
    /// Oversized values are cut at a character boundary so the batch stays decodable.
    fn index(&mut self, s: &'a str) -> u64 {
        let s = truncate_utf8(s, MAX_STRING_BYTES);
        if let Some(i) = self.values.iter().position(|v| *v == s) {
            return i as u64;
        }
        self.values.push(s);
        (self.values.len() - 1) as u64
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], WireError> {
    if input.len() < n {
        return Err(WireError::Truncated);
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

fn bounded(value: u64, max: u64, what: &'static str) -> Result<usize, WireError> {
    if value > max {
        return Err(WireError::OutOfRange { what, max });
    }
    Ok(value as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(revision: &str, role: Role, code: u16) -> SeriesKey {
        SeriesKey::answered("demo", "app", "app_route", revision, role, code)
    }

    fn delta(durations: &[u64], request_bytes: u64) -> SeriesDelta {
        let mut d = SeriesDelta {
            requests: durations.len() as u64,
            request_bytes,
            response_bytes: 7,
            ..Default::default()
        };
        durations.iter().for_each(|&v| d.duration.record(v));
        d
    }

    /// A fixed batch, also stored encoded in `testdata/batch-v1.bin`.
    pub(crate) fn sample() -> Batch {
        let mut grpc = key("v2", Role::Canary, 200);
        grpc.grpc_status = Some(14);
        let mut reset = key("v2", Role::Canary, 503);
        reset.status_class = StatusClass::NoResponse;
        reset.upstream_failure = UpstreamFailure::Reset;
        let mut batch = Batch {
            gateway: "gw-1".into(),
            instance: "18a3c0ffee-1".into(),
            sequence: 42,
            start_unix_ms: 1_700_000_000_000,
            end_unix_ms: 1_700_000_001_000,
            dropped_requests: 3,
            sizes_unmeasured: false,
            series: vec![
                (
                    key("v1", Role::Stable, 200),
                    delta(&[1000, 1010, 25_000], 300),
                ),
                (key("v2", Role::Canary, 500), delta(&[90_000], 0)),
                (grpc, delta(&[5], 12)),
                (reset, delta(&[3_000_000], 0)),
                (key("", Role::Unknown, 404), delta(&[], 0)),
            ],
        };
        batch.series.sort_by(|a, b| a.0.cmp(&b.0));
        batch
    }

    /// A batch with more series and other labels than [`sample`].
    fn sample_other() -> Batch {
        let mut batch = Batch {
            gateway: "gw-2".into(),
            sequence: 7,
            ..sample()
        };
        for (i, code) in [200u16, 201, 404, 500, 503].into_iter().enumerate() {
            let mut k = key(&format!("rev-{i}"), Role::Canary, code);
            k.namespace = "other".into();
            batch.series.push((k, delta(&[100 * i as u64 + 1; 3], 1)));
        }
        batch.series.sort_by(|a, b| a.0.cmp(&b.0));
        batch
    }

    #[test]
    fn round_trips() {
        let batch = sample();
        assert_eq!(Batch::decode(&batch.encode()).unwrap(), batch);
        assert_eq!(batch.requests(), 6);
        let mut shuffled = sample();
        shuffled.series.reverse();
        assert_eq!(
            Batch::decode(&shuffled.encode()).unwrap(),
            batch,
            "encode sorts the series"
        );
    }

    #[test]
    fn matches_the_golden_file() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/batch-v2.bin");
        let sample = Batch {
            sizes_unmeasured: true,
            ..sample()
        };
        let encoded = sample.encode();
        if std::env::var_os("PLOVER_UPDATE_GOLDEN").is_some() {
            std::fs::write(path, &encoded).unwrap();
        }
        let golden = std::fs::read(path).expect("golden file (PLOVER_UPDATE_GOLDEN=1 writes it)");
        assert_eq!(
            encoded, golden,
            "the v2 encoding changed: bump VERSION instead"
        );
        assert_eq!(Batch::decode(&golden).unwrap(), sample);
    }

    /// Batches of the previous release's filters (version 1, no flags) are still read.
    #[test]
    fn version_1_batches_are_still_decoded() {
        let v1 = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/batch-v1.bin"
        ))
        .unwrap();
        assert_eq!(Batch::decode(&v1).unwrap(), sample());
        let mut unknown_flag = sample().encode();
        // The flags follow dropped_requests (3, one byte) right before the series count (5).
        let at = unknown_flag
            .windows(3)
            .position(|w| w == [3, 0, 5])
            .expect("flags byte");
        unknown_flag[at + 1] = 2;
        assert!(Batch::decode(&unknown_flag).is_err());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let encoded = sample().encode();
        for cut in 0..encoded.len() {
            assert!(Batch::decode(&encoded[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn every_single_byte_corruption_is_handled_without_panic() {
        let encoded = sample().encode();
        for at in 0..encoded.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = encoded.clone();
                bad[at] ^= flip;
                // Either an error or a batch that still satisfies the invariants.
                if let Ok(batch) = Batch::decode(&bad) {
                    for (_, d) in &batch.series {
                        assert_eq!(d.duration.count(), d.requests);
                    }
                }
            }
        }
    }

    #[test]
    fn rejects_inconsistent_batches() {
        let mut dup = sample();
        dup.series.push(dup.series[0].clone());
        assert!(
            matches!(Batch::decode(&dup.encode()), Err(WireError::Malformed(m)) if m.contains("twice"))
        );

        let mut lying = sample();
        lying.series[0].1.requests += 1;
        assert!(Batch::decode(&lying.encode()).is_err());

        let mut backwards = sample();
        backwards.start_unix_ms = backwards.end_unix_ms + 1;
        assert!(Batch::decode(&backwards.encode()).is_err());

        let mut version = sample().encode();
        version[4] = 9;
        assert_eq!(
            Batch::decode(&version),
            Err(WireError::UnsupportedVersion(9))
        );

        assert!(matches!(
            Batch::decode(&vec![0u8; MAX_BATCH_BYTES + 1]),
            Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn views_borrow_the_encoded_labels_and_agree_with_owned_decoding() {
        let batch = sample();
        let encoded = batch.encode();
        let view = BatchView::decode(&encoded).unwrap();
        assert_eq!(view.to_batch(), batch);
        assert_eq!(view.len(), batch.series.len());
        let range = encoded.as_ptr_range();
        for (s, (key, delta)) in view.series().zip(&batch.series) {
            assert!(
                range.contains(&s.key.service.as_ptr()),
                "labels are not copied"
            );
            assert_eq!(s.key.to_owned_key(), *key);
            assert_eq!(s.duration, delta.duration.bins());
            assert_eq!(
                (s.requests, s.duration_count),
                (delta.requests, delta.duration.count())
            );
        }
        // A view of an owned batch carries the same data, and so does one decoded into
        // reused buffers.
        assert_eq!(batch.view().to_batch(), batch);
        let mut buffers = DecodeBuffers::default();
        let other = sample_other().encode();
        assert_eq!(
            BatchView::decode_with(&other, &mut buffers)
                .unwrap()
                .to_batch(),
            sample_other()
        );
        assert_eq!(
            BatchView::decode_with(&encoded, &mut buffers)
                .unwrap()
                .to_batch(),
            batch
        );
        assert!(BatchView::decode_with(&encoded[..encoded.len() - 1], &mut buffers).is_err());
        assert_eq!(
            BatchView::decode_with(&encoded, &mut buffers)
                .unwrap()
                .to_batch(),
            batch
        );
    }

    #[test]
    fn the_order_check_compares_label_bytes_not_table_entries() {
        // Two table entries with equal text must count as the same label: the encoder never
        // writes that, but a decoder must not let it smuggle a duplicate series past the check.
        let batch = Batch {
            series: vec![sample().series[0].clone()],
            ..sample()
        };
        let one = batch.encode();
        let (key, delta) = &batch.series[0];
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        let table = [
            batch.gateway.as_str(),
            &batch.instance,
            &key.namespace,
            &key.service,
            &key.route,
            &key.revision,
        ];
        // The key's labels twice: entries 2..=5, then 6..=9.
        write_u64(&mut out, 10);
        for s in table.iter().chain(&table[2..]) {
            write_u64(&mut out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        for v in [
            0,
            1,
            batch.sequence,
            batch.start_unix_ms,
            batch.end_unix_ms,
            batch.dropped_requests,
            0,
            2,
        ] {
            write_u64(&mut out, v);
        }
        for labels in [[2u64, 3, 4, 5], [6, 7, 8, 9]] {
            labels.iter().for_each(|&l| write_u64(&mut out, l));
            out.extend_from_slice(&[key.role.code(), key.status_class as u8]);
            write_u64(&mut out, u64::from(key.code));
            write_u64(&mut out, 0);
            out.push(key.upstream_failure as u8);
            for v in [delta.requests, delta.request_bytes, delta.response_bytes] {
                write_u64(&mut out, v);
            }
            delta.duration.encode_v2(&mut out);
        }
        assert!(Batch::decode(&one).is_ok());
        assert!(
            matches!(BatchView::decode(&out), Err(WireError::Malformed(m)) if m.contains("twice"))
        );
    }

    #[test]
    fn oversized_labels_are_cut_on_a_character_boundary() {
        let mut batch = sample();
        batch.series[0].0.service = "é".repeat(MAX_STRING_BYTES);
        let decoded = Batch::decode(&batch.encode()).unwrap();
        let longest = decoded.series.iter().map(|(k, _)| k.service.len()).max();
        assert_eq!(longest, Some(MAX_STRING_BYTES));
    }
}
