//! Reconcile: the only glue between the Kubernetes API and the pure decision.
//!
//! ```text
//!  observe (GET stable + canary Deployments, exporter /v1/stats, runner verdicts)
//!     └─▶ canary::decide (pure) ─▶ Decision { actions, status, requeue_after }
//!            └─▶ execute, in order: stop runs · route (GET + guarded PATCH) · promote
//!                (guarded PATCH of the stable Deployment) · start runs · events
//!                └─▶ status (guarded JSON patch, only when it changed) ─▶ requeue
//! ```
//!
//! Level-triggered and idempotent: every reconcile recomputes from the world, routers and
//! promotion write only when the object differs, and an unchanged status is not written, so a
//! reconcile caused by our own write ends without writing. Every write carries a `test` of the
//! resourceVersion it was computed from; a concurrent edit fails it and the next reconcile
//! starts over from fresh reads.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, ReplicaSet},
        core::v1::Secret,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams},
    runtime::{
        controller::{Action, Controller},
        events::{Event, EventType, Recorder},
        reflector::ObjectRef,
        watcher,
    },
    Client, Resource, ResourceExt,
};
use serde_json::{json, Value};
use tracing::{info, warn};

use plover_analysis::template::{Analysis, AnalysisSpec, Document, Secrets};

use crate::{
    canary::{
        conditions, decide, reasons, resolve, validate, AnalysisKind, AnalysisRunStatus,
        AnalysisSource, Canary, CanarySpec, CanaryStatus, ManagedRoutes, Observation,
        WorkloadState,
    },
    execute::{execute, reported, Revisions, Rim},
    metrics::Metrics,
    observe::{
        selector_labels, template_revision, traffic_from_stats, traffic_of_revision,
        workload_state, TrafficSource,
    },
    router::{envoy_file, gateway_api, istio, Managed, RevisionTags, RouterError},
    runner::{CanaryKey, Runner},
};

/// Field manager of every write (shows in `managedFields`).
pub const FIELD_MANAGER: &str = "plover-controller";
/// How often runs of deleted Canaries are looked for.
const RUN_SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Back-off after a failed reconcile (a conflict is usually gone by then).
pub const ERROR_REQUEUE: Duration = Duration::from_secs(5);

/// Why a reconcile failed; the controller retries after [`ERROR_REQUEUE`].
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Router(#[from] RouterError),
    #[error("Canary {0} has no namespace")]
    NoNamespace(String),
    #[error("serializing: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("promotion: {0}")]
    Promote(String),
}

impl ReconcileError {
    /// Label for `plover_reconcile_errors_total{error}`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ReconcileError::Kube(kube::Error::Api(s)) if s.code == 409 || s.code == 422 => {
                "conflict"
            }
            ReconcileError::Kube(_) => "kube",
            ReconcileError::Router(_) => "router",
            ReconcileError::NoNamespace(_) => "no_namespace",
            ReconcileError::Serialize(_) => "serialize",
            ReconcileError::Promote(_) => "promote",
        }
    }
}

/// Everything reconcile needs; one per controller.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub runner: Runner,
    pub traffic: Arc<dyn TrafficSource>,
    pub metrics: Arc<Metrics>,
    /// The clock (tests pin it).
    pub now: Arc<dyn Fn() -> Timestamp + Send + Sync>,
    /// Phase-change messages (`--notify` and each Canary's `spec.notifications`).
    pub notifier: crate::notify::Notifier,
}

fn api_resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

pub fn virtual_services() -> ApiResource {
    api_resource(
        "networking.istio.io",
        "v1",
        "VirtualService",
        "virtualservices",
    )
}
pub fn destination_rules() -> ApiResource {
    api_resource(
        "networking.istio.io",
        "v1",
        "DestinationRule",
        "destinationrules",
    )
}
pub fn http_routes() -> ApiResource {
    api_resource("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes")
}
fn analysis_templates(cluster: bool) -> ApiResource {
    if cluster {
        api_resource(
            "argoproj.io",
            "v1alpha1",
            "ClusterAnalysisTemplate",
            "clusteranalysistemplates",
        )
    } else {
        api_resource(
            "argoproj.io",
            "v1alpha1",
            "AnalysisTemplate",
            "analysistemplates",
        )
    }
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    }
}

