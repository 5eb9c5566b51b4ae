//! `plover analyze` with the plover provider against scripted exporters on loopback: the
//! process's output and exit codes (the providers themselves are tested in
//! `analysis/tests/providers_http.rs`).

use std::{io::Write as _, sync::Arc};

use plover_testkit::scripted::{serve, steady_exporter, Seen, REVIEWS_STATS};

#[tokio::test]
async fn plover_analyze_with_the_plover_provider() {
    let (url, _) = serve(Arc::new(|_: &Seen| {
        (200, "application/json", REVIEWS_STATS.to_owned())
    }))
    .await;
    let dir = std::env::temp_dir().join(format!("plover-analyze-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rollout.yaml");
    let mut f = std::fs::File::create(&file).unwrap();
    write!(
        f,
        r#"apiVersion: plover.dev/v1alpha1
kind: CanaryRollout
metadata: {{name: reviews}}
spec:
  analysis:
    args: [{{name: service}}]
    metrics:
    - name: canary-success
      interval: 2s
      count: 2
      successCondition: result >= 0.95
      provider:
        plover: {{namespace: bookinfo, service: "{{{{args.service}}}}", metric: successRate}}
    - name: canary-share
      successCondition: result > 0.05
      provider:
        plover: {{namespace: bookinfo, service: "{{{{args.service}}}}", metric: trafficShare}}
"#
    )
    .unwrap();
    let run = |args: Vec<String>| {
        let file = file.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_plover"))
                .arg("analyze")
                .arg("-f")
                .arg(file)
                .args(args)
                .output()
                .unwrap()
        })
    };
    let out = run(vec![
        "--arg".into(),
        "service=reviews".into(),
        "--exporter".into(),
        url.clone(),
        "--time-scale".into(),
        "0.5".into(),
    ])
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(
        text.matches("canary-success  value=0.97  Successful")
            .count(),
        2,
        "{text}"
    );
    assert!(
        text.contains("canary-share  value=0.1  Successful"),
        "{text}"
    );
    assert!(text.contains("Phase: Successful"), "{text}");
    // A missing arg is an Error before anything runs (exit 3).
    let out = run(vec!["--exporter".into(), url.clone()]).await.unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("args.service was not resolved"));
    // Bad usage is 64, not a phase.
    let out = run(vec!["--arg".into(), "novalue".into()]).await.unwrap();
    assert_eq!(out.status.code(), Some(64));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `plover analyze` on a Plover inline analysis with `errorRatioVsStable`: the evidence
/// sentence is printed with each measurement, and a canary with twice stable's errors fails.
#[tokio::test]
async fn plover_analyze_error_ratio_vs_stable() {
    let (url, _) = serve(steady_exporter((600, 12), (5400, 54))).await;
    let dir = std::env::temp_dir().join(format!("plover-analyze-vs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("canary.yaml");
    std::fs::write(
        &file,
        r#"apiVersion: plover.dev/v1alpha1
kind: CanaryRollout
metadata: {name: reviews}
spec:
  analysis:
    metrics:
    - name: errors-vs-stable
      interval: 1s
      count: 20
      failureLimit: 0
      inconclusiveLimit: 19
      consecutiveSuccessLimit: 1
      provider:
        plover: {namespace: bookinfo, service: reviews, metric: errorRatioVsStable, window: 1s, alpha: 0.05, tolerance: 1, minEffect: 2}
"#,
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_plover"))
            .arg("analyze")
            .arg("-f")
            .arg(&file)
            .args(["--exporter", &url, "--duration", "30s"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("errors-vs-stable  value={"), "{text}");
    assert!(text.contains("\"decision\":\"Fail\""), "{text}");
    assert!(
        text.contains("Failed  (error ratio: canary is worse than stable (canary "),
        "{text}"
    );
    assert!(text.contains("evidence for worse "), "{text}");
    assert!(text.contains("either decides at 20 = 1/α"), "{text}");
    assert!(text.contains("Phase: Failed"), "{text}");
    assert!(
        text.contains("errors-vs-stable: plover errorRatioVsStable of bookinfo/reviews, canary vs stable, sequential (alpha 0.05, tolerance 1, minEffect 2)"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
