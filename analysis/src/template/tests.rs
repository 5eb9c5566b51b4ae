//! Template parsing, args and validation. Validation cases mirror Argo's
//! `utils/analysis/factory_test.go` (`TestValidateMetrics`), substitution cases
//! `utils/template/template_test.go`, composition `helpers_test.go` (`TestFlattenTemplates`,
//! `TestMergeArgs`), and dry-run rules `analysis_test.go` (`TestInvalidDryRunConfigThrowsError`).

use std::path::PathBuf;

use super::*;

fn seeds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/seed-templates")
}

fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn one(yaml: &str) -> Result<Analysis, TemplateError> {
    resolve(&flatten(&load(yaml)?)?, &ArgInputs::default())
}

fn metric_yaml(extra: &str) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {{name: t}}\nspec:\n  metrics:\n  - name: m\n    provider: {{web: {{url: 'http://x'}}}}\n{}",
        extra.lines().map(|l| format!("    {l}\n")).collect::<String>()
    )
}

#[test]
fn every_seed_template_parses_unchanged() {
    let mut seen = 0;
    for entry in std::fs::read_dir(seeds_dir()).expect("tests/fixtures/seed-templates exists") {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue; // the folder's README
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let docs = load(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(docs.len(), 1, "{}", path.display());
        assert_eq!(docs[0].kind, "AnalysisTemplate");
        seen += 1;
    }
    assert!(seen >= 5, "expected the five seed templates, found {seen}");
}

#[test]
fn seed000_resolves_args_everywhere() {
    let text =
        std::fs::read_to_string(seeds_dir().join("seed000-istio-success-rate.yaml")).unwrap();
    let spec = flatten(&load(&text).unwrap()).unwrap();
    let err = resolve(&spec, &ArgInputs::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "args.service and args.namespace were not resolved (outside a cluster pass --arg \
         service=VALUE --arg namespace=VALUE)"
    );
    let inputs = ArgInputs {
        values: args(&[("service", "reviews"), ("namespace", "bookinfo")]),
        ..Default::default()
    };
    let analysis = resolve(&spec, &inputs).unwrap();
    let m = &analysis.metrics[0];
    assert_eq!(m.name, "success-rate");
    assert_eq!(m.interval, Some(Duration::from_secs(20)));
    assert_eq!(m.initial_delay, Some(Duration::from_secs(30)));
    assert_eq!(
        m.plan().effective_count(),
        None,
        "interval without count runs until stopped"
    );
    assert_eq!(m.success_condition.as_deref(), Some("result[0] > 0.95"));
    let ProviderSpec::Prometheus(p) = &m.provider else {
        panic!("prometheus")
    };
    assert!(
        p.query
            .contains(r#"destination_service=~"reviews.bookinfo.svc.cluster.local""#),
        "{}",
        p.query
    );
    assert!(!p.query.contains("{{"));
}

#[test]
fn seed002_secret_job_and_sigv4() {
    let text =
        std::fs::read_to_string(seeds_dir().join("seed002-success-rate-with-job.yaml")).unwrap();
    let spec = flatten(&load(&text).unwrap()).unwrap();
    let err = resolve(&spec, &ArgInputs::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("secret 'workspace-url' not found"), "{err}");
    assert!(
        err.contains("PLOVER_SECRET_WORKSPACE_URL_SECRETURL"),
        "{err}"
    );
    let mut inputs = ArgInputs::default();
    let url = "https://aps-workspaces.us-west-2.amazonaws.com/workspaces/ws-1";
    inputs
        .secrets
        .insert(("workspace-url".into(), "secretURL".into()), url.into());
    let analysis = resolve(&spec, &inputs).unwrap();
    assert!(
        matches!(&analysis.metrics[0].provider, ProviderSpec::Job(job) if job.spec["template"].is_object())
    );
    let ProviderSpec::Prometheus(p) = &analysis.metrics[1].provider else {
        panic!("prometheus")
    };
    assert_eq!(p.address, url);
    assert!(p.needs_sigv4(&p.address));
    assert!(!p.needs_sigv4("http://127.0.0.1:9090"));
    assert_eq!(
        analysis.redact(&format!("GET {url}/api failed")),
        "GET *****/api failed"
    );

    // The Job cannot be measured here: refused, naming it; dry-run, it is skipped with why and
    // the SigV4 Prometheus metric runs.
    let providers = crate::provider::Providers::new(Default::default()).unwrap();
    let refused = crate::provider::runnable(&providers, &analysis.metrics).unwrap_err();
    assert!(
        refused.starts_with("metric \"trigger-load-test\" cannot be measured here: the job provider runs a Kubernetes Job")
            && refused.ends_with("list it under dryRun to run the analysis without it"),
        "{refused}"
    );
    let mut dry = spec.clone();
    dry.dry_run.push(DryRunRule {
        metric_name: ".*".into(),
    });
    let analysis = resolve(&dry, &inputs).unwrap();
    let runnable = crate::provider::runnable(&providers, &analysis.metrics).unwrap();
    let runs: Vec<&str> = runnable.metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(runs, ["success-rate"]);
    let skipped: Vec<&str> = runnable
        .skipped
        .iter()
        .map(|(m, _)| m.name.as_str())
        .collect();
    assert_eq!(skipped, ["trigger-load-test"]);
}

#[test]
fn argo_substitution() {
    let a = args(&[("var", "value"), ("q", "a\"b")]);
    assert_eq!(substitute("{{args.var}}", &a).unwrap(), "value");
    assert_eq!(
        substitute("x {{ args.var }} y {{args.var}}", &a).unwrap(),
        "x value y value"
    );
    assert_eq!(substitute("{{args.q}}", &a).unwrap(), "a\"b");
    assert_eq!(substitute("no tags", &a).unwrap(), "no tags");
    assert_eq!(
        substitute("{{args.missing}}", &a).unwrap_err().to_string(),
        "Unable to resolve metric arguments: failed to resolve {{args.missing}}"
    );
    assert!(substitute("{{inputs.x}}", &a).is_err());
    assert!(substitute("{{args.var", &a)
        .unwrap_err()
        .to_string()
        .contains("Cannot find end tag"));
}

#[test]
fn args_override_and_value_from() {
    let yaml = r#"
apiVersion: argoproj.io/v1alpha1
kind: ClusterAnalysisTemplate
metadata: {name: t}
spec:
  args:
  - name: a
    value: "1"
  - name: n
    value: 3
  - name: env
    valueFrom: {fieldRef: {fieldPath: "metadata.labels['env']"}}
  metrics:
  - name: "m-{{args.a}}"
    interval: 1s
    count: "{{args.n}}"
    successCondition: "result == {{args.a}}"
    provider:
      web:
        url: "http://x/{{args.env}}"
        headers: [{key: "X-{{args.a}}", value: "{{ args.env }}"}]
"#;
    let spec = flatten(&load(yaml).unwrap()).unwrap();
    let err = resolve(&spec, &ArgInputs::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("args.env: valueFrom.fieldRef 'metadata.labels['env']'"),
        "{err}"
    );
    let mut inputs = ArgInputs::default();
    inputs
        .fields
        .insert("metadata.labels['env']".into(), "prod".into());
    inputs.values.insert("a".into(), "7".into());
    let analysis = resolve(&spec, &inputs).unwrap();
    let m = &analysis.metrics[0];
    assert_eq!(m.name, "m-7");
    assert_eq!(m.count, Some(3));
    assert_eq!(m.success_condition.as_deref(), Some("result == 7"));
    let ProviderSpec::Web(w) = &m.provider else {
        panic!()
    };
    assert_eq!(w.url, "http://x/prod");
    assert_eq!(
        w.headers[0],
        Header {
            key: "X-7".into(),
            value: "prod".into()
        }
    );
    inputs.values.insert("nope".into(), "1".into());
    assert!(resolve(&spec, &inputs)
        .unwrap_err()
        .to_string()
        .contains("declares no arg named 'nope'"));
}

#[test]
fn argo_validate_metric() {
    let cases: &[(&str, &str)] = &[
        (
            "count: 1\nfailureLimit: 2",
            "count (1) must be >= failureLimit + consecutiveSuccessLimit (2 + 0) if both >= 0",
        ),
        (
            "count: 1\ninconclusiveLimit: 2",
            "count must be >= inconclusiveLimit",
        ),
        ("count: 2", "interval must be specified when count > 1"),
        (
            "interval: 5\ncount: 2",
            "invalid interval string: time: missing unit in duration \"5\"",
        ),
        ("initialDelay: 5x", "invalid startDelay string"),
        (
            "failureLimit: -2",
            "failureLimit must be >= 0, or -1 to be disabled",
        ),
        (
            "failureLimit: -1",
            "failureLimit and consecutiveSuccessLimit cannot both be disabled",
        ),
        (
            "consecutiveSuccessLimit: -1",
            "consecutiveSuccessLimit must be >= 0",
        ),
        ("inconclusiveLimit: -1", "inconclusiveLimit must be >= 0"),
        (
            "consecutiveErrorLimit: -1",
            "consecutiveErrorLimit must be >= 0",
        ),
        (
            "count: 3\ninterval: 1s\nfailureLimit: -1\nconsecutiveSuccessLimit: 4",
            "count must be >= consecutiveSuccessLimit",
        ),
        ("count: abc", "count: \"abc\" is not an integer"),
    ];
    for (extra, message) in cases {
        let err = one(&metric_yaml(extra)).unwrap_err().to_string();
        assert!(
            err.starts_with("Analysis spec invalid: metrics[0]: "),
            "{extra}: {err}"
        );
        assert!(err.contains(message), "{extra}: {err}");
    }
    let ok = one(&metric_yaml(
        "interval: 1m30s\ncount: 3\nfailureLimit: 2\nconsecutiveErrorLimit: 0",
    ))
    .unwrap();
    let m = &ok.metrics[0];
    assert_eq!(
        (m.count, m.failure_limit, m.consecutive_error_limit),
        (Some(3), 2, 0)
    );
    assert_eq!(m.interval, Some(Duration::from_secs(90)));
    let defaults = one(&metric_yaml("")).unwrap();
    let m = &defaults.metrics[0];
    assert_eq!(
        (
            m.failure_limit,
            m.inconclusive_limit,
            m.consecutive_error_limit,
            m.consecutive_success_limit
        ),
        (0, 0, 4, 0)
    );
    assert_eq!(m.retention, 10);
}

#[test]
fn argo_providers() {
    let provider = |p: &str| {
        let yaml = format!("kind: AnalysisTemplate\napiVersion: argoproj.io/v1alpha1\nspec:\n  metrics:\n  - name: m\n    provider: {p}\n");
        one(&yaml)
    };
    assert!(provider("{}")
        .unwrap_err()
        .to_string()
        .contains("no provider specified"));
    assert!(
        provider("{web: {url: 'http://a'}, prometheus: {query: up}}")
            .unwrap_err()
            .to_string()
            .contains("multiple providers specified")
    );
    assert!(provider("{statsd: {}}")
        .unwrap_err()
        .to_string()
        .contains("unknown provider \"statsd\""));
    for (p, name) in [
        ("{datadog: {query: x}}", "datadog"),
        (
            "{plugin: {'argoproj-labs/x': {}}}",
            "plugin/argoproj-labs/x",
        ),
    ] {
        let a = provider(p).unwrap();
        match &a.metrics[0].provider {
            ProviderSpec::Unsupported { provider, reason } => {
                assert_eq!(provider, name);
                assert!(!reason.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }
    // A job is parsed (what runs it needs a cluster); its spec must be an object.
    let a = provider("{job: {metadata: {labels: {a: b}}, spec: {backoffLimit: 0}}}").unwrap();
    assert!(matches!(&a.metrics[0].provider, ProviderSpec::Job(j) if j.spec["backoffLimit"] == 0));
    assert!(provider("{job: {spec: 3}}")
        .unwrap_err()
        .to_string()
        .contains("provider.job.spec"));
    let a = provider("{plover: {namespace: ns, service: svc, metric: successRate}}").unwrap();
    let ProviderSpec::Plover(p) = &a.metrics[0].provider else {
        panic!()
    };
    assert_eq!(
        (
            p.window.as_str(),
            p.revision.as_str(),
            p.min_requests,
            p.no_data
        ),
        ("30s", "canary", 20, NoData::Inconclusive)
    );
    assert!(
        provider("{plover: {namespace: ns, service: svc, metric: bogus}}")
            .unwrap_err()
            .to_string()
            .contains("provider.plover")
    );
    assert!(
        provider("{plover: {namespace: ns, service: svc, metric: latency, minSamples: 3}}")
            .unwrap_err()
            .to_string()
            .contains("minSamples")
    );
}

#[test]
fn argo_flatten_and_merge() {
    let yaml = r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: a}
spec:
  args: [{name: svc}, {name: x, value: "1"}]
  metrics: [{name: one, provider: {web: {url: "http://a/{{args.svc}}"}}}]
---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: b}
spec:
  templates: [{templateName: a}]
  args: [{name: svc, value: reviews}, {name: x, value: "1"}]
  metrics: [{name: two, provider: {web: {url: "http://b"}}}]
"#;
    let docs = load(yaml).unwrap();
    let spec = flatten(&docs).unwrap();
    let a = resolve(&spec, &ArgInputs::default()).unwrap();
    assert_eq!(
        a.metrics
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>(),
        ["one", "two"]
    );
    assert_eq!(a.args["svc"], "reviews");
    let dup = yaml.replace("name: two", "name: one");
    assert_eq!(
        flatten(&load(&dup).unwrap()).unwrap_err().to_string(),
        "two metrics have the same name 'one'"
    );
    let conflict = yaml.replace(
        "{name: x, value: \"1\"}]\n  metrics: [{name: two",
        "{name: x, value: \"2\"}]\n  metrics: [{name: two",
    );
    assert!(matches!(
        flatten(&load(&conflict).unwrap()),
        Err(TemplateError::ConflictingArg(_))
    ));
    let missing = yaml.replace("templateName: a", "templateName: zzz");
    assert!(matches!(
        flatten(&load(&missing).unwrap()),
        Err(TemplateError::MissingTemplate { .. })
    ));
}

#[test]
fn dry_run_and_retention_rules() {
    let yaml = r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: a}
spec:
  dryRun: [{metricName: "^lat"}]
  measurementRetention: [{metricName: ".*", limit: 3}]
  metrics:
  - {name: latency, provider: {web: {url: "http://a"}}}
  - {name: success, provider: {web: {url: "http://a"}}}
"#;
    let a = one(yaml).unwrap();
    assert!(a.metrics[0].dry_run);
    assert!(!a.metrics[1].dry_run);
    assert_eq!(a.metrics[1].retention, 3);
    let bad = yaml.replace("^lat", "^nothing");
    assert_eq!(
        one(&bad).unwrap_err().to_string(),
        "Analysis spec invalid: dryRun[0]: Rule didn't match any metric name(s)"
    );
}

#[test]
fn plover_inline_analysis_block() {
    let yaml = r#"
apiVersion: plover.dev/v1alpha1
kind: CanaryRollout
metadata: {name: reviews}
spec:
  analysis:
    args: [{name: service, value: reviews}]
    metrics:
    - name: success
      interval: 10s
      successCondition: result >= 0.99
      provider:
        plover: {namespace: bookinfo, service: "{{args.service}}", metric: successRate, minRequests: 50, noData: Failed}
"#;
    let a = one(yaml).unwrap();
    let ProviderSpec::Plover(p) = &a.metrics[0].provider else {
        panic!()
    };
    assert_eq!(
        (p.service.as_str(), p.min_requests, p.no_data),
        ("reviews", 50, NoData::Failed)
    );
}

#[test]
fn documents_that_are_not_analyses() {
    assert!(matches!(
        load("kind: ConfigMap\napiVersion: v1\n"),
        Err(TemplateError::Empty)
    ));
    assert!(load("kind: AnalysisTemplate\napiVersion: v1\nspec: {}\n")
        .unwrap_err()
        .to_string()
        .contains("argoproj.io/v1alpha1"));
    assert!(matches!(
        load("metrics: [\n"),
        Err(TemplateError::Yaml { .. })
    ));
}

#[test]
fn secret_env_var_names() {
    assert_eq!(
        secret_env_var("workspace-url", "secretURL"),
        "PLOVER_SECRET_WORKSPACE_URL_SECRETURL"
    );
}

#[test]
fn conditions_that_do_not_compile_are_an_invalid_spec_at_load() {
    for (extra, expected) in [
        (
            "successCondition: 'result >='",
            "Analysis spec invalid: metrics[0]: successCondition \"result >=\" does not compile: expected an expression, found end of condition (1:10)",
        ),
        (
            "failureCondition: 'lenn(result) > 0'",
            "Analysis spec invalid: metrics[0]: failureCondition \"lenn(result) > 0\" does not compile: unknown func lenn (1:1)",
        ),
        (
            "successCondition: 'reslt > 0'",
            "does not compile: unknown name reslt (1:1)",
        ),
    ] {
        let error = one(&metric_yaml(extra)).expect_err(extra).to_string();
        assert!(error.contains(expected), "{extra}: {error}");
    }
    // After argument substitution: a placeholder that resolves to valid syntax compiles.
    let yaml = "apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {name: t}\nspec:\n  args: [{name: limit, value: '0.95'}]\n  metrics:\n  - name: m\n    successCondition: 'result >= {{args.limit}}'\n    provider: {web: {url: 'http://x'}}\n";
    assert!(one(yaml).is_ok());
}

#[test]
fn every_missing_arg_is_named_at_once_with_what_supplies_it() {
    let yaml = r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: t}
spec:
  args:
  - name: service
  - name: token
    valueFrom: {secretKeyRef: {name: prom-auth, key: token}}
  - name: env
    valueFrom: {fieldRef: {fieldPath: "metadata.labels['env']"}}
  - name: namespace
  - name: given
    value: x
  metrics:
  - name: m
    provider: {web: {url: "http://x/{{args.service}}"}}
"#;
    let spec = flatten(&load(yaml).unwrap()).unwrap();
    let err = resolve(&spec, &ArgInputs::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "args.service and args.namespace were not resolved (outside a cluster pass --arg \
         service=VALUE --arg namespace=VALUE); args.token: secret 'prom-auth' not found (outside \
         a cluster supply it with --secret prom-auth/token=VALUE or PLOVER_SECRET_PROM_AUTH_TOKEN); \
         args.env: valueFrom.fieldRef 'metadata.labels['env']' reads a Rollout; outside a cluster \
         pass --arg env=VALUE or --field 'metadata.labels['env']=VALUE'"
    );
    let one = ArgInputs {
        values: args(&[("service", "a"), ("token", "t"), ("env", "prod")]),
        ..Default::default()
    };
    assert_eq!(
        resolve(&spec, &one).unwrap_err().to_string(),
        "args.namespace was not resolved (outside a cluster pass --arg namespace=VALUE)"
    );
}
