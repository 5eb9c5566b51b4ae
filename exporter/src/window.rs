//! The sliding window of one revision: per-second request counts by status class and the
//! merged duration histogram of each second, kept for `--window` (default 10 minutes), so that
//! any window up to that length can be answered exactly, at one-second resolution.
//!
//! # Memory
//!
//! A second of a busy revision touches a few hundred of the 3,328 histogram indices, and ten
//! minutes are 600 seconds, so the per-second histograms dominate. They live in two forms:
//!
//! * **open**: the newest seconds, which batches are still arriving for, are dense arrays of
//!   counts, one per power of two touched (a latency distribution spans a few), so adding a
//!   batch's histogram is one addition per bin;
//! * **sealed**: once a second is complete ([`Window::seal_before`]) it is packed into a bit
//!   stream of Elias-gamma codes: the gap to the previous occupied index, then the count.
//!   Real latency data has small gaps and small counts, so a bin costs about 4 bits instead of
//!   the 16 bytes of its open form.
//!
//! A late batch for a sealed second unpacks it again; the next seal packs it back.
//!
//! Even packed, a client can make every second dense (all 3,328 indices, large counts), which
//! would cost megabytes per window. [`Window::enforce_budget`] therefore bounds the bytes a
//! window holds: when over budget it merges neighbouring *old* seconds into wider blocks,
//! oldest first. Counts and histograms stay exact for every block; what is lost is only the
//! one-second resolution of the window's old edge, and the answer says so: it reports the
//! window it really covered (see [`Summary::covered_seconds`]). Realistic traffic never gets
//! there; the budget exists so that no input can grow memory without bound.

use std::collections::VecDeque;

use plover_wire::histogram::COUNTS_LEN;
use plover_wire::{Histogram, StatusClass};

/// Number of status classes (`StatusClass::ALL`).
pub const CLASSES: usize = StatusClass::ALL.len();

/// Request counts by status class, indexed like [`StatusClass::ALL`].
pub type ClassCounts = [u64; CLASSES];

/// Index of a class in [`ClassCounts`]: its discriminant, since `StatusClass::ALL` lists the
/// classes in declaration order (checked by a test); this runs for every series of every batch.
pub fn class_index(class: StatusClass) -> usize {
    class as usize
}

/// The per-second data of one revision.
#[derive(Debug, Default)]
pub struct Window {
    /// Occupied blocks in ascending time order, never overlapping. A block is one second unless
    /// [`Window::enforce_budget`] merged several.
    slots: VecDeque<Slot>,
    /// Heap bytes held by slot payloads (open and sealed), for the budget and for measurement.
    payload_bytes: usize,
    /// Zeroed chunks of sealed seconds, for the next open ones: in steady state a second
    /// allocates nothing, and no batch pays for allocating a new second's histogram.
    spare: Vec<Chunk>,
}

#[derive(Debug)]
struct Slot {
    /// First Unix second the block covers.
    start: u64,
    /// Seconds covered; 1 unless merged by the budget.
    width: u32,
    data: SlotData,
}

#[derive(Debug)]
enum SlotData {
    Open(Box<OpenSlot>),
    Sealed(Box<[u8]>),
}

/// Histogram indices per chunk of an open slot: one power-of-two range of the HDR layout
/// (the layout's first range has two chunks).
const CHUNK: usize = 128;
/// Chunks covering the layout.
const CHUNKS: usize = COUNTS_LEN.div_ceil(CHUNK);

/// Counts of one chunk of histogram indices.
type Chunk = Box<[u64; CHUNK]>;

/// Most spare chunks a window keeps: a realistic second's worth (a latency distribution spans
/// a few powers of two). A second that touches more allocates the rest; keeping a whole
/// layout's worth would add 26 KiB to every window for the rare dense one.
const SPARE_CHUNKS: usize = 8;

/// A second batches are still arriving for.
///
/// Its histogram is dense, in chunks of one power of two allocated when first touched: a busy
/// second receives a hundred small histograms (one per gateway), and adding one is then an
/// indexed addition per bin, with no search and no reallocation. A latency distribution
/// spans a few powers of two, so a realistic second holds a few 1 KiB chunks; a second with
/// every index occupied holds 26 KiB, half what its sparse pairs would take.
#[derive(Debug, Default, Clone)]
struct OpenSlot {
    counts: ClassCounts,
    chunks: [Option<Chunk>; CHUNKS],
    /// Chunks allocated, for the payload size.
    allocated: usize,
}

