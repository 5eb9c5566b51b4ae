//! `plover analyze` on the seed templates as users first run them: what is missing or wrong is
//! said at once, before any measurement, with what to pass or what failed (no 40 s of
//! retried measurements). The providers' https itself is tested in
//! `analysis/tests/providers_http.rs`.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use plover_testkit::scripted::{serve_https, Seen, TestCa};

fn seed(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/seed-templates")
        .join(name)
}

async fn analyze(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_plover"))
            .arg("analyze")
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// The run's final message, after checking that it ended in Error (exit 3) before measuring.
fn error_before_measuring(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("Phase: Error"), "{text}");
    assert!(
        !text.contains("value="),
        "nothing was measured before the error: {text}"
    );
    text.lines()
        .find_map(|l| l.strip_prefix("Message: "))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn missing_args_are_listed_at_once_with_the_flags_to_pass() {
    let seed000 = seed("seed000-istio-success-rate.yaml");
    let out = analyze(strings(&["-f", seed000.to_str().unwrap()])).await;
    assert_eq!(
        error_before_measuring(&out),
        "args.service and args.namespace were not resolved (outside a cluster pass --arg \
         service=VALUE --arg namespace=VALUE)"
    );
    // seed002's address comes from a secret: the flag and the variable that supply it.
    let seed002 = seed("seed002-success-rate-with-job.yaml");
    let out = analyze(strings(&["-f", seed002.to_str().unwrap()])).await;
    let message = error_before_measuring(&out);
    assert!(
        message.contains("--secret workspace-url/secretURL=VALUE")
            && message.contains("PLOVER_SECRET_WORKSPACE_URL_SECRETURL"),
        "{message}"
    );
}

#[tokio::test]
async fn an_address_that_cannot_be_reached_is_reported_with_its_cause_before_the_run() {
    let seed000 = seed("seed000-istio-success-rate.yaml");
    let args = |extra: &[&str]| {
        let mut args = strings(&[
            "-f",
            seed000.to_str().unwrap(),
            "--arg",
            "service=reviews",
            "--arg",
            "namespace=bookinfo",
        ]);
        args.extend(strings(extra));
        args
    };
    // The seed's own in-cluster address, outside the cluster: name resolution fails.
    let message = error_before_measuring(&analyze(args(&[])).await);
    assert!(
        message.starts_with(
            "cannot reach what the metrics query: metric success-rate: http://prometheus.prometheus:9090"
        ) && message.contains("dns error"),
        "{message}"
    );
    // Nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let message = error_before_measuring(
        &analyze(args(&["--prometheus", &format!("http://127.0.0.1:{port}")])).await,
    );
    assert!(message.contains("Connection refused"), "{message}");

    // https whose certificate is not trusted: said at once; trusted with --ca-file, the run
    // measures.
    let ca = TestCa::new("plover analyze test CA");
    let (url, _) = serve_https(
        Arc::new(|_: &Seen| {
            (
                200,
                "application/json",
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000,"0.99"]}]}}"#.to_owned(),
            )
        }),
        &ca.server(),
    )
    .await;
    let message = error_before_measuring(&analyze(args(&["--prometheus", &url])).await);
    assert!(message.contains("UnknownIssuer"), "{message}");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let out = analyze(args(&[
        "--prometheus",
        &url,
        "--ca-file",
        ca_file.to_str().unwrap(),
        "--time-scale",
        "0.01",
        "--duration",
        "2s",
    ]))
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("value=[0.99]  Successful"), "{text}");
    assert!(text.contains("Phase: Successful"), "{text}");
}
