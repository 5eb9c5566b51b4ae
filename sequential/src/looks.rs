//! Look bookkeeping for a sequential test fed by windowed answers (the exporter's `/v1/stats`).
//!
//! A sequential test must see each second of traffic **at most once**: counting a second twice
//! breaks the martingale (and with it the α guarantee), while skipping a second only loses
//! power. The exporter answers whole seconds ending at its last complete second
//! (`as_of_unix_ms`) and reports the window it really covered (`window_seconds`, which may be
//! wider than asked). So each look asks for the seconds since the previous answer's `as_of`,
//! and an answer is used only if it starts exactly there ([`Fit::Exact`]) or later
//! ([`Fit::Gap`], the skipped seconds are reported). An answer that overlaps the previous one
//! ([`Fit::Overlap`]) is never used.
//!
//! The window to ask for is estimated from the local clock and what earlier answers revealed
//! about the exporter's clock ([`Cursor::window_to_ask`]); when the answer does not line up the
//! caller re-asks once with [`Cursor::corrected_window`]. Everything here is pure.

/// How an answer covering `[as_of − window, as_of)` relates to the previous look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fit {
    /// The first answer: nothing to line up with.
    First,
    /// Starts exactly where the previous look ended.
    Exact,
    /// Starts `skipped_ms` after the previous look ended: those seconds are never judged.
    Gap { skipped_ms: u64 },
    /// Starts `overlap_ms` before the previous look ended: using it would count seconds twice.
    Overlap { overlap_ms: u64 },
    /// Ends where (or before) the previous look ended: no new complete second yet.
    Stale,
}

/// Where the previous look ended, and bounds on the exporter's clock relative to ours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    /// End of the last consumed (or deliberately skipped) stretch, exporter Unix ms.
    last_as_of_ms: Option<u64>,
    /// `exporter clock − local clock` lies in `[low, high)` ms (intersection over answers).
    offset_ms: Option<(i64, i64)>,
}

impl Cursor {
    pub fn new() -> Cursor {
        Cursor::default()
    }

    /// End of the last stretch consumed or skipped, if any look happened.
    pub fn last_as_of_ms(&self) -> Option<u64> {
        self.last_as_of_ms
    }

    /// Seconds to ask for at local time `local_now_ms` so that the answer starts where the
    /// previous look ended; `None` before the first look (the caller asks its configured
    /// window then). At least 1.
    pub fn window_to_ask(&self, local_now_ms: u64) -> Option<u64> {
        let last = self.last_as_of_ms?;
        let expected_as_of = match self.offset_ms {
            Some((low, high)) => {
                let exporter_now = local_now_ms as i64 + (low + high) / 2;
                exporter_now.max(0) as u64 / 1000 * 1000
            }
            None => last,
        };
        Some((expected_as_of.saturating_sub(last) / 1000).max(1))
    }

    /// How an answer ending at `as_of_ms` and covering `window_seconds` fits after the
    /// previous look.
    pub fn fit(&self, as_of_ms: u64, window_seconds: u64) -> Fit {
        let Some(last) = self.last_as_of_ms else {
            return Fit::First;
        };
        if as_of_ms <= last {
            return Fit::Stale;
        }
        let start = as_of_ms.saturating_sub(window_seconds.saturating_mul(1000));
        match start.cmp(&last) {
            std::cmp::Ordering::Equal => Fit::Exact,
            std::cmp::Ordering::Greater => Fit::Gap {
                skipped_ms: start - last,
            },
            std::cmp::Ordering::Less => Fit::Overlap {
                overlap_ms: last - start,
            },
        }
    }

    /// The window that would have lined up with an answer ending at `as_of_ms`: the whole
    /// seconds since the previous look. `None` when there is nothing new (or no previous look).
    pub fn corrected_window(&self, as_of_ms: u64) -> Option<u64> {
        let last = self.last_as_of_ms?;
        let seconds = as_of_ms.checked_sub(last)? / 1000;
        (seconds > 0).then_some(seconds)
    }

