//! The local demo end to end, headless: `plover-demo --plain` starts the whole stack (demo
//! app, Envoy with the filter, exporter, Prometheus, the controller in local mode, load) and
//! runs both releases. The healthy one must be promoted with no failed request, the bad one
//! rolled back while its canary took little traffic. A missing Envoy, filter or Prometheus
//! makes the demo, and so this test, fail.

use std::process::Command;

use serde_json::Value;

#[test]
fn the_demo_promotes_the_healthy_release_and_rolls_back_the_bad_one() {
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
    assert!(output.status.success(), "plover-demo exited with {}", output.status);
    assert!(!stdout.contains("\x1b["), "headless output has no terminal control sequences");

    let outcomes: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let find = |name: &str| outcomes.iter().find(|o| o["release"] == name).unwrap_or_else(|| panic!("release {name} in {outcomes:?}"));

    let healthy = find("healthy");
    assert_eq!(healthy["result"], "promoted", "{healthy}");
    assert_eq!((healthy["from"].as_str(), healthy["revision"].as_str()), (Some("v1"), Some("v2")));
    assert!(healthy["canaryRequests"].as_u64().unwrap() > 0, "{healthy}");
    assert_eq!(healthy["canaryErrors"], 0, "{healthy}");

    let bad = find("bad");
    assert_eq!(bad["result"], "rolledBack", "{bad}");
    assert_eq!((bad["from"].as_str(), bad["revision"].as_str()), (Some("v2"), Some("v3")), "the bad release starts from the promoted v2");
    assert!(bad["message"].as_str().unwrap().contains("Failed"), "rolled back by a failed analysis: {bad}");
    let (requests, errors) = (bad["canaryRequests"].as_u64().unwrap(), bad["canaryErrors"].as_u64().unwrap());
    // The backend fails exactly every fifth request.
    assert_eq!(errors, requests / 5, "{bad}");
    let exposure = bad["canaryExposureSeconds"].as_f64().unwrap();
    assert!(exposure <= 10.0, "the bad canary took traffic for {exposure}s");
}
