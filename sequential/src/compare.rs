//! Canary-versus-stable judges built on the exact odds test: error ratio, a latency quantile
//! shift, and a whole-distribution latency test. Each consumes one [`Interval`] per look
//! (what both revisions served since the previous look) and reports [`Evidence`].

use plover_wire::Histogram;

use super::margin::DifferenceTest;
use super::odds::{Decision, Evidence, OddsTest, OddsTestConfig};

/// What one revision served during one look's interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    pub requests: u64,
    /// 5xx and requests that got no upstream response.
    pub errors: u64,
    /// Durations in µs; may be empty when only error counts are judged.
    pub latency: Histogram,
}

/// Both revisions over the same interval.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Interval {
    pub canary: Sample,
    pub stable: Sample,
}

/// Fails on "the canary's error odds are more than `tolerance` × stable's". Passes on "below
/// `min_effect` × stable's", or, with an absolute `margin`, on "the canary's error rate is not
/// more than `margin` above stable's" ([`DifferenceTest`]), which a release without errors can
/// show; each side decides at ln(1/α).
#[derive(Clone, Debug)]
pub struct ErrorRatioJudge {
    test: OddsTest,
    margin: Option<DifferenceTest>,
}

impl ErrorRatioJudge {
    pub fn new(config: OddsTestConfig, margin: Option<f64>) -> ErrorRatioJudge {
        ErrorRatioJudge {
            test: OddsTest::new(config),
            margin: margin.map(DifferenceTest::new),
        }
    }

    pub fn observe(&mut self, interval: &Interval) -> Evidence {
        let (c, s) = (&interval.canary, &interval.stable);
        self.test
            .observe(c.requests, c.errors, s.requests, s.errors);
        let evidence = self.test.evidence();
        let Some(margin) = &mut self.margin else {
            return evidence;
        };
        margin.observe(c.requests, c.errors, s.requests, s.errors);
        let pass_log_evidence = margin.log_evidence();
        // Failing wins a tie, as in the odds test.
        let decision = if evidence.decision == Decision::Fail {
            Decision::Fail
        } else if pass_log_evidence >= evidence.log_boundary {
            Decision::Pass
        } else {
            Decision::Inconclusive
        };
        Evidence {
            decision,
            pass_log_evidence,
            ..evidence
        }
    }
}

/// "A canary request is not more likely than a stable one to be slower than stable's
/// q-quantile." The threshold is stable's q-quantile over all *earlier* looks, so it is fixed
/// before the data it is applied to (which keeps the test exact); under "same distribution"
/// both revisions exceed it with the same probability.
#[derive(Clone, Debug)]
pub struct LatencyQuantileJudge {
    quantile: f64,
    test: OddsTest,
    stable_so_far: Histogram,
    /// Threshold used at the latest look, in µs.
    pub threshold_micros: Option<u64>,
}

impl LatencyQuantileJudge {
    pub fn new(quantile: f64, config: OddsTestConfig) -> LatencyQuantileJudge {
        LatencyQuantileJudge {
            quantile,
            test: OddsTest::new(config),
            stable_so_far: Histogram::new(),
            threshold_micros: None,
        }
    }

    pub fn observe(&mut self, interval: &Interval) -> Evidence {
        self.threshold_micros = self.stable_so_far.value_at_quantile(self.quantile);
        if let Some(threshold) = self.threshold_micros {
            let slower = |h: &Histogram| h.count() - h.count_at_or_below(threshold);
            let (c, s) = (&interval.canary.latency, &interval.stable.latency);
            self.test
                .observe(c.count(), slower(c), s.count(), slower(s));
        }
        self.stable_so_far.merge(&interval.stable.latency);
        self.test.evidence()
    }
}

/// The whole latency distribution: quantile judges at several of stable's quantiles, each at
/// α / k (Bonferroni), so the family's false-failure rate stays below α. Fails when any
/// threshold shows the canary slower; passes when every threshold shows it is not.
#[derive(Clone, Debug)]
pub struct LatencyDistributionJudge {
    judges: Vec<LatencyQuantileJudge>,
}

/// Stable quantiles the distribution judge compares at.
pub const DISTRIBUTION_QUANTILES: [f64; 4] = [0.5, 0.75, 0.9, 0.99];

impl LatencyDistributionJudge {
    pub fn new(config: OddsTestConfig) -> LatencyDistributionJudge {
        let share = OddsTestConfig {
            alpha: config.alpha / DISTRIBUTION_QUANTILES.len() as f64,
            ..config
        };
        LatencyDistributionJudge {
            judges: DISTRIBUTION_QUANTILES
                .iter()
                .map(|&q| LatencyQuantileJudge::new(q, share))
                .collect(),
        }
    }

