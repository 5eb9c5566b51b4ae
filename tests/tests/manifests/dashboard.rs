//! The Grafana dashboard's PromQL parses (promtool) and uses only metrics and labels the exporter
//! and the controller really expose.

use super::*;

fn dashboard() -> (String, Value) {
    let mut paths = Vec::new();
    files(&manifests_dir(), "json", &mut paths);
    let path = paths
        .into_iter()
        .find(|p| p.ends_with("plover-dashboard.json"))
        .expect("manifests/**/plover-dashboard.json");
    (
        relative(&path),
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap(),
    )
}

/// Every PromQL expression of the dashboard, with where it is (panel title / variable).
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn panels(list: &Value, out: &mut Vec<(String, String)>) {
        for panel in list.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((
                        format!(
                            "panel \"{}\" target {}",
                            panel["title"].as_str().unwrap_or(""),
                            target["refId"]
                        ),
                        expr.to_owned(),
                    ));
                }
            }
            panels(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dashboard["panels"], &mut out);
    // label_values(SELECTOR, label): the selector is PromQL.
    let label_values = regex::Regex::new(r"^label_values\((.*),\s*[a-zA-Z_]+\)$").unwrap();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] == "query" {
            let query = variable["query"]["query"]
                .as_str()
                .or(variable["query"].as_str())
                .unwrap_or_default();
            let selector = label_values.captures(query).unwrap_or_else(|| {
                panic!(
                    "variable {}: only label_values(selector, label) queries are checked: {query}",
                    variable["name"]
                )
            })[1]
                .to_owned();
            out.push((
                format!("variable ${}", variable["name"].as_str().unwrap()),
                selector,
            ));
        }
    }
    out
}

/// Grafana's variables replaced by values of the right shape.
fn substitute_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("${window}", "30s")
        .replace("$window", "30s")
        .replace("$namespace", "demo")
        .replace("$service", "app")
        .replace("$canary", "app")
}

/// (metric name, label names used in its selector) for every vector selector of `expr`.
fn selectors(expr: &str) -> Vec<(String, Vec<String>)> {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    let strings = regex::Regex::new(r#""(?:[^"\\]|\\.)*""#).unwrap();
    let text = strings.replace_all(expr, "\"\"");
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut depth_grouping = 0; // inside by(...)/without(...)/on(...)/…: label names
    let mut paren_stack: Vec<bool> = Vec::new();
    let mut previous_word = String::new();
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j] == ' ' {
                j += 1;
            }
            let next = chars.get(j).copied();
            let is_duration = start > 0 && chars[start - 1].is_ascii_digit();
            if next == Some('(')
                || KEYWORDS.contains(&word.to_lowercase().as_str())
                || depth_grouping > 0
                || is_duration
            {
                previous_word = word;
                continue;
            }
            let mut labels = Vec::new();
            if next == Some('{') {
                let end = (j..chars.len())
                    .find(|&k| chars[k] == '}')
                    .expect("unclosed {");
                let inner: String = chars[j + 1..end].iter().collect();
                for matcher in inner.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                    let name: String = matcher
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    labels.push(name);
                }
                i = end + 1;
            }
            out.push((word.clone(), labels));
            previous_word = word;
            continue;
        }
        if c == '{' {
            // A selector without a metric name: {__name__=...} is not used by the dashboard.
            panic!("selector without a metric name in {expr}");
        }
        if c == '(' {
            let grouping = [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ]
            .contains(&previous_word.as_str());
            paren_stack.push(grouping);
            if grouping {
                depth_grouping += 1;
            }
        }
        if c == ')' && paren_stack.pop() == Some(true) {
            depth_grouping -= 1;
        }
        if c == '[' {
            i = (i..chars.len())
                .find(|&k| chars[k] == ']')
                .expect("unclosed [")
                + 1;
            continue;
        }
        if !c.is_whitespace() {
            previous_word.clear();
        }
        i += 1;
    }
    out
}

/// Metric names and their label names from an exposition (OpenMetrics or Prometheus text).
fn exposition_series(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let label = regex::Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*""#).unwrap();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let name: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let labels = out.entry(name).or_default();
        if let Some(start) = line.find('{') {
            let end = line.rfind('}').unwrap();
            labels.extend(
                label
                    .captures_iter(&line[start..end])
                    .map(|c| c[1].to_owned()),
            );
        }
    }
    out
}

