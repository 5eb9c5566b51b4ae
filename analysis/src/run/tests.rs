//! Mirrors Argo's `analysis/analysis_test.go` (the `TestAssessMetricStatus*`,
//! `TestGenerateMetricTasks*`, `TestCalculateNextReconcile*`, `TestAssessRunStatus*`,
//! `TestRunMeasurementsResetConsecutiveErrorCounter`, `TestTrimMeasurementHistory`,
//! `TestTerminateAnalysisRun` cases) with the same inputs and outcomes, then Plover's own rules.

use std::time::{Duration, SystemTime};

use super::*;
use Phase::*;

const ARGO: Termination = Termination::Argo;

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn measurement(phase: Phase, finished_at: SystemTime) -> Measurement {
    Measurement {
        phase,
        value: "99".into(),
        message: None,
        evidence: None,
        started_at: finished_at,
        finished_at,
    }
}

/// A result with the given counters and one last measurement of `last` phase.
fn result(plan: &MetricPlan, last: Phase, set: impl FnOnce(&mut MetricResult)) -> MetricResult {
    let mut r = MetricResult::new(plan);
    r.phase = Running;
    r.measurements.push(measurement(last, t0()));
    set(&mut r);
    r
}

fn plan(set: impl FnOnce(&mut MetricPlan)) -> MetricPlan {
    let mut p = MetricPlan::new("success-rate");
    set(&mut p);
    p
}

fn status(p: &MetricPlan, r: &MetricResult, terminating: bool) -> Phase {
    assess_metric_status(p, r, terminating, ARGO).0
}

#[test]
fn argo_assess_metric_status_failure_limit() {
    let mut p = plan(|p| {
        p.failure_limit = 2;
        p.interval = Some(secs(60));
    });
    let r = result(&p, Failed, |r| {
        r.failed = 3;
        r.count = 3;
    });
    assert_eq!(status(&p, &r, false), Failed);
    assert_eq!(status(&p, &r, true), Failed);
    p.failure_limit = 3;
    assert_eq!(status(&p, &r, false), Running);
    assert_eq!(status(&p, &r, true), Successful);
}

#[test]
fn argo_assess_metric_status_consecutive_success_limit() {
    let mut p = plan(|p| {
        p.failure_limit = -1;
        p.consecutive_success_limit = 3;
        p.interval = Some(secs(60));
    });
    let r = result(&p, Failed, |r| {
        r.failed = 3;
        r.successful = 4;
        r.consecutive_success = 3;
        r.count = 7;
    });
    // Indefinite analysis.
    assert_eq!(status(&p, &r, false), Successful);
    assert_eq!(status(&p, &r, true), Successful);
    p.consecutive_success_limit = 5;
    assert_eq!(status(&p, &r, false), Running);
    assert_eq!(status(&p, &r, true), Successful);
    // Count reached.
    p.count = Some(7);
    assert_eq!(status(&p, &r, false), Failed);
    assert_eq!(status(&p, &r, true), Failed);
    p.consecutive_success_limit = 3;
    assert_eq!(status(&p, &r, false), Successful);
    assert_eq!(status(&p, &r, true), Successful);
    // Count not reached.
    p.count = Some(9);
    assert_eq!(status(&p, &r, false), Successful);
    assert_eq!(status(&p, &r, true), Successful);
    p.consecutive_success_limit = 5;
    assert_eq!(status(&p, &r, false), Running);
    assert_eq!(status(&p, &r, true), Successful);
}

