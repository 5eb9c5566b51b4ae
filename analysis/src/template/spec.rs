//! Serde types of the resources and of each provider's configuration, as Argo spells them.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

/// A string field that YAML may have written as a number or boolean (`value: 5`).
pub(crate) fn string_like<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    Ok(match v {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    })
}

/// `AnalysisTemplateSpec` (also the body of `ClusterAnalysisTemplate`, `AnalysisRun` and of
/// Plover's inline `spec.analysis`). Metrics stay raw JSON until their args are substituted.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisSpec {
    #[serde(default)]
    pub metrics: Vec<serde_json::Value>,
    #[serde(default)]
    pub args: Vec<Argument>,
    #[serde(default)]
    pub dry_run: Vec<DryRunRule>,
    #[serde(default)]
    pub measurement_retention: Vec<RetentionRule>,
    #[serde(default)]
    pub templates: Vec<TemplateRef>,
}

/// `args[]`: a name with a value, a `valueFrom`, or neither (then it must be supplied).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Argument {
    pub name: String,
    #[serde(default, deserialize_with = "string_like")]
    pub value: Option<String>,
    #[serde(default)]
    pub value_from: Option<ValueFrom>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValueFrom {
    #[serde(default)]
    pub secret_key_ref: Option<SecretKeyRef>,
    #[serde(default)]
    pub field_ref: Option<FieldRef>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldRef {
    pub field_path: String,
}

/// `dryRun[]`: metrics whose name matches the (unanchored) regex never decide the run.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DryRunRule {
    pub metric_name: String,
}

/// `measurementRetention[]`: how many measurements to keep for matching metrics (0 ⇒ 10).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetentionRule {
    pub metric_name: String,
    #[serde(default)]
    pub limit: i64,
}

/// `templates[]`: a reference to another template to merge in.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRef {
    #[serde(default)]
    pub template_name: String,
    #[serde(default)]
    pub cluster_scope: bool,
}

/// Kubernetes `IntOrString` (`count: 3`, `count: "3"`, `count: "{{args.n}}"`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    String(String),
}

/// One metric after its args were substituted, before validation.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RawMetric {
    pub name: String,
    #[serde(default, deserialize_with = "string_like")]
    pub interval: Option<String>,
    #[serde(default, deserialize_with = "string_like")]
    pub initial_delay: Option<String>,
    #[serde(default)]
    pub count: Option<IntOrString>,
    #[serde(default, deserialize_with = "string_like")]
    pub success_condition: Option<String>,
    #[serde(default, deserialize_with = "string_like")]
    pub failure_condition: Option<String>,
    #[serde(default)]
    pub failure_limit: Option<IntOrString>,
    #[serde(default)]
    pub inconclusive_limit: Option<IntOrString>,
    #[serde(default)]
    pub consecutive_error_limit: Option<IntOrString>,
    #[serde(default)]
    pub consecutive_success_limit: Option<IntOrString>,
    #[serde(default)]
    pub provider: serde_json::Map<String, serde_json::Value>,
}

/// `{key, value}` headers of the prometheus and web providers.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Header {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authentication {
    #[serde(default)]
    pub sigv4: Sigv4,
    #[serde(default)]
    pub oauth2: OAuth2,
    #[serde(default)]
    pub basic_auth: BasicAuth,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sigv4 {
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub profile: String,
    #[serde(default)]
    pub role_arn: String,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OAuth2 {
    #[serde(default)]
    pub token_url: String,
    #[serde(default)]
    pub client_id: String,
    #[serde(default)]
    pub client_secret: String,
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct BasicAuth {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
}

/// `provider.job`: the Job's metadata (labels, annotations) and spec, as in a Job object.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct JobSpec {
    #[serde(default)]
    pub metadata: serde_json::Value,
    #[serde(default)]
    pub spec: serde_json::Value,
}

/// `provider.prometheus`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusSpec {
    /// Base URL; empty ⇒ `ARGO_ROLLOUTS_PROMETHEUS_ADDRESS`, as in Argo.
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub query: String,
    #[serde(default)]
    pub authentication: Authentication,
    /// Seconds; default 30.
    #[serde(default)]
    pub timeout: Option<i64>,
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub headers: Vec<Header>,
    #[serde(default)]
    pub range_query: Option<serde_json::Value>,
}

