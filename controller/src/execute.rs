//! Carries out a [`Decision`] in either mode. The order and the bookkeeping (which runs to keep,
//! which revisions an analysis compares, writing the status only when it changed) live here once;
//! each mode implements only its [`Rim`]: the API server (`reconcile`) or files and Envoy
//! (`local`). Phase changes are told ([`crate::notify`]) once the status that records them is
//! written.

use crate::canary::{
    Action, AnalysisKind, AnalysisRunStatus, AnalysisSource, CanaryStatus, Decision, ManagedRoutes,
};
use crate::notify::{self, Change, NotifiedEvent};

/// The revisions an analysis started now compares, as its templates' `podTemplateHashValue`
/// and the `…VsStable` judges see them.
pub(crate) struct Revisions<'a> {
    /// What the stable pods report (their `pod-template-hash`; local mode: the revision name).
    pub stable: &'a str,
    pub canary: &'a str,
}

/// What a workload's pods report: the pod-template-hash they carry, which the exporter counts;
/// Plover's own revision id only where the ReplicaSet is not known yet (or with Envoy routing,
/// where the revision names are the clusters' and the two are one).
pub(crate) fn reported<'a>(hash: &'a Option<String>, revision: &'a Option<String>) -> &'a str {
    hash.as_deref().or(revision.as_deref()).unwrap_or_default()
}

impl<'a> Revisions<'a> {
    /// The revisions the status records for the rollout under way.
    pub fn of(status: &'a CanaryStatus) -> Self {
        Revisions {
            stable: reported(&status.stable_pod_template_hash, &status.stable_revision),
            canary: reported(&status.canary_pod_template_hash, &status.revision),
        }
    }
}

/// What one mode does for each action. Methods run in the decision's order; an error stops the
/// rest (the next reconcile decides again from what is then observed).
#[allow(async_fn_in_trait)] // used only with concrete rims inside this crate
pub(crate) trait Rim {
    type Error;

    /// Routes `canary`% to the canary and `stable`% to stable, with exactly the managed
    /// header and mirror routes `routes`.
    async fn set_weight(
        &mut self,
        canary: u32,
        stable: u32,
        routes: &ManagedRoutes,
    ) -> Result<(), Self::Error>;
    /// Makes `revision` the stable one (copies the pod template, or re-points fixed clusters).
    async fn promote(&mut self, revision: &str) -> Result<(), Self::Error>;
    /// Resolves the analysis and hands it to the runner; a spec that does not resolve is a
    /// failed run, not an error of the rim. `earlier` is what the status kept of a run of
    /// this name, which the runner resumes from (the controller restarted while it ran).
    async fn start_analysis(
        &mut self,
        name: &str,
        kind: AnalysisKind,
        source: &AnalysisSource,
        revisions: Revisions<'_>,
        earlier: Option<&AnalysisRunStatus>,
    ) -> Result<(), Self::Error>;
    fn stop_analysis(&mut self, name: &str);
    /// Forgets runs no longer recorded in the status.
    fn retain_analyses(&mut self, keep: &[&str]);
    /// An event that cannot be recorded must not stop the rollout: no error.
    async fn event(&mut self, warning: bool, reason: &'static str, message: &str);
    /// Replaces `read`, the status the decision was made on, with `status`.
    async fn write_status(
        &mut self,
        read: &CanaryStatus,
        status: &CanaryStatus,
    ) -> Result<(), Self::Error>;
    /// Tells the notification targets about `change` (written: told once). Must not wait for
    /// the deliveries.
    async fn notify(
        &mut self,
        change: Change,
        previous: &CanaryStatus,
        status: &CanaryStatus,
        events: Vec<NotifiedEvent>,
    );
}

/// Applies `decision`, made on `previous`: its actions in order, then the whole new status.
pub(crate) async fn execute<R: Rim>(
    decision: &Decision,
    previous: &CanaryStatus,
    rim: &mut R,
) -> Result<(), R::Error> {
    for action in &decision.actions {
        match action {
            Action::StopAnalysis { name } => rim.stop_analysis(name),
            Action::SetWeight {
                canary,
                stable,
                routes,
            } => rim.set_weight(*canary, *stable, routes).await?,
            Action::PromoteWorkload { revision } => rim.promote(revision).await?,
            Action::StartAnalysis { name, kind, source } => {
                let earlier = [&previous.step_analysis, &previous.background_analysis]
                    .into_iter()
                    .flatten()
                    .find(|run| run.name == *name);
                rim.start_analysis(
                    name,
                    *kind,
                    source,
                    Revisions::of(&decision.status),
                    earlier,
                )
                .await?
            }
            Action::Event {
                warning,
                reason,
                message,
            } => rim.event(*warning, reason, message).await,
        }
    }
    rim.retain_analyses(&decision.status.analysis_runs_in_use());
    if decision.status != *previous {
        rim.write_status(previous, &decision.status).await?;
        // Only once the status is written: a decision whose write lost a race (another
        // replica, an edit) is made again, and told then.
        for change in notify::changes(previous, &decision.status) {
            let events = decision
                .actions
                .iter()
                .filter_map(|action| match action {
                    Action::Event {
                        warning,
                        reason,
                        message,
                    } => Some(NotifiedEvent {
                        kind: if *warning { "Warning" } else { "Normal" },
                        reason: (*reason).to_owned(),
                        message: message.clone(),
                    }),
                    _ => None,
                })
                .collect();
            rim.notify(change, previous, &decision.status, events).await;
        }
    }
    Ok(())
}
