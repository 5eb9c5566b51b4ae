//! The pure decision: observed world + recorded status + analysis verdicts + `now` → actions,
//! the new status and when to look again. No clock, no I/O, no async.
//!
//! Level-triggered: every call recomputes from what is observed, and every decision that can
//! route traffic states the weights to enforce (`SetWeight`), so a router edited behind our
//! back is put right on the next reconcile. Routers write only when the object differs.
//!
//! The order of concerns in [`decide`]: spec validity → workloads present → new revision →
//! steady state (stable runs the canary's revision) → abort / retry → background analysis →
//! steps → promotion.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use super::{
    spec::{AnalysisSource, CanarySpec},
    split::{self, Split},
    status::{
        conditions, reasons, AnalysisRunStatus, CanaryPhase, CanaryStatus, ManagedRoutes,
        MetricStatus, PauseReason, PauseState,
    },
    validate::{validate, Plan, PlanStep},
};
use plover_analysis::Phase;

/// How often to look again while waiting on something that does not notify us (a rollout, the
/// observed split, a running analysis whose runner is lost).
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// How often the observed share (and a mismatch message quoting it) may change the status: our
/// own status write triggers a reconcile, which must find nothing new to write.
pub const OBSERVED_REFRESH: Duration = Duration::from_secs(5);
/// When a workload is missing: not a hot loop, but soon enough to notice it appear.
pub const MISSING_WORKLOAD_RETRY: Duration = Duration::from_secs(30);

/// One workload as observed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadState {
    pub exists: bool,
    /// Revision of its pod template (see `reconcile::template_revision`); local mode: the name.
    pub revision: Option<String>,
    /// Its current template is fully rolled out (updated, available, generation observed).
    pub rolled_out: bool,
    /// What its pods report as their revision, and so what the exporter counts them under: the
    /// `pod-template-hash` of the Deployment's current ReplicaSet (local mode: the revision
    /// name). Differs between stable and canary even for one revision (their labels differ).
    pub pod_template_hash: Option<String>,
}

impl WorkloadState {
    pub fn ready(revision: &str) -> Self {
        WorkloadState {
            exists: true,
            revision: Some(revision.to_owned()),
            rolled_out: true,
            pod_template_hash: Some(revision.to_owned()),
        }
    }
}

/// What the exporter saw over the check window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrafficObservation {
    /// Requests the canary served in the window.
    pub canary_requests: u64,
    /// Requests of all revisions in the window.
    pub requests: u64,
    /// Requests the exporter knows were lost (dropped by a gateway, refused by the exporter)
    /// that may belong to the window: when not zero the counts are incomplete.
    pub lost_requests: u64,
}

impl TrafficObservation {
    /// The canary's share of the service's requests, in percent (0–100; 0 with no requests).
    pub fn canary_percent(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            100.0 * self.canary_requests as f64 / self.requests as f64
        }
    }
}

/// The analysis engine's word on one run.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub phase: Phase,
    /// Argo's run message, e.g. `Metric "success-rate" assessed Failed due to failed (1) > failureLimit (0)`.
    pub message: String,
    pub successful: u32,
    pub failed: u32,
    pub inconclusive: u32,
    pub error: u32,
    /// Each metric with its latest measurement (see `canary::measurement`).
    pub metrics: Vec<MetricStatus>,
}

impl Verdict {
    pub fn of(phase: Phase, message: impl Into<String>) -> Self {
        Verdict {
            phase,
            message: message.into(),
            successful: 0,
            failed: 0,
            inconclusive: 0,
            error: 0,
            metrics: Vec::new(),
        }
    }
}

/// Everything [`decide`] looks at.
#[derive(Clone, Debug)]
pub struct Observation<'a> {
    /// The Canary's name (analysis run names start with it).
    pub name: &'a str,
    pub generation: Option<i64>,
    pub spec: &'a CanarySpec,
    pub status: &'a CanaryStatus,
    pub stable: WorkloadState,
    pub canary: WorkloadState,
    /// `None`: no traffic check configured, or the exporter did not answer.
    pub traffic: Option<TrafficObservation>,
    /// Why the exporter gave the traffic check no answer (its URL and the error), if it did not.
    pub traffic_error: Option<String>,
    /// Verdicts of the runs the analysis runner knows, by run name. A run recorded in status but
    /// missing here was lost (controller restart) and is started again.
    pub analyses: &'a BTreeMap<String, Verdict>,
    /// An analysis the spec names that cannot be resolved (a missing template, an undeclared
    /// arg, a misspelt metric or provider), found by the rim before a revision's first weight:
    /// `spec.steps[2].analysis: …`. `None`: all resolve, or they were not checked (the revision
    /// is already under way).
    pub analysis_problem: Option<String>,
    pub now: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnalysisKind {
    /// Inline analysis of step `i`: blocks the step.
    Step(u32),
    /// Background analysis: runs alongside the steps.
    Background,
}