impl PrometheusSpec {
    /// Argo signs with SigV4 every query to an Amazon Managed Prometheus address (one that
    /// contains `aps-workspaces`), whether `authentication.sigv4` is given or not.
    pub fn needs_sigv4(&self, address: &str) -> bool {
        address.contains("aps-workspaces")
    }
}

/// `provider.web`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebSpec {
    /// `GET` (default), `POST` or `PUT`.
    #[serde(default)]
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub headers: Vec<Header>,
    #[serde(default)]
    pub body: String,
    /// Seconds; ≤ 0 ⇒ 10.
    #[serde(default)]
    pub timeout_seconds: i64,
    /// kubectl JSONPath; empty ⇒ `{$}`.
    #[serde(default)]
    pub json_path: String,
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub json_body: Option<serde_json::Value>,
    #[serde(default)]
    pub authentication: Authentication,
}

/// What Plover's provider reports about the chosen revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PloverQuantity {
    /// `1 - errors/requests`, 0–1.
    SuccessRate,
    /// `errors/requests`, 0–1.
    ErrorRate,
    /// Requests per second over the window.
    RequestRate,
    /// A latency quantile in seconds (see `quantile`).
    Latency,
    /// The revision's share of the service's requests, 0–1.
    TrafficShare,
    /// Requests completed in the window.
    Requests,
    /// Canary against stable: the sequential test on the odds ratio of an error (see
    /// `sequential/SEQUENTIAL.md`). The measurement's phase is the test's decision.
    ErrorRatioVsStable,
    /// Canary against stable: the sequential test on the odds of a request being slower than
    /// stable's `quantile` (default p99) over the earlier looks.
    LatencyVsStable,
    /// Canary against stable: latency tests at stable's p50, p75, p90 and p99, each at α/4.
    LatencyDistributionVsStable,
}

impl PloverQuantity {
    /// The name as written in a template (`errorRatioVsStable`).
    pub fn as_str(self) -> &'static str {
        match self {
            PloverQuantity::SuccessRate => "successRate",
            PloverQuantity::ErrorRate => "errorRate",
            PloverQuantity::RequestRate => "requestRate",
            PloverQuantity::Latency => "latency",
            PloverQuantity::TrafficShare => "trafficShare",
            PloverQuantity::Requests => "requests",
            PloverQuantity::ErrorRatioVsStable => "errorRatioVsStable",
            PloverQuantity::LatencyVsStable => "latencyVsStable",
            PloverQuantity::LatencyDistributionVsStable => "latencyDistributionVsStable",
        }
    }

    /// The canary-versus-stable sequential judges, which decide the phase themselves and
    /// keep evidence across the measurements of a run.
    pub fn is_vs_stable(self) -> bool {
        matches!(
            self,
            PloverQuantity::ErrorRatioVsStable
                | PloverQuantity::LatencyVsStable
                | PloverQuantity::LatencyDistributionVsStable
        )
    }
}

/// A number that YAML may have written as a string (`alpha: "{{args.alpha}}"` → `"0.01"`).
pub(crate) fn number_like<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => Ok(n.as_f64()),
        Some(serde_json::Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a number"))),
        Some(other) => Err(serde::de::Error::custom(format!("{other} is not a number"))),
    }
}

/// What a measurement with too little traffic becomes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum NoData {
    #[default]
    Inconclusive,
    Failed,
    Successful,
    Error,
}