/// A Deployment's `matchLabels` as a label selector (`a=b,c=d`); None without any.
fn label_selector(deployment: &Deployment) -> Option<String> {
    let labels = selector_labels(deployment);
    (!labels.is_empty()).then(|| {
        labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// Reconciles one Canary.
pub async fn reconcile(canary: Arc<Canary>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let name = canary.name_any();
    let namespace = canary
        .namespace()
        .ok_or_else(|| ReconcileError::NoNamespace(name.clone()))?;
    let key: CanaryKey = (namespace.clone(), name.clone());
    let spec = &canary.spec;
    let status = canary.status.clone().unwrap_or_default();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);

    // Observe. With an invalid spec nothing is read: the decision only reports the spec.
    let valid = validate(spec).is_ok();
    let (stable, candidate) = if valid && spec.traffic_routing.envoy.is_none() {
        (
            deployments.get_opt(&spec.workload.stable).await?,
            deployments.get_opt(&spec.workload.canary).await?,
        )
    } else {
        (None, None)
    };
    // The ReplicaSets of both Deployments: their pod-template-hash is the revision the pods
    // report, which the exporter counts and analysis templates select.
    let replica_sets = match (&stable, &candidate) {
        (None, None) => Vec::new(),
        (s, c) => {
            let selectors: Vec<String> = [s, c]
                .into_iter()
                .flatten()
                .filter_map(label_selector)
                .collect();
            let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &namespace);
            let mut found = Vec::new();
            for selector in selectors {
                found.extend(
                    api.list(&ListParams::default().labels(&selector))
                        .await?
                        .items,
                );
            }
            found
        }
    };
    let (traffic, traffic_error) = match spec.traffic_check.as_ref().filter(|_| valid) {
        Some(check) => {
            let service = check.service.clone().unwrap_or_else(|| name.clone());
            match ctx.traffic.stats(check, &namespace, &service).await {
                // Envoy routing names revisions after clusters: match the canary by name.
                Ok(stats) if spec.traffic_routing.envoy.is_some() => (
                    Some(traffic_of_revision(&stats, &spec.workload.canary)),
                    None,
                ),
                Ok(stats) => (Some(traffic_from_stats(&stats)), None),
                Err(e) => {
                    warn!(canary = %name, namespace = %namespace, error = %e, "Exporter did not answer.");
                    (None, Some(e))
                }
            }
        }
        None => (None, None),
    };
    let verdicts = ctx.runner.verdicts(&key);
    // Envoy routing has no Deployments: the workloads are revision names, as in local mode, and
    // promotion makes the canary's revision the stable one.
    let envoy_stable = status
        .stable_revision
        .clone()
        .unwrap_or_else(|| spec.workload.stable.clone());
    let (stable_state, canary_state) = if spec.traffic_routing.envoy.is_some() {
        (
            WorkloadState::ready(&envoy_stable),
            WorkloadState::ready(&spec.workload.canary),
        )
    } else {
        (
            workload_state(stable.as_ref(), &replica_sets),
            workload_state(candidate.as_ref(), &replica_sets),
        )
    };
    // Before a revision's first weight (or after an edit, or while the last check found a
    // problem), every analysis the spec names is fetched and resolved as its step would.
    let new_revision = canary_state.revision.is_some()
        && canary_state.revision != stable_state.revision
        && status.revision != canary_state.revision;
    let edited = status.observed_generation != canary.metadata.generation;
    let recheck = status.is_condition_true(conditions::INVALID_SPEC);
    let analysis_problem = if valid
        && canary_state.revision != stable_state.revision
        && (new_revision || edited || recheck)
    {
        let revisions = Revisions {
            stable: reported(&stable_state.pod_template_hash, &stable_state.revision),
            canary: reported(&canary_state.pod_template_hash, &canary_state.revision),
        };
        check_analyses(&ctx, &namespace, &canary, &revisions).await?
    } else {
        None
    };
    let tag = |w: &WorkloadState| w.pod_template_hash.clone().filter(|_| w.rolled_out);
    let (stable_tag, canary_tag) = (tag(&stable_state), tag(&canary_state));
    let obs = Observation {
        name: &name,
        generation: canary.metadata.generation,
        spec,
        status: &status,
        stable: stable_state,
        canary: canary_state,
        traffic,
        traffic_error,
        analyses: &verdicts,
        analysis_problem,
        now: (ctx.now)(),
    };
    let decision = decide(&obs);

    let mut rim = ClusterRim {
        ctx: &ctx,
        canary: &canary,
        key: &key,
        workloads: Workloads {
            stable: stable.as_ref(),
            canary: candidate.as_ref(),
            envoy_stable: &envoy_stable,
            stable_tag,
            canary_tag,
        },
    };
    match execute(&decision, &status, &mut rim).await {
        Ok(()) => {}
        // The route object cannot take the weights as the spec names them (a route or
        // destination that is not there, a third weighted destination, …): a problem of the
        // user's objects, not of the API server. Say so on the Canary once, and look again
        // later (route objects are not watched).
        Err(ReconcileError::Router(error @ RouterError::Object { .. })) => {
            ctx.metrics.reconcile_error("router");
            return routing_failed(&canary, &ctx, &key, &status, &error).await;
        }
        Err(e) => return Err(e),
    }
    ctx.metrics.observe(&namespace, &name, &decision.status);
    info!(
        canary = %name, namespace = %namespace,
        phase = decision.status.phase.map_or("", |p| p.as_str()),
        step = ?decision.status.current_step_index, desired_weight = decision.status.desired_weight,
        observed_weight = ?decision.status.observed_weight, requeue_after = ?decision.requeue_after,
        "Reconciled."
    );
    Ok(decision
        .requeue_after
        .map_or_else(Action::await_change, Action::requeue))
}

/// How often a Canary whose route object cannot be written is looked at again.
pub const ROUTING_RETRY: Duration = Duration::from_secs(30);

/// Records a routing failure: the status as it was plus the `TrafficRoutingFailed` condition
/// naming the object and what is wrong, written (with one Warning event) only when that is
/// news, so that a broken route object costs one reconcile per [`ROUTING_RETRY`] and no write.
async fn routing_failed(
    canary: &Canary,
    ctx: &Context,
    key: &CanaryKey,
    status: &CanaryStatus,
    error: &RouterError,
) -> Result<Action, ReconcileError> {
    let message = error.to_string();
    warn!(canary = %key.1, namespace = %key.0, error = %message, "Traffic routing failed.");
    let known = status
        .condition(conditions::TRAFFIC_ROUTING_FAILED)
        .is_some_and(|c| c.status == "True" && c.message == message);
    if !known {
        let mut failed = status.clone();
        failed.set_condition(
            conditions::TRAFFIC_ROUTING_FAILED,
            true,
            reasons::ROUTE_NOT_WRITABLE,
            &message,
            &Time((ctx.now)()),
            canary.metadata.generation,
        );
        write_status(ctx, canary, key, &failed).await?;
        publish(
            ctx,
            canary,
            key,
            true,
            reasons::ROUTE_NOT_WRITABLE,
            &message,
        )
        .await;
    }
    Ok(Action::requeue(ROUTING_RETRY))
}

/// Replaces the status, guarded by the resourceVersion the decision was made on.
async fn write_status(
    ctx: &Context,
    canary: &Canary,
    key: &CanaryKey,
    status: &CanaryStatus,
) -> Result<(), ReconcileError> {
    let canaries: Api<Canary> = Api::namespaced(ctx.client.clone(), &key.0);
    let mut ops = Vec::new();
    if let Some(rv) = &canary.metadata.resource_version {
        ops.push(json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv}));
    }
    ops.push(json!({"op": "add", "path": "/status", "value": status}));
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops))?;
    canaries
        .patch_status(&key.1, &patch_params(), &Patch::Json::<()>(patch))
        .await?;
    Ok(())
}