impl OpenSlot {
    /// Adds `(index, count)` pairs, taking new chunks from `spare` while it has some.
    fn record(&mut self, pairs: &[(u16, u64)], spare: &mut Vec<Chunk>) {
        for &(index, count) in pairs {
            self.add(index, count, spare);
        }
    }

    fn add(&mut self, index: u16, count: u64, spare: &mut Vec<Chunk>) {
        let i = usize::from(index);
        // Indices were validated when the batch was decoded: the `else` is never taken.
        let Some(chunk) = self.chunks.get_mut(i / CHUNK) else {
            return;
        };
        if count == 0 {
            return;
        }
        let chunk = chunk.get_or_insert_with(|| {
            self.allocated += 1;
            spare.pop().unwrap_or_else(|| Box::new([0; CHUNK]))
        });
        let c = &mut chunk[i % CHUNK];
        *c = c.saturating_add(count);
    }

    /// Empties the histogram, keeping its chunks, zeroed, in `spare` (up to [`SPARE_CHUNKS`]).
    fn recycle(&mut self, spare: &mut Vec<Chunk>) {
        for mut chunk in self.chunks.iter_mut().filter_map(Option::take) {
            if spare.len() < SPARE_CHUNKS {
                chunk.fill(0);
                spare.push(chunk);
            }
        }
        self.allocated = 0;
    }

    /// Occupied `(index, count)` pairs, ascending.
    fn pairs(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.chunks
            .iter()
            .enumerate()
            .filter_map(|(n, chunk)| Some((n, chunk.as_deref()?)))
            .flat_map(|(n, chunk)| {
                chunk
                    .iter()
                    .enumerate()
                    .filter(|(_, &c)| c > 0)
                    .map(move |(i, &c)| ((n * CHUNK + i) as u16, c))
            })
    }

    fn add_counts(&mut self, counts: &ClassCounts) {
        for (c, o) in self.counts.iter_mut().zip(counts) {
            *c = c.saturating_add(*o);
        }
    }

    fn heap_bytes(&self) -> usize {
        self.allocated * CHUNK * std::mem::size_of::<u64>()
    }
}

impl Slot {
    fn end(&self) -> u64 {
        self.start + u64::from(self.width) - 1
    }

    fn payload_bytes(&self) -> usize {
        match &self.data {
            SlotData::Open(open) => std::mem::size_of::<OpenSlot>() + open.heap_bytes(),
            SlotData::Sealed(bytes) => bytes.len(),
        }
    }

    /// The slot in its open form, unpacking it if sealed.
    fn open(&mut self) -> &mut OpenSlot {
        if let SlotData::Sealed(bytes) = &self.data {
            self.data = SlotData::Open(Box::new(unpack(bytes)));
        }
        match &mut self.data {
            SlotData::Open(open) => open,
            SlotData::Sealed(_) => unreachable!("just unpacked"),
        }
    }
}

