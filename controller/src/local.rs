//! Local mode: the controller without an API server. The Canary comes from a YAML file, the
//! "workloads" are revision names (Envoy cluster names), the router is a real Envoy reading
//! file-based RDS, and the status lives in a JSON file next to the spec.
//!
//! The loop is reconcile's, with files for I/O: read the spec (edits are picked up, so changing
//! `spec.workload.canary` starts a new revision) and the status file (which also carries the
//! `promote`/`abort` requests `plover promote|abort|retry --status-file` leave there), decide,
//! write the routes file, start/stop analysis runs, print events, write the status file.
//! Promotion is instant: the stable revision becomes the canary's.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use plover_wire::stats::StatsResponse;

use plover_analysis::{
    provider::{Providers, Settings},
    template::{self, secret_env_var, Analysis, Document, Secrets, TemplateError},
};

use crate::notify::{Change, Notification, NotifiedEvent, Notifier, RetryPolicy};
use crate::{
    canary::{
        decide, resolve, AnalysisKind, AnalysisRunStatus, AnalysisSource, Canary, CanaryPhase,
        CanaryStatus, ManagedRoutes, Observation, WorkloadState,
    },
    cli::kubectl::Request,
    execute::{execute, Revisions, Rim},
    observe::{traffic_of_revision, Exporter, TrafficSource},
    router::{envoy_file, Managed, RouterError},
    runner::{CanaryKey, Runner},
};

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{0}")]
    Spec(String),
    #[error(transparent)]
    Router(#[from] RouterError),
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> LocalError {
    LocalError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

pub struct Options {
    /// The Canary YAML (kind `Canary`, `spec.trafficRouting.envoy`).
    pub canary_file: PathBuf,
    /// AnalysisTemplate files the Canary's analyses reference.
    pub template_files: Vec<PathBuf>,
    /// Where the status is kept; default `<canary file>.status.json`.
    pub status_file: Option<PathBuf>,
    /// Provider settings (exporter and Prometheus addresses).
    pub settings: Settings,
    /// Stop at Healthy (after a promotion) or Degraded instead of running forever.
    pub until_done: bool,
    /// Longest sleep between two decisions.
    pub poll: Duration,
    /// Notification targets besides the Canary's own (`--notify`).
    pub notify: Vec<crate::notify::Target>,
}

/// How a `--until-done` run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The canary was promoted; stable runs its revision and takes all traffic.
    Promoted,
    /// Nothing to roll out: the canary runs what stable runs.
    Healthy,
    /// Rolled back (analysis failed, or aborted) or the spec is invalid.
    Degraded,
}

pub fn default_status_file(canary_file: &Path) -> PathBuf {
    let mut name = canary_file
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".status.json");
    canary_file.with_file_name(name)
}

pub fn read_canary(path: &Path) -> Result<Canary, LocalError> {
    let canary = read_any_canary(path)?;
    if canary.spec.traffic_routing.envoy.is_none() {
        return Err(LocalError::Spec(format!(
            "{}: local mode needs spec.trafficRouting.envoy",
            path.display()
        )));
    }
    Ok(canary)
}

/// A Canary file of any routing: its kind checked, every field known.
pub fn read_any_canary(path: &Path) -> Result<Canary, LocalError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
    // The kind first: an Argo Rollout parses as nothing useful and deserves its own answer.
    let raw: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| file_err(path, e))?;
    let field = |name: &str| raw.get(name).and_then(|v| v.as_str()).unwrap_or_default();
    if (field("apiVersion"), field("kind")) != ("plover.dev/v1alpha1", "Canary") {
        return Err(file_err(
            path,
            format!(
                "kind: expected a Canary (apiVersion plover.dev/v1alpha1), got {} {}{}",
                field("apiVersion"),
                field("kind"),
                if field("kind") == "Rollout" {
                    ": plover runs Canaries, which name the stable and canary workloads and the \
                     router (see manifests/examples)"
                } else {
                    ""
                }
            ),
        ));
    }
    // A misspelt field (`stategy:`) would otherwise be dropped without a word, and the rollout
    // would run without what the user meant to set.
    let mut unknown = Vec::new();
    let canary: Canary =
        serde_ignored::deserialize(serde_yaml::Deserializer::from_str(&text), |p| {
            // The type fields were checked above; the resource's struct does not keep them.
            let p = p.to_string();
            if p != "apiVersion" && p != "kind" {
                unknown.push(p);
            }
        })
        .map_err(|e| file_err(path, e))?;
    if !unknown.is_empty() {
        return Err(file_err(
            path,
            format!("unknown field(s): {}", unknown.join(", ")),
        ));
    }
    Ok(canary)
}