/// Publishes an Event on the Canary; one that cannot be published must not stop the rollout.
async fn publish(
    ctx: &Context,
    canary: &Canary,
    key: &CanaryKey,
    warning: bool,
    reason: &str,
    message: &str,
) {
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_owned(),
        note: Some(message.to_owned()),
        action: "Rollout".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &canary.object_ref(&())).await {
        warn!(canary = %key.1, error = %e, "Event not published.");
    }
}

/// Logs, counts and retries a failed reconcile.
pub fn error_policy(canary: Arc<Canary>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    warn!(canary = %canary.name_any(), error = %error, "Reconcile failed.");
    ctx.metrics.reconcile_error(error.metric_label());
    Action::requeue(ERROR_REQUEUE)
}

/// What the actions act on.
struct Workloads<'a> {
    stable: Option<&'a Deployment>,
    canary: Option<&'a Deployment>,
    /// Envoy routing: the stable revision (cluster) name.
    envoy_stable: &'a str,
    /// The revision each Deployment's pods report, while it is the only one serving (the
    /// Deployment has rolled it out): what the route tags that destination with.
    stable_tag: Option<String>,
    canary_tag: Option<String>,
}

/// The API server's side of [`execute`]: routers, the stable Deployment, the runner, Events and
/// the Canary's status.
struct ClusterRim<'a> {
    ctx: &'a Context,
    canary: &'a Canary,
    key: &'a CanaryKey,
    workloads: Workloads<'a>,
}