impl Window {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `requests` of `class`, whose durations are the histogram pairs `bins` (ascending
    /// `(index, count)`), to the second `second`.
    pub fn record(&mut self, second: u64, class: StatusClass, requests: u64, bins: &[(u16, u64)]) {
        if requests == 0 && bins.is_empty() {
            return;
        }
        let at = self.slot_for(second);
        let slot = &mut self.slots[at];
        let before = slot.payload_bytes();
        let open = slot.open();
        let c = &mut open.counts[class_index(class)];
        *c = c.saturating_add(requests);
        open.record(bins, &mut self.spare);
        let after = slot.payload_bytes();
        self.payload_bytes = self.payload_bytes + after - before;
    }

    /// Position of the block holding `second`, inserting an empty one-second block if none does.
    fn slot_for(&mut self, second: u64) -> usize {
        // Almost every record goes to the newest block: check it before searching.
        if let Some(last) = self.slots.back() {
            if last.start <= second && second <= last.end() {
                return self.slots.len() - 1;
            }
        }
        let pos = self.slots.partition_point(|s| s.end() < second);
        if pos < self.slots.len() && self.slots[pos].start <= second {
            return pos;
        }
        let slot = Slot {
            start: second,
            width: 1,
            data: SlotData::Open(Box::default()),
        };
        self.payload_bytes += slot.payload_bytes();
        self.slots.insert(pos, slot);
        pos
    }

    /// Packs every open block that ends before `second` (those seconds are complete).
    pub fn seal_before(&mut self, second: u64) {
        for slot in self.slots.iter_mut().filter(|s| s.end() < second) {
            let before = slot.payload_bytes();
            if let SlotData::Open(open) = &mut slot.data {
                let packed = pack(open);
                open.recycle(&mut self.spare);
                slot.data = SlotData::Sealed(packed);
                self.payload_bytes = self.payload_bytes + slot.payload_bytes() - before;
            }
        }
    }

    /// Drops every block that ends before `oldest`.
    pub fn expire_before(&mut self, oldest: u64) {
        while let Some(front) = self.slots.front() {
            if front.end() >= oldest {
                break;
            }
            self.payload_bytes -= front.payload_bytes();
            self.slots.pop_front();
        }
    }

    /// Merges neighbouring sealed blocks until the payload fits in `budget` bytes, preferring
    /// blocks that are old relative to their width, so that resolution degrades from the old
    /// edge. `newest` is the current second. Returns how many merges it did.
    pub fn enforce_budget(&mut self, budget: usize, newest: u64) -> u64 {
        let mut merges = 0;
        while self.payload_bytes > budget {
            // Score = combined width / age of the older block: small for old, narrow pairs.
            let mut best: Option<(usize, f64)> = None;
            for i in 0..self.slots.len().saturating_sub(1) {
                let (a, b) = (&self.slots[i], &self.slots[i + 1]);
                if !matches!(a.data, SlotData::Sealed(_)) || !matches!(b.data, SlotData::Sealed(_))
                {
                    continue;
                }
                let width = (b.end() - a.start + 1) as f64;
                let age = newest.saturating_sub(a.start).max(1) as f64;
                let score = width / age;
                if best.is_none_or(|(_, s)| score < s) {
                    best = Some((i, score));
                }
            }
            let Some((i, _)) = best else { break };
            // `i + 1` exists: `i` came from the pairs loop above.
            let Some(newer) = self.slots.remove(i + 1) else {
                break;
            };
            let older = &mut self.slots[i];
            let before = older.payload_bytes() + newer.payload_bytes();
            let mut merged = unpack_slot(&older.data);
            add_slot(&mut merged, &newer.data);
            older.width = u32::try_from(newer.end() - older.start + 1).unwrap_or(u32::MAX);
            older.data = SlotData::Sealed(pack(&merged));
            self.payload_bytes = self.payload_bytes + older.payload_bytes() - before;
            merges += 1;
        }
        merges
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Heap bytes this window holds (block headers and payloads).
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.payload_bytes
            + self.spare.capacity() * std::mem::size_of::<Chunk>()
            + self.spare.len() * std::mem::size_of::<[u64; CHUNK]>()
    }

    /// Walks the blocks from newest to oldest into `acc` and reports the accumulated state for
    /// each window in `windows` (seconds, ascending), ending at second `newest` inclusive:
    /// window `w` covers seconds `newest - w + 1 ..= newest`. A block that straddles a
    /// window's old edge is included whole (only possible after [`Window::enforce_budget`]);
    /// [`Accumulator::oldest`] then tells how far back the answer reaches.
    pub fn fold_windows(
        &self,
        newest: u64,
        windows: &[u64],
        acc: &mut Accumulator,
        mut report: impl FnMut(usize, &Accumulator),
    ) {
        acc.clear();
        let mut next = 0;
        for slot in self.slots.iter().rev() {
            if slot.start > newest {
                continue; // the second in progress, or beyond: not part of any answer yet
            }
            while next < windows.len() && slot.end() < first_second(newest, windows[next]) {
                report(next, acc);
                next += 1;
            }
            if next == windows.len() {
                return;
            }
            acc.add(slot);
        }
        while next < windows.len() {
            report(next, acc);
            next += 1;
        }
    }
}

/// First second of a window of `seconds` ending at `newest` inclusive.
pub fn first_second(newest: u64, seconds: u64) -> u64 {
    (newest + 1).saturating_sub(seconds)
}

/// Dense accumulator for the blocks of a window: what queries and the exposition read.
#[derive(Debug, Clone)]
pub struct Accumulator {
    counts: ClassCounts,
    bins: Box<[u64]>,
    /// Range of indices touched since the last clear, so that clearing and reading stay cheap.
    lo: usize,
    hi: usize,
    oldest: Option<u64>,
}

impl Default for Accumulator {
    fn default() -> Self {
        Accumulator {
            counts: [0; CLASSES],
            bins: vec![0; COUNTS_LEN].into_boxed_slice(),
            lo: COUNTS_LEN,
            hi: 0,
            oldest: None,
        }
    }
}

impl Accumulator {
    pub fn clear(&mut self) {
        if self.lo < self.hi {
            self.bins[self.lo..self.hi].fill(0);
        }
        self.counts = [0; CLASSES];
        self.lo = COUNTS_LEN;
        self.hi = 0;
        self.oldest = None;
    }

