//! Notifications: when a rollout's phase changes (progressing, paused, inconclusive, promoted,
//! aborted, rolled back), a message to every target of the Canary's `spec.notifications` and the
//! controller's `--notify` list: a generic webhook (a JSON document), or Slack's and Microsoft
//! Teams' incoming-webhook formats.
//!
//! [`changes`] decides from the status before and after a decision (pure). [`Notifier::send`]
//! never waits: each target has a queue of its own, delivered in order by a task that retries
//! each message with backoff (a receiver that is down delays no other target, and gets its
//! messages when it is back within the retries), so a notification can never hold up a
//! decision. [`Notifier::flush`] lets a process that is about
//! to exit (`plover local --until-done`) wait for what is still in flight.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, warn};

use crate::canary::{CanaryPhase, CanaryStatus, NotificationKind, PauseReason};

/// A phase change worth telling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    /// A new revision's rollout started (or resumed stepping after a pause).
    Progressing,
    /// At a pause step, waiting for time or `promote`.
    Paused,
    /// Held by an Inconclusive analysis, waiting for `promote` or `abort`.
    Inconclusive,
    /// Stable runs the new revision and takes all traffic.
    Promoted,
    /// Stopped by `abort`: all traffic back on stable.
    Aborted,
    /// Stopped by a failed analysis, traffic check or progress deadline: all traffic back on
    /// stable.
    RolledBack,
    /// Healthy again without a promotion (the canary went back to stable's template).
    Healthy,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Progressing => "progressing",
            Change::Paused => "paused",
            Change::Inconclusive => "inconclusive",
            Change::Promoted => "promoted",
            Change::Aborted => "aborted",
            Change::RolledBack => "rolled back",
            Change::Healthy => "healthy",
        }
    }

    fn bad(self) -> bool {
        matches!(
            self,
            Change::Aborted | Change::RolledBack | Change::Inconclusive
        )
    }
}

/// What changed between the status a decision was made on and the one it wrote, in order:
/// a new revision's rollout starting (`Progressing`, even when the same decision already
/// pauses it), then the phase it reached. Nothing when the phase stayed, or on first sight of
/// a Canary with nothing to roll out.
pub fn changes(previous: &CanaryStatus, next: &CanaryStatus) -> Vec<Change> {
    let mut changes = Vec::new();
    let Some(after) = next.phase else {
        return changes;
    };
    let before = previous.phase;
    let started = next.revision.is_some()
        && next.revision != previous.revision
        && next.revision != next.stable_revision
        && after != CanaryPhase::Healthy;
    if started {
        changes.push(Change::Progressing);
    }
    if before == Some(after) {
        return changes;
    }
    let reached = match after {
        CanaryPhase::Progressing => (!started).then_some(Change::Progressing),
        CanaryPhase::Paused => match next.pause.as_ref().map(|p| p.reason) {
            Some(PauseReason::InconclusiveAnalysisRun) => Some(Change::Inconclusive),
            _ => Some(Change::Paused),
        },
        // Promotion in progress: told once it is done.
        CanaryPhase::Promoting => None,
        CanaryPhase::Healthy => match before {
            None => None,
            Some(CanaryPhase::Degraded) => Some(Change::Healthy),
            Some(_) => Some(Change::Promoted),
        },
        // `abort` sets the request before the decision that carries it out.
        CanaryPhase::Degraded if previous.abort => Some(Change::Aborted),
        CanaryPhase::Degraded => Some(Change::RolledBack),
    };
    changes.extend(reached);
    changes
}

/// One message, whatever the format.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub namespace: String,
    pub canary: String,
    pub event: Change,
    pub phase: Option<CanaryPhase>,
    pub previous_phase: Option<CanaryPhase>,
    /// The revision being rolled out.
    pub revision: Option<String>,
    /// The revision stable runs.
    pub stable_revision: Option<String>,
    /// The status message (why it is paused, what failed).
    pub message: Option<String>,
    /// The Events the same decision recorded.
    pub events: Vec<NotifiedEvent>,
    /// RFC 3339.
    pub time: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct NotifiedEvent {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub reason: String,
    pub message: String,
}