impl Rim for ClusterRim<'_> {
    type Error = ReconcileError;

    async fn set_weight(
        &mut self,
        canary: u32,
        stable: u32,
        routes: &ManagedRoutes,
    ) -> Result<(), ReconcileError> {
        let spec = &self.canary.spec;
        let tags = spec
            .traffic_routing
            .revision_header
            .as_deref()
            .map(|header| RevisionTags {
                header,
                stable: self.workloads.stable_tag.as_deref(),
                canary: self.workloads.canary_tag.as_deref(),
            });
        let managed = Managed {
            names: &spec.traffic_routing.managed_routes,
            routes,
        };
        let weights = (canary, stable);
        route(
            self.ctx,
            &self.key.0,
            spec,
            &self.workloads,
            (weights, tags, &managed),
        )
        .await
    }

    async fn promote(&mut self, revision: &str) -> Result<(), ReconcileError> {
        match &self.canary.spec.traffic_routing.envoy {
            // Envoy routing: the decision recorded the new stable revision; fixed clusters
            // are re-pointed to it.
            Some(cfg) => {
                envoy_file::sync_clusters(cfg, revision, &self.canary.spec.workload.canary)?;
                Ok(())
            }
            None => {
                promote(
                    self.ctx,
                    &self.key.0,
                    self.workloads.stable,
                    self.workloads.canary,
                    revision,
                )
                .await
            }
        }
    }

    async fn start_analysis(
        &mut self,
        name: &str,
        kind: AnalysisKind,
        source: &AnalysisSource,
        revisions: Revisions<'_>,
        earlier: Option<&AnalysisRunStatus>,
    ) -> Result<(), ReconcileError> {
        let object = serde_json::to_value(self.canary)?;
        match resolve_analysis(self.ctx, &self.key.0, &object, source, &revisions).await? {
            Ok(analysis) => self.ctx.runner.start(self.key, name, analysis, earlier),
            Err(problem) => self.ctx.runner.fail(self.key, name, problem),
        }
        info!(canary = %self.key.1, run = %name, kind = ?kind_label(kind), "Analysis started.");
        Ok(())
    }

    fn stop_analysis(&mut self, name: &str) {
        self.ctx.runner.stop(self.key, name);
    }

    fn retain_analyses(&mut self, keep: &[&str]) {
        self.ctx.runner.retain(self.key, keep);
    }

    async fn event(&mut self, warning: bool, reason: &'static str, message: &str) {
        publish(self.ctx, self.canary, self.key, warning, reason, message).await;
    }

    /// Guarded by the resourceVersion the decision was made on, not by `read`.
    async fn write_status(
        &mut self,
        _read: &CanaryStatus,
        status: &CanaryStatus,
    ) -> Result<(), ReconcileError> {
        write_status(self.ctx, self.canary, self.key, status).await
    }

    async fn notify(
        &mut self,
        change: crate::notify::Change,
        previous: &CanaryStatus,
        status: &CanaryStatus,
        events: Vec<crate::notify::NotifiedEvent>,
    ) {
        let namespace = &self.key.0;
        let secrets: Api<Secret> = Api::namespaced(self.ctx.client.clone(), namespace);
        let (targets, problems) =
            crate::notify::resolve_targets(&self.canary.spec.notifications, |name, key| {
                let secrets = secrets.clone();
                async move {
                    let secret = secrets.get_opt(&name).await.ok().flatten()?;
                    let value = secret.data?.get(&key)?.0.clone();
                    Some(String::from_utf8_lossy(&value).into_owned())
                }
            })
            .await;
        for problem in problems {
            warn!(canary = %self.key.1, namespace = %namespace, %problem, "Notification target left out.");
        }
        let notification = crate::notify::Notification::new(
            self.canary,
            change,
            previous,
            status,
            events,
            (self.ctx.now)().to_string(),
        );
        self.ctx.notifier.send(&targets, &notification);
    }
}

