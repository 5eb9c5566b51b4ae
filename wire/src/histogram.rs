//! A sparse HDR latency histogram with the fixed layout every Plover process shares, and its
//! standard HdrHistogram V2 encoding.
//!
//! Values are microseconds from 1 µs to 1 h, at two significant digits: 128 sub-buckets per
//! power of two, so any recorded value is reported within 1/128 (< 0.8%) of itself. Because
//! the layout is fixed, histograms from any gateway merge by adding counts index by index.
//!
//! Storage is sparse (only occupied indices), because real latency distributions touch a few
//! dozen of the 3,328 indices and a filter may hold one histogram per series per worker.
//! The V2 encoding is the one used by HdrHistogram in Java, Go and Rust, so any of those can
//! read what Plover ships (tested against the `hdrhistogram` crate).

use crate::varint::{read_zigzag, write_zigzag};
use crate::WireError;

/// Lowest discernible value, in microseconds.
pub const LOWEST_DISCERNIBLE_MICROS: u64 = 1;
/// Highest trackable value: one hour in microseconds. Larger values are clamped to it.
pub const HIGHEST_TRACKABLE_MICROS: u64 = 3_600_000_000;
/// Significant decimal digits kept: 2 gives a relative error below 1%.
pub const SIGNIFICANT_DIGITS: u8 = 2;

const SUB_BUCKET_HALF_COUNT_MAGNITUDE: u32 = 7;
const SUB_BUCKET_HALF_COUNT: u64 = 1 << SUB_BUCKET_HALF_COUNT_MAGNITUDE; // 128
const SUB_BUCKET_COUNT: u64 = SUB_BUCKET_HALF_COUNT * 2; // 256
const SUB_BUCKET_MASK: u64 = SUB_BUCKET_COUNT - 1;
const LEADING_ZERO_COUNT_BASE: u32 = 64 - SUB_BUCKET_HALF_COUNT_MAGNITUDE - 1;
/// 256 << 24 is the first power-of-two range beyond one hour, so 25 buckets.
const BUCKET_COUNT: u64 = 25;
/// Number of distinct indices in the layout.
pub const COUNTS_LEN: usize = ((BUCKET_COUNT + 1) * SUB_BUCKET_HALF_COUNT) as usize;

const V2_COOKIE: u32 = 0x1c84_9303 | 0x10;
const V2_COMPRESSED_COOKIE: u32 = 0x1c84_9304 | 0x10;
const V2_HEADER_LEN: usize = 40;

/// Index in the counts array of a (clamped) value.
pub fn index_of(value_micros: u64) -> u16 {
    let value = value_micros.clamp(LOWEST_DISCERNIBLE_MICROS, HIGHEST_TRACKABLE_MICROS);
    let bucket = LEADING_ZERO_COUNT_BASE - (value | SUB_BUCKET_MASK).leading_zeros();
    let sub_bucket = value >> bucket;
    // Bucket 0 uses all 256 sub-buckets; later buckets only their upper half.
    let index = ((u64::from(bucket) + 1) << SUB_BUCKET_HALF_COUNT_MAGNITUDE) + sub_bucket
        - SUB_BUCKET_HALF_COUNT;
    index as u16
}

/// Lowest value that maps to `index`.
pub fn lowest_value_at(index: u16) -> u64 {
    let index = u64::from(index);
    let mut bucket = (index >> SUB_BUCKET_HALF_COUNT_MAGNITUDE) as i64 - 1;
    let mut sub_bucket = (index & (SUB_BUCKET_HALF_COUNT - 1)) + SUB_BUCKET_HALF_COUNT;
    if bucket < 0 {
        sub_bucket -= SUB_BUCKET_HALF_COUNT;
        bucket = 0;
    }
    sub_bucket << bucket
}

/// Highest value that maps to `index` (what HdrHistogram reports for a quantile).
pub fn highest_value_at(index: u16) -> u64 {
    let low = lowest_value_at(index);
    let bucket = LEADING_ZERO_COUNT_BASE - (low | SUB_BUCKET_MASK).leading_zeros();
    low + (1u64 << bucket) - 1
}

/// A histogram of durations in microseconds. Cheap when empty; sparse when not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Occupied indices in ascending order, each with a non-zero count.
    bins: Vec<(u16, u64)>,
    total: u64,
}

impl Histogram {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one value (clamped into the trackable range).
    pub fn record(&mut self, value_micros: u64) {
        self.record_n(value_micros, 1);
    }

    /// Records `count` occurrences of one value.
    pub fn record_n(&mut self, value_micros: u64, count: u64) {
        if count == 0 {
            return;
        }
        self.add_at_index(index_of(value_micros), count);
    }