/// `plover lint`: everything wrong with a Canary and the templates it references, without a
/// cluster: the file, the spec's own rules, each template file, and every analysis resolved
/// against the given templates with placeholder revisions (secrets are not needed: their
/// values only fill args), including metrics no provider here can measure. Empty: all good.
pub fn lint(canary_file: &Path, template_files: &[PathBuf]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut templates = Vec::new();
    for path in template_files {
        match load_templates(std::slice::from_ref(path)) {
            Ok(documents) => templates.extend(documents),
            Err(e) => problems.push(e.to_string()),
        }
    }
    let canary = match read_any_canary(canary_file) {
        Ok(canary) => canary,
        Err(e) => {
            problems.push(e.to_string());
            return problems;
        }
    };
    if let Err(e) = crate::canary::validate(&canary.spec) {
        problems.push(format!("{}: {e}", canary_file.display()));
    }
    let secrets: Secrets = resolve::secret_refs(&templates)
        .into_iter()
        .map(|reference| (reference, "(secret)".to_owned()))
        .collect();
    let providers = match plover_analysis::provider::Providers::new(Default::default()) {
        Ok(providers) => providers,
        Err(e) => {
            problems.push(e.to_string());
            return problems;
        }
    };
    let Ok(object) = serde_json::to_value(&canary) else {
        return problems;
    };
    let revisions = Revisions {
        stable: "<stable-revision>",
        canary: "<canary-revision>",
    };
    for (field, source) in canary.spec.named_analysis_sources() {
        match resolve_local(&object, &source, &templates, &secrets, &revisions) {
            Ok(analysis) => {
                if let Err(refused) =
                    plover_analysis::provider::runnable(&providers, &analysis.metrics)
                {
                    problems.push(format!("{}: {field}: {refused}", canary_file.display()));
                }
            }
            Err(e @ TemplateError::MissingTemplate { .. }) => problems.push(format!(
                "{}: {field}: {e} (pass it with another -t)",
                canary_file.display()
            )),
            Err(e) => problems.push(format!("{}: {field}: {e}", canary_file.display())),
        }
    }
    problems
}

pub fn read_status(path: &Path) -> Result<CanaryStatus, LocalError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| file_err(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CanaryStatus::default()),
        Err(e) => Err(file_err(path, e)),
    }
}

pub fn write_status(path: &Path, status: &CanaryStatus) -> Result<(), LocalError> {
    let text = serde_json::to_string_pretty(status).map_err(|e| file_err(path, e))? + "\n";
    envoy_file::write_atomically(path, &text)?;
    Ok(())
}

/// Leaves a request in a local status file (what `plover promote --status-file` does). The
/// file must exist: it is the running `plover local`'s, and a request nobody reads is an error.
pub fn request(status_file: &Path, request: Request) -> Result<String, LocalError> {
    if !status_file.is_file() {
        return Err(file_err(
            status_file,
            "no such status file: `plover local` writes it next to the Canary's spec \
             (CANARY.yaml.status.json) once it runs",
        ));
    }
    let mut status = read_status(status_file)?;
    match request {
        Request::Promote => status.promote = true,
        Request::Pause => status.pause_requested = true,
        Request::PromoteFull => status.promote_full = true,
        Request::Abort => status.abort = true,
        Request::Retry => status.abort = false,
    }
    write_status(status_file, &status)?;
    Ok(request.done(&status_file.display().to_string()))
}