/// What the caller must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Route `canary`% to the canary and `stable`% to the stable workload (they add up to 100),
    /// with exactly the managed header and mirror routes `routes` (the new status's).
    SetWeight {
        canary: u32,
        stable: u32,
        routes: ManagedRoutes,
    },
    StartAnalysis {
        name: String,
        kind: AnalysisKind,
        source: AnalysisSource,
    },
    StopAnalysis {
        name: String,
    },
    /// Copy the canary's pod template to the stable workload.
    PromoteWorkload {
        revision: String,
    },
    Event {
        warning: bool,
        reason: &'static str,
        message: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub actions: Vec<Action>,
    pub status: CanaryStatus,
    /// `None`: nothing is due; wait for a change of the Canary or its workloads.
    pub requeue_after: Option<Duration>,
}

impl Decision {
    /// The weights this decision enforces, if it routes at all.
    pub fn weights(&self) -> Option<(u32, u32)> {
        self.actions.iter().find_map(|a| match a {
            Action::SetWeight { canary, stable, .. } => Some((*canary, *stable)),
            _ => None,
        })
    }
}

struct Builder<'o, 'a> {
    obs: &'o Observation<'a>,
    /// The spec, validated; `None` only while reporting an invalid one.
    plan: Option<&'o Plan>,
    now: Time,
    status: CanaryStatus,
    actions: Vec<Action>,
    requeue_after: Option<Duration>,
    /// What this decision waits on that the rollout does not control (for the progress
    /// deadline); None: it moved on, paused or is analysing.
    stalled_on: Option<String>,
}

impl Builder<'_, '_> {
    fn requeue(&mut self, after: Duration) {
        self.requeue_after = Some(self.requeue_after.map_or(after, |r| r.min(after)));
    }

    fn event(&mut self, warning: bool, reason: &'static str, message: impl Into<String>) {
        self.actions.push(Action::Event {
            warning,
            reason,
            message: message.into(),
        });
    }

    /// Records the desired canary weight; the change time starts the observed-split check.
    fn set_weight(&mut self, canary: u32) {
        if self.status.desired_weight != canary {
            self.status.desired_weight = canary;
            self.status.weight_changed_at = Some(self.now.clone());
            self.status.observed_weight = None;
            self.status.observed_requests = None;
            self.status.observed_at = None;
            self.status
                .remove_condition(conditions::TRAFFIC_SPLIT_MISMATCH);
        }
        self.actions
            .retain(|a| !matches!(a, Action::SetWeight { .. }));
        self.actions.push(Action::SetWeight {
            canary,
            stable: 100 - canary,
            // Filled in from the final status by `finish`.
            routes: ManagedRoutes::default(),
        });
    }

    fn stop_running_analyses(&mut self) {
        let runs = [
            self.status.step_analysis.as_mut(),
            self.status.background_analysis.as_mut(),
        ];
        let mut stopped = Vec::new();
        for run in runs.into_iter().flatten() {
            if !run.phase.is_completed() {
                stopped.push(run.name.clone());
            }
        }
        for name in stopped {
            self.actions.push(Action::StopAnalysis { name });
        }
    }

    /// The rollout waits on `what` (the canary's pods, the observed split): past
    /// `progressDeadlineSeconds` of such waiting it is Degraded, or aborted with
    /// `progressDeadlineAbort`, as Argo Rollouts does.
    /// `may_abort`: false once the revision is being promoted (there is nothing to abort to).
    fn stalled(&mut self, what: String, may_abort: bool) {
        let since = self
            .status
            .stalled_since
            .get_or_insert_with(|| self.now.clone())
            .clone();
        let Some(plan) = self.plan else {
            return;
        };
        let deadline = plan.progress_deadline;
        let waited = elapsed(&since, &self.obs.now);
        if waited < deadline {
            self.requeue(deadline - waited);
            self.stalled_on = Some(what);
            return;
        }
        let message = format!(
            "no progress for {}s (progressDeadlineSeconds): {what}",
            deadline.as_secs()
        );
        if plan.progress_deadline_abort && may_abort {
            abort(
                self,
                Some(format!(
                    "{}: {message}",
                    reasons::PROGRESS_DEADLINE_EXCEEDED
                )),
            );
            return;
        }
        self.stalled_on = Some(what);
        let first = self
            .status
            .condition(conditions::PROGRESSING)
            .is_none_or(|c| c.reason != reasons::PROGRESS_DEADLINE_EXCEEDED);
        let now = self.now.clone();
        let generation = self.obs.generation;
        self.status.set_condition(
            conditions::PROGRESSING,
            false,
            reasons::PROGRESS_DEADLINE_EXCEEDED,
            &message,
            &now,
            generation,
        );
        self.status.phase = Some(CanaryPhase::Degraded);
        self.status.message = Some(format!(
            "{}: {message}",
            reasons::PROGRESS_DEADLINE_EXCEEDED
        ));
        if first {
            self.event(true, reasons::PROGRESS_DEADLINE_EXCEEDED, message);
        }
    }

