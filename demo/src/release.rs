//! Releases: deploy a revision as the canary, watch the controller until it promotes or rolls
//! back, and report what happened with the ground truth of the backends (what the canary
//! really served, and for how long).

use std::time::{Duration, Instant};

use plover_analysis::provider::Settings;
use plover_controller::canary::CanaryPhase;
use plover_controller::local;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::{DemoConfig, ReleaseSpec};
use crate::local::{run as run_controller, Snapshot, RECONCILE_EVERY};
use crate::progress::{metric_lines, Display, Frame};
use crate::stack::{lock, Stack};
use crate::{DemoError, Options};
use plover_testkit::backend::Backend;

/// How a release should end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Expect {
    Promoted,
    RolledBack,
}

/// How a release did end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Ending {
    Promoted,
    RolledBack,
    TimedOut,
}

impl Ending {
    fn text(self) -> &'static str {
        match self {
            Ending::Promoted => "promoted",
            Ending::RolledBack => "rolled back",
            Ending::TimedOut => "timed out",
        }
    }
}

/// One release's report.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub release: String,
    pub from: String,
    pub revision: String,
    pub expected: Expect,
    pub result: Ending,
    /// From deploying the canary to the controller's final state.
    pub seconds: f64,
    /// Requests the canary's backend served, and how many of them failed.
    pub canary_requests: u64,
    pub canary_errors: u64,
    /// After a rollback: from the first request the canary served to its last one (all
    /// traffic back on stable), measured at the backend.
    pub canary_exposure_seconds: Option<f64>,
    /// The controller's last message.
    pub message: String,
    /// Each analysis metric's latest measurement when the release ended, in words: the
    /// evidence against stable that rolled a bad canary back, or let a healthy one through.
    #[serde(default)]
    pub evidence: Vec<String>,
}

impl Outcome {
    pub fn as_expected(&self) -> bool {
        matches!(
            (self.expected, self.result),
            (Expect::Promoted, Ending::Promoted) | (Expect::RolledBack, Ending::RolledBack)
        )
    }

    pub fn summary_line(&self) -> String {
        let expected = match self.expected {
            Expect::Promoted => "promoted",
            Expect::RolledBack => "rolled back",
        };
        // The mark says what happened to the revision (a rolled-back one gets no tick); the
        // words say whether that was the expected end.
        let mark = match self.result {
            Ending::Promoted => "✔",
            Ending::RolledBack => "↩",
            Ending::TimedOut => "✖",
        };
        let verdict = if self.as_expected() {
            "as expected".to_owned()
        } else {
            format!("NOT as expected: {expected}")
        };
        let mut line = format!(
            "{mark} {:<8} {} → {}  {:<11} ({verdict}) after {:.1}s; the canary served {} requests, {} failed",
            self.release,
            self.from,
            self.revision,
            self.result.text(),
            self.seconds,
            self.canary_requests,
            self.canary_errors,
        );
        if let Some(exposure) = self.canary_exposure_seconds {
            let _ = std::fmt::Write::write_fmt(
                &mut line,
                format_args!("; {exposure:.1}s from its first request to all traffic on stable"),
            );
        }
        for evidence in &self.evidence {
            line.push_str("\n    ");
            line.push_str(evidence);
        }
        line
    }
}

