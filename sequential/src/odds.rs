//! An exact, always-valid sequential test on the odds ratio of an event (an error, a request
//! slower than a threshold) between canary and stable.
//!
//! Each look brings, for the interval since the previous look, the canary's and stable's
//! request counts `n_c`, `n_s` and event counts `x_c`, `x_s`. Conditional on the interval's
//! total `x = x_c + x_s`, `x_c` follows Fisher's noncentral hypergeometric distribution with
//! parameter ψ = odds(canary) / odds(stable), whatever the unknown stable rate is: conditioning
//! removes the nuisance parameter exactly (Fisher's exact test, made sequential).
//!
//! For each alternative ψ₁ on a grid, the product over looks of the conditional likelihood
//! ratios ψ₁ against the null ψ₀ is a non-negative martingale with mean 1 when ψ = ψ₀, and a
//! supermartingale when ψ is on the null side (monotone likelihood ratio). So is any fixed
//! mixture of them. By Ville's inequality the mixture exceeds 1/α at *any* look with
//! probability at most α: the controller may look after every flush, stop whenever it likes,
//! and the false-decision rate stays below α (Robbins 1970; Howard et al. 2021,
//! "Time-uniform, nonparametric, nonasymptotic confidence sequences"; Johari et al. 2017,
//! "Always valid inference").

/// One side of the test: a null ψ₀ and a mixture of alternatives, with running log-LRs.
#[derive(Clone, Debug)]
struct Mixture {
    null_log_psi: f64,
    alternatives_log_psi: Vec<f64>,
    log_lr: Vec<f64>,
}

/// Multiplicative distances from the null at which alternatives sit: geometric from 1.2 to
/// `4 × span`, where `span` is the distance between the two nulls (min_effect / tolerance).
/// A mixture pays ln(points) in evidence for not knowing the true effect, so the grid is
/// kept short and centred on the effects worth detecting; larger effects still accumulate
/// evidence fast at the grid's far end.
fn grid(span: f64) -> impl Iterator<Item = f64> {
    const POINTS: u32 = 8;
    let (low, high) = (1.2f64.ln(), (4.0 * span).max(2.0).ln());
    (0..POINTS).map(move |i| low + (high - low) * f64::from(i) / f64::from(POINTS - 1))
}

impl Mixture {
    /// Alternatives above ψ₀ (`upward`) or below it.
    fn new(null_psi: f64, upward: bool, span: f64) -> Mixture {
        let null_log_psi = null_psi.ln();
        let alternatives_log_psi: Vec<f64> = grid(span)
            .map(|g| {
                if upward {
                    null_log_psi + g
                } else {
                    null_log_psi - g
                }
            })
            .collect();
        let log_lr = vec![0.0; alternatives_log_psi.len()];
        Mixture {
            null_log_psi,
            alternatives_log_psi,
            log_lr,
        }
    }

    fn update(&mut self, table: &ConditionalTable, canary_events: u64) {
        let log_z_null = table.log_normaliser(self.null_log_psi);
        for (lr, &alt) in self.log_lr.iter_mut().zip(&self.alternatives_log_psi) {
            *lr += canary_events as f64 * (alt - self.null_log_psi)
                - (table.log_normaliser(alt) - log_z_null);
        }
    }

    /// log of the mixture likelihood ratio (uniform weights).
    fn log_evidence(&self) -> f64 {
        log_sum_exp(self.log_lr.iter().copied()) - (self.log_lr.len() as f64).ln()
    }
}

/// The support of x_c given the margins, with unnormalised log weights
/// log[C(n_c,k)·C(n_s,x−k)] relative to the lowest k.
struct ConditionalTable {
    k_low: u64,
    log_base: Vec<f64>,
}

impl ConditionalTable {
    /// `None` when the look carries no information (no events, or x_c is forced).
    fn new(canary_trials: u64, stable_trials: u64, events: u64) -> Option<ConditionalTable> {
        if events == 0 || canary_trials == 0 || stable_trials == 0 {
            return None;
        }
        let k_low = events.saturating_sub(stable_trials);
        let k_high = events.min(canary_trials);
        if k_low >= k_high {
            return None;
        }
        let mut log_base = Vec::with_capacity((k_high - k_low + 1) as usize);
        let mut acc = 0.0;
        log_base.push(acc);
        for k in k_low + 1..=k_high {
            // C(n_c,k)/C(n_c,k−1) · C(n_s,x−k)/C(n_s,x−k+1)
            acc += ((canary_trials - k + 1) as f64 / k as f64).ln()
                + ((events - k + 1) as f64 / (stable_trials + k - events) as f64).ln();
            log_base.push(acc);
        }
        Some(ConditionalTable { k_low, log_base })
    }