    fn finish(mut self) -> Decision {
        if self.stalled_on.is_none() {
            self.status.stalled_since = None;
            let exceeded = self
                .status
                .condition(conditions::PROGRESSING)
                .is_some_and(|c| c.reason == reasons::PROGRESS_DEADLINE_EXCEEDED);
            if exceeded && !self.status.abort {
                let now = self.now.clone();
                let generation = self.obs.generation;
                self.status.set_condition(
                    conditions::PROGRESSING,
                    true,
                    reasons::PROGRESS_RESUMED,
                    "progressing again",
                    &now,
                    generation,
                );
            }
        }
        // Weights about to be written: a failure to write them is reported anew by the rim.
        let mut routes_written = false;
        for action in &mut self.actions {
            if let Action::SetWeight { routes, .. } = action {
                routes.clone_from(&self.status.managed_routes);
                routes_written = true;
            }
        }
        if routes_written {
            self.status
                .remove_condition(conditions::TRAFFIC_ROUTING_FAILED);
        }
        // Actions in a stable order: stop analyses, then traffic, then workloads, start analyses, events.
        let rank = |a: &Action| match a {
            Action::StopAnalysis { .. } => 0,
            Action::SetWeight { .. } => 1,
            Action::PromoteWorkload { .. } => 2,
            Action::StartAnalysis { .. } => 3,
            Action::Event { .. } => 4,
        };
        self.actions.sort_by_key(rank);
        Decision {
            actions: self.actions,
            status: self.status,
            requeue_after: self.requeue_after,
        }
    }
}

/// The spec cannot be acted on: the `InvalidSpec` condition with `message` (which names the
/// field), Degraded, and one Warning event per distinct message.
fn invalid_spec(b: &mut Builder<'_, '_>, message: String) {
    let first_time = b
        .status
        .condition(conditions::INVALID_SPEC)
        .is_none_or(|c| c.status != "True" || c.message != message);
    let now = b.now.clone();
    let generation = b.obs.generation;
    b.status.set_condition(
        conditions::INVALID_SPEC,
        true,
        reasons::INVALID_SPEC,
        &message,
        &now,
        generation,
    );
    b.status.phase = Some(CanaryPhase::Degraded);
    b.status.message = Some(format!("InvalidSpec: {message}"));
    if first_time {
        b.event(true, reasons::INVALID_SPEC, message);
    }
}

/// Short form of a revision for run names.
fn short(revision: &str) -> &str {
    revision.get(..10).unwrap_or(revision)
}

/// Name of the run of step `i` of the current attempt of the current revision.
pub fn step_run_name(name: &str, revision: &str, attempt: u32, step: u32) -> String {
    format!("{name}-{}-{attempt}-step{step}", short(revision))
}

/// Name of the background run; `serial` counts restarts after an Inconclusive pause.
pub fn background_run_name(name: &str, revision: &str, attempt: u32, serial: u32) -> String {
    if serial == 0 {
        format!("{name}-{}-{attempt}-background", short(revision))
    } else {
        format!("{name}-{}-{attempt}-background-{serial}", short(revision))
    }
}

fn background_serial(run: &AnalysisRunStatus) -> u32 {
    run.name
        .rsplit_once("-background-")
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0)
}

/// `observedWeight` from this observation's sample when that sample holds only traffic routed
/// at the current weight to the current revision (a full window since either changed);
/// absent otherwise.
fn record_observed_weight(b: &mut Builder<'_, '_>, plan: &Plan) {
    let window = plan.traffic_check.as_ref().map(|c| c.window);
    let current = b
        .status
        .weight_changed_at
        .as_ref()
        .zip(window)
        .is_some_and(|(t, window)| elapsed(t, &b.obs.now) >= window);
    match b.obs.traffic.filter(|_| current) {
        Some(traffic) => {
            if observation_due(&b.status, &b.obs.now) {
                b.status.observed_weight = Some((traffic.canary_percent() * 10.0).round() / 10.0);
                b.status.observed_requests = Some(traffic.requests);
                b.status.observed_at = Some(b.now.clone());
            }
        }
        None => {
            b.status.observed_weight = None;
            b.status.observed_requests = None;
            b.status.observed_at = None;
        }
    }
}

/// Whether the observed share may be recorded again (see [`OBSERVED_REFRESH`]).
fn observation_due(status: &CanaryStatus, now: &Timestamp) -> bool {
    status
        .observed_at
        .as_ref()
        .is_none_or(|t| elapsed(t, now) >= OBSERVED_REFRESH)
}

fn elapsed(since: &Time, now: &Timestamp) -> Duration {
    let secs = now
        .as_millisecond()
        .saturating_sub(since.0.as_millisecond());
    Duration::from_millis(u64::try_from(secs).unwrap_or(0))
}

