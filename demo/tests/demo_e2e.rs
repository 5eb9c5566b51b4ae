//! The local demo end to end, headless: `plover-demo --plain` starts the whole stack (demo
//! app, Envoy with the filter, exporter, Prometheus, the controller in local mode, load) and
//! runs the releases. The healthy one must be promoted with no failed request, the bad one
//! rolled back while its canary took little traffic; and nothing the demo started may outlive
//! it. A missing Envoy, filter or Prometheus makes the demo, and so these tests, fail.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The demo's temp dir, from the line it prints at start.
fn state_dir(output: &str) -> PathBuf {
    let line = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("state dir"))
        .expect("the demo names its state dir");
    PathBuf::from(line.trim())
}

/// Processes whose command line mentions `dir` (Envoy and Prometheus are started with paths in it).
fn processes_using(dir: &std::path::Path) -> Vec<String> {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&needle))
        .collect()
}

/// One demo at a time: two stacks under load on a 2-core machine would distort each other's
/// latency, which the demo's analysis judges.
fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(plover_testkit::exclusive())
}

fn assert_cleaned_up(output: &str) {
    let dir = state_dir(output);
    assert!(!dir.exists(), "{} was not removed", dir.display());
    assert_eq!(
        processes_using(&dir),
        Vec::<String>::new(),
        "processes left behind"
    );
}

#[test]
fn the_demo_promotes_the_healthy_release_and_rolls_back_the_bad_one() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("outcomes.json");
    let output = Command::new(env!("CARGO_BIN_EXE_plover-demo"))
        .arg("--plain")
        .arg("--report")
        .arg(&report)
        .output()
        .expect("run plover-demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "plover-demo exited with {}",
        output.status
    );
    assert!(
        !stdout.contains("\x1b["),
        "headless output has no terminal control sequences"
    );
    assert_cleaned_up(&stdout);

    let outcomes: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let find = |name: &str| {
        outcomes
            .iter()
            .find(|o| o["release"] == name)
            .unwrap_or_else(|| panic!("release {name} in {outcomes:?}"))
    };

    let healthy = find("healthy");
    assert_eq!(healthy["result"], "promoted", "{healthy}");
    assert_eq!(
        (healthy["from"].as_str(), healthy["revision"].as_str()),
        (Some("v1"), Some("v2"))
    );
    assert!(healthy["canaryRequests"].as_u64().unwrap() > 0, "{healthy}");
    assert_eq!(healthy["canaryErrors"], 0, "{healthy}");

    let bad = find("bad");
    assert_eq!(bad["result"], "rolledBack", "{bad}");
    assert_eq!(
        (bad["from"].as_str(), bad["revision"].as_str()),
        (Some("v2"), Some("v3")),
        "the bad release starts from the promoted v2"
    );
    assert!(
        bad["message"]
            .as_str()
            .unwrap()
            .contains("Metric \"errors-vs-stable\" assessed Failed"),
        "rolled back by the error ratio judged against stable: {bad}"
    );
    // The evidence, in words, with the sample sizes of both revisions.
    let evidence: Vec<&str> = bad["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        evidence.iter().any(|e| e
            .starts_with("errors-vs-stable (Failed): error ratio vs stable: canary ")
            && e.contains(" vs stable ")
            && e.contains("evidence for worse")
            && e.ends_with("→ Failed")),
        "{evidence:?}"
    );
    assert!(
        stdout.contains("errors-vs-stable (Failed): error ratio vs stable"),
        "the demo prints the evidence"
    );
    let (requests, errors) = (
        bad["canaryRequests"].as_u64().unwrap(),
        bad["canaryErrors"].as_u64().unwrap(),
    );
    // The backend fails exactly every fifth request.
    assert_eq!(errors, requests / 5, "{bad}");
    let exposure = bad["canaryExposureSeconds"].as_f64().unwrap();
    assert!(
        exposure <= 10.0,
        "the bad canary took traffic for {exposure}s"
    );
}

#[test]
fn ctrl_c_stops_everything_the_demo_started() {
    let _serial = serial();
    let mut child = Command::new(env!("CARGO_BIN_EXE_plover-demo"))
        .args(["--plain", "--keep-running", "--scenario", "bad"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run plover-demo");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while !seen.contains("keep running") {
        assert!(
            Instant::now() < deadline,
            "the demo never reached --keep-running:\n{seen}"
        );
        match lines.next() {
            Some(Ok(line)) => seen.push_str(&(line + "\n")),
            _ => panic!("the demo stopped early:\n{seen}"),
        }
    }
    let dir = state_dir(&seen);
    assert!(
        !processes_using(&dir).is_empty(),
        "Envoy and Prometheus run from {}",
        dir.display()
    );
    assert!(Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    for line in lines.map_while(Result::ok) {
        seen.push_str(&(line + "\n"));
    }
    println!("{seen}");
    assert!(
        status.success(),
        "the releases ended as expected, so Ctrl-C after them exits 0: {status}"
    );
    assert_cleaned_up(&seen);
}