/// `provider.plover`: the exporter's `/v1/stats` for one revision of one service.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PloverSpec {
    /// Exporter base URL; empty ⇒ `--exporter` / `PLOVER_EXPORTER_ADDRESS`.
    #[serde(default)]
    pub address: String,
    pub namespace: String,
    pub service: String,
    /// `30s`, `5m`, `1h`; default `30s`.
    #[serde(default = "default_window")]
    pub window: String,
    /// `canary` (default), `stable`, or a revision name. For the `…VsStable` metrics, the canary
    /// side: `canary` takes the busiest revision with role canary in each answer; a revision name
    /// (e.g. `{{args.canary-revision}}`) takes exactly that revision, so traffic a previous
    /// canary left in the window is never judged as this one's.
    #[serde(default = "default_revision")]
    pub revision: String,
    /// For the `…VsStable` metrics, the stable side: `stable` (default) takes the busiest
    /// revision with role stable; a revision name (e.g. `{{args.stable-revision}}` from
    /// `podTemplateHashValue: Stable`) takes exactly that revision, so the previous stable's
    /// last requests after a promotion are never judged as stable's.
    #[serde(default = "default_stable_revision")]
    pub stable_revision: String,
    pub metric: PloverQuantity,
    /// For `latency`: `p50`, `p90`, `p95`, `p99` (default), `p999`, `max`, `mean`.
    #[serde(default)]
    pub quantile: Option<String>,
    /// The minimum-sample gate: fewer requests in the window ⇒ `noData`. Default 20.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// What a measurement below `minRequests` (or with no entry for the revision) becomes.
    #[serde(default)]
    pub no_data: NoData,
    /// Seconds; default 10.
    #[serde(default)]
    pub timeout: Option<i64>,
    /// For the `…VsStable` metrics: bound on the probability of a wrong decision. Default 0.05.
    #[serde(default, deserialize_with = "number_like")]
    pub alpha: Option<f64>,
    /// For the `…VsStable` metrics: the largest odds ratio canary/stable still acceptable
    /// (1.0: no worse than stable). Default 1.0.
    #[serde(default, deserialize_with = "number_like")]
    pub tolerance: Option<f64>,
    /// For the `…VsStable` metrics: the smallest odds ratio worth detecting; a pass shows the
    /// canary is below it. Default 2.0.
    #[serde(default, deserialize_with = "number_like")]
    pub min_effect: Option<f64>,
    /// For `errorRatioVsStable`: an absolute margin on the error rates (0.005 = half a
    /// percentage point). A pass then shows the canary's error rate is not more than this above
    /// stable's, which a release without any error can show (the odds ratio cannot); wrongly
    /// passing a canary worse by the margin has probability ≤ alpha. Fails are unchanged.
    #[serde(default, deserialize_with = "number_like")]
    pub margin: Option<f64>,
    /// For `latencyVsStable` and `latencyDistributionVsStable`: an absolute margin on latency
    /// (`5ms`). A pass then shows the canary is not slower than stable by this much at the
    /// quantile (at each of the distribution's quantiles); wrongly passing a canary slower by
    /// the margin has probability ≤ alpha. Fails are unchanged.
    #[serde(default)]
    pub latency_margin: Option<String>,
}

/// Defaults of the `…VsStable` metrics.
pub const DEFAULT_ALPHA: f64 = 0.05;
pub const DEFAULT_TOLERANCE: f64 = 1.0;
pub const DEFAULT_MIN_EFFECT: f64 = 2.0;

/// `quantile` values `latencyVsStable` accepts, as fractions.
pub const VS_STABLE_QUANTILES: &[(&str, f64)] = &[
    ("p50", 0.5),
    ("p75", 0.75),
    ("p90", 0.9),
    ("p95", 0.95),
    ("p99", 0.99),
    ("p999", 0.999),
];

impl PloverSpec {
    /// The sequential test's configuration (defaults filled in).
    pub fn odds_config(&self) -> plover_sequential::odds::OddsTestConfig {
        plover_sequential::odds::OddsTestConfig {
            alpha: self.alpha.unwrap_or(DEFAULT_ALPHA),
            tolerance: self.tolerance.unwrap_or(DEFAULT_TOLERANCE),
            min_effect: self.min_effect.unwrap_or(DEFAULT_MIN_EFFECT),
        }
    }

    /// `latencyMargin` in µs, when set and valid (above zero, below an hour).
    pub fn latency_margin_micros(&self) -> Option<u64> {
        let d = crate::duration::parse(self.latency_margin.as_deref()?).ok()?;
        let micros = u64::try_from(d.as_micros()).ok()?;
        (micros > 0 && micros < 3_600_000_000).then_some(micros)
    }

    /// What the judge's pass side shows (for its sentences).
    pub fn pass_side(&self) -> plover_sequential::compare::PassSide {
        use plover_sequential::compare::PassSide;
        match (self.margin, self.latency_margin_micros()) {
            (Some(m), _) => PassSide::ErrorRate(m),
            (None, Some(micros)) => PassSide::Latency(micros),
            (None, None) => PassSide::Relative,
        }
    }