#[test]
fn argo_assess_metric_status_failure_limit_and_consecutive_success_limit() {
    let mut p = plan(|p| {
        p.failure_limit = 4;
        p.consecutive_success_limit = 4;
        p.interval = Some(secs(60));
    });
    // (count set?, failed, successful, count, consecutiveSuccess, expected !terminating, expected terminating)
    type Case = (Option<u32>, u32, u32, u32, u32, Phase, Phase);
    let cases: &[Case] = &[
        (None, 3, 4, 7, 3, Running, Successful),
        (None, 5, 9, 9, 0, Failed, Failed),
        (None, 3, 5, 8, 4, Successful, Successful),
        (None, 5, 5, 10, 4, Failed, Failed),
        (Some(10), 4, 6, 10, 3, Inconclusive, Inconclusive),
        (Some(10), 5, 5, 10, 3, Failed, Failed),
        (Some(10), 4, 6, 10, 4, Successful, Successful),
        (Some(10), 5, 5, 10, 4, Failed, Failed),
        (Some(10), 3, 5, 8, 3, Running, Successful),
        (Some(10), 5, 3, 8, 3, Failed, Failed),
        (Some(10), 3, 5, 8, 4, Successful, Successful),
        (Some(10), 5, 4, 9, 4, Failed, Failed),
    ];
    for (i, (count, failed, successful, n, consecutive, running, terminating)) in
        cases.iter().enumerate()
    {
        p.count = *count;
        let r = result(&p, Failed, |r| {
            r.failed = *failed;
            r.successful = *successful;
            r.count = *n;
            r.consecutive_success = *consecutive;
        });
        assert_eq!(status(&p, &r, false), *running, "case {i}");
        assert_eq!(status(&p, &r, true), *terminating, "case {i}");
    }
}

#[test]
fn argo_assess_metric_status_inconclusive_limit() {
    let mut p = plan(|p| {
        p.inconclusive_limit = 2;
        p.interval = Some(secs(60));
    });
    let r = result(&p, Inconclusive, |r| {
        r.inconclusive = 3;
        r.count = 3;
    });
    assert_eq!(status(&p, &r, false), Inconclusive);
    assert_eq!(status(&p, &r, true), Inconclusive);
    p.inconclusive_limit = 3;
    assert_eq!(status(&p, &r, false), Running);
    assert_eq!(status(&p, &r, true), Successful);
}

#[test]
fn argo_assess_metric_status_consecutive_errors() {
    let p = plan(|p| p.interval = Some(secs(60)));
    let mut r = result(&p, Error, |r| {
        r.consecutive_error = 5;
        r.count = 5;
    });
    assert_eq!(status(&p, &r, false), Error);
    assert_eq!(status(&p, &r, true), Error);
    r.consecutive_error = 4;
    assert_eq!(status(&p, &r, true), Successful);
    assert_eq!(status(&p, &r, false), Running);
}

#[test]
fn argo_assess_metric_status_count_reached() {
    let p = plan(|p| p.count = Some(10));
    let mut r = result(&p, Successful, |r| {
        r.successful = 10;
        r.count = 10;
    });
    assert_eq!(status(&p, &r, false), Successful);
    r.successful = 5;
    r.inconclusive = 5;
    assert_eq!(status(&p, &r, false), Inconclusive);
}

#[test]
fn argo_assess_metric_status_no_measurements() {
    let p = plan(|_| {});
    let r = MetricResult::new(&p);
    assert_eq!(status(&p, &r, false), Pending);
    assert_eq!(status(&p, &r, true), Successful);
}

#[test]
fn argo_assess_metric_failure_inconclusive_or_error_messages() {
    let p = plan(|_| {});
    let r = result(&p, Failed, |r| r.failed = 1);
    assert_eq!(
        assess_metric_status(&p, &r, true, ARGO),
        (Failed, Some("failed (1) > failureLimit (0)".into()))
    );
    let r = result(&p, Inconclusive, |r| r.inconclusive = 1);
    assert_eq!(
        assess_metric_status(&p, &r, true, ARGO),
        (
            Inconclusive,
            Some("inconclusive (1) > inconclusiveLimit (0)".into())
        )
    );
    let r = result(&p, Error, |r| r.consecutive_error = 5);
    assert_eq!(
        assess_metric_status(&p, &r, true, ARGO),
        (
            Error,
            Some("consecutiveErrors (5) > consecutiveErrorLimit (4)".into())
        )
    );
}

