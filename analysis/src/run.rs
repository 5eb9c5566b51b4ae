//! The analysis run as a pure state machine (Argo's `analysis/analysis.go`).
//!
//! The caller owns the clock and the I/O. Each round it asks [`Run::due`] which metrics to
//! measure at `now`, performs those measurements, hands each to [`Run::record`], calls
//! [`Run::assess`] for the metrics' and the run's phases, and sleeps until [`Run::next_wake`]
//! (or until it decides to [`Run::terminate`]). Nothing here reads a clock or does I/O.
//!
//! Scheduling: a metric is measured first at `startedAt + initialDelay`, then each `interval`
//! after the previous measurement finished, and 10 s after an Error whatever the interval.
//! `count` counts non-Error measurements; unset (or 0) with no interval means one measurement,
//! unset with an interval means "until the run is stopped".
//!
//! Phases: a metric is Failed when `failed > failureLimit`, Inconclusive when
//! `inconclusive > inconclusiveLimit`, Error when `consecutiveError > consecutiveErrorLimit`
//! (later checks win), Successful at `consecutiveSuccessLimit` or when the count is reached.
//! Metric phases are final once reached. The run is the worst phase of its non-dry-run metrics
//! once they are all complete; any Failed/Error/Inconclusive metric stops the run early.

use std::time::{Duration, SystemTime};

use super::{phase::Phase, provider::plover::vs_stable::EvidenceRecord};

/// Argo's `DefaultErrorRetryInterval`: an Error is retried after 10 s whatever the interval.
pub const DEFAULT_ERROR_RETRY_INTERVAL: Duration = Duration::from_secs(10);
/// Argo's `DefaultConsecutiveErrorLimit`.
pub const DEFAULT_CONSECUTIVE_ERROR_LIMIT: i64 = 4;
/// Argo's `DefaultMeasurementHistoryLimit`: measurements kept per metric.
pub const DEFAULT_MEASUREMENT_RETENTION: usize = 10;

/// How a metric that was stopped before it could finish is judged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Termination {
    /// Argo: a stopped metric that breached no limit is Successful, even with no successful
    /// measurement at all (argo-rollouts#4479).
    Argo,
    /// Plover's default: a stopped metric is Successful only if at least one of its measurements
    /// was; otherwise it is Inconclusive ("no evidence"), never a silent pass.
    #[default]
    RequireSuccess,
}

/// Run-wide settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunOptions {
    pub error_retry_interval: Duration,
    pub termination: Termination,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            error_retry_interval: DEFAULT_ERROR_RETRY_INTERVAL,
            termination: Termination::default(),
        }
    }
}

/// What the state machine needs to know about one metric: schedule, limits and dry-run.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricPlan {
    pub name: String,
    pub interval: Option<Duration>,
    pub initial_delay: Option<Duration>,
    /// `count` as written; `None` and `Some(0)` both mean "unset".
    pub count: Option<u32>,
    /// Default 0; negative disables the check (only with `consecutive_success_limit > 0`).
    pub failure_limit: i64,
    /// Default 0.
    pub inconclusive_limit: i64,
    /// Default 4.
    pub consecutive_error_limit: i64,
    /// Default 0 (disabled).
    pub consecutive_success_limit: i64,
    pub dry_run: bool,
    /// Measurements kept in [`MetricResult::measurements`]; counters are never trimmed.
    pub retention: usize,
}

impl MetricPlan {
    /// A plan with Argo's defaults and no schedule: one measurement.
    pub fn new(name: impl Into<String>) -> Self {
        MetricPlan {
            name: name.into(),
            interval: None,
            initial_delay: None,
            count: None,
            failure_limit: 0,
            inconclusive_limit: 0,
            consecutive_error_limit: DEFAULT_CONSECUTIVE_ERROR_LIMIT,
            consecutive_success_limit: 0,
            dry_run: false,
            retention: DEFAULT_MEASUREMENT_RETENTION,
        }
    }

    /// Argo's `EffectiveCount`: `None` means unbounded.
    pub fn effective_count(&self) -> Option<u32> {
        match self.count {
            None | Some(0) if self.interval.is_none() => Some(1),
            None | Some(0) => None,
            Some(n) => Some(n),
        }
    }
}

/// One completed measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    pub phase: Phase,
    /// The provider's value as text (`0.98`, `[0.98]`, `NaN`); empty on an Error.
    pub value: String,
    /// Why, for an Error (or a provider's explanation, e.g. too few requests).
    pub message: Option<String>,
    /// A canary-versus-stable judge's statistics (`value` is their JSON).
    pub evidence: Option<EvidenceRecord>,
    pub started_at: SystemTime,
    pub finished_at: SystemTime,
}