/// The decision for one observation.
pub fn decide(obs: &Observation<'_>) -> Decision {
    let mut b = Builder {
        obs,
        plan: None,
        now: Time(obs.now),
        status: obs.status.clone(),
        actions: Vec::new(),
        requeue_after: None,
        stalled_on: None,
    };
    b.status.observed_generation = obs.generation;

    // An invalid spec: say which field, route nothing (we cannot trust the router config) and
    // do not requeue: only an edit of the spec can change the answer.
    let plan = match validate(obs.spec) {
        Ok(plan) => plan,
        Err(invalid) => {
            invalid_spec(&mut b, invalid.to_string());
            return b.finish();
        }
    };
    let plan = &plan;
    b.plan = Some(plan);
    // An analysis that cannot run would surface only when its step starts, after traffic has
    // moved: everything goes to stable instead, and only an edit (or the missing template
    // appearing, looked for again every 30 s) changes the answer.
    if let Some(problem) = &obs.analysis_problem {
        invalid_spec(&mut b, problem.clone());
        b.status.managed_routes = ManagedRoutes::default();
        b.set_weight(0);
        b.requeue(MISSING_WORKLOAD_RETRY);
        return b.finish();
    }
    b.status.remove_condition(conditions::INVALID_SPEC);

    let (Some(canary_rev), Some(stable_rev)) = (
        obs.canary.revision.clone().filter(|_| obs.canary.exists),
        obs.stable.revision.clone().filter(|_| obs.stable.exists),
    ) else {
        let missing = if obs.stable.exists {
            &obs.spec.workload.canary
        } else {
            &obs.spec.workload.stable
        };
        let message = format!("workload {missing:?} not found");
        let now = b.now.clone();
        b.status.set_condition(
            conditions::PROGRESSING,
            false,
            reasons::WORKLOAD_NOT_FOUND,
            &message,
            &now,
            obs.generation,
        );
        b.status.message = Some(message);
        b.status.phase.get_or_insert(CanaryPhase::Progressing);
        b.requeue(MISSING_WORKLOAD_RETRY);
        return b.finish();
    };
    b.status.stable_revision = Some(stable_rev.clone());
    b.status.stable_pod_template_hash = obs.stable.pod_template_hash.clone();
    b.status.canary_pod_template_hash = obs.canary.pod_template_hash.clone();

    if b.status.revision.as_deref() != Some(canary_rev.as_str()) {
        let first_sight = b.status.revision.is_none();
        b.stop_running_analyses();
        let s = &mut b.status;
        s.revision = Some(canary_rev.clone());
        s.current_step_index = None;
        s.step_started_at = None;
        s.pause = None;
        s.abort = false;
        s.aborted_at = None;
        s.promote = false;
        s.promote_full = false;
        s.attempt = 0;
        s.step_analysis = None;
        s.background_analysis = None;
        s.managed_routes = ManagedRoutes::default();
        s.remove_condition(conditions::TRAFFIC_SPLIT_MISMATCH);
        // The exporter's window still holds the previous revision's traffic: a new sample starts.
        s.weight_changed_at = Some(b.now.clone());
        s.observed_weight = None;
        s.observed_requests = None;
        s.observed_at = None;
        if canary_rev != stable_rev {
            s.current_step_index = Some(0);
            s.step_started_at = Some(b.now.clone());
            // A new revision earns its traffic from the first step again: whatever the previous
            // one had must not go to pods of this one.
            b.set_weight(0);
            // In local mode the workloads are named after their revisions: "revision v3 of v3"
            // would say one thing twice.
            let message = if obs.spec.workload.canary == canary_rev {
                format!("canary revision {canary_rev} started; stable runs revision {stable_rev}")
            } else {
                format!(
                    "canary revision {canary_rev} of Deployment {} started; stable runs revision {stable_rev}",
                    obs.spec.workload.canary
                )
            };
            let now = b.now.clone();
            b.status.set_condition(
                conditions::PROGRESSING,
                true,
                reasons::NEW_REVISION,
                &message,
                &now,
                obs.generation,
            );
            b.event(false, reasons::NEW_REVISION, message);
        } else if !first_sight {
            // The canary went back to what stable runs: nothing left to roll out.
            b.event(
                false,
                reasons::NEW_REVISION,
                format!("revision {canary_rev} is what stable runs; nothing to roll out"),
            );
        }
    }

    record_observed_weight(&mut b, plan);

    if canary_rev == stable_rev {
        return steady(b, &canary_rev);
    }

    // Abort: all traffic to stable at once, until `retry` or a new revision.
    if b.status.abort {
        abort(&mut b, None);
        return b.finish();
    }
    if b.status.aborted_at.is_some() {
        // `plover retry` cleared `abort`: start the revision over with fresh analysis runs.
        let s = &mut b.status;
        s.aborted_at = None;
        s.attempt += 1;
        s.current_step_index = Some(0);
        s.step_started_at = Some(b.now.clone());
        s.pause = None;
        s.promote = false;
        s.step_analysis = None;
        s.background_analysis = None;
        s.managed_routes = ManagedRoutes::default();
        let message = format!(
            "retrying revision {canary_rev} (attempt {})",
            b.status.attempt
        );
        b.event(false, "Retry", message);
    }

    let steps = &plan.steps;
    let len = steps.len() as u32;
    if b.status.promote_full {
        if b.status.current_step_index.unwrap_or(0) < len {
            b.event(
                false,
                reasons::PROMOTING,
                "full promotion requested: skipping the remaining steps",
            );
        }
        stop_step_analysis(&mut b);
        b.status.current_step_index = Some(len);
        b.status.pause = None;
    }

    // The desired weight carries over from the last setWeight reached (Argo's rule).
    let weight = b.status.desired_weight;
    b.set_weight(weight);

    // No traffic to pods that are not ready: the steps wait until the canary Deployment has
    // rolled out this revision (observed generation, updated and available replicas), as Argo
    // and Flagger wait for the canary's availability.
    if !obs.canary.rolled_out {
        let waiting = format!(
            "waiting for {} to roll out revision {canary_rev}",
            obs.spec.workload.canary
        );
        b.status.phase = Some(CanaryPhase::Progressing);
        b.status.message = Some(waiting.clone());
        b.requeue(POLL_INTERVAL);
        b.stalled(waiting, true);
        return b.finish();
    }

    if background_analysis(&mut b, plan, &canary_rev) {
        return b.finish();
    }

    // `plover pause`: hold at the current step and weight until `promote`, which resumes
    // (it does not also leave the step).
    if b.status.pause_requested && b.status.current_step_index.unwrap_or(0) < len {
        if b.status.promote {
            b.status.pause_requested = false;
            b.status.promote = false;
            b.status.pause = None;
            b.event(false, reasons::PROGRESS_RESUMED, "resumed by promote");
        } else {
            let since = b.now.clone();
            if b.status.pause.as_ref().map(|p| p.reason) != Some(PauseReason::PausedByUser) {
                b.status.pause = Some(PauseState {
                    reason: PauseReason::PausedByUser,
                    since,
                });
                b.event(false, reasons::PAUSED, "paused by the user until promote");
            }
            b.status.phase = Some(CanaryPhase::Paused);
            b.status.message = Some("PausedByUser: paused until promoted".to_owned());
            return b.finish();
        }
    }

    // Steps: move forward as far as the world allows in this one decision.
    let previous_phase = obs.status.phase;
    // Steps that wait in a pause set Paused again below.
    b.status.phase = Some(CanaryPhase::Progressing);
    for _ in 0..=len {
        let index = b.status.current_step_index.unwrap_or(0);
        if index >= len {
            break;
        }
        let Some(step) = steps.get(index as usize) else {
            break;
        };
        let done = match step {
            PlanStep::SetWeight(w) => set_weight_step(&mut b, plan, *w),
            PlanStep::Pause(duration) => pause_step(&mut b, *duration),
            PlanStep::HeaderRoute(route) => {
                b.status.managed_routes.set_header(route);
                true
            }
            PlanStep::MirrorRoute(route) => {
                b.status.managed_routes.set_mirror(route);
                true
            }
            PlanStep::Analysis(source) => match analysis_step(&mut b, &canary_rev, index, source) {
                StepOutcome::Done => true,
                StepOutcome::Waiting => false,
                StepOutcome::Aborted => return b.finish(),
            },
        };
        if !done {
            // Steps taken in this decision may have reached the background analysis' startingStep.
            if b.status.background_analysis.is_none()
                && background_analysis(&mut b, plan, &canary_rev)
            {
                return b.finish();
            }
            let step_text = format!("step {}/{len}", index + 1);
            if b.status.phase != Some(CanaryPhase::Paused) {
                b.status.phase = Some(CanaryPhase::Progressing);
                b.status.message = Some(step_text);
            }
            if let PlanStep::SetWeight(w) = step {
                b.stalled(
                    format!(
                        "step {}/{len}: the observed split has not confirmed weight {w}",
                        index + 1
                    ),
                    true,
                );
            }
            return b.finish();
        }
        b.status.current_step_index = Some(index + 1);
        b.status.step_started_at = Some(b.now.clone());
        b.status.pause = None;
        b.status.promote = false;
        b.status.phase = Some(CanaryPhase::Progressing);
    }

    // All steps done: hand the revision to the stable workload; traffic stays as it is until the
    // stable rollout completes (then `steady` routes everything to stable).
    let background = b
        .status
        .background_analysis
        .as_ref()
        .filter(|r| !r.phase.is_completed())
        .map(|r| r.name.clone());
    if let Some(name) = background {
        b.actions.push(Action::StopAnalysis { name });
    }
    if previous_phase != Some(CanaryPhase::Promoting) {
        b.event(
            false,
            reasons::PROMOTING,
            if plan.envoy_routing {
                // Local mode: the stable "workload" is a revision name; promotion makes the
                // canary's revision the stable one.
                format!(
                    "all steps complete: revision {canary_rev} becomes stable, replacing revision {stable_rev}"
                )
            } else {
                format!(
                    "all steps complete: promoting revision {canary_rev} to the stable Deployment {}",
                    obs.spec.workload.stable
                )
            },
        );
    }
    b.status.phase = Some(CanaryPhase::Promoting);
    // Header and mirror routes end with the steps (Argo removes them at full promotion).
    b.status.managed_routes = ManagedRoutes::default();
    b.status.message = Some(format!(
        "rolling out revision {canary_rev} to {}",
        obs.spec.workload.stable
    ));
    b.status.pause = None;
    b.status.promote = false;
    let now = b.now.clone();
    b.status.set_condition(
        conditions::PROGRESSING,
        true,
        reasons::PROMOTING,
        "copying the canary's pod template to the stable workload",
        &now,
        obs.generation,
    );
    if plan.envoy_routing {
        // The stable "workload" is a revision name: from now on it is the canary's.
        b.status.stable_revision = Some(canary_rev.clone());
    }
    b.actions.push(Action::PromoteWorkload {
        revision: canary_rev,
    });
    b.requeue(POLL_INTERVAL);
    b.finish()
}