/// Everything `decide` would find wrong only later: the spec's own rules, and every analysis
/// it names resolved against the given templates (a missing one, an undeclared arg, a misspelt
/// metric or provider), before any weight changes. The error names the field.
/// With nothing to roll out (canary and stable the same revision) the analyses are checked
/// when a revision comes: they resolve against the revisions they will judge.
fn check_spec(
    canary: &Canary,
    stable_revision: &str,
    templates: &[Document],
    secrets: &Secrets,
    runner: &Runner,
) -> Result<(), String> {
    crate::canary::validate(&canary.spec).map_err(|e| e.to_string())?;
    if canary.spec.workload.canary == stable_revision {
        return Ok(());
    }
    let object = serde_json::to_value(canary).map_err(|e| e.to_string())?;
    let revisions = Revisions {
        stable: stable_revision,
        canary: &canary.spec.workload.canary,
    };
    for (field, source) in canary.spec.named_analysis_sources() {
        let analysis = resolve_local(&object, &source, templates, secrets, &revisions).map_err(
            |e| match e {
                TemplateError::MissingTemplate { .. } => {
                    format!("{field}: {e} (pass it with another -t)")
                }
                e => format!("{field}: {e}"),
            },
        )?;
        if let Some(refused) = runner.refused(&analysis) {
            return Err(format!("{field}: {refused}"));
        }
    }
    Ok(())
}

/// Resolves `source` for the Canary `object` against the templates given on the command line:
/// what a step's run starts with, and what `check_spec` checks before any weight changes.
fn resolve_local(
    object: &serde_json::Value,
    source: &AnalysisSource,
    templates: &[Document],
    secrets: &Secrets,
    revisions: &Revisions<'_>,
) -> Result<Analysis, TemplateError> {
    let inputs = resolve::Inputs {
        templates: resolve::referenced(source, templates),
        canary: object,
        stable_revision: revisions.stable,
        canary_revision: revisions.canary,
        secrets: secrets.clone(),
    };
    resolve::resolve(source, inputs)
}

fn load_templates(files: &[PathBuf]) -> Result<Vec<Document>, LocalError> {
    let mut documents = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
        documents.extend(template::load(&text).map_err(|e| file_err(path, e))?);
    }
    Ok(documents)
}

/// Secrets for the templates' `secretKeyRef` args, from `PLOVER_SECRET_<NAME>_<KEY>`.
fn env_secrets(documents: &[Document]) -> Secrets {
    let mut secrets = Secrets::new();
    for (name, key) in resolve::secret_refs(documents) {
        if let Ok(value) = std::env::var(secret_env_var(&name, &key)) {
            secrets.insert((name, key), value);
        }
    }
    secrets
}

/// One event the decision emitted (Kubernetes would record it on the Canary).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// What one reconcile saw and did, for a caller that shows it (the local demo).
#[derive(Clone, Debug)]
pub struct Pass {
    /// The status after this pass, as written to the status file (with each analysis metric's
    /// latest measurement).
    pub status: CanaryStatus,
    /// The phase the status file held before this pass.
    pub previous_phase: Option<CanaryPhase>,
    /// Events emitted by this pass.
    pub events: Vec<Event>,
    /// The exporter's answer the traffic check read (`None` without a check, or no answer).
    pub stats: Option<StatsResponse>,
    /// When the decision wants to look again.
    pub requeue_after: Option<Duration>,
}

impl Pass {
    /// How a `--until-done` run ends after this pass, if it does.
    pub fn outcome(&self) -> Option<Outcome> {
        match self.status.phase {
            Some(CanaryPhase::Degraded) => Some(Outcome::Degraded),
            Some(CanaryPhase::Healthy) if self.previous_phase == Some(CanaryPhase::Promoting) => {
                Some(Outcome::Promoted)
            }
            Some(CanaryPhase::Healthy) if self.previous_phase.is_none() => Some(Outcome::Healthy),
            _ => None,
        }
    }
}

/// The controller in local mode: the spec file, the status file, the Envoy file router and the
/// analysis runner. [`run`] (`plover local`) drives it; so does the local demo, through
/// [`LocalController::run_observed`].
pub struct LocalController {
    canary_file: PathBuf,
    status_file: PathBuf,
    poll: Duration,
    templates: Vec<Document>,
    secrets: Secrets,
    runner: Runner,
    completed: tokio::sync::mpsc::UnboundedReceiver<CanaryKey>,
    exporter: Exporter,
    /// The last spec read that parsed (a half-written edit keeps it).
    canary: Canary,
    last_line: String,
    notifier: Notifier,
}