/// A metric's state: Argo's `MetricResult`.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricResult {
    pub name: String,
    pub phase: Phase,
    /// The last measurement's message, copied when the phase changes (as Argo does).
    pub message: Option<String>,
    /// Why the metric completed as it did (`failed (1) > failureLimit (0)`), if a limit or the
    /// termination rule decided it.
    pub reason: Option<String>,
    /// The newest measurements (see [`MetricPlan::retention`]).
    pub measurements: Vec<Measurement>,
    /// Non-Error measurements.
    pub count: u32,
    pub successful: u32,
    pub failed: u32,
    pub inconclusive: u32,
    pub error: u32,
    pub consecutive_error: u32,
    pub consecutive_success: u32,
    pub dry_run: bool,
}

impl MetricResult {
    /// A metric that has not been measured yet.
    pub fn new(plan: &MetricPlan) -> Self {
        MetricResult {
            name: plan.name.clone(),
            phase: Phase::Pending,
            message: None,
            reason: None,
            measurements: Vec::new(),
            count: 0,
            successful: 0,
            failed: 0,
            inconclusive: 0,
            error: 0,
            consecutive_error: 0,
            consecutive_success: 0,
            dry_run: plan.dry_run,
        }
    }

    pub fn last_measurement(&self) -> Option<&Measurement> {
        self.measurements.last()
    }
}

/// Counts of metrics by phase (Argo's `RunSummary`), for the run and for dry-run metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub count: u32,
    pub successful: u32,
    pub failed: u32,
    pub inconclusive: u32,
    pub error: u32,
}

/// An analysis run in progress.
#[derive(Clone, Debug)]
pub struct Run {
    plans: Vec<MetricPlan>,
    options: RunOptions,
    started_at: SystemTime,
    terminate: bool,
    results: Vec<MetricResult>,
    phase: Phase,
    message: String,
    completed_at: Option<SystemTime>,
    summary: RunSummary,
    dry_run_summary: RunSummary,
}

/// Argo's `assessMetricFailureInconclusiveOrError`: later checks override earlier ones.
fn limit_breach(plan: &MetricPlan, r: &MetricResult) -> Option<(Phase, String)> {
    let mut breach = None;
    if plan.failure_limit >= 0 && i64::from(r.failed) > plan.failure_limit {
        breach = Some((
            Phase::Failed,
            format!(
                "failed ({}) > failureLimit ({})",
                r.failed, plan.failure_limit
            ),
        ));
    }
    if i64::from(r.inconclusive) > plan.inconclusive_limit {
        breach = Some((
            Phase::Inconclusive,
            format!(
                "inconclusive ({}) > inconclusiveLimit ({})",
                r.inconclusive, plan.inconclusive_limit
            ),
        ));
    }
    if i64::from(r.consecutive_error) > plan.consecutive_error_limit {
        breach = Some((
            Phase::Error,
            format!(
                "consecutiveErrors ({}) > consecutiveErrorLimit ({})",
                r.consecutive_error, plan.consecutive_error_limit
            ),
        ));
    }
    breach
}

/// Argo's `assessMetricStatus`: one metric's phase from its counters, with the reason when a
/// limit or the termination rule decided it. A completed metric keeps its phase.
pub fn assess_metric_status(
    plan: &MetricPlan,
    r: &MetricResult,
    terminating: bool,
    termination: Termination,
) -> (Phase, Option<String>) {
    if r.phase.is_completed() {
        return (r.phase, r.reason.clone());
    }
    let stopped = |what: &str| -> (Phase, Option<String>) {
        match termination {
            Termination::Argo => (Phase::Successful, None),
            Termination::RequireSuccess if r.successful > 0 => (Phase::Successful, None),
            Termination::RequireSuccess => (
                Phase::Inconclusive,
                Some(format!("run terminated {what} any successful measurement")),
            ),
        }
    };
    if r.measurements.is_empty() {
        return if terminating {
            stopped("before")
        } else {
            (Phase::Pending, None)
        };
    }
    if let Some((phase, message)) = limit_breach(plan, r) {
        return (phase, Some(message));
    }
    if plan.consecutive_success_limit > 0
        && i64::from(r.consecutive_success) >= plan.consecutive_success_limit
    {
        return (Phase::Successful, None);
    }
    if let Some(n) = plan.effective_count() {
        if r.count >= n {
            let failure_applies = plan.failure_limit >= 0;
            let success_applies = plan.consecutive_success_limit > 0;
            return match (failure_applies, success_applies) {
                (true, true) => (Phase::Inconclusive, None),
                (false, true) => (Phase::Failed, None),
                _ => (Phase::Successful, None),
            };
        }
    }
    if terminating {
        return stopped("without");
    }
    (Phase::Running, None)
}

