//! Analysis templates: parsing, composition, args and `{{args.x}}` substitution, validation.
//!
//! ```text
//! YAML ─load─▶ [Document] ─flatten─▶ AnalysisSpec ─resolve(args, secrets)─▶ Analysis
//!                                      (metrics raw)      (substitute, validate)   (MetricSpec…)
//! ```
//!
//! Accepted documents: `AnalysisTemplate`, `ClusterAnalysisTemplate` and `AnalysisRun`
//! (`argoproj.io/v1alpha1`), and any other resource carrying the same block inline under
//! `spec.analysis` (Plover's own resource).

mod spec;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, time::Duration};

use regex::Regex;
use serde::Deserialize;
pub use spec::*;

use super::{
    duration,
    run::{MetricPlan, DEFAULT_CONSECUTIVE_ERROR_LIMIT, DEFAULT_MEASUREMENT_RETENTION},
};

/// Why a template could not be loaded or resolved. A run in this state is an Error, as in Argo
/// (`Analysis spec invalid: …`, `Unable to resolve metric arguments: …`).
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("document {index}: not valid YAML for an analysis: {source}")]
    Yaml {
        index: usize,
        source: serde_yaml::Error,
    },
    #[error("document {index}: {message}")]
    Document { index: usize, message: String },
    #[error("no analysis template found (expected kind AnalysisTemplate, ClusterAnalysisTemplate or AnalysisRun, or spec.analysis)")]
    Empty,
    #[error("two metrics have the same name '{0}'")]
    DuplicateMetric(String),
    #[error("arg '{0}' has conflicting values in the merged templates")]
    ConflictingArg(String),
    /// The hint to give it depends on the command (`-f` for `plover analyze`, `-t` for `plover
    /// local`); each adds its own.
    #[error("templates[{index}]: template '{name}' is referenced but was not given")]
    MissingTemplate { index: usize, name: String },
    /// Every arg without a value, at once (one run tells all that is missing).
    #[error("{}", unresolved_message(.0))]
    Unresolved(Vec<Unresolved>),
    #[error("Unable to resolve metric arguments: {0}")]
    Substitution(String),
    #[error("Analysis spec invalid: metrics[{index}]: {message}")]
    InvalidMetric { index: usize, message: String },
    #[error("Analysis spec invalid: {0}")]
    InvalidSpec(String),
}

/// An arg left without a value, and what would give it one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// No value, no valueFrom (Argo: `args.NAME was not resolved`).
    Value { arg: String },
    /// A `valueFrom.secretKeyRef` not supplied (`env`: the variable that can supply it).
    Secret {
        arg: String,
        secret: String,
        key: String,
        env: String,
    },
    /// A `valueFrom.fieldRef`, which reads a Rollout.
    Field { arg: String, path: String },
}

/// `args.service and args.namespace were not resolved (outside a cluster pass --arg
/// service=VALUE --arg namespace=VALUE); secret …`.
fn unresolved_message(missing: &[Unresolved]) -> String {
    let mut parts = Vec::new();
    let values: Vec<&str> = missing
        .iter()
        .filter_map(|u| match u {
            Unresolved::Value { arg } => Some(arg.as_str()),
            _ => None,
        })
        .collect();
    if !values.is_empty() {
        let names: Vec<String> = values.iter().map(|a| format!("args.{a}")).collect();
        let flags: Vec<String> = values.iter().map(|a| format!("--arg {a}=VALUE")).collect();
        let verb = if values.len() == 1 { "was" } else { "were" };
        parts.push(format!(
            "{} {verb} not resolved (outside a cluster pass {})",
            join_and(&names),
            flags.join(" ")
        ));
    }
    for u in missing {
        match u {
            Unresolved::Value { .. } => {}
            Unresolved::Secret {
                arg,
                secret,
                key,
                env,
            } => parts.push(format!(
                "args.{arg}: secret '{secret}' not found (outside a cluster supply it with --secret {secret}/{key}=VALUE or {env})"
            )),
            Unresolved::Field { arg, path } => parts.push(format!(
                "args.{arg}: valueFrom.fieldRef '{path}' reads a Rollout; outside a cluster pass --arg {arg}=VALUE or --field '{path}=VALUE'"
            )),
        }
    }
    parts.join("; ")
}