fn kind_label(kind: AnalysisKind) -> String {
    match kind {
        AnalysisKind::Step(i) => format!("step {i}"),
        AnalysisKind::Background => "background".to_owned(),
    }
}

/// GETs a router object and PATCHes it when the router says so.
async fn patch_router_object(
    api: &Api<DynamicObject>,
    name: &str,
    compute: impl FnOnce(&Value) -> Result<Option<json_patch::Patch>, RouterError>,
) -> Result<(), ReconcileError> {
    let object = serde_json::to_value(api.get(name).await?)?;
    if let Some(patch) = compute(&object)? {
        api.patch(name, &patch_params(), &Patch::Json::<()>(patch))
            .await?;
    }
    Ok(())
}

async fn route(
    ctx: &Context,
    namespace: &str,
    spec: &CanarySpec,
    workloads: &Workloads<'_>,
    (weights, tags, managed): ((u32, u32), Option<RevisionTags<'_>>, &Managed<'_>),
) -> Result<(), ReconcileError> {
    let (stable, candidate) = (workloads.stable, workloads.canary);
    let routing = &spec.traffic_routing;
    if let Some(cfg) = &routing.istio {
        if let Some(dr) = &cfg.destination_rule {
            let stable_labels = stable.map(selector_labels).unwrap_or_default();
            let canary_labels = candidate.map(selector_labels).unwrap_or_default();
            let api = Api::namespaced_with(ctx.client.clone(), namespace, &destination_rules());
            patch_router_object(&api, &dr.name, |o| {
                istio::sync_subsets(o, cfg, &stable_labels, &canary_labels)
            })
            .await?;
        }
        let api = Api::namespaced_with(ctx.client.clone(), namespace, &virtual_services());
        patch_router_object(&api, &cfg.virtual_service.name, |o| {
            istio::set_routes(o, cfg, weights, tags, managed)
        })
        .await
    } else if let Some(cfg) = &routing.gateway_api {
        let api = Api::namespaced_with(ctx.client.clone(), namespace, &http_routes());
        patch_router_object(&api, &cfg.http_route, |o| {
            gateway_api::set_routes(o, cfg, weights, tags, managed)
        })
        .await
    } else if let Some(cfg) = &routing.envoy {
        envoy_file::apply(
            cfg,
            (workloads.envoy_stable, &spec.workload.canary),
            weights,
            spec.traffic_routing.revision_header.as_deref(),
            managed,
        )?;
        Ok(())
    } else {
        Ok(())
    }
}

