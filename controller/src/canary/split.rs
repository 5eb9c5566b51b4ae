//! The observed-split rule: is `k` canary requests out of `n` what routing `weight`% to the
//! canary produces?
//!
//! Envoy picks a weighted cluster at random for every request, so at a true split of
//! `weight`% the canary's count is binomial(n, weight/100). A step's split is a **mismatch**
//! only when both hold:
//! - **beyond chance**: a gap at least this large would occur with probability below
//!   [`SPLIT_ALPHA`] at the desired weight (two-sided; the Chernoff bound
//!   `P ≤ 2·exp(−n·KL(k/n ‖ p))` on the binomial tails, which over-states the probability, so
//!   noise is called a mismatch less often than α);
//! - **beyond tolerance**: the observed share is further from the weight than the tolerance,
//!   in percentage points but never more than half the weight's distance to 0% or 100% (so at
//!   `setWeight: 2` a canary receiving nothing is a mismatch, not "within 5 points").
//!
//! The first keeps low traffic from raising false alarms; the second keeps a huge sample from
//! calling a harmless 0.3-point drift (the window's edge catching a few requests routed
//! before the change) a mismatch.

/// The binomial test's level: one false alarm in a thousand looks at a correct split.
pub const SPLIT_ALPHA: f64 = 0.001;

/// How a split was judged.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Split {
    Matches,
    /// Beyond chance and beyond `tolerance` points (the tolerance as applied at this weight).
    Mismatch {
        tolerance: f64,
    },
}

/// Judges `canary` of `total` requests against `weight`% with `tolerance` points allowed.
pub fn judge(canary: u64, total: u64, weight: u32, tolerance: u32) -> Split {
    if total == 0 {
        return Split::Matches;
    }
    let weight = f64::from(weight.min(100));
    let tolerance = f64::from(tolerance)
        .min(weight / 2.0)
        .min((100.0 - weight) / 2.0);
    let observed = 100.0 * canary as f64 / total as f64;
    let beyond_tolerance = (observed - weight).abs() > tolerance;
    if beyond_tolerance && chance_of_gap(canary, total, weight / 100.0) < SPLIT_ALPHA {
        Split::Mismatch { tolerance }
    } else {
        Split::Matches
    }
}

/// An upper bound on the probability that a binomial(`total`, `p`) count lies at least as far
/// from its mean as `canary` (two-sided).
fn chance_of_gap(canary: u64, total: u64, p: f64) -> f64 {
    let q = canary as f64 / total as f64;
    (2.0 * (-(total as f64) * kl(q, p)).exp()).min(1.0)
}

/// Kullback–Leibler divergence of Bernoulli(q) from Bernoulli(p); infinite when q is
/// impossible under p.
fn kl(q: f64, p: f64) -> f64 {
    let term = |a: f64, b: f64| {
        if a == 0.0 {
            0.0
        } else if b == 0.0 {
            f64::INFINITY
        } else {
            a * (a / b).ln()
        }
    };
    term(q, p) + term(1.0 - q, 1.0 - p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canary_receiving_nothing_at_a_small_weight_is_a_mismatch() {
        // The defect: within 5 points of 2%, so it used to pass.
        assert_eq!(judge(0, 1_000, 2, 5), Split::Mismatch { tolerance: 1.0 });
        assert_eq!(judge(0, 1_000, 1, 5), Split::Mismatch { tolerance: 0.5 });
        // Any canary request at weight 0, or any stable one at 100, cannot be chance.
        assert_eq!(judge(3, 1_000, 0, 5), Split::Mismatch { tolerance: 0.0 });
        assert_eq!(
            judge(997, 1_000, 100, 5),
            Split::Mismatch { tolerance: 0.0 }
        );
    }

    #[test]
    fn noise_at_low_traffic_is_not_a_mismatch() {
        // 2% of 60 requests is 1.2: none, or 4, happen by chance.
        assert_eq!(judge(0, 60, 2, 5), Split::Matches);
        assert_eq!(judge(4, 60, 2, 5), Split::Matches);
        // 10% of 100: 4 or 17 are within what chance gives at α 0.001.
        assert_eq!(judge(4, 100, 10, 5), Split::Matches);
        assert_eq!(judge(17, 100, 10, 5), Split::Matches);
        assert_eq!(judge(20, 100, 20, 5), Split::Matches);
    }

    #[test]
    fn a_large_sample_tolerates_a_small_drift_but_not_a_wrong_split() {
        assert_eq!(judge(10_300, 100_000, 10, 5), Split::Matches);
        assert_eq!(
            judge(16_000, 100_000, 10, 5),
            Split::Mismatch { tolerance: 5.0 }
        );
        assert_eq!(judge(213, 1_000, 20, 5), Split::Matches);
        assert_eq!(judge(0, 1_000, 20, 5), Split::Mismatch { tolerance: 5.0 });
    }

    #[test]
    fn correct_splits_are_rarely_called_mismatches() {
        // Every count a correct 2% / 30% split of 1,000 requests can give, weighted by its
        // probability: the share judged a mismatch stays below α.
        for (weight, tolerance) in [(2u32, 5u32), (30, 5), (50, 0)] {
            let p = f64::from(weight) / 100.0;
            let n = 1_000u64;
            let mut log_pmf = (n as f64) * (1.0 - p).ln(); // k = 0
            let mut false_alarms = 0.0;
            for k in 0..=n {
                if k > 0 {
                    log_pmf += ((n - k + 1) as f64 / k as f64).ln() + (p / (1.0 - p)).ln();
                }
                if judge(k, n, weight, tolerance) != Split::Matches {
                    false_alarms += log_pmf.exp();
                }
            }
            assert!(false_alarms < SPLIT_ALPHA, "{weight}%: {false_alarms}");
        }
    }
}
