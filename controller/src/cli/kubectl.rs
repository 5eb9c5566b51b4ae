//! `plover get canary|list|status|promote|abort|retry|set image|undo` (also installed as the
//! kubectl plugin `kubectl-plover`): a status tree in the spirit of `kubectl argo rollouts get
//! rollout`, a table of Canaries, a rollout's status for CI pipelines, the requests the CLI
//! leaves in the Canary's status for the controller to act on, and the two edits of the canary
//! Deployment a user makes (a new image; back to stable's template).
//!
//! The renderers and the status verdict are pure ([`render`], [`render_list`],
//! [`rollout_status`]); the `async` functions gather their inputs or make the edit.

use std::fmt::Write as _;

use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    api::{Api, Patch, PatchParams},
    Client, ResourceExt,
};
use plover_wire::stats::{RevisionStats, StatsResponse};
use serde_json::json;

use crate::{
    canary::{
        measurement::measurement_sentence, AnalysisPhase, AnalysisRunStatus, Canary, CanaryPhase,
        MetricStatus,
    },
    observe::{template_revision, workload_state, Exporter, TrafficSource},
    reconcile::copy_template_ops,
};

#[derive(Debug, thiserror::Error)]
pub enum KubectlError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("canary {0} not found")]
    NotFound(String),
    /// The edit cannot be made; says why.
    #[error("{0}")]
    Refused(String),
}

/// A request the CLI leaves for the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Leave the current pause or step (`promote`).
    Promote,
    /// Hold at the current step until `promote` (`pause`).
    Pause,
    /// Skip the remaining steps and analysis (`promote --full`).
    PromoteFull,
    /// Route everything to stable and stop (`abort`).
    Abort,
    /// Start the aborted revision over (`retry`).
    Retry,
}

impl Request {
    /// The merge patch of the status subresource.
    pub fn status_patch(self) -> serde_json::Value {
        match self {
            Request::Promote => json!({"status": {"promote": true}}),
            Request::Pause => json!({"status": {"pauseRequested": true}}),
            Request::PromoteFull => json!({"status": {"promoteFull": true}}),
            Request::Abort => json!({"status": {"abort": true}}),
            Request::Retry => json!({"status": {"abort": false}}),
        }
    }

    pub fn done(self, name: &str) -> String {
        match self {
            Request::Promote => format!("canary '{name}' promoted"),
            Request::Pause => format!("canary '{name}' paused (until promote)"),
            Request::PromoteFull => format!("canary '{name}' fully promoted"),
            Request::Abort => format!("canary '{name}' aborted"),
            Request::Retry => format!("canary '{name}' retried"),
        }
    }
}

/// Sends a request.
pub async fn request(
    client: Client,
    namespace: &str,
    name: &str,
    request: Request,
) -> Result<String, KubectlError> {
    get_canary(client.clone(), namespace, name).await?;
    let api: Api<Canary> = Api::namespaced(client, namespace);
    api.patch_status(
        name,
        &cli_patch_params(),
        &Patch::Merge(request.status_patch()),
    )
    .await?;
    Ok(request.done(name))
}

/// The Canary, or [`KubectlError::NotFound`].
async fn get_canary(client: Client, namespace: &str, name: &str) -> Result<Canary, KubectlError> {
    let canaries: Api<Canary> = Api::namespaced(client, namespace);
    canaries
        .get_opt(name)
        .await?
        .ok_or_else(|| KubectlError::NotFound(name.to_owned()))
}

/// Everything `get` shows.
pub struct View {
    pub canary: Canary,
    pub stable: Option<Deployment>,
    pub canary_workload: Option<Deployment>,
    pub stats: Option<StatsResponse>,
}

/// Reads the Canary, its Deployments and (if configured) the exporter's per-revision stats.
pub async fn fetch(client: Client, namespace: &str, name: &str) -> Result<View, KubectlError> {
    let canary = get_canary(client.clone(), namespace, name).await?;
    let deployments: Api<Deployment> = Api::namespaced(client, namespace);
    let (stable, canary_workload) = if canary.spec.traffic_routing.envoy.is_some() {
        (None, None)
    } else {
        (
            deployments.get_opt(&canary.spec.workload.stable).await?,
            deployments.get_opt(&canary.spec.workload.canary).await?,
        )
    };
    let stats = match (&canary.spec.traffic_check, Exporter::new()) {
        (Some(check), Ok(exporter)) => {
            let service = check.service.clone().unwrap_or_else(|| name.to_owned());
            exporter.stats(check, namespace, &service).await.ok()
        }
        _ => None,
    };
    Ok(View {
        canary,
        stable,
        canary_workload,
        stats,
    })
}

