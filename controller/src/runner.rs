//! The analysis runner: drives the analysis engine's pure [`Run`] state machine with real
//! providers, one tokio task per run, and reports verdicts by run name.
//!
//! The Canary's decision never waits on a run: it reads [`Runner::verdicts`] and asks for runs
//! to be started or stopped. Runs live in memory; after a controller restart the decision starts
//! the run recorded in status again under its name, and the runner resumes it from the counts
//! and latest measurements the status kept ([`Runner::start`]'s `earlier`).
//! When a run completes, the runner sends the Canary's key on its notification channel so the
//! controller reconciles at once instead of at the next poll.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use tokio::sync::{mpsc, watch};

use plover_analysis::{
    provider::{self, Source},
    run::{Run, RunOptions},
    template::Analysis,
    Phase,
};

use crate::canary::{measurement, AnalysisRunStatus, Verdict};

/// Identifies a Canary: namespace and name (local mode: empty namespace).
pub type CanaryKey = (String, String);

/// The clock the runner stamps measurements with.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Longest sleep between looks at a run, so `stop` is noticed promptly even without a wake time.
const MAX_SLEEP: Duration = Duration::from_secs(1);

struct Entry {
    run: Arc<Mutex<Run>>,
    stop: watch::Sender<bool>,
    /// A verdict decided before the run could start (e.g. templates that do not resolve).
    fixed: Option<Verdict>,
    /// What the run measures, to describe its measurements (`None` with `fixed`).
    analysis: Option<Arc<Analysis>>,
}

/// Runs analyses for many Canaries.
#[derive(Clone)]
pub struct Runner {
    source: Arc<dyn Source>,
    clock: Clock,
    runs: Arc<Mutex<HashMap<CanaryKey, BTreeMap<String, Entry>>>>,
    completed: mpsc::UnboundedSender<CanaryKey>,
}