impl Notification {
    /// The notification of `change` for `canary`, between the status a decision was made on
    /// and the one it wrote, with the decision's events.
    pub fn new(
        canary: &crate::canary::Canary,
        change: Change,
        previous: &CanaryStatus,
        status: &CanaryStatus,
        events: Vec<NotifiedEvent>,
        time: String,
    ) -> Notification {
        use kube::ResourceExt;
        Notification {
            namespace: canary.namespace().unwrap_or_else(|| "default".to_owned()),
            canary: canary.name_any(),
            event: change,
            phase: status.phase,
            previous_phase: previous.phase,
            revision: status.revision.clone(),
            stable_revision: status.stable_revision.clone(),
            message: status.message.clone(),
            events,
            time,
        }
    }

    /// `Webhook`: the notification as JSON; `Slack`: `{"text"}`; `Teams`: a MessageCard.
    pub fn body(&self, kind: NotificationKind) -> Value {
        match kind {
            NotificationKind::Webhook => serde_json::to_value(self).unwrap_or(Value::Null),
            NotificationKind::Slack => {
                let icon = if self.event.bad() {
                    ":x:"
                } else {
                    ":white_check_mark:"
                };
                json!({"text": format!("{icon} {}", self.sentence())})
            }
            NotificationKind::Teams => json!({
                "@type": "MessageCard",
                "@context": "https://schema.org/extensions",
                "summary": self.title(),
                "themeColor": if self.event.bad() { "d13438" } else { "2eb886" },
                "title": self.title(),
                "text": self.sentence(),
            }),
        }
    }

    fn title(&self) -> String {
        format!(
            "Canary {}/{} {}",
            self.namespace,
            self.canary,
            self.event.as_str()
        )
    }

    /// `Canary demo/app rolled back: revision v3 (stable v2). RolloutAborted: …`
    fn sentence(&self) -> String {
        let mut text = self.title();
        if let Some(revision) = &self.revision {
            text.push_str(&format!(": revision {revision}"));
            if let Some(stable) = self.stable_revision.as_ref().filter(|s| *s != revision) {
                text.push_str(&format!(" (stable {stable})"));
            }
        }
        if let Some(message) = self.message.as_ref().filter(|m| !m.is_empty()) {
            text.push_str(&format!(". {message}"));
        }
        text
    }
}

/// The targets of a Canary's `spec.notifications`, each URL given or read with `secret`
/// (`(name, key)` → value, `None` when it does not exist); a target that cannot be resolved is
/// left out with the reason (the others still get the message).
pub async fn resolve_targets<F, Fut>(
    spec: &[crate::canary::NotificationTarget],
    mut secret: F,
) -> (Vec<Target>, Vec<String>)
where
    F: FnMut(String, String) -> Fut,
    Fut: std::future::Future<Output = Option<String>>,
{
    let (mut targets, mut problems) = (Vec::new(), Vec::new());
    for (i, t) in spec.iter().enumerate() {
        let url = match (&t.url, &t.url_from) {
            (Some(url), None) => Some(url.clone()),
            (None, Some(from)) => {
                let reference = &from.secret_key_ref;
                let value = secret(reference.name.clone(), reference.key.clone()).await;
                if value.is_none() {
                    problems.push(format!(
                        "spec.notifications[{i}].urlFrom: secret {}/{} not found",
                        reference.name, reference.key
                    ));
                }
                value.map(|v| v.trim().to_owned())
            }
            _ => {
                problems.push(format!(
                    "spec.notifications[{i}]: give exactly one of url and urlFrom"
                ));
                None
            }
        };
        if let Some(url) = url {
            match Target::new(t.kind, url) {
                Ok(target) => targets.push(target),
                Err(e) => problems.push(format!("spec.notifications[{i}]: {e}")),
            }
        }
    }
    (targets, problems)
}

/// A resolved target: where to POST and in which format.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub kind: NotificationKind,
    pub url: String,
}

impl fmt::Debug for Target {
    // Incoming-webhook URLs carry their secret in the path: show the host only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = reqwest::Url::parse(&self.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        write!(f, "{:?} target at {host}", self.kind)
    }
}