/// Stable runs the canary's revision: wait for its rollout, then everything to stable.
fn steady(mut b: Builder<'_, '_>, revision: &str) -> Decision {
    let obs = b.obs;
    if !obs.stable.rolled_out {
        // Keep the split as it is: the canary still serves its share while stable rolls out.
        let weight = b.status.desired_weight;
        b.set_weight(weight);
        let waiting = format!(
            "waiting for {} to roll out revision {revision}",
            obs.spec.workload.stable
        );
        b.status.phase = Some(CanaryPhase::Promoting);
        b.status.message = Some(waiting.clone());
        b.requeue(POLL_INTERVAL);
        b.stalled(waiting, false);
        return b.finish();
    }
    let was_promoting = b.status.phase == Some(CanaryPhase::Promoting);
    b.status.managed_routes = ManagedRoutes::default();
    b.set_weight(0);
    b.status.pause = None;
    b.status.abort = false;
    b.status.aborted_at = None;
    b.status.promote = false;
    b.status.promote_full = false;
    b.status.phase = Some(CanaryPhase::Healthy);
    b.status.message = None;
    b.status
        .remove_condition(conditions::TRAFFIC_SPLIT_MISMATCH);
    let now = b.now.clone();
    b.status.set_condition(
        conditions::PROGRESSING,
        false,
        reasons::PROMOTED,
        &format!("stable runs revision {revision}"),
        &now,
        obs.generation,
    );
    if was_promoting {
        b.event(
            false,
            reasons::PROMOTED,
            format!("revision {revision} promoted: stable runs it and takes all traffic"),
        );
    }
    b.finish()
}