impl LocalController {
    pub fn new(opts: &Options) -> Result<LocalController, LocalError> {
        let status_file = opts
            .status_file
            .clone()
            .unwrap_or_else(|| default_status_file(&opts.canary_file));
        let templates = load_templates(&opts.template_files)?;
        let secrets = env_secrets(&templates);
        let providers =
            Providers::new(opts.settings.clone()).map_err(|e| LocalError::Spec(e.to_string()))?;
        let clock: Arc<dyn Fn() -> std::time::SystemTime + Send + Sync> =
            Arc::new(std::time::SystemTime::now);
        let (runner, completed) = Runner::new(Arc::new(providers), clock);
        let exporter = Exporter::new().map_err(LocalError::Spec)?;
        let canary = read_canary(&opts.canary_file)?;
        // The stable revision a restarted `plover local` continues from, else the spec's.
        let stable_revision = read_status(&status_file)?
            .stable_revision
            .unwrap_or_else(|| canary.spec.workload.stable.clone());
        check_spec(&canary, &stable_revision, &templates, &secrets, &runner)
            .map_err(|e| file_err(&opts.canary_file, e))?;
        Ok(LocalController {
            canary_file: opts.canary_file.clone(),
            status_file,
            poll: opts.poll,
            templates,
            secrets,
            runner,
            completed,
            exporter,
            canary,
            last_line: String::new(),
            notifier: Notifier::new(opts.notify.clone(), RetryPolicy::default()),
        })
    }

    /// One reconcile: read the spec and the status, observe, decide, act, write the status.
    /// Routes, clusters, analysis starts, events and status changes are printed to `out`.
    pub async fn reconcile(&mut self, out: &mut (dyn Write + Send)) -> Result<Pass, LocalError> {
        // Keep the last good spec if an edit is half-written.
        match read_canary(&self.canary_file) {
            Ok(c) => self.canary = c,
            Err(e) => {
                let _ = writeln!(out, "WARN {e}");
            }
        }
        let canary = &self.canary;
        let status = read_status(&self.status_file)?;
        let name = canary.name_any();
        let namespace = canary.namespace().unwrap_or_else(|| "default".to_owned());
        let key: CanaryKey = (namespace.clone(), name.clone());
        let spec = &canary.spec;
        let stable_revision = status
            .stable_revision
            .clone()
            .unwrap_or_else(|| spec.workload.stable.clone());
        let (stats, traffic_error) = match &spec.traffic_check {
            Some(check) => {
                let service = check.service.clone().unwrap_or_else(|| name.clone());
                match self.exporter.stats(check, &namespace, &service).await {
                    Ok(stats) => (Some(stats), None),
                    Err(e) => (None, Some(e)),
                }
            }
            None => (None, None),
        };
        // By the canary's revision: at the start of a release the window still holds the
        // previous revision's requests on a fixed canary cluster.
        let traffic = stats
            .as_ref()
            .map(|s| traffic_of_revision(s, &spec.workload.canary));
        let verdicts = self.runner.verdicts(&key);
        // An edited spec is checked again before its revision's first weight, as at start.
        let new_revision = status.revision.as_deref() != Some(spec.workload.canary.as_str())
            && spec.workload.canary != stable_revision;
        let analysis_problem = if new_revision
            || status.is_condition_true(crate::canary::status::conditions::INVALID_SPEC)
        {
            check_spec(
                canary,
                &stable_revision,
                &self.templates,
                &self.secrets,
                &self.runner,
            )
            .err()
        } else {
            None
        };
        let obs = Observation {
            name: &name,
            generation: canary.metadata.generation,
            spec,
            status: &status,
            stable: WorkloadState::ready(&stable_revision),
            canary: WorkloadState::ready(&spec.workload.canary),
            traffic,
            traffic_error,
            analyses: &verdicts,
            analysis_problem,
            now: Timestamp::now(),
        };
        let decision = decide(&obs);
        let mut rim = LocalRim {
            canary,
            key: &key,
            stable_revision: &stable_revision,
            templates: &self.templates,
            secrets: &self.secrets,
            runner: &self.runner,
            status_file: &self.status_file,
            out: &mut *out,
            events: Vec::new(),
            conflict: false,
            notifier: &self.notifier,
        };
        execute(&decision, &status, &mut rim).await?;
        let (events, conflict) = (rim.events, rim.conflict);
        if conflict {
            // `plover promote|abort|retry` wrote a request while we decided: decide again at
            // once from the file as it is now (what the API server's 409 does in cluster mode).
            return Ok(Pass {
                status: read_status(&self.status_file)?,
                previous_phase: status.phase,
                events,
                stats,
                requeue_after: Some(Duration::ZERO),
            });
        }
        let s = &decision.status;
        let line = format!(
            "STATUS {} step={} desired={} observed={} {}",
            s.phase.map_or("Unknown", |p| p.as_str()),
            s.step_label(spec.steps.len()),
            s.desired_weight,
            s.observed_weight
                .map_or_else(|| "-".to_owned(), |w| w.to_string()),
            s.message.clone().unwrap_or_default()
        );
        if line != self.last_line {
            let _ = writeln!(out, "{}", line.trim_end());
            self.last_line = line;
        }
        let _ = out.flush();
        Ok(Pass {
            status: decision.status,
            previous_phase: status.phase,
            events,
            stats,
            requeue_after: decision.requeue_after,
        })
    }

