//! An always-valid non-inferiority test with an absolute margin: "the canary's error rate is
//! not more than `margin` above stable's" (p_c − p_s < δ), which can be shown even when neither
//! revision has a single error. The odds test cannot: conditional on the events, a look without
//! events carries no information, so a clean release stays Inconclusive there for ever.
//!
//! The null is composite (H₀: p_c ≥ p_s + δ, the stable rate unknown), so the e-process is
//! *universal inference* (Wasserman, Ramdas & Balakrishnan 2020, "Universal inference", §7):
//!
//! ```text
//! E_t = Π_looks  L(q̂_c, q̂_s ; look)  /  sup_{(p_c, p_s) ∈ H₀} L(p_c, p_s ; all looks)
//! ```
//!
//! where q̂ are the Bayes estimates `(x + a)/(n + a + b)` from the requests before each request.
//! Their product depends only on the counts (it is the Beta(a, b) mixture of the binomial
//! likelihood), so requests batched in one look cost nothing extra. With a = 0.1, b = 1 the
//! mixture weights low error rates, where releases live: at zero errors it costs
//! ≈ 0.1·ln n + 0.05 nats per side instead of Krichevsky–Trofimov's ½·ln(πn). For the true
//! (p_c, p_s) in H₀ the numerator over its own likelihood is a test martingale, and the
//! denominator is at least that likelihood, so E_t is below a test martingale: by Ville's
//! inequality E_t ever reaches 1/β with probability at most β. A canary truly worse by the
//! margin or more is wrongly passed with probability ≤ β, however often one looks.

/// The running test. Feed it one look at a time with [`DifferenceTest::observe`].
#[derive(Clone, Debug)]
pub struct DifferenceTest {
    margin: f64,
    canary: Counts,
    stable: Counts,
}

/// The numerator's Beta(a, b) prior on each error rate (see the module comment).
const PRIOR: (f64, f64) = (0.1, 1.0);

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    trials: u64,
    events: u64,
}

impl Counts {
    /// log of the Beta(a, b) mixture probability of these counts (the numerator's sequential
    /// estimates' product): ln B(x + a, n − x + b) − ln B(a, b).
    fn log_mixture(&self) -> f64 {
        let (x, n) = (self.events as f64, self.trials as f64);
        let ln_beta = |a: f64, b: f64| ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b);
        ln_beta(x + PRIOR.0, n - x + PRIOR.1) - ln_beta(PRIOR.0, PRIOR.1)
    }

    fn add(&mut self, trials: u64, events: u64) {
        self.trials = self.trials.saturating_add(trials);
        self.events = self.events.saturating_add(events.min(trials));
    }

    /// log-likelihood of these counts at rate `p` (Bernoulli sequence; 0·ln 0 = 0).
    fn log_likelihood(&self, p: f64) -> f64 {
        xlny(self.events as f64, p) + xlny((self.trials - self.events) as f64, 1.0 - p)
    }
}

/// ln Γ(x) for x > 0: Stirling's series, after shifting x above 10 (error below 1e-12).
fn ln_gamma(x: f64) -> f64 {
    let mut shift = 0.0;
    let mut x = x;
    while x < 10.0 {
        shift -= x.ln();
        x += 1.0;
    }
    let inv = 1.0 / x;
    let inv2 = inv * inv;
    shift + (x - 0.5) * x.ln() - x
        + 0.5 * (2.0 * std::f64::consts::PI).ln()
        + inv * (1.0 / 12.0 - inv2 * (1.0 / 360.0 - inv2 / 1260.0))
}

/// x·ln y with 0·ln 0 = 0 (and x·ln 0 = −∞ for x > 0).
fn xlny(x: f64, y: f64) -> f64 {
    if x == 0.0 {
        0.0
    } else {
        x * y.ln()
    }
}

impl DifferenceTest {
    /// `margin`: the largest acceptable excess of the canary's error rate over stable's, as a
    /// fraction (0.005 = half a percentage point); in (0, 1).
    pub fn new(margin: f64) -> DifferenceTest {
        DifferenceTest {
            margin,
            canary: Counts::default(),
            stable: Counts::default(),
        }
    }

    /// Adds one look's requests and errors of each revision.
    pub fn observe(
        &mut self,
        canary_trials: u64,
        canary_events: u64,
        stable_trials: u64,
        stable_events: u64,
    ) {
        self.canary.add(canary_trials, canary_events);
        self.stable.add(stable_trials, stable_events);
    }

    /// log E_t after one more look of `scale` × the counts so far (the same rates).
    pub fn projected(&self, scale: f64) -> f64 {
        let times = |n: u64| (n as f64 * scale).round() as u64;
        let mut test = self.clone();
        test.observe(
            times(self.canary.trials),
            times(self.canary.events),
            times(self.stable.trials),
            times(self.stable.events),
        );
        test.log_evidence()
    }

    /// log E_t: evidence that the canary is not worse than stable by the margin or more.
    pub fn log_evidence(&self) -> f64 {
        self.canary.log_mixture() + self.stable.log_mixture() - self.log_null_maximum()
    }

