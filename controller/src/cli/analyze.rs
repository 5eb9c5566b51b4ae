//! `plover analyze`: runs an analysis outside any cluster and reports every measurement.
//!
//! The loop is the controller's reconcile in miniature: ask the [`Run`] what is due, measure
//! it (concurrently, one task per metric), record, assess, then sleep until the next
//! measurement is due. Ctrl-C or `--duration` terminates the run the way
//! `kubectl argo rollouts terminate analysisrun` does.

use std::{
    collections::BTreeMap,
    io::Write,
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde_json::json;

use super::rfc3339;
use plover_analysis::{
    phase::Phase,
    provider::{self, Providers, Runnable, Settings},
    run::{Measurement, Run, RunOptions, Termination},
    template::{self, Analysis, ArgInputs, DryRunRule, MetricSpec, ProviderSpec, TemplateError},
};

/// How the result is printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// One line per measurement as it happens, then a summary.
    #[default]
    Text,
    /// Progress lines on stderr, one JSON document on stdout at the end.
    Json,
}

/// Everything `plover analyze` was asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    pub files: Vec<std::path::PathBuf>,
    pub args: BTreeMap<String, String>,
    pub secrets: template::Secrets,
    pub fields: BTreeMap<String, String>,
    pub prometheus: Option<String>,
    pub prometheus_default: Option<String>,
    pub exporter: Option<String>,
    /// CA certificates (PEM files) https trusts besides the system's.
    pub ca_files: Vec<std::path::PathBuf>,
    /// A cluster for `job` metrics: its kubeconfig and the namespace their Jobs run in.
    pub cluster: Option<ClusterOptions>,
    pub output: Output,
    /// Stop (terminate) the run after this much wall time.
    pub duration: Option<Duration>,
    /// Multiplies every interval, initialDelay and the error retry delay.
    pub time_scale: f64,
    pub termination: Termination,
    /// Metric names (or regular expressions) to treat as dry-run, as a template's `dryRun`.
    pub dry_run: Vec<String>,
}

/// Why the analysis could not start. Reported as phase Error (exit status 3).
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Template { path: String, source: TemplateError },
    #[error("{0} (pass it with another -f)")]
    MissingTemplate(TemplateError),
    #[error(transparent)]
    Resolve(#[from] TemplateError),
    #[error(transparent)]
    Provider(#[from] provider::ProviderError),
    #[error("no metric can run here: {0}")]
    NothingToRun(String),
    #[error("{0} (--dry-run NAME)")]
    CannotMeasure(String),
    #[error("--time-scale must be a positive number")]
    TimeScale,
    /// Checked before the run: Argo would retry these errors for several measurements.
    #[error("cannot reach what the metrics query: {0}")]
    Unreachable(String),
    #[error("--kubeconfig {0}")]
    Cluster(String),
}

/// Connects once to every address the metrics will query, all at once; every one that
/// cannot be reached (name resolution, connection, TLS) is reported with its cause and the
/// metrics that use it.
async fn check_reachable(
    providers: &Arc<Providers>,
    metrics: &[MetricSpec],
) -> Result<(), AnalyzeError> {
    let mut endpoints: Vec<((String, bool), Vec<&str>)> = Vec::new();
    for metric in metrics {
        let Some(endpoint) = providers.endpoint(metric) else {
            continue;
        };
        match endpoints.iter_mut().find(|(e, _)| *e == endpoint) {
            Some((_, names)) => names.push(&metric.name),
            None => endpoints.push((endpoint, vec![&metric.name])),
        }
    }
    let mut checks = tokio::task::JoinSet::new();
    for (i, ((endpoint, insecure), _)) in endpoints.iter().enumerate() {
        let (providers, endpoint, insecure) = (providers.clone(), endpoint.clone(), *insecure);
        checks.spawn(async move { (i, providers.reachable(&endpoint, insecure).await) });
    }
    let mut failures = Vec::new();
    while let Some(joined) = checks.join_next().await {
        if let Ok((i, Err(error))) = joined {
            failures.push((i, format!("metric {}: {error}", endpoints[i].1.join(", "))));
        }
    }
    failures.sort();
    if failures.is_empty() {
        return Ok(());
    }
    let failures: Vec<String> = failures.into_iter().map(|(_, f)| f).collect();
    Err(AnalyzeError::Unreachable(failures.join("; ")))
}

/// Where `plover analyze` runs a template's Jobs.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub kubeconfig: std::path::PathBuf,
    /// Default: the kubeconfig context's namespace.
    pub namespace: Option<String>,
}

