//! The exporter over real HTTP on 127.0.0.1: authentication, limits, strict decoding,
//! exactly-once ingest, the stats endpoint and graceful shutdown.

mod common;

use std::time::Duration;

use common::{batch, series, Exporter, TOKEN};
use plover_wire::batch::CONTENT_TYPE;
use plover_wire::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const STATS: &str = "namespace=demo&service=app&window=5m";

/// Stats without the fields that move with the clock.
async fn stable_stats(exporter: &Exporter) -> serde_json::Value {
    let mut stats = exporter.stats(STATS).await;
    stats.as_object_mut().unwrap().remove("as_of_unix_ms");
    stats
}

/// Every `plover_*` data line of /metrics (the exporter's own health lines excluded).
async fn data_lines(exporter: &Exporter) -> Vec<String> {
    let mut lines = exporter.metric_lines("plover_").await;
    lines.retain(|l| !l.starts_with("plover_exporter_"));
    lines
}

#[tokio::test]
async fn batches_are_merged_and_visible_in_stats_and_metrics() {
    let exporter = Exporter::start(&[]).await;
    let b = batch(
        "vm-1",
        1,
        3000,
        vec![
            series("v1", Role::Stable, 200, 90, 20_000),
            series("v1", Role::Stable, 503, 10, 50_000),
        ],
    );
    let reply = exporter.post_batch(b.encode()).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "applied\n"));

    let stats = exporter.stats(STATS).await;
    let stable = &stats["revisions"][0];
    assert_eq!(stable["revision"], "v1");
    assert_eq!(stable["role"], "stable");
    assert_eq!(stable["requests"], 100);
    assert_eq!(stable["errors"], 10);
    assert_eq!(stable["success_ratio"], 0.9);
    assert_eq!(stable["traffic_share"], 1.0);
    assert_eq!(stable["by_status_class"]["5xx"], 10);
    assert_eq!(stable["latency_samples"], 100);
    let p50 = stable["latency_seconds"]["p50"].as_f64().unwrap();
    assert!((p50 - 0.020).abs() / 0.020 < 0.01, "p50 {p50}");
    let p99 = stable["latency_seconds"]["p99"].as_f64().unwrap();
    assert!((p99 - 0.050).abs() / 0.050 < 0.01, "p99 {p99}");

    let lines = exporter.metric_lines("plover_requests_total").await;
    assert_eq!(lines.len(), 2);
    assert!(
        lines
            .iter()
            .any(|l| l.contains(r#"code="503""#) && l.ends_with(" 10")),
        "{lines:?}"
    );
    let ratio = exporter.metric_lines("plover_success_ratio{").await;
    assert!(
        ratio
            .iter()
            .any(|l| l.contains(r#"window="30s""#) && l.ends_with(" 0.9")),
        "{ratio:?}"
    );
    exporter.stop().await;
}

/// A filter that does not measure sizes (`record.sizes` off) makes its route publish no byte
/// counter, rather than one that reads as zero traffic; the other routes keep theirs.
#[tokio::test]
async fn routes_counted_without_sizes_publish_no_byte_counters() {
    let exporter = Exporter::start(&[]).await;
    let sized = batch(
        "vm-1",
        1,
        3000,
        vec![series("v1", Role::Stable, 200, 10, 20_000)],
    );
    let (mut key, mut delta) = series("v2", Role::Canary, 200, 5, 20_000);
    key.route = "unsized-route".into();
    (delta.request_bytes, delta.response_bytes) = (0, 0);
    let mut without_sizes = batch("vm-2", 1, 3000, vec![(key, delta)]);
    without_sizes.sizes_unmeasured = true;
    for b in [sized, without_sizes] {
        assert_eq!(exporter.post_batch(b.encode()).await.status, 200);
    }
    let bytes = exporter.metric_lines("plover_request_bytes_total").await;
    assert_eq!(bytes.len(), 1, "{bytes:?}");
    assert!(
        bytes[0].contains(r#"route="app-route""#) && bytes[0].ends_with(" 1000"),
        "{bytes:?}"
    );
    // The requests themselves are counted on both routes.
    let requests = exporter.metric_lines("plover_requests_total").await;
    assert!(
        requests
            .iter()
            .any(|l| l.contains(r#"route="unsized-route""#) && l.ends_with(" 5")),
        "{requests:?}"
    );
    exporter.stop().await;
}

#[tokio::test]
async fn a_full_exporter_folds_series_keeps_every_window_exact_and_says_what_it_lost() {
    // Issue 17, item 1: at --max-series a new canary revision and its first 503 used to be
    // refused while the batch was answered "applied".
    let exporter = Exporter::start(&["--max-series", "1", "--max-revisions", "2"]).await;
    let first = batch(
        "vm-1",
        1,
        3000,
        vec![series("v1", Role::Stable, 200, 90, 20_000)],
    );
    assert_eq!(exporter.post_batch(first.encode()).await.status, 200);
    let full = batch(
        "vm-1",
        2,
        3000,
        vec![
            series("v2", Role::Canary, 200, 9, 20_000),
            series("v2", Role::Canary, 503, 1, 20_000),
            series("v3", Role::Canary, 200, 5, 20_000),
        ],
    );
    let reply = exporter.post_batch(full.encode()).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "applied\n"));
    // v3 is one revision too many: refused, and the answer says how many requests.
    assert_eq!(reply.refused_requests.as_deref(), Some("5"));
    let stats = exporter.stats(STATS).await;
    let canary = stats["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["revision"] == "v2")
        .expect("the new canary revision is in /v1/stats");
    assert_eq!(
        (canary["requests"].clone(), canary["errors"].clone()),
        (10.into(), 1.into())
    );
    assert_eq!(stats["lost_requests"], 5, "{stats}");
    // /metrics: the canary's series are folded into code "other" per class, exactly.
    let lines = exporter.metric_lines("plover_requests_total{").await;
    let folded = |class: &str| {
        lines
            .iter()
            .find(|l| {
                l.contains(r#"revision="v2""#)
                    && l.contains(r#"code="other""#)
                    && l.contains(&format!(r#"status_class="{class}""#))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert_eq!(
        (folded("2xx"), folded("5xx")),
        (Some(9.0), Some(1.0)),
        "{lines:?}"
    );
    let health = exporter.metric_lines("plover_exporter_").await;
    for expected in [
        "plover_exporter_series_folded_total 2",
        "plover_exporter_refused_requests_total 5",
    ] {
        assert!(
            health.iter().any(|l| l == expected),
            "{expected}: {health:?}"
        );
    }
    exporter.stop().await;
}

#[tokio::test]
async fn series_per_code_false_exposes_one_series_per_status_class() {
    // Issue 17, item 6: a compact /metrics for users who do not need per-code series.
    let exporter = Exporter::start(&["--series-per-code", "false"]).await;
    let b = batch(
        "vm-1",
        1,
        3000,
        vec![
            series("v1", Role::Stable, 200, 90, 20_000),
            series("v1", Role::Stable, 204, 5, 20_000),
            series("v1", Role::Stable, 503, 10, 50_000),
            series("v1", Role::Stable, 500, 2, 50_000),
        ],
    );
    assert_eq!(exporter.post_batch(b.encode()).await.status, 200);
    let lines = exporter.metric_lines("plover_requests_total{").await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (class, total) in [("2xx", " 95"), ("5xx", " 12")] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!(r#"status_class="{class}""#))
                    && !l.contains("code=")
                    && !l.contains("grpc_status=")
                    && l.ends_with(total)),
            "{class}: {lines:?}"
        );
    }
    exporter.stop().await;
}

#[tokio::test]
async fn missing_or_wrong_tokens_get_401_and_change_nothing() {
    let exporter = Exporter::start(&[]).await;
    let body = batch(
        "vm-1",
        1,
        3000,
        vec![series("v1", Role::Stable, 200, 5, 1000)],
    )
    .encode();
    for token in [None, Some("wrong"), Some(""), Some("test-token-longer")] {
        let reply = exporter.post(body.clone(), token, CONTENT_TYPE).await;
        assert_eq!(reply.status, 401, "token {token:?}");
    }
    assert_eq!(
        exporter.stats(STATS).await["revisions"],
        serde_json::json!([])
    );
    let rejected = exporter
        .metric_lines("plover_exporter_batches_rejected_total")
        .await;
    assert_eq!(
        rejected,
        vec![r#"plover_exporter_batches_rejected_total{reason="unauthorized"} 4"#]
    );
    exporter.stop().await;
}

#[tokio::test]
async fn bad_requests_leave_all_other_data_intact() {
    let exporter = Exporter::start(&["--max-batch-bytes", "4096"]).await;
    let good = batch(
        "vm-1",
        1,
        3000,
        vec![
            series("v1", Role::Stable, 200, 50, 2000),
            series("v2", Role::Canary, 500, 5, 9000),
        ],
    );
    assert_eq!(exporter.post_batch(good.encode()).await.status, 200);
    let stats_before = stable_stats(&exporter).await;
    let metrics_before = data_lines(&exporter).await;
    assert!(!metrics_before.is_empty());

    // A batch whose last series is broken must not apply its valid first series either.
    let mut bad_tail = batch(
        "vm-1",
        2,
        3000,
        vec![
            series("v1", Role::Stable, 200, 7, 2000),
            series("v2", Role::Canary, 200, 3, 2000),
        ],
    );
    bad_tail.series[1].1.requests += 1; // histogram count no longer matches
    let truncated = batch(
        "vm-1",
        3,
        3000,
        vec![series("v1", Role::Stable, 200, 7, 2000)],
    )
    .encode();
    let mut oversized = batch(
        "vm-1",
        4,
        3000,
        vec![series("v1", Role::Stable, 200, 7, 2000)],
    );
    for i in 0..8 {
        let mut extra = oversized.series[0].clone();
        extra.0.route = format!("{i}{}", "r".repeat(500)); // distinct long strings: ~4 KiB
        oversized.series.push(extra);
    }
    let zero_sequence = batch(
        "vm-1",
        0,
        3000,
        vec![series("v1", Role::Stable, 200, 7, 2000)],
    );

    // (case, body, token, content type, expected status, expected in the reason)
    type Case<'a> = (&'a str, Vec<u8>, Option<&'a str>, &'a str, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "garbage",
            b"not a batch at all".to_vec(),
            Some(TOKEN),
            CONTENT_TYPE,
            400,
            "bad magic",
        ),
        (
            "broken last series",
            bad_tail.encode(),
            Some(TOKEN),
            CONTENT_TYPE,
            400,
            "histogram count",
        ),
        (
            "truncated",
            truncated[..truncated.len() - 3].to_vec(),
            Some(TOKEN),
            CONTENT_TYPE,
            400,
            "invalid batch",
        ),
        (
            "zero sequence",
            zero_sequence.encode(),
            Some(TOKEN),
            CONTENT_TYPE,
            400,
            "sequence",
        ),
        (
            "too large",
            oversized.encode(),
            Some(TOKEN),
            CONTENT_TYPE,
            413,
            "exceeds 4096",
        ),
        (
            "wrong content type",
            good.encode(),
            Some(TOKEN),
            "application/json",
            415,
            "content-type",
        ),
        ("no token", good.encode(), None, CONTENT_TYPE, 401, "token"),
        (
            "empty body",
            Vec::new(),
            Some(TOKEN),
            CONTENT_TYPE,
            400,
            "invalid batch",
        ),
    ];
    for (name, body, token, content_type, status, reason) in cases {
        let reply = exporter.post(body, token, content_type).await;
        assert_eq!(reply.status, status, "{name}: {}", reply.body);
        assert!(reply.body.contains(reason), "{name}: {}", reply.body);
    }

    assert_eq!(stable_stats(&exporter).await, stats_before);
    assert_eq!(data_lines(&exporter).await, metrics_before);
    let rejected = exporter
        .metric_lines("plover_exporter_batches_rejected_total")
        .await;
    assert!(
        rejected.contains(
            &r#"plover_exporter_batches_rejected_total{reason="malformed"} 5"#.to_owned()
        ),
        "{rejected:?}"
    );
    assert!(
        rejected.contains(
            &r#"plover_exporter_batches_rejected_total{reason="too_large"} 1"#.to_owned()
        ),
        "{rejected:?}"
    );

    // The sender is still welcome afterwards: a valid batch from the same VM applies.
    let next = batch(
        "vm-1",
        5,
        3000,
        vec![series("v1", Role::Stable, 200, 1, 2000)],
    );
    assert_eq!(exporter.post_batch(next.encode()).await.status, 200);
    assert_eq!(exporter.stats(STATS).await["revisions"][0]["requests"], 51);
    exporter.stop().await;
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_gets_413() {
    let exporter = Exporter::start(&["--max-batch-bytes", "1024"]).await;
    let mut stream = TcpStream::connect(exporter.addr).await.unwrap();
    let head = format!(
        "POST /v1/batches HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: {CONTENT_TYPE}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..3 {
        stream
            .write_all(format!("200\r\n{}\r\n", "x".repeat(0x200)).as_bytes())
            .await
            .unwrap();
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let mut response = vec![0; 1024];
    let n = stream.read(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response[..n]);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    exporter.stop().await;
}

#[tokio::test]
async fn retransmits_are_acknowledged_and_counted_once() {
    let exporter = Exporter::start(&[]).await;
    let first = batch(
        "vm-1",
        1,
        3000,
        vec![series("v1", Role::Stable, 200, 10, 1000)],
    );
    let second = batch(
        "vm-1",
        2,
        2500,
        vec![series("v1", Role::Stable, 200, 20, 1000)],
    );
    // Out of order, and each one retransmitted.
    for b in [&second, &first, &second, &first] {
        assert_eq!(exporter.post_batch(b.encode()).await.status, 200);
    }
    assert_eq!(exporter.stats(STATS).await["revisions"][0]["requests"], 30);
    let total = exporter.metric_lines("plover_requests_total").await;
    assert!(total[0].ends_with(" 30"), "{total:?}");
    assert_eq!(
        exporter
            .metric_lines("plover_exporter_batches_duplicate_total")
            .await,
        vec!["plover_exporter_batches_duplicate_total 2"]
    );
    assert_eq!(
        exporter
            .metric_lines("plover_exporter_batches_accepted_total")
            .await,
        vec!["plover_exporter_batches_accepted_total 2"]
    );
    exporter.stop().await;
}

#[tokio::test]
async fn stats_parameters_are_validated() {
    let exporter = Exporter::start(&["--window", "2m", "--windows", "30s,1m"]).await;
    for (query, status, mention) in [
        ("service=app&window=30s", 400, "namespace"),
        ("namespace=demo&window=30s", 400, "service"),
        ("namespace=demo&service=app", 400, "window"),
        ("namespace=demo&service=app&window=soon", 400, "window"),
        ("namespace=demo&service=app&window=3m", 400, "window"),
        (
            "namespace=demo&service=app&window=30s&extra=1",
            400,
            "extra",
        ),
        (
            "namespace=demo&service=app&window=2m",
            200,
            "\"window_seconds\":120",
        ),
    ] {
        let reply = exporter.get(&format!("/v1/stats?{query}")).await;
        assert_eq!(reply.status, status, "{query}: {}", reply.body);
        assert!(reply.body.contains(mention), "{query}: {}", reply.body);
    }
    let unknown = exporter
        .stats("namespace=demo&service=nothing&window=1m")
        .await;
    assert_eq!(unknown["revisions"], serde_json::json!([]));
    exporter.stop().await;
}

#[tokio::test]
async fn traffic_share_and_roles_per_revision() {
    let exporter = Exporter::start(&[]).await;
    let b = batch(
        "vm-1",
        1,
        3000,
        vec![
            series("v1", Role::Stable, 200, 300, 1000),
            series("v2", Role::Canary, 200, 100, 1000),
        ],
    );
    assert_eq!(exporter.post_batch(b.encode()).await.status, 200);
    let stats = exporter.stats(STATS).await;
    let revisions = stats["revisions"].as_array().unwrap();
    assert_eq!(revisions.len(), 2);
    let share = |role: &str| {
        revisions.iter().find(|r| r["role"] == role).unwrap()["traffic_share"]
            .as_f64()
            .unwrap()
    };
    assert_eq!((share("stable"), share("canary")), (0.75, 0.25));
    exporter.stop().await;
}

#[tokio::test]
async fn health_readiness_metrics_format_and_unknown_paths() {
    let exporter = Exporter::start(&[]).await;
    assert_eq!(exporter.get("/healthz").await.status, 200);
    assert_eq!(exporter.get("/readyz").await.status, 200);
    assert_eq!(exporter.get("/nope").await.status, 404);
    assert_eq!(exporter.get("/v1/batches").await.status, 405);
    let metrics = exporter.get("/metrics").await;
    assert!(
        metrics
            .content_type
            .starts_with("application/openmetrics-text"),
        "{}",
        metrics.content_type
    );
    assert!(metrics.body.ends_with("# EOF\n"));
    for family in [
        "plover_requests",
        "plover_request_duration_seconds",
        "plover_exporter_ingest_duration_seconds",
        "plover_exporter_active_series",
    ] {
        assert!(
            metrics.body.contains(&format!("# TYPE {family} ")),
            "{family} missing"
        );
    }
    exporter.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_an_in_flight_ingest() {
    let mut exporter = Exporter::start(&[]).await;
    let body = batch(
        "vm-1",
        1,
        3000,
        vec![series("v1", Role::Stable, 200, 10, 1000)],
    )
    .encode();
    let mut stream = TcpStream::connect(exporter.addr).await.unwrap();
    let head = format!(
        "POST /v1/batches HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: {CONTENT_TYPE}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    exporter.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // New connections are no longer accepted…
    assert!(
        TcpStream::connect(exporter.addr).await.is_err(),
        "listener should be closed"
    );
    // …but the request in flight completes and is applied.
    stream.write_all(&body[10..]).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("applied\n"), "{response}");
    exporter.join().await;
}

#[tokio::test]
async fn mirrored_copies_are_counted_apart_from_the_revisions_traffic() {
    // Issue 20, item 5: copies a route mirrored to the canary (role `mirror`) are never the
    // canary's traffic: not in its /v1/stats entry or the shares, not in plover_requests_total.
    let exporter = Exporter::start(&[]).await;
    let b = batch(
        "vm-1",
        1,
        3000,
        vec![
            series("v1", Role::Stable, 200, 90, 20_000),
            series("v2", Role::Canary, 200, 10, 20_000),
            series("v2", Role::Mirror, 500, 40, 20_000),
        ],
    );
    assert_eq!(exporter.post_batch(b.encode()).await.status, 200);
    let stats = exporter.stats(STATS).await;
    let entries = |field: &str| -> Vec<(String, String, u64, f64)> {
        stats[field]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["revision"].as_str().unwrap().to_owned(),
                    r["role"].as_str().unwrap().to_owned(),
                    r["requests"].as_u64().unwrap(),
                    r["traffic_share"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(
        entries("revisions"),
        [
            ("v1".to_owned(), "stable".to_owned(), 90, 0.9),
            ("v2".to_owned(), "canary".to_owned(), 10, 0.1)
        ],
        "{stats}"
    );
    assert_eq!(
        entries("mirrored"),
        [("v2".to_owned(), "mirror".to_owned(), 40, 1.0)],
        "{stats}"
    );
    let requests = exporter.metric_lines("plover_requests_total{").await;
    assert!(
        requests.iter().all(|l| !l.contains(r#"role="mirror""#)),
        "{requests:?}"
    );
    let mirrored = exporter
        .metric_lines("plover_mirrored_requests_total{")
        .await;
    assert_eq!(mirrored.len(), 1, "{mirrored:?}");
    assert!(
        mirrored[0].contains(r#"revision="v2""#) && mirrored[0].ends_with(" 40"),
        "{mirrored:?}"
    );
    let durations = exporter
        .metric_lines("plover_request_duration_seconds_count{")
        .await;
    assert!(
        durations.iter().all(|l| !l.contains(r#"role="mirror""#)),
        "{durations:?}"
    );
    exporter.stop().await;
}