impl Target {
    /// `KIND=URL` (`webhook=https://…`, `slack=…`, `teams=…`), as `--notify` takes it.
    pub fn parse(text: &str) -> Result<Target, String> {
        let (kind, url) = text.split_once('=').ok_or_else(|| {
            format!("--notify {text:?}: expected KIND=URL (webhook, slack or teams)")
        })?;
        let kind = match kind {
            "webhook" => NotificationKind::Webhook,
            "slack" => NotificationKind::Slack,
            "teams" => NotificationKind::Teams,
            other => {
                return Err(format!(
                    "--notify: unknown kind {other:?} (webhook, slack or teams)"
                ))
            }
        };
        Target::new(kind, url.to_owned()).map_err(|e| format!("--notify {kind:?}: {e}"))
    }

    /// A target whose URL is checked to be http(s).
    pub fn new(kind: NotificationKind, url: String) -> Result<Target, String> {
        match reqwest::Url::parse(&url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {
                Ok(Target { kind, url })
            }
            _ => Err("the URL must be http:// or https:// with a host".to_owned()),
        }
    }
}

/// How often and how patiently a delivery is tried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// Each attempt's own timeout.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    /// Six attempts over about 25 s (1, 2, 4, 8, 10 s apart).
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Messages waiting or in delivery beyond which new ones are dropped (with a warning): a
/// receiver down for long must not grow memory without bound.
const MAX_IN_FLIGHT: usize = 1024;

/// Sends notifications in the background: one queue per target, delivered in order (a reader
/// sees `paused` before `promoted`), each message retried before the next.
#[derive(Clone)]
pub struct Notifier {
    client: reqwest::Client,
    global: Vec<Target>,
    policy: RetryPolicy,
    queues: Arc<Mutex<HashMap<Target, Queue>>>,
    in_flight: Arc<(AtomicUsize, Notify)>,
}

type Queue = mpsc::UnboundedSender<(Value, String)>;

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("global", &self.global)
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// `global`: the targets of every Canary (`--notify`).
    pub fn new(global: Vec<Target>, policy: RetryPolicy) -> Notifier {
        plover_analysis::provider::install_tls_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(policy.timeout)
            .build()
            .unwrap_or_default();
        Notifier {
            client,
            global,
            policy,
            queues: Arc::default(),
            in_flight: Arc::default(),
        }
    }

    /// Queues the message for each target (the global ones and `targets`); returns at once.
    pub fn send(&self, targets: &[Target], notification: &Notification) {
        let what = format!(
            "{}/{} {}",
            notification.namespace,
            notification.canary,
            notification.event.as_str()
        );
        for target in self.global.iter().chain(targets) {
            if self.in_flight.0.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
                finished(&self.in_flight);
                warn!(?target, %what, "Notification dropped: too many messages waiting.");
                continue;
            }
            let body = notification.body(target.kind);
            let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            let queue = queues
                .entry(target.clone())
                .or_insert_with(|| self.start_queue(target.clone()));
            if queue.send((body, what.clone())).is_err() {
                finished(&self.in_flight);
            }
        }
    }

    /// The task that delivers one target's messages in order.
    fn start_queue(&self, target: Target) -> Queue {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Value, String)>();
        let (client, policy, in_flight) =
            (self.client.clone(), self.policy, self.in_flight.clone());
        tokio::spawn(async move {
            while let Some((body, what)) = rx.recv().await {
                deliver(&client, &target, &body, policy, &what).await;
                finished(&in_flight);
            }
        });
        tx
    }

    /// Waits until every message queued has been delivered or given up on, or `timeout`;
    /// false if some had not.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.in_flight.1.notified();
                if self.in_flight.0.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

fn finished(in_flight: &(AtomicUsize, Notify)) {
    in_flight.0.fetch_sub(1, Ordering::SeqCst);
    in_flight.1.notify_waiters();
}

