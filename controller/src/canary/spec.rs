//! `spec` of the `Canary` resource. The CRD in `manifests/base/crd.yaml` is generated from these types
//! ([`super::crd::crd_yaml`]); `validate` checks what the schema cannot express.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::CanaryStatus;

/// A canary release of one workload: shift traffic from `stable` to `canary` step by step,
/// gate the steps on analysis and on the traffic split actually observed, then promote.
// clippy reads the repeated `type_ = "integer"` of two printer columns as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "plover.dev",
    version = "v1alpha1",
    kind = "Canary",
    plural = "canaries",
    namespaced,
    status = "CanaryStatus",
    shortname = "pcan",
    category = "plover",
    doc = "A canary release: traffic shifted from the stable to the canary workload in steps, gated by analysis and by the observed split",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Step",
        type_ = "integer",
        json_path = ".status.currentStepIndex"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredWeight",
        description = "Desired canary weight (%)"
    ),
    printcolumn(
        name = "Observed",
        type_ = "number",
        json_path = ".status.observedWeight",
        description = "Canary share of requests seen by the exporter (%)"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct CanarySpec {
    /// The two workloads traffic is split between.
    pub workload: WorkloadRef,
    /// How the split is applied: exactly one of `istio`, `gatewayAPI` or `envoy`.
    pub traffic_routing: TrafficRouting,
    /// The rollout plan, run in order; after the last step the canary is promoted.
    #[serde(default)]
    pub steps: Vec<CanaryStep>,
    /// Background analysis, run alongside the steps from `startingStep` on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<BackgroundAnalysis>,
    /// Verify the split from the exporter's observed traffic before a weight step completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_check: Option<TrafficCheck>,
    /// Seconds the rollout may wait on something it does not control (the canary's pods
    /// becoming available, the observed split matching the weight) before it is Degraded with
    /// reason `ProgressDeadlineExceeded` (Argo Rollouts' field; default 600). Pauses and running
    /// analyses do not count: they wait by design.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub progress_deadline_seconds: Option<i32>,
    /// Abort the rollout (all traffic back to stable) when the progress deadline is exceeded,
    /// instead of only marking it Degraded (Argo Rollouts' field; default false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub progress_deadline_abort: bool,
    /// Where to send a message when the rollout's phase changes (progressing, paused,
    /// inconclusive, promoted, aborted, rolled back), besides the controller's `--notify`
    /// targets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<NotificationTarget>,
}

/// One receiver of phase-change messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationTarget {
    /// `webhook` (a JSON document), `slack` or `teams` (their incoming-webhook formats).
    #[serde(rename = "type")]
    pub kind: NotificationKind,
    /// The URL to POST to; or `urlFrom`, as incoming-webhook URLs are secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_from: Option<UrlFrom>,
}

/// Where a notification URL is read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UrlFrom {
    /// A key of a Secret in the Canary's namespace (local mode: the environment variable
    /// `PLOVER_SECRET_<NAME>_<KEY>`).
    pub secret_key_ref: SecretKeyRef,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// The message format of a notification target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NotificationKind {
    Webhook,
    Slack,
    Teams,
}

/// Default `progressDeadlineSeconds`, Argo Rollouts' and Kubernetes Deployments'.
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: u32 = 600;

/// The stable and canary workloads. On Kubernetes these are Deployments in the Canary's
/// namespace; in local mode they are revision names (Envoy cluster names).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    /// Deployment (or local revision) that serves the stable version and receives it at promotion.
    pub stable: String,
    /// Deployment (or local revision) whose pod template is the candidate; a change of that
    /// template starts a new canary revision.
    pub canary: String,
}

/// Exactly one router.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficRouting {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istio: Option<IstioRouting>,
    #[serde(
        default,
        rename = "gatewayAPI",
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway_api: Option<GatewayApiRouting>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy: Option<EnvoyRouting>,
    /// Header the router sets on each destination's requests and responses (Istio
    /// `headers.request.set`/`headers.response.set`, Gateway API `RequestHeaderModifier`/
    /// `ResponseHeaderModifier`, Envoy `request_headers_to_add`/`response_headers_to_add` per
    /// weighted cluster), replacing any value the client or the app sent, to the revision it
    /// routes to: the pod-template-hash of its Deployment's current ReplicaSet (what
    /// `podTemplateHashValue` gives templates), or with `envoy` the revision's name. Name the
    /// header Plover's filter reads (`response_header.name`; the overlays use `x-app-revision`),
    /// so that requests are counted under their revision even when the app does not report it,
    /// and templates can select the release's own revision. The tags come with the weights, at
    /// no cost to the filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_header: Option<String>,
    /// Routes the steps `setHeaderRoute` and `setMirrorRoute` may add, by name, highest
    /// priority first (Argo Rollouts' field). The router object's routes of these names belong
    /// to the controller: it writes them ahead of the weighted routes while a step has set them,
    /// and removes them at promotion, at abort and when a new revision starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managed_routes: Vec<ManagedRouteRef>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ManagedRouteRef {
    pub name: String,
}