/// `a`, `a and b`, `a, b and c`.
fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// One resource from a file.
#[derive(Clone, Debug)]
pub struct Document {
    pub kind: String,
    pub name: String,
    pub spec: AnalysisSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    spec: serde_json::Value,
}

#[derive(Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    name: String,
}

const ARGO_KINDS: &[&str] = &["AnalysisTemplate", "ClusterAnalysisTemplate", "AnalysisRun"];

/// Parses every YAML document in `text` that carries an analysis; others are skipped.
pub fn load(text: &str) -> Result<Vec<Document>, TemplateError> {
    let mut documents = Vec::new();
    for (index, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_json::Value::deserialize(de)
            .map_err(|source| TemplateError::Yaml { index, source })?;
        if value.is_null() {
            continue;
        }
        let envelope: Envelope =
            serde_json::from_value(value).map_err(|e| TemplateError::Document {
                index,
                message: e.to_string(),
            })?;
        let body = if ARGO_KINDS.contains(&envelope.kind.as_str()) {
            if !envelope.api_version.starts_with("argoproj.io/") {
                return Err(TemplateError::Document {
                    index,
                    message: format!(
                        "{} must have apiVersion argoproj.io/v1alpha1, not {:?}",
                        envelope.kind, envelope.api_version
                    ),
                });
            }
            envelope.spec
        } else {
            match envelope.spec.get("analysis") {
                Some(analysis) => analysis.clone(),
                None => continue,
            }
        };
        let spec: AnalysisSpec =
            serde_json::from_value(body).map_err(|e| TemplateError::Document {
                index,
                message: format!("spec: {e}"),
            })?;
        documents.push(Document {
            kind: envelope.kind,
            name: envelope.metadata.name,
            spec,
        });
    }
    if documents.is_empty() {
        return Err(TemplateError::Empty);
    }
    Ok(documents)
}

/// Merges documents as Argo merges a Rollout's templates (`FlattenTemplates` + `MergeArgs`):
/// metrics concatenated (names unique), args merged (the same arg may not carry two different
/// values), dry-run and retention rules concatenated. References (`templates[]`) must name
/// documents that were given.
pub fn flatten(documents: &[Document]) -> Result<AnalysisSpec, TemplateError> {
    let mut out = AnalysisSpec::default();
    let mut names = Vec::new();
    for doc in documents {
        for (index, reference) in doc.spec.templates.iter().enumerate() {
            if !documents.iter().any(|d| d.name == reference.template_name) {
                return Err(TemplateError::MissingTemplate {
                    index,
                    name: reference.template_name.clone(),
                });
            }
        }
        for metric in &doc.spec.metrics {
            let name = metric
                .get("name")
                .and_then(|n| n.as_str())
                .unwrap_or_default()
                .to_owned();
            if names.contains(&name) {
                return Err(TemplateError::DuplicateMetric(name));
            }
            names.push(name);
            out.metrics.push(metric.clone());
        }
        for arg in &doc.spec.args {
            match out.args.iter_mut().find(|a| a.name == arg.name) {
                None => out.args.push(arg.clone()),
                Some(existing) => {
                    if existing.value.is_some()
                        && arg.value.is_some()
                        && existing.value != arg.value
                    {
                        return Err(TemplateError::ConflictingArg(arg.name.clone()));
                    }
                    if existing.value.is_none() && existing.value_from.is_none() {
                        *existing = arg.clone();
                    }
                }
            }
        }
        out.dry_run.extend(doc.spec.dry_run.iter().cloned());
        out.measurement_retention
            .extend(doc.spec.measurement_retention.iter().cloned());
    }
    Ok(out)
}

/// What the caller supplies for args outside a cluster.
#[derive(Clone, Debug, Default)]
pub struct ArgInputs {
    /// `--arg name=value`: overrides the template's value or valueFrom, as a Rollout's args do.
    pub values: BTreeMap<String, String>,
    /// `--secret name/key=value` (and environment): what `valueFrom.secretKeyRef` reads.
    pub secrets: Secrets,
    /// `--field path=value`: what `valueFrom.fieldRef.fieldPath` reads.
    pub fields: BTreeMap<String, String>,
}

