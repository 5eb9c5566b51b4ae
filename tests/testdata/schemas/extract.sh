#!/usr/bin/env bash
# Regenerates every JSON schema the tests validate Kubernetes objects against: those
# tests/tests/manifests/ checks every object in manifests/ with (written here), and the Istio
# VirtualService/DestinationRule and Gateway API HTTPRoute schemas the router tests use, which
# the manifests tests use too (written to controller/testdata/schemas/). Every schema comes from a
# registry package, named with its version below:
#   Kubernetes built-in kinds (<kind>.<group>.<version>.json, group "core" for the core API):
#     crates.io k8s-openapi 0.28.0 (features latest = Kubernetes 1.36, schemars): the
#     `schemars::JsonSchema` implementation of each API type, as `schemars::schema_for!` 1.x
#     writes it (the type's schema with its referenced types under `$defs`), except that
#     apiextensions.v1.JSON (CRD default/example/enum values) is left untyped: k8s-openapi
#     types it as an object where the API server takes any JSON value;
#   wasmplugin.extensions.istio.io.v1alpha1.json, gateway.networking.istio.io.v1.json, and
#   virtualservice/destinationrule.networking.istio.io.v1.json (controller/testdata/schemas/)
#     crates.io istio-api-rs 0.12.0 (feature v1_27: kopium-generated from the Istio 1.27 CRDs);
#   gateway.gateway.networking.k8s.io.v1.json, and httproute.gateway.networking.k8s.io.v1.json
#   (controller/testdata/schemas/)
#     crates.io gateway-api 0.22.0 (Gateway API v1.5.1, standard channel);
#   servicemonitor.monitoring.coreos.com.v1.json
#     PyPI cloudcoil-models-prometheus-operator 0.80.1.0 (pydantic models generated from the
#     prometheus-operator v0.80.1 CRDs; `model_json_schema`). No crates.io package ships this
#     schema: kube-custom-resources-rs / kcr_monitoring_coreos_com build with schema = "disabled".
# `additionalProperties: false` is added to every
# object schema that lists its properties (unless it preserves unknown fields), so an unknown or
# misspelt field fails as under `kubectl apply --validate=strict`; CRD schemas get `apiVersion`,
# `kind` and `metadata` at the root as the API server implies them.
# Argo Rollouts' AnalysisTemplate has no schema in any registry package found (crates.io kcr_argoproj_io
# holds only Argo CD kinds); the test checks templates with Plover's own strict template parser.
# Usage: tests/testdata/schemas/extract.sh   (needs cargo, python3 -m venv, crates.io and PyPI;
# several minutes of CPU)
set -euo pipefail
out="$(cd "$(dirname "$0")" && pwd)"
router_out="$(cd "$out/../../../controller/testdata/schemas" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

STRICT_RS='
fn strict(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            if m.contains_key("properties") && !m.contains_key("additionalProperties")
                && m.get("x-kubernetes-preserve-unknown-fields").is_none() {
                m.insert("additionalProperties".into(), serde_json::Value::Bool(false));
            }
            for (_, x) in m.iter_mut() { strict(x); }
        }
        serde_json::Value::Array(a) => for x in a { strict(x) },
        _ => {}
    }
}
/// Output directories, by command-line argument: this one, then the router tests directory.
const HERE: usize = 1;
#[allow(dead_code)] // the Kubernetes kinds all go to HERE
const ROUTER: usize = 2;
fn write(out: usize, file: &str, comment: String, schema: serde_json::Value) {
    let doc = serde_json::json!({"$comment": comment, "schema": schema});
    std::fs::write(std::path::Path::new(std::env::args().nth(out).unwrap().as_str()).join(file),
        serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
}'

# A scratch crate $work/$1 (package extract-$1) depending on serde_json and on the
# dependency lines $2.
scratch_crate() {
  mkdir -p "$work/$1/src"
  printf '[package]\nname = "extract-%s"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\n%s\nserde_json = "1"\n[workspace]\n' \
    "$1" "$2" > "$work/$1/Cargo.toml"
}

# --- Kubernetes built-in kinds: k8s-openapi + schemars --------------------------------------
scratch_crate k8s 'k8s-openapi = { version = "=0.28.0", features = ["latest", "schemars"] }
schemars = "1"'
cat > "$work/k8s/src/main.rs" <<RS
use k8s_openapi::{Resource, api::{apps::v1::Deployment, core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding}},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition};
$STRICT_RS
fn emit<T: Resource + schemars::JsonSchema>() {
    let mut schema = serde_json::to_value(schemars::schema_for!(T)).unwrap();
    // k8s-openapi types apiextensions.v1.JSON (a CRD schema's default, example and enum
    // values) as an object, though its own description says "any valid JSON value", as the
    // API server accepts: drop the type.
    if let Some(json) = schema.pointer_mut("/\$defs/io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSON") {
        json.as_object_mut().unwrap().remove("type");
    }
    strict(&mut schema);
    let group = if T::GROUP.is_empty() { "core" } else { T::GROUP };
    let file = format!("{}.{group}.{}.json", T::KIND.to_lowercase(), T::VERSION);
    write(HERE, &file, format!("{} {} schema from crates.io k8s-openapi 0.28.0 (feature latest, schemars); regenerate with tests/testdata/schemas/extract.sh", T::KIND, T::API_VERSION), schema);
}
fn main() {
    emit::<Namespace>(); emit::<ServiceAccount>(); emit::<Secret>(); emit::<ConfigMap>(); emit::<Service>();
    emit::<Deployment>(); emit::<ClusterRole>(); emit::<ClusterRoleBinding>(); emit::<Role>(); emit::<RoleBinding>();
    emit::<CustomResourceDefinition>();
}
RS