/// The Canaries of `namespace` (all namespaces with `None`), by namespace and name.
pub async fn list(client: Client, namespace: Option<&str>) -> Result<Vec<Canary>, KubectlError> {
    let api: Api<Canary> = match namespace {
        Some(namespace) => Api::namespaced(client, namespace),
        None => Api::all(client),
    };
    let mut canaries = api.list(&Default::default()).await?.items;
    canaries.sort_by_key(|c| (c.namespace(), c.name_any()));
    Ok(canaries)
}

/// The table `plover list` prints (with a NAMESPACE column for all namespaces).
pub fn render_list(canaries: &[Canary], all_namespaces: bool) -> String {
    let mut rows = vec![[
        "NAMESPACE",
        "NAME",
        "STATUS",
        "STEP",
        "SET-WEIGHT",
        "STABLE",
        "CANARY",
    ]
    .map(str::to_owned)];
    for c in canaries {
        let status = c.status.clone().unwrap_or_default();
        let steps = c.spec.steps.len();
        let step = status.current_step_index.map_or_else(
            || "-".to_owned(),
            |i| format!("{}/{steps}", (i as usize).min(steps)),
        );
        rows.push([
            c.namespace().unwrap_or_default(),
            c.name_any(),
            status
                .phase
                .map_or_else(|| "-".to_owned(), |p| p.as_str().to_owned()),
            step,
            status.desired_weight.to_string(),
            status.stable_revision.unwrap_or_else(|| "-".to_owned()),
            status.revision.unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    let skip = usize::from(!all_namespaces);
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = (skip..7)
            .map(|i| format!("{:<width$}", row[i], width = widths[i]))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

/// Where a rollout stands, for `plover status` and CI pipelines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RolloutStatus {
    /// All traffic on stable, which runs the canary Deployment's current template.
    Healthy,
    /// Aborted or invalid, for the canary Deployment's current template.
    Degraded(String),
    /// Anything else: stepping, paused, promoting, or a change the controller has not acted
    /// on yet. The text is `Phase - why`.
    InProgress(String),
}

impl RolloutStatus {
    /// The line `plover status` prints: `Healthy`, `Degraded - …`, `Paused - …`.
    pub fn line(&self) -> String {
        match self {
            RolloutStatus::Healthy => "Healthy".to_owned(),
            RolloutStatus::Degraded(why) => format!("Degraded - {why}"),
            RolloutStatus::InProgress(what) => what.clone(),
        }
    }
}

/// The status of a Canary whose canary workload runs `canary_revision` (the template revision
/// of the canary Deployment; in local mode, the spec's canary revision). A phase is believed
/// only once the controller has seen the Canary's spec (observedGeneration) and the canary
/// workload's template: right after `set image`, the old Healthy is not the answer.
pub fn rollout_status(canary: &Canary, canary_revision: Option<&str>) -> RolloutStatus {
    let status = canary.status.clone().unwrap_or_default();
    let with_message = |phase: &str| match status.message.as_deref() {
        Some(message) if !message.is_empty() => format!("{phase} - {message}"),
        _ => phase.to_owned(),
    };
    let generation = canary.metadata.generation;
    if generation.is_some() && status.observed_generation < generation {
        return RolloutStatus::InProgress(
            "Progressing - waiting for the controller to observe the Canary's spec".to_owned(),
        );
    }
    let seen = |revision: &Option<String>| match canary_revision {
        Some(current) => revision.as_deref() == Some(current),
        None => true,
    };
    match status.phase {
        Some(CanaryPhase::Healthy) if seen(&status.stable_revision) => RolloutStatus::Healthy,
        Some(CanaryPhase::Degraded) if seen(&status.revision) => RolloutStatus::Degraded(
            status
                .message
                .clone()
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "aborted".to_owned()),
        ),
        Some(CanaryPhase::Healthy | CanaryPhase::Degraded) => RolloutStatus::InProgress(format!(
            "Progressing - waiting for the controller to start revision {}",
            canary_revision.unwrap_or("?")
        )),
        Some(phase) => RolloutStatus::InProgress(with_message(phase.as_str())),
        None => RolloutStatus::InProgress(
            "Progressing - the controller has not written a status yet".to_owned(),
        ),
    }
}

/// [`rollout_status`] of a Canary in the cluster.
pub async fn status(
    client: Client,
    namespace: &str,
    name: &str,
) -> Result<RolloutStatus, KubectlError> {
    let canary = get_canary(client.clone(), namespace, name).await?;
    let revision = if canary.spec.traffic_routing.envoy.is_some() {
        Some(canary.spec.workload.canary.clone())
    } else {
        let deployments: Api<Deployment> = Api::namespaced(client, namespace);
        deployments
            .get_opt(&canary.spec.workload.canary)
            .await?
            .and_then(|d| d.spec)
            .map(|s| template_revision(&s.template))
    };
    Ok(rollout_status(&canary, revision.as_deref()))
}

/// The canary Deployment of a cluster Canary, and the API to edit it.
async fn canary_deployment(
    client: Client,
    namespace: &str,
    name: &str,
) -> Result<(Canary, Api<Deployment>, Deployment), KubectlError> {
    let canary = get_canary(client.clone(), namespace, name).await?;
    if canary.spec.traffic_routing.envoy.is_some() {
        return Err(KubectlError::Refused(format!(
            "canary {name} routes a local Envoy: its workloads are revision names, edit              spec.workload in its file"
        )));
    }
    let deployments: Api<Deployment> = Api::namespaced(client, namespace);
    let deployment_name = canary.spec.workload.canary.clone();
    let deployment = deployments
        .get_opt(&deployment_name)
        .await?
        .ok_or_else(|| {
            KubectlError::Refused(format!(
                "canary {name}: its canary Deployment {deployment_name} does not exist"
            ))
        })?;
    Ok((canary, deployments, deployment))
}

fn cli_patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some("plover-cli".to_owned()),
        ..Default::default()
    }
}