    /// log Σ_k base_k ψ^k (up to a constant shared by every ψ).
    fn log_normaliser(&self, log_psi: f64) -> f64 {
        log_sum_exp(
            self.log_base
                .iter()
                .enumerate()
                .map(|(i, b)| b + (self.k_low + i as u64) as f64 * log_psi),
        )
    }
}

fn log_sum_exp(values: impl Iterator<Item = f64> + Clone) -> f64 {
    let max = values.clone().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + values.map(|v| (v - max).exp()).sum::<f64>().ln()
}

/// What the test concludes so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The canary's odds are shown to exceed `tolerance` × stable's.
    Fail,
    /// The canary's odds are shown to be below `min_effect` × stable's.
    Pass,
    Inconclusive,
}

/// Configuration of one odds-ratio test.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OddsTestConfig {
    /// Bound on the probability of wrongly failing a canary that is no worse than
    /// `tolerance` (and of wrongly passing one at least `min_effect` worse).
    pub alpha: f64,
    /// Largest odds ratio canary/stable still acceptable (1.0: no worse than stable).
    pub tolerance: f64,
    /// Smallest odds ratio worth detecting; a pass shows the canary is below it.
    pub min_effect: f64,
}

impl OddsTestConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.alpha > 0.0 && self.alpha < 0.5) {
            return Err(format!("alpha must be in (0, 0.5), got {}", self.alpha));
        }
        if !(self.tolerance >= 1.0 && self.tolerance.is_finite()) {
            return Err(format!(
                "tolerance must be a ratio ≥ 1, got {}",
                self.tolerance
            ));
        }
        if !(self.min_effect > self.tolerance && self.min_effect.is_finite()) {
            return Err(format!(
                "min_effect ({}) must exceed tolerance ({})",
                self.min_effect, self.tolerance
            ));
        }
        Ok(())
    }
}

/// The running test. Feed it one look at a time with [`OddsTest::observe`].
#[derive(Clone, Debug)]
pub struct OddsTest {
    config: OddsTestConfig,
    fail: Mixture,
    pass: Mixture,
    totals: Totals,
}

/// Cumulative counts behind a decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub canary_trials: u64,
    pub canary_events: u64,
    pub stable_trials: u64,
    pub stable_events: u64,
}

impl Totals {
    /// Point estimate of the odds ratio (with a ½ continuity correction so that zero counts
    /// still give a finite figure).
    pub fn odds_ratio(&self) -> f64 {
        let odds = |events: u64, trials: u64| {
            (events as f64 + 0.5) / (trials.saturating_sub(events) as f64 + 0.5)
        };
        odds(self.canary_events, self.canary_trials) / odds(self.stable_events, self.stable_trials)
    }
}

/// A snapshot of the evidence, for status, logs and `plover analyze`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evidence {
    pub decision: Decision,
    /// log of the mixture likelihood ratio against "canary acceptable".
    pub fail_log_evidence: f64,
    /// log of the mixture likelihood ratio against "canary worse by min_effect".
    pub pass_log_evidence: f64,
    /// Both statistics decide when they reach ln(1/α).
    pub log_boundary: f64,
    pub totals: Totals,
}

impl OddsTest {
    pub fn new(config: OddsTestConfig) -> OddsTest {
        OddsTest {
            config,
            fail: Mixture::new(config.tolerance, true, config.min_effect / config.tolerance),
            pass: Mixture::new(
                config.min_effect,
                false,
                config.min_effect / config.tolerance,
            ),
            totals: Totals::default(),
        }
    }

