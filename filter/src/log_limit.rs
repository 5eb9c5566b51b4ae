//! Rate limiting for log lines about the exporter path, which can fail every tick on every
//! worker for as long as the exporter is down.

use std::collections::BTreeMap;

/// Distinct causes remembered; past that the memory starts over (causes are a small set of
/// statuses and host errors in practice).
const MAX_CAUSES: usize = 64;

#[derive(Debug)]
struct Seen {
    last_logged_ms: u64,
    suppressed: u64,
}

/// Lets the first line of each distinct cause through, then at most one per `interval_ms`,
/// reporting how many were suppressed in between.
#[derive(Debug)]
pub struct LogLimiter {
    interval_ms: u64,
    causes: BTreeMap<String, Seen>,
}

impl LogLimiter {
    pub fn new(interval_ms: u64) -> LogLimiter {
        LogLimiter {
            interval_ms,
            causes: BTreeMap::new(),
        }
    }

    /// `Some(suppressed since the last line)` when a line about `cause` should be logged now.
    pub fn check(&mut self, cause: &str, now_ms: u64) -> Option<u64> {
        if let Some(seen) = self.causes.get_mut(cause) {
            if now_ms.saturating_sub(seen.last_logged_ms) < self.interval_ms {
                seen.suppressed = seen.suppressed.saturating_add(1);
                return None;
            }
            seen.last_logged_ms = now_ms;
            return Some(std::mem::take(&mut seen.suppressed));
        }
        if self.causes.len() >= MAX_CAUSES {
            self.causes.clear();
        }
        self.causes.insert(
            cause.to_owned(),
            Seen {
                last_logged_ms: now_ms,
                suppressed: 0,
            },
        );
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_of_each_cause_then_one_per_interval() {
        let mut limiter = LogLimiter::new(60_000);
        assert_eq!(limiter.check("401", 0), Some(0));
        assert_eq!(limiter.check("401", 1_000), None);
        assert_eq!(limiter.check("503", 1_000), Some(0));
        assert_eq!(limiter.check("401", 2_000), None);
        assert_eq!(limiter.check("401", 61_000), Some(2));
        assert_eq!(limiter.check("401", 62_000), None);
    }

    #[test]
    fn memory_is_bounded() {
        let mut limiter = LogLimiter::new(60_000);
        for i in 0..(MAX_CAUSES * 3) {
            limiter.check(&i.to_string(), 0);
        }
        assert!(limiter.causes.len() <= MAX_CAUSES);
    }
}
