//! `cargo xtask demo --istio`: the demo's two releases on a real control plane with real
//! Istio ([`plover_testkit::mesh`]): kube-apiserver, etcd, kube-controller-manager and KWOK;
//! istiod; the ingress gateway pod (pilot-agent starting Envoy); Plover installed with the
//! README's commands; the example `istio-subsets` with quick timings; the controller in
//! cluster mode. The live view is the local demo's, read from the Canary's status on the API
//! server, its Events and the exporter's `/v1/stats`; after each release the frame that
//! `kubectl plover get canary --watch` showed last is printed.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use plover_controller::canary::{CanaryPhase, CanaryStatus};
use plover_testkit::mesh::{quick_canary, App, Load, Mesh};
use plover_testkit::process::ChildGuard;
use plover_testkit::tools::workspace_binary;
use plover_wire::stats::StatsResponse;

use crate::local::{Event, Snapshot};
use crate::progress::{metric_lines, Display, Frame};
use crate::release::{Ending, Expect, Outcome};
use crate::stack::LoadCounters;
use crate::{DemoError, Options};

const EXAMPLE: &str = "istio-subsets";
const NAMESPACE: &str = "mock-server";
const NAME: &str = "mock-server";
const HOST: &str = "mock-server.example.com";
const IMAGE: &str = "ghcr.io/ssup2/mock-go-server";
/// The example's image, then the releases': healthy, and bad (20% of responses 5xx).
const TAGS: [&str; 3] = ["1.0.0", "2.0.0", "3.0.0"];
/// Load: this many clients, each a request, then this pause (about 100 requests a second).
const CLIENTS: usize = 4;
const PAUSE: Duration = Duration::from_millis(30);
/// A release that has not ended after this long has timed out.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(240);

fn image(tag: &str) -> String {
    format!("{IMAGE}:{tag}")
}

/// Runs the releases (`--scenario` picks one); returns early, stopping everything, once `stop`
/// is set (Ctrl-C).
pub fn run(
    opts: &Options,
    display: &mut Display,
    outcomes: &mut Vec<Outcome>,
    stop: &AtomicBool,
) -> Result<(), DemoError> {
    let releases: Vec<(&str, &str, Expect)> = [
        ("healthy", TAGS[1], Expect::Promoted),
        ("bad", TAGS[2], Expect::RolledBack),
    ]
    .into_iter()
    .filter(|(name, _, _)| opts.scenario.as_deref().is_none_or(|s| s == *name))
    .collect();
    if releases.is_empty() {
        return Err(DemoError::Start {
            what: "--scenario",
            message: "the Istio demo's releases are `healthy` and `bad`".into(),
        });
    }
    display.line(
        "starting: kube-apiserver, etcd, kube-controller-manager, KWOK, istiod, the ingress \
         gateway pod (pilot-agent + Envoy), Plover as the README installs it, Prometheus …",
    );
    let started = Instant::now();
    let mesh = std::panic::catch_unwind(|| Mesh::start(vec![App::releases(NAME, IMAGE, TAGS)]))
        .map_err(|panic| DemoError::Start {
            what: "the Istio control plane",
            message: panic_text(&panic),
        })?;
    let example = mesh.apply_example(EXAMPLE, NAMESPACE);
    mesh.wait_routed(mesh.gateway_address(), HOST);
    let mut controller = mesh.start_controller(&workspace_binary("plover"), "plover-demo");
    let canary = quick_canary(&example);
    let steps = canary["spec"]["steps"].as_array().map_or(0, Vec::len);
    mesh.cluster
        .apply(&canary.to_string())
        .map_err(|message| DemoError::Start {
            what: "the Canary",
            message,
        })?;
    let load = Load::start(mesh.gateway_address(), HOST, CLIENTS, PAUSE);
    let kubeconfig = mesh.cluster.admin_kubeconfig.clone();
    let lines = [
        format!("  gateway          http://{} (Host: {HOST})", mesh.gateway_address()),
        format!("  Prometheus UI    {}", mesh.prometheus.url),
        format!("  exporter         http://{}:9464/metrics", mesh.exporter),
        format!(
            "  follow it        KUBECONFIG={} kubectl plover get canary {NAME} -n {NAMESPACE} --watch",
            kubeconfig.display()
        ),
        format!("  state dir        {}", mesh.cluster.dir().display()),
    ];
    for line in &lines {
        display.line(line);
    }
    display.line(&format!(
        "ready after {:.0} s: istiod programs the gateway; the controller runs as its ServiceAccount",
        started.elapsed().as_secs_f64()
    ));
    let watch_file = mesh.cluster.dir().join("get-watch.txt");
    let mut watch = Command::new(workspace_binary("kubectl-plover"));
    watch
        .args(["get", "canary", NAME, "-n", NAMESPACE, "--watch"])
        .env("KUBECONFIG", &kubeconfig);
    let watch = ChildGuard::try_spawn("kubectl plover get --watch", watch, &watch_file).map_err(
        |message| DemoError::Start {
            what: "kubectl plover get --watch",
            message,
        },
    )?;

    let counters = LoadCounters::default();
    for (name, tag, expect) in releases {
        controller.assert_running();
        let from = read_status(&mesh).stable_revision.unwrap_or_default();
        let release_started = Instant::now();
        // The Events so far are the previous release's.
        let mut seen = Vec::new();
        events(&mesh, &mut seen);
        for (_, event) in &mut seen {
            *event = None;
        }
        mesh.cluster.kubectl_ok(&[
            "set",
            "image",
            "-n",
            NAMESPACE,
            &format!("deployment/{NAME}-canary"),
            &format!("{NAME}={}", image(tag)),
        ]);
        display.line(&format!(
            "▶ release {name}: {IMAGE} {} → {tag} (expect {expect:?})",
            image_tag(&mesh)
        ));
        let (ending, last) = loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
            let status = read_status(&mesh);
            let snapshot = Snapshot {
                events: events(&mesh, &mut seen),
                stats: stats(&mesh),
                status,
            };
            copy_totals(&load, &counters);
            let revision = snapshot.status.revision.clone().unwrap_or_default();
            display.frame(
                &Frame {
                    release: name,
                    from: &from,
                    revision: &revision,
                    elapsed: release_started.elapsed(),
                    snapshot: &snapshot,
                    load: &counters,
                    rps: (CLIENTS as f64) / PAUSE.as_secs_f64().max(0.001),
                },
                steps,
            );
            let status = &snapshot.status;
            let new = status.revision.is_some() && status.revision.as_deref() != Some(&from);
            if new
                && status.phase == Some(CanaryPhase::Healthy)
                && status.stable_revision == status.revision
            {
                break (Ending::Promoted, snapshot);
            }
            if new && status.phase == Some(CanaryPhase::Degraded) && status.aborted_at.is_some() {
                break (Ending::RolledBack, snapshot);
            }
            if release_started.elapsed() > RELEASE_TIMEOUT {
                break (Ending::TimedOut, snapshot);
            }
        };
        let seconds = release_started.elapsed().as_secs_f64();
        if ending == Ending::RolledBack {
            // The canary's last request marks all traffic back on stable: let stragglers in.
            std::thread::sleep(Duration::from_secs(2));
        }
        display.finish();
        let canary_revision = mesh.revision_of_track(NAMESPACE, "canary");
        let outcome = {
            let served = mesh.served.lock().unwrap_or_else(|e| e.into_inner());
            Outcome {
                release: name.to_owned(),
                from: from.clone(),
                revision: last.status.revision.clone().unwrap_or_default(),
                expected: expect,
                result: ending,
                seconds,
                canary_requests: served.total(&canary_revision),
                canary_errors: served.errors(&canary_revision),
                canary_exposure_seconds: match (ending, served.first_and_last(&canary_revision)) {
                    (Ending::RolledBack, Some((first, last))) => {
                        Some(last.duration_since(first).as_secs_f64())
                    }
                    _ => None,
                },
                message: last.status.message.clone().unwrap_or_default(),
                evidence: metric_lines(&last.status),
            }
        };
        display.line(&outcome.summary_line());
        display.line("  as `kubectl plover get canary --watch` shows it:");
        for line in last_watch_frame(&watch_file).lines() {
            display.line(&format!("    {line}"));
        }
        outcomes.push(outcome);
    }

    if opts.keep_running {
        display
            .line("keep running: the cluster stays up with the load on; Ctrl-C stops everything");
        for line in &lines {
            display.line(line);
        }
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    drop(watch);
    drop(load);
    Ok(())
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panicked".into())
}

