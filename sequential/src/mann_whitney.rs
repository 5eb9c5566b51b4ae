//! Kayenta's judgement of one metric, for the bench's fixed-horizon baseline: the two-sample
//! Mann–Whitney (Wilcoxon rank-sum) test of the canary's series of per-interval values against
//! the control's, with the normal approximation, tie and continuity corrections, and the
//! Hodges–Lehmann estimate of the shift with its confidence interval found by root search, as
//! R's `wilcox.test(conf.int = TRUE)` and Kayenta's `MannWhitney` do. Kayenta's
//! `MannWhitneyClassifier` calls the metric **High** when the interval's lower end exceeds
//! `tolerance × |estimate|` (0.25), and the NetflixACAJudge asks for a 98% interval.
//!
//! This is a fixed-horizon test: valid once, at the end of the analysis interval it was
//! planned for. Looking at it repeatedly would inflate its false-failure rate, which is why
//! Kayenta judges once per (long) interval.

/// Kayenta's classification of the canary's metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Classification {
    /// The canary's values are shown higher (an error ratio: worse).
    High,
    Low,
    Pass,
    /// Either series is empty.
    NoData,
}

/// The NetflixACAJudge's settings of the classifier.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Classifier {
    /// Two-sided confidence level of the shift's interval (0.98 in NetflixACAJudge).
    pub confidence: f64,
    /// The interval must clear this fraction of |estimate| (0.25).
    pub tolerance: f64,
}

pub const NETFLIX_ACA: Classifier = Classifier {
    confidence: 0.98,
    tolerance: 0.25,
};

/// The rank-sum statistic of `x − d` against `y`, standardised with the tie and continuity
/// corrections, minus `zq` (R's `wdiff`). Decreasing in `d`.
fn standardised(x: &[f64], y: &[f64], d: f64, zq: f64) -> f64 {
    let (nx, ny) = (x.len() as f64, y.len() as f64);
    let mut all: Vec<(f64, bool)> = x
        .iter()
        .map(|v| (v - d, true))
        .chain(y.iter().map(|&v| (v, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum_x, mut ties) = (0.0, 0.0);
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        // Ranks i+1 ..= j+1 share their mean.
        let mean_rank = (i + j + 2) as f64 / 2.0;
        let group = (j - i + 1) as f64;
        ties += group * group * group - group;
        rank_sum_x += mean_rank * all[i..=j].iter().filter(|(_, is_x)| *is_x).count() as f64;
        i = j + 1;
    }
    let dz = rank_sum_x - nx * (nx + 1.0) / 2.0 - nx * ny / 2.0;
    let n = nx + ny;
    let sigma = ((nx * ny / 12.0) * ((n + 1.0) - ties / (n * (n - 1.0)))).sqrt();
    if sigma == 0.0 {
        return -zq;
    }
    let correction = 0.5 * dz.signum();
    (dz - correction) / sigma - zq
}

/// The shift `d` at which the standardised statistic equals `zq`, by bisection between the
/// smallest and largest possible shifts (R's `root`).
fn root(x: &[f64], y: &[f64], zq: f64) -> f64 {
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = |v: &[f64]| v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (mut low, mut high) = (min(x) - max(y), max(x) - min(y));
    if standardised(x, y, low, zq) <= 0.0 {
        return low;
    }
    if standardised(x, y, high, zq) >= 0.0 {
        return high;
    }
    for _ in 0..100 {
        let mid = 0.5 * (low + high);
        if standardised(x, y, mid, zq) > 0.0 {
            low = mid;
        } else {
            high = mid;
        }
    }
    0.5 * (low + high)
}

/// The standard normal's upper `p` quantile (Acklam's rational approximation, |error| < 1.2e-9
/// relative, refined by one Newton step).
pub fn normal_upper_quantile(p: f64) -> f64 {
    -normal_quantile(p)
}

fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// The Hodges–Lehmann estimate of the shift (canary − control) and its two-sided interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shift {
    pub estimate: f64,
    pub lower: f64,
    pub upper: f64,
}