    /// `latencyVsStable`'s quantile as a fraction (default p99).
    pub fn vs_stable_quantile(&self) -> Option<f64> {
        let name = self.quantile.as_deref().unwrap_or("p99");
        VS_STABLE_QUANTILES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, q)| *q)
    }

    /// Checks what serde cannot: the `…VsStable` fields, with messages naming the field.
    pub fn validate(&self) -> Result<(), String> {
        let field = |name: &str| format!("provider.plover.{name}");
        if !self.metric.is_vs_stable() {
            for (name, set) in [
                ("alpha", self.alpha.is_some()),
                ("tolerance", self.tolerance.is_some()),
                ("minEffect", self.min_effect.is_some()),
                ("stableRevision", self.stable_revision != "stable"),
                ("margin", self.margin.is_some()),
                ("latencyMargin", self.latency_margin.is_some()),
            ] {
                if set {
                    return Err(format!(
                        "{}: only the errorRatioVsStable, latencyVsStable and latencyDistributionVsStable metrics take it",
                        field(name)
                    ));
                }
            }
            return Ok(());
        }
        if self.revision == "stable" || self.revision.is_empty() {
            return Err(format!(
                "{}: {} compares a canary revision with role stable; give canary (the busiest revision with role canary, the default) or the canary's revision name, not {:?}",
                field("revision"),
                self.metric.as_str(),
                self.revision
            ));
        }
        if let Some(margin) = self.margin {
            if self.metric != PloverQuantity::ErrorRatioVsStable {
                return Err(format!(
                    "{}: only errorRatioVsStable takes an absolute margin",
                    field("margin")
                ));
            }
            if !(margin > 0.0 && margin < 1.0) {
                return Err(format!(
                    "{}: an error-rate difference between 0 and 1 (0.005 = half a point), got {margin}",
                    field("margin")
                ));
            }
        }
        if let Some(text) = &self.latency_margin {
            if self.metric == PloverQuantity::ErrorRatioVsStable {
                return Err(format!(
                    "{}: only latencyVsStable and latencyDistributionVsStable take a latency margin (errorRatioVsStable takes margin, an error-rate difference)",
                    field("latencyMargin")
                ));
            }
            if self.latency_margin_micros().is_none() {
                return Err(format!(
                    "{}: {text:?}: expected a duration above zero and below an hour, e.g. 5ms or 0.5s",
                    field("latencyMargin")
                ));
            }
        }
        if self.stable_revision.is_empty() || self.stable_revision == "canary" {
            return Err(format!(
                "{}: give stable (the busiest revision with role stable, the default) or the stable revision's name, not {:?}",
                field("stableRevision"),
                self.stable_revision
            ));
        }
        if self.stable_revision == self.revision {
            return Err(format!(
                "{}: {:?} is also the canary side's revision; a revision cannot be judged against itself",
                field("stableRevision"),
                self.stable_revision
            ));
        }
        match self.metric {
            PloverQuantity::LatencyVsStable if self.vs_stable_quantile().is_none() => {
                return Err(format!(
                    "{}: {:?}: expected p50, p75, p90, p95, p99 (default) or p999",
                    field("quantile"),
                    self.quantile.as_deref().unwrap_or_default()
                ));
            }
            PloverQuantity::LatencyVsStable => {}
            _ if self.quantile.is_some() => {
                return Err(format!(
                    "{}: only latencyVsStable takes a quantile (latencyDistributionVsStable compares at stable's p50, p75, p90 and p99)",
                    field("quantile")
                ));
            }
            _ => {}
        }
        let c = self.odds_config();
        if !(c.alpha > 0.0 && c.alpha < 0.5) {
            return Err(format!(
                "{}: must be in (0, 0.5), got {}",
                field("alpha"),
                c.alpha
            ));
        }
        if !(c.tolerance >= 1.0 && c.tolerance.is_finite()) {
            return Err(format!(
                "{}: must be an odds ratio ≥ 1 (1 = no worse than stable), got {}",
                field("tolerance"),
                c.tolerance
            ));
        }
        if !(c.min_effect > c.tolerance && c.min_effect.is_finite()) {
            return Err(format!(
                "{}: must be a finite odds ratio above tolerance ({}), got {}",
                field("minEffect"),
                c.tolerance,
                c.min_effect
            ));
        }
        if stats_window_seconds(&self.window).is_none() {
            return Err(format!(
                "{}: {:?}: expected e.g. 30s, 5m or 1h",
                field("window"),
                self.window
            ));
        }
        Ok(())
    }
}