    /// The evidence of the most damning threshold (the first failing one, else the least
    /// convincing pass).
    pub fn observe(&mut self, interval: &Interval) -> Evidence {
        let all: Vec<Evidence> = self
            .judges
            .iter_mut()
            .map(|j| j.observe(interval))
            .collect();
        if let Some(failed) = all.iter().find(|e| e.decision == Decision::Fail) {
            return *failed;
        }
        let weakest = all
            .iter()
            .min_by(|a, b| {
                (a.pass_log_evidence - a.log_boundary)
                    .total_cmp(&(b.pass_log_evidence - b.log_boundary))
            })
            .copied()
            .expect("at least one quantile");
        Evidence {
            decision: if all.iter().all(|e| e.decision == Decision::Pass) {
                Decision::Pass
            } else {
                Decision::Inconclusive
            },
            ..weakest
        }
    }
}

/// A number with three significant digits, trailing zeros dropped, scientific outside
/// 0.001–99,999 (`388`, `0.0283`, `3.5e19`): the one scale every evidence figure is shown on.
pub fn significant(x: f64) -> String {
    if !x.is_finite() {
        return if x > 0.0 { "∞".into() } else { "—".into() };
    }
    if x != 0.0 && !(1e-3..1e5).contains(&x.abs()) {
        return format!("{x:.1e}");
    }
    let digits = if x == 0.0 {
        0
    } else {
        (2 - x.abs().log10().floor() as i32).max(0) as usize
    };
    let text = format!("{x:.digits$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// A sentence a person understands, e.g. for `plover get` and `plover analyze`. The evidence
/// figures are likelihood ratios (e^statistic) on the same scale as the status' sentences, and
/// each names its side; `margin` is the error judge's absolute margin, if it has one.
pub fn explain(what: &str, evidence: &Evidence, alpha: f64, margin: Option<f64>) -> String {
    let t = evidence.totals;
    let rate = |events: u64, trials: u64| {
        if trials == 0 {
            0.0
        } else {
            100.0 * events as f64 / trials as f64
        }
    };
    let not_worse = match margin {
        Some(m) => format!("not worse than stable by {} points", significant(m * 100.0)),
        None => "not worse than stable".to_owned(),
    };
    let verdict = match evidence.decision {
        Decision::Fail => "canary is worse than stable".to_owned(),
        Decision::Pass => format!("canary is shown {not_worse}"),
        Decision::Inconclusive => "not enough evidence yet".to_owned(),
    };
    format!(
        "{what}: {verdict} (canary {}/{} = {:.2}%, stable {}/{} = {:.2}%, odds ratio ≈ {:.2}; \
         evidence for worse {}, for {not_worse} {}; either decides at {} = 1/α, α = {alpha})",
        t.canary_events,
        t.canary_trials,
        rate(t.canary_events, t.canary_trials),
        t.stable_events,
        t.stable_trials,
        rate(t.stable_events, t.stable_trials),
        t.odds_ratio(),
        significant(evidence.fail_log_evidence.exp()),
        significant(evidence.pass_log_evidence.exp()),
        significant(evidence.log_boundary.exp()),
    )
}

/// Any of the three judges, for callers that pick one from configuration (Plover's provider),
/// with decisions made final: once the fail (or pass) statistic has crossed ln(1/α) the
/// decision stands at every later look. That is what Ville's inequality bounds (the
/// probability that the statistic *ever* crosses), so holding a crossing is as valid as
/// stopping there; a Fail still overrides an earlier Pass.
#[derive(Clone, Debug)]
pub struct Judge {
    kind: JudgeKind,
    failed: bool,
    passed: bool,
    looks: u64,
    /// The look (1-based) at which the current decision was first reached.
    decided_at: Option<u64>,
}

#[derive(Clone, Debug)]
enum JudgeKind {
    ErrorRatio(ErrorRatioJudge),
    LatencyQuantile(LatencyQuantileJudge),
    LatencyDistribution(LatencyDistributionJudge),
}

impl Judge {
    /// `margin`: see [`ErrorRatioJudge`].
    pub fn error_ratio(config: OddsTestConfig, margin: Option<f64>) -> Judge {
        Judge::of(JudgeKind::ErrorRatio(ErrorRatioJudge::new(config, margin)))
    }

    pub fn latency_quantile(quantile: f64, config: OddsTestConfig) -> Judge {
        Judge::of(JudgeKind::LatencyQuantile(LatencyQuantileJudge::new(
            quantile, config,
        )))
    }

    pub fn latency_distribution(config: OddsTestConfig) -> Judge {
        Judge::of(JudgeKind::LatencyDistribution(
            LatencyDistributionJudge::new(config),
        ))
    }

    fn of(kind: JudgeKind) -> Judge {
        Judge {
            kind,
            failed: false,
            passed: false,
            looks: 0,
            decided_at: None,
        }
    }

    /// Looks observed so far (including empty ones).
    pub fn looks(&self) -> u64 {
        self.looks
    }

    /// The look at which the standing decision was reached, if any.
    pub fn decided_at(&self) -> Option<u64> {
        self.decided_at
    }

    /// The latency threshold (µs) used at the latest look, for the quantile judge.
    pub fn threshold_micros(&self) -> Option<u64> {
        match &self.kind {
            JudgeKind::LatencyQuantile(j) => j.threshold_micros,
            _ => None,
        }
    }

    /// Adds one look and returns the evidence, its decision made final as described above.
    pub fn observe(&mut self, interval: &Interval) -> Evidence {
        self.looks += 1;
        let evidence = match &mut self.kind {
            JudgeKind::ErrorRatio(j) => j.observe(interval),
            JudgeKind::LatencyQuantile(j) => j.observe(interval),
            JudgeKind::LatencyDistribution(j) => j.observe(interval),
        };
        let before = self.decision();
        match evidence.decision {
            Decision::Fail => self.failed = true,
            Decision::Pass => self.passed = true,
            Decision::Inconclusive => {}
        }
        let decision = self.decision();
        if decision != before {
            self.decided_at = Some(self.looks);
        }
        Evidence {
            decision,
            ..evidence
        }
    }

    fn decision(&self) -> Decision {
        if self.failed {
            Decision::Fail
        } else if self.passed {
            Decision::Pass
        } else {
            Decision::Inconclusive
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: OddsTestConfig = OddsTestConfig {
        alpha: 0.05,
        tolerance: 1.0,
        min_effect: 2.0,
    };

    fn interval(canary: (u64, u64), stable: (u64, u64)) -> Interval {
        Interval {
            canary: Sample {
                requests: canary.0,
                errors: canary.1,
                ..Default::default()
            },
            stable: Sample {
                requests: stable.0,
                errors: stable.1,
                ..Default::default()
            },
        }
    }

    #[test]
    fn decisions_are_final_once_reached() {
        let mut judge = Judge::error_ratio(CONFIG, None);
        let mut looks = 0;
        while judge.observe(&interval((100, 10), (900, 9))).decision != Decision::Fail {
            looks += 1;
            assert!(looks < 100);
        }
        let at = judge.decided_at().unwrap();
        // A stretch where the canary looks better drags the statistic down, not the decision.
        for _ in 0..20 {
            let e = judge.observe(&interval((100, 0), (900, 30)));
            assert_eq!(e.decision, Decision::Fail);
        }
        assert_eq!(judge.decided_at(), Some(at));
        assert!(judge.observe(&Interval::default()).fail_log_evidence < (1.0f64 / 0.05).ln());
    }

    #[test]
    fn a_release_without_errors_passes_only_with_an_absolute_margin() {
        // The demo's healthy release: no error on either side. The odds ratio learns nothing.
        let mut relative = Judge::error_ratio(CONFIG, None);
        let mut absolute = Judge::error_ratio(CONFIG, Some(0.005));
        let (mut r, mut a) = (Decision::Inconclusive, Decision::Inconclusive);
        for _ in 0..30 {
            r = relative.observe(&interval((91, 0), (116, 0))).decision;
            a = absolute.observe(&interval((91, 0), (116, 0))).decision;
        }
        assert_eq!((r, a), (Decision::Inconclusive, Decision::Pass));
        // A clearly worse canary still fails with a margin set.
        let mut judge = Judge::error_ratio(CONFIG, Some(0.005));
        let mut looks = 0;
        while judge.observe(&interval((100, 10), (900, 9))).decision != Decision::Fail {
            looks += 1;
            assert!(looks < 100);
        }
    }

    #[test]
    fn a_fail_overrides_an_earlier_pass() {
        let mut judge = Judge::error_ratio(CONFIG, None);
        for _ in 0..60 {
            judge.observe(&interval((100, 1), (900, 9)));
        }
        assert_eq!(judge.observe(&Interval::default()).decision, Decision::Pass);
        let mut e = judge.observe(&Interval::default());
        for _ in 0..200 {
            e = judge.observe(&interval((100, 20), (900, 9)));
        }
        assert_eq!(e.decision, Decision::Fail);
        assert!(e.totals.odds_ratio() > 2.0);
        let text = explain("error ratio", &e, 0.05, None);
        assert!(
            text.starts_with("error ratio: canary is worse than stable (canary "),
            "{text}"
        );
        assert!(
            text.ends_with("either decides at 20 = 1/α, α = 0.05)"),
            "{text}"
        );
        assert_eq!(significant(388.4), "388");
        assert_eq!(significant(0.02834), "0.0283");
        assert_eq!(significant(3.5e19), "3.5e19");
    }
}
