//! Seeded, deterministic simulations of canary releases, judged side by side by Plover's
//! sequential judges and by Argo-style threshold templates. Used by the unit tests (false
//! failure rate ≤ α) and by `cargo xtask bench judge` (time to detect).

use plover_wire::Histogram;

use super::compare::{
    ErrorRatioJudge, Interval, LatencyDistributionJudge, LatencyQuantileJudge, Sample,
};
use super::mann_whitney::{Classification, NETFLIX_ACA};
use super::odds::{Decision, OddsTestConfig};

/// SplitMix64: small, fast and fully deterministic for a seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Binomial(n, p) by geometric waiting times: O(n·min(p, 1−p)).
    pub fn binomial(&mut self, n: u64, p: f64) -> u64 {
        if p <= 0.0 {
            return 0;
        }
        if p >= 1.0 {
            return n;
        }
        if p > 0.5 {
            return n - self.binomial(n, 1.0 - p);
        }
        let log_q = (1.0 - p).ln();
        let (mut successes, mut position) = (0u64, 0u64);
        loop {
            position += (self.uniform().ln() / log_q).floor() as u64 + 1;
            if position > n {
                return successes;
            }
            successes += 1;
        }
    }

    pub fn standard_normal(&mut self) -> f64 {
        (-2.0 * self.uniform().ln()).sqrt() * (2.0 * std::f64::consts::PI * self.uniform()).cos()
    }
}

/// A revision's behaviour: error probability and log-normal latency.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Revision {
    pub error_rate: f64,
    pub median_latency_micros: f64,
    /// σ of ln(latency).
    pub latency_sigma: f64,
}

impl Revision {
    pub const HEALTHY: Revision = Revision {
        error_rate: 0.01,
        median_latency_micros: 20_000.0,
        latency_sigma: 0.5,
    };

    /// The same revision with every latency multiplied by `factor` (so its p99 moves by it).
    pub fn slower(self, factor: f64) -> Revision {
        Revision {
            median_latency_micros: self.median_latency_micros * factor,
            ..self
        }
    }

    fn sample(&self, rng: &mut Rng, requests: u64, with_latency: bool) -> Sample {
        let errors = rng.binomial(requests, self.error_rate);
        let mut latency = Histogram::new();
        if with_latency {
            for _ in 0..requests {
                let v =
                    self.median_latency_micros * (self.latency_sigma * rng.standard_normal()).exp();
                latency.record(v as u64);
            }
        }
        Sample {
            requests,
            errors,
            latency,
        }
    }
}

/// The traffic of one simulated release.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scenario {
    pub total_rps: u64,
    /// Share of requests routed to the canary.
    pub canary_weight: f64,
    pub stable: Revision,
    pub canary: Revision,
    /// How long the release is watched, in seconds (one look per second).
    pub horizon_seconds: u64,
}

impl Scenario {
    pub fn healthy() -> Scenario {
        Scenario {
            total_rps: 100,
            canary_weight: 0.1,
            stable: Revision::HEALTHY,
            canary: Revision::HEALTHY,
            horizon_seconds: 600,
        }
    }

    /// One second of traffic.
    pub fn second(&self, rng: &mut Rng, with_latency: bool) -> Interval {
        let canary_requests = rng.binomial(self.total_rps, self.canary_weight);
        Interval {
            canary: self.canary.sample(rng, canary_requests, with_latency),
            stable: self
                .stable
                .sample(rng, self.total_rps - canary_requests, with_latency),
        }
    }
}

/// Which judge watches the release.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// The error judge, with an absolute margin or not (see `compare::ErrorRatioJudge`).
    PloverErrors(OddsTestConfig, Option<f64>),
    /// A latency quantile judge, with a margin in µs or not.
    PloverLatencyQuantile(f64, OddsTestConfig, Option<u64>),
    PloverLatencyDistribution(OddsTestConfig, Option<u64>),
    Threshold(ThresholdTemplate),
    /// The limit: Wald's SPRT on the canary's errors, knowing the true rates.
    Oracle(OracleSprt),
    /// Kayenta's fixed-horizon Mann–Whitney judgement.
    Kayenta(KayentaJudge),
}

impl Method {
    fn needs_latency(&self) -> bool {
        matches!(
            self,
            Method::PloverLatencyQuantile(..) | Method::PloverLatencyDistribution(..)
        )
    }
}