fn stats_window_seconds(text: &str) -> Option<u64> {
    plover_wire::stats::parse_window_seconds(text)
}

fn default_window() -> String {
    "30s".to_owned()
}
fn default_stable_revision() -> String {
    "stable".to_owned()
}

fn default_revision() -> String {
    "canary".to_owned()
}
fn default_min_requests() -> u64 {
    20
}

/// A metric's provider, validated.
#[derive(Clone, Debug, PartialEq)]
pub enum ProviderSpec {
    Prometheus(PrometheusSpec),
    Web(WebSpec),
    Plover(PloverSpec),
    /// Argo's `job`: run a Kubernetes Job; Successful if it succeeds, Failed if it fails. Only
    /// a source with a cluster measures it (the controller; `plover analyze --kubeconfig`).
    Job(JobSpec),
    /// A provider this build cannot run (a Job, Datadog, a plugin …): parsed, never measured.
    Unsupported {
        provider: String,
        reason: String,
    },
}

impl ProviderSpec {
    /// The provider's name as written in the template (`prometheus`, `job`, `plugin/x`).
    pub fn name(&self) -> &str {
        match self {
            ProviderSpec::Prometheus(_) => "prometheus",
            ProviderSpec::Web(_) => "web",
            ProviderSpec::Plover(_) => "plover",
            ProviderSpec::Job(_) => "job",
            ProviderSpec::Unsupported { provider, .. } => provider,
        }
    }
}

/// Provider keys Argo knows, besides Plover's own `plover`.
pub(crate) const ARGO_PROVIDERS: &[&str] = &[
    "prometheus",
    "kayenta",
    "web",
    "datadog",
    "wavefront",
    "newRelic",
    "job",
    "cloudWatch",
    "graphite",
    "influxdb",
    "skywalking",
    "plugin",
];

/// Builds the typed provider from `metric.provider`, with Argo's checks and messages.
pub(crate) fn provider_from(
    map: &serde_json::Map<String, serde_json::Value>,
) -> Result<ProviderSpec, String> {
    let mut count = 0;
    for (key, value) in map {
        if key == "plugin" {
            count += value.as_object().map_or(0, |o| o.len());
        } else if key == "plover" || ARGO_PROVIDERS.contains(&key.as_str()) {
            count += usize::from(!value.is_null());
        } else {
            return Err(format!("unknown provider \"{key}\""));
        }
    }
    if count == 0 {
        return Err("no provider specified".to_owned());
    }
    if count > 1 {
        return Err("multiple providers specified".to_owned());
    }
    let (key, value) = map
        .iter()
        .find(|(_, v)| !v.is_null())
        .expect("one provider is present");
    let typed = |e: serde_json::Error| format!("provider.{key}: {e}");
    Ok(match key.as_str() {
        "prometheus" => ProviderSpec::Prometheus(serde_json::from_value(value.clone()).map_err(typed)?),
        "web" => ProviderSpec::Web(serde_json::from_value(value.clone()).map_err(typed)?),
        "plover" => {
            let spec: PloverSpec = serde_json::from_value(value.clone()).map_err(typed)?;
            spec.validate()?;
            ProviderSpec::Plover(spec)
        }
        "job" => {
            let spec: JobSpec = serde_json::from_value(value.clone()).map_err(typed)?;
            if !spec.spec.is_object() {
                return Err("provider.job.spec: expected a Job spec (with template)".to_owned());
            }
            ProviderSpec::Job(spec)
        }
        "plugin" => {
            let name = value.as_object().and_then(|o| o.keys().next().cloned()).unwrap_or_default();
            ProviderSpec::Unsupported {
                provider: format!("plugin/{name}"),
                reason: "Argo Rollouts metric plugins are not supported by Plover".to_owned(),
            }
        }
        other => ProviderSpec::Unsupported {
            provider: other.to_owned(),
            reason: format!("the {other} provider is not implemented by Plover (prometheus, web and plover are)"),
        },
    })
}

/// Secret values supplied outside a cluster, by `(secret name, key)`.
pub type Secrets = BTreeMap<(String, String), String>;