/// Reads a run's current verdict: phase, counts, and each metric's latest measurement.
fn verdict_of(run: &Run, analysis: Option<&Analysis>) -> Verdict {
    let mut v = Verdict::of(run.phase(), run.message());
    for r in run.results() {
        v.successful += r.successful;
        v.failed += r.failed;
        v.inconclusive += r.inconclusive;
        v.error += r.error;
    }
    if let Some(analysis) = analysis {
        v.metrics = measurement::metric_statuses(run.results(), analysis);
    }
    v
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving it.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Runner {
    /// A runner and the receiver of "a run of this Canary completed" notifications.
    pub fn new(
        source: Arc<dyn Source>,
        clock: Clock,
    ) -> (Self, mpsc::UnboundedReceiver<CanaryKey>) {
        let (completed, rx) = mpsc::unbounded_channel();
        (
            Runner {
                source,
                clock,
                runs: Arc::default(),
                completed,
            },
            rx,
        )
    }

    /// Verdicts of every run this runner knows for the Canary.
    pub fn verdicts(&self, key: &CanaryKey) -> BTreeMap<String, Verdict> {
        let runs = lock(&self.runs);
        runs.get(key)
            .map(|m| {
                m.iter()
                    .map(|(name, e)| {
                        (
                            name.clone(),
                            e.fixed.clone().unwrap_or_else(|| {
                                verdict_of(&lock(&e.run), e.analysis.as_deref())
                            }),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Records a run that cannot start (its templates or args do not resolve) as an Error, as
    /// Argo does with `Analysis spec invalid: …`.
    pub fn fail(&self, key: &CanaryKey, name: &str, message: String) {
        let (stop, _) = watch::channel(true);
        let run = Arc::new(Mutex::new(Run::new(
            Vec::new(),
            RunOptions::default(),
            (self.clock)(),
        )));
        let entry = Entry {
            run,
            stop,
            fixed: Some(Verdict::of(Phase::Error, message)),
            analysis: None,
        };
        lock(&self.runs)
            .entry(key.clone())
            .or_default()
            .insert(name.to_owned(), entry);
        let _ = self.completed.send(key.clone());
    }

    /// Why `analysis` cannot run here, if so: a metric no provider can measure that is not
    /// dry-run (see `plover_analysis::provider::runnable`).
    pub fn refused(&self, analysis: &Analysis) -> Option<String> {
        provider::runnable(&*self.source, &analysis.metrics).err()
    }

    /// Starts a run under `name` unless one with that name exists. Dry-run metrics that cannot
    /// be measured here are left out; a run with any other such metric fails at once.
    /// Starts run `name`, or resumes it from `earlier`, what the Canary's status kept of a run
    /// of that name (the controller restarted while it ran): its counts, limits and schedule
    /// go on where they stopped.
    pub fn start(
        &self,
        key: &CanaryKey,
        name: &str,
        mut analysis: Analysis,
        earlier: Option<&AnalysisRunStatus>,
    ) {
        match provider::runnable(&*self.source, &analysis.metrics) {
            Ok(runnable) => analysis.metrics = runnable.metrics,
            Err(refused) => return self.fail(key, name, refused),
        }
        let mut runs = lock(&self.runs);
        let of_canary = runs.entry(key.clone()).or_default();
        if of_canary.contains_key(name) {
            return;
        }
        let plans = analysis.metrics.iter().map(|m| m.plan()).collect();
        let run = match earlier.filter(|e| e.name == name) {
            Some(earlier) => Run::resume(
                plans,
                RunOptions::default(),
                earlier
                    .started_at
                    .as_ref()
                    .map_or_else(|| (self.clock)(), |t| SystemTime::from(t.0)),
                &measurement::kept_results(earlier),
            ),
            None => Run::new(plans, RunOptions::default(), (self.clock)()),
        };
        let run = Arc::new(Mutex::new(run));
        let (stop, stopped) = watch::channel(false);
        let analysis = Arc::new(analysis);
        of_canary.insert(
            name.to_owned(),
            Entry {
                run: run.clone(),
                stop,
                fixed: None,
                analysis: Some(analysis.clone()),
            },
        );
        drop(runs);
        let task = Task {
            run,
            analysis,
            // A fresh source per run, so sequential judges never carry a decision over (and
            // the job provider knows where the run's Jobs go).
            source: self
                .source
                .for_named_run(&provider::RunIdentity {
                    namespace: key.0.clone(),
                    canary: key.1.clone(),
                    run: name.to_owned(),
                })
                .unwrap_or_else(|| self.source.clone()),
            clock: self.clock.clone(),
            stopped,
            key: key.clone(),
            completed: self.completed.clone(),
        };
        tokio::spawn(task.drive());
    }

    /// Stops a run (Argo's terminate): no more measurements; it completes with what it has.
    pub fn stop(&self, key: &CanaryKey, name: &str) {
        if let Some(e) = lock(&self.runs).get(key).and_then(|m| m.get(name)) {
            let _ = e.stop.send(true);
        }
    }

    /// The Canaries this runner has runs for.
    pub fn canaries(&self) -> Vec<CanaryKey> {
        lock(&self.runs).keys().cloned().collect()
    }

    /// Stops and forgets every run of a Canary (it was deleted).
    pub fn forget(&self, key: &CanaryKey) {
        if let Some(runs) = lock(&self.runs).remove(key) {
            for entry in runs.values() {
                let _ = entry.stop.send(true);
            }
        }
    }

    /// Forgets every run of a Canary that is not in `keep` (stopping those still running).
    pub fn retain(&self, key: &CanaryKey, keep: &[&str]) {
        let mut runs = lock(&self.runs);
        if let Some(m) = runs.get_mut(key) {
            m.retain(|name, e| {
                let kept = keep.contains(&name.as_str());
                if !kept {
                    let _ = e.stop.send(true);
                }
                kept
            });
        }
    }
}

struct Task {
    run: Arc<Mutex<Run>>,
    analysis: Arc<Analysis>,
    source: Arc<dyn Source>,
    clock: Clock,
    stopped: watch::Receiver<bool>,
    key: CanaryKey,
    completed: mpsc::UnboundedSender<CanaryKey>,
}

impl Task {
    async fn drive(mut self) {
        loop {
            let now = (self.clock)();
            // Stopped, or nobody holds the run any more (the runner was dropped: a local
            // controller that ended or was cancelled): no more measurements.
            if *self.stopped.borrow() || self.stopped.has_changed().is_err() {
                let mut run = lock(&self.run);
                run.terminate();
                run.assess(now);
                break;
            }
            let due = lock(&self.run).due(now);
            for index in due {
                let Some(metric) = self.analysis.metrics.get(index) else {
                    continue;
                };
                let clock = self.clock.clone();
                let now_fn = move || clock();
                let measurement = provider::measure(self.source.as_ref(), metric, &now_fn).await;
                lock(&self.run).record(index, measurement);
            }
            let (phase, wake) = {
                let mut run = lock(&self.run);
                let phase = run.assess((self.clock)());
                (phase, run.next_wake())
            };
            if phase.is_completed() {
                break;
            }
            let sleep = wake
                .and_then(|w| w.duration_since((self.clock)()).ok())
                .unwrap_or(Duration::ZERO)
                .clamp(Duration::from_millis(50), MAX_SLEEP);
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.stopped.changed() => {}
            }
        }
        let _ = self.completed.send(self.key.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plover_analysis::{
        provider::{BoxFuture, Outcome, ProviderError},
        template::{self, ArgInputs, MetricSpec},
        Value,
    };

    /// Answers every query with the same number.
    struct Constant(f64);

    impl Source for Constant {
        fn query<'a>(&'a self, _: &'a MetricSpec) -> BoxFuture<'a, Result<Outcome, ProviderError>> {
            let v = self.0;
            Box::pin(async move {
                Ok(Outcome::Value {
                    value: Value::Float(v),
                    text: v.to_string(),
                })
            })
        }
    }

    fn analysis(success: &str) -> Analysis {
        let yaml = format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {{name: t}}\nspec:\n  metrics:\n  - name: success-rate\n    successCondition: {success}\n    provider: {{web: {{url: 'http://127.0.0.1:1/'}}}}\n"
        );
        let docs = template::load(&yaml).unwrap();
        template::resolve(&template::flatten(&docs).unwrap(), &ArgInputs::default()).unwrap()
    }

    async fn wait_for(runner: &Runner, key: &CanaryKey, name: &str) -> Verdict {
        for _ in 0..200 {
            if let Some(v) = runner
                .verdicts(key)
                .get(name)
                .filter(|v| v.phase.is_completed())
            {
                return v.clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("run {name} did not complete");
    }

    #[tokio::test]
    async fn runs_report_argo_verdicts_and_notify() {
        let (runner, mut rx) = Runner::new(Arc::new(Constant(0.5)), Arc::new(SystemTime::now));
        let key = ("ns".to_owned(), "podinfo".to_owned());
        runner.start(&key, "ok", analysis("result > 0.1"), None);
        runner.start(&key, "bad", analysis("result > 0.9"), None);
        assert_eq!(wait_for(&runner, &key, "ok").await.phase, Phase::Successful);
        let bad = wait_for(&runner, &key, "bad").await;
        assert_eq!(bad.phase, Phase::Failed);
        assert_eq!(
            bad.message,
            "Metric \"success-rate\" assessed Failed due to failed (1) > failureLimit (0)"
        );
        assert_eq!(bad.failed, 1);
        assert_eq!(rx.recv().await, Some(key.clone()));
        runner.fail(
            &key,
            "broken",
            "Analysis spec invalid: no metrics specified".into(),
        );
        assert_eq!(runner.verdicts(&key)["broken"].phase, Phase::Error);
        runner.retain(&key, &["ok"]);
        assert_eq!(runner.verdicts(&key).keys().collect::<Vec<_>>(), vec!["ok"]);
        assert_eq!(runner.canaries(), vec![key.clone()]);
        runner.forget(&key);
        assert!(runner.canaries().is_empty());
    }

    /// Answers with a number and counts the queries.
    struct Counting(std::sync::atomic::AtomicUsize);

    impl Source for Counting {
        fn query<'a>(&'a self, _: &'a MetricSpec) -> BoxFuture<'a, Result<Outcome, ProviderError>> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                Ok(Outcome::Value {
                    value: Value::Float(0.5),
                    text: "0.5".into(),
                })
            })
        }
    }

    #[tokio::test]
    async fn a_restarted_run_resumes_from_what_the_status_kept() {
        // Issue 17, item 5: a controller restart used to start a run over under the same name,
        // its counters cleared.
        let yaml = "apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {name: t}\nspec:\n  metrics:\n  - name: success-rate\n    count: 4\n    interval: 100ms\n    successCondition: result > 0.1\n    provider: {web: {url: 'http://127.0.0.1:1/'}}\n";
        let docs = template::load(yaml).unwrap();
        let analysis = || {
            template::resolve(&template::flatten(&docs).unwrap(), &ArgInputs::default()).unwrap()
        };
        let key = ("ns".to_owned(), "podinfo".to_owned());
        let before = Arc::new(Counting(Default::default()));
        let (runner, _rx) = Runner::new(before.clone(), Arc::new(SystemTime::now));
        runner.start(&key, "r", analysis(), None);
        let kept = loop {
            let v = runner.verdicts(&key)["r"].clone();
            if v.metrics[0].counts.successful >= 2 {
                break v;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        runner.forget(&key);
        let earlier = AnalysisRunStatus {
            name: "r".into(),
            phase: kept.phase,
            metrics: kept.metrics.clone(),
            ..Default::default()
        };
        let kept_successful = kept.metrics[0].counts.successful;
        // A new controller's runner resumes the run: it measures only what was left.
        let after = Arc::new(Counting(Default::default()));
        let (runner, _rx) = Runner::new(after.clone(), Arc::new(SystemTime::now));
        runner.start(&key, "r", analysis(), Some(&earlier));
        let done = wait_for(&runner, &key, "r").await;
        assert_eq!(done.phase, Phase::Successful);
        assert_eq!(done.metrics[0].counts.successful, 4);
        assert_eq!(
            after.0.load(std::sync::atomic::Ordering::SeqCst) as u32,
            4 - kept_successful,
            "only the measurements left were taken"
        );
        // A run of another name is not resumed from it.
        let fresh = Arc::new(Counting(Default::default()));
        let (runner, _rx) = Runner::new(fresh.clone(), Arc::new(SystemTime::now));
        runner.start(&key, "other", analysis(), Some(&earlier));
        assert_eq!(
            wait_for(&runner, &key, "other").await.metrics[0]
                .counts
                .successful,
            4
        );
        assert_eq!(fresh.0.load(std::sync::atomic::Ordering::SeqCst), 4);
    }
}