/// JSON patch operations that give `target` the pod template `source` (its spec and
/// annotations; labels stay, the selector depends on them), guarded by `target`'s
/// resourceVersion: promotion copies the canary's to stable, `undo` stable's to the canary.
pub(crate) fn copy_template_ops(
    source: &k8s_openapi::api::core::v1::PodTemplateSpec,
    target: &Deployment,
) -> Vec<Value> {
    let mut ops = Vec::new();
    if let Some(rv) = &target.metadata.resource_version {
        ops.push(json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv}));
    }
    ops.push(json!({"op": "add", "path": "/spec/template/spec", "value": source.spec}));
    let annotations = |template: &k8s_openapi::api::core::v1::PodTemplateSpec| {
        template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.clone())
            .unwrap_or_default()
    };
    let target_template = target.spec.as_ref().map(|s| &s.template);
    let wanted = annotations(source);
    if target_template.map(annotations).unwrap_or_default() != wanted {
        if target_template.is_none_or(|t| t.metadata.is_none()) {
            ops.push(json!({"op": "add", "path": "/spec/template/metadata", "value": {"annotations": wanted}}));
        } else {
            ops.push(json!({"op": "add", "path": "/spec/template/metadata/annotations", "value": wanted}));
        }
    }
    ops
}

/// Copies the canary's pod template (spec and annotations) to the stable Deployment, unless it
/// already runs `revision`.
async fn promote(
    ctx: &Context,
    namespace: &str,
    stable: Option<&Deployment>,
    candidate: Option<&Deployment>,
    revision: &str,
) -> Result<(), ReconcileError> {
    let (Some(stable), Some(candidate)) = (stable, candidate) else {
        return Err(ReconcileError::Promote(
            "the stable or canary Deployment is gone".to_owned(),
        ));
    };
    let (Some(stable_spec), Some(canary_spec)) = (&stable.spec, &candidate.spec) else {
        return Err(ReconcileError::Promote(
            "a Deployment has no spec".to_owned(),
        ));
    };
    if template_revision(&stable_spec.template) == revision {
        return Ok(());
    }
    if template_revision(&canary_spec.template) != revision {
        return Err(ReconcileError::Promote(format!(
            "the canary no longer runs revision {revision}"
        )));
    }
    let ops = copy_template_ops(&canary_spec.template, stable);
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops))?;
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    api.patch(
        &stable.name_any(),
        &patch_params(),
        &Patch::Json::<()>(patch),
    )
    .await?;
    Ok(())
}

/// Fetches and resolves every analysis `canary` names, as each would be when its step starts:
/// the first problem, naming the field (`spec.steps[2].analysis: AnalysisTemplate "x" not
/// found in namespace y`), or `None`.
async fn check_analyses(
    ctx: &Context,
    namespace: &str,
    canary: &Canary,
    revisions: &Revisions<'_>,
) -> Result<Option<String>, ReconcileError> {
    let object = serde_json::to_value(canary)?;
    for (field, source) in canary.spec.named_analysis_sources() {
        if let Err(problem) = resolve_analysis(ctx, namespace, &object, &source, revisions).await? {
            return Ok(Some(format!("{field}: {problem}")));
        }
    }
    Ok(None)
}

/// Fetches what `source` references and resolves it for the Canary `object` and `revisions`.
/// The outer error is the API server's (retry the reconcile); the inner one is the spec's (a
/// template that does not exist, an undeclared arg: the run is an Error, as Argo makes it).
async fn resolve_analysis(
    ctx: &Context,
    namespace: &str,
    object: &Value,
    source: &AnalysisSource,
    revisions: &Revisions<'_>,
) -> Result<Result<Analysis, String>, ReconcileError> {
    Ok(match fetch_templates(ctx, namespace, source).await? {
        Err(problem) => Err(problem),
        Ok((templates, secrets)) => {
            let inputs = resolve::Inputs {
                templates,
                canary: object,
                stable_revision: revisions.stable,
                canary_revision: revisions.canary,
                secrets,
            };
            resolve::resolve(source, inputs)
                .map_err(|e| e.to_string())
                .and_then(|analysis| match ctx.runner.refused(&analysis) {
                    Some(refused) => Err(refused),
                    None => Ok(analysis),
                })
        }
    })
}