    fn add_at_index(&mut self, index: u16, count: u64) {
        match self.bins.binary_search_by_key(&index, |&(i, _)| i) {
            Ok(pos) => self.bins[pos].1 = self.bins[pos].1.saturating_add(count),
            Err(pos) => self.bins.insert(pos, (index, count)),
        }
        self.total = self.total.saturating_add(count);
    }

    /// Adds every count of `other` into `self`.
    pub fn merge(&mut self, other: &Histogram) {
        if other.bins.is_empty() {
            return;
        }
        if self.bins.is_empty() {
            self.clone_from(other);
            return;
        }
        let mut merged = Vec::with_capacity(self.bins.len() + other.bins.len());
        let (mut a, mut b) = (self.bins.iter().peekable(), other.bins.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (Some(&&(ia, ca)), Some(&&(ib, cb))) => {
                    if ia == ib {
                        merged.push((ia, ca.saturating_add(cb)));
                        a.next();
                        b.next();
                    } else if ia < ib {
                        merged.push((ia, ca));
                        a.next();
                    } else {
                        merged.push((ib, cb));
                        b.next();
                    }
                }
                (Some(&&x), None) => {
                    merged.push(x);
                    a.next();
                }
                (None, Some(&&x)) => {
                    merged.push(x);
                    b.next();
                }
                (None, None) => break,
            }
        }
        self.bins = merged;
        self.total = self.total.saturating_add(other.total);
    }

    /// Subtracts `other`, which must be contained in `self` (e.g. an older cumulative
    /// snapshot). Counts that would go negative are clamped to zero.
    pub fn subtract(&mut self, other: &Histogram) {
        for &(index, count) in &other.bins {
            if let Ok(pos) = self.bins.binary_search_by_key(&index, |&(i, _)| i) {
                let removed = count.min(self.bins[pos].1);
                self.bins[pos].1 -= removed;
                self.total -= removed;
            }
        }
        self.bins.retain(|&(_, c)| c > 0);
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Occupied (index, count) pairs in ascending index order.
    pub fn bins(&self) -> &[(u16, u64)] {
        &self.bins
    }

    /// Builds a histogram from (index, count) pairs; indices may repeat and come in any order.
    pub fn from_bins(pairs: impl IntoIterator<Item = (u16, u64)>) -> Result<Self, WireError> {
        let mut histogram = Histogram::new();
        for (index, count) in pairs {
            if usize::from(index) >= COUNTS_LEN {
                return Err(WireError::Histogram("index beyond the histogram layout"));
            }
            if count > 0 {
                histogram.add_at_index(index, count);
            }
        }
        Ok(histogram)
    }

    /// Value at quantile `q` in [0, 1], as HdrHistogram reports it: the highest value
    /// equivalent to the bin holding the ⌈q·n⌉-th smallest recording. `None` when empty.
    pub fn value_at_quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0u64;
        for &(index, count) in &self.bins {
            seen += count;
            if seen >= rank {
                return Some(highest_value_at(index).min(HIGHEST_TRACKABLE_MICROS));
            }
        }
        self.max()
    }

    /// Highest equivalent value of the highest occupied bin.
    pub fn max(&self) -> Option<u64> {
        self.bins
            .last()
            .map(|&(i, _)| highest_value_at(i).min(HIGHEST_TRACKABLE_MICROS))
    }

    /// Lowest equivalent value of the lowest occupied bin.
    pub fn min(&self) -> Option<u64> {
        self.bins.first().map(|&(i, _)| lowest_value_at(i))
    }

    /// Mean computed from bin midpoints.
    pub fn mean(&self) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let sum: f64 = self
            .bins
            .iter()
            .map(|&(i, c)| {
                let mid = (lowest_value_at(i) + highest_value_at(i)) as f64 / 2.0;
                mid * c as f64
            })
            .sum();
        Some(sum / self.total as f64)
    }

    /// Number of recordings at or below `value_micros` (bin-granular, for exposition buckets).
    pub fn count_at_or_below(&self, value_micros: u64) -> u64 {
        let limit = index_of(value_micros);
        self.bins
            .iter()
            .take_while(|&&(i, _)| i <= limit)
            .map(|&(_, c)| c)
            .sum()
    }

    /// Encodes in the uncompressed HdrHistogram V2 format.
    pub fn encode_v2(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&V2_COOKIE.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes()); // payload length, patched below
        out.extend_from_slice(&0u32.to_be_bytes()); // normalizing index offset
        out.extend_from_slice(&u32::from(SIGNIFICANT_DIGITS).to_be_bytes());
        out.extend_from_slice(&LOWEST_DISCERNIBLE_MICROS.to_be_bytes());
        out.extend_from_slice(&HIGHEST_TRACKABLE_MICROS.to_be_bytes());
        out.extend_from_slice(&1.0f64.to_bits().to_be_bytes());
        let payload_start = out.len();
        let mut next_index = 0u16;
        for &(index, count) in &self.bins {
            let zeros = index - next_index;
            if zeros > 1 {
                write_zigzag(out, -i64::from(zeros));
            } else if zeros == 1 {
                write_zigzag(out, 0);
            }
            write_zigzag(out, count.min(i64::MAX as u64) as i64);
            next_index = index + 1;
        }
        let payload_len = (out.len() - payload_start) as u32;
        out[start + 4..start + 8].copy_from_slice(&payload_len.to_be_bytes());
    }

    /// Encoded V2 bytes as a new vector.
    pub fn to_v2(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(V2_HEADER_LEN + self.bins.len() * 3);
        self.encode_v2(&mut out);
        out
    }

    /// Decodes an uncompressed V2 histogram. It must use Plover's layout (1 µs – 1 h,
    /// 2 significant digits): anything else, or any inconsistency, is an error.
    pub fn decode_v2(bytes: &[u8]) -> Result<Histogram, WireError> {
        let (histogram, used) = Self::decode_v2_prefix(bytes)?;
        if used != bytes.len() {
            return Err(WireError::Histogram(
                "trailing bytes after the histogram payload",
            ));
        }
        Ok(histogram)
    }

    /// Decodes one V2 histogram at the start of `bytes`; returns it and the bytes consumed.
    pub fn decode_v2_prefix(bytes: &[u8]) -> Result<(Histogram, usize), WireError> {
        let mut histogram = Histogram::new();
        let (total, used) = Self::decode_v2_prefix_into(bytes, &mut histogram.bins)?;
        histogram.total = total;
        Ok((histogram, used))
    }

    /// Decodes one V2 histogram at the start of `bytes`, appending its occupied `(index,
    /// count)` pairs (ascending, counts > 0) to `bins`; returns the total count and the bytes
    /// consumed. The exporter decodes every series of a batch into one shared vector this way
    /// instead of allocating a histogram per series. On error, `bins` may hold a partial
    /// histogram after its previous length: callers discard it with the batch.
    pub fn decode_v2_prefix_into(
        bytes: &[u8],
        bins: &mut Vec<(u16, u64)>,
    ) -> Result<(u64, usize), WireError> {
        if bytes.len() < V2_HEADER_LEN {
            return Err(WireError::Histogram("truncated header"));
        }
        let u32_at = |at: usize| {
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(b)
        };
        match u32_at(0) {
            V2_COOKIE => {}
            V2_COMPRESSED_COOKIE => {
                return Err(WireError::Histogram(
                    "compressed (deflate) V2 is not accepted; send plain V2",
                ))
            }
            _ => return Err(WireError::Histogram("not an HdrHistogram V2 cookie")),
        }
        let payload_len = u32_at(4) as usize;
        if u32_at(8) != 0 {
            return Err(WireError::Histogram("normalizing index offset must be 0"));
        }
        if u32_at(12) != u32::from(SIGNIFICANT_DIGITS)
            || u64_at(16) != LOWEST_DISCERNIBLE_MICROS
            || u64_at(24) != HIGHEST_TRACKABLE_MICROS
        {
            return Err(WireError::Histogram(
                "histogram layout differs from Plover's (1 µs – 3.6e9 µs, 2 significant digits)",
            ));
        }
        if f64::from_bits(u64_at(32)) != 1.0 {
            return Err(WireError::Histogram("conversion ratio must be 1.0"));
        }
        let end = V2_HEADER_LEN
            .checked_add(payload_len)
            .filter(|&e| e <= bytes.len())
            .ok_or(WireError::Histogram("payload length exceeds the input"))?;
        let mut payload = &bytes[V2_HEADER_LEN..end];
        // Each occupied bin costs at least one byte of payload; most cost two.
        bins.reserve(payload_len / 2);
        let mut total = 0u64;
        let mut index: usize = 0;
        while !payload.is_empty() {
            let value = read_zigzag(&mut payload)?;
            if value < 0 {
                let zeros = value.unsigned_abs() as usize;
                index = index.saturating_add(zeros);
                if index > COUNTS_LEN {
                    return Err(WireError::Histogram("zero run beyond the histogram layout"));
                }
            } else {
                if index >= COUNTS_LEN {
                    return Err(WireError::Histogram("count beyond the histogram layout"));
                }
                if value > 0 {
                    bins.push((index as u16, value as u64));
                    total = total
                        .checked_add(value as u64)
                        .ok_or(WireError::Histogram("total count overflows"))?;
                }
                index += 1;
            }
        }
        Ok((total, end))
    }

    /// A histogram from pairs already known to be valid: ascending distinct indices within
    /// the layout, counts > 0, summing to `total` (what [`Histogram::decode_v2_prefix_into`]
    /// produced).
    pub(crate) fn from_valid_bins(bins: &[(u16, u64)], total: u64) -> Histogram {
        Histogram {
            bins: bins.to_vec(),
            total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::Serializer;

    fn reference() -> hdrhistogram::Histogram<u64> {
        hdrhistogram::Histogram::new_with_bounds(1, HIGHEST_TRACKABLE_MICROS, 2).unwrap()
    }

    #[test]
    fn layout_matches_the_reference_implementation() {
        let r = reference();
        assert_eq!(r.distinct_values(), COUNTS_LEN);
        for v in [
            1u64,
            2,
            127,
            128,
            255,
            256,
            257,
            511,
            512,
            1000,
            12_345,
            999_999,
            3_599_999_999,
        ] {
            assert_eq!(
                r.lowest_equivalent(v),
                lowest_value_at(index_of(v)),
                "lowest for {v}"
            );
            assert_eq!(
                r.highest_equivalent(v),
                highest_value_at(index_of(v)),
                "highest for {v}"
            );
        }
    }

    #[test]
    fn relative_error_is_below_one_percent() {
        let mut v = 1u64;
        while v < HIGHEST_TRACKABLE_MICROS {
            let high = highest_value_at(index_of(v));
            assert!(high >= v);
            assert!(
                (high - v) as f64 <= v as f64 * 0.01 + 1.0,
                "value {v} reported as {high}"
            );
            v = v * 11 / 10 + 1;
        }
    }

    #[test]
    fn quantiles_match_the_reference_implementation() {
        let mut ours = Histogram::new();
        let mut r = reference();
        for i in 0..10_000u64 {
            let v = 200 + (i * 7919) % 50_000;
            ours.record(v);
            r.record(v).unwrap();
        }
        for q in [0.0, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
            assert_eq!(
                ours.value_at_quantile(q),
                Some(r.value_at_quantile(q)),
                "q={q}"
            );
        }
        assert_eq!(ours.count(), 10_000);
    }

    #[test]
    fn v2_round_trips_through_the_reference_implementation() {
        let mut ours = Histogram::new();
        for v in [1u64, 1, 5, 300, 301, 70_000, 3_600_000_000, 9_999_999_999] {
            ours.record(v);
        }
        let bytes = ours.to_v2();
        let mut reader = hdrhistogram::serialization::Deserializer::new();
        let theirs: hdrhistogram::Histogram<u64> = reader.deserialize(&mut &bytes[..]).unwrap();
        assert_eq!(theirs.len(), ours.count());
        assert_eq!(
            theirs.value_at_quantile(0.5),
            ours.value_at_quantile(0.5).unwrap()
        );

        let mut encoded = Vec::new();
        hdrhistogram::serialization::V2Serializer::new()
            .serialize(&theirs, &mut encoded)
            .unwrap();
        assert_eq!(Histogram::decode_v2(&encoded).unwrap(), ours);
    }

    #[test]
    fn empty_histogram_round_trips() {
        let empty = Histogram::new();
        assert_eq!(Histogram::decode_v2(&empty.to_v2()).unwrap(), empty);
        assert_eq!(empty.value_at_quantile(0.99), None);
    }

    #[test]
    fn merge_and_subtract_are_inverse() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        for v in 1..500 {
            a.record(v * 3);
            b.record(v * 5);
        }
        let mut sum = a.clone();
        sum.merge(&b);
        assert_eq!(sum.count(), a.count() + b.count());
        sum.subtract(&b);
        assert_eq!(sum, a);
    }

    #[test]
    fn decoding_rejects_bad_input_without_panicking() {
        let mut h = Histogram::new();
        h.record(1234);
        let good = h.to_v2();
        for cut in 0..good.len() {
            assert!(
                Histogram::decode_v2(&good[..cut]).is_err(),
                "truncated at {cut}"
            );
        }
        let mut other_layout = good.clone();
        other_layout[15] = 3;
        assert!(Histogram::decode_v2(&other_layout).is_err());
        let mut long_run = good[..V2_HEADER_LEN].to_vec();
        let mut payload = Vec::new();
        write_zigzag(&mut payload, -(COUNTS_LEN as i64) - 5);
        write_zigzag(&mut payload, 1);
        long_run[4..8].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        long_run.extend_from_slice(&payload);
        assert!(Histogram::decode_v2(&long_run).is_err());
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(Histogram::decode_v2(&trailing).is_err());
    }
}