/// Wald's sequential probability ratio test of the canary's error rate `acceptable` against
/// `worse`, both known (so is stable's rate: the oracle needs no stable traffic). Among all
/// tests with these error rates it needs the fewest requests on average at both rates (Wald
/// & Wolfowitz 1948): no judge can be faster, so it is the yardstick of the bench's ratios.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OracleSprt {
    pub acceptable: f64,
    pub worse: f64,
    /// P(fail | acceptable).
    pub alpha: f64,
    /// P(pass | worse).
    pub beta: f64,
}

impl OracleSprt {
    /// log-likelihood ratio, worse against acceptable, of `errors` in `requests`.
    fn log_ratio(&self, requests: u64, errors: u64) -> f64 {
        let ok = requests.saturating_sub(errors) as f64;
        errors as f64 * (self.worse / self.acceptable).ln()
            + ok * ((1.0 - self.worse) / (1.0 - self.acceptable)).ln()
    }

    fn decide(&self, log_ratio: f64) -> Decision {
        if log_ratio >= ((1.0 - self.beta) / self.alpha).ln() {
            Decision::Fail
        } else if log_ratio <= (self.beta / (1.0 - self.alpha)).ln() {
            Decision::Pass
        } else {
            Decision::Inconclusive
        }
    }
}

/// Kayenta judging the canary's error ratio: one value per `step_seconds` (a Prometheus query
/// step) for canary and control, classified once, `interval_seconds` after the start, by the
/// NetflixACAJudge's Mann–Whitney classifier; High fails the canary, anything else passes it
/// (one metric: its score is 0 or 100).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KayentaJudge {
    pub interval_seconds: u64,
    pub step_seconds: u64,
}

/// An Argo-style analysis: every `interval` (after `initial_delay`), the canary's success rate
/// over the last `rate_window` seconds is compared with `min_success`; the run fails when
/// failed measurements exceed `failure_limit`, and ends successfully after `count`
/// measurements when a count is set. An empty window is a failed measurement (NaN compares
/// false in Argo's conditions).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ThresholdTemplate {
    pub name: &'static str,
    pub initial_delay: u64,
    pub interval: u64,
    pub rate_window: u64,
    pub min_success: f64,
    pub failure_limit: u32,
    pub count: Option<u32>,
}

/// The seeds' success-rate templates as threshold rules (see `tests/fixtures/seed-templates`).
pub const SEED_TEMPLATES: [ThresholdTemplate; 3] = [
    // seed000: successCondition result[0] > 0.95, interval 20s, initialDelay 30s, irate over
    // [40s] (the last two scrapes: ~15 s of traffic), failureLimit 0.
    ThresholdTemplate {
        name: "seed000 istio-success-rate",
        initial_delay: 30,
        interval: 20,
        rate_window: 15,
        min_success: 0.95,
        failure_limit: 0,
        count: None,
    },
    // seed003: error rate ≤ 0.05 over [5m], interval 60s, failureLimit 3.
    ThresholdTemplate {
        name: "seed003 apdex error-rate",
        initial_delay: 0,
        interval: 60,
        rate_window: 300,
        min_success: 0.95,
        failure_limit: 3,
        count: None,
    },
    // seed004: canary success ≥ 0.95 over [1m], interval 30s, count 3, failureLimit 2.
    ThresholdTemplate {
        name: "seed004 canary-success-rate",
        initial_delay: 0,
        interval: 30,
        rate_window: 60,
        min_success: 0.95,
        failure_limit: 2,
        count: Some(3),
    },
];

/// A threshold template tightened until it can see a 1% → 2% regression at all.
pub const TIGHT_TEMPLATE: ThresholdTemplate = ThresholdTemplate {
    name: "tightened: success ≥ 0.985 over 1m, every 20s",
    initial_delay: 0,
    interval: 20,
    rate_window: 60,
    min_success: 0.985,
    failure_limit: 0,
    count: None,
};

/// How one simulated release ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Ending {
    Failed { at_second: u64 },
    Passed { at_second: u64 },
    Undecided,
}

/// Runs one release under `method`.
pub fn run_release(scenario: &Scenario, method: &Method, seed: u64) -> Ending {
    run_release_tracking_pass(scenario, method, seed).0
}