/// The environment variable that can carry a secret's key: `PLOVER_SECRET_<NAME>_<KEY>`,
/// upper-cased, other characters as `_`.
pub fn secret_env_var(secret: &str, key: &str) -> String {
    let clean = |s: &str| {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect::<String>()
    };
    format!("PLOVER_SECRET_{}_{}", clean(secret), clean(key))
}

/// A validated metric, args substituted.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricSpec {
    pub name: String,
    pub interval: Option<Duration>,
    pub initial_delay: Option<Duration>,
    pub count: Option<u32>,
    pub success_condition: Option<String>,
    pub failure_condition: Option<String>,
    pub failure_limit: i64,
    pub inconclusive_limit: i64,
    pub consecutive_error_limit: i64,
    pub consecutive_success_limit: i64,
    pub dry_run: bool,
    pub retention: usize,
    pub provider: ProviderSpec,
}

impl MetricSpec {
    /// What the run state machine needs.
    pub fn plan(&self) -> MetricPlan {
        MetricPlan {
            name: self.name.clone(),
            interval: self.interval,
            initial_delay: self.initial_delay,
            count: self.count,
            failure_limit: self.failure_limit,
            inconclusive_limit: self.inconclusive_limit,
            consecutive_error_limit: self.consecutive_error_limit,
            consecutive_success_limit: self.consecutive_success_limit,
            dry_run: self.dry_run,
            retention: self.retention,
        }
    }
}

/// A resolved analysis, ready to run.
#[derive(Clone, Debug)]
pub struct Analysis {
    pub metrics: Vec<MetricSpec>,
    /// Resolved arg values by name (secret values included; print with [`Analysis::redact`]).
    pub args: BTreeMap<String, String>,
    secret_values: Vec<String>,
}

impl Analysis {
    /// Replaces every secret value in `text` with `*****`, as Argo does in messages and logs.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.secret_values {
            if !secret.is_empty() {
                out = out.replace(secret.as_str(), "*****");
            }
        }
        out
    }
}

