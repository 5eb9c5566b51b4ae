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

    /// log Σ_k base_k ψ^k (up to a constant shared by every ψ). The terms are log-concave in k
    /// (log-binomials plus a linear term), so the sum is taken outwards from the mode until
    /// terms fall 60 nats below it (each then adds less than e⁻⁶⁰ of the total): a look with
    /// thousands of events costs about as much as one with a hundred.
    fn log_normaliser(&self, log_psi: f64) -> f64 {
        let term = |i: usize| self.log_base[i] + (self.k_low + i as u64) as f64 * log_psi;
        let (mut mode, mut high) = (0usize, self.log_base.len().saturating_sub(1));
        while mode < high {
            let mid = (mode + high) / 2;
            if term(mid + 1) > term(mid) {
                mode = mid + 1;
            } else {
                high = mid;
            }
        }
        let max = term(mode);
        let near = |i: &usize| term(*i) - max > -60.0;
        let below = (0..mode).rev().take_while(near);
        let above = (mode + 1..self.log_base.len()).take_while(near);
        let sum: f64 = 1.0
            + below
                .chain(above)
                .map(|i| (term(i) - max).exp())
                .sum::<f64>();
        max + sum.ln()
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Decision {
    /// The canary's odds are shown to exceed `tolerance` × stable's.
    Fail,
    /// The canary's odds are shown to be below `min_effect` × stable's.
    Pass,
    #[default]
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
    /// Adds one look, `[canary trials, canary events, stable trials, stable events]` (events
    /// clamped to trials), and updates `mixtures` with its conditional likelihood, unless the
    /// look carries no information.
    fn observe(&mut self, counts: [u64; 4], mixtures: &mut [&mut Mixture]) {
        let [canary_trials, canary_events, stable_trials, stable_events] = counts;
        let canary_events = canary_events.min(canary_trials);
        let stable_events = stable_events.min(stable_trials);
        self.canary_trials = self.canary_trials.saturating_add(canary_trials);
        self.canary_events = self.canary_events.saturating_add(canary_events);
        self.stable_trials = self.stable_trials.saturating_add(stable_trials);
        self.stable_events = self.stable_events.saturating_add(stable_events);
        let events = canary_events.saturating_add(stable_events);
        if let Some(table) = ConditionalTable::new(canary_trials, stable_trials, events) {
            for mixture in mixtures {
                mixture.update(&table, canary_events);
            }
        }
    }

    /// These counts multiplied by `scale`, rounded: (canary trials, events, stable trials,
    /// events).
    pub fn scaled(&self, scale: f64) -> (u64, u64, u64, u64) {
        let times = |n: u64| (n as f64 * scale).round() as u64;
        (
            times(self.canary_trials),
            times(self.canary_events),
            times(self.stable_trials),
            times(self.stable_events),
        )
    }

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
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Evidence {
    pub decision: Decision,
    /// log of the mixture likelihood ratio against "canary acceptable".
    pub fail_log_evidence: f64,
    /// log of the mixture likelihood ratio against "canary worse by min_effect".
    pub pass_log_evidence: f64,
    /// Both statistics decide when they reach ln(1/α).
    pub log_boundary: f64,
    pub totals: Totals,
    /// While undecided: about how many more canary requests, at the rates seen so far, either
    /// side needs to decide ([`crate::compare::Judge::needed_canary_requests`]); `None` when
    /// not worked out, decided, or out of sight.
    pub needed_canary_requests: Option<u64>,
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
        let counts = [canary_trials, canary_events, stable_trials, stable_events];
        self.totals
            .observe(counts, &mut [&mut self.fail, &mut self.pass]);
    }

    /// The decision this test would reach after one more look of `scale` × the counts so far
    /// (the same rates): what a projection of "how many more requests" asks.
    pub fn projected(&self, scale: f64) -> Evidence {
        let mut test = self.clone();
        let (ct, ce, st, se) = self.totals.scaled(scale);
        test.observe(ct, ce, st, se);
        test.evidence()
    }

    /// The counts observed so far.
    pub fn totals(&self) -> Totals {
        self.totals
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
            needed_canary_requests: None,
        }
    }
}

/// One side alone: evidence against "ψ ≥ `null_psi`" (alternatives below it). For a pass side
/// whose events differ from the fail side's: the latency judge's margin compares the canary
/// slower than a threshold + margin with stable slower than the threshold.
#[derive(Clone, Debug)]
pub struct LowerOddsTest {
    mixture: Mixture,
    totals: Totals,
}

impl LowerOddsTest {
    /// `span`: as in [`OddsTest`], min_effect / tolerance (where the alternatives sit).
    pub fn new(null_psi: f64, span: f64) -> LowerOddsTest {
        LowerOddsTest {
            mixture: Mixture::new(null_psi, false, span),
            totals: Totals::default(),
        }
    }

    /// Adds one interval's counts (events clamped to trials).
    pub fn observe(
        &mut self,
        canary_trials: u64,
        canary_events: u64,
        stable_trials: u64,
        stable_events: u64,
    ) {
        let counts = [canary_trials, canary_events, stable_trials, stable_events];
        self.totals.observe(counts, &mut [&mut self.mixture]);
    }

    /// log of the mixture likelihood ratio against the null.
    pub fn log_evidence(&self) -> f64 {
        self.mixture.log_evidence()
    }

    /// The log-evidence after one more look of `scale` × the counts so far.
    pub fn projected(&self, scale: f64) -> f64 {
        let mut test = self.clone();
        let (ct, ce, st, se) = self.totals.scaled(scale);
        test.observe(ct, ce, st, se);
        test.log_evidence()
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

    #[test]
    fn the_truncated_normaliser_matches_the_whole_sum() {
        // A large look (thousands of events): summing only near the mode changes nothing.
        let table = ConditionalTable::new(6_000, 54_000, 30_000).unwrap();
        for log_psi in [-1.0, -0.2, 0.0, 0.3, 2.0] {
            let whole = log_sum_exp(
                table
                    .log_base
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b + (table.k_low + i as u64) as f64 * log_psi),
            );
            let near = table.log_normaliser(log_psi);
            assert!(
                (whole - near).abs() < 1e-9 * whole.abs().max(1.0),
                "{log_psi}: {whole} vs {near}"
            );
        }
    }
}