/// Fetches the referenced templates (and the templates they reference) and the secrets their
/// args read. The outer error is the API server's; the inner one is the spec's.
async fn fetch_templates(
    ctx: &Context,
    namespace: &str,
    source: &AnalysisSource,
) -> Result<Result<(Vec<Document>, Secrets), String>, ReconcileError> {
    let mut wanted: Vec<(String, bool)> = source
        .templates
        .iter()
        .map(|t| (t.template_name.clone(), t.cluster_scope))
        .collect();
    let mut documents: Vec<Document> = Vec::new();
    while let Some((name, cluster)) = wanted.pop() {
        let kind = if cluster {
            "ClusterAnalysisTemplate"
        } else {
            "AnalysisTemplate"
        };
        if documents.iter().any(|d| d.name == name && d.kind == kind) {
            continue;
        }
        let resource = analysis_templates(cluster);
        let api: Api<DynamicObject> = if cluster {
            Api::all_with(ctx.client.clone(), &resource)
        } else {
            Api::namespaced_with(ctx.client.clone(), namespace, &resource)
        };
        let Some(object) = api.get_opt(&name).await? else {
            let place = if cluster {
                String::new()
            } else {
                format!(" in namespace {namespace}")
            };
            return Ok(Err(format!("{kind} {name:?} not found{place}")));
        };
        // A template the API server accepted but that is no analysis is the user's mistake,
        // said on the Canary, not an error of this reconcile.
        let spec: AnalysisSpec =
            match serde_json::from_value(object.data.get("spec").cloned().unwrap_or(Value::Null)) {
                Ok(spec) => spec,
                Err(e) => return Ok(Err(format!("{kind} {name:?}: spec: {e}"))),
            };
        for nested in &spec.templates {
            wanted.push((nested.template_name.clone(), nested.cluster_scope));
        }
        documents.push(Document {
            kind: kind.to_owned(),
            name,
            spec,
        });
    }
    let mut secrets = Secrets::new();
    let refs = resolve::secret_refs(&documents);
    if !refs.is_empty() {
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
        for (name, key) in refs {
            let value = api
                .get_opt(&name)
                .await?
                .and_then(|s| s.data)
                .and_then(|d| {
                    d.get(&key)
                        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                });
            if let Some(value) = value {
                secrets.insert((name, key), value);
            }
        }
    }
    Ok(Ok((documents, secrets)))
}

/// Canaries whose stable or canary workload is this Deployment.
fn canaries_of(
    store: &kube::runtime::reflector::Store<Canary>,
    deployment: &Deployment,
) -> Vec<ObjectRef<Canary>> {
    let name = deployment.name_any();
    let namespace = deployment.namespace();
    store
        .state()
        .iter()
        .filter(|c| {
            c.namespace() == namespace
                && (c.spec.workload.stable == name || c.spec.workload.canary == name)
        })
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// Runs the controller until shutdown: watches Canaries and the Deployments they name, and
/// reconciles. While an analysis runs, the decision's requeue polls its verdict.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) -> Result<(), kube::Error> {
    let client = ctx.client.clone();
    let (canaries, deployments): (Api<Canary>, Api<Deployment>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    // Fail early and clearly when the CRD is not installed.
    canaries.list(&ListParams::default().limit(1)).await?;
    let controller = Controller::new(canaries, watcher::Config::default().any_semantic());
    let store = controller.store();
    // Runs of deleted Canaries (an unbounded background analysis would run forever) are
    // stopped by a sweep; reconcile is never called for a deleted object.
    let (sweep_store, sweep_runner) = (store.clone(), ctx.runner.clone());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RUN_SWEEP_INTERVAL).await;
            if sweep_store.is_empty() && !sweep_runner.canaries().is_empty() {
                // The store may still be filling after a restart: keep the runs this time.
                continue;
            }
            for key in sweep_runner.canaries() {
                let present = sweep_store
                    .get(&ObjectRef::<Canary>::new(&key.1).within(&key.0))
                    .is_some();
                if !present {
                    info!(canary = %key.1, namespace = %key.0, "Canary gone: stopping its analysis runs.");
                    sweep_runner.forget(&key);
                }
            }
        }
    });
    controller
        .watches(
            deployments,
            watcher::Config::default().any_semantic(),
            move |d| canaries_of(&store, &d),
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "Controller error.");
            }
        })
        .await;
    Ok(())
}