impl Run {
    /// Starts a run at `started_at` (Argo's `status.startedAt`).
    pub fn new(plans: Vec<MetricPlan>, options: RunOptions, started_at: SystemTime) -> Self {
        let results = plans.iter().map(MetricResult::new).collect();
        Run {
            plans,
            options,
            started_at,
            terminate: false,
            results,
            phase: Phase::Running,
            message: String::new(),
            completed_at: None,
            summary: RunSummary::default(),
            dry_run_summary: RunSummary::default(),
        }
    }

    /// Continues a run from what was kept of it (the controller restarted and the run lived in
    /// its memory): each metric found in `earlier` by name takes back its counters, phase and
    /// latest measurement, so limits, counts and intervals go on where they stopped instead of
    /// starting over (Argo keeps them in the AnalysisRun's status). Metrics not in `earlier`
    /// start fresh.
    pub fn resume(
        plans: Vec<MetricPlan>,
        options: RunOptions,
        started_at: SystemTime,
        earlier: &[MetricResult],
    ) -> Self {
        let mut run = Run::new(plans, options, started_at);
        for (plan, result) in run.plans.iter().zip(run.results.iter_mut()) {
            if let Some(kept) = earlier.iter().find(|e| e.name == plan.name) {
                let retention = plan.retention.max(1);
                let mut kept = kept.clone();
                let excess = kept.measurements.len().saturating_sub(retention);
                kept.measurements.drain(..excess);
                *result = MetricResult {
                    name: plan.name.clone(),
                    dry_run: plan.dry_run,
                    ..kept
                };
            }
        }
        run
    }

    pub fn plans(&self) -> &[MetricPlan] {
        &self.plans
    }

    pub fn results(&self) -> &[MetricResult] {
        &self.results
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Argo's run message, e.g. `Metric "success-rate" assessed Failed due to failed (1) > failureLimit (0)`.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    pub fn completed_at(&self) -> Option<SystemTime> {
        self.completed_at
    }

    pub fn summary(&self) -> RunSummary {
        self.summary
    }

    pub fn dry_run_summary(&self) -> RunSummary {
        self.dry_run_summary
    }

    /// Stops the run (Argo's `spec.terminate`): no new measurements; the next [`Run::assess`]
    /// completes it.
    pub fn terminate(&mut self) {
        self.terminate = true;
    }

    /// Argo's `IsTerminating`: asked to stop, or a non-dry-run metric already failed.
    pub fn is_terminating(&self) -> bool {
        self.terminate
            || self.results.iter().any(|r| {
                !r.dry_run && matches!(r.phase, Phase::Failed | Phase::Error | Phase::Inconclusive)
            })
    }

    /// The interval to wait after the last measurement (Argo: 10 s after an Error, else the
    /// metric's interval; `None` if neither applies).
    fn wait_after(&self, i: usize, last: &Measurement) -> Option<Duration> {
        if last.phase == Phase::Error {
            Some(self.options.error_retry_interval)
        } else {
            self.plans[i].interval
        }
    }

    /// Argo's `generateMetricTasks`: the indexes of the metrics to measure at `now`.
    pub fn due(&self, now: SystemTime) -> Vec<usize> {
        if self.phase.is_completed() || self.is_terminating() {
            return Vec::new();
        }
        let mut due = Vec::new();
        for (i, (plan, result)) in self.plans.iter().zip(&self.results).enumerate() {
            if result.phase.is_completed() {
                continue;
            }
            let Some(last) = result.last_measurement() else {
                let start = self.started_at + plan.initial_delay.unwrap_or_default();
                if now >= start {
                    due.push(i);
                }
                continue;
            };
            if plan.effective_count().is_some_and(|n| result.count >= n) {
                continue;
            }
            // With no interval and no error there is nothing to repeat; Argo falls back to the
            // error retry interval here too.
            let wait = self
                .wait_after(i, last)
                .unwrap_or(self.options.error_retry_interval);
            if now >= last.finished_at + wait {
                due.push(i);
            }
        }
        due
    }

    /// Argo's `calculateNextReconcileTime`: when something will next be due, if ever.
    pub fn next_wake(&self) -> Option<SystemTime> {
        if self.phase.is_completed() {
            return None;
        }
        let mut wake: Option<SystemTime> = None;
        let mut consider = |t: SystemTime| {
            if wake.is_none_or(|w| t < w) {
                wake = Some(t);
            }
        };
        for (i, (plan, result)) in self.plans.iter().zip(&self.results).enumerate() {
            if result.phase.is_completed() {
                continue;
            }
            match result.last_measurement() {
                None => consider(self.started_at + plan.initial_delay.unwrap_or_default()),
                Some(last) => {
                    if plan.effective_count().is_some_and(|n| result.count >= n) {
                        continue;
                    }
                    if let Some(wait) = self.wait_after(i, last) {
                        consider(last.finished_at + wait);
                    }
                }
            }
        }
        wake
    }