/// Routes everything to stable and marks the rollout Degraded. `reason`: the analysis message
/// when the analysis caused it (None: `abort` was requested).
fn abort(b: &mut Builder<'_, '_>, reason: Option<String>) {
    let just_now = b.status.aborted_at.is_none();
    b.status.abort = true;
    b.stop_running_analyses();
    b.status.managed_routes = ManagedRoutes::default();
    b.set_weight(0);
    b.status.pause = None;
    b.status.promote = false;
    b.status.phase = Some(CanaryPhase::Degraded);
    if let Some(reason) = &reason {
        b.status.message = Some(format!("{}: {reason}", reasons::ABORTED));
    } else if just_now {
        b.status.message = Some(format!("{}: rollout aborted", reasons::ABORTED));
    }
    if just_now {
        b.status.aborted_at = Some(b.now.clone());
        let message = b.status.message.clone().unwrap_or_default();
        let now = b.now.clone();
        let generation = b.obs.generation;
        b.status.set_condition(
            conditions::PROGRESSING,
            false,
            reasons::ABORTED,
            &message,
            &now,
            generation,
        );
        // The event's reason already says RolloutAborted: its note is the why alone.
        let note = reason.unwrap_or_else(|| "rollout aborted".to_owned());
        b.event(true, reasons::ABORTED, note);
    }
}

enum StepOutcome {
    Done,
    Waiting,
    Aborted,
}

/// Updates the recorded run from its verdict, or asks for it to be (re)started.
fn track_run(
    b: &mut Builder<'_, '_>,
    run: &mut AnalysisRunStatus,
    kind: AnalysisKind,
    source: &AnalysisSource,
) {
    match b.obs.analyses.get(&run.name) {
        Some(v) => {
            run.phase = v.phase;
            run.message = Some(v.message.clone()).filter(|m| !m.is_empty());
            run.successful = v.successful;
            run.failed = v.failed;
            run.inconclusive = v.inconclusive;
            run.error = v.error;
            run.metrics = v.metrics.clone();
            if !v.phase.is_completed() {
                b.requeue(POLL_INTERVAL);
            }
        }
        None if !run.phase.is_completed() => {
            // Not running anywhere (new, or lost with a controller restart): start it.
            b.actions.push(Action::StartAnalysis {
                name: run.name.clone(),
                kind,
                source: source.clone(),
            });
            b.requeue(POLL_INTERVAL);
        }
        None => {}
    }
}