    /// The largest log-likelihood of all looks so far under H₀: p_c ≥ p_s + margin.
    fn log_null_maximum(&self) -> f64 {
        let (c, s, d) = (self.canary, self.stable, self.margin);
        let rate = |k: Counts| {
            if k.trials == 0 {
                0.0
            } else {
                k.events as f64 / k.trials as f64
            }
        };
        if rate(c) >= rate(s) + d {
            // The unconstrained maximum lies in H₀.
            return c.log_likelihood(rate(c)) + s.log_likelihood(rate(s));
        }
        // Otherwise on the boundary p_c = p_s + d, p_s ∈ [0, 1 − d], where the log-likelihood
        // is concave in p_s: bisect on its derivative.
        let on_boundary = |p: f64| c.log_likelihood(p + d) + s.log_likelihood(p);
        let slope = |p: f64| {
            let (xc, nc, xs, ns) = (
                c.events as f64,
                c.trials as f64,
                s.events as f64,
                s.trials as f64,
            );
            xc / (p + d) - (nc - xc) / (1.0 - p - d) + xs / p - (ns - xs) / (1.0 - p)
        };
        let (mut low, mut high) = (0.0f64, 1.0 - d);
        if slope(f64::MIN_POSITIVE) <= 0.0 {
            return on_boundary(0.0);
        }
        for _ in 0..200 {
            let mid = 0.5 * (low + high);
            if slope(mid) > 0.0 {
                low = mid;
            } else {
                high = mid;
            }
        }
        on_boundary(0.5 * (low + high))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDARY: f64 = 2.995_732_273_553_991; // ln(1/0.05)

    /// Seeded Bernoulli counts: one look of `n` requests at rate `p`.
    fn binomial(rng: &mut u64, n: u64, p: f64) -> u64 {
        (0..n)
            .filter(|_| {
                *rng ^= *rng << 13;
                *rng ^= *rng >> 7;
                *rng ^= *rng << 17;
                ((*rng >> 11) as f64 / (1u64 << 53) as f64) < p
            })
            .count() as u64
    }

    #[test]
    fn a_clean_canary_passes_on_a_few_thousand_requests_without_any_error() {
        // The demo's healthy release: 0/2,730 against 0/3,471, at most half a point worse.
        let mut test = DifferenceTest::new(0.005);
        for _ in 0..30 {
            test.observe(91, 0, 116, 0);
        }
        assert!(test.log_evidence() > BOUNDARY, "{}", test.log_evidence());
        // Too few requests: not yet.
        let mut early = DifferenceTest::new(0.005);
        for _ in 0..3 {
            early.observe(91, 0, 116, 0);
        }
        assert!(early.log_evidence() < BOUNDARY, "{}", early.log_evidence());
    }

    #[test]
    fn a_canary_worse_by_the_margin_is_rarely_passed() {
        // At the null's edge (canary 1.5%, stable 1%, margin 0.5 points), a pass at any of 300
        // looks happens in at most β of the runs.
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let runs = 200;
        let mut passed = 0;
        for _ in 0..runs {
            let mut test = DifferenceTest::new(0.005);
            for _ in 0..300 {
                let c = binomial(&mut rng, 20, 0.015);
                let s = binomial(&mut rng, 80, 0.01);
                test.observe(20, c, 80, s);
                if test.log_evidence() > BOUNDARY {
                    passed += 1;
                    break;
                }
            }
        }
        assert!(
            passed <= runs * 5 / 100,
            "{passed} of {runs} wrongly passed"
        );
    }

    #[test]
    fn an_equal_canary_passes_and_a_much_worse_one_never_does() {
        let mut rng = 7u64;
        let mut equal = DifferenceTest::new(0.005);
        let mut worse = DifferenceTest::new(0.005);
        for _ in 0..600 {
            equal.observe(
                50,
                binomial(&mut rng, 50, 0.001),
                450,
                binomial(&mut rng, 450, 0.001),
            );
            worse.observe(
                50,
                binomial(&mut rng, 50, 0.05),
                450,
                binomial(&mut rng, 450, 0.001),
            );
        }
        assert!(equal.log_evidence() > BOUNDARY, "{}", equal.log_evidence());
        assert!(worse.log_evidence() < 0.0, "{}", worse.log_evidence());
    }

    #[test]
    fn ln_gamma_matches_known_values() {
        for (x, expected) in [
            (0.5, std::f64::consts::PI.sqrt().ln()),
            (1.0, 0.0),
            (5.0, 24f64.ln()),
            (10.5, 13.940_625_219_403_763),
            (1e6, 12_815_504.569_147_6),
        ] {
            let got = ln_gamma(x);
            assert!(
                (got - expected).abs() < 1e-9 * expected.abs().max(1.0),
                "{x}: {got}"
            );
        }
    }

    #[test]
    fn counts_that_lie_are_clamped_not_a_panic() {
        let mut test = DifferenceTest::new(0.005);
        test.observe(10, 20, 0, 5);
        test.observe(u64::MAX, u64::MAX, u64::MAX, 0);
        assert!(!test.log_evidence().is_nan());
    }
}