/// What the exporter and the controller expose, read from the running code: the exporter's
/// /metrics after it merged a batch with stable and canary traffic (so the windowed gauges
/// exist), and the controller's registry after it observed a Canary's status and an error.
async fn exposed_metrics() -> BTreeMap<String, BTreeSet<String>> {
    use plover_wire::{Batch, Role, SeriesDelta, SeriesKey};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = plover_exporter::Config::parse_from(["plover-exporter", "--token", "t"]).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(plover_exporter::run(config, listener, async {
        let _ = stopped.await;
    }));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut series = Vec::new();
    for (revision, role, code) in [
        ("v1", Role::Stable, 200),
        ("v2", Role::Canary, 200),
        ("v2", Role::Canary, 503),
    ] {
        let key = SeriesKey::answered("demo", "app", "r", revision, role, code);
        let mut delta = SeriesDelta {
            requests: 10,
            request_bytes: 100,
            response_bytes: 1000,
            ..Default::default()
        };
        delta.duration.record_n(1500, 10);
        series.push((key, delta));
    }
    series.sort_by(|a, b| a.0.cmp(&b.0));
    let batch = Batch {
        gateway: "gw".into(),
        instance: "i".into(),
        sequence: 1,
        start_unix_ms: now - 2500,
        end_unix_ms: now - 1500,
        dropped_requests: 0,
        sizes_unmeasured: false,
        series,
    };
    let body = batch.encode();
    let client_request = format!(
        "POST {} HTTP/1.1\r\nhost: test\r\nauthorization: Bearer t\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        plover_wire::batch::INGEST_PATH,
        plover_wire::batch::CONTENT_TYPE,
        body.len()
    );
    let response = exchange(addr, &[client_request.as_bytes(), &body].concat()).await;
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "batch refused: {response}"
    );
    // A batch with a wrong token, so the rejection counter has a series.
    let wrong = client_request.replace("Bearer t", "Bearer wrong");
    let response = exchange(addr, &[wrong.as_bytes(), &body].concat()).await;
    assert!(
        response.starts_with("HTTP/1.1 401"),
        "wrong token accepted: {response}"
    );
    let mut exposed = BTreeMap::new();
    for _ in 0..50 {
        let text = metrics_text(addr).await;
        exposed = exposition_series(&text);
        if exposed.contains_key("plover_success_ratio")
            && exposed.contains_key("plover_request_duration_window_seconds")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    assert!(
        exposed.contains_key("plover_success_ratio"),
        "the exporter never exposed its window gauges: {:?}",
        exposed.keys()
    );

    let metrics = plover_controller::metrics::Metrics::new();
    let status = plover_controller::canary::CanaryStatus {
        phase: Some(plover_controller::canary::CanaryPhase::Progressing),
        desired_weight: 20,
        observed_weight: Some(19.5),
        ..Default::default()
    };
    metrics.observe("demo", "app", &status);
    metrics.reconcile_error("kube");
    for (name, labels) in exposition_series(&metrics.encode()) {
        exposed.entry(name).or_default().extend(labels);
    }
    exposed
}

/// The body of the exporter's `/metrics`.
async fn metrics_text(addr: std::net::SocketAddr) -> String {
    let response = exchange(
        addr,
        b"GET /metrics HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n",
    )
    .await;
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn the_dashboard_queries_parse_and_use_only_exposed_metrics_and_labels() {
    let (file, dashboard) = dashboard();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 15, "{file}: {} queries", queries.len());
    // promtool parses every expression, written as recording rules.
    let rules = json!({"groups": [{"name": "plover-dashboard", "rules": queries.iter().enumerate().map(|(i, (_, expr))| {
        json!({"record": format!("plover:dashboard_query_{i}"), "expr": substitute_variables(expr)})
    }).collect::<Vec<_>>()}]});
    let dir = tempfile::tempdir().unwrap();
    let rules_file = dir.path().join("dashboard-rules.yaml");
    std::fs::write(&rules_file, serde_yaml::to_string(&rules).unwrap()).unwrap();
    let out = Command::new(debian_tool("promtool"))
        .args(["check", "rules"])
        .arg(&rules_file)
        .output()
        .unwrap();
    if !out.status.success() {
        let listing: Vec<String> = queries
            .iter()
            .enumerate()
            .map(|(i, (at, expr))| format!("plover:dashboard_query_{i} = {at}: {expr}"))
            .collect();
        panic!(
            "{file}: promtool check rules failed:\n{}{}\nqueries:\n  {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            listing.join("\n  ")
        );
    }
    // Every metric (and every label matched on) is exposed by the real exporter or controller.
    let exposed = exposed_metrics().await;
    let mut errors = Vec::new();
    let mut metrics_used = BTreeSet::new();
    for (at, expr) in &queries {
        let found = selectors(&substitute_variables(expr));
        if found.is_empty() {
            errors.push(format!("{file}: {at}: no metric in {expr}"));
        }
        for (metric, labels) in found {
            match exposed.get(&metric) {
                None => errors.push(format!("{file}: {at}: metric {metric} is exposed by neither the exporter nor the controller")),
                Some(known) => {
                    for label in &labels {
                        if !known.contains(label) {
                            errors.push(format!("{file}: {at}: {metric} has no label {label} (it has {known:?})"));
                        }
                    }
                }
            }
            metrics_used.insert(metric);
        }
    }
    assert_no_errors(&file, errors);
    // The panels the dashboard must have: rate, success ratio, p50/p99, observed vs desired weight, phase.
    for needed in [
        "plover_requests_total",
        "plover_success_ratio",
        "plover_request_duration_window_seconds",
        "plover_canary_desired_weight",
        "plover_canary_observed_weight",
        "plover_canary_phase",
    ] {
        assert!(
            metrics_used.contains(needed),
            "{file}: no panel uses {needed}"
        );
    }
    let exprs: String = queries.iter().map(|(_, e)| e.as_str()).collect();
    assert!(
        exprs.contains(r#"quantile="0.5""#) && exprs.contains(r#"quantile="0.99""#),
        "{file}: p50 and p99"
    );
}

#[test]
fn the_selector_reader_finds_metrics_and_labels_but_not_functions_or_groupings() {
    let found = selectors(
        r#"sum by (role, revision) (rate(foo_total{a="x{", b!~"y"}[5m])) / on(role) group_left bar offset 5m"#,
    );
    assert_eq!(
        found,
        vec![
            ("foo_total".to_owned(), vec!["a".to_owned(), "b".to_owned()]),
            ("bar".to_owned(), vec![])
        ]
    );
    assert_eq!(
        path_of("/spec/template/spec/containers/0/image"),
        ".spec.template.spec.containers[0].image"
    );
}
