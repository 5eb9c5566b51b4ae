//! The `Canary` CustomResourceDefinition, generated from the Rust types: the one source of
//! truth for `manifests/base/crd.yaml` (a test keeps the file equal to this output).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use super::spec::Canary;

/// Where the generated CRD is kept, relative to the workspace root.
pub const CRD_PATH: &str = "manifests/base/crd.yaml";

/// The CRD object.
pub fn crd() -> CustomResourceDefinition {
    Canary::crd()
}

/// The CRD as the YAML written to [`CRD_PATH`], with a header saying how to regenerate it.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let body = serde_yaml::to_string(&crd())?;
    Ok(format!(
        "# Generated from controller/src/canary/spec.rs — do not edit.\n\
         # Regenerate: cargo run -q -p plover-controller --bin plover -- crd > {CRD_PATH}\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `manifests/base/crd.yaml` must be exactly what the code generates.
    #[test]
    fn manifest_equals_the_generated_crd() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/base/crd.yaml");
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        let generated = crd_yaml().unwrap();
        assert!(
            on_disk == generated,
            "{CRD_PATH} is stale; regenerate it with: cargo run -q -p plover-controller --bin plover -- crd > {CRD_PATH}"
        );
    }

    #[test]
    fn crd_has_status_printer_columns_and_a_structural_schema() {
        let crd = crd();
        assert_eq!(crd.spec.group, "plover.dev");
        assert_eq!(crd.spec.names.kind, "Canary");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some());
        let columns: Vec<&str> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Phase", "Step", "Desired", "Observed", "Age"]);
        let schema = serde_json::to_value(&version.schema).unwrap();
        let text = schema.to_string();
        // Structural: no anyOf/oneOf left at any level apart from IntOrString.
        assert!(!text.contains("\"oneOf\""), "{text}");
        let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(
            spec["required"],
            serde_json::json!(["trafficRouting", "workload"])
        );
        assert!(spec["properties"]["trafficRouting"]["properties"]["gatewayAPI"].is_object());
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;
    use crate::canary::{resolve, validate};
    use serde::Deserialize;

    /// Every Canary in `manifests/examples/` (each example is a directory of multi-document
    /// YAML files; the other kinds are checked by `tests/tests/manifests/`) is valid: it
    /// passes the generated CRD's schema, `validate`, and its inline metrics resolve in the
    /// analysis engine.
    #[test]
    fn examples_are_valid_canaries() {
        fn yaml_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    yaml_files(&path, out);
                } else if path.extension().is_some_and(|e| e == "yaml") {
                    out.push(path);
                }
            }
        }
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/examples");
        let schema = serde_json::to_value(&crd().spec.versions[0].schema).unwrap()
            ["openAPIV3Schema"]
            .clone();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let mut files = Vec::new();
        yaml_files(std::path::Path::new(dir), &mut files);
        let mut seen = 0;
        let documents = files.iter().flat_map(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            serde_yaml::Deserializer::from_str(&text)
                .map(|d| serde_json::Value::deserialize(d).unwrap())
                .filter(|v| v["kind"] == "Canary")
                .map(|v| (path.clone(), v))
                .collect::<Vec<_>>()
        });
        for (path, value) in documents {
            let errors: Vec<String> = validator
                .iter_errors(&value)
                .map(|e| format!("{e} at {}", e.instance_path()))
                .collect();
            assert!(errors.is_empty(), "{}: {errors:?}", path.display());
            let canary: Canary = serde_json::from_value(value.clone()).unwrap();
            if let Err(e) = validate(&canary.spec) {
                panic!("{}: {e}", path.display());
            }
            let sources = canary.spec.analysis_sources();
            for source in sources.into_iter().filter(|s| s.templates.is_empty()) {
                let inputs = resolve::Inputs {
                    templates: vec![],
                    canary: &value,
                    stable_revision: "s",
                    canary_revision: "c",
                    secrets: Default::default(),
                };
                resolve::resolve(&source, inputs)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
            seen += 1;
        }
        assert!(seen >= 4, "examples found: {seen}");
    }
}