    fn add(&mut self, slot: &Slot) {
        self.oldest = Some(self.oldest.map_or(slot.start, |o| o.min(slot.start)));
        match &slot.data {
            SlotData::Open(open) => {
                self.add_counts(&open.counts);
                for (index, count) in open.pairs() {
                    self.add_bin(index, count);
                }
            }
            SlotData::Sealed(bytes) => {
                let mut counts = [0; CLASSES];
                decode(bytes, &mut counts, |index, count| {
                    self.add_bin(index, count)
                });
                self.add_counts(&counts);
            }
        }
    }

    fn add_counts(&mut self, counts: &ClassCounts) {
        for (c, o) in self.counts.iter_mut().zip(counts) {
            *c = c.saturating_add(*o);
        }
    }

    fn add_bin(&mut self, index: u16, count: u64) {
        let i = usize::from(index);
        if i >= COUNTS_LEN {
            return; // cannot happen: indices were validated when the batch was decoded
        }
        self.bins[i] = self.bins[i].saturating_add(count);
        self.lo = self.lo.min(i);
        self.hi = self.hi.max(i + 1);
    }

    /// Requests by status class.
    pub fn counts(&self) -> &ClassCounts {
        &self.counts
    }

    /// All requests.
    pub fn requests(&self) -> u64 {
        self.counts.iter().fold(0, |a, c| a.saturating_add(*c))
    }

    /// Requests that count against the success ratio (5xx and no response).
    pub fn errors(&self) -> u64 {
        StatusClass::ALL
            .iter()
            .zip(self.counts)
            .filter(|(class, _)| class.is_error())
            .fold(0, |a, (_, c)| a.saturating_add(c))
    }

    /// First second included, if anything was.
    pub fn oldest(&self) -> Option<u64> {
        self.oldest
    }

    /// The accumulated durations as a histogram.
    pub fn histogram(&self) -> Histogram {
        let pairs = (self.lo..self.hi)
            .filter(|&i| self.bins[i] > 0)
            .map(|i| (i as u16, self.bins[i]));
        // Indices are below COUNTS_LEN by construction, so this cannot fail.
        Histogram::from_bins(pairs).unwrap_or_default()
    }

    /// The answer for a window of `seconds` ending at `newest`.
    pub fn summary(&self, newest: u64, seconds: u64) -> Summary {
        let covered = self
            .oldest
            .map_or(seconds, |o| (newest + 1).saturating_sub(o).max(seconds));
        Summary {
            counts: self.counts,
            covered_seconds: covered,
            histogram: self.histogram(),
        }
    }
}

/// A window's answer, detached from the accumulator.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub counts: ClassCounts,
    /// Seconds the answer really covers: the asked window, or more when an old block merged by
    /// the memory budget straddles its edge.
    pub covered_seconds: u64,
    pub histogram: Histogram,
}

impl Summary {
    pub fn requests(&self) -> u64 {
        self.counts.iter().fold(0, |a, c| a.saturating_add(*c))
    }

    pub fn errors(&self) -> u64 {
        StatusClass::ALL
            .iter()
            .zip(self.counts)
            .filter(|(class, _)| class.is_error())
            .fold(0, |a, (_, c)| a.saturating_add(c))
    }
}

