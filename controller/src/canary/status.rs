//! `status` of the `Canary` resource: what the controller recorded, and the requests that
//! `plover promote|abort|retry` leave for it (`promote`, `promoteFull`, `abort`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::spec::{SetHeaderRoute, SetMirrorRoute};

/// Phase of a canary, in Argo Rollouts' words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CanaryPhase {
    /// Stepping through the plan.
    #[default]
    Progressing,
    /// At a pause step, or held by an Inconclusive analysis: waits for time or `promote`.
    Paused,
    /// All steps done: the stable workload is being rolled out with the canary's template.
    Promoting,
    /// Nothing in flight: all traffic on the stable workload, which runs the latest revision.
    Healthy,
    /// Aborted (analysis failed or `abort`) or the spec is invalid: all traffic on stable.
    Degraded,
}

impl CanaryPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            CanaryPhase::Progressing => "Progressing",
            CanaryPhase::Paused => "Paused",
            CanaryPhase::Promoting => "Promoting",
            CanaryPhase::Healthy => "Healthy",
            CanaryPhase::Degraded => "Degraded",
        }
    }
}

/// Why the rollout is paused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PauseReason {
    /// A `pause` step (Argo's `CanaryPauseStep`).
    CanaryPauseStep,
    /// An analysis was Inconclusive (Argo's `InconclusiveAnalysisRun`).
    InconclusiveAnalysisRun,
    /// `plover pause` (Argo's manual pause).
    PausedByUser,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PauseState {
    pub reason: PauseReason,
    pub since: Time,
}

/// Phase of an analysis run or measurement: the engine's own.
pub use plover_analysis::Phase as AnalysisPhase;

/// One analysis run as the Canary sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisRunStatus {
    /// `<canary>-<revision>-<attempt>-step<i>` or `…-background`.
    pub name: String,
    pub phase: AnalysisPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The step that started it (inline analysis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// Measurements so far, by phase (Argo's `✔ n,✖ n,? n,⚠ n`).
    #[serde(default)]
    pub successful: u32,
    #[serde(default)]
    pub failed: u32,
    #[serde(default)]
    pub inconclusive: u32,
    #[serde(default)]
    pub error: u32,
    /// Each metric of the run with its latest measurement (only the latest: the status stays
    /// small however long the run measures). It changes only when a measurement is taken.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricStatus>,
}

/// One metric of an analysis run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricStatus {
    /// The metric's name in the template.
    pub name: String,
    /// The metric's phase (Argo's metric result phase): final once a limit decided it.
    pub phase: AnalysisPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<MeasurementStatus>,
    /// The metric's counters (Argo's metric result), kept so that a run the controller
    /// restarts in the middle goes on from them instead of starting over.
    #[serde(default, skip_serializing_if = "MetricCounts::is_empty")]
    pub counts: MetricCounts,
}

/// A metric's measurement counters: `count` is every non-Error measurement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricCounts {
    #[serde(default)]
    pub count: u32,
    #[serde(default)]
    pub successful: u32,
    #[serde(default)]
    pub failed: u32,
    #[serde(default)]
    pub inconclusive: u32,
    #[serde(default)]
    pub error: u32,
    #[serde(default)]
    pub consecutive_error: u32,
    #[serde(default)]
    pub consecutive_success: u32,
}

impl MetricCounts {
    pub fn is_empty(&self) -> bool {
        *self == MetricCounts::default()
    }
}

/// The latest measurement of a metric.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeasurementStatus {
    /// The measurement's own phase (a metric stays Running through Inconclusive looks).
    pub phase: AnalysisPhase,
    /// The value as measured (`0.983`, `[0.98,1]`), for metrics judged by a condition;
    /// shortened when long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The provider's or the judge's sentence (why no data, an error, or the test's
    /// explanation); shortened when long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the measurement finished, in whole seconds (what the API server keeps, so a
    /// status read back compares equal and is not written again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_at: Option<Time>,
    /// Canary against stable (`errorRatioVsStable`, `latencyVsStable`,
    /// `latencyDistributionVsStable`): the sequential test's statistics at this look.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<EvidenceStatus>,
}

/// What a canary-versus-stable test compares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Comparison {
    /// The odds of an error (5xx or no upstream response).
    #[default]
    ErrorRatio,
    /// The odds of a request slower than stable's quantile.
    Latency,
    /// The same at stable's p50, p75, p90 and p99 at once (the least favourable is shown).
    LatencyDistribution,
}

/// The sequential test's decision so far: the judge's own.
pub use plover_analysis::provider::plover::vs_stable::EvidenceDecision;