/// Deploys `revision` as the canary and follows the controller until the release ends.
async fn release(
    config: &DemoConfig,
    stack: &Stack,
    snapshots: &mut watch::Receiver<Snapshot>,
    display: &mut Display,
    spec: &ReleaseSpec,
    revision: &str,
) -> Result<Outcome, DemoError> {
    let from = snapshots
        .borrow()
        .status
        .stable_revision
        .clone()
        .unwrap_or_else(|| config.initial_revision.clone());
    let backend = Backend::start(revision, config.revisions[&spec.revision].clone()).await;
    let started = Instant::now();
    lock(&stack.workloads).release(backend, &from)?;
    display.line(&format!(
        "▶ release {}: {from} → {revision} (expect {:?})",
        spec.name, spec.expect
    ));
    let steps = config.canary.spec.steps.len();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let result = loop {
        tick.tick().await;
        let snapshot = snapshots.borrow_and_update().clone();
        let frame = Frame {
            release: &spec.name,
            from: &from,
            revision,
            elapsed: started.elapsed(),
            snapshot: &snapshot,
            load: &stack.load.counters,
            rps: config.load.rps,
        };
        display.frame(&frame, steps);
        let status = &snapshot.status;
        let ours = status.revision.as_deref() == Some(revision);
        if ours
            && status.phase == Some(CanaryPhase::Healthy)
            && status.stable_revision.as_deref() == Some(revision)
        {
            break Ending::Promoted;
        }
        if ours && status.phase == Some(CanaryPhase::Degraded) && status.aborted_at.is_some() {
            break Ending::RolledBack;
        }
        if started.elapsed() > config.release_timeout {
            break Ending::TimedOut;
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let (message, evidence) = {
        let last = snapshots.borrow();
        (
            last.status.message.clone().unwrap_or_default(),
            metric_lines(&last.status),
        )
    };
    if result == Ending::RolledBack {
        // The canary's last request marks the moment all traffic was back on stable; wait
        // long enough for any straggler to show up before reading it.
        tokio::time::sleep(config.settle).await;
    }
    display.finish();
    let workloads = lock(&stack.workloads);
    let canary = workloads.backend(revision);
    let (canary_requests, canary_errors) = canary.map_or((0, 0), |b| {
        (
            b.served(),
            b.served_by_status()
                .iter()
                .filter(|(code, _)| **code >= 500)
                .map(|(_, n)| n)
                .sum(),
        )
    });
    let canary_exposure_seconds = match (
        result,
        canary.and_then(Backend::first_served_at),
        canary.and_then(Backend::last_served_at),
    ) {
        (Ending::RolledBack, Some(first), Some(last)) => {
            Some(last.duration_since(first).as_secs_f64())
        }
        _ => None,
    };
    Ok(Outcome {
        release: spec.name.clone(),
        from,
        revision: revision.to_owned(),
        expected: spec.expect,
        result,
        seconds,
        canary_requests,
        canary_errors,
        canary_exposure_seconds,
        message,
        evidence,
    })
}

/// The releases to run: `demo.yaml`'s, one of them (`--scenario`), or for the benchmark each
/// bad and healthy release `runs` times, alternated, with fresh revision names.
fn plan(config: &DemoConfig, opts: &Options) -> Result<Vec<(ReleaseSpec, String)>, DemoError> {
    let fixtures = opts.fixtures.join("demo.yaml");
    if let Some(runs) = opts.bench_runs {
        let find = |expect| {
            config
                .releases
                .iter()
                .find(|r| r.expect == expect)
                .cloned()
                .ok_or_else(|| DemoError::Config {
                    path: fixtures.clone(),
                    message: format!("the benchmark needs a release expected to end {expect:?}"),
                })
        };
        let (bad, healthy) = (find(Expect::RolledBack)?, find(Expect::Promoted)?);
        let mut plan = Vec::new();
        for i in 1..=runs {
            plan.push((bad.clone(), format!("{}.{i}", bad.revision)));
            plan.push((healthy.clone(), format!("{}.{i}", healthy.revision)));
        }
        return Ok(plan);
    }
    let chosen: Vec<ReleaseSpec> = match &opts.scenario {
        None => config.releases.clone(),
        Some(name) => {
            let found: Vec<_> = config
                .releases
                .iter()
                .filter(|r| &r.name == name)
                .cloned()
                .collect();
            if found.is_empty() {
                let names: Vec<&str> = config.releases.iter().map(|r| r.name.as_str()).collect();
                return Err(DemoError::Config {
                    path: fixtures,
                    message: format!("no release {name:?}; releases: {}", names.join(", ")),
                });
            }
            found
        }
    };
    Ok(chosen
        .into_iter()
        .map(|r| {
            let revision = r.revision.clone();
            (r, revision)
        })
        .collect())
}

/// Starts the stack and the controller and runs the releases, adding each outcome to
/// `outcomes` as it ends (so a caller that stops the demo early still has them). With
/// `keep_running` it then waits forever (the caller stops it on Ctrl-C).
pub async fn run(
    opts: &Options,
    display: &mut Display,
    outcomes: &mut Vec<Outcome>,
) -> Result<(), DemoError> {
    let config = DemoConfig::load(&opts.fixtures)?;
    let plan = plan(&config, opts)?;
    display.line("starting: demo app, exporter, Prometheus, Envoy with the Plover filter, controller, load …");
    let stack = Stack::start(&config).await?;
    let urls = [
        format!("  gateway          {}", stack.envoy.url("/")),
        format!("  Prometheus UI    {}", stack.prometheus.url),
        format!("  exporter         {}/metrics", stack.exporter_url()),
        format!(
            "  exporter stats   {}/v1/stats?namespace={}&service={}&window=30s",
            stack.exporter_url(),
            config.namespace(),
            config.service()
        ),
        format!(
            "  Envoy admin      http://127.0.0.1:{}/",
            stack.envoy.admin_port
        ),
        format!("  state dir        {}", stack.dir.path().display()),
    ];
    for line in &urls {
        display.line(line);
    }

    // `plover local`'s loop, on the spec file the stack wrote.
    let options = local::Options {
        canary_file: lock(&stack.workloads).canary_file().to_owned(),
        template_files: vec![opts.fixtures.join("templates.yaml")],
        status_file: None,
        settings: Settings {
            prometheus_override: None,
            prometheus_default: Some(stack.prometheus.url.clone()),
            exporter: Some(stack.exporter_url()),
            ..Settings::default()
        },
        until_done: false,
        poll: RECONCILE_EVERY,
        notify: Vec::new(),
    };
    let (snapshot_tx, mut snapshots) = watch::channel(Snapshot::default());
    let controller = AbortOnDrop(tokio::spawn(run_controller(options, snapshot_tx)));

    // Steady state first: everything on stable, and the exporter seeing the traffic.
    let warm = Instant::now();
    loop {
        let snapshot = snapshots.borrow().clone();
        let seen = snapshot
            .stats
            .as_ref()
            .is_some_and(|s| s.revisions.iter().any(|r| r.requests > 0));
        if snapshot.status.phase == Some(CanaryPhase::Healthy) && seen {
            break;
        }
        if controller.0.is_finished() || warm.elapsed() > Duration::from_secs(60) {
            let why = match controller.0.is_finished() {
                true => match controller.join().await {
                    Ok(Err(e)) => e.to_string(),
                    other => format!("{other:?}"),
                },
                false => format!("no steady state after 60s: {:?}", snapshot.status.message),
            };
            return Err(DemoError::Controller(why));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    display.line(&format!(
        "steady: stable runs {} and takes all traffic",
        snapshots
            .borrow()
            .status
            .stable_revision
            .as_deref()
            .unwrap_or(&config.initial_revision)
    ));

    for (spec, revision) in &plan {
        let outcome = release(&config, &stack, &mut snapshots, display, spec, revision).await?;
        display.line(&outcome.summary_line());
        outcomes.push(outcome);
        if controller.0.is_finished() {
            break;
        }
    }
    if controller.0.is_finished() {
        return match controller.join().await {
            Ok(Err(e)) => Err(e),
            other => Err(DemoError::Controller(format!("stopped: {other:?}"))),
        };
    }

    if opts.keep_running {
        display.line("keep running: the stack stays up with the load on; Ctrl-C stops everything");
        for line in &urls {
            display.line(line);
        }
        std::future::pending::<()>().await;
    }
    // Stopped between two reconciles or inside one: its files are written by rename, so the
    // gateway never sees half of one.
    controller.0.abort();
    let _ = controller.join().await;
    Ok(())
}

/// The controller's task, stopped when the demo is dropped (Ctrl-C) so that it does not write
/// routes into the temp dir while the dir is being removed.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Median and maximum of the rollback exposures, and the wrongly rolled back healthy releases.
pub fn bench_figures(outcomes: &[Outcome]) -> String {
    let mut exposures: Vec<f64> = outcomes
        .iter()
        .filter(|o| o.expected == Expect::RolledBack)
        .filter_map(|o| o.canary_exposure_seconds)
        .collect();
    exposures.sort_by(f64::total_cmp);
    let bad = outcomes
        .iter()
        .filter(|o| o.expected == Expect::RolledBack)
        .count();
    let missed = outcomes
        .iter()
        .filter(|o| o.expected == Expect::RolledBack && o.result != Ending::RolledBack)
        .count();
    let healthy = outcomes
        .iter()
        .filter(|o| o.expected == Expect::Promoted)
        .count();
    let wrong = outcomes
        .iter()
        .filter(|o| o.expected == Expect::Promoted && o.result == Ending::RolledBack)
        .count();
    let stuck = outcomes
        .iter()
        .filter(|o| o.expected == Expect::Promoted && o.result == Ending::TimedOut)
        .count();
    let median = match exposures.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => exposures[n / 2],
        n => (exposures[n / 2 - 1] + exposures[n / 2]) / 2.0,
    };
    let max = exposures.last().copied().unwrap_or(f64::NAN);
    format!(
        "bad releases: {bad} ({missed} not rolled back); first request served by the bad canary → 100% stable: median {median:.1}s, max {max:.1}s\n\
         healthy releases: {healthy}; wrongly rolled back: {wrong}; not promoted in time: {stuck}"
    )
}

/// The outcomes as one JSON document (`--report`).
pub fn report_json(outcomes: &[Outcome]) -> String {
    serde_json::to_string_pretty(outcomes).expect("outcomes serialize")
}