    /// Waits until the pass wants to look again (at most `poll`), or a run completes.
    pub async fn wait(&mut self, pass: &Pass) {
        let sleep = pass.requeue_after.unwrap_or(self.poll).min(self.poll);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = self.completed.recv() => {}
        }
    }

    /// The loop: reconcile, hand the pass to `observe`, wait; with `until_done`, return the
    /// outcome once the canary is promoted, rolled back or has nothing to roll out.
    pub async fn run_observed(
        mut self,
        until_done: bool,
        out: &mut (dyn Write + Send),
        mut observe: impl FnMut(&Pass) + Send,
    ) -> Result<Outcome, LocalError> {
        loop {
            let pass = self.reconcile(out).await?;
            observe(&pass);
            if until_done {
                if let Some(outcome) = pass.outcome() {
                    return Ok(outcome);
                }
            }
            self.wait(&pass).await;
        }
    }
}

/// Local mode's side of [`execute`]: the Envoy files, the runner, printed events and the
/// status file.
struct LocalRim<'a> {
    canary: &'a Canary,
    key: &'a CanaryKey,
    /// The stable revision this pass read (the routes name its cluster).
    stable_revision: &'a str,
    templates: &'a [Document],
    secrets: &'a Secrets,
    runner: &'a Runner,
    status_file: &'a Path,
    out: &'a mut (dyn Write + Send),
    events: Vec<Event>,
    /// The status file changed since it was read; nothing was written.
    conflict: bool,
    notifier: &'a Notifier,
}

/// The Envoy routing `read_canary` made sure of.
fn envoy_of(canary: &Canary) -> Result<&crate::canary::EnvoyRouting, LocalError> {
    canary
        .spec
        .traffic_routing
        .envoy
        .as_ref()
        .ok_or_else(|| LocalError::Spec("local mode needs spec.trafficRouting.envoy".into()))
}