/// `set image NAME CONTAINER=IMAGE` (`*=IMAGE`: every container): a new pod template for the
/// canary Deployment, which the controller rolls out as a new revision.
pub async fn set_image(
    client: Client,
    namespace: &str,
    name: &str,
    container: &str,
    image: &str,
) -> Result<String, KubectlError> {
    let (_, deployments, deployment) = canary_deployment(client, namespace, name).await?;
    let pod = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref());
    let names = |list: Option<&Vec<k8s_openapi::api::core::v1::Container>>| -> Vec<String> {
        list.map(|l| l.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default()
    };
    let containers = names(pod.map(|p| &p.containers));
    let init = names(pod.and_then(|p| p.init_containers.as_ref()));
    let set = |list: &[String], wanted: &str| -> Vec<serde_json::Value> {
        list.iter()
            .filter(|n| wanted == "*" || n.as_str() == wanted)
            .map(|n| json!({"name": n, "image": image}))
            .collect()
    };
    let (main, init_set) = (set(&containers, container), set(&init, container));
    if main.is_empty() && init_set.is_empty() {
        return Err(KubectlError::Refused(format!(
            "deployment {}: no container named {container:?} (it has {})",
            deployment.name_any(),
            containers
                .iter()
                .chain(&init)
                .map(|c| format!("{c:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut pod_patch = serde_json::Map::new();
    if !main.is_empty() {
        pod_patch.insert("containers".into(), main.into());
    }
    if !init_set.is_empty() {
        pod_patch.insert("initContainers".into(), init_set.into());
    }
    let patch = json!({"spec": {"template": {"spec": pod_patch}}});
    deployments
        .patch(
            &deployment.name_any(),
            &cli_patch_params(),
            &Patch::Strategic(patch),
        )
        .await?;
    Ok(format!(
        "canary '{name}': deployment '{}' container {container:?} image set to {image}",
        deployment.name_any()
    ))
}

/// `undo NAME`: the canary Deployment gets the stable Deployment's pod template back, which
/// abandons the candidate (the rollout returns to Healthy on stable's revision).
pub async fn undo(client: Client, namespace: &str, name: &str) -> Result<String, KubectlError> {
    let (canary, deployments, deployment) = canary_deployment(client, namespace, name).await?;
    let stable_name = &canary.spec.workload.stable;
    let stable = deployments.get_opt(stable_name).await?.ok_or_else(|| {
        KubectlError::Refused(format!(
            "canary {name}: its stable Deployment {stable_name} does not exist"
        ))
    })?;
    let (Some(stable_spec), Some(canary_spec)) = (&stable.spec, &deployment.spec) else {
        return Err(KubectlError::Refused("a Deployment has no spec".to_owned()));
    };
    let stable_revision = template_revision(&stable_spec.template);
    if template_revision(&canary_spec.template) == stable_revision {
        return Ok(format!(
            "canary '{name}': nothing to undo, the canary Deployment already runs stable's revision {stable_revision}"
        ));
    }
    let ops = copy_template_ops(&stable_spec.template, &deployment);
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))
        .map_err(|e| KubectlError::Refused(format!("building the patch: {e}")))?;
    deployments
        .patch(
            &deployment.name_any(),
            &cli_patch_params(),
            &Patch::Json::<()>(patch),
        )
        .await?;
    Ok(format!(
        "canary '{name}': deployment '{}' set back to stable's revision {stable_revision}",
        deployment.name_any()
    ))
}

fn phase_icon(phase: Option<CanaryPhase>) -> &'static str {
    match phase {
        Some(CanaryPhase::Healthy) => "✔",
        Some(CanaryPhase::Degraded) => "✖",
        Some(CanaryPhase::Paused) => "॥",
        Some(CanaryPhase::Progressing | CanaryPhase::Promoting) | None => "◌",
    }
}

fn run_icon(phase: AnalysisPhase) -> &'static str {
    match phase {
        AnalysisPhase::Successful => "✔",
        AnalysisPhase::Failed => "✖",
        AnalysisPhase::Running => "◌",
        AnalysisPhase::Pending => "◷",
        AnalysisPhase::Error => "⚠",
        AnalysisPhase::Inconclusive => "?",
    }
}

fn run_info(run: &AnalysisRunStatus) -> String {
    let parts: Vec<String> = [
        ("✔", run.successful),
        ("✖", run.failed),
        ("?", run.inconclusive),
        ("⚠", run.error),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(icon, n)| format!("{icon} {n}"))
    .collect();
    parts.join(",")
}

fn deployment_info(d: Option<&Deployment>) -> (String, String) {
    let Some(d) = d else {
        return ("⚠ Missing".to_owned(), String::new());
    };
    let state = workload_state(Some(d), &[]);
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ready = d
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let status = if state.rolled_out {
        "✔ Healthy"
    } else {
        "◌ Progressing"
    };
    (status.to_owned(), format!("ready:{ready}/{desired}"))
}

fn stats_info(stats: Option<&RevisionStats>) -> String {
    let Some(s) = stats else { return String::new() };
    let mut out = format!("requests:{}", s.requests);
    if let Some(ratio) = s.success_ratio {
        let _ = write!(out, " success:{:.2}%", ratio * 100.0);
    }
    if let Some(p99) = s.latency_seconds.p99 {
        let _ = write!(out, " p99:{:.1}ms", p99 * 1000.0);
    }
    out
}

/// A metric of an analysis run and its latest measurement in words (the evidence against
/// stable for Plover's comparative metrics).
fn metric_row(metric: &MetricStatus) -> Row {
    Row {
        prefix: String::new(),
        name: metric.name.clone(),
        kind: "Metric",
        status: format!("{} {:?}", run_icon(metric.phase), metric.phase),
        info: metric
            .latest
            .as_ref()
            .map(measurement_sentence)
            .unwrap_or_else(|| "not measured yet".to_owned()),
    }
}

struct Row {
    prefix: String,
    name: String,
    kind: &'static str,
    status: String,
    info: String,
}

/// The status tree, as `plover get canary` prints it.
/// A step's matches in words: `x-canary = always, or cookie ~ ^canary`.
fn route_matches<M>(matches: &[M], each: impl Fn(&M) -> String) -> String {
    let words: Vec<String> = matches.iter().map(each).collect();
    words.join(", or ")
}

/// `= v`, `starts with v`, `~ v`.
fn string_match(m: &crate::canary::StringMatch) -> String {
    match crate::router::string_match(m) {
        ("prefix", v) => format!("starts with {v}"),
        ("regex", v) => format!("~ {v}"),
        (_, v) => format!("= {v}"),
    }
}

pub fn render(view: &View) -> String {
    let c = &view.canary;
    let status = c.status.clone().unwrap_or_default();
    let spec = &c.spec;
    let mut out = String::new();
    let field = |out: &mut String, k: &str, v: &str| {
        let _ = writeln!(out, "{:<16} {v}", format!("{k}:"));
    };
    field(&mut out, "Name", &c.name_any());
    field(&mut out, "Namespace", &c.namespace().unwrap_or_default());
    field(
        &mut out,
        "Status",
        &format!(
            "{} {}",
            phase_icon(status.phase),
            status.phase.map_or("Unknown", |p| p.as_str())
        ),
    );
    if let Some(m) = &status.message {
        field(&mut out, "Message", m);
    }
    field(
        &mut out,
        "Strategy",
        &format!("Canary ({})", spec.traffic_routing.kind()),
    );
    field(&mut out, "  Step", &status.step_label(spec.steps.len()));
    field(&mut out, "  SetWeight", &status.desired_weight.to_string());
    // The share and its request count come from the one sample the traffic check judged, not
    // from the live answer below (another moment, another window).
    let actual = match (status.observed_weight, status.observed_requests) {
        (Some(w), Some(n)) => {
            format!("{w} (canary's share of {n} requests, as the traffic check saw them)")
        }
        (Some(w), None) => format!("{w} (observed)"),
        (None, _) => "- (not observed at this weight yet)".to_owned(),
    };
    field(&mut out, "  ActualWeight", &actual);
    for route in &status.managed_routes.header {
        field(
            &mut out,
            "  HeaderRoute",
            &format!(
                "{}: {} to the canary",
                route.name,
                route_matches(&route.matches, |m| {
                    format!("{} {}", m.header_name, string_match(&m.header_value))
                })
            ),
        );
    }
    for route in &status.managed_routes.mirror {
        field(
            &mut out,
            "  MirrorRoute",
            &format!(
                "{}: {}% of {} copied to the canary",
                route.name,
                route.percentage.unwrap_or(100),
                route_matches(&route.matches, |m| {
                    let parts: Vec<String> = m
                        .method
                        .iter()
                        .map(|v| format!("method {}", string_match(v)))
                        .chain(m.path.iter().map(|v| format!("path {}", string_match(v))))
                        .chain(
                            m.headers
                                .iter()
                                .map(|(n, v)| format!("{n} {}", string_match(v))),
                        )
                        .collect();
                    if parts.is_empty() {
                        "all requests".to_owned()
                    } else {
                        parts.join(" and ")
                    }
                })
            ),
        );
    }
    for cond in status
        .conditions
        .iter()
        .filter(|c| c.type_ == "TrafficSplitMismatch" && c.status == "True")
    {
        field(&mut out, "  SplitMismatch", &cond.message);
    }
    out.push('\n');

    let stats_for = |role: &str| view.stats.as_ref().and_then(|s| s.role(role));
    let mut rows = vec![Row {
        prefix: "⟳ ".into(),
        name: c.name_any(),
        kind: "Canary",
        status: format!(
            "{} {}",
            phase_icon(status.phase),
            status.phase.map_or("Unknown", |p| p.as_str())
        ),
        info: String::new(),
    }];
    let canary_rev = status.revision.clone().unwrap_or_else(|| "?".into());
    let stable_rev = status.stable_revision.clone().unwrap_or_else(|| "?".into());
    let in_flight = canary_rev != stable_rev;
    let mut revisions: Vec<(String, &str, &str, Option<&Deployment>, u32)> = Vec::new();
    if in_flight {
        revisions.push((
            canary_rev.clone(),
            "canary",
            &spec.workload.canary,
            view.canary_workload.as_ref(),
            status.desired_weight,
        ));
    }
    revisions.push((
        stable_rev.clone(),
        "stable",
        &spec.workload.stable,
        view.stable.as_ref(),
        100 - status.desired_weight.min(100),
    ));
    let count = revisions.len();
    for (i, (rev, role, workload, deployment, weight)) in revisions.into_iter().enumerate() {
        let last = i + 1 == count;
        let (branch, indent) = if last {
            ("└──", "   ")
        } else {
            ("├──", "│  ")
        };
        rows.push(Row {
            prefix: format!("{branch}# "),
            name: format!("revision:{rev}"),
            kind: "",
            status: String::new(),
            info: role.to_owned(),
        });
        // Each child with its own children (an analysis run's metrics).
        let mut children: Vec<(Row, Vec<Row>)> = Vec::new();
        // Local mode has no Deployments: the workload is the revision (an Envoy cluster).
        let local = spec.traffic_routing.envoy.is_some();
        let (d_status, ready) = if local {
            ("✔ Routed".to_owned(), String::new())
        } else {
            deployment_info(deployment)
        };
        // A rolled-back revision gets no tick, however healthy its pods are.
        let d_status = if role == "canary" && status.abort {
            "↩ RolledBack".to_owned()
        } else {
            d_status
        };
        let stats = stats_info(stats_for(role));
        let info = [ready, format!("weight:{weight}%"), stats]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        children.push((
            Row {
                prefix: "⧉ ".into(),
                name: if local {
                    rev.clone()
                } else {
                    workload.to_owned()
                },
                kind: if local { "Revision" } else { "Deployment" },
                status: d_status,
                info,
            },
            Vec::new(),
        ));
        if role == "canary" {
            for run in [&status.step_analysis, &status.background_analysis]
                .into_iter()
                .flatten()
            {
                let metrics = run.metrics.iter().map(metric_row).collect();
                children.push((
                    Row {
                        prefix: "α ".into(),
                        name: run.name.clone(),
                        kind: "AnalysisRun",
                        status: format!("{} {:?}", run_icon(run.phase), run.phase),
                        info: run_info(run),
                    },
                    metrics,
                ));
            }
        }
        let n = children.len();
        for (j, (mut child, grandchildren)) in children.into_iter().enumerate() {
            let (branch, child_indent) = if j + 1 == n {
                ("└──", "   ")
            } else {
                ("├──", "│  ")
            };
            child.prefix = format!("{indent}{branch}{}", child.prefix);
            rows.push(child);
            let m = grandchildren.len();
            for (k, mut grandchild) in grandchildren.into_iter().enumerate() {
                let branch = if k + 1 == m { "└──" } else { "├──" };
                grandchild.prefix = format!("{indent}{child_indent}{branch}");
                rows.push(grandchild);
            }
        }
    }
    let width = rows
        .iter()
        .map(|r| r.prefix.chars().count() + r.name.chars().count())
        .max()
        .unwrap_or(0)
        + 2;
    let _ = writeln!(out, "{:<width$}{:<13}{:<16}INFO", "NAME", "KIND", "STATUS");
    for r in rows {
        let name = format!("{}{}", r.prefix, r.name);
        let pad = width.saturating_sub(name.chars().count());
        let status_pad = 16usize.saturating_sub(r.status.chars().count());
        let line = format!(
            "{name}{}{:<13}{}{}{}",
            " ".repeat(pad),
            r.kind,
            r.status,
            " ".repeat(status_pad),
            r.info
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use plover_wire::stats::LatencySummary;

    use super::*;
    use crate::canary::CanaryStatus;

    #[test]
    fn status_believes_a_phase_only_for_the_revision_the_canary_deployment_runs() {
        let mut canary = view().canary;
        canary.metadata.generation = Some(3);
        let set = |canary: &mut Canary, phase, message: &str, generation| {
            let status = canary.status.as_mut().unwrap();
            status.phase = Some(phase);
            status.message = Some(message.to_owned());
            status.observed_generation = Some(generation);
        };
        // Stepping: the phase and the controller's message.
        set(&mut canary, CanaryPhase::Paused, "paused at step 2/3", 3);
        assert_eq!(
            rollout_status(&canary, Some("9f8e7d6c5b")).line(),
            "Paused - paused at step 2/3"
        );
        // Healthy on stable's revision; but not right after `set image` (a revision the
        // controller has not started), nor before it saw the spec.
        set(&mut canary, CanaryPhase::Healthy, "", 3);
        assert_eq!(
            rollout_status(&canary, Some("1a2b3c4d5e")),
            RolloutStatus::Healthy
        );
        assert_eq!(
            rollout_status(&canary, Some("0000000000")).line(),
            "Progressing - waiting for the controller to start revision 0000000000"
        );
        set(&mut canary, CanaryPhase::Healthy, "", 2);
        assert!(matches!(
            rollout_status(&canary, Some("1a2b3c4d5e")),
            RolloutStatus::InProgress(_)
        ));
        // Degraded for the aborted revision only.
        set(&mut canary, CanaryPhase::Degraded, "analysis failed", 3);
        assert_eq!(
            rollout_status(&canary, Some("9f8e7d6c5b")).line(),
            "Degraded - analysis failed"
        );
        assert!(matches!(
            rollout_status(&canary, Some("1a2b3c4d5e")),
            RolloutStatus::InProgress(_)
        ));
        canary.status = None;
        assert!(matches!(
            rollout_status(&canary, None),
            RolloutStatus::InProgress(_)
        ));
    }

    #[test]
    fn list_is_a_table_with_a_namespace_column_for_all_namespaces() {
        let a = view().canary;
        let mut b = view().canary;
        b.metadata.name = Some("reviews".into());
        b.metadata.namespace = Some("bookinfo".into());
        b.status = None;
        assert_eq!(
            render_list(&[a.clone(), b.clone()], false),
            "NAME     STATUS       STEP  SET-WEIGHT  STABLE      CANARY\n\
             podinfo  Progressing  1/3   20          1a2b3c4d5e  9f8e7d6c5b\n\
             reviews  -            -     0           -           -\n"
        );
        let all = render_list(&[a, b], true);
        assert!(all.starts_with("NAMESPACE  NAME"), "{all}");
        assert!(all.contains("bookinfo   reviews"), "{all}");
    }

    fn view() -> View {
        let canary: Canary = serde_json::from_value(json!({
            "apiVersion": "plover.dev/v1alpha1", "kind": "Canary",
            "metadata": {"name": "podinfo", "namespace": "test"},
            "spec": {
                "workload": {"stable": "podinfo", "canary": "podinfo-canary"},
                "trafficRouting": {"istio": {"virtualService": {"name": "podinfo"}, "stableService": "a", "canaryService": "b"}},
                "steps": [{"setWeight": 20}, {"analysis": {"templates": [{"templateName": "success-rate"}]}}, {"setWeight": 50}],
                "trafficCheck": {"exporter": "http://exporter:9464"}
            }
        }))
        .unwrap();
        let mut canary = canary;
        canary.status = Some(CanaryStatus {
            phase: Some(CanaryPhase::Progressing),
            message: Some("step 2/3".into()),
            revision: Some("9f8e7d6c5b".into()),
            stable_revision: Some("1a2b3c4d5e".into()),
            current_step_index: Some(1),
            desired_weight: 20,
            observed_weight: Some(19.6),
            observed_requests: Some(1000),
            step_analysis: Some(AnalysisRunStatus {
                name: "podinfo-9f8e7d6c5b-0-step1".into(),
                phase: AnalysisPhase::Running,
                successful: 3,
                failed: 1,
                ..Default::default()
            }),
            ..Default::default()
        });
        let deployment = |name: &str, ready: i32| -> Deployment {
            serde_json::from_value(json!({
                "metadata": {"name": name, "generation": 1},
                "spec": {"replicas": 2, "selector": {}, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}},
                "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": ready, "readyReplicas": ready}
            }))
            .unwrap()
        };
        let rev = |role: &str, requests: u64, ratio: f64, p99: f64| RevisionStats {
            revision: role.into(),
            role: role.into(),
            requests,
            success_ratio: Some(ratio),
            latency_seconds: LatencySummary {
                p99: Some(p99),
                ..Default::default()
            },
            ..Default::default()
        };
        View {
            canary,
            stable: Some(deployment("podinfo", 2)),
            canary_workload: Some(deployment("podinfo-canary", 1)),
            stats: Some(StatsResponse {
                window_seconds: 30,
                revisions: vec![
                    rev("stable", 800, 1.0, 0.038),
                    rev("canary", 200, 0.985, 0.0412),
                ],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn renders_the_status_tree_with_per_revision_stats() {
        let text = render(&view());
        let expected = "\
Name:            podinfo
Namespace:       test
Status:          ◌ Progressing
Message:         step 2/3
Strategy:        Canary (istio)
  Step:          2/3
  SetWeight:     20
  ActualWeight:  19.6 (canary's share of 1000 requests, as the traffic check saw them)

NAME                                KIND         STATUS          INFO
⟳ podinfo                           Canary       ◌ Progressing
├──# revision:9f8e7d6c5b                                         canary
│  ├──⧉ podinfo-canary              Deployment   ◌ Progressing   ready:1/2 weight:20% requests:200 success:98.50% p99:41.2ms
│  └──α podinfo-9f8e7d6c5b-0-step1  AnalysisRun  ◌ Running       ✔ 3,✖ 1
└──# revision:1a2b3c4d5e                                         stable
   └──⧉ podinfo                     Deployment   ✔ Healthy       ready:2/2 weight:80% requests:800 success:100.00% p99:38.0ms
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn the_managed_routes_in_force_are_shown_in_words() {
        let mut view = view();
        view.canary.status.get_or_insert_with(Default::default).managed_routes =
            serde_yaml::from_str(
                "header: [{name: by-header, match: [{headerName: x-canary, headerValue: {exact: always}}, {headerName: cookie, headerValue: {regex: 'canary=1'}}]}]\n\
                 mirror: [{name: mirror, percentage: 35, match: [{method: {exact: GET}, path: {prefix: /api}}]}]",
            )
            .unwrap();
        let text = render(&view);
        for line in [
            "  HeaderRoute:   by-header: x-canary = always, or cookie ~ canary=1 to the canary\n",
            "  MirrorRoute:   mirror: 35% of method = GET and path starts with /api copied to the canary\n",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }

    /// `plover get` with the latest measurement of each metric: the evidence against stable in
    /// words for the comparative metrics, the value for a threshold metric. Golden text in
    /// `testdata/get-canary-evidence.txt` (regenerate with `PLOVER_BLESS=1`).
    #[test]
    fn renders_each_metric_with_its_latest_measurement_and_evidence() {
        use crate::canary::{
            Comparison, EvidenceDecision, EvidenceStatus, MeasurementStatus, MetricStatus,
        };
        let mut v = view();
        let status = v.canary.status.as_mut().unwrap();
        let evidence = EvidenceStatus {
            comparison: Comparison::ErrorRatio,
            decision: EvidenceDecision::Fail,
            fail_log_evidence: Some(3.4404),
            pass_log_evidence: Some(-2.49),
            log_boundary: Some(2.9957),
            alpha: 0.05,
            canary_requests: 1000,
            canary_events: 41,
            stable_requests: 9800,
            stable_events: 98,
            odds_ratio: Some(4.21),
            looks: 7,
            ..Default::default()
        };
        let metric = |name: &str, phase, latest| MetricStatus {
            name: name.into(),
            phase,
            latest,
            counts: Default::default(),
        };
        status.step_analysis = Some(AnalysisRunStatus {
            name: "podinfo-9f8e7d6c5b-0-step1".into(),
            phase: AnalysisPhase::Failed,
            failed: 1,
            inconclusive: 6,
            metrics: vec![
                metric(
                    "errors-vs-stable",
                    AnalysisPhase::Failed,
                    Some(MeasurementStatus {
                        phase: AnalysisPhase::Failed,
                        evidence: Some(evidence.clone()),
                        ..Default::default()
                    }),
                ),
                metric(
                    "p99-vs-stable",
                    AnalysisPhase::Running,
                    Some(MeasurementStatus {
                        phase: AnalysisPhase::Inconclusive,
                        evidence: Some(EvidenceStatus {
                            comparison: Comparison::Latency,
                            decision: EvidenceDecision::Inconclusive,
                            quantile: Some("p99".into()),
                            threshold_seconds: Some(0.0412),
                            fail_log_evidence: Some(-0.5),
                            pass_log_evidence: Some(1.2),
                            canary_events: 12,
                            stable_events: 97,
                            ..evidence
                        }),
                        ..Default::default()
                    }),
                ),
            ],
            ..Default::default()
        });
        status.background_analysis = Some(AnalysisRunStatus {
            name: "podinfo-9f8e7d6c5b-0-background".into(),
            phase: AnalysisPhase::Running,
            successful: 4,
            metrics: vec![
                metric(
                    "success-rate",
                    AnalysisPhase::Running,
                    Some(MeasurementStatus {
                        phase: AnalysisPhase::Successful,
                        value: Some("0.983".into()),
                        ..Default::default()
                    }),
                ),
                metric("p99-latency", AnalysisPhase::Pending, None),
            ],
            ..Default::default()
        });
        let text = render(&v);
        let golden = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/get-canary-evidence.txt"
        );
        if std::env::var_os("PLOVER_BLESS").is_some() {
            std::fs::write(golden, &text).unwrap();
        }
        let expected = std::fs::read_to_string(golden).unwrap_or_default();
        assert_eq!(text, expected, "\n{text}");
        assert!(text.contains("evidence for worse 31.2 ≥ boundary 20 (α 0.05) → Failed"));
    }

    #[test]
    fn local_mode_shows_revisions_instead_of_deployments() {
        let mut canary: Canary = serde_json::from_value(json!({
            "apiVersion": "plover.dev/v1alpha1", "kind": "Canary",
            "metadata": {"name": "app"},
            "spec": {"workload": {"stable": "v1", "canary": "v2"},
                     "trafficRouting": {"envoy": {"routesFile": "/tmp/r.yaml"}},
                     "steps": [{"setWeight": 30}]}
        }))
        .unwrap();
        canary.status = Some(CanaryStatus {
            phase: Some(CanaryPhase::Degraded),
            message: Some("RolloutAborted: rollout aborted".into()),
            revision: Some("v2".into()),
            stable_revision: Some("v1".into()),
            current_step_index: Some(0),
            abort: true,
            ..Default::default()
        });
        let text = render(&View {
            canary,
            stable: None,
            canary_workload: None,
            stats: None,
        });
        assert!(text.contains("Status:          ✖ Degraded"), "{text}");
        assert!(text.contains("  Step:          1/1\n"), "{text}");
        // The rolled-back revision gets no tick.
        assert!(
            text.contains("│  └──⧉ v2        Revision     ↩ RolledBack    weight:0%"),
            "{text}"
        );
        assert!(
            text.contains("   └──⧉ v1        Revision     ✔ Routed        weight:100%"),
            "{text}"
        );
    }

    #[test]
    fn requests_patch_the_status_fields_the_decision_reads() {
        assert_eq!(
            Request::Promote.status_patch(),
            json!({"status": {"promote": true}})
        );
        assert_eq!(
            Request::PromoteFull.status_patch(),
            json!({"status": {"promoteFull": true}})
        );
        assert_eq!(
            Request::Abort.status_patch(),
            json!({"status": {"abort": true}})
        );
        assert_eq!(
            Request::Retry.status_patch(),
            json!({"status": {"abort": false}})
        );
    }
}