    /// Adds one interval's counts. Events may not exceed trials (clamped if they do).
    pub fn observe(
        &mut self,
        canary_trials: u64,
        canary_events: u64,
        stable_trials: u64,
        stable_events: u64,
    ) {
        let canary_events = canary_events.min(canary_trials);
        let stable_events = stable_events.min(stable_trials);
        self.totals.canary_trials += canary_trials;
        self.totals.canary_events += canary_events;
        self.totals.stable_trials += stable_trials;
        self.totals.stable_events += stable_events;
        if let Some(table) =
            ConditionalTable::new(canary_trials, stable_trials, canary_events + stable_events)
        {
            self.fail.update(&table, canary_events);
            self.pass.update(&table, canary_events);
        }
    }

    pub fn evidence(&self) -> Evidence {
        let log_boundary = (1.0 / self.config.alpha).ln();
        let fail_log_evidence = self.fail.log_evidence();
        let pass_log_evidence = self.pass.log_evidence();
        // Failing wins a tie: rolling back a healthy canary costs less than keeping a bad one.
        let decision = if fail_log_evidence >= log_boundary {
            Decision::Fail
        } else if pass_log_evidence >= log_boundary {
            Decision::Pass
        } else {
            Decision::Inconclusive
        };
        Evidence {
            decision,
            fail_log_evidence,
            pass_log_evidence,
            log_boundary,
            totals: self.totals,
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

    #[test]
    fn conditional_likelihood_matches_fishers_exact_probabilities() {
        // n_c = 3, n_s = 4, x = 3: under ψ = 1 the support 0..=3 has weights C(3,k)·C(4,3−k)
        // = 4, 18, 12, 1 (hypergeometric).
        let table = ConditionalTable::new(3, 4, 3).unwrap();
        let weights: Vec<f64> = table
            .log_base
            .iter()
            .map(|b| (b + 4f64.ln()).exp())
            .collect();
        for (w, expected) in weights.iter().zip([4.0, 18.0, 12.0, 1.0]) {
            assert!((w - expected).abs() < 1e-9, "{weights:?}");
        }
        assert!((table.log_normaliser(0.0) + 4f64.ln() - 35f64.ln()).abs() < 1e-9);
    }

    #[test]
    fn more_events_than_stable_trials_is_fine() {
        // x = 12 > n_s = 5: k runs from 7 to 10 (C(10,k)·C(5,12−k)), no underflow.
        let table = ConditionalTable::new(10, 5, 12).unwrap();
        assert_eq!((table.k_low, table.log_base.len()), (7, 4));
        let weights: Vec<f64> = table
            .log_base
            .iter()
            .map(|b| (b + 120f64.ln()).exp())
            .collect();
        for (w, expected) in weights.iter().zip([120.0, 225.0, 100.0, 10.0]) {
            assert!((w - expected).abs() < 1e-6, "{weights:?}");
        }
        let mut test = OddsTest::new(CONFIG);
        test.observe(100, 100, 20, 10);
        assert!(test.evidence().fail_log_evidence > 0.0);
    }

    #[test]
    fn looks_without_information_change_nothing() {
        let mut test = OddsTest::new(CONFIG);
        test.observe(10, 0, 90, 0);
        test.observe(0, 0, 90, 3);
        test.observe(10, 10, 0, 0);
        let e = test.evidence();
        assert_eq!(e.fail_log_evidence, 0.0);
        assert_eq!(e.decision, Decision::Inconclusive);
    }

    #[test]
    fn a_clearly_worse_canary_fails_and_a_clearly_equal_one_passes() {
        let mut bad = OddsTest::new(CONFIG);
        let mut good = OddsTest::new(CONFIG);
        for _ in 0..60 {
            bad.observe(100, 10, 900, 9);
            good.observe(100, 1, 900, 9);
        }
        assert_eq!(bad.evidence().decision, Decision::Fail);
        assert_eq!(good.evidence().decision, Decision::Pass);
        assert!((good.evidence().totals.odds_ratio() - 1.0).abs() < 0.1);
    }

    #[test]
    fn config_is_validated() {
        assert!(CONFIG.validate().is_ok());
        assert!(OddsTestConfig {
            alpha: 0.0,
            ..CONFIG
        }
        .validate()
        .is_err());
        assert!(OddsTestConfig {
            tolerance: 0.5,
            ..CONFIG
        }
        .validate()
        .is_err());
        assert!(OddsTestConfig {
            min_effect: 1.0,
            ..CONFIG
        }
        .validate()
        .is_err());
    }
}