pub fn shift(canary: &[f64], control: &[f64], confidence: f64) -> Option<Shift> {
    if canary.is_empty() || control.is_empty() {
        return None;
    }
    let z = normal_upper_quantile((1.0 - confidence) / 2.0);
    Some(Shift {
        estimate: root(canary, control, 0.0),
        lower: root(canary, control, z),
        upper: root(canary, control, -z),
    })
}

impl Classifier {
    /// Kayenta's classification; NaN values are removed first (its default `nanStrategy`).
    pub fn classify(&self, canary: &[f64], control: &[f64]) -> Classification {
        let keep = |v: &[f64]| {
            v.iter()
                .copied()
                .filter(|x| x.is_finite())
                .collect::<Vec<_>>()
        };
        let (canary, control) = (keep(canary), keep(control));
        if canary == control && !canary.is_empty() {
            return Classification::Pass;
        }
        let Some(shift) = shift(&canary, &control, self.confidence) else {
            return Classification::NoData;
        };
        let bound = self.tolerance * shift.estimate.abs();
        if shift.lower > bound {
            Classification::High
        } else if shift.upper < -bound {
            Classification::Low
        } else {
            Classification::Pass
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statistic_matches_a_hand_computed_rank_sum() {
        // x = {1, 3}, y = {2, 4, 5}: ranks of x 1 and 3, W = 4 − 3 = 1, E = 3, σ² = 6·6/12 = 3.
        let z = standardised(&[1.0, 3.0], &[2.0, 4.0, 5.0], 0.0, 0.0);
        assert!((z - (1.0 - 3.0 + 0.5) / 3f64.sqrt()).abs() < 1e-12, "{z}");
        // A tie between the samples: x = {2}, y = {2, 3}: rank of x 1.5, W = 0.5, E = 1,
        // σ² = (2/12)·(4 − 6/6) = 0.5.
        let z = standardised(&[2.0], &[2.0, 3.0], 0.0, 0.0);
        assert!((z - (0.5 - 1.0 + 0.5) / 0.5f64.sqrt()).abs() < 1e-12, "{z}");
    }

    #[test]
    fn normal_quantiles_are_right() {
        for (p, z) in [(0.025, 1.959_963_985), (0.01, 2.326_347_874), (0.5, 0.0)] {
            assert!((normal_upper_quantile(p) - z).abs() < 1e-8, "{p}");
        }
    }

    #[test]
    fn the_estimate_is_the_shift_and_the_interval_holds_it() {
        let control: Vec<f64> = (0..30).map(|i| f64::from(i) * 0.37 % 5.0).collect();
        let canary: Vec<f64> = control.iter().map(|v| v + 2.0).collect();
        let s = shift(&canary, &control, 0.98).unwrap();
        assert!((s.estimate - 2.0).abs() < 0.2, "{s:?}");
        assert!(s.lower < s.estimate && s.estimate < s.upper, "{s:?}");
        assert_eq!(
            NETFLIX_ACA.classify(&canary, &control),
            Classification::High
        );
        assert_eq!(NETFLIX_ACA.classify(&control, &canary), Classification::Low);
        assert_eq!(
            NETFLIX_ACA.classify(&control, &control),
            Classification::Pass
        );
        assert_eq!(NETFLIX_ACA.classify(&[], &control), Classification::NoData);
    }

    #[test]
    fn kayentas_known_blind_spot_is_reproduced() {
        // spinnaker/kayenta#780: canary seven 100s and three 1s against ten 1s is a Pass: the
        // interval's lower end is tiny beside a quarter of the estimate.
        let mut canary = vec![100.0; 7];
        canary.extend([1.0; 3]);
        assert_eq!(
            NETFLIX_ACA.classify(&canary, &[1.0; 10]),
            Classification::Pass
        );
    }
}
