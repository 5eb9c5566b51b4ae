//! Decision table: one scenario per row of the rollout's behaviour, each a sequence of
//! observations fed through `decide` with the status carried over, as reconcile does.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;
use crate::canary::{spec::*, status::AnalysisPhase};

const T0: i64 = 1_800_000_000;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(T0 + seconds).unwrap()
}

fn weight(w: i32) -> CanaryStep {
    CanaryStep {
        set_weight: Some(w),
        ..Default::default()
    }
}

fn pause(duration: Option<&str>) -> CanaryStep {
    CanaryStep {
        pause: Some(PauseStep {
            duration: duration.map(|d| IntOrString::String(d.into())),
        }),
        ..Default::default()
    }
}

fn analysis(template: &str) -> CanaryStep {
    CanaryStep {
        analysis: Some(AnalysisSource {
            templates: vec![AnalysisTemplateRef {
                template_name: template.into(),
                cluster_scope: false,
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn spec(steps: Vec<CanaryStep>) -> CanarySpec {
    CanarySpec {
        workload: WorkloadRef {
            stable: "podinfo".into(),
            canary: "podinfo-canary".into(),
        },
        traffic_routing: TrafficRouting {
            istio: Some(IstioRouting {
                virtual_service: VirtualServiceRef {
                    name: "podinfo".into(),
                    routes: vec!["primary".into()],
                },
                stable_service: Some("podinfo-stable".into()),
                canary_service: Some("podinfo-canary".into()),
                destination_rule: None,
            }),
            ..Default::default()
        },
        steps,
        ..Default::default()
    }
}

/// The world around one Canary; `tick` runs `decide` and carries the status over.
struct World {
    spec: CanarySpec,
    status: CanaryStatus,
    stable: WorkloadState,
    canary: WorkloadState,
    traffic: Option<TrafficObservation>,
    traffic_error: Option<String>,
    analyses: BTreeMap<String, Verdict>,
    analysis_problem: Option<String>,
    now: i64,
}

impl World {
    /// Stable runs `v1`, the canary was just changed to `v2`.
    fn new(spec: CanarySpec) -> Self {
        World {
            spec,
            status: CanaryStatus::default(),
            stable: WorkloadState::ready("v1"),
            canary: WorkloadState::ready("v2"),
            traffic: None,
            traffic_error: None,
            analyses: BTreeMap::new(),
            analysis_problem: None,
            now: 0,
        }
    }

    fn tick(&mut self) -> Decision {
        let obs = Observation {
            name: "podinfo",
            generation: Some(1),
            spec: &self.spec,
            status: &self.status,
            stable: self.stable.clone(),
            canary: self.canary.clone(),
            traffic: self.traffic,
            traffic_error: self.traffic_error.clone(),
            analyses: &self.analyses,
            analysis_problem: self.analysis_problem.clone(),
            now: at(self.now),
        };
        let d = decide(&obs);
        self.status = d.status.clone();
        d
    }

    fn tick_at(&mut self, seconds: i64) -> Decision {
        self.now = seconds;
        self.tick()
    }
}

fn events(d: &Decision) -> Vec<&'static str> {
    d.actions
        .iter()
        .filter_map(|a| {
            if let Action::Event { reason, .. } = a {
                Some(*reason)
            } else {
                None
            }
        })
        .collect()
}

fn started(d: &Decision) -> Vec<String> {
    d.actions
        .iter()
        .filter_map(|a| {
            if let Action::StartAnalysis { name, .. } = a {
                Some(name.clone())
            } else {
                None
            }
        })
        .collect()
}

fn stopped(d: &Decision) -> Vec<String> {
    d.actions
        .iter()
        .filter_map(|a| {
            if let Action::StopAnalysis { name } = a {
                Some(name.clone())
            } else {
                None
            }
        })
        .collect()
}

fn promoted(d: &Decision) -> bool {
    d.actions
        .iter()
        .any(|a| matches!(a, Action::PromoteWorkload { .. }))
}

#[test]
fn first_sight_of_equal_templates_is_healthy_and_routes_to_stable() {
    let mut w = World::new(spec(vec![weight(20)]));
    w.canary = WorkloadState::ready("v1");
    let d = w.tick();
    assert_eq!(d.weights(), Some((0, 100)));
    assert_eq!(d.status.phase, Some(CanaryPhase::Healthy));
    assert_eq!(d.status.current_step_index, None);
    assert!(events(&d).is_empty(), "{:?}", d.actions);
    assert_eq!(d.requeue_after, None);
}

#[test]
fn start_sets_the_first_weight_and_stops_at_an_indefinite_pause() {
    let mut w = World::new(spec(vec![weight(20), pause(None), weight(50)]));
    let d = w.tick();
    assert_eq!(events(&d), vec![reasons::NEW_REVISION]);
    assert_eq!(d.weights(), Some((20, 80)));
    assert_eq!(d.status.revision.as_deref(), Some("v2"));
    assert_eq!(d.status.stable_revision.as_deref(), Some("v1"));
    assert_eq!(d.status.current_step_index, Some(1));
    assert_eq!(d.status.phase, Some(CanaryPhase::Paused));
    assert_eq!(
        d.status.pause.as_ref().map(|p| p.reason),
        Some(PauseReason::CanaryPauseStep)
    );
    assert_eq!(
        d.requeue_after, None,
        "an indefinite pause waits for promote, not for time"
    );

    // Nothing changes on its own: same decision, no new event.
    let again = w.tick_at(600);
    assert_eq!(again.weights(), Some((20, 80)));
    assert!(events(&again).is_empty());
    assert_eq!(again.status.current_step_index, Some(1));
}

#[test]
fn promote_resumes_an_indefinite_pause_and_steps_forward() {
    let mut w = World::new(spec(vec![
        weight(20),
        pause(None),
        weight(50),
        pause(Some("1m")),
    ]));
    w.tick();
    w.status.promote = true; // `plover promote`
    let d = w.tick_at(10);
    assert!(!d.status.promote, "the request is consumed");
    assert_eq!(d.weights(), Some((50, 50)));
    assert_eq!(d.status.current_step_index, Some(3));
    assert_eq!(d.status.phase, Some(CanaryPhase::Paused));
    assert_eq!(d.status.desired_weight, 50);
    assert_eq!(
        d.requeue_after,
        Some(Duration::from_secs(60)),
        "requeue when the timed pause ends"
    );
}

#[test]
fn pause_holds_the_step_and_weight_until_promote_resumes() {
    let mut w = World::new(spec(vec![weight(20), pause(Some("30s")), weight(60)]));
    w.tick();
    w.status.pause_requested = true; // `plover pause`
    let d = w.tick_at(10);
    assert_eq!(d.status.phase, Some(CanaryPhase::Paused));
    assert_eq!(
        d.status.pause.as_ref().map(|p| p.reason),
        Some(PauseReason::PausedByUser)
    );
    assert_eq!(d.weights(), Some((20, 80)));
    assert_eq!(events(&d), vec![reasons::PAUSED]);
    // The timed pause step would have ended at 30 s: held.
    let d = w.tick_at(120);
    assert_eq!(d.status.current_step_index, Some(1));
    assert_eq!(d.weights(), Some((20, 80)));
    assert!(events(&d).is_empty(), "told once");
    // `promote` resumes: the timed pause, long over, ends and the next weight is set.
    w.status.promote = true;
    let d = w.tick_at(130);
    assert!(!d.status.pause_requested && !d.status.promote);
    assert_eq!(d.weights(), Some((60, 40)));
    assert!(events(&d).contains(&reasons::PROGRESS_RESUMED));
}

#[test]
fn a_timed_pause_ends_by_itself() {
    let mut w = World::new(spec(vec![weight(10), pause(Some("30s")), weight(40)]));
    let d = w.tick();
    assert_eq!(d.requeue_after, Some(Duration::from_secs(30)));
    let d = w.tick_at(20);
    assert_eq!(d.status.current_step_index, Some(1));
    assert_eq!(d.requeue_after, Some(Duration::from_secs(10)));
    let d = w.tick_at(30);
    assert_eq!(d.weights(), Some((40, 60)));
    assert_eq!(
        d.status.current_step_index,
        Some(3),
        "setWeight 40 completes at once without a traffic check"
    );
    assert!(promoted(&d), "after the last step the canary is promoted");
}

#[test]
fn inline_analysis_blocks_its_step_until_successful() {
    let mut w = World::new(spec(vec![weight(20), analysis("success-rate"), weight(60)]));
    let d = w.tick();
    let run = "podinfo-v2-0-step1".to_owned();
    assert_eq!(started(&d), vec![run.clone()]);
    assert_eq!(d.status.current_step_index, Some(1));
    assert_eq!(
        d.status.step_analysis.as_ref().map(|r| r.name.clone()),
        Some(run.clone())
    );
    assert_eq!(d.requeue_after, Some(POLL_INTERVAL));

    w.analyses
        .insert(run.clone(), Verdict::of(Phase::Running, ""));
    let d = w.tick_at(10);
    assert!(started(&d).is_empty(), "a known run is not started twice");
    assert_eq!(d.status.current_step_index, Some(1));
    assert_eq!(d.weights(), Some((20, 80)));

    w.analyses.insert(
        run.clone(),
        Verdict {
            successful: 3,
            ..Verdict::of(Phase::Successful, "")
        },
    );
    let d = w.tick_at(20);
    assert_eq!(d.weights(), Some((60, 40)));
    assert_eq!(
        d.status
            .step_analysis
            .as_ref()
            .map(|r| (r.phase, r.successful)),
        Some((AnalysisPhase::Successful, 3))
    );
    assert!(promoted(&d));
}

#[test]
fn the_latest_measurements_are_recorded_and_rewritten_only_when_they_change() {
    use crate::canary::status::{MeasurementStatus, MetricStatus};
    let mut w = World::new(spec(vec![weight(20), analysis("vs-stable"), weight(60)]));
    w.tick();
    let run = "podinfo-v2-0-step1".to_owned();
    let measured = |phase: AnalysisPhase, message: &str| MetricStatus {
        name: "errors-vs-stable".into(),
        phase: AnalysisPhase::Running,
        latest: Some(MeasurementStatus {
            phase,
            message: Some(message.into()),
            ..Default::default()
        }),
        counts: Default::default(),
    };
    w.analyses.insert(
        run.clone(),
        Verdict {
            inconclusive: 1,
            metrics: vec![measured(AnalysisPhase::Inconclusive, "look 1")],
            ..Verdict::of(Phase::Running, "")
        },
    );
    let first = w.tick_at(10).status;
    let recorded = |s: &CanaryStatus| s.step_analysis.as_ref().map(|r| r.metrics.clone());
    assert_eq!(
        recorded(&first),
        Some(vec![measured(AnalysisPhase::Inconclusive, "look 1")])
    );
    // Later reconciles with no new measurement decide the same status: nothing to write.
    for t in [11, 15, 40] {
        assert_eq!(w.tick_at(t).status, first, "at {t}s");
    }
    // A new measurement changes it.
    w.analyses.get_mut(&run).unwrap().metrics =
        vec![measured(AnalysisPhase::Inconclusive, "look 2")];
    let second = w.tick_at(41).status;
    assert_ne!(second, first);
    assert_eq!(
        recorded(&second),
        Some(vec![measured(AnalysisPhase::Inconclusive, "look 2")])
    );
}

#[test]
fn failed_inline_analysis_rolls_back_at_once() {
    let mut w = World::new(spec(vec![weight(20), analysis("success-rate"), weight(60)]));
    w.tick();
    let message = "Metric \"success-rate\" assessed Failed due to failed (1) > failureLimit (0)";
    w.analyses.insert(
        "podinfo-v2-0-step1".into(),
        Verdict {
            failed: 1,
            ..Verdict::of(Phase::Failed, message)
        },
    );
    let d = w.tick_at(30);
    assert_eq!(d.weights(), Some((0, 100)));
    assert_eq!(d.status.phase, Some(CanaryPhase::Degraded));
    assert_eq!(
        d.status.message.as_deref(),
        Some(format!("RolloutAborted: {message}").as_str())
    );
    assert!(d.status.abort);
    assert_eq!(events(&d), vec![reasons::ANALYSIS_FAILED, reasons::ABORTED]);
    assert!(d.actions.iter().any(|a| matches!(a, Action::Event { warning: true, reason, message: m } if *reason == reasons::ABORTED && m.contains(message))));
    assert_eq!(d.requeue_after, None);
    let cond = d.status.condition(conditions::PROGRESSING).unwrap();
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("False", reasons::ABORTED)
    );

    // Level-triggered and quiet afterwards: same weights, no more events.
    let d = w.tick_at(60);
    assert_eq!(d.weights(), Some((0, 100)));
    assert!(events(&d).is_empty());
    assert_eq!(d.status.phase, Some(CanaryPhase::Degraded));
}

#[test]
fn error_analysis_also_rolls_back() {
    let mut w = World::new(spec(vec![analysis("latency"), weight(60)]));
    w.tick();
    w.analyses.insert("podinfo-v2-0-step0".into(), Verdict::of(Phase::Error, "Metric \"p99\" assessed Error due to consecutiveErrors (5) > consecutiveErrorLimit (4)"));
    let d = w.tick_at(5);
    assert_eq!(d.weights(), Some((0, 100)));
    assert_eq!(d.status.phase, Some(CanaryPhase::Degraded));
}

#[test]
fn inconclusive_analysis_pauses_and_promote_accepts_it() {
    let mut w = World::new(spec(vec![
        weight(20),
        analysis("success-rate"),
        weight(60),
        pause(None),
    ]));
    w.tick();
    w.analyses.insert(
        "podinfo-v2-0-step1".into(),
        Verdict::of(
            Phase::Inconclusive,
            "Metric \"m\" assessed Inconclusive due to inconclusive (1) > inconclusiveLimit (0)",
        ),
    );
    let d = w.tick_at(10);
    assert_eq!(d.status.phase, Some(CanaryPhase::Paused));
    assert_eq!(
        d.status.pause.as_ref().map(|p| p.reason),
        Some(PauseReason::InconclusiveAnalysisRun)
    );
    assert_eq!(
        d.weights(),
        Some((20, 80)),
        "inconclusive holds the weight, it does not roll back"
    );
    assert_eq!(events(&d), vec![reasons::ANALYSIS_INCONCLUSIVE]);
    assert!(
        w.tick_at(20)
            .actions
            .iter()
            .all(|a| !matches!(a, Action::Event { .. })),
        "one event per pause"
    );

    w.status.promote = true;
    let d = w.tick_at(30);
    assert_eq!(d.weights(), Some((60, 40)));
    assert_eq!(d.status.current_step_index, Some(3));
    assert_eq!(
        d.status.pause.as_ref().map(|p| p.reason),
        Some(PauseReason::CanaryPauseStep)
    );
}

#[test]
fn background_analysis_starts_at_its_starting_step_and_rolls_back_on_failure() {
    let mut s = spec(vec![
        weight(10),
        pause(None),
        weight(30),
        pause(None),
        weight(50),
    ]);
    s.analysis = Some(BackgroundAnalysis {
        starting_step: Some(2),
        templates: vec![AnalysisTemplateRef {
            template_name: "error-rate".into(),
            cluster_scope: false,
        }],
        ..Default::default()
    });
    let mut w = World::new(s);
    let d = w.tick();
    assert!(started(&d).is_empty(), "before startingStep");
    assert_eq!(d.status.current_step_index, Some(1));

    w.status.promote = true;
    let d = w.tick_at(10);
    assert_eq!(d.status.current_step_index, Some(3));
    let bg = "podinfo-v2-0-background".to_owned();
    assert_eq!(started(&d), vec![bg.clone()]);
    assert_eq!(d.weights(), Some((30, 70)));

    w.analyses
        .insert(bg.clone(), Verdict::of(Phase::Running, ""));
    let d = w.tick_at(20);
    assert!(started(&d).is_empty());
    assert_eq!(d.status.phase, Some(CanaryPhase::Paused));

    let message = "Metric \"error-rate\" assessed Failed due to failed (1) > failureLimit (0)";
    w.analyses
        .insert(bg.clone(), Verdict::of(Phase::Failed, message));
    let d = w.tick_at(30);
    assert_eq!(d.weights(), Some((0, 100)));
    assert_eq!(d.status.phase, Some(CanaryPhase::Degraded));
    assert_eq!(
        d.status.message.as_deref(),
        Some(format!("RolloutAborted: {message}").as_str())
    );
    assert_eq!(
        d.status.background_analysis.as_ref().map(|r| r.phase),
        Some(AnalysisPhase::Failed)
    );
}

#[test]
fn inconclusive_background_analysis_pauses_and_promote_starts_a_fresh_run() {
    let mut s = spec(vec![weight(10), pause(Some("10m")), weight(50)]);
    s.analysis = Some(BackgroundAnalysis {
        templates: vec![AnalysisTemplateRef {
            template_name: "error-rate".into(),
            cluster_scope: false,
        }],
        ..Default::default()
    });
    let mut w = World::new(s);
    let d = w.tick();
    assert_eq!(started(&d), vec!["podinfo-v2-0-background".to_owned()]);
    w.analyses.insert(
        "podinfo-v2-0-background".into(),
        Verdict::of(Phase::Inconclusive, "too few requests"),
    );
    let d = w.tick_at(10);
    assert_eq!(
        d.status.pause.as_ref().map(|p| p.reason),
        Some(PauseReason::InconclusiveAnalysisRun)
    );
    w.status.promote = true;
    let d = w.tick_at(20);
    assert_eq!(started(&d), vec!["podinfo-v2-0-background-1".to_owned()]);
    assert_eq!(
        d.status.pause.as_ref().map(|p| p.reason),
        Some(PauseReason::CanaryPauseStep),
        "back in the timed pause"
    );
    assert_eq!(d.status.current_step_index, Some(1));
}

#[test]
fn promotion_copies_the_template_waits_for_stable_then_routes_all_to_stable() {
    let mut w = World::new(spec(vec![weight(50)]));
    let d = w.tick();
    assert_eq!(
        d.weights(),
        Some((50, 50)),
        "the canary keeps its share while stable rolls out"
    );
    assert!(promoted(&d));
    assert_eq!(d.status.phase, Some(CanaryPhase::Promoting));
    assert_eq!(events(&d), vec![reasons::NEW_REVISION, reasons::PROMOTING]);

    // The stable Deployment took the template but is still rolling out.
    w.stable = rolling_out("v2");
    let d = w.tick_at(5);
    assert_eq!(d.weights(), Some((50, 50)));
    assert_eq!(d.status.phase, Some(CanaryPhase::Promoting));
    assert!(!promoted(&d));

    w.stable.rolled_out = true;
    let d = w.tick_at(10);
    assert_eq!(d.weights(), Some((0, 100)));
    assert_eq!(d.status.phase, Some(CanaryPhase::Healthy));
    assert_eq!(events(&d), vec![reasons::PROMOTED]);
    assert_eq!(d.requeue_after, None);
    assert_eq!(d.status.stable_revision.as_deref(), Some("v2"));
}

#[test]
fn promote_full_skips_remaining_steps_and_analysis() {
    let mut s = spec(vec![
        weight(10),
        analysis("success-rate"),
        weight(50),
        pause(None),
    ]);
    s.analysis = Some(BackgroundAnalysis {
        templates: vec![AnalysisTemplateRef {
            template_name: "bg".into(),
            cluster_scope: false,
        }],
        ..Default::default()
    });
    let mut w = World::new(s);
    w.tick();
    w.analyses
        .insert("podinfo-v2-0-step1".into(), Verdict::of(Phase::Running, ""));
    w.analyses.insert(
        "podinfo-v2-0-background".into(),
        Verdict::of(Phase::Running, ""),
    );
    w.tick_at(5);
    w.status.promote_full = true;
    let d = w.tick_at(10);
    assert!(promoted(&d));
    assert_eq!(d.status.current_step_index, Some(4));
    let mut stops = stopped(&d);
    stops.sort();
    assert_eq!(
        stops,
        vec![
            "podinfo-v2-0-background".to_owned(),
            "podinfo-v2-0-step1".to_owned()
        ]
    );
}

#[test]
fn restart_mid_rollout_resumes_at_the_recorded_step() {
    let mut w = World::new(spec(vec![
        weight(20),
        pause(None),
        weight(40),
        analysis("success-rate"),
        weight(80),
    ]));
    w.tick();
    w.status.promote = true;
    let d = w.tick_at(10);
    assert_eq!(d.status.current_step_index, Some(3));
    let run = "podinfo-v2-0-step3".to_owned();
    assert_eq!(started(&d), vec![run.clone()]);
    w.analyses
        .insert(run.clone(), Verdict::of(Phase::Running, ""));
    w.tick_at(15);

    // The controller restarts: only the status survives, the runner knows no runs.
    w.analyses.clear();
    let d = w.tick_at(100);
    assert_eq!(
        d.status.current_step_index,
        Some(3),
        "resumes at the recorded step"
    );
    assert_eq!(
        d.weights(),
        Some((40, 60)),
        "the recorded weight is enforced again"
    );
    assert_eq!(
        started(&d),
        vec![run],
        "the lost analysis run is started again under its name"
    );
    assert!(events(&d).is_empty(), "no new revision");
}

#[test]
fn abort_routes_to_stable_and_retry_starts_over() {
    let mut w = World::new(spec(vec![weight(20), analysis("success-rate"), weight(60)]));
    w.tick();
    w.analyses
        .insert("podinfo-v2-0-step1".into(), Verdict::of(Phase::Running, ""));
    w.status.abort = true; // `plover abort`
    let d = w.tick_at(10);
    assert_eq!(d.weights(), Some((0, 100)));
    assert_eq!(d.status.phase, Some(CanaryPhase::Degraded));
    assert_eq!(
        d.status.message.as_deref(),
        Some("RolloutAborted: rollout aborted")
    );
    assert_eq!(stopped(&d), vec!["podinfo-v2-0-step1".to_owned()]);
    assert_eq!(events(&d), vec![reasons::ABORTED]);
    assert!(d.status.aborted_at.is_some());
    assert!(events(&w.tick_at(20)).is_empty());

    w.status.abort = false; // `plover retry`
    let d = w.tick_at(30);
    assert_eq!(d.status.attempt, 1);
    assert_eq!(d.status.aborted_at, None);
    assert_eq!(d.status.current_step_index, Some(1));
    assert_eq!(
        started(&d),
        vec!["podinfo-v2-1-step1".to_owned()],
        "a retry gets fresh run names"
    );
    assert_eq!(d.weights(), Some((20, 80)));
    assert_eq!(d.status.phase, Some(CanaryPhase::Progressing));
}

#[test]
fn a_new_revision_mid_rollout_starts_over() {
    let mut w = World::new(spec(vec![weight(20), analysis("a"), weight(60)]));
    w.tick();
    w.analyses
        .insert("podinfo-v2-0-step1".into(), Verdict::of(Phase::Running, ""));
    w.canary = WorkloadState::ready("v3");
    let d = w.tick_at(10);
    assert_eq!(stopped(&d), vec!["podinfo-v2-0-step1".to_owned()]);
    assert_eq!(started(&d), vec!["podinfo-v3-0-step1".to_owned()]);
    assert_eq!(d.status.revision.as_deref(), Some("v3"));
    assert_eq!(events(&d), vec![reasons::NEW_REVISION]);
}

#[test]
fn invalid_spec_sets_a_condition_routes_nothing_and_does_not_hot_loop() {
    let mut s = spec(vec![weight(120)]);
    s.traffic_routing.gateway_api = Some(GatewayApiRouting {
        http_route: "r".into(),
        stable_service: "a".into(),
        canary_service: "b".into(),
        rules: vec![],
    });
    let mut w = World::new(s);
    let d = w.tick();
    assert_eq!(d.weights(), None);
    assert_eq!(d.requeue_after, None);
    assert_eq!(d.status.phase, Some(CanaryPhase::Degraded));
    let cond = d.status.condition(conditions::INVALID_SPEC).unwrap();
    assert_eq!(cond.status, "True");
    assert!(
        cond.message
            .contains("spec.trafficRouting: must set only one of istio, gatewayAPI, envoy"),
        "{}",
        cond.message
    );
    assert!(
        cond.message
            .contains("spec.steps[0].setWeight: 120 is not between 0 and 100"),
        "{}",
        cond.message
    );
    assert_eq!(events(&d), vec![reasons::INVALID_SPEC]);

    let again = w.tick_at(300);
    assert!(again.actions.is_empty(), "{:?}", again.actions);
    assert_eq!(
        again.status, d.status,
        "an unchanged status is not written again"
    );
    assert_eq!(again.requeue_after, None);

    // Fixing the spec clears the condition and starts the rollout.
    w.spec.traffic_routing.gateway_api = None;
    w.spec.steps = vec![weight(20)];
    let d = w.tick_at(400);
    assert!(d.status.condition(conditions::INVALID_SPEC).is_none());
    assert_eq!(d.weights(), Some((20, 80)));
}

#[test]
fn missing_workload_is_reported_and_retried_slowly() {
    let mut w = World::new(spec(vec![weight(20)]));
    w.canary = WorkloadState::default();
    let d = w.tick();
    assert_eq!(d.weights(), None);
    assert_eq!(d.requeue_after, Some(MISSING_WORKLOAD_RETRY));
    assert_eq!(
        d.status.message.as_deref(),
        Some("workload \"podinfo-canary\" not found")
    );
}

fn with_check(steps: Vec<CanaryStep>) -> CanarySpec {
    let mut s = spec(steps);
    s.traffic_check = Some(TrafficCheck {
        exporter: "http://exporter:9464".into(),
        window: Some("30s".into()),
        tolerance: Some(5),
        min_requests: Some(100),
        mismatch_after: Some("2m".into()),
        ..Default::default()
    });
    s
}

#[test]
fn a_weight_step_completes_only_when_the_observed_split_matches() {
    let mut w = World::new(with_check(vec![weight(20), weight(50)]));
    w.traffic = Some(TrafficObservation {
        canary_requests: 0,
        requests: 1000,
        lost_requests: 0,
    });
    let d = w.tick();
    assert_eq!(d.weights(), Some((20, 80)));
    assert_eq!(d.status.current_step_index, Some(0));
    assert_eq!(d.requeue_after, Some(POLL_INTERVAL));

    // A full window after the change, the exporter sees the new split.
    w.traffic = Some(TrafficObservation {
        canary_requests: 213,
        requests: 1000,
        lost_requests: 0,
    });
    let d = w.tick_at(10);
    assert_eq!(
        d.status.current_step_index,
        Some(0),
        "the window still holds traffic from before the change"
    );
    let d = w.tick_at(31);
    assert_eq!(d.status.current_step_index, Some(1));
    assert_eq!(d.weights(), Some((50, 50)));
    assert_eq!(
        d.status.observed_weight, None,
        "no sample at the new weight yet: the last one was of weight 20"
    );
}

#[test]
fn a_split_with_known_losses_is_not_judged() {
    // Issue 17, item 1: the exporter says requests were lost in the window; the step waits,
    // saying why, instead of taking the counts as the whole truth.
    let mut w = World::new(with_check(vec![weight(20), weight(50)]));
    w.traffic = Some(TrafficObservation {
        canary_requests: 200,
        requests: 1000,
        lost_requests: 40,
    });
    w.tick();
    let d = w.tick_at(200);
    assert_eq!(d.status.current_step_index, Some(0));
    let mismatch = d
        .status
        .condition(conditions::TRAFFIC_SPLIT_MISMATCH)
        .expect("said");
    assert!(
        mismatch.message.starts_with("40 requests lost (dropped by a gateway or refused by the exporter) may belong to the last 30s"),
        "{}",
        mismatch.message
    );
    w.traffic = Some(TrafficObservation {
        lost_requests: 0,
        ..w.traffic.unwrap()
    });
    assert_eq!(w.tick_at(210).status.current_step_index, Some(1));
}

#[test]
fn the_observed_weight_is_of_the_current_weight_and_revision_or_absent() {
    let mut w = World::new(with_check(vec![weight(20), pause(None)]));
    w.traffic = Some(TrafficObservation {
        canary_requests: 930,
        requests: 1000,
        lost_requests: 0,
    });
    // The exporter's window still holds the previous release's traffic: not shown.
    let d = w.tick();
    assert_eq!(d.status.observed_weight, None);
    assert_eq!(w.tick_at(29).status.observed_weight, None);
    w.traffic = Some(TrafficObservation {
        canary_requests: 196,
        requests: 1000,
        lost_requests: 0,
    });
    let d = w.tick_at(30);
    assert_eq!(
        (d.status.observed_weight, d.status.observed_requests),
        (Some(19.6), Some(1000))
    );
    // Paused at 20%: the share stays observed.
    assert_eq!(w.tick_at(100).status.observed_weight, Some(19.6));
    // A new revision starts: the old share is cleared at once.
    w.canary = WorkloadState::ready("v3");
    let d = w.tick_at(110);
    assert_eq!(d.status.revision.as_deref(), Some("v3"));
    assert_eq!(
        (d.status.observed_weight, d.status.observed_requests),
        (None, None)
    );
}

#[test]
fn a_persistent_mismatch_is_reported_as_a_condition_once() {
    let mut w = World::new(with_check(vec![weight(20), weight(50)]));
    w.traffic = Some(TrafficObservation {
        canary_requests: 0,
        requests: 1000,
        lost_requests: 0,
    });
    w.tick();
    let d = w.tick_at(60);
    assert!(
        d.status
            .condition(conditions::TRAFFIC_SPLIT_MISMATCH)
            .is_none(),
        "not before mismatchAfter"
    );
    let d = w.tick_at(121);
    let cond = d
        .status
        .condition(conditions::TRAFFIC_SPLIT_MISMATCH)
        .unwrap();
    assert_eq!(cond.status, "True");
    assert_eq!(
        cond.message,
        "observed canary share 0.0% (0 of 1000 requests in the last 30s); desired 20%: more than 5 points off, and beyond chance (binomial test at α 0.001)"
    );
    assert_eq!(events(&d), vec![reasons::SPLIT_MISMATCH]);
    assert_eq!(
        d.status.current_step_index,
        Some(0),
        "the step does not complete"
    );
    assert!(events(&w.tick_at(130)).is_empty());

    w.traffic = Some(TrafficObservation {
        canary_requests: 190,
        requests: 1000,
        lost_requests: 0,
    });
    let d = w.tick_at(140);
    assert!(d
        .status
        .condition(conditions::TRAFFIC_SPLIT_MISMATCH)
        .is_none());
    assert_eq!(d.status.current_step_index, Some(1));
}

#[test]
fn a_small_weight_is_not_confirmed_while_the_canary_receives_nothing() {
    // 0 of 1,000 is within 5 points of 2%, but no 2% split gives it.
    let mut w = World::new(with_check(vec![weight(2), weight(50)]));
    w.traffic = Some(TrafficObservation {
        canary_requests: 0,
        requests: 1000,
        lost_requests: 0,
    });
    w.tick();
    let d = w.tick_at(121);
    assert_eq!(d.status.current_step_index, Some(0));
    let cond = d
        .status
        .condition(conditions::TRAFFIC_SPLIT_MISMATCH)
        .expect("mismatch reported");
    assert!(
        cond.message.contains("desired 2%: more than 1 points off"),
        "{}",
        cond.message
    );
    // A count a 2% split gives by chance confirms it.
    w.traffic = Some(TrafficObservation {
        canary_requests: 14,
        requests: 1000,
        lost_requests: 0,
    });
    assert_eq!(w.tick_at(130).status.current_step_index, Some(1));
}

#[test]
fn too_little_traffic_cannot_confirm_the_split() {
    let mut w = World::new(with_check(vec![weight(20)]));
    w.traffic = Some(TrafficObservation {
        canary_requests: 2,
        requests: 12,
        lost_requests: 0,
    });
    w.tick();
    let d = w.tick_at(60);
    assert_eq!(d.status.current_step_index, Some(0));
    w.traffic = None;
    let d = w.tick_at(200);
    let cond = d
        .status
        .condition(conditions::TRAFFIC_SPLIT_MISMATCH)
        .unwrap();
    assert_eq!(
        cond.message,
        "no answer from the exporter at http://exporter:9464"
    );
}

#[test]
fn promote_skips_a_running_analysis_step() {
    let mut w = World::new(spec(vec![analysis("slow"), weight(30), pause(None)]));
    w.tick();
    w.analyses
        .insert("podinfo-v2-0-step0".into(), Verdict::of(Phase::Running, ""));
    w.status.promote = true;
    let d = w.tick_at(5);
    assert_eq!(stopped(&d), vec!["podinfo-v2-0-step0".to_owned()]);
    assert_eq!(d.status.current_step_index, Some(2));
    assert_eq!(d.weights(), Some((30, 70)));
}

#[test]
fn an_edited_router_is_put_right_because_weights_are_always_stated() {
    let mut w = World::new(spec(vec![weight(25), pause(None)]));
    w.tick();
    for t in [10, 20, 30] {
        assert_eq!(w.tick_at(t).weights(), Some((25, 75)));
    }
}

#[test]
fn a_live_share_does_not_rewrite_the_status_on_every_reconcile() {
    let mut w = World::new(with_check(vec![weight(20), weight(50)]));
    w.traffic = Some(TrafficObservation {
        canary_requests: 30,
        requests: 1000,
        lost_requests: 0,
    });
    w.tick();
    let first = w.tick_at(200);
    assert_eq!(first.status.observed_weight, Some(3.0));
    assert!(first
        .status
        .condition(conditions::TRAFFIC_SPLIT_MISMATCH)
        .is_some());
    // The reconcile our own status write triggers, a moment later, with slightly other numbers.
    w.traffic = Some(TrafficObservation {
        canary_requests: 34,
        requests: 1012,
        lost_requests: 0,
    });
    let again = w.tick_at(201);
    assert_eq!(
        again.status, first.status,
        "nothing new to write within the refresh interval"
    );
    let later = w.tick_at(206);
    assert_eq!(later.status.observed_weight, Some(3.4));
    let cond = later
        .status
        .condition(conditions::TRAFFIC_SPLIT_MISMATCH)
        .unwrap();
    assert!(
        cond.message.contains("3.4% (34 of 1012 requests"),
        "{}",
        cond.message
    );
}

/// A canary Deployment still rolling out its new revision.
fn rolling_out(revision: &str) -> WorkloadState {
    WorkloadState {
        rolled_out: false,
        ..WorkloadState::ready(revision)
    }
}

#[test]
fn no_weight_goes_to_a_canary_that_has_not_rolled_out() {
    let mut w = World::new(spec(vec![weight(20), pause(None)]));
    w.canary = rolling_out("v2");
    let d = w.tick();
    assert_eq!(d.weights(), Some((0, 100)));
    assert_eq!(d.status.current_step_index, Some(0));
    assert_eq!(d.status.phase, Some(CanaryPhase::Progressing));
    assert!(
        d.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("waiting for podinfo-canary to roll out revision v2")),
        "{:?}",
        d.status.message
    );
    assert!(
        d.requeue_after.is_some(),
        "looked at again, not only on a watch event"
    );
    // Still rolling out: still nothing, and no repeated event.
    let again = w.tick_at(5);
    assert_eq!(again.weights(), Some((0, 100)));
    assert!(events(&again).is_empty());
    w.canary.rolled_out = true;
    let d = w.tick_at(6);
    assert_eq!(d.weights(), Some((20, 80)));
    assert_eq!(d.status.current_step_index, Some(1));
}

#[test]
fn a_new_revision_mid_rollout_gets_no_traffic_until_it_has_rolled_out() {
    let mut w = World::new(spec(vec![weight(60), pause(None)]));
    assert_eq!(w.tick().weights(), Some((60, 40)));
    w.canary = rolling_out("v3");
    let d = w.tick_at(10);
    assert_eq!(d.status.revision.as_deref(), Some("v3"));
    assert_eq!(
        d.weights(),
        Some((0, 100)),
        "the previous revision's 60% must not go to pods of the new one"
    );
    w.canary.rolled_out = true;
    assert_eq!(w.tick_at(11).weights(), Some((60, 40)));
}

#[test]
fn an_exporter_that_does_not_answer_is_said_at_once() {
    let mut w = World::new(with_check(vec![weight(20), pause(None)]));
    w.traffic_error = Some("http://127.0.0.1:9/v1/stats?…: connection refused".into());
    let d = w.tick();
    let condition = d
        .status
        .condition(conditions::TRAFFIC_CHECK_FAILED)
        .expect("the condition is set in the first decision");
    assert_eq!(condition.status, "True");
    assert!(
        condition.message.contains("http://127.0.0.1:9")
            && condition.message.contains("connection refused"),
        "{}",
        condition.message
    );
    assert_eq!(
        events(&d),
        vec![reasons::NEW_REVISION, reasons::EXPORTER_UNREACHABLE]
    );
    assert!(!d
        .status
        .is_condition_true(conditions::TRAFFIC_SPLIT_MISMATCH));
    // Still no answer: no second event. An answer clears the condition.
    assert!(!events(&w.tick_at(5)).contains(&reasons::EXPORTER_UNREACHABLE));
    w.traffic_error = None;
    w.traffic = Some(TrafficObservation {
        canary_requests: 200,
        requests: 1000,
        lost_requests: 0,
    });
    let d = w.tick_at(10);
    assert!(d
        .status
        .condition(conditions::TRAFFIC_CHECK_FAILED)
        .is_none());
}

fn progressing(d: &Decision) -> (String, String) {
    let c = d
        .status
        .condition(conditions::PROGRESSING)
        .expect("Progressing condition");
    (c.status.clone(), c.reason.clone())
}

#[test]
fn a_canary_that_never_rolls_out_is_degraded_after_the_progress_deadline() {
    let mut w = World::new(spec(vec![weight(20), pause(None)]));
    w.canary = rolling_out("v2");
    w.tick();
    let d = w.tick_at(599);
    assert_eq!(d.status.phase, Some(CanaryPhase::Progressing));
    assert!(d.requeue_after.is_some_and(|r| r <= Duration::from_secs(5)));
    let d = w.tick_at(600);
    assert_eq!(d.status.phase, Some(CanaryPhase::Degraded));
    assert_eq!(
        progressing(&d),
        ("False".into(), reasons::PROGRESS_DEADLINE_EXCEEDED.into())
    );
    assert_eq!(
        d.status.message.as_deref(),
        Some("ProgressDeadlineExceeded: no progress for 600s (progressDeadlineSeconds): waiting for podinfo-canary to roll out revision v2")
    );
    assert_eq!(events(&d), vec![reasons::PROGRESS_DEADLINE_EXCEEDED]);
    assert_eq!(d.weights(), Some((0, 100)), "nothing reaches the canary");
    let d = w.tick_at(700);
    assert!(events(&d).is_empty(), "one event, not one per look");
    assert_eq!(d.status.phase, Some(CanaryPhase::Degraded));
    // The pods come up at last: the rollout moves on and says so.
    w.canary.rolled_out = true;
    let d = w.tick_at(710);
    assert_eq!(d.status.phase, Some(CanaryPhase::Paused));
    assert_eq!(d.weights(), Some((20, 80)));
    assert_eq!(d.status.stalled_since, None);
    assert_eq!(progressing(&d).0, "True");
}

#[test]
fn progress_deadline_abort_rolls_back_a_stuck_split() {
    let mut s = with_check(vec![weight(20), weight(50)]);
    s.progress_deadline_seconds = Some(60);
    s.progress_deadline_abort = true;
    let mut w = World::new(s);
    w.traffic = Some(TrafficObservation {
        canary_requests: 0,
        requests: 1000,
        lost_requests: 0,
    });
    assert_eq!(w.tick().weights(), Some((20, 80)));
    assert_eq!(w.tick_at(59).status.phase, Some(CanaryPhase::Progressing));
    let d = w.tick_at(60);
    assert_eq!(d.weights(), Some((0, 100)));
    assert!(d.status.abort);
    assert_eq!(d.status.phase, Some(CanaryPhase::Degraded));
    assert_eq!(
        d.status.message.as_deref(),
        Some("RolloutAborted: ProgressDeadlineExceeded: no progress for 60s (progressDeadlineSeconds): step 1/2: the observed split has not confirmed weight 20")
    );
    assert_eq!(events(&d), vec![reasons::ABORTED]);
}

#[test]
fn pauses_and_running_analyses_are_not_a_lack_of_progress() {
    let mut w = World::new(spec(vec![weight(20), pause(None), analysis("slow")]));
    w.tick();
    let d = w.tick_at(10_000);
    assert_eq!(d.status.phase, Some(CanaryPhase::Paused));
    assert_eq!(d.status.stalled_since, None);
    w.status.promote = true;
    w.tick_at(10_001);
    w.analyses
        .insert("podinfo-v2-0-step2".into(), Verdict::of(Phase::Running, ""));
    let d = w.tick_at(20_000);
    assert_eq!(d.status.phase, Some(CanaryPhase::Progressing));
    assert_eq!(d.status.stalled_since, None);
    assert!(events(&d).is_empty());
}

#[test]
fn a_stable_rollout_that_never_completes_is_degraded_but_not_aborted() {
    let mut s = spec(vec![weight(20)]);
    s.progress_deadline_abort = true;
    let mut w = World::new(s);
    w.tick();
    // Promoted: stable now carries v2 but its pods never become available.
    w.stable = rolling_out("v2");
    let d = w.tick_at(5);
    assert_eq!(d.status.phase, Some(CanaryPhase::Promoting));
    let d = w.tick_at(606);
    assert_eq!(d.status.phase, Some(CanaryPhase::Degraded));
    assert!(!d.status.abort);
    assert_eq!(d.weights(), Some((20, 80)), "the split stays as it was");
}

#[test]
fn an_analysis_that_cannot_run_is_an_invalid_spec_before_any_weight() {
    let mut w = World::new(spec(vec![weight(20), analysis("success-rate"), weight(50)]));
    w.analysis_problem = Some(
        "spec.steps[1].analysis: AnalysisTemplate \"success-rate\" not found in namespace test"
            .into(),
    );
    let d = w.tick();
    assert_eq!(d.weights(), Some((0, 100)), "everything stays on stable");
    assert_eq!(d.status.phase, Some(CanaryPhase::Degraded));
    let c = d.status.condition(conditions::INVALID_SPEC).unwrap();
    assert_eq!(
        c.message,
        "spec.steps[1].analysis: AnalysisTemplate \"success-rate\" not found in namespace test"
    );
    assert_eq!(events(&d), vec![reasons::INVALID_SPEC]);
    assert!(started(&d).is_empty());
    assert!(events(&w.tick_at(30)).is_empty(), "one event");
    // The template appears: the revision starts from its first step.
    w.analysis_problem = None;
    let d = w.tick_at(60);
    assert!(d.status.condition(conditions::INVALID_SPEC).is_none());
    assert_eq!(d.weights(), Some((20, 80)));
}

#[test]
fn the_decision_holds_the_whole_new_status() {
    // Envoy routing: promotion makes the canary's revision the stable one in the decision
    // itself (the rims used to patch it in after executing).
    let mut s = spec(vec![weight(50)]);
    s.traffic_routing = TrafficRouting {
        envoy: Some(EnvoyRouting {
            routes_file: "/tmp/routes.json".into(),
            route_config_name: "local".into(),
            domains: vec!["*".into()],
            prefix: "/".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    s.workload = WorkloadRef {
        stable: "v1".into(),
        canary: "v2".into(),
    };
    let mut w = World::new(s);
    let d = w.tick();
    assert!(promoted(&d));
    assert_eq!(d.status.stable_revision.as_deref(), Some("v2"));

    // A routing failure recorded by the rim is cleared by the next decision that routes.
    let mut w = World::new(spec(vec![weight(20), pause(None)]));
    w.status.set_condition(
        conditions::TRAFFIC_ROUTING_FAILED,
        true,
        reasons::ROUTE_NOT_WRITABLE,
        "no route \"primary\"",
        &Time(at(0)),
        Some(1),
    );
    let d = w.tick();
    assert_eq!(d.weights(), Some((20, 80)));
    assert!(d
        .status
        .condition(conditions::TRAFFIC_ROUTING_FAILED)
        .is_none());
}

#[test]
fn the_plan_carries_parsed_values_and_defaults() {
    let mut s = spec(vec![weight(20), pause(Some("1m30s")), pause(None)]);
    s.traffic_check = Some(TrafficCheck {
        exporter: "http://exporter:9464".into(),
        window: Some("1m".into()),
        ..Default::default()
    });
    let plan = validate(&s).unwrap();
    assert_eq!(
        plan.steps,
        [
            PlanStep::SetWeight(20),
            PlanStep::Pause(Some(Duration::from_secs(90))),
            PlanStep::Pause(None)
        ]
    );
    let check = plan.traffic_check.unwrap();
    assert_eq!(check.window, Duration::from_secs(60));
    assert_eq!(check.tolerance, DEFAULT_TRAFFIC_TOLERANCE);
    assert_eq!(check.min_requests, DEFAULT_MIN_REQUESTS);
    assert_eq!(check.mismatch_after, Duration::from_secs(120));
    assert_eq!(plan.progress_deadline, Duration::from_secs(600));
    assert!(!plan.envoy_routing);
}

fn header_route(name: &str, value: Option<&str>) -> CanaryStep {
    CanaryStep {
        set_header_route: Some(SetHeaderRoute {
            name: name.into(),
            matches: value
                .map(|v| HeaderRoutingMatch {
                    header_name: "x-canary".into(),
                    header_value: StringMatch {
                        exact: Some(v.into()),
                        ..Default::default()
                    },
                })
                .into_iter()
                .collect(),
        }),
        ..Default::default()
    }
}

fn mirror_route(name: &str, percentage: Option<i32>) -> CanaryStep {
    CanaryStep {
        set_mirror_route: Some(SetMirrorRoute {
            name: name.into(),
            matches: percentage
                .map(|_| RouteMatch {
                    method: Some(StringMatch {
                        exact: Some("GET".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            percentage,
        }),
        ..Default::default()
    }
}

fn routes_of(d: &Decision) -> Option<&ManagedRoutes> {
    d.actions.iter().find_map(|a| match a {
        Action::SetWeight { routes, .. } => Some(routes),
        _ => None,
    })
}

fn route_names(d: &Decision) -> (Vec<&str>, Vec<(&str, Option<i32>)>) {
    let routes = routes_of(d).expect("the decision routes");
    (
        routes.header.iter().map(|r| r.name.as_str()).collect(),
        routes
            .mirror
            .iter()
            .map(|r| (r.name.as_str(), r.percentage))
            .collect(),
    )
}

fn managed_spec(steps: Vec<CanaryStep>) -> CanarySpec {
    let mut spec = spec(steps);
    spec.traffic_routing.managed_routes = vec![
        ManagedRouteRef {
            name: "by-header".into(),
        },
        ManagedRouteRef {
            name: "mirror".into(),
        },
    ];
    spec
}

#[test]
fn header_and_mirror_routes_are_set_by_steps_and_removed_at_promotion() {
    let mut w = World::new(managed_spec(vec![
        header_route("by-header", Some("always")),
        mirror_route("mirror", Some(30)),
        pause(None),
        header_route("by-header", None),
        weight(50),
        pause(None),
    ]));
    let d = w.tick();
    // Both set, and written with the weight (0 so far) in the same action.
    assert_eq!(d.weights(), Some((0, 100)));
    assert_eq!(
        route_names(&d),
        (vec!["by-header"], vec![("mirror", Some(30))])
    );
    assert_eq!(d.status.managed_routes, *routes_of(&d).unwrap());
    assert_eq!(d.status.phase, Some(CanaryPhase::Paused));
    // Level-triggered: every decision states them again.
    let again = w.tick_at(10);
    assert_eq!(
        route_names(&again),
        (vec!["by-header"], vec![("mirror", Some(30))])
    );
    // Promote: the header route is removed by its step, the mirror stays.
    w.status.promote = true;
    let d = w.tick_at(20);
    assert_eq!(d.weights(), Some((50, 50)));
    assert_eq!(route_names(&d), (vec![], vec![("mirror", Some(30))]));
    // The last step done: everything managed is removed while promoting.
    w.status.promote = true;
    let d = w.tick_at(30);
    assert!(promoted(&d));
    assert_eq!(route_names(&d), (vec![], vec![]));
    assert!(d.status.managed_routes.is_empty());
}

#[test]
fn managed_routes_are_removed_at_abort_and_by_a_new_revision() {
    let steps = vec![
        header_route("by-header", Some("always")),
        mirror_route("mirror", None),
        mirror_route("mirror", Some(100)),
        pause(None),
    ];
    let mut w = World::new(managed_spec(steps.clone()));
    let d = w.tick();
    // A mirror step without match removes (here: nothing), the next one sets 100%.
    assert_eq!(
        route_names(&d),
        (vec!["by-header"], vec![("mirror", Some(100))])
    );
    w.status.abort = true;
    let d = w.tick_at(10);
    assert_eq!(d.weights(), Some((0, 100)));
    assert_eq!(route_names(&d), (vec![], vec![]));

    let mut w = World::new(managed_spec(steps));
    w.tick();
    w.canary = WorkloadState::ready("v3");
    let d = w.tick_at(10);
    // The new revision starts over: its first steps set the routes again, for it.
    assert_eq!(d.status.revision.as_deref(), Some("v3"));
    assert_eq!(
        route_names(&d),
        (vec!["by-header"], vec![("mirror", Some(100))])
    );
    // Back to what stable runs: nothing managed is left.
    w.canary = WorkloadState::ready("v1");
    let d = w.tick_at(20);
    assert_eq!(route_names(&d), (vec![], vec![]));
}

#[test]
fn the_split_is_not_judged_while_a_header_route_sends_requests_to_the_canary() {
    let mut spec = managed_spec(vec![
        header_route("by-header", Some("always")),
        weight(10),
        pause(None),
    ]);
    spec.traffic_check = Some(TrafficCheck {
        exporter: "http://exporter:9464".into(),
        window: Some("10s".into()),
        ..Default::default()
    });
    let mut w = World::new(spec);
    // Far more than 10% on the canary: header-routed requests count in its share.
    w.traffic = Some(TrafficObservation {
        canary_requests: 400,
        requests: 1000,
        lost_requests: 0,
    });
    let d = w.tick();
    assert_eq!(d.status.current_step_index, Some(2), "{:?}", d.status);
    assert!(!d
        .status
        .is_condition_true(conditions::TRAFFIC_SPLIT_MISMATCH));
}