/// [`run_release`], and the second a sequential judge first passed the canary, if it did.
pub fn run_release_tracking_pass(
    scenario: &Scenario,
    method: &Method,
    seed: u64,
) -> (Ending, Option<u64>) {
    let mut first_pass = None;
    let mut rng = Rng::new(seed);
    let with_latency = method.needs_latency();
    let mut judge = JudgeState::new(method);
    let mut history: Vec<Second> = Vec::new();
    let mut failed_measurements = 0u32;
    let mut measurements = 0u32;
    let mut oracle_log_ratio = 0.0;
    let errors = |s: &Sample| (s.requests, s.errors);
    for second in 1..=scenario.horizon_seconds {
        let interval = scenario.second(&mut rng, with_latency);
        history.push((errors(&interval.canary), errors(&interval.stable)));
        let decision = match (method, &mut judge) {
            (Method::Threshold(t), _) => {
                if second < t.initial_delay || (second - t.initial_delay) % t.interval != 0 {
                    continue;
                }
                let window = &history[history.len().saturating_sub(t.rate_window as usize)..];
                let (requests, errs) = window
                    .iter()
                    .fold((0, 0), |(r, e), &((rr, ee), _)| (r + rr, e + ee));
                let success = if requests == 0 {
                    f64::NAN
                } else {
                    1.0 - errs as f64 / requests as f64
                };
                measurements += 1;
                if success.is_nan() || success < t.min_success {
                    failed_measurements += 1;
                }
                if failed_measurements > t.failure_limit {
                    Decision::Fail
                } else if t.count.is_some_and(|c| measurements >= c) {
                    Decision::Pass
                } else {
                    Decision::Inconclusive
                }
            }
            (Method::Oracle(o), _) => {
                let c = &interval.canary;
                oracle_log_ratio += o.log_ratio(c.requests, c.errors);
                o.decide(oracle_log_ratio)
            }
            (Method::Kayenta(k), _) => {
                if second != k.interval_seconds {
                    continue;
                }
                let per_step = |pick: fn(&Second) -> (u64, u64)| {
                    history
                        .chunks(k.step_seconds.max(1) as usize)
                        .map(|step| {
                            let (r, e) = step
                                .iter()
                                .map(pick)
                                .fold((0, 0), |(r, e), (rr, ee)| (r + rr, e + ee));
                            e as f64 / r as f64 // NaN for an empty step: removed
                        })
                        .collect::<Vec<f64>>()
                };
                match NETFLIX_ACA.classify(&per_step(|h| h.0), &per_step(|h| h.1)) {
                    Classification::High => Decision::Fail,
                    _ => Decision::Pass,
                }
            }
            (_, state) => state.observe(&interval),
        };
        let terminal = matches!(
            method,
            Method::Threshold(_) | Method::Oracle(_) | Method::Kayenta(_)
        );
        match decision {
            Decision::Fail => return (Ending::Failed { at_second: second }, first_pass),
            Decision::Pass if terminal => {
                return (Ending::Passed { at_second: second }, Some(second))
            }
            // A sequential pass is recorded but watching goes on: the rollout may keep
            // looking, and a later failure would still count as a false failure.
            Decision::Pass => {
                first_pass.get_or_insert(second);
            }
            Decision::Inconclusive => {}
        }
    }
    (Ending::Undecided, first_pass)
}

/// One simulated second: (canary requests, errors), (stable requests, errors).
type Second = ((u64, u64), (u64, u64));

enum JudgeState {
    Errors(ErrorRatioJudge),
    Quantile(LatencyQuantileJudge),
    Distribution(LatencyDistributionJudge),
    None,
}

impl JudgeState {
    fn new(method: &Method) -> JudgeState {
        match *method {
            Method::PloverErrors(c, margin) => JudgeState::Errors(ErrorRatioJudge::new(c, margin)),
            Method::PloverLatencyQuantile(q, c, margin) => {
                JudgeState::Quantile(LatencyQuantileJudge::new(q, c, margin))
            }
            Method::PloverLatencyDistribution(c, margin) => {
                JudgeState::Distribution(LatencyDistributionJudge::new(c, margin))
            }
            Method::Threshold(_) | Method::Oracle(_) | Method::Kayenta(_) => JudgeState::None,
        }
    }

    fn observe(&mut self, interval: &Interval) -> Decision {
        match self {
            JudgeState::Errors(j) => j.observe(interval).decision,
            JudgeState::Quantile(j) => j.observe(interval).decision,
            JudgeState::Distribution(j) => j.observe(interval).decision,
            JudgeState::None => Decision::Inconclusive,
        }
    }
}