/// Returns true when the rollout was aborted or paused by the background analysis.
fn background_analysis(b: &mut Builder<'_, '_>, plan: &Plan, revision: &str) -> bool {
    let Some(background) = &plan.background else {
        return false;
    };
    let index = b.status.current_step_index.unwrap_or(0);
    if index < background.starting_step || index >= plan.steps.len() as u32 {
        return false;
    }
    let source = background.source.clone();
    let mut run = match b.status.background_analysis.take() {
        Some(run) => run,
        None => AnalysisRunStatus {
            name: background_run_name(b.obs.name, revision, b.status.attempt, 0),
            started_at: Some(b.now.clone()),
            ..Default::default()
        },
    };
    track_run(b, &mut run, AnalysisKind::Background, &source);
    let phase = run.phase;
    let message = run.message.clone().unwrap_or_default();
    match phase {
        Phase::Failed | Phase::Error => {
            b.status.background_analysis = Some(run);
            b.event(
                true,
                reasons::ANALYSIS_FAILED,
                format!("background analysis {phase}: {message}"),
            );
            abort(b, Some(message));
            true
        }
        Phase::Inconclusive if b.status.promote => {
            // `promote` after an Inconclusive pause: accept and start a fresh background run.
            let serial = background_serial(&run) + 1;
            let fresh = AnalysisRunStatus {
                name: background_run_name(b.obs.name, revision, b.status.attempt, serial),
                started_at: Some(b.now.clone()),
                ..Default::default()
            };
            b.status.promote = false;
            b.status.pause = None;
            b.actions.push(Action::StartAnalysis {
                name: fresh.name.clone(),
                kind: AnalysisKind::Background,
                source,
            });
            b.requeue(POLL_INTERVAL);
            b.status.background_analysis = Some(fresh);
            false
        }
        Phase::Inconclusive => {
            b.status.background_analysis = Some(run);
            pause_inconclusive(b, "background analysis was Inconclusive", &message);
            true
        }
        _ => {
            b.status.background_analysis = Some(run);
            false
        }
    }
}

fn pause_inconclusive(b: &mut Builder<'_, '_>, what: &str, message: &str) {
    if b.status
        .pause
        .as_ref()
        .is_none_or(|p| p.reason != PauseReason::InconclusiveAnalysisRun)
    {
        b.status.pause = Some(PauseState {
            reason: PauseReason::InconclusiveAnalysisRun,
            since: b.now.clone(),
        });
        b.event(
            true,
            reasons::ANALYSIS_INCONCLUSIVE,
            format!("{what}: {message}; paused until promote or abort"),
        );
    }
    b.status.phase = Some(CanaryPhase::Paused);
    b.status.message = Some(format!("InconclusiveAnalysisRun: {message}"));
    let now = b.now.clone();
    let generation = b.obs.generation;
    b.status.set_condition(
        conditions::PROGRESSING,
        true,
        reasons::PAUSED,
        &format!("{what}: waiting for promote or abort"),
        &now,
        generation,
    );
}

fn stop_step_analysis(b: &mut Builder<'_, '_>) {
    if let Some(run) = b
        .status
        .step_analysis
        .as_ref()
        .filter(|r| !r.phase.is_completed())
    {
        let name = run.name.clone();
        b.actions.push(Action::StopAnalysis { name });
    }
}