impl Rim for LocalRim<'_> {
    type Error = LocalError;

    async fn set_weight(
        &mut self,
        canary: u32,
        stable: u32,
        routes: &ManagedRoutes,
    ) -> Result<(), LocalError> {
        let cfg = envoy_of(self.canary)?;
        let revision = &self.canary.spec.workload.canary;
        let routing = &self.canary.spec.traffic_routing;
        let managed = Managed {
            names: &routing.managed_routes,
            routes,
        };
        let header = routing.revision_header.as_deref();
        if envoy_file::apply(
            cfg,
            (self.stable_revision, revision),
            (canary, stable),
            header,
            &managed,
        )? {
            let (stable_cluster, canary_cluster) =
                cfg.route_clusters(self.stable_revision, revision);
            let weights = if stable_cluster == canary_cluster {
                format!("{stable_cluster}={}", canary + stable)
            } else {
                format!("{stable_cluster}={stable} {canary_cluster}={canary}")
            };
            let _ = writeln!(self.out, "ROUTE {}: {weights}", cfg.routes_file);
        }
        Ok(())
    }

    async fn promote(&mut self, revision: &str) -> Result<(), LocalError> {
        // Fixed clusters: the stable cluster now serves the promoted revision.
        let cfg = envoy_of(self.canary)?;
        if envoy_file::sync_clusters(cfg, revision, &self.canary.spec.workload.canary)? {
            let _ = writeln!(self.out, "CLUSTERS stable cluster now serves {revision}");
        }
        Ok(())
    }

    async fn start_analysis(
        &mut self,
        name: &str,
        _kind: AnalysisKind,
        source: &AnalysisSource,
        revisions: Revisions<'_>,
        earlier: Option<&AnalysisRunStatus>,
    ) -> Result<(), LocalError> {
        let object =
            serde_json::to_value(self.canary).map_err(|e| LocalError::Spec(e.to_string()))?;
        match resolve_local(&object, source, self.templates, self.secrets, &revisions) {
            Ok(analysis) => self.runner.start(self.key, name, analysis, earlier),
            Err(e) => self.runner.fail(self.key, name, e.to_string()),
        }
        let _ = writeln!(self.out, "ANALYSIS started {name}");
        Ok(())
    }

    fn stop_analysis(&mut self, name: &str) {
        self.runner.stop(self.key, name);
    }

    fn retain_analyses(&mut self, keep: &[&str]) {
        self.runner.retain(self.key, keep);
    }

    async fn event(&mut self, warning: bool, reason: &'static str, message: &str) {
        let kind = if warning { "Warning" } else { "Normal" };
        let _ = writeln!(self.out, "EVENT {kind} {reason}: {message}");
        self.events.push(Event {
            warning,
            reason,
            message: message.to_owned(),
        });
    }

    async fn write_status(
        &mut self,
        read: &CanaryStatus,
        status: &CanaryStatus,
    ) -> Result<(), LocalError> {
        // A request written since we read the file must not be lost by our write.
        if read_status(self.status_file)? != *read {
            self.conflict = true;
            return Ok(());
        }
        write_status(self.status_file, status)
    }

    async fn notify(
        &mut self,
        change: Change,
        previous: &CanaryStatus,
        status: &CanaryStatus,
        events: Vec<NotifiedEvent>,
    ) {
        if self.conflict {
            return;
        }
        // Local mode reads secrets from the environment, as for templates.
        let (targets, problems) =
            crate::notify::resolve_targets(&self.canary.spec.notifications, |name, key| {
                let value = std::env::var(secret_env_var(&name, &key)).ok();
                async move { value }
            })
            .await;
        for problem in problems {
            let _ = writeln!(self.out, "WARN {problem}");
        }
        let notification = Notification::new(
            self.canary,
            change,
            previous,
            status,
            events,
            Timestamp::now().to_string(),
        );
        self.notifier.send(&targets, &notification);
    }
}

/// Runs the local controller (`plover local`); returns only with `until_done` (or on an error).
pub async fn run(opts: Options, out: &mut (dyn Write + Send)) -> Result<Outcome, LocalError> {
    let controller = LocalController::new(&opts)?;
    let notifier = controller.notifier.clone();
    let outcome = controller.run_observed(opts.until_done, out, |_| {}).await;
    // The last phase change's messages may still be on their way (a receiver that is down is
    // retried for about 25 s).
    if !notifier.flush(NOTIFY_FLUSH).await {
        let _ = writeln!(
            out,
            "WARN notifications still undelivered after {NOTIFY_FLUSH:?}"
        );
    }
    outcome
}

/// How long `run` waits at its end for notifications in flight.
const NOTIFY_FLUSH: Duration = Duration::from_secs(40);