/// The source every metric is measured with: the providers, plus Jobs in the cluster when
/// one is given.
async fn source(
    providers: &Arc<Providers>,
    cluster: Option<&ClusterOptions>,
    analysis: &plover_analysis::template::Analysis,
) -> Result<Arc<dyn provider::Source>, AnalyzeError> {
    let Some(cluster) = cluster else {
        return Ok(providers.clone());
    };
    let unreachable =
        |e: String| AnalyzeError::Cluster(format!("{}: {e}", cluster.kubeconfig.display()));
    let kubeconfig = kube::config::Kubeconfig::read_from(&cluster.kubeconfig)
        .map_err(|e| unreachable(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let client = kube::Client::try_from(config).map_err(|e| unreachable(e.to_string()))?;
    let namespace = cluster
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let names: Vec<&str> = analysis.metrics.iter().map(|m| m.name.as_str()).collect();
    let run = provider::RunIdentity {
        namespace,
        canary: "plover-analyze".to_owned(),
        run: format!("analyze-{}", names.first().copied().unwrap_or("run")),
    };
    Ok(Arc::new(crate::job::JobRun::new(
        Arc::new(providers.for_run()),
        client,
        run,
    )))
}

/// The exit status for a final phase: 0 Successful, 1 Failed, 2 Inconclusive, 3 Error.
pub fn exit_code(phase: Phase) -> i32 {
    match phase {
        Phase::Successful => 0,
        Phase::Failed => 1,
        Phase::Inconclusive => 2,
        _ => 3,
    }
}

fn scale(d: Duration, factor: f64) -> Duration {
    Duration::from_secs_f64(d.as_secs_f64() * factor)
}

fn describe(metric: &MetricSpec, providers: &Providers) -> String {
    let provider = match &metric.provider {
        ProviderSpec::Prometheus(p) => format!(
            "prometheus {}",
            providers
                .prometheus_address(p)
                .unwrap_or_else(|| "(no address)".into())
        ),
        ProviderSpec::Web(w) => format!(
            "web {} {}",
            if w.method.is_empty() {
                "GET"
            } else {
                &w.method
            },
            w.url
        ),
        ProviderSpec::Plover(p) if p.metric.is_vs_stable() => {
            let c = p.odds_config();
            format!(
                "plover {} of {}/{}, canary vs stable, sequential (alpha {}, tolerance {}, minEffect {})",
                p.metric.as_str(),
                p.namespace,
                p.service,
                c.alpha,
                c.tolerance,
                c.min_effect
            )
        }
        ProviderSpec::Plover(p) => format!(
            "plover {:?} of {}/{} revision {}",
            p.metric, p.namespace, p.service, p.revision
        ),
        ProviderSpec::Job(_) => "job (a Kubernetes Job)".to_owned(),
        ProviderSpec::Unsupported { provider, .. } => provider.clone(),
    };
    let plan = metric.plan();
    let count = match plan.effective_count() {
        Some(n) => format!("count {n}"),
        None => "until stopped".to_owned(),
    };
    let mut parts = vec![provider, count];
    if let Some(i) = metric.interval {
        parts.push(format!("interval {}", humantime(i)));
    }
    if let Some(d) = metric.initial_delay {
        parts.push(format!("initialDelay {}", humantime(d)));
    }
    if metric.dry_run {
        parts.push("dryRun".to_owned());
    }
    parts.join(", ")
}

fn humantime(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// One line of progress.
fn measurement_line(name: &str, m: &Measurement) -> String {
    let mut line = format!(
        "{}  {name}  value={}  {}",
        rfc3339(m.finished_at),
        if m.value.is_empty() { "-" } else { &m.value },
        m.phase
    );
    if let Some(msg) = &m.message {
        line.push_str(&format!("  ({msg})"));
    }
    line
}

fn measurement_json(m: &Measurement) -> serde_json::Value {
    json!({
        "phase": m.phase,
        "value": m.value,
        "message": m.message,
        "startedAt": rfc3339(m.started_at),
        "finishedAt": rfc3339(m.finished_at),
    })
}

/// Loads, resolves and checks the templates of `opts`.
pub fn prepare(opts: &Options) -> Result<Analysis, AnalyzeError> {
    let mut documents = Vec::new();
    for path in &opts.files {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| AnalyzeError::Read {
            path: shown.clone(),
            source,
        })?;
        documents.extend(
            template::load(&text).map_err(|source| AnalyzeError::Template {
                path: shown,
                source,
            })?,
        );
    }
    let mut spec = template::flatten(&documents).map_err(|e| match e {
        TemplateError::MissingTemplate { .. } => AnalyzeError::MissingTemplate(e),
        e => AnalyzeError::Resolve(e),
    })?;
    // --dry-run adds rules as a template's dryRun would (names or regular expressions).
    spec.dry_run
        .extend(opts.dry_run.iter().map(|name| DryRunRule {
            metric_name: name.clone(),
        }));
    // Secrets outside a cluster: --secret first, then PLOVER_SECRET_<NAME>_<KEY>.
    let mut secrets = opts.secrets.clone();
    for arg in &spec.args {
        if let Some(r) = arg
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
        {
            let key = (r.name.clone(), r.key.clone());
            if let std::collections::btree_map::Entry::Vacant(slot) = secrets.entry(key) {
                if let Ok(v) = std::env::var(template::secret_env_var(&r.name, &r.key)) {
                    slot.insert(v);
                }
            }
        }
    }
    let inputs = ArgInputs {
        values: opts.args.clone(),
        secrets,
        fields: opts.fields.clone(),
    };
    Ok(template::resolve(&spec, &inputs)?)
}

/// Runs the analysis and prints it; returns the final phase.
pub async fn run(
    opts: &Options,
    out: &mut (dyn Write + Send),
    progress: &mut (dyn Write + Send),
) -> Phase {
    match run_inner(opts, out, progress).await {
        Ok(phase) => phase,
        Err(e) => {
            let message = e.to_string();
            match opts.output {
                Output::Text => {
                    let _ = writeln!(out, "Phase: Error\nMessage: {message}");
                }
                Output::Json => {
                    let _ = writeln!(
                        out,
                        "{}",
                        json!({"phase": "Error", "message": message, "metrics": []})
                    );
                }
            }
            Phase::Error
        }
    }
}

async fn run_inner(
    opts: &Options,
    out: &mut (dyn Write + Send),
    progress: &mut (dyn Write + Send),
) -> Result<Phase, AnalyzeError> {
    if !(opts.time_scale.is_finite() && opts.time_scale > 0.0) {
        return Err(AnalyzeError::TimeScale);
    }
    let analysis = prepare(opts)?;
    let providers = Arc::new(Providers::new(Settings {
        prometheus_override: opts.prometheus.clone(),
        prometheus_default: opts.prometheus_default.clone(),
        exporter: opts.exporter.clone(),
        ca_files: opts.ca_files.clone(),
    })?);
    let measured_by = source(&providers, opts.cluster.as_ref(), &analysis).await?;
    let log: &mut (dyn Write + Send) = match opts.output {
        Output::Text => out,
        Output::Json => progress,
    };
    let Runnable {
        metrics: runnable,
        skipped,
    } = provider::runnable(&*measured_by, &analysis.metrics)
        .map_err(AnalyzeError::CannotMeasure)?;
    let _ = writeln!(log, "Analysis with {} metric(s):", analysis.metrics.len());
    for m in &runnable {
        let _ = writeln!(
            log,
            "  {}: {}",
            m.name,
            analysis.redact(&describe(m, &providers))
        );
    }
    for (m, reason) in &skipped {
        let _ = writeln!(log, "  {}: skipped, not run here: {reason}", m.name);
    }
    if runnable.is_empty() {
        let reasons: Vec<String> = skipped
            .iter()
            .map(|(m, r)| format!("{}: {r}", m.name))
            .collect();
        return Err(AnalyzeError::NothingToRun(reasons.join("; ")));
    }
    check_reachable(&providers, &runnable).await?;
    if opts.time_scale != 1.0 {
        let _ = writeln!(
            log,
            "  (time scaled by {}: intervals, initial delays and error retries)",
            opts.time_scale
        );
    }

    let plans = runnable
        .iter()
        .map(|m| {
            let mut p = m.plan();
            p.interval = p.interval.map(|d| scale(d, opts.time_scale));
            p.initial_delay = p.initial_delay.map(|d| scale(d, opts.time_scale));
            p
        })
        .collect();
    let options = RunOptions {
        error_retry_interval: scale(
            plover_analysis::run::DEFAULT_ERROR_RETRY_INTERVAL,
            opts.time_scale,
        ),
        termination: opts.termination,
    };
    let mut run = Run::new(plans, options, SystemTime::now());
    let mut history: Vec<Vec<Measurement>> = vec![Vec::new(); runnable.len()];
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let metrics = Arc::new(runnable);
    let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());

    loop {
        let due = run.due(SystemTime::now());
        let mut tasks = tokio::task::JoinSet::new();
        for i in due {
            let (source, metrics) = (measured_by.clone(), metrics.clone());
            tasks.spawn(async move {
                let m = provider::measure(source.as_ref(), &metrics[i], &SystemTime::now).await;
                (i, m)
            });
        }
        let mut done = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            if let Ok(pair) = joined {
                done.push(pair);
            }
        }
        done.sort_by_key(|(i, _)| *i);
        for (i, mut m) in done {
            m.message = m.message.map(|msg| analysis.redact(&msg));
            let _ = writeln!(log, "{}", measurement_line(&metrics[i].name, &m));
            history[i].push(m.clone());
            run.record(i, m);
        }
        if run.assess(SystemTime::now()).is_completed() {
            break;
        }
        let wait = run
            .next_wake()
            .map(|t| t.duration_since(SystemTime::now()).unwrap_or_default())
            .unwrap_or(Duration::from_secs(1));
        let mut sleep_until = tokio::time::Instant::now() + wait;
        if let Some(d) = deadline {
            sleep_until = sleep_until.min(d);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(sleep_until) => {}
            _ = &mut ctrl_c => {
                let _ = writeln!(log, "Interrupted: terminating the run.");
                run.terminate();
            }
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) && !run.phase().is_completed()
        {
            let _ = writeln!(log, "--duration reached: terminating the run.");
            run.terminate();
        }
    }

    let phase = run.phase();
    match opts.output {
        Output::Text => {
            for (r, plan) in run.results().iter().zip(run.plans()) {
                let _ = write!(
                    out,
                    "Metric {}: {} ({} measured: {} successful, {} failed, {} inconclusive, {} error{})",
                    r.name, r.phase, r.count + r.error, r.successful, r.failed, r.inconclusive, r.error,
                    if plan.dry_run { "; dry run" } else { "" }
                );
                match &r.reason {
                    Some(reason) => {
                        let _ = writeln!(out, ": {reason}");
                    }
                    None => {
                        let _ = writeln!(out);
                    }
                }
            }
            for (m, _) in &skipped {
                let _ = writeln!(out, "Metric {}: skipped", m.name);
            }
            let _ = writeln!(out, "Phase: {phase}");
            if !run.message().is_empty() {
                let _ = writeln!(out, "Message: {}", run.message());
            }
        }
        Output::Json => {
            let mut metrics_json: Vec<serde_json::Value> = run
                .results()
                .iter()
                .zip(run.plans())
                .zip(&history)
                .map(|((r, plan), ms)| {
                    json!({
                        "name": r.name,
                        "phase": r.phase,
                        "reason": r.reason,
                        "message": r.message,
                        "dryRun": plan.dry_run,
                        "count": r.count,
                        "successful": r.successful,
                        "failed": r.failed,
                        "inconclusive": r.inconclusive,
                        "error": r.error,
                        "consecutiveError": r.consecutive_error,
                        "measurements": ms.iter().map(measurement_json).collect::<Vec<_>>(),
                    })
                })
                .collect();
            for (m, reason) in &skipped {
                metrics_json.push(json!({"name": m.name, "skipped": reason, "measurements": []}));
            }
            let doc = json!({
                "phase": phase,
                "message": run.message(),
                "startedAt": rfc3339(run.started_at()),
                "completedAt": run.completed_at().map(rfc3339),
                "metrics": metrics_json,
            });
            let _ = writeln!(out, "{doc}");
        }
    }
    Ok(phase)
}