/// How a string is matched: exactly one of `exact`, `prefix`, `regex` (RE2 syntax).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A step that sends the requests carrying a header (or a cookie: header `cookie` with a
/// regex) to the canary, whatever the weight: Argo's `setHeaderRoute`, Flagger's A/B `match`.
/// Without `match` it removes the route of that name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetHeaderRoute {
    /// One of `spec.trafficRouting.managedRoutes`.
    pub name: String,
    /// A request matching any one of these goes to the canary.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HeaderRoutingMatch>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderRoutingMatch {
    pub header_name: String,
    pub header_value: StringMatch,
}

/// A step that copies a share of the matching requests to the canary; the copies' answers are
/// dropped, so clients see only stable's (Argo's `setMirrorRoute`). Without `match` it removes
/// the route of that name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetMirrorRoute {
    /// One of `spec.trafficRouting.managedRoutes`.
    pub name: String,
    /// A request matching any one of these is mirrored.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    /// Percent of the matching requests copied (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub percentage: Option<i32>,
}

/// Every condition given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<StringMatch>,
    /// By header name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
}

/// Istio: weights of the stable and canary destinations of named VirtualService routes.
/// Destinations are told apart by host (`stableService`/`canaryService`) or, when
/// `destinationRule` is set, by subset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioRouting {
    pub virtual_service: VirtualServiceRef,
    /// Subset mode: the DestinationRule whose two subsets select the stable and canary pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_rule: Option<DestinationRuleRef>,
    /// Host mode: the stable Service (destination host, compared up to its first dot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_service: Option<String>,
    /// Host mode: the canary Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_service: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceRef {
    pub name: String,
    /// Names of the `spec.http[]` routes to weight. Empty: the only HTTP route.
    #[serde(default)]
    pub routes: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleRef {
    pub name: String,
    pub stable_subset_name: String,
    pub canary_subset_name: String,
}

/// Gateway API: `backendRefs[].weight` of the stable and canary Services in an HTTPRoute.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayApiRouting {
    pub http_route: String,
    /// Names of the rules (`spec.rules[].name`) to weight. Empty: every rule that references
    /// both Services (rules that reference only one, e.g. header routes, are left alone).
    #[serde(default)]
    pub rules: Vec<String>,
    pub stable_service: String,
    pub canary_service: String,
}

/// Local mode: a real Envoy reads its routes from a file it watches (file-based RDS).
/// Cluster names are the revision names of `workload`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvoyRouting {
    /// The RDS file Envoy watches (its directory is the watched directory).
    pub routes_file: String,
    /// `RouteConfiguration.name`, as the listener's `rds.route_config_name` names it.
    #[serde(default = "default_route_config_name")]
    pub route_config_name: String,
    #[serde(default = "default_virtual_host")]
    pub virtual_host: String,
    #[serde(default = "default_domains")]
    pub domains: Vec<String>,
    /// Path prefix of the one weighted route.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Envoy runtime key prefix for the weights (lets an operator override them through the
    /// admin `/runtime_modify` in an emergency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_key_prefix: Option<String>,
    /// Fixed cluster of the stable workload. With `canaryCluster`, `clustersFile` and
    /// `backends`, the routes name two fixed clusters and the controller points them at the
    /// revisions' backends through a CDS file: a promotion repoints the stable cluster at the
    /// canary's backend, so a filter that tags requests by cluster keeps stable and canary right.
    /// Unset: clusters are named after the revisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_cluster: Option<String>,
    /// Fixed cluster of the canary workload (see `stableCluster`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_cluster: Option<String>,
    /// The CDS file Envoy watches (`dynamic_resources.cds_config`), written by rename like the routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clusters_file: Option<String>,
    /// `host:port` of each revision's backend, by revision name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub backends: BTreeMap<String, String>,
}

impl EnvoyRouting {
    /// The fixed stable and canary cluster names, when configured.
    pub fn fixed_clusters(&self) -> Option<(&str, &str)> {
        Some((
            self.stable_cluster.as_deref()?,
            self.canary_cluster.as_deref()?,
        ))
    }

    /// The clusters the routes name for a stable and a canary revision.
    pub fn route_clusters<'a>(
        &'a self,
        stable_revision: &'a str,
        canary_revision: &'a str,
    ) -> (&'a str, &'a str) {
        self.fixed_clusters()
            .unwrap_or((stable_revision, canary_revision))
    }
}

fn default_route_config_name() -> String {
    "local_route".to_owned()
}
fn default_virtual_host() -> String {
    "local".to_owned()
}
fn default_domains() -> Vec<String> {
    vec!["*".to_owned()]
}
fn default_prefix() -> String {
    "/".to_owned()
}

