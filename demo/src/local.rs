//! The `Canary` controller in local mode, as the demo runs it: `plover local`'s own loop
//! ([`LocalController`]) on the spec file the demo writes into its state dir, with no API
//! server. The gateway's clusters are fixed (`stable` and `canary`, which the filter counts by
//! role); the spec names the revisions and their backends, and the controller points the
//! clusters at them through the CDS file and routes the weights through the RDS file. A
//! release is an edit of the spec file (the canary's revision and its backend), as a person
//! running `plover local` would make it.
//!
//! Each reconcile is published as a [`Snapshot`] for the display and the releases: the status
//! (with each analysis metric's latest measurement), the events so far, and the exporter's
//! answer the traffic check read.

use std::time::{Duration, Instant};

use plover_controller::canary::{CanaryStatus, TrafficCheck};
use plover_controller::local::{LocalController, Options};
use plover_wire::stats::StatsResponse;
use tokio::sync::watch;

use crate::DemoError;

/// How often the controller looks again even when nothing notifies it: the traffic check and
/// the runs' measurements change continuously, and a short demo wants them seen at once.
pub const RECONCILE_EVERY: Duration = Duration::from_millis(500);
/// Events kept for the display.
const EVENTS_KEPT: usize = 50;

/// One event the controller emitted (Kubernetes would record it on the Canary).
#[derive(Clone, Debug)]
pub struct Event {
    pub at: Instant,
    pub warning: bool,
    pub reason: String,
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

/// Runs the controller until it fails (the demo aborts the task to stop it), publishing a
/// snapshot after every reconcile.
pub async fn run(options: Options, snapshots: watch::Sender<Snapshot>) -> Result<(), DemoError> {
    let controller =
        LocalController::new(&options).map_err(|e| DemoError::Controller(e.to_string()))?;
    let mut events: Vec<Event> = Vec::new();
    // The controller's own lines (routes, events, status) would interleave with the display.
    let mut quiet = std::io::sink();
    controller
        .run_observed(false, &mut quiet, |pass| {
            let now = Instant::now();
            events.extend(pass.events.iter().map(|e| Event {
                at: now,
                warning: e.warning,
                reason: e.reason.to_owned(),
                message: e.message.clone(),
            }));
            let excess = events.len().saturating_sub(EVENTS_KEPT);
            events.drain(..excess);
            snapshots.send_replace(Snapshot {
                status: pass.status.clone(),
                events: events.clone(),
                stats: pass.stats.clone(),
            });
        })
        .await
        .map_err(|e| DemoError::Controller(e.to_string()))?;
    Ok(())
}

/// The traffic check pointed at the demo's exporter.
pub fn point_at_exporter(check: &mut Option<TrafficCheck>, exporter: &str) {
    if let Some(check) = check {
        check.exporter = exporter.to_owned();
    }
}