// === Packed form ===
//
// A bit stream, most significant bit first, of Elias-gamma codes (a value v >= 1 takes
// 2*floor(log2 v)+1 bits: 1 -> "1", 2 -> "010", 3 -> "011", 4 -> "00100"…):
//
//   6 bits: which status classes have requests
//   gamma(count) for each of them, in StatusClass::ALL order
//   gamma(number of bins + 1)
//   per bin: gamma(index - previous index), previous starting at -1; gamma(count)

fn pack(open: &OpenSlot) -> Box<[u8]> {
    let mut w = BitWriter::default();
    let mask = open
        .counts
        .iter()
        .enumerate()
        .fold(0u32, |m, (i, &c)| if c > 0 { m | 1 << i } else { m });
    w.bits(mask, CLASSES as u32);
    for &c in open.counts.iter().filter(|&&c| c > 0) {
        w.gamma(c);
    }
    w.gamma(open.pairs().count() as u64 + 1);
    let mut previous: i64 = -1;
    for (index, count) in open.pairs() {
        w.gamma((i64::from(index) - previous) as u64);
        w.gamma(count);
        previous = i64::from(index);
    }
    w.finish().into_boxed_slice()
}

fn unpack_slot(data: &SlotData) -> OpenSlot {
    match data {
        SlotData::Open(open) => (**open).clone(),
        SlotData::Sealed(bytes) => unpack(bytes),
    }
}

fn unpack(bytes: &[u8]) -> OpenSlot {
    let mut open = OpenSlot::default();
    let mut counts = [0; CLASSES];
    // Late data for a sealed second is rare: its chunks are simply allocated.
    decode(bytes, &mut counts, |index, count| {
        open.add(index, count, &mut Vec::new())
    });
    open.counts = counts;
    open
}

/// Adds the data of a slot into `into`.
fn add_slot(into: &mut OpenSlot, data: &SlotData) {
    match data {
        SlotData::Open(open) => {
            into.add_counts(&open.counts);
            for (index, count) in open.pairs() {
                into.add(index, count, &mut Vec::new());
            }
        }
        SlotData::Sealed(bytes) => {
            let mut counts = [0; CLASSES];
            decode(bytes, &mut counts, |index, count| {
                into.add(index, count, &mut Vec::new())
            });
            into.add_counts(&counts);
        }
    }
}

/// Decodes a packed slot, calling `bin` for every occupied index in ascending order.
fn decode(bytes: &[u8], counts: &mut ClassCounts, mut bin: impl FnMut(u16, u64)) {
    let mut r = BitReader::new(bytes);
    let Some(mask) = r.bits(CLASSES as u32) else {
        return;
    };
    for (i, c) in counts.iter_mut().enumerate() {
        if mask & (1 << i) != 0 {
            *c = r.gamma().unwrap_or(0);
        }
    }
    let n = r.gamma().unwrap_or(1) - 1;
    let mut index: i64 = -1;
    for _ in 0..n {
        let (Some(gap), Some(count)) = (r.gamma(), r.gamma()) else {
            return;
        };
        index += gap as i64;
        bin(index as u16, count);
    }
}

#[derive(Default)]
struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl BitWriter {
    /// Appends the low `count` (≤ 32) bits of `value`.
    fn bits(&mut self, value: u32, count: u32) {
        debug_assert!(count <= 32);
        if count == 0 {
            return;
        }
        self.acc = (self.acc << count) | u64::from(value) & ((1u64 << count) - 1);
        self.n += count;
        while self.n >= 8 {
            self.n -= 8;
            self.out.push((self.acc >> self.n) as u8);
        }
    }

    fn gamma(&mut self, value: u64) {
        debug_assert!(value >= 1);
        let len = 64 - value.leading_zeros(); // bits in value, ≥ 1
        let mut zeros = len - 1;
        while zeros > 0 {
            let n = zeros.min(32);
            self.bits(0, n);
            zeros -= n;
        }
        if len > 32 {
            self.bits((value >> 32) as u32, len - 32);
            self.bits(value as u32, 32);
        } else {
            self.bits(value as u32, len);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push((self.acc << (8 - self.n)) as u8);
        }
        self.out
    }
}

struct BitReader<'a> {
    bytes: &'a [u8],
    /// Unread bits, left-aligned.
    buf: u64,
    avail: u32,
}