/// The statistics of one look of a canary-versus-stable test (the measurement's value record,
/// see `analysis/ANALYSIS.md`). Counts are cumulative over the run's looks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EvidenceStatus {
    pub comparison: Comparison,
    pub decision: EvidenceDecision,
    /// `Latency`: stable's quantile the requests are compared with (`p99`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantile: Option<String>,
    /// `Latency`: that quantile's value at the latest look, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_seconds: Option<f64>,
    /// Natural log of the evidence that the canary is worse than allowed (fails at the boundary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_log_evidence: Option<f64>,
    /// Natural log of the evidence that the canary is not worse (passes at the boundary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_log_evidence: Option<f64>,
    /// ln(1/α): either statistic decides when it reaches this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_boundary: Option<f64>,
    /// The false-decision rate the boundary stands for (α/4 per quantile for the distribution).
    pub alpha: f64,
    /// Canary requests compared, and those with the event (an error, or slower than the threshold).
    pub canary_requests: u64,
    pub canary_events: u64,
    pub stable_requests: u64,
    pub stable_events: u64,
    /// Estimated odds ratio of the event, canary over stable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub odds_ratio: Option<f64>,
    /// `ErrorRatio` with an absolute margin: the pass side shows the canary's error rate is not
    /// more than this above stable's (0.005 = half a point).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin: Option<f64>,
    /// The latency judges with an absolute margin: the pass side shows the canary is not
    /// slower than stable by this many seconds at the quantile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_margin_seconds: Option<f64>,
    /// While undecided: about how many more canary requests, at the rates so far, would decide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needed_canary_requests: Option<u64>,
    /// Looks so far in this run.
    #[serde(default)]
    pub looks: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<CanaryPhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Revision (pod template hash) of the canary being rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Revision the stable workload runs (the last one promoted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_revision: Option<String>,
    /// Index of the current step; equal to the number of steps once they are all done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step_index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Time>,
    /// Canary weight last written to the router (%).
    #[serde(default)]
    pub desired_weight: u32,
    /// The `pod-template-hash` of the stable Deployment's current ReplicaSet: the revision its
    /// pods report and the exporter counts them under (`podTemplateHashValue: Stable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_pod_template_hash: Option<String>,
    /// The same for the canary Deployment (`podTemplateHashValue: Latest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_pod_template_hash: Option<String>,
    /// The canary revision's share of the requests the exporter saw over the check window (%),
    /// from the same sample the traffic check judges. Absent until a full window has passed
    /// since the last weight change or the start of the revision, so it never mixes traffic
    /// routed under another weight or to another revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_weight: Option<f64>,
    /// Requests (all revisions) in the sample `observedWeight` comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_requests: Option<u64>,
    /// When `observedWeight` was last recorded. It is refreshed at most every few seconds so
    /// that a live, ever-changing share does not rewrite the status on every reconcile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<Time>,
    /// When `desiredWeight` last changed: the start of the observed-split check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_changed_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<PauseState>,
    /// Since when the rollout has been waiting on something it does not control (the canary's
    /// pods, the observed split); cleared when it moves on. Measured against
    /// `progressDeadlineSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled_since: Option<Time>,
    /// Request to abort (set by `plover abort`, or by the controller on a failed analysis).
    /// `plover retry` clears it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub abort: bool,
    /// When the abort took effect (traffic back on stable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted_at: Option<Time>,
    /// One-shot request from `plover promote`: leave the current pause or step.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub promote: bool,
    /// Request from `plover promote --full`: skip the remaining steps and analysis.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub promote_full: bool,
    /// Request from `plover pause`: hold the rollout at its current step and weight until
    /// `promote` (Argo's `pause`). Background analysis keeps judging meanwhile.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pause_requested: bool,
    /// Incremented by each retry, so analysis runs of a retried revision get new names.
    #[serde(default)]
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_analysis: Option<AnalysisRunStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background_analysis: Option<AnalysisRunStatus>,
    /// The managed routes set by the steps reached (`setHeaderRoute`, `setMirrorRoute`), which
    /// the router writes besides the weights; emptied at promotion, abort and a new revision.
    #[serde(default, skip_serializing_if = "ManagedRoutes::is_empty")]
    pub managed_routes: ManagedRoutes,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Header and mirror routes in force, in the order their steps set them (the router orders
/// them by `spec.trafficRouting.managedRoutes`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ManagedRoutes {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub header: Vec<SetHeaderRoute>,
    /// Each with its `percentage` filled in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirror: Vec<SetMirrorRoute>,
}

impl ManagedRoutes {
    pub fn is_empty(&self) -> bool {
        self.header.is_empty() && self.mirror.is_empty()
    }

    /// Adds or replaces the header route of its name; without matches, removes it.
    pub fn set_header(&mut self, route: &SetHeaderRoute) {
        self.header.retain(|r| r.name != route.name);
        if !route.matches.is_empty() {
            self.header.push(route.clone());
        }
    }

    /// Adds or replaces the mirror route of its name; without matches, removes it.
    pub fn set_mirror(&mut self, route: &SetMirrorRoute) {
        self.mirror.retain(|r| r.name != route.name);
        if !route.matches.is_empty() {
            self.mirror.push(SetMirrorRoute {
                percentage: Some(route.percentage.unwrap_or(100)),
                ..route.clone()
            });
        }
    }
}

/// Condition types, reasons and statuses (linkerd's constant modules).
pub mod conditions {
    /// The spec cannot be acted on; the message names the field.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Stepping through a revision (True) or not (False, with the reason).
    pub const PROGRESSING: &str = "Progressing";
    /// The observed canary share stays away from the desired weight.
    pub const TRAFFIC_SPLIT_MISMATCH: &str = "TrafficSplitMismatch";
    /// The route object cannot take the weights as the spec names it (set by reconcile, the
    /// rim that writes route objects; cleared by the next successful routing).
    pub const TRAFFIC_ROUTING_FAILED: &str = "TrafficRoutingFailed";
    /// The traffic check got no answer from the exporter (the message names its URL and error).
    pub const TRAFFIC_CHECK_FAILED: &str = "TrafficCheckFailed";
}

pub mod reasons {
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const NEW_REVISION: &str = "NewRevision";
    pub const PAUSED: &str = "Paused";
    pub const PROMOTING: &str = "Promoting";
    pub const PROMOTED: &str = "Promoted";
    pub const ABORTED: &str = "RolloutAborted";
    pub const ANALYSIS_FAILED: &str = "AnalysisFailed";
    pub const ANALYSIS_INCONCLUSIVE: &str = "AnalysisInconclusive";
    pub const SPLIT_MISMATCH: &str = "SplitMismatch";
    pub const WORKLOAD_NOT_FOUND: &str = "WorkloadNotFound";
    pub const ROUTE_NOT_WRITABLE: &str = "RouteNotWritable";
    pub const EXPORTER_UNREACHABLE: &str = "ExporterUnreachable";
    pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
    pub const PROGRESS_RESUMED: &str = "ProgressResumed";
}

impl CanaryStatus {
    /// Names of the analysis runs this status still refers to (the step's and the background
    /// one): every other run of the Canary may be stopped.
    /// The step as every view and message numbers it: the step being run, from 1 (`3/8`);
    /// `8/8 done` once all are; `-` before a rollout.
    pub fn step_label(&self, steps: usize) -> String {
        match self.current_step_index {
            None => "-".to_owned(),
            Some(i) if (i as usize) < steps => format!("{}/{steps}", i + 1),
            Some(_) => format!("{steps}/{steps} done"),
        }
    }

    pub fn analysis_runs_in_use(&self) -> Vec<&str> {
        [&self.step_analysis, &self.background_analysis]
            .into_iter()
            .flatten()
            .map(|r| r.name.as_str())
            .collect()
    }

    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Sets a condition; `lastTransitionTime` moves only when `status` changes, so an unchanged
    /// condition writes an unchanged status (no watch event, no hot loop).
    pub fn set_condition(
        &mut self,
        type_: &str,
        status: bool,
        reason: &str,
        message: &str,
        now: &Time,
        generation: Option<i64>,
    ) {
        let status_text = if status { "True" } else { "False" };
        match self.conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(c) => {
                if c.status != status_text {
                    c.last_transition_time = now.clone();
                }
                c.status = status_text.to_owned();
                c.reason = reason.to_owned();
                c.message = message.to_owned();
                c.observed_generation = generation;
            }
            None => self.conditions.push(Condition {
                type_: type_.to_owned(),
                status: status_text.to_owned(),
                reason: reason.to_owned(),
                message: message.to_owned(),
                last_transition_time: now.clone(),
                observed_generation: generation,
            }),
        }
    }

    pub fn remove_condition(&mut self, type_: &str) {
        self.conditions.retain(|c| c.type_ != type_);
    }

    pub fn is_condition_true(&self, type_: &str) -> bool {
        self.condition(type_).is_some_and(|c| c.status == "True")
    }
}
