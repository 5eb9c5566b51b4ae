//! From a Canary's analysis source (template references, inline metrics, args) and the
//! templates fetched for it to the engine's resolved [`Analysis`]. Pure: the caller fetches.
//!
//! Args follow Argo's Rollout rules: the Canary's args override the templates' values;
//! `valueFrom.podTemplateHashValue` gives the stable (`Stable`) or canary (`Latest`) revision;
//! `valueFrom.fieldRef` reads the Canary object. Template args with `valueFrom.fieldRef` read the
//! Canary too; `secretKeyRef` values come from the secrets the caller fetched.

use std::collections::BTreeMap;

use serde_json::Value;

use super::spec::AnalysisSource;
use plover_analysis::template::{self, AnalysisSpec, ArgInputs, Document, Secrets, TemplateError};

/// Reads `metadata.name`, `spec.workload.canary` or `metadata.labels['app']` from a JSON object.
pub fn field_path(object: &Value, path: &str) -> Option<String> {
    let mut current = object;
    let mut rest = path.trim();
    while !rest.is_empty() {
        let (segment, tail) = if let Some(stripped) = rest.strip_prefix("['") {
            let end = stripped.find("']")?;
            (
                &stripped[..end],
                stripped[end + 2..].trim_start_matches('.'),
            )
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            (&rest[..end], rest[end..].trim_start_matches('.'))
        };
        current = match current {
            Value::Object(m) => m.get(segment)?,
            Value::Array(a) => a.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
        rest = tail;
    }
    match current {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(current.to_string()),
        _ => None,
    }
}

/// What the caller fetched and knows.
pub struct Inputs<'a> {
    /// The referenced templates, as documents (any order).
    pub templates: Vec<Document>,
    /// The Canary object as JSON, for `fieldRef`s.
    pub canary: &'a Value,
    pub stable_revision: &'a str,
    pub canary_revision: &'a str,
    pub secrets: Secrets,
}

/// The templates a source references, and those they reference in turn, picked from
/// `available`: what the cluster controller fetches by name, for callers that hold every
/// template at once (local mode). [`resolve`] merges every template it is given, so handing it
/// unreferenced ones would add their metrics. A missing one is left out; [`resolve`] names it.
pub fn referenced(source: &AnalysisSource, available: &[Document]) -> Vec<Document> {
    let mut wanted: Vec<(&str, bool)> = source
        .templates
        .iter()
        .map(|t| (t.template_name.as_str(), t.cluster_scope))
        .collect();
    let mut picked: Vec<Document> = Vec::new();
    while let Some((name, cluster)) = wanted.pop() {
        let kind = if cluster {
            "ClusterAnalysisTemplate"
        } else {
            "AnalysisTemplate"
        };
        if picked.iter().any(|d| d.name == name && d.kind == kind) {
            continue;
        }
        if let Some(doc) = available.iter().find(|d| d.name == name && d.kind == kind) {
            wanted.extend(
                doc.spec
                    .templates
                    .iter()
                    .map(|t| (t.template_name.as_str(), t.cluster_scope)),
            );
            picked.push(doc.clone());
        }
    }
    picked
}

/// Resolves the analysis a step or the background runs.
pub fn resolve(
    source: &AnalysisSource,
    inputs: Inputs<'_>,
) -> Result<template::Analysis, TemplateError> {
    let mut documents = Vec::new();
    for (index, reference) in source.templates.iter().enumerate() {
        let found = inputs.templates.iter().find(|d| {
            d.name == reference.template_name
                && (d.kind == "ClusterAnalysisTemplate") == reference.cluster_scope
        });
        match found {
            Some(doc) => documents.push(doc.clone()),
            None => {
                return Err(TemplateError::MissingTemplate {
                    index,
                    name: reference.template_name.clone(),
                })
            }
        }
    }
    // A template may reference further templates; they must have been fetched too.
    for doc in inputs.templates.iter() {
        if !documents
            .iter()
            .any(|d| d.name == doc.name && d.kind == doc.kind)
        {
            documents.push(doc.clone());
        }
    }
    if !source.metrics.is_empty() {
        // The Canary's own metrics may use the args it passes: it declares them, as a template
        // would (their values are filled in below like every template's).
        let args: Vec<serde_json::Value> = source
            .args
            .iter()
            .map(|a| serde_json::json!({"name": a.name}))
            .collect();
        let spec: AnalysisSpec = serde_json::from_value(serde_json::json!({
            "args": args,
            "metrics": source.metrics,
            "dryRun": source.dry_run,
        }))
        .map_err(|e| TemplateError::InvalidSpec(format!("inline metrics: {e}")))?;
        documents.push(Document {
            kind: "Canary".to_owned(),
            name: String::new(),
            spec,
        });
    } else if !source.dry_run.is_empty() {
        if let Some(first) = documents.first_mut() {
            for rule in &source.dry_run {
                first.spec.dry_run.push(
                    serde_json::from_value(serde_json::json!({"metricName": rule.metric_name}))
                        .map_err(|e| TemplateError::InvalidSpec(e.to_string()))?,
                );
            }
        }
    }
    let flat = template::flatten(&documents)?;
    let mut values = BTreeMap::new();
    for arg in &source.args {
        // Args the templates do not declare are ignored, as Argo ignores them.
        if !flat.args.iter().any(|a| a.name == arg.name) {
            continue;
        }
        let value = match (&arg.value, &arg.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => match (&from.pod_template_hash_value, &from.field_ref) {
                (Some(h), _) if h == "Stable" => inputs.stable_revision.to_owned(),
                (Some(_), _) => inputs.canary_revision.to_owned(),
                (None, Some(r)) => field_path(inputs.canary, &r.field_path).ok_or_else(|| {
                    TemplateError::Substitution(format!(
                        "args.{}: fieldRef {:?} not found in the Canary",
                        arg.name, r.field_path
                    ))
                })?,
                (None, None) => continue,
            },
            (None, None) => continue,
        };
        values.insert(arg.name.clone(), value);
    }
    let mut fields = BTreeMap::new();
    for arg in &flat.args {
        if let Some(path) = arg
            .value_from
            .as_ref()
            .and_then(|f| f.field_ref.as_ref())
            .map(|f| f.field_path.clone())
        {
            if let Some(v) = field_path(inputs.canary, &path) {
                fields.insert(path, v);
            }
        }
    }
    template::resolve(
        &flat,
        &ArgInputs {
            values,
            secrets: inputs.secrets,
            fields,
        },
    )
}