impl<'a> BitReader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        BitReader {
            bytes,
            buf: 0,
            avail: 0,
        }
    }

    fn refill(&mut self) {
        while self.avail <= 56 {
            let Some((&b, rest)) = self.bytes.split_first() else {
                return;
            };
            self.buf |= u64::from(b) << (56 - self.avail);
            self.avail += 8;
            self.bytes = rest;
        }
    }

    /// Reads `count` (≤ 32) bits.
    fn bits(&mut self, count: u32) -> Option<u32> {
        if count == 0 {
            return Some(0);
        }
        self.refill();
        if self.avail < count {
            return None;
        }
        let v = (self.buf >> (64 - count)) as u32;
        self.buf <<= count;
        self.avail -= count;
        Some(v)
    }

    fn gamma(&mut self) -> Option<u64> {
        let mut zeros = 0;
        loop {
            self.refill();
            if self.avail == 0 {
                return None;
            }
            let lz = self.buf.leading_zeros().min(self.avail);
            zeros += lz;
            self.buf <<= lz;
            self.avail -= lz;
            if self.avail > 0 {
                break;
            }
        }
        if zeros > 63 {
            return None;
        }
        let len = zeros + 1;
        if len > 32 {
            let high = u64::from(self.bits(len - 32)?);
            let low = u64::from(self.bits(32)?);
            Some(high << 32 | low)
        } else {
            self.bits(len).map(u64::from)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(values: &[u64]) -> Histogram {
        let mut h = Histogram::new();
        values.iter().for_each(|&v| h.record(v));
        h
    }

    fn summary(w: &Window, newest: u64, seconds: u64) -> Summary {
        let mut acc = Accumulator::default();
        let mut out = Summary::default();
        w.fold_windows(newest, &[seconds], &mut acc, |_, a| {
            out = a.summary(newest, seconds)
        });
        out
    }

    #[test]
    fn packing_round_trips_including_extreme_counts() {
        let mut open = OpenSlot {
            counts: [0, 5, 0, 1, u64::MAX, 7],
            ..Default::default()
        };
        let pairs = [
            (0, 1),
            (1, 2),
            (9, 15),
            (10, 16),
            (200, 1 << 40),
            (3327, u64::MAX),
        ];
        open.record(&pairs, &mut Vec::new());
        let packed = pack(&open);
        let back = unpack(&packed);
        assert_eq!(back.counts, open.counts);
        assert_eq!(back.pairs().collect::<Vec<_>>(), pairs);
        let empty = unpack(&pack(&OpenSlot::default()));
        assert_eq!(empty.pairs().count(), 0);
    }

    #[test]
    fn open_slots_add_histograms_exactly_and_recycle_their_chunks() {
        let mut open = OpenSlot::default();
        let mut spare = Vec::new();
        let mut expected = Histogram::new();
        for i in 0..500u64 {
            // Starts in the middle of the layout, then reaches both below and above.
            let h = histogram(&[
                5000 + i * 37 % 5000,
                100 + i * 13 % 700,
                42,
                1 + i * 7_000_000,
            ]);
            open.record(h.bins(), &mut spare);
            expected.merge(&h);
        }
        assert_eq!(open.pairs().collect::<Vec<_>>(), expected.bins());
        assert_eq!(
            open.allocated,
            open.chunks.iter().filter(|c| c.is_some()).count()
        );
        // Recycled chunks come back zeroed.
        let allocated = open.allocated;
        open.recycle(&mut spare);
        assert_eq!(
            (open.pairs().count(), spare.len()),
            (0, allocated.min(SPARE_CHUNKS))
        );
        let mut next = OpenSlot::default();
        next.record(histogram(&[42]).bins(), &mut spare);
        assert_eq!(next.pairs().collect::<Vec<_>>(), histogram(&[42]).bins());
        assert_eq!(spare.len(), allocated.min(SPARE_CHUNKS) - 1);
    }

    #[test]
    fn class_indices_follow_the_order_of_all_classes() {
        for (i, class) in StatusClass::ALL.into_iter().enumerate() {
            assert_eq!(class_index(class), i);
        }
    }

    #[test]
    fn packed_realistic_bins_cost_about_half_a_byte() {
        let mut open = OpenSlot::default();
        let pairs: Vec<(u16, u64)> = (0..400u16)
            .map(|i| (1000 + i * 2, 1 + u64::from(i % 3)))
            .collect();
        open.record(&pairs, &mut Vec::new());
        let packed = pack(&open);
        assert!(packed.len() < 400, "{} bytes", packed.len());
    }

    #[test]
    fn windows_include_the_boundary_second_and_exclude_the_one_before() {
        let mut w = Window::new();
        w.record(100, StatusClass::Success, 1, histogram(&[1000]).bins());
        w.record(
            101,
            StatusClass::Success,
            2,
            histogram(&[2000, 2000]).bins(),
        );
        w.record(
            130,
            StatusClass::ServerError,
            4,
            histogram(&[3000; 4]).bins(),
        );
        w.seal_before(131);
        // newest = 130, 30 s window covers 101..=130
        let s = summary(&w, 130, 30);
        assert_eq!(s.requests(), 6);
        assert_eq!(s.errors(), 4);
        assert_eq!(s.covered_seconds, 30);
        // 31 s reaches second 100
        assert_eq!(summary(&w, 130, 31).requests(), 7);
        // the second in progress (beyond newest) is not included
        assert_eq!(summary(&w, 129, 30).requests(), 3);
    }

    #[test]
    fn several_windows_in_one_pass_match_separate_queries() {
        let mut w = Window::new();
        for s in 0..600u64 {
            let values: Vec<u64> = (0..(s % 7)).map(|i| 100 + s * 10 + i).collect();
            w.record(
                s,
                StatusClass::of_code(if s % 5 == 0 { 500 } else { 200 }),
                values.len() as u64,
                histogram(&values).bins(),
            );
            if s % 3 == 0 {
                w.seal_before(s);
            }
        }
        let windows = [30, 60, 300, 600];
        let mut acc = Accumulator::default();
        let mut together = vec![Summary::default(); 4];
        w.fold_windows(599, &windows, &mut acc, |i, a| {
            together[i] = a.summary(599, windows[i])
        });
        for (i, &secs) in windows.iter().enumerate() {
            assert_eq!(together[i], summary(&w, 599, secs), "window {secs}");
        }
    }

    #[test]
    fn late_data_reopens_a_sealed_second() {
        let mut w = Window::new();
        w.record(10, StatusClass::Success, 1, histogram(&[500]).bins());
        w.record(11, StatusClass::Success, 1, histogram(&[500]).bins());
        w.seal_before(12);
        w.record(10, StatusClass::Success, 2, histogram(&[700, 900]).bins());
        w.record(5, StatusClass::Success, 1, histogram(&[100]).bins());
        let s = summary(&w, 11, 7);
        assert_eq!(s.requests(), 5);
        assert_eq!(s.histogram, histogram(&[100, 500, 500, 700, 900]));
        w.expire_before(10);
        assert_eq!(summary(&w, 11, 7).requests(), 4);
    }

    #[test]
    fn the_budget_coarsens_old_seconds_but_keeps_totals_exact() {
        let mut w = Window::new();
        let dense =
            Histogram::from_bins((0..COUNTS_LEN as u16).map(|i| (i, 1 + u64::from(i % 13))))
                .unwrap();
        let n = dense.count();
        for s in 0..600u64 {
            w.record(s, StatusClass::Success, n, dense.bins());
            w.seal_before(s);
            w.enforce_budget(128 * 1024, s);
        }
        w.seal_before(600);
        w.enforce_budget(128 * 1024, 600);
        assert!(w.payload_bytes <= 128 * 1024, "{}", w.payload_bytes);
        let all = summary(&w, 599, 600);
        assert_eq!(all.requests(), 600 * n);
        assert_eq!(all.histogram.count(), 600 * n);
        // Every answer is exact for the window it reports, and that window is the asked one
        // widened by at most half: resolution degrades in proportion to age.
        for asked in [5, 30, 60, 300, 600] {
            let s = summary(&w, 599, asked);
            assert!(
                s.covered_seconds >= asked && s.covered_seconds <= asked + asked / 2 + 1,
                "{asked}: {}",
                s.covered_seconds
            );
            assert_eq!(s.requests(), s.covered_seconds.min(600) * n);
        }
    }
}