#[test]
fn argo_effective_count() {
    assert_eq!(plan(|_| {}).effective_count(), Some(1));
    assert_eq!(plan(|p| p.count = Some(0)).effective_count(), Some(1));
    assert_eq!(plan(|p| p.interval = Some(secs(5))).effective_count(), None);
    assert_eq!(
        plan(|p| {
            p.interval = Some(secs(5));
            p.count = Some(0)
        })
        .effective_count(),
        None
    );
    assert_eq!(
        plan(|p| {
            p.interval = Some(secs(5));
            p.count = Some(3)
        })
        .effective_count(),
        Some(3)
    );
}

fn run_of(plans: Vec<MetricPlan>) -> Run {
    Run::new(
        plans,
        RunOptions {
            termination: ARGO,
            ..RunOptions::default()
        },
        t0(),
    )
}

#[test]
fn argo_generate_metric_tasks_interval() {
    let mut run = run_of(vec![plan(|p| p.interval = Some(secs(60)))]);
    run.record(0, measurement(Successful, t0()));
    assert!(run.due(t0() + secs(50)).is_empty());
    assert_eq!(run.due(t0() + secs(61)), vec![0]);
}

#[test]
fn argo_generate_metric_tasks_failing() {
    let mut run = run_of(vec![
        MetricPlan::new("success-rate"),
        MetricPlan::new("latency"),
    ]);
    assert_eq!(run.due(t0()), vec![0, 1]);
    run.record(1, measurement(Failed, t0()));
    run.assess(t0());
    assert!(run.due(t0() + secs(100)).is_empty());
}

#[test]
fn argo_generate_metric_tasks_no_interval_or_count() {
    let mut run = run_of(vec![MetricPlan::new("success-rate")]);
    assert_eq!(run.due(t0()), vec![0]);
    run.record(0, measurement(Successful, t0()));
    assert!(run.due(t0() + secs(50)).is_empty());
}

#[test]
fn argo_generate_metric_tasks_honor_initial_delay() {
    let run = run_of(vec![plan(|p| {
        p.interval = Some(secs(60));
        p.initial_delay = Some(secs(20));
    })]);
    assert!(run.due(t0() + secs(10)).is_empty());
    assert_eq!(run.due(t0() + secs(20)), vec![0]);
}

#[test]
fn argo_generate_metric_tasks_error_retries_after_ten_seconds() {
    let mut run = run_of(vec![plan(|p| p.interval = Some(secs(60)))]);
    run.record(0, measurement(Error, t0()));
    assert!(run.due(t0() + secs(5)).is_empty());
    assert_eq!(run.due(t0() + secs(11)), vec![0]);
}

#[test]
fn argo_calculate_next_reconcile_time() {
    // Interval: the last measurement finished 30 s ago with a 60 s interval ⇒ in 30 s.
    let mut run = run_of(vec![plan(|p| p.interval = Some(secs(60)))]);
    run.record(0, measurement(Successful, t0()));
    assert_eq!(run.next_wake(), Some(t0() + secs(60)));
    // Initial delay.
    let run = run_of(vec![plan(|p| {
        p.interval = Some(secs(60));
        p.initial_delay = Some(secs(60));
    })]);
    assert_eq!(run.next_wake(), Some(t0() + secs(60)));
    // No interval: nothing to wait for once measured.
    let mut run = run_of(vec![MetricPlan::new("success-rate")]);
    run.record(0, measurement(Successful, t0()));
    assert_eq!(run.next_wake(), None);
    // The earliest metric wins.
    let mut run = run_of(vec![
        plan(|p| p.interval = Some(secs(60))),
        MetricPlan {
            interval: Some(secs(30)),
            ..MetricPlan::new("latency")
        },
    ]);
    run.record(0, measurement(Successful, t0()));
    run.record(1, measurement(Successful, t0()));
    assert_eq!(run.next_wake(), Some(t0() + secs(30)));
    // Upon error: 10 s.
    let mut run = run_of(vec![plan(|p| p.interval = Some(secs(60)))]);
    run.record(0, measurement(Error, t0()));
    assert_eq!(run.next_wake(), Some(t0() + secs(10)));
}