/// Replaces `{{args.name}}` tags (whitespace inside the braces allowed) in `text`.
pub fn substitute(text: &str, args: &BTreeMap<String, String>) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(TemplateError::Substitution(format!(
                "Cannot find end tag=\"}}}}\" in the template={text:?} starting from {:?}",
                &rest[start..]
            )));
        };
        let tag = &after[..end];
        let value = tag
            .trim()
            .strip_prefix("args.")
            .and_then(|name| args.get(name));
        match value {
            Some(v) => out.push_str(v),
            None => {
                return Err(TemplateError::Substitution(format!(
                    "failed to resolve {{{{{tag}}}}}"
                )))
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn substitute_json(
    value: &serde_json::Value,
    args: &BTreeMap<String, String>,
) -> Result<serde_json::Value, TemplateError> {
    Ok(match value {
        serde_json::Value::String(s) => serde_json::Value::String(substitute(s, args)?),
        serde_json::Value::Array(items) => serde_json::Value::Array(
            items
                .iter()
                .map(|v| substitute_json(v, args))
                .collect::<Result<_, _>>()?,
        ),
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.iter()
                .map(|(k, v)| Ok((substitute(k, args)?, substitute_json(v, args)?)))
                .collect::<Result<_, TemplateError>>()?,
        ),
        other => other.clone(),
    })
}

/// Resolves every arg, substitutes them into every metric and validates the result.
pub fn resolve(spec: &AnalysisSpec, inputs: &ArgInputs) -> Result<Analysis, TemplateError> {
    let mut args = BTreeMap::new();
    let mut secret_values = Vec::new();
    let mut missing = Vec::new();
    for arg in &spec.args {
        let secret = arg
            .value_from
            .as_ref()
            .and_then(|f| f.secret_key_ref.as_ref());
        let field = arg.value_from.as_ref().and_then(|f| f.field_ref.as_ref());
        let value = if let Some(v) = inputs.values.get(&arg.name) {
            v.clone()
        } else if let Some(v) = &arg.value {
            v.clone()
        } else if let Some(secret) = secret {
            match inputs
                .secrets
                .get(&(secret.name.clone(), secret.key.clone()))
            {
                Some(value) => {
                    secret_values.push(value.clone());
                    value.clone()
                }
                None => {
                    missing.push(Unresolved::Secret {
                        arg: arg.name.clone(),
                        secret: secret.name.clone(),
                        key: secret.key.clone(),
                        env: secret_env_var(&secret.name, &secret.key),
                    });
                    continue;
                }
            }
        } else if let Some(field) = field {
            match inputs.fields.get(&field.field_path) {
                Some(value) => value.clone(),
                None => {
                    missing.push(Unresolved::Field {
                        arg: arg.name.clone(),
                        path: field.field_path.clone(),
                    });
                    continue;
                }
            }
        } else {
            missing.push(Unresolved::Value {
                arg: arg.name.clone(),
            });
            continue;
        };
        args.insert(arg.name.clone(), value);
    }
    if !missing.is_empty() {
        return Err(TemplateError::Unresolved(missing));
    }
    for name in inputs.values.keys() {
        if !spec.args.iter().any(|a| &a.name == name) {
            return Err(TemplateError::InvalidSpec(format!(
                "--arg {name}: the template declares no arg named '{name}'"
            )));
        }
    }
    let dry_run = compile_rules(
        spec.dry_run.iter().map(|r| r.metric_name.as_str()),
        "dryRun",
    )?;
    let retention = compile_rules(
        spec.measurement_retention
            .iter()
            .map(|r| r.metric_name.as_str()),
        "measurementRetention",
    )?;
    let mut metrics = Vec::new();
    for (index, raw) in spec.metrics.iter().enumerate() {
        let resolved = substitute_json(raw, &args)?;
        let raw: RawMetric =
            serde_json::from_value(resolved).map_err(|e| TemplateError::InvalidMetric {
                index,
                message: e.to_string(),
            })?;
        let mut metric = validate_metric(raw)
            .map_err(|message| TemplateError::InvalidMetric { index, message })?;
        metric.dry_run = dry_run.iter().any(|re| re.is_match(&metric.name));
        if let Some((i, _)) = retention
            .iter()
            .enumerate()
            .rev()
            .find(|(_, re)| re.is_match(&metric.name))
        {
            let limit = spec.measurement_retention[i].limit;
            metric.retention = if limit <= 0 {
                DEFAULT_MEASUREMENT_RETENTION
            } else {
                limit as usize
            };
        }
        metrics.push(metric);
    }
    if metrics.is_empty() {
        return Err(TemplateError::InvalidSpec(
            "no metrics specified".to_owned(),
        ));
    }
    for (rules, field) in [(&dry_run, "dryRun"), (&retention, "measurementRetention")] {
        for (i, re) in rules.iter().enumerate() {
            if !metrics.iter().any(|m| re.is_match(&m.name)) {
                return Err(TemplateError::InvalidSpec(format!(
                    "{field}[{i}]: Rule didn't match any metric name(s)"
                )));
            }
        }
    }
    Ok(Analysis {
        metrics,
        args,
        secret_values,
    })
}

fn compile_rules<'a>(
    patterns: impl Iterator<Item = &'a str>,
    field: &str,
) -> Result<Vec<Regex>, TemplateError> {
    patterns
        .enumerate()
        .map(|(i, p)| {
            Regex::new(p).map_err(|e| {
                TemplateError::InvalidSpec(format!("{field}[{i}]: invalid metricName regex: {e}"))
            })
        })
        .collect()
}

fn int_field(value: &Option<IntOrString>, field: &str, default: i64) -> Result<i64, String> {
    match value {
        None => Ok(default),
        Some(IntOrString::Int(i)) => Ok(*i),
        Some(IntOrString::String(s)) => s
            .trim()
            .parse()
            .map_err(|_| format!("{field}: {s:?} is not an integer")),
    }
}

fn duration_field(value: &Option<String>, field: &str) -> Result<Option<Duration>, String> {
    match value.as_deref() {
        None | Some("") => Ok(None),
        Some(text) => duration::parse(text)
            .map(Some)
            .map_err(|e| format!("invalid {field} string: {e}")),
    }
}

