//! Notifications from `plover local` (the same `execute` as the cluster controller) to real
//! HTTP receivers on loopback: a generic webhook from `--notify`, Slack and Teams from the
//! Canary's `spec.notifications`; each phase change told once, in order. A receiver that is
//! down during the whole rollout holds up no decision, and gets every message once it is back
//! within the retries.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use plover_controller::local;
use plover_controller::notify::Target;
use plover_testkit::scripted::{serve, serve_at, Seen};

/// A local Canary (no Envoy needs to run: the controller only writes its files) whose v2 is
/// set to 30%, paused for a second and promoted; `notifications` is its spec.notifications.
fn canary(dir: &Path, notifications: &str) -> PathBuf {
    let xds = dir.join("xds");
    std::fs::create_dir_all(&xds).unwrap();
    let file = dir.join("canary.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: plover.dev/v1alpha1\nkind: Canary\nmetadata: {{name: app, namespace: demo}}\nspec:\n  workload: {{stable: v1, canary: v2}}\n  trafficRouting:\n    envoy:\n      routesFile: {x}/routes.yaml\n      clustersFile: {x}/clusters.yaml\n      stableCluster: stable\n      canaryCluster: canary\n      backends: {{v1: '127.0.0.1:9', v2: '127.0.0.1:9'}}\n  steps:\n  - setWeight: 30\n  - pause: {{duration: 1}}\n{notifications}",
            x = xds.display()
        ),
    )
    .unwrap();
    file
}

fn options(file: &Path, notify: &[&str]) -> local::Options {
    local::Options {
        canary_file: file.to_owned(),
        template_files: Vec::new(),
        status_file: None,
        settings: Default::default(),
        until_done: true,
        poll: Duration::from_millis(50),
        notify: notify.iter().map(|t| Target::parse(t).unwrap()).collect(),
    }
}

fn bodies(seen: &[Seen], path: &str) -> Vec<serde_json::Value> {
    seen.iter()
        .filter(|s| s.target == path)
        .map(|s| {
            assert_eq!(s.method, "POST");
            assert!(s
                .headers
                .contains(&("content-type".into(), "application/json".into())));
            serde_json::from_str(&s.body).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn each_phase_change_reaches_webhook_slack_and_teams() {
    let (url, seen) = serve(Arc::new(|_: &Seen| (200, "text/plain", "ok".to_owned()))).await;
    let dir = tempfile::tempdir().unwrap();
    let file = canary(
        dir.path(),
        &format!(
            "  notifications:\n  - {{type: slack, url: '{url}/slack'}}\n  - {{type: teams, url: '{url}/teams'}}\n"
        ),
    );
    let mut log = Vec::new();
    let outcome = local::run(options(&file, &[&format!("webhook={url}/hook")]), &mut log).await;
    let text = String::from_utf8_lossy(&log);
    assert_eq!(outcome.unwrap(), local::Outcome::Promoted, "{text}");

    let seen = seen.lock().unwrap().clone();
    let hook = bodies(&seen, "/hook");
    let events: Vec<&str> = hook.iter().map(|b| b["event"].as_str().unwrap()).collect();
    // Started and paused in one decision, then promoted after the pause.
    assert_eq!(events, ["progressing", "paused", "promoted"], "{hook:#?}");
    let promoted = &hook[2];
    assert_eq!(promoted["canary"], "app");
    assert_eq!(promoted["namespace"], "demo");
    assert_eq!(promoted["phase"], "Healthy");
    assert_eq!(promoted["revision"], "v2");
    assert!(
        promoted["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "Promoted"),
        "{promoted}"
    );
    let slack: Vec<String> = bodies(&seen, "/slack")
        .iter()
        .map(|b| b["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(slack.len(), 3, "{slack:?}");
    assert!(
        slack[2].starts_with(":white_check_mark: Canary demo/app promoted: revision v2"),
        "{slack:?}"
    );
    let teams = bodies(&seen, "/teams");
    assert_eq!(teams.len(), 3);
    assert_eq!(teams[2]["@type"], "MessageCard");
    assert_eq!(teams[2]["title"], "Canary demo/app promoted");
}

#[tokio::test]
async fn a_receiver_that_is_down_delays_nothing_and_gets_the_messages_when_back() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let file = canary(dir.path(), "");
    let status_file = local::default_status_file(&file);
    let opts = options(&file, &[&format!("webhook=http://127.0.0.1:{port}/hook")]);
    let run = tokio::spawn(async move {
        let mut log = Vec::new();
        let outcome = local::run(opts, &mut log).await;
        (outcome, String::from_utf8(log).unwrap())
    });
    // The whole rollout, promotion included, happens while nothing listens.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let phase = std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|s| s["phase"].as_str().map(str::to_owned));
        if phase.as_deref() == Some("Healthy") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not promoted while the receiver was down: {phase:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!run.is_finished(), "run waits for the messages in flight");
    let (_, seen) = serve_at(
        port,
        Arc::new(|_: &Seen| (200, "text/plain", "ok".to_owned())),
    )
    .await;
    let (outcome, text) = run.await.unwrap();
    assert_eq!(outcome.unwrap(), local::Outcome::Promoted, "{text}");
    assert!(!text.contains("undelivered"), "{text}");
    let seen = seen.lock().unwrap().clone();
    let mut events: Vec<String> = bodies(&seen, "/hook")
        .iter()
        .map(|b| b["event"].as_str().unwrap().to_owned())
        .collect();
    events.sort();
    assert_eq!(
        events,
        ["paused", "progressing", "promoted"],
        "each message once, though retried"
    );
}

/// `plover local` (the binary) with the Canary's target URL in a secret, read as local mode
/// reads secrets: `PLOVER_SECRET_<NAME>_<KEY>`.
#[tokio::test]
async fn a_target_url_from_a_secret_in_local_mode() {
    let (url, seen) = serve(Arc::new(|_: &Seen| (200, "text/plain", "ok".to_owned()))).await;
    let dir = tempfile::tempdir().unwrap();
    let file = canary(
        dir.path(),
        "  notifications:\n  - {type: webhook, urlFrom: {secretKeyRef: {name: team-hook, key: url}}}\n",
    );
    let hook = format!("{url}/from-secret");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_plover"))
            .args(["local", "--until-done", "--poll-ms", "50", "-f"])
            .arg(&file)
            .env("PLOVER_SECRET_TEAM_HOOK_URL", hook)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let seen = seen.lock().unwrap().clone();
    let events: Vec<String> = bodies(&seen, "/from-secret")
        .iter()
        .map(|b| b["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events, ["progressing", "paused", "promoted"]);
}