    /// Argo's `runMeasurements` bookkeeping for one completed measurement of metric `index`.
    pub fn record(&mut self, index: usize, measurement: Measurement) {
        let retention = self.plans[index].retention.max(1);
        let r = &mut self.results[index];
        match measurement.phase {
            Phase::Successful => {
                r.successful += 1;
                r.count += 1;
                r.consecutive_error = 0;
                r.consecutive_success += 1;
            }
            Phase::Failed | Phase::Inconclusive => {
                if measurement.phase == Phase::Failed {
                    r.failed += 1;
                } else {
                    r.inconclusive += 1;
                }
                r.count += 1;
                r.consecutive_error = 0;
                r.consecutive_success = 0;
            }
            Phase::Error => {
                r.error += 1;
                r.consecutive_error += 1;
                r.consecutive_success = 0;
            }
            Phase::Pending | Phase::Running => {}
        }
        if r.phase == Phase::Pending {
            r.phase = Phase::Running;
        }
        r.measurements.push(measurement);
        if r.measurements.len() > retention {
            let excess = r.measurements.len() - retention;
            r.measurements.drain(..excess);
        }
    }

    /// Argo's `assessRunStatus`: updates every metric's phase and the run's phase and message.
    /// Returns the run's phase; once completed it never changes.
    ///
    /// When this assessment makes a metric fail, the run starts terminating; Argo notices on
    /// the reconcile its own status update triggers, which is at once. Here the second pass
    /// happens in the same call, so the caller never sleeps on an already decided run.
    pub fn assess(&mut self, now: SystemTime) -> Phase {
        let was_terminating = self.is_terminating();
        let phase = self.assess_once(now);
        if !phase.is_completed() && !was_terminating && self.is_terminating() {
            return self.assess_once(now);
        }
        phase
    }

    fn assess_once(&mut self, now: SystemTime) -> Phase {
        if self.phase.is_completed() {
            return self.phase;
        }
        let terminating = self.is_terminating();
        let mut worst: Option<Phase> = None;
        let mut worst_message = if self.terminate {
            "Run Terminated".to_owned()
        } else {
            String::new()
        };
        let mut everything_completed = true;
        let mut summary = RunSummary::default();
        let mut dry_run_summary = RunSummary::default();
        for i in 0..self.plans.len() {
            let dry_run = self.plans[i].dry_run;
            if dry_run {
                dry_run_summary.count += 1;
            } else {
                summary.count += 1;
            }
            let (phase, reason) = assess_metric_status(
                &self.plans[i],
                &self.results[i],
                terminating,
                self.options.termination,
            );
            let r = &mut self.results[i];
            if r.phase != phase {
                if let Some(last) = r.measurements.last() {
                    r.message = last.message.clone();
                }
                r.phase = phase;
                r.reason = reason.clone();
            }
            if !phase.is_completed() {
                everything_completed = false;
                continue;
            }
            let target = if dry_run {
                &mut dry_run_summary
            } else {
                &mut summary
            };
            match phase {
                Phase::Error => target.error += 1,
                Phase::Failed => target.failed += 1,
                Phase::Inconclusive => target.inconclusive += 1,
                _ => target.successful += 1,
            }
            if dry_run {
                worst.get_or_insert(Phase::Successful);
                if let Some(reason) = &reason {
                    r.message = Some(format!("Metric assessed {phase} due to {reason}"));
                }
                continue;
            }
            if worst.is_none_or(|w| phase.is_worse_than(w)) {
                worst = Some(phase);
                if let Some(reason) = &reason {
                    worst_message =
                        format!("Metric \"{}\" assessed {phase} due to {reason}", r.name);
                    // Argo's words for an Error; a Failed or Inconclusive metric's message is
                    // the judge's reason, not an error.
                    match (&r.message, phase) {
                        (Some(message), Phase::Error) => {
                            worst_message.push_str(&format!(": \"Error Message: {message}\""))
                        }
                        (Some(message), _) => worst_message.push_str(&format!(": \"{message}\"")),
                        (None, _) => {}
                    }
                }
            }
        }
        self.summary = summary;
        self.dry_run_summary = dry_run_summary;
        let (phase, message) = if terminating {
            (
                worst.unwrap_or(Phase::Successful),
                worst_message.trim().to_owned(),
            )
        } else if !everything_completed || worst.is_none() {
            (Phase::Running, String::new())
        } else {
            (
                worst.unwrap_or(Phase::Successful),
                worst_message.trim().to_owned(),
            )
        };
        self.phase = phase;
        self.message = message;
        if phase.is_completed() {
            self.completed_at = Some(now);
        }
        phase
    }
}

#[cfg(test)]
mod tests;