/// Per-revision weights the routes file holds, for `plover get --local`.
pub fn routed(canary: &Canary, status: &CanaryStatus) -> Result<BTreeMap<String, i64>, LocalError> {
    let mut out = BTreeMap::new();
    if let Some(cfg) = &canary.spec.traffic_routing.envoy {
        let stable = status
            .stable_revision
            .clone()
            .unwrap_or_else(|| canary.spec.workload.stable.clone());
        if let Some(w) = envoy_file::current_weights(cfg, &stable, &canary.spec.workload.canary)? {
            out.insert(stable, w.stable.unwrap_or(0));
            out.insert(canary.spec.workload.canary.clone(), w.canary.unwrap_or(0));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_spec(dir: &Path, canary: &str, steps: &str, analysis: &str) -> PathBuf {
        let path = dir.join("canary.yaml");
        let routes = dir.join("rds").join("routes.yaml");
        std::fs::create_dir_all(routes.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            format!(
                "apiVersion: plover.dev/v1alpha1\nkind: Canary\nmetadata: {{name: app}}\nspec:\n  workload: {{stable: v1, canary: {canary}}}\n  trafficRouting:\n    envoy: {{routesFile: {}}}\n  steps:\n{steps}{analysis}",
                routes.display()
            ),
        )
        .unwrap();
        path
    }

    fn options(path: &Path, templates: Vec<PathBuf>) -> Options {
        Options {
            canary_file: path.to_owned(),
            template_files: templates,
            status_file: None,
            settings: Settings::default(),
            until_done: true,
            poll: Duration::from_millis(20),
            notify: Vec::new(),
        }
    }

    /// The error `LocalController::new` gives, as text.
    fn refused(opts: &Options) -> String {
        match LocalController::new(opts) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[tokio::test]
    async fn spec_mistakes_are_refused_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        // A template the spec names but nobody passed: the hint names this command's flag.
        let path = write_spec(
            dir.path(),
            "v2",
            "  - setWeight: 20\n  - analysis: {templates: [{templateName: success-rate}]}\n",
            "",
        );
        let e = refused(&options(&path, vec![]));
        assert!(
            e.contains("spec.steps[1].analysis: templates[0]: template 'success-rate' is referenced but was not given (pass it with another -t)"),
            "{e}"
        );
        assert!(!e.contains("-f)"), "{e}");
        // A misspelt field.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace("  steps:", "  stategy: canary\n  steps:"),
        )
        .unwrap();
        let e = refused(&options(&path, vec![]));
        assert!(e.contains("unknown field(s): spec.stategy"), "{e}");
        // An Argo Rollout given where a Canary is expected.
        std::fs::write(
            &path,
            "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: app}\nspec:\n  strategy: {canary: {steps: [{setWeight: 20}]}}\n",
        )
        .unwrap();
        let e = refused(&options(&path, vec![]));
        assert!(
            e.contains("kind: expected a Canary (apiVersion plover.dev/v1alpha1), got argoproj.io/v1alpha1 Rollout"),
            "{e}"
        );
        // An inline metric with a misspelt provider.
        let path = write_spec(
            dir.path(),
            "v2",
            "  - setWeight: 20\n",
            "  analysis:\n    metrics:\n    - name: m\n      provider: {prometheus_: {address: 'http://x', query: up}}\n",
        );
        let e = refused(&options(&path, vec![]));
        assert!(e.contains("spec.analysis: "), "{e}");
    }

    #[tokio::test]
    async fn a_canary_without_analysis_is_promoted_and_envoy_routes_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_spec(
            dir.path(),
            "v2",
            "  - setWeight: 25\n  - pause: {duration: 0}\n  - setWeight: 50\n",
            "",
        );
        let mut out = Vec::new();
        let outcome = run(options(&path, vec![]), &mut out).await.unwrap();
        let log = String::from_utf8(out).unwrap();
        assert_eq!(outcome, Outcome::Promoted, "{log}");
        // Without a traffic check nothing holds a weight step: the steps chain in one decision.
        assert!(log.contains("routes.yaml: v1=50 v2=50"), "{log}");
        assert!(log.contains("routes.yaml: v2=100\n"), "{log}");
        let status = read_status(&default_status_file(&path)).unwrap();
        assert_eq!(status.stable_revision.as_deref(), Some("v2"));
        let canary = read_canary(&path).unwrap();
        assert_eq!(
            routed(&canary, &status).unwrap(),
            BTreeMap::from([("v2".to_owned(), 100)])
        );
        let routes = std::fs::read_to_string(dir.path().join("rds/routes.yaml")).unwrap();
        assert!(
            routes.contains("name: v2") && !routes.contains("name: v1"),
            "{routes}"
        );
    }

    #[tokio::test]
    async fn a_failing_analysis_rolls_back_to_stable() {
        let dir = tempfile::tempdir().unwrap();
        let template = dir.path().join("template.yaml");
        // The provider cannot be reached: five consecutive errors make the run Error.
        std::fs::write(&template, "apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {name: fails}\nspec:\n  metrics:\n  - name: always-fails\n    consecutiveErrorLimit: 0\n    provider: {web: {url: 'http://127.0.0.1:9/'}}\n").unwrap();
        let path = write_spec(dir.path(), "v2", "  - setWeight: 20\n  - analysis: {templates: [{templateName: fails}]}\n  - setWeight: 60\n", "");
        let mut out = Vec::new();
        let outcome = run(options(&path, vec![template]), &mut out).await.unwrap();
        let log = String::from_utf8(out).unwrap();
        assert_eq!(outcome, Outcome::Degraded, "{log}");
        assert!(
            log.contains("EVENT Warning RolloutAborted: Metric \"always-fails\" assessed Error"),
            "{log}"
        );
        let status = read_status(&default_status_file(&path)).unwrap();
        assert_eq!(status.desired_weight, 0);
        assert_eq!(
            routed(&read_canary(&path).unwrap(), &status).unwrap(),
            BTreeMap::from([("v1".to_owned(), 100), ("v2".to_owned(), 0)])
        );
    }

    #[test]
    fn requests_are_left_in_the_status_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.json");
        write_status(&file, &CanaryStatus::default()).unwrap();
        request(&file, Request::Abort).unwrap();
        assert!(read_status(&file).unwrap().abort);
        request(&file, Request::Retry).unwrap();
        assert!(!read_status(&file).unwrap().abort);
    }

    #[tokio::test]
    async fn a_request_written_while_a_pass_decides_is_kept_and_decided_on_again() {
        let dir = tempfile::tempdir().unwrap();
        let canary = read_canary(&write_spec(dir.path(), "v2", "  - setWeight: 20\n", "")).unwrap();
        let file = dir.path().join("s.json");
        write_status(&file, &CanaryStatus::default()).unwrap();
        let read = read_status(&file).unwrap();
        // `plover promote` lands between the pass's read and its write.
        request(&file, Request::Promote).unwrap();
        let providers = Providers::new(Settings::default()).unwrap();
        let clock: crate::runner::Clock = Arc::new(std::time::SystemTime::now);
        let (runner, _completed) = Runner::new(Arc::new(providers), clock);
        let decision = crate::canary::Decision {
            actions: Vec::new(),
            status: CanaryStatus {
                desired_weight: 20,
                ..Default::default()
            },
            requeue_after: None,
        };
        let mut out = Vec::new();
        let mut rim = LocalRim {
            canary: &canary,
            key: &(String::new(), "app".to_owned()),
            stable_revision: "v1",
            templates: &[],
            secrets: &Secrets::new(),
            runner: &runner,
            status_file: &file,
            out: &mut out,
            events: Vec::new(),
            conflict: false,
            notifier: &Notifier::new(Vec::new(), RetryPolicy::default()),
        };
        execute(&decision, &read, &mut rim).await.unwrap();
        assert!(rim.conflict, "the pass must decide again");
        let now = read_status(&file).unwrap();
        assert!(now.promote, "the request is still in the file");
        assert_eq!(now.desired_weight, 0, "the stale decision was not written");
    }

    #[test]
    fn a_request_to_a_missing_status_file_fails_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("missing.status.json");
        let error = request(&file, Request::Promote).unwrap_err().to_string();
        assert!(
            error.contains("missing.status.json") && error.contains("no such status file"),
            "{error}"
        );
        assert!(!file.exists());
    }
}