# --- CRDs from kopium-generated crates: the CRD's openAPIV3Schema -----------------------------
crd_main() { # $1 dir, $2 use-lines, $3 body
  cat > "$1/src/main.rs" <<RS
use kube::CustomResourceExt;
$2
$STRICT_RS
fn emit(out: usize, file: &str, crd: serde_json::Value, source: &str) {
    let mut schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    strict(&mut schema);
    if let Some(props) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) {
        props.insert("apiVersion".into(), serde_json::json!({"type": "string"}));
        props.insert("kind".into(), serde_json::json!({"type": "string"}));
        props.insert("metadata".into(), serde_json::json!({"type": "object"}));
    }
    let version = crd["spec"]["versions"][0]["name"].as_str().unwrap_or_default().to_owned();
    write(out, file, format!("{} {}/{} openAPIV3Schema from {source}; regenerate with tests/testdata/schemas/extract.sh",
        crd["spec"]["names"]["kind"].as_str().unwrap_or_default(), crd["spec"]["group"].as_str().unwrap_or_default(), version), schema);
}
fn main() {
$3
}
RS
}
scratch_crate istio 'istio-api-rs = { version = "=0.12.0", features = ["v1_27"] }
kube = { version = "2", default-features = false, features = ["derive"] }
k8s-openapi = { version = "0.26", features = ["v1_31"] }'
crd_main "$work/istio" "use istio_api_rs::{extensions::v1alpha1::wasm_plugin::WasmPlugin, networking::v1::{gateway::Gateway, virtual_service::VirtualService, destination_rule::DestinationRule}};" '
    let source = "crates.io istio-api-rs 0.12.0 (feature v1_27, Istio 1.27 CRDs)";
    emit(HERE, "gateway.networking.istio.io.v1.json", serde_json::to_value(Gateway::crd()).unwrap(), source);
    emit(HERE, "wasmplugin.extensions.istio.io.v1alpha1.json", serde_json::to_value(WasmPlugin::crd()).unwrap(), source);
    emit(ROUTER, "virtualservice.networking.istio.io.v1.json", serde_json::to_value(VirtualService::crd()).unwrap(), source);
    emit(ROUTER, "destinationrule.networking.istio.io.v1.json", serde_json::to_value(DestinationRule::crd()).unwrap(), source);'
scratch_crate gateway 'gateway-api = "=0.22.0"
kube = { version = "4.2", default-features = false, features = ["derive"] }
k8s-openapi = { version = "0.28", features = ["latest"] }'
crd_main "$work/gateway" "use gateway_api::{gateways::Gateway, httproutes::HttpRoute};" '
    let source = "crates.io gateway-api 0.22.0 (Gateway API v1.5.1, standard channel)";
    emit(HERE, "gateway.gateway.networking.k8s.io.v1.json", serde_json::to_value(Gateway::crd()).unwrap(), source);
    emit(ROUTER, "httproute.gateway.networking.k8s.io.v1.json", serde_json::to_value(HttpRoute::crd()).unwrap(), source);'

for crate in k8s istio gateway; do
  (cd "$work/$crate" && CARGO_TARGET_DIR="${SCHEMA_EXTRACT_TARGET:-$work/target}" cargo run -q -- "$out" "$router_out")
done

# --- ServiceMonitor: PyPI pydantic models ----------------------------------------------------
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "cloudcoil-models-prometheus-operator==0.80.1.0"
"$work/venv/bin/python" - "$out" <<'PY'
import json, sys, pathlib
from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor
def strict(v):
    if isinstance(v, dict):
        if "properties" in v and "additionalProperties" not in v:
            v["additionalProperties"] = False
        for x in v.values():
            strict(x)
    elif isinstance(v, list):
        for x in v:
            strict(x)
schema = ServiceMonitor.model_json_schema(by_alias=True)
strict(schema)
schema["properties"]["apiVersion"] = {"const": "monitoring.coreos.com/v1"}
schema["properties"]["kind"] = {"const": "ServiceMonitor"}
schema["properties"]["metadata"] = {"type": "object"}
doc = {"$comment": "ServiceMonitor monitoring.coreos.com/v1 schema from PyPI cloudcoil-models-prometheus-operator 0.80.1.0 "
                   "(pydantic model_json_schema); regenerate with tests/testdata/schemas/extract.sh",
       "schema": schema}
pathlib.Path(sys.argv[1], "servicemonitor.monitoring.coreos.com.v1.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
PY
ls -l "$out"/*.json "$router_out"/*.json