#[test]
fn argo_run_measurements_reset_consecutive_error_counter() {
    let mut run = run_of(vec![plan(|p| p.interval = Some(secs(60)))]);
    for phase in [Successful, Failed, Inconclusive] {
        let p = plan(|p| {
            p.interval = Some(secs(60));
            p.failure_limit = 10;
            p.inconclusive_limit = 10;
        });
        let mut run = run_of(vec![p]);
        for _ in 0..4 {
            run.record(0, measurement(Error, t0()));
        }
        assert_eq!(run.results()[0].consecutive_error, 4);
        run.record(0, measurement(phase, t0()));
        assert_eq!(run.results()[0].consecutive_error, 0, "{phase}");
        assert_eq!(run.results()[0].count, 1, "{phase}");
    }
    // Errors never consume the count.
    for _ in 0..5 {
        run.record(0, measurement(Error, t0()));
    }
    let r = &run.results()[0];
    assert_eq!((r.consecutive_error, r.error, r.count), (5, 5, 0));
}

#[test]
fn argo_trim_measurement_history() {
    let mut run = run_of(vec![plan(|p| p.interval = Some(secs(1)))]);
    for i in 0..12 {
        run.record(0, measurement(Successful, t0() + secs(i)));
    }
    let r = &run.results()[0];
    assert_eq!(r.measurements.len(), DEFAULT_MEASUREMENT_RETENTION);
    assert_eq!(r.measurements[0].finished_at, t0() + secs(2));
    assert_eq!(r.successful, 12);
    let mut run = run_of(vec![plan(|p| {
        p.interval = Some(secs(1));
        p.retention = 2;
    })]);
    for i in 0..5 {
        run.record(0, measurement(Successful, t0() + secs(i)));
    }
    assert_eq!(run.results()[0].measurements.len(), 2);
}

#[test]
fn argo_assess_run_status_messages() {
    // TestAssessRunStatusErrorMessageAnalysisPhaseFail: a Successful and a Failed metric.
    let mut run = run_of(vec![
        MetricPlan::new("run-forever"),
        MetricPlan::new("failed-metric"),
    ]);
    run.record(0, measurement(Successful, t0()));
    run.record(1, measurement(Failed, t0()));
    assert_eq!(run.assess(t0()), Failed);
    assert_eq!(
        run.message(),
        "Metric \"failed-metric\" assessed Failed due to failed (1) > failureLimit (0)"
    );
    assert_eq!(
        run.summary(),
        RunSummary {
            count: 2,
            successful: 1,
            failed: 1,
            inconclusive: 0,
            error: 0
        }
    );
    // TestAssessRunStatusErrorMessageFromProvider: the last measurement's message is appended.
    let mut run = run_of(vec![MetricPlan::new("failed-metric")]);
    let mut m = measurement(Error, t0());
    m.message = Some("Error Message".into());
    run.record(0, m);
    let p = &mut run.plans[0];
    p.consecutive_error_limit = 0;
    assert_eq!(run.assess(t0()), Error);
    assert_eq!(
        run.message(),
        "Metric \"failed-metric\" assessed Error due to consecutiveErrors (1) > consecutiveErrorLimit (0): \"Error Message: Error Message\""
    );
    // TestAssessRunStatusMultipleFailures: ties keep the first metric's message.
    let mut run = run_of(vec![
        MetricPlan::new("run-forever"),
        MetricPlan::new("failed-metric"),
    ]);
    run.record(0, measurement(Failed, t0()));
    run.record(1, measurement(Failed, t0()));
    assert_eq!(run.assess(t0()), Failed);
    assert_eq!(
        run.message(),
        "Metric \"run-forever\" assessed Failed due to failed (1) > failureLimit (0)"
    );
}