/// The secrets (`name`, `key`) the templates' args read.
pub fn secret_refs(templates: &[Document]) -> Vec<(String, String)> {
    let mut refs = Vec::new();
    for doc in templates {
        for arg in &doc.spec.args {
            if let Some(s) = arg
                .value_from
                .as_ref()
                .and_then(|f| f.secret_key_ref.as_ref())
            {
                let r = (s.name.clone(), s.key.clone());
                if !refs.contains(&r) {
                    refs.push(r);
                }
            }
        }
    }
    refs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canary::{AnalysisArg, AnalysisTemplateRef, ArgValueFrom, FieldRef};

    const TEMPLATE: &str = "apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: success-rate}
spec:
  args:
  - name: service
  - name: hash
  metrics:
  - name: success-rate
    successCondition: result >= 0.95
    provider:
      prometheus:
        address: http://prometheus:9090
        query: sum(rate(x{svc=\"{{args.service}}\",hash=\"{{args.hash}}\"}[1m]))
";

    #[test]
    fn only_referenced_templates_and_those_they_reference_are_picked() {
        let docs = template::load(&format!(
            "{TEMPLATE}---\napiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {{name: composed}}\nspec:\n  templates:\n  - templateName: success-rate\n---\napiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {{name: unrelated}}\nspec:\n  metrics:\n  - name: other\n    provider: {{web: {{url: 'http://x/'}}}}\n"
        ))
        .unwrap();
        let source = |name: &str| AnalysisSource {
            templates: vec![AnalysisTemplateRef {
                template_name: name.into(),
                cluster_scope: false,
            }],
            ..Default::default()
        };
        let names = |picked: Vec<Document>| {
            let mut n: Vec<String> = picked.into_iter().map(|d| d.name).collect();
            n.sort();
            n
        };
        assert_eq!(
            names(referenced(&source("success-rate"), &docs)),
            ["success-rate"]
        );
        assert_eq!(
            names(referenced(&source("composed"), &docs)),
            ["composed", "success-rate"]
        );
        assert!(referenced(&source("missing"), &docs).is_empty());
    }

    #[test]
    fn field_paths() {
        let obj = serde_json::json!({"metadata": {"name": "podinfo", "labels": {"app.kubernetes.io/name": "pi"}}, "spec": {"steps": [{"setWeight": 5}]}});
        assert_eq!(
            field_path(&obj, "metadata.name").as_deref(),
            Some("podinfo")
        );
        assert_eq!(
            field_path(&obj, "metadata.labels['app.kubernetes.io/name']").as_deref(),
            Some("pi")
        );
        assert_eq!(
            field_path(&obj, "spec.steps.0.setWeight").as_deref(),
            Some("5")
        );
        assert_eq!(field_path(&obj, "spec.nothing"), None);
    }

    #[test]
    fn templates_inline_metrics_and_args_resolve_together() {
        let source = AnalysisSource {
            templates: vec![AnalysisTemplateRef {
                template_name: "success-rate".into(),
                cluster_scope: false,
            }],
            metrics: vec![
                serde_json::json!({"name": "inline", "provider": {"web": {"url": "http://x/{{args.service}}"}}}),
            ],
            args: vec![
                AnalysisArg {
                    name: "service".into(),
                    value_from: Some(ArgValueFrom {
                        field_ref: Some(FieldRef {
                            field_path: "metadata.name".into(),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                AnalysisArg {
                    name: "hash".into(),
                    value_from: Some(ArgValueFrom {
                        pod_template_hash_value: Some("Latest".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                AnalysisArg {
                    name: "unused".into(),
                    value: Some("x".into()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let canary = serde_json::json!({"metadata": {"name": "podinfo"}});
        let analysis = resolve(
            &source,
            Inputs {
                templates: template::load(TEMPLATE).unwrap(),
                canary: &canary,
                stable_revision: "s1",
                canary_revision: "c2",
                secrets: Secrets::new(),
            },
        )
        .unwrap();
        let names: Vec<&str> = analysis.metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["success-rate", "inline"]);
        assert_eq!(analysis.args["hash"], "c2");
        assert_eq!(analysis.args["service"], "podinfo");
    }

    #[test]
    fn a_missing_template_is_an_error_naming_it() {
        let source = AnalysisSource {
            templates: vec![AnalysisTemplateRef {
                template_name: "nope".into(),
                cluster_scope: true,
            }],
            ..Default::default()
        };
        let canary = serde_json::json!({});
        let e = resolve(
            &source,
            Inputs {
                templates: vec![],
                canary: &canary,
                stable_revision: "",
                canary_revision: "",
                secrets: Secrets::new(),
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("'nope'"), "{e}");
    }
}