/// The stable Deployment's image tag.
fn image_tag(mesh: &Mesh) -> String {
    mesh.cluster
        .kubectl_ok(&[
            "get",
            &format!("deployment/{NAME}"),
            "-n",
            NAMESPACE,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The Canary's status as the API server has it.
fn read_status(mesh: &Mesh) -> CanaryStatus {
    let text = mesh.cluster.kubectl(&[
        "get",
        &format!("canary/{NAME}"),
        "-n",
        NAMESPACE,
        "-o",
        "jsonpath={.status}",
    ]);
    serde_json::from_slice(&text.stdout).unwrap_or_default()
}

/// The Canary's Events: each kept in `seen` with the instant it was first read; those seen
/// before the release started are kept as `None`, not shown again.
fn events(mesh: &Mesh, seen: &mut Vec<(String, Option<Event>)>) -> Vec<Event> {
    let text = mesh.cluster.kubectl(&[
        "get",
        "events",
        "-n",
        NAMESPACE,
        "--field-selector",
        "involvedObject.kind=Canary",
        "--sort-by=.lastTimestamp",
        "-o",
        r#"jsonpath={range .items[*]}{.type}|{.reason}|{.lastTimestamp}|{.message}{"\n"}{end}"#,
    ]);
    for line in String::from_utf8_lossy(&text.stdout).lines() {
        let mut fields = line.splitn(4, '|');
        let (Some(kind), Some(reason), Some(_stamped), Some(message)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if seen.iter().any(|(key, _)| key == line) {
            continue;
        }
        let event = Event {
            at: Instant::now(),
            warning: kind == "Warning",
            reason: reason.to_owned(),
            message: message.to_owned(),
        };
        seen.push((line.to_owned(), Some(event)));
    }
    seen.iter().filter_map(|(_, event)| event.clone()).collect()
}

/// The exporter's answer for the service over the last 5 s.
fn stats(mesh: &Mesh) -> Option<StatsResponse> {
    let text = plover_testkit::http::get_text(&format!(
        "http://{}:9464/v1/stats?namespace={NAMESPACE}&service={NAME}&window=5s",
        mesh.exporter
    ))?;
    serde_json::from_str(&text).ok()
}

fn copy_totals(load: &Load, counters: &LoadCounters) {
    for (from, to) in [
        (&load.totals.sent, &counters.sent),
        (&load.totals.ok, &counters.ok),
        (&load.totals.errors, &counters.errors),
        (&load.totals.failed, &counters.failed),
    ] {
        to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// The last screen `kubectl plover get --watch` drew (it clears the screen before each).
fn last_watch_frame(file: &std::path::Path) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.rsplit("\x1b[2J")
        .next()
        .unwrap_or_default()
        .trim_end()
        .to_owned()
}