/// One step: exactly one of `setWeight`, `pause`, `analysis`, `setHeaderRoute`,
/// `setMirrorRoute`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStep {
    /// Canary weight in percent (0–100); the stable workload gets the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub set_weight: Option<i32>,
    /// Wait for `duration`, or without one until `plover promote`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<PauseStep>,
    /// Run an analysis; the step completes when it is Successful.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSource>,
    /// Add, replace or (without `match`) remove a managed header route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_header_route: Option<SetHeaderRoute>,
    /// Add, replace or (without `match`) remove a managed mirror route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_mirror_route: Option<SetMirrorRoute>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PauseStep {
    /// `30s`, `5m`, `1h30m`, or a number of seconds. Unset: until promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<IntOrString>,
}

/// What an analysis runs: Argo `AnalysisTemplate`/`ClusterAnalysisTemplate` references and/or
/// Plover inline metrics (Argo's metric syntax), with args.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisSource {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<AnalysisTemplateRef>,
    /// Inline metrics, in `AnalysisTemplate.spec.metrics[]` syntax.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "preserved_objects")]
    pub metrics: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<AnalysisArg>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dry_run: Vec<DryRunRule>,
}

/// Background analysis: the same sources, started once the rollout reaches `startingStep`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackgroundAnalysis {
    /// Index of the step from which the analysis runs (default 0: from the start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub starting_step: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<AnalysisTemplateRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "preserved_objects")]
    pub metrics: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<AnalysisArg>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dry_run: Vec<DryRunRule>,
}

impl CanarySpec {
    /// Every analysis the spec can start: each step's inline analysis, then the background one.
    /// Every analysis the spec names, with its field (`spec.steps[2].analysis`,
    /// `spec.analysis`), for checking them all before any weight changes.
    pub fn named_analysis_sources(&self) -> Vec<(String, AnalysisSource)> {
        self.steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((format!("spec.steps[{i}].analysis"), s.analysis.clone()?)))
            .chain(
                self.analysis
                    .as_ref()
                    .map(|a| ("spec.analysis".to_owned(), a.source())),
            )
            .collect()
    }

    pub fn analysis_sources(&self) -> Vec<AnalysisSource> {
        self.steps
            .iter()
            .filter_map(|s| s.analysis.clone())
            .chain(self.analysis.as_ref().map(BackgroundAnalysis::source))
            .collect()
    }
}

impl BackgroundAnalysis {
    /// The sources without the start condition.
    pub fn source(&self) -> AnalysisSource {
        AnalysisSource {
            templates: self.templates.clone(),
            metrics: self.metrics.clone(),
            args: self.args.clone(),
            dry_run: self.dry_run.clone(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisTemplateRef {
    pub template_name: String,
    /// A `ClusterAnalysisTemplate` rather than a namespaced `AnalysisTemplate`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster_scope: bool,
}

/// An arg given to the templates: a `value`, or `valueFrom`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisArg {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<ArgValueFrom>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArgValueFrom {
    /// `Stable` or `Latest`: the stable or the canary revision (pod template hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template_hash_value: Option<String>,
    /// A path into the Canary object, e.g. `metadata.name` or `spec.workload.canary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_ref: Option<FieldRef>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FieldRef {
    pub field_path: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DryRunRule {
    pub metric_name: String,
}

/// The observed-split gate: after a weight change, the step completes only once the canary's
/// requests seen by the exporter are consistent with the desired weight (see `split`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficCheck {
    /// Base URL of the Plover exporter (`http://plover-exporter.plover:9464`).
    pub exporter: String,
    /// Service name the filter tags requests with; default: the Canary's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Window the share is measured over (`30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Allowed distance between observed and desired canary weight, in percentage points (default 5), at most half the weight's distance to 0 or 100; a larger distance is a mismatch once chance cannot explain it (binomial test, α 0.001).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub tolerance: Option<i32>,
    /// Fewer requests than this in the window: the split cannot be judged yet (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_requests: Option<i64>,
    /// How long a mismatch may last before it is reported as the `TrafficSplitMismatch` condition (`2m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch_after: Option<String>,
}

/// Default window of the observed-split check.
pub const DEFAULT_TRAFFIC_WINDOW: &str = "30s";
pub const DEFAULT_TRAFFIC_TOLERANCE: u32 = 5;
pub const DEFAULT_MIN_REQUESTS: u64 = 50;
pub const DEFAULT_MISMATCH_AFTER: &str = "2m";

fn preserved_objects(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true
        }
    })
}

impl TrafficRouting {
    /// Which router is configured, for messages and metrics.
    pub fn kind(&self) -> &'static str {
        match (&self.istio, &self.gateway_api, &self.envoy) {
            (Some(_), None, None) => "istio",
            (None, Some(_), None) => "gatewayAPI",
            (None, None, Some(_)) => "envoy",
            _ => "invalid",
        }
    }
}
