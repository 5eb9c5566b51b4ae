//! Canary-versus-stable judges built on the exact odds test: error ratio, a latency quantile
//! shift, and a whole-distribution latency test. Each consumes one [`Interval`] per look
//! (what both revisions served since the previous look) and reports [`Evidence`].

use plover_wire::Histogram;

use super::margin::DifferenceTest;
use super::odds::{Decision, Evidence, LowerOddsTest, OddsTest, OddsTestConfig};

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

/// The odds test's evidence with its pass side replaced by a margin test's: failing still wins
/// a tie, as in the odds test.
fn with_pass_side(evidence: Evidence, pass_log_evidence: f64) -> Evidence {
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
        match &mut self.margin {
            None => evidence,
            Some(margin) => {
                margin.observe(c.requests, c.errors, s.requests, s.errors);
                with_pass_side(evidence, margin.log_evidence())
            }
        }
    }

    /// The decision after one more look of `scale` × the traffic so far, at the same rates.
    fn projected(&self, scale: f64) -> Decision {
        let evidence = self.test.projected(scale);
        match &self.margin {
            None => evidence.decision,
            Some(margin) => with_pass_side(evidence, margin.projected(scale)).decision,
        }
    }
}

/// "A canary request is not more likely than a stable one to be slower than stable's
/// q-quantile." The threshold is stable's q-quantile over all *earlier* looks, so it is fixed
/// before the data it is applied to (which keeps the test exact); under "same distribution"
/// both revisions exceed it with the same probability.
///
/// With a `margin` (µs) the pass side instead shows "the canary is not slower than stable by
/// the margin or more" at that quantile: its event is a canary request slower than threshold +
/// margin against a stable request slower than the threshold, and its null is odds ratio ≥ 1.
/// If the canary's latencies were stable's shifted by the margin or more, a canary request
/// would exceed threshold + margin at least as often as a stable one exceeds the threshold, for
/// any fixed threshold: so passing such a canary has probability ≤ α (exactly for shifted
/// distributions, and to the threshold's precision for any whose q-quantile is that much later).
#[derive(Clone, Debug)]
pub struct LatencyQuantileJudge {
    quantile: f64,
    test: OddsTest,
    margin_micros: Option<u64>,
    not_slower: Option<LowerOddsTest>,
    stable_so_far: Histogram,
    /// Threshold used at the latest look, in µs.
    pub threshold_micros: Option<u64>,
}

impl LatencyQuantileJudge {
    pub fn new(
        quantile: f64,
        config: OddsTestConfig,
        margin_micros: Option<u64>,
    ) -> LatencyQuantileJudge {
        LatencyQuantileJudge {
            quantile,
            test: OddsTest::new(config),
            margin_micros,
            not_slower: margin_micros
                .map(|_| LowerOddsTest::new(1.0, config.min_effect / config.tolerance)),
            stable_so_far: Histogram::new(),
            threshold_micros: None,
        }
    }

    pub fn observe(&mut self, interval: &Interval) -> Evidence {
        self.threshold_micros = self.stable_so_far.value_at_quantile(self.quantile);
        if let Some(threshold) = self.threshold_micros {
            let slower = |h: &Histogram, t: u64| h.count() - h.count_at_or_below(t);
            let (c, s) = (&interval.canary.latency, &interval.stable.latency);
            self.test.observe(
                c.count(),
                slower(c, threshold),
                s.count(),
                slower(s, threshold),
            );
            if let (Some(margin), Some(not_slower)) = (self.margin_micros, &mut self.not_slower) {
                not_slower.observe(
                    c.count(),
                    slower(c, threshold.saturating_add(margin)),
                    s.count(),
                    slower(s, threshold),
                );
            }
        }
        self.stable_so_far.merge(&interval.stable.latency);
        let evidence = self.test.evidence();
        match &self.not_slower {
            None => evidence,
            Some(not_slower) => with_pass_side(evidence, not_slower.log_evidence()),
        }
    }

    /// The decision after one more look of `scale` × the traffic so far, at the same rates.
    fn projected(&self, scale: f64) -> Decision {
        let evidence = self.test.projected(scale);
        match &self.not_slower {
            None => evidence.decision,
            Some(not_slower) => with_pass_side(evidence, not_slower.projected(scale)).decision,
        }
    }
}

