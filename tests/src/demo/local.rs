//! The `Canary` controller in local mode, as the demo drives it: a spec file, no API server;
//! the workloads are the gateway's `stable` and `canary` clusters and the revisions they serve.
//!
//! This is the controller's reconcile loop around its public pieces, and nothing more:
//! observe (revisions from [`Workloads`], the split from the exporter through `observe`),
//! [`decide`] (the pure decision core), then perform the actions with the Envoy file router
//! (`router::envoy_file`), the analysis [`Runner`] and [`Workloads::promote`]. The status lives
//! in memory, as the object would in the API server.
//!
//! Why not `plover_controller::local::run` (`plover local`): it names Envoy clusters after
//! revisions and promotes by routing to the canary's cluster, while the filter takes a
//! request's role from its cluster (`stable`/`canary` rules without a revision, the revision
//! from the app's header). With clusters named after revisions, the promoted revision would keep
//! the role `canary` and every observed split and role-based figure after the first promotion
//! would be wrong. Here promotion repoints the `stable` cluster at the canary's backend (CDS),
//! so roles stay right. `local::run` also offers no hook for such workloads and keeps the
//! measurements to itself.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::jiff::Timestamp;
use plover_controller::analysis::provider::{Providers, Settings};
use plover_controller::analysis::template;
use plover_controller::canary::{
    decide, resolve, Action, Canary, CanaryStatus, EnvoyRouting, Observation, TrafficCheck,
    WorkloadState,
};
use plover_controller::observe::{self, TrafficSource};
use plover_controller::router::envoy_file;
use plover_controller::runner::{CanaryKey, Runner};
use plover_wire::stats::StatsResponse;
use tokio::sync::{mpsc, watch};

use super::stack::{lock, Workloads};
use super::DemoError;

/// How often the controller looks again even when nothing notifies it: the traffic check and
/// the runs' measurements change continuously, and a short demo wants them seen at once.
const RECONCILE_EVERY: Duration = Duration::from_millis(500);
/// Events kept for the display.
const EVENTS_KEPT: usize = 50;
/// Window of the per-revision figures shown when the spec has no traffic check of its own.
const DISPLAY_WINDOW: &str = "5s";

/// One event the controller emitted (Kubernetes would record it on the Canary).
#[derive(Clone, Debug)]
pub struct Event {
    pub at: Instant,
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// What the controller knows right now, for the display and the releases.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// With each analysis metric's latest measurement (`metrics` of the runs).
    pub status: CanaryStatus,
    pub events: Vec<Event>,
    /// The exporter's answer the traffic check read (window of the check).
    pub stats: Option<StatsResponse>,
}

/// The controller for one Canary in local mode.
pub struct LocalController {
    canary: Canary,
    /// The Canary as JSON, for the templates' `fieldRef` args.
    object: serde_json::Value,
    templates: Vec<template::Document>,
    routing: EnvoyRouting,
    workloads: Arc<Mutex<Workloads>>,
    runner: Runner,
    completed: mpsc::UnboundedReceiver<CanaryKey>,
    exporter: observe::Exporter,
    /// The exporter's base URL, for the display's figures.
    display_exporter: String,
    key: CanaryKey,
    events: Vec<Event>,
    stats: Option<StatsResponse>,
}

impl LocalController {
    /// `canary` with its routes file and traffic check already pointed at the running stack.
    pub fn new(
        canary: Canary,
        templates: Vec<template::Document>,
        workloads: Arc<Mutex<Workloads>>,
        settings: Settings,
    ) -> Result<LocalController, DemoError> {
        let display_exporter = settings.exporter.clone().unwrap_or_default();
        let routing = canary.spec.traffic_routing.envoy.clone().ok_or_else(|| {
            DemoError::Controller("local mode needs spec.trafficRouting.envoy".into())
        })?;
        let providers =
            Providers::new(settings).map_err(|e| DemoError::Controller(e.to_string()))?;
        let (runner, completed) = Runner::new(Arc::new(providers), Arc::new(SystemTime::now));
        let exporter = observe::Exporter::new().map_err(DemoError::Controller)?;
        let object =
            serde_json::to_value(&canary).map_err(|e| DemoError::Controller(e.to_string()))?;
        let key = (
            canary.metadata.namespace.clone().unwrap_or_default(),
            canary.metadata.name.clone().unwrap_or_default(),
        );
        Ok(LocalController {
            canary,
            object,
            templates,
            routing,
            workloads,
            runner,
            completed,
            exporter,
            display_exporter,
            key,
            events: Vec::new(),
            stats: None,
        })
    }