#[test]
fn argo_assess_run_status_worst_wins_only_when_all_complete() {
    // TestAssessRunStatus: one Successful, one still running ⇒ Running; then both done.
    let mut run = run_of(vec![
        MetricPlan::new("latency"),
        plan(|p| {
            p.interval = Some(secs(60));
            p.count = Some(2)
        }),
    ]);
    run.record(0, measurement(Successful, t0()));
    run.record(1, measurement(Successful, t0()));
    assert_eq!(run.assess(t0()), Running);
    assert_eq!(run.results()[0].phase, Successful);
    assert_eq!(run.results()[1].phase, Running);
    run.record(1, measurement(Successful, t0() + secs(60)));
    assert_eq!(run.assess(t0() + secs(60)), Successful);
    assert_eq!(run.message(), "");
    assert_eq!(run.completed_at(), Some(t0() + secs(60)));
}

#[test]
fn argo_dry_run_metrics_never_decide_the_run() {
    // TestAssessRunStatusErrorMessageAnalysisPhaseFailInDryRunMode / WithOnlyDryRunMetrics.
    let dry = MetricPlan {
        dry_run: true,
        ..MetricPlan::new("failed-metric")
    };
    let mut run = run_of(vec![MetricPlan::new("run-forever"), dry.clone()]);
    run.record(0, measurement(Successful, t0()));
    run.record(1, measurement(Failed, t0()));
    assert_eq!(run.assess(t0()), Successful);
    assert_eq!(run.results()[1].phase, Failed);
    assert_eq!(
        run.results()[1].message.as_deref(),
        Some("Metric assessed Failed due to failed (1) > failureLimit (0)")
    );
    assert_eq!(
        run.dry_run_summary(),
        RunSummary {
            count: 1,
            successful: 0,
            failed: 1,
            inconclusive: 0,
            error: 0
        }
    );
    let mut run = run_of(vec![dry]);
    run.record(0, measurement(Failed, t0()));
    assert_eq!(run.assess(t0()), Successful);
    // A failed dry-run metric does not stop its siblings.
    let mut run = run_of(vec![
        MetricPlan {
            dry_run: true,
            ..MetricPlan::new("dry")
        },
        plan(|p| p.interval = Some(secs(10))),
    ]);
    run.record(0, measurement(Failed, t0()));
    run.record(1, measurement(Successful, t0()));
    assert_eq!(run.assess(t0()), Running);
    assert_eq!(run.due(t0() + secs(10)), vec![1]);
}

#[test]
fn argo_terminate_analysis_run() {
    // TestTerminateAnalysisRun: terminated before any measurement ⇒ Successful, "Run Terminated".
    let mut run = run_of(vec![plan(|p| p.interval = Some(secs(60)))]);
    run.terminate();
    assert_eq!(run.assess(t0()), Successful);
    assert_eq!(run.message(), "Run Terminated");
    assert!(run.due(t0() + secs(600)).is_empty());
    // TestReconcileAnalysisRunTerminateSiblingAfterFail: a failure stops the unbounded sibling.
    let mut run = run_of(vec![
        MetricPlan::new("failed-metric"),
        plan(|p| p.interval = Some(secs(60))),
    ]);
    run.record(0, measurement(Failed, t0()));
    run.record(1, measurement(Successful, t0()));
    assert_eq!(run.assess(t0()), Failed);
    assert_eq!(run.results()[1].phase, Successful);
}