/// The whole latency distribution: quantile judges at several of stable's quantiles, each at
/// α / k (Bonferroni), so the family's false-failure rate stays below α. Fails when any
/// threshold shows the canary slower; passes when every threshold shows it is not (with a
/// `margin`, not slower by the margin or more at each).
#[derive(Clone, Debug)]
pub struct LatencyDistributionJudge {
    judges: Vec<LatencyQuantileJudge>,
}

/// Stable quantiles the distribution judge compares at.
pub const DISTRIBUTION_QUANTILES: [f64; 4] = [0.5, 0.75, 0.9, 0.99];

/// The family's decision: any Fail fails, all Pass passes.
fn all_of(decisions: impl Iterator<Item = Decision>) -> Decision {
    let mut all_pass = true;
    for d in decisions {
        match d {
            Decision::Fail => return Decision::Fail,
            Decision::Pass => {}
            Decision::Inconclusive => all_pass = false,
        }
    }
    if all_pass {
        Decision::Pass
    } else {
        Decision::Inconclusive
    }
}

impl LatencyDistributionJudge {
    pub fn new(config: OddsTestConfig, margin_micros: Option<u64>) -> LatencyDistributionJudge {
        let share = OddsTestConfig {
            alpha: config.alpha / DISTRIBUTION_QUANTILES.len() as f64,
            ..config
        };
        LatencyDistributionJudge {
            judges: DISTRIBUTION_QUANTILES
                .iter()
                .map(|&q| LatencyQuantileJudge::new(q, share, margin_micros))
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
            .unwrap_or_default();
        Evidence {
            decision: all_of(all.iter().map(|e| e.decision)),
            ..weakest
        }
    }

    fn projected(&self, scale: f64) -> Decision {
        all_of(self.judges.iter().map(|j| j.projected(scale)))
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

/// How far [`Judge::needed_canary_requests`] looks: this many times the canary requests so far,
/// and at least this many more requests.
const PROJECTION_SCALE: f64 = 64.0;
const PROJECTION_REQUESTS: u64 = 100_000;

/// `x` rounded up to two significant digits (1,234 → 1,300; 87 → 87; 0.3 → 1).
fn two_significant_digits(x: f64) -> u64 {
    if x <= 100.0 {
        return x.ceil().max(1.0) as u64;
    }
    let unit = 10f64.powi(x.log10().floor() as i32 - 1);
    ((x / unit).ceil() * unit) as u64
}

/// What a judge's pass shows: the canary is not worse than stable, in relative terms (the odds
/// ratio below `min_effect`) or by an absolute margin.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PassSide {
    Relative,
    /// The error judge's margin, an error-rate difference (0.005 = half a point).
    ErrorRate(f64),
    /// The latency judges' margin, µs.
    Latency(u64),
}

impl PassSide {
    /// `not worse than stable`, `not worse than stable by 0.5 points`, `not slower than stable
    /// by 5 ms`: the pass side's name in every sentence.
    pub fn not_worse(&self) -> String {
        match *self {
            PassSide::Relative => "not worse than stable".to_owned(),
            PassSide::ErrorRate(m) => {
                format!("not worse than stable by {} points", significant(m * 100.0))
            }
            PassSide::Latency(micros) => format!(
                "not slower than stable by {} ms",
                significant(micros as f64 / 1000.0)
            ),
        }
    }
}

/// What would change an undecided judge's decision, in words; `None` once decided.
pub fn what_would_decide(
    decision: Decision,
    canary_trials: u64,
    needed_canary_requests: Option<u64>,
) -> Option<String> {
    if decision != Decision::Inconclusive {
        return None;
    }
    Some(match (canary_trials, needed_canary_requests) {
        (0, _) => "needs canary requests to compare".to_owned(),
        (_, Some(n)) => format!("needs about {n} more canary requests at these rates"),
        (_, None) => "no decision in sight at these rates (neither 64× the canary requests so far nor 100000 more would decide: the canary is at the edge of what is acceptable)".to_owned(),
    })
}

/// A sentence a person understands, e.g. for `plover get` and `plover analyze`. The evidence
/// figures are likelihood ratios (e^statistic) on the same scale as the status' sentences, and
/// each names its side; an undecided judge says what would decide it.
pub fn explain(what: &str, evidence: &Evidence, alpha: f64, pass_side: PassSide) -> String {
    let t = evidence.totals;
    let rate = |events: u64, trials: u64| {
        if trials == 0 {
            0.0
        } else {
            100.0 * events as f64 / trials as f64
        }
    };
    let not_worse = pass_side.not_worse();
    let verdict = match evidence.decision {
        Decision::Fail => "canary is worse than stable".to_owned(),
        Decision::Pass => format!("canary is shown {not_worse}"),
        Decision::Inconclusive => "not enough evidence yet".to_owned(),
    };
    let next = what_would_decide(
        evidence.decision,
        t.canary_trials,
        evidence.needed_canary_requests,
    )
    .map(|n| format!("; {n}"))
    .unwrap_or_default();
    format!(
        "{what}: {verdict} (canary {}/{} = {:.2}%, stable {}/{} = {:.2}%, odds ratio ≈ {:.2}; \
         evidence for worse {}, for {not_worse} {}; either decides at {} = 1/α, α = {alpha}{next})",
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

    /// `margin_micros`: see [`LatencyQuantileJudge`].
    pub fn latency_quantile(
        quantile: f64,
        config: OddsTestConfig,
        margin_micros: Option<u64>,
    ) -> Judge {
        Judge::of(JudgeKind::LatencyQuantile(LatencyQuantileJudge::new(
            quantile,
            config,
            margin_micros,
        )))
    }

    pub fn latency_distribution(config: OddsTestConfig, margin_micros: Option<u64>) -> Judge {
        Judge::of(JudgeKind::LatencyDistribution(
            LatencyDistributionJudge::new(config, margin_micros),
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

    /// While the decision is Inconclusive: about how many more canary requests either side
    /// needs to decide if traffic goes on at the rates seen so far (stable's share, both
    /// revisions' error or slow-request rates), rounded to two significant digits. `None` when
    /// decided, when no canary request has been compared yet, or when neither 64 times the
    /// requests so far nor 100,000 more would decide (a canary right at the edge of what is
    /// acceptable).
    pub fn needed_canary_requests(&self) -> Option<u64> {
        if self.decision() != Decision::Inconclusive {
            return None;
        }
        let so_far = match &self.kind {
            JudgeKind::ErrorRatio(j) => j.test.totals(),
            JudgeKind::LatencyQuantile(j) => j.test.totals(),
            JudgeKind::LatencyDistribution(j) => j.judges.first()?.test.totals(),
        }
        .canary_trials;
        if so_far == 0 {
            return None;
        }
        let decides = |scale: f64| {
            let decision = match &self.kind {
                JudgeKind::ErrorRatio(j) => j.projected(scale),
                JudgeKind::LatencyQuantile(j) => j.projected(scale),
                JudgeKind::LatencyDistribution(j) => j.projected(scale),
            };
            decision != Decision::Inconclusive
        };
        // Double until a projection decides, then halve the bracket a few times: "about".
        // Out of sight: beyond 64× the requests so far and beyond 100,000 more.
        let limit = (PROJECTION_REQUESTS as f64 / so_far as f64).max(PROJECTION_SCALE);
        let (mut low, mut high) = (0.0, 1.0 / 64.0);
        while !decides(high) {
            if high >= limit {
                return None;
            }
            (low, high) = (high, high * 2.0);
        }
        for _ in 0..6 {
            let mid = 0.5 * (low + high);
            if decides(mid) {
                high = mid;
            } else {
                low = mid;
            }
        }
        Some(two_significant_digits(so_far as f64 * high))
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
        let text = explain("error ratio", &e, 0.05, PassSide::Relative);
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

    fn latency(rng: &mut crate::simulate::Rng, n: u64, median_micros: f64) -> Histogram {
        let mut h = Histogram::new();
        for _ in 0..n {
            h.record((median_micros * (0.5 * rng.standard_normal()).exp()) as u64);
        }
        h
    }

    fn latency_look(rng: &mut crate::simulate::Rng, canary_median: f64) -> Interval {
        Interval {
            canary: Sample {
                requests: 100,
                errors: 0,
                latency: latency(rng, 100, canary_median),
            },
            stable: Sample {
                requests: 900,
                errors: 0,
                latency: latency(rng, 900, 20_000.0),
            },
        }
    }

    #[test]
    fn a_latency_margin_passes_an_equal_canary_and_never_one_slower_by_more() {
        // Stable's p99 ≈ 64 ms; a 5 ms margin. An equal canary is shown not slower by 5 ms;
        // one 20% slower (p99 +13 ms) is failed and never passed.
        let mut rng = crate::simulate::Rng::new(5);
        let mut equal = Judge::latency_quantile(0.99, CONFIG, Some(5_000));
        let mut slower = Judge::latency_quantile(0.99, CONFIG, Some(5_000));
        let (mut e, mut s) = (Evidence::default(), Evidence::default());
        for _ in 0..300 {
            e = equal.observe(&latency_look(&mut rng, 20_000.0));
            s = slower.observe(&latency_look(&mut rng, 24_000.0));
        }
        assert_eq!(e.decision, Decision::Pass, "{e:?}");
        assert_eq!(s.decision, Decision::Fail, "{s:?}");
        assert!(s.pass_log_evidence < 0.0, "{s:?}");
        let text = explain("p99", &e, 0.05, PassSide::Latency(5_000));
        assert!(
            text.starts_with("p99: canary is shown not slower than stable by 5 ms ("),
            "{text}"
        );
    }

    #[test]
    fn an_undecided_judge_says_how_many_more_requests_would_decide() {
        // A clean release at half a point: 3 looks are too few; the projection says about how
        // many more canary requests decide, and feeding that many at the same rates does.
        let mut judge = Judge::error_ratio(CONFIG, Some(0.005));
        for _ in 0..3 {
            judge.observe(&interval((91, 0), (116, 0)));
        }
        let needed = judge.needed_canary_requests().unwrap_or_default();
        assert!((50..2_000).contains(&needed), "{needed}");
        let mut looks = 0;
        let mut decision = Decision::Inconclusive;
        while decision == Decision::Inconclusive {
            decision = judge.observe(&interval((91, 0), (116, 0))).decision;
            looks += 1;
        }
        let fed = looks * 91;
        assert_eq!(decision, Decision::Pass);
        assert!(
            fed as f64 >= needed as f64 * 0.5 && fed as f64 <= needed as f64 * 2.0,
            "projected {needed}, decided after {fed}"
        );
        assert_eq!(judge.needed_canary_requests(), None, "decided");
        // Right at both edges (odds ratio 1.5 tolerated, half a point of margin: canary 1.5%
        // against 1%) nothing decides in sight; before any canary request nothing projects.
        let tolerant = OddsTestConfig {
            tolerance: 1.5,
            min_effect: 3.0,
            ..CONFIG
        };
        let mut edge = Judge::error_ratio(tolerant, Some(0.005));
        edge.observe(&interval((1_000, 15), (9_000, 90)));
        assert_eq!(edge.needed_canary_requests(), None);
        // A handful of requests is not an edge: the projection looks 100,000 requests ahead.
        let mut early = Judge::error_ratio(CONFIG, Some(0.005));
        early.observe(&interval((4, 0), (131, 0)));
        let needed = early.needed_canary_requests().unwrap_or_default();
        assert!((300..3_000).contains(&needed), "{needed}");
        assert_eq!(
            what_would_decide(Decision::Inconclusive, 1_000, None).unwrap_or_default(),
            "no decision in sight at these rates (neither 64× the canary requests so far nor 100000 more would decide: the canary is at the edge of what is acceptable)"
        );
        assert_eq!(
            what_would_decide(Decision::Inconclusive, 0, None).unwrap_or_default(),
            "needs canary requests to compare"
        );
        assert_eq!(
            Judge::error_ratio(CONFIG, None).needed_canary_requests(),
            None
        );
        assert_eq!(two_significant_digits(1_234.0), 1_300);
        assert_eq!(two_significant_digits(87.2), 88);
    }

    #[test]
    fn the_sentences_in_the_docs() {
        // analysis/ANALYSIS.md and sequential/SEQUENTIAL.md quote these.
        let mut judge = Judge::error_ratio(CONFIG, None);
        let e = judge.observe(&interval((1_800, 36), (16_200, 162)));
        assert_eq!(
            explain("error ratio", &e, 0.05, PassSide::Relative),
            "error ratio: canary is worse than stable (canary 36/1800 = 2.00%, stable 162/16200 = 1.00%, odds ratio ≈ 2.04; evidence for worse 102, for not worse than stable 0.0825; either decides at 20 = 1/α, α = 0.05)"
        );
        let mut judge = Judge::error_ratio(CONFIG, Some(0.005));
        let e = judge.observe(&interval((300, 0), (2_700, 3)));
        let e = Evidence {
            needed_canary_requests: judge.needed_canary_requests(),
            ..e
        };
        assert_eq!(
            explain("error ratio", &e, 0.05, PassSide::ErrorRate(0.005)),
            "error ratio: not enough evidence yet (canary 0/300 = 0.00%, stable 3/2700 = 0.11%, odds ratio ≈ 1.28; evidence for worse 0.568, for not worse than stable by 0.5 points 0.246; either decides at 20 = 1/α, α = 0.05; needs about 870 more canary requests at these rates)"
        );
    }
}