/// POSTs `body`, retrying failures (no answer, or any status but 2xx) with backoff.
async fn deliver(
    client: &reqwest::Client,
    target: &Target,
    body: &Value,
    policy: RetryPolicy,
    what: &str,
) {
    let mut backoff = policy.first_backoff;
    for attempt in 1..=policy.attempts.max(1) {
        let sent = client
            .post(&target.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .timeout(policy.timeout)
            .send()
            .await;
        let failure = match sent {
            Ok(response) if response.status().is_success() => {
                debug!(?target, what, attempt, "Notification delivered.");
                return;
            }
            Ok(response) => format!("answered {}", response.status()),
            Err(e) => plover_analysis::provider::error_chain(&e),
        };
        if attempt == policy.attempts.max(1) {
            warn!(?target, what, attempts = attempt, %failure, "Notification not delivered; giving up.");
            return;
        }
        debug!(?target, what, attempt, %failure, ?backoff, "Notification not delivered; retrying.");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(policy.max_backoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canary::PauseState;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn each_phase_change_is_told_once() {
        use CanaryPhase::*;
        let s = |p, r: &str| CanaryStatus {
            phase: Some(p),
            revision: Some(r.to_owned()),
            stable_revision: Some("a".to_owned()),
            ..Default::default()
        };
        let none = CanaryStatus::default();
        assert_eq!(changes(&none, &s(Healthy, "a")), []);
        assert_eq!(changes(&s(Healthy, "a"), &s(Healthy, "a")), []);
        assert_eq!(
            changes(&s(Healthy, "a"), &s(Progressing, "b")),
            [Change::Progressing]
        );
        assert_eq!(changes(&s(Progressing, "b"), &s(Progressing, "b")), []);
        // A newer revision replacing one under way.
        assert_eq!(
            changes(&s(Paused, "b"), &s(Progressing, "c")),
            [Change::Progressing]
        );
        let mut paused = s(Paused, "b");
        paused.pause = Some(PauseState {
            reason: PauseReason::CanaryPauseStep,
            since: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        });
        assert_eq!(changes(&s(Progressing, "b"), &paused), [Change::Paused]);
        // Started and paused by one decision: both told, in that order.
        assert_eq!(
            changes(&none, &paused),
            [Change::Progressing, Change::Paused]
        );
        let mut held = paused.clone();
        held.pause.as_mut().unwrap().reason = PauseReason::InconclusiveAnalysisRun;
        assert_eq!(changes(&s(Progressing, "b"), &held), [Change::Inconclusive]);
        assert_eq!(changes(&paused, &s(Promoting, "b")), []);
        assert_eq!(
            changes(&s(Promoting, "b"), &s(Healthy, "b")),
            [Change::Promoted]
        );
        assert_eq!(
            changes(&s(Progressing, "b"), &s(Degraded, "b")),
            [Change::RolledBack]
        );
        let mut asked = paused.clone();
        asked.abort = true;
        assert_eq!(changes(&asked, &s(Degraded, "b")), [Change::Aborted]);
        // Back to stable's template after a rollback (`undo`): no new rollout.
        assert_eq!(
            changes(&s(Degraded, "b"), &s(Healthy, "a")),
            [Change::Healthy]
        );
    }

    #[test]
    fn bodies_in_each_format() {
        let n = Notification {
            namespace: "demo".into(),
            canary: "app".into(),
            event: Change::RolledBack,
            phase: Some(CanaryPhase::Degraded),
            previous_phase: Some(CanaryPhase::Progressing),
            revision: Some("v3".into()),
            stable_revision: Some("v2".into()),
            message: Some("RolloutAborted: analysis failed".into()),
            events: vec![NotifiedEvent {
                kind: "Warning",
                reason: "AnalysisFailed".into(),
                message: "m".into(),
            }],
            time: "2026-12-03T10:00:00Z".into(),
        };
        let webhook = n.body(NotificationKind::Webhook);
        assert_eq!(webhook["event"], "rolled-back");
        assert_eq!(webhook["canary"], "app");
        assert_eq!(webhook["previousPhase"], "Progressing");
        assert_eq!(webhook["events"][0]["reason"], "AnalysisFailed");
        assert_eq!(
            n.body(NotificationKind::Slack)["text"],
            ":x: Canary demo/app rolled back: revision v3 (stable v2). RolloutAborted: analysis failed"
        );
        let teams = n.body(NotificationKind::Teams);
        assert_eq!(teams["@type"], "MessageCard");
        assert_eq!(teams["title"], "Canary demo/app rolled back");
    }

    #[test]
    fn targets_parse_from_flags() {
        let t = Target::parse("slack=https://hooks.slack.com/services/T/B/secret").unwrap();
        assert_eq!(t.kind, NotificationKind::Slack);
        assert_eq!(format!("{t:?}"), "Slack target at hooks.slack.com");
        assert!(Target::parse("pager=https://x")
            .unwrap_err()
            .contains("unknown kind"));
        assert!(Target::parse("https://x").unwrap_err().contains("KIND=URL"));
        assert!(Target::parse("webhook=ftp://x")
            .unwrap_err()
            .contains("http"));
    }
}