/// Outcomes of many seeded releases.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub runs: u64,
    pub failed: u64,
    pub passed: u64,
    /// Seconds to the failure, for the runs that failed.
    pub failure_seconds: Vec<u64>,
    /// Seconds to the first pass, for the runs a judge passed (a sequential judge may fail
    /// such a run later: then it counts in `failed` too).
    pub pass_seconds: Vec<u64>,
}

impl Summary {
    pub fn failure_share(&self) -> f64 {
        self.failed as f64 / self.runs.max(1) as f64
    }

    pub fn median_failure_seconds(&self) -> Option<f64> {
        median(&self.failure_seconds)
    }

    /// Share of the runs passed at some look.
    pub fn pass_share(&self) -> f64 {
        self.pass_seconds.len() as f64 / self.runs.max(1) as f64
    }

    pub fn median_pass_seconds(&self) -> Option<f64> {
        median(&self.pass_seconds)
    }
}

fn median(seconds: &[u64]) -> Option<f64> {
    let mut s = seconds.to_vec();
    s.sort_unstable();
    match s.len() {
        0 => None,
        n if n % 2 == 1 => Some(s[n / 2] as f64),
        n => Some((s[n / 2 - 1] + s[n / 2]) as f64 / 2.0),
    }
}

/// Runs `runs` releases with seeds `seed, seed+1, …`.
pub fn simulate(scenario: &Scenario, method: &Method, runs: u64, seed: u64) -> Summary {
    let mut summary = Summary {
        runs,
        ..Summary::default()
    };
    for i in 0..runs {
        let (ending, first_pass) =
            run_release_tracking_pass(scenario, method, seed.wrapping_add(i));
        summary.pass_seconds.extend(first_pass);
        match ending {
            Ending::Failed { at_second } => {
                summary.failed += 1;
                summary.failure_seconds.push(at_second);
            }
            Ending::Passed { .. } => summary.passed += 1,
            Ending::Undecided => {}
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALPHA: f64 = 0.05;
    const ERRORS: OddsTestConfig = OddsTestConfig {
        alpha: ALPHA,
        tolerance: 1.0,
        min_effect: 2.0,
    };

    #[test]
    fn samplers_have_the_right_means() {
        let mut rng = Rng::new(7);
        let n = 200_000;
        let hits: u64 = (0..n).map(|_| rng.binomial(100, 0.01)).sum();
        assert!((hits as f64 / n as f64 - 1.0).abs() < 0.02, "{hits}");
        let big: u64 = (0..n).map(|_| rng.binomial(10, 0.9)).sum();
        assert!((big as f64 / n as f64 - 9.0).abs() < 0.02);
        let normal_mean: f64 = (0..n).map(|_| rng.standard_normal()).sum::<f64>() / n as f64;
        assert!(normal_mean.abs() < 0.01);
    }

    #[test]
    fn healthy_canaries_are_wrongly_failed_at_most_alpha_of_the_time_on_errors() {
        let summary = simulate(
            &Scenario::healthy(),
            &Method::PloverErrors(ERRORS, None),
            1_000,
            1,
        );
        assert!(
            summary.failure_share() <= ALPHA,
            "false failures: {summary:?}"
        );
    }

    #[test]
    fn healthy_canaries_are_wrongly_failed_at_most_alpha_of_the_time_on_latency() {
        // Latency simulations record every request into histograms; 1,000 releases watched for
        // two minutes keep this test quick in debug builds (the bench watches ten).
        let scenario = Scenario {
            horizon_seconds: 120,
            ..Scenario::healthy()
        };
        let summary = simulate(
            &scenario,
            &Method::PloverLatencyDistribution(ERRORS, None),
            1_000,
            2,
        );
        assert!(
            summary.failure_share() <= ALPHA,
            "false failures: {summary:?}"
        );
    }

    #[test]
    fn with_a_margin_healthy_canaries_pass_and_worse_ones_rarely_do() {
        let margin = Method::PloverErrors(ERRORS, Some(0.005));
        let healthy = simulate(&Scenario::healthy(), &margin, 100, 11);
        assert!(healthy.failure_share() <= ALPHA, "{healthy:?}");
        let worse = Scenario {
            canary: Revision {
                error_rate: 0.02,
                ..Revision::HEALTHY
            },
            ..Scenario::healthy()
        };
        let worse = simulate(&worse, &margin, 100, 12);
        assert!(worse.pass_share() <= ALPHA, "{worse:?}");
    }

    #[test]
    fn a_doubled_error_ratio_is_detected() {
        let scenario = Scenario {
            canary: Revision {
                error_rate: 0.02,
                ..Revision::HEALTHY
            },
            ..Scenario::healthy()
        };
        let summary = simulate(&scenario, &Method::PloverErrors(ERRORS, None), 200, 3);
        assert!(summary.failure_share() >= 0.8, "{summary:?}");
    }

    #[test]
    fn a_slower_canary_is_detected() {
        let scenario = Scenario {
            canary: Revision::HEALTHY.slower(1.2),
            horizon_seconds: 300,
            ..Scenario::healthy()
        };
        let summary = simulate(
            &scenario,
            &Method::PloverLatencyQuantile(0.99, ERRORS, None),
            50,
            4,
        );
        assert!(summary.failure_share() >= 0.8, "{summary:?}");
    }

    #[test]
    fn simulations_are_deterministic_for_a_seed() {
        let scenario = Scenario {
            horizon_seconds: 60,
            ..Scenario::healthy()
        };
        let method = Method::PloverErrors(ERRORS, None);
        assert_eq!(
            run_release(&scenario, &method, 9),
            run_release(&scenario, &method, 9)
        );
        assert_eq!(
            simulate(&scenario, &method, 20, 5),
            simulate(&scenario, &method, 20, 5)
        );
    }

    #[test]
    fn threshold_templates_follow_argo_limits() {
        // A canary failing every request fails seed004 at its third measurement
        // (failureLimit 2), at 90 s; seed000 at its first (30 s).
        let broken = Scenario {
            canary: Revision {
                error_rate: 1.0,
                ..Revision::HEALTHY
            },
            ..Scenario::healthy()
        };
        assert_eq!(
            run_release(&broken, &Method::Threshold(SEED_TEMPLATES[2]), 1),
            Ending::Failed { at_second: 90 }
        );
        assert_eq!(
            run_release(&broken, &Method::Threshold(SEED_TEMPLATES[0]), 1),
            Ending::Failed { at_second: 30 }
        );
        // A healthy one passes seed004 after its three measurements.
        assert_eq!(
            run_release(
                &Scenario::healthy(),
                &Method::Threshold(SEED_TEMPLATES[2]),
                1
            ),
            Ending::Passed { at_second: 90 }
        );
    }

    #[test]
    fn the_oracle_sprt_keeps_its_error_rates_and_is_faster_than_plover() {
        let oracle = Method::Oracle(OracleSprt {
            acceptable: 0.01,
            worse: 0.02,
            alpha: ALPHA,
            beta: ALPHA,
        });
        let worse = Scenario {
            canary: Revision {
                error_rate: 0.02,
                ..Revision::HEALTHY
            },
            ..Scenario::healthy()
        };
        let healthy = simulate(&Scenario::healthy(), &oracle, 400, 21);
        // Wald's boundaries bound each error by about α / (1 − β).
        assert!(healthy.failure_share() <= 0.07, "{healthy:?}");
        assert!(healthy.passed >= 360, "{healthy:?}");
        let regressed = simulate(&worse, &oracle, 400, 22);
        assert!(regressed.failure_share() >= 0.9, "{regressed:?}");
        let plover = simulate(&worse, &Method::PloverErrors(ERRORS, None), 400, 22);
        assert!(
            regressed.median_failure_seconds() < plover.median_failure_seconds(),
            "oracle {regressed:?}, plover {plover:?}"
        );
    }

    #[test]
    fn kayenta_judges_once_at_its_horizon() {
        let kayenta = Method::Kayenta(KayentaJudge {
            interval_seconds: 600,
            step_seconds: 60,
        });
        let broken = Scenario {
            canary: Revision {
                error_rate: 0.2,
                ..Revision::HEALTHY
            },
            ..Scenario::healthy()
        };
        assert_eq!(
            run_release(&broken, &kayenta, 1),
            Ending::Failed { at_second: 600 }
        );
        assert_eq!(
            run_release(&Scenario::healthy(), &kayenta, 1),
            Ending::Passed { at_second: 600 }
        );
    }

    #[test]
    fn with_a_latency_margin_slower_canaries_are_rarely_passed() {
        let scenario = Scenario {
            canary: Revision::HEALTHY.slower(1.2),
            horizon_seconds: 120,
            ..Scenario::healthy()
        };
        let method = Method::PloverLatencyQuantile(0.99, ERRORS, Some(5_000));
        let summary = simulate(&scenario, &method, 100, 23);
        assert!(summary.pass_share() <= ALPHA, "{summary:?}");
    }
}