#[test]
fn plover_termination_requires_evidence() {
    // argo-rollouts#4479: every measurement failed below the limit or errored, then the run is
    // stopped. Argo reports Successful; Plover reports Inconclusive.
    let p = plan(|p| {
        p.interval = Some(secs(60));
        p.failure_limit = 3;
    });
    let mut run = Run::new(vec![p.clone()], RunOptions::default(), t0());
    run.record(0, measurement(Failed, t0()));
    run.record(0, measurement(Error, t0() + secs(60)));
    run.terminate();
    assert_eq!(run.assess(t0() + secs(70)), Inconclusive);
    assert_eq!(
        run.message(),
        "Metric \"success-rate\" assessed Inconclusive due to run terminated without any successful measurement"
    );
    let mut argo = run_of(vec![p.clone()]);
    argo.record(0, measurement(Failed, t0()));
    argo.terminate();
    assert_eq!(argo.assess(t0()), Successful);
    // With one success, stopping is a pass, as in Argo.
    let mut run = Run::new(vec![p], RunOptions::default(), t0());
    run.record(0, measurement(Successful, t0()));
    run.terminate();
    assert_eq!(run.assess(t0()), Successful);
    // Stopped before anything was measured (e.g. during initialDelay).
    let mut run = Run::new(
        vec![plan(|p| p.initial_delay = Some(secs(30)))],
        RunOptions::default(),
        t0(),
    );
    run.terminate();
    assert_eq!(run.assess(t0()), Inconclusive);
}

#[test]
fn phases_are_sticky_and_the_run_is_final() {
    let mut run = run_of(vec![plan(|p| {
        p.interval = Some(secs(1));
        p.count = Some(3);
        p.failure_limit = 0
    })]);
    run.record(0, measurement(Failed, t0()));
    assert_eq!(run.assess(t0()), Failed);
    run.record(0, measurement(Successful, t0() + secs(1)));
    assert_eq!(run.assess(t0() + secs(1)), Failed);
    assert_eq!(run.results()[0].phase, Failed);
    assert!(run.due(t0() + secs(5)).is_empty());
    assert_eq!(run.next_wake(), None);
}

#[test]
fn a_whole_run_with_defaults_ends_on_the_first_failure_or_the_fifth_error() {
    let p = plan(|p| p.interval = Some(secs(20)));
    let mut run = run_of(vec![p]);
    let mut now = t0();
    for _ in 0..4 {
        assert_eq!(run.due(now), vec![0]);
        run.record(0, measurement(Error, now));
        assert_eq!(run.assess(now), Running);
        now = run.next_wake().expect("a retry is scheduled");
    }
    run.record(0, measurement(Error, now));
    assert_eq!(run.assess(now), Error);
    assert_eq!(run.message(), "Metric \"success-rate\" assessed Error due to consecutiveErrors (5) > consecutiveErrorLimit (4)");
}

#[test]
fn a_resumed_run_keeps_its_counts_limits_and_schedule() {
    // Issue 17, item 5: a restart used to start the run over (4 successful → 1, and a
    // failureLimit's allowance back).
    let p = plan(|p| {
        p.failure_limit = 1;
        p.interval = Some(secs(60));
    });
    let kept = result(&p, Failed, |r| {
        r.successful = 4;
        r.failed = 1;
        r.count = 5;
    });
    let mut run = Run::resume(vec![p.clone()], RunOptions::default(), t0(), &[kept]);
    assert_eq!(run.assess(t0() + secs(1)), Running);
    // The next measurement is due an interval after the kept one, not at once.
    assert!(run.due(t0() + secs(30)).is_empty());
    assert_eq!(run.due(t0() + secs(60)), vec![0]);
    run.record(0, measurement(Successful, t0() + secs(60)));
    assert_eq!(run.results()[0].successful, 5);
    // The allowance was spent before the restart: the next failure fails the metric.
    run.record(0, measurement(Failed, t0() + secs(120)));
    assert_eq!(run.assess(t0() + secs(120)), Failed);
    assert_eq!(run.results()[0].failed, 2);
    // A metric not kept starts fresh.
    let fresh = Run::resume(vec![plan(|_| {})], RunOptions::default(), t0(), &[]);
    assert_eq!(fresh.results()[0].count, 0);
}