    fn revisions(&self) -> (String, String) {
        let w = lock(&self.workloads);
        (w.stable().to_owned(), w.canary().to_owned())
    }

    /// One reconcile: observe, decide, act.
    pub async fn reconcile(&mut self) -> Result<(), DemoError> {
        let (stable, canary) = self.revisions();
        let (namespace, name) = self.key.clone();
        // The display reads the same answer; without a traffic check it is fetched for the
        // display alone and the decision gets no observation, as in the cluster.
        let check = self
            .canary
            .spec
            .traffic_check
            .clone()
            .unwrap_or_else(|| TrafficCheck {
                exporter: self.display_exporter.clone(),
                window: Some(DISPLAY_WINDOW.into()),
                ..TrafficCheck::default()
            });
        let service = check.service.clone().unwrap_or_else(|| name.clone());
        // An exporter that does not answer is "no observation".
        self.stats = self.exporter.stats(&check, &namespace, &service).await.ok();
        // By the canary's revision, as `plover local` does: at the start of a release the window
        // still holds the previous revision's requests on the canary cluster.
        let traffic = self
            .canary
            .spec
            .traffic_check
            .as_ref()
            .and(self.stats.as_ref())
            .map(|s| observe::traffic_of_revision(s, &canary));
        let status = self.canary.status.clone().unwrap_or_default();
        let verdicts = self.runner.verdicts(&self.key);
        let observation = Observation {
            name: &name,
            generation: self.canary.metadata.generation,
            spec: &self.canary.spec,
            status: &status,
            stable: WorkloadState::ready(&stable),
            canary: WorkloadState::ready(&canary),
            traffic,
            analyses: &verdicts,
            now: Timestamp::now(),
        };
        let decision = decide(&observation);
        for action in decision.actions {
            match action {
                Action::SetWeight {
                    canary: canary_weight,
                    stable: stable_weight,
                } => {
                    let workload = &self.canary.spec.workload;
                    envoy_file::set_weights(
                        &self.routing,
                        &workload.stable,
                        &workload.canary,
                        canary_weight,
                        stable_weight,
                    )
                    .map_err(|e| DemoError::Controller(e.to_string()))?;
                }
                Action::StartAnalysis {
                    name: run, source, ..
                } => {
                    // Only the templates the source references, as the cluster controller
                    // fetches them: `resolve` merges every template it is given.
                    let referenced = self
                        .templates
                        .iter()
                        .filter(|d| source.templates.iter().any(|r| r.template_name == d.name))
                        .cloned()
                        .collect();
                    let inputs = resolve::Inputs {
                        templates: referenced,
                        canary: &self.object,
                        stable_revision: &stable,
                        canary_revision: &canary,
                        secrets: template::Secrets::new(),
                    };
                    match resolve::resolve(&source, inputs) {
                        Ok(analysis) => self.runner.start(&self.key, &run, analysis),
                        Err(e) => self.runner.fail(&self.key, &run, e.to_string()),
                    }
                }
                Action::StopAnalysis { name: run } => self.runner.stop(&self.key, &run),
                Action::PromoteWorkload { revision } => {
                    lock(&self.workloads).promote(&revision)?;
                }
                Action::Event {
                    warning,
                    reason,
                    message,
                } => {
                    self.events.push(Event {
                        at: Instant::now(),
                        warning,
                        reason,
                        message,
                    });
                    let excess = self.events.len().saturating_sub(EVENTS_KEPT);
                    self.events.drain(..excess);
                }
            }
        }
        let runs = decision.status.analysis_runs_in_use();
        self.runner.retain(&self.key, &runs);
        self.canary.status = Some(decision.status);
        Ok(())
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            status: self.canary.status.clone().unwrap_or_default(),
            events: self.events.clone(),
            stats: self.stats.clone(),
        }
    }

    /// Reconciles until `stop`, publishing a snapshot after each reconcile. Returns the error
    /// that stopped it.
    pub async fn run(
        mut self,
        snapshots: watch::Sender<Snapshot>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), DemoError> {
        loop {
            self.reconcile().await?;
            snapshots.send_replace(self.snapshot());
            tokio::select! {
                _ = tokio::time::sleep(RECONCILE_EVERY) => {}
                _ = self.completed.recv() => {}
                _ = stop.changed() => return Ok(()),
            }
        }
    }
}

/// The traffic check pointed at the demo's exporter.
pub fn point_at_exporter(check: &mut Option<TrafficCheck>, exporter: &str) {
    if let Some(check) = check {
        check.exporter = exporter.to_owned();
    }
}