fn set_weight_step(b: &mut Builder<'_, '_>, plan: &Plan, weight: u32) -> bool {
    b.set_weight(weight);
    if b.status.promote {
        return true;
    }
    let Some(check) = plan.traffic_check.as_ref() else {
        return true;
    };
    // Requests a header route sends to the canary are in its share whatever the weight: the
    // split cannot be told from the counts, so it is not judged (and not reported as wrong).
    if !b.status.managed_routes.header.is_empty() {
        b.status
            .remove_condition(conditions::TRAFFIC_SPLIT_MISMATCH);
        return true;
    }
    let window = check.window.as_secs();
    let (tolerance, min_requests, mismatch_after) =
        (check.tolerance, check.min_requests, check.mismatch_after);
    let since_change = b
        .status
        .weight_changed_at
        .as_ref()
        .map_or(Duration::MAX, |t| elapsed(t, &b.obs.now));
    // An exporter that does not answer is said at once, not after `mismatchAfter` as a mismatch.
    match (&b.obs.traffic, &b.obs.traffic_error) {
        (None, Some(error)) => {
            let message = format!("traffic check: no answer from the exporter: {error}");
            let first = !b.status.is_condition_true(conditions::TRAFFIC_CHECK_FAILED);
            let now = b.now.clone();
            let generation = b.obs.generation;
            b.status.set_condition(
                conditions::TRAFFIC_CHECK_FAILED,
                true,
                reasons::EXPORTER_UNREACHABLE,
                &message,
                &now,
                generation,
            );
            if first {
                b.event(true, reasons::EXPORTER_UNREACHABLE, message);
            }
        }
        (Some(_), _) => b.status.remove_condition(conditions::TRAFFIC_CHECK_FAILED),
        (None, None) => {}
    }
    // The window must hold only traffic routed after the change, or it would average old and new.
    let window_full = since_change >= Duration::from_secs(window);
    let verdict = match b.obs.traffic {
        None => Err(format!("no answer from the exporter at {}", check.exporter)),
        Some(_) if !window_full => Err("waiting for a full window of traffic after the weight change".to_owned()),
        Some(t) if t.lost_requests > 0 => Err(format!(
            "{} may belong to the last {window}s: the split is not judged on incomplete counts",
            plover_wire::stats::lost_requests_phrase(t.lost_requests)
        )),
        Some(t) if t.requests < min_requests => {
            Err(format!("{} requests in the last {window}s, fewer than minRequests {min_requests}", t.requests))
        }
        Some(t) => match split::judge(t.canary_requests, t.requests, weight, tolerance) {
            Split::Matches => Ok(()),
            Split::Mismatch { tolerance } => Err(format!(
                "observed canary share {:.1}% ({} of {} requests in the last {window}s); desired {weight}%: more than {tolerance} points off, and beyond chance (binomial test at α {})",
                t.canary_percent(),
                t.canary_requests,
                t.requests,
                split::SPLIT_ALPHA
            )),
        },
    };
    match verdict {
        Ok(()) => {
            b.status
                .remove_condition(conditions::TRAFFIC_SPLIT_MISMATCH);
            true
        }
        Err(message) => {
            let first = !b
                .status
                .is_condition_true(conditions::TRAFFIC_SPLIT_MISMATCH);
            // The message quotes live numbers: refresh it no faster than the observed share.
            let refresh = first || b.status.observed_at.as_ref() == Some(&b.now);
            if since_change >= mismatch_after && refresh {
                let now = b.now.clone();
                let generation = b.obs.generation;
                b.status.set_condition(
                    conditions::TRAFFIC_SPLIT_MISMATCH,
                    true,
                    reasons::SPLIT_MISMATCH,
                    &message,
                    &now,
                    generation,
                );
                if first {
                    b.event(true, reasons::SPLIT_MISMATCH, message);
                }
            }
            b.requeue(POLL_INTERVAL);
            false
        }
    }
}

fn pause_step(b: &mut Builder<'_, '_>, duration: Option<Duration>) -> bool {
    if b.status.promote {
        return true;
    }
    let since = b
        .status
        .step_started_at
        .clone()
        .unwrap_or_else(|| b.now.clone());
    if let Some(d) = duration {
        let waited = elapsed(&since, &b.obs.now);
        if waited >= d {
            return true;
        }
        b.requeue(d - waited);
    }
    if b.status
        .pause
        .as_ref()
        .is_none_or(|p| p.reason != PauseReason::CanaryPauseStep)
    {
        b.status.pause = Some(PauseState {
            reason: PauseReason::CanaryPauseStep,
            since,
        });
    }
    b.status.phase = Some(CanaryPhase::Paused);
    b.status.message = Some(match duration {
        Some(d) => format!("CanaryPauseStep: paused for {}s", d.as_secs()),
        None => "CanaryPauseStep: paused until promoted".to_owned(),
    });
    false
}

fn analysis_step(
    b: &mut Builder<'_, '_>,
    revision: &str,
    index: u32,
    source: &AnalysisSource,
) -> StepOutcome {
    let name = step_run_name(b.obs.name, revision, b.status.attempt, index);
    let mut run = match b.status.step_analysis.take() {
        Some(run) if run.name == name => run,
        _ => AnalysisRunStatus {
            name: name.clone(),
            step_index: Some(index),
            started_at: Some(b.now.clone()),
            ..Default::default()
        },
    };
    track_run(b, &mut run, AnalysisKind::Step(index), source);
    let phase = run.phase;
    let message = run.message.clone().unwrap_or_default();
    let promote = b.status.promote;
    let outcome = match phase {
        Phase::Successful => StepOutcome::Done,
        Phase::Failed | Phase::Error => {
            b.status.step_analysis = Some(run);
            b.event(
                true,
                reasons::ANALYSIS_FAILED,
                format!("step {} analysis {phase}: {message}", index + 1),
            );
            abort(b, Some(message));
            return StepOutcome::Aborted;
        }
        Phase::Inconclusive if promote => StepOutcome::Done,
        Phase::Inconclusive => {
            pause_inconclusive(
                b,
                &format!("step {} analysis was Inconclusive", index + 1),
                &message,
            );
            StepOutcome::Waiting
        }
        Phase::Pending | Phase::Running if promote => {
            // `promote` skips a running analysis step; its run is cancelled.
            b.actions
                .retain(|a| !matches!(a, Action::StartAnalysis { name: n, .. } if *n == run.name));
            if b.obs.analyses.contains_key(&run.name) {
                b.actions.push(Action::StopAnalysis {
                    name: run.name.clone(),
                });
            }
            StepOutcome::Done
        }
        Phase::Pending | Phase::Running => StepOutcome::Waiting,
    };
    b.status.step_analysis = Some(run);
    outcome
}

#[cfg(test)]
mod tests;