/// Argo's `ValidateMetric`, in its order and words.
fn validate_metric(raw: RawMetric) -> Result<MetricSpec, String> {
    let count = int_field(&raw.count, "count", 0)?;
    let failure_limit = int_field(&raw.failure_limit, "failureLimit", 0)?;
    let consecutive_success_limit =
        int_field(&raw.consecutive_success_limit, "consecutiveSuccessLimit", 0)?;
    let inconclusive_limit = int_field(&raw.inconclusive_limit, "inconclusiveLimit", 0)?;
    let consecutive_error_limit = int_field(
        &raw.consecutive_error_limit,
        "consecutiveErrorLimit",
        DEFAULT_CONSECUTIVE_ERROR_LIMIT,
    )?;
    if raw.name.is_empty() {
        return Err("name is required".to_owned());
    }
    if count < 0 {
        return Err("count must be >= 0".to_owned());
    }
    if consecutive_success_limit < 0 {
        return Err("consecutiveSuccessLimit must be >= 0".to_owned());
    }
    if failure_limit < -1 {
        return Err("failureLimit must be >= 0, or -1 to be disabled".to_owned());
    }
    if consecutive_success_limit == 0 && failure_limit == -1 {
        return Err("failureLimit and consecutiveSuccessLimit cannot both be disabled".to_owned());
    }
    if inconclusive_limit < 0 {
        return Err("inconclusiveLimit must be >= 0".to_owned());
    }
    if consecutive_error_limit < 0 {
        return Err("consecutiveErrorLimit must be >= 0".to_owned());
    }
    if count > 0 {
        if failure_limit >= 0 && count < failure_limit + consecutive_success_limit {
            return Err(format!(
                "count ({count}) must be >= failureLimit + consecutiveSuccessLimit ({failure_limit} + {consecutive_success_limit}) if both >= 0"
            ));
        }
        if failure_limit < 0 && count < consecutive_success_limit {
            return Err("count must be >= consecutiveSuccessLimit".to_owned());
        }
        if count < inconclusive_limit {
            return Err("count must be >= inconclusiveLimit".to_owned());
        }
    }
    let interval = duration_field(&raw.interval, "interval")?;
    if count > 1 && interval.is_none() {
        return Err("interval must be specified when count > 1".to_owned());
    }
    let initial_delay = duration_field(&raw.initial_delay, "startDelay")?;
    let provider = provider_from(&raw.provider)?;
    if let ProviderSpec::Plover(p) = &provider {
        let has = |c: &Option<String>| c.as_deref().is_some_and(|c| !c.trim().is_empty());
        for (field, condition) in [
            ("successCondition", &raw.success_condition),
            ("failureCondition", &raw.failure_condition),
        ] {
            if p.metric.is_vs_stable() && has(condition) {
                return Err(format!(
                    "{field}: provider.plover metric {} decides each measurement itself (the sequential test's Fail/Pass/Inconclusive); remove the condition",
                    p.metric.as_str()
                ));
            }
        }
    }
    // A condition that cannot compile would make every measurement an Error, found only after
    // the first interval; Argo users expect a typo to be an invalid spec at once.
    for (field, condition) in [
        ("successCondition", &raw.success_condition),
        ("failureCondition", &raw.failure_condition),
    ] {
        if let Some(c) = condition.as_deref().filter(|c| !c.trim().is_empty()) {
            crate::expr::Program::compile(c)
                .map_err(|e| format!("{field} {c:?} does not compile: {e}"))?;
        }
    }
    Ok(MetricSpec {
        name: raw.name,
        interval,
        initial_delay,
        count: u32::try_from(count).ok().filter(|c| *c > 0),
        success_condition: raw.success_condition.filter(|c| !c.trim().is_empty()),
        failure_condition: raw.failure_condition.filter(|c| !c.trim().is_empty()),
        failure_limit,
        inconclusive_limit,
        consecutive_error_limit,
        consecutive_success_limit,
        dry_run: false,
        retention: DEFAULT_MEASUREMENT_RETENTION,
        provider,
    })
}