    /// Records an answer ending at `as_of_ms`, asked at local `sent_ms` and received at local
    /// `received_ms`: the next look starts there (whether the answer was consumed or skipped),
    /// and the exporter's clock offset is narrowed (the exporter's clock read somewhere in
    /// `[as_of, as_of + 1 s)` at a local time somewhere in `[sent, received]`).
    pub fn advance(&mut self, as_of_ms: u64, sent_ms: u64, received_ms: u64) {
        if self.last_as_of_ms.is_some_and(|last| as_of_ms <= last) {
            return;
        }
        self.last_as_of_ms = Some(as_of_ms);
        let low = as_of_ms as i64 - received_ms.max(sent_ms) as i64;
        let high = as_of_ms as i64 + 1000 - sent_ms as i64;
        self.offset_ms = match self.offset_ms {
            Some((l, h)) if l.max(low) < h.min(high) => Some((l.max(low), h.min(high))),
            // First answer, or a clock stepped: trust the newest answer alone.
            _ => Some((low, high)),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn first_look_then_windows_line_up() {
        let mut c = Cursor::new();
        assert_eq!(c.window_to_ask(T0), None);
        assert_eq!(c.fit(T0, 30), Fit::First);
        // Exporter clock = local + 250 ms; the answer came back 10 ms after it was asked.
        c.advance(T0, T0 - 250 + 100, T0 - 250 + 110);
        // 10.4 s later (local), the exporter's last complete second is T0 + 10 s.
        let now = T0 - 250 + 100 + 10_400;
        assert_eq!(c.window_to_ask(now), Some(10));
        assert_eq!(c.fit(T0 + 10_000, 10), Fit::Exact);
        assert_eq!(c.corrected_window(T0 + 10_000), Some(10));
    }

    #[test]
    fn gaps_overlaps_and_stale_answers() {
        let mut c = Cursor::new();
        c.advance(T0, T0, T0);
        assert_eq!(c.fit(T0 + 12_000, 10), Fit::Gap { skipped_ms: 2_000 });
        assert_eq!(c.fit(T0 + 10_000, 12), Fit::Overlap { overlap_ms: 2_000 });
        assert_eq!(c.fit(T0, 5), Fit::Stale);
        assert_eq!(c.fit(T0 - 1_000, 5), Fit::Stale);
        // The re-query that lines up with the answer that did not.
        assert_eq!(c.corrected_window(T0 + 12_000), Some(12));
        assert_eq!(c.corrected_window(T0), None);
        // Advancing never goes backwards.
        c.advance(T0 - 5_000, T0, T0);
        assert_eq!(c.last_as_of_ms(), Some(T0));
    }

    #[test]
    fn the_clock_offset_narrows_and_survives_a_step() {
        let mut c = Cursor::new();
        // Exporter 3.7 s ahead of us. Answers reveal floor(exporter now).
        let ahead = 3_700;
        for k in 0..20u64 {
            let local = T0 + k * 1_337;
            let as_of = (local + ahead) / 1000 * 1000;
            if let Some(w) = c.window_to_ask(local) {
                // The estimate is the lined-up window once a few answers pinned the offset.
                if k > 3 {
                    assert_eq!(c.fit(as_of, w), Fit::Exact, "look {k}");
                }
            }
            c.advance(as_of, local, local + 5);
        }
        let (low, high) = c.offset_ms.unwrap();
        assert!(
            low <= ahead as i64 && (ahead as i64) < high && high - low <= 400,
            "{low}..{high}"
        );
        // The exporter's clock steps back 1 minute: the newest answer alone is trusted.
        let local = T0 + 40_000;
        let as_of = (local + ahead - 60_000) / 1000 * 1000;
        c.advance(as_of, local, local);
        assert!(c.last_as_of_ms().unwrap() > as_of, "never backwards");
        c.advance(as_of + 120_000, local + 60_000, local + 60_000);
        let (low, high) = c.offset_ms.unwrap();
        assert!(high - low <= 1_000);
    }
}
