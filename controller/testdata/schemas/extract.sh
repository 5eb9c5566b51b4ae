#!/usr/bin/env bash
# Regenerates the JSON schemas the router tests validate against:
#   virtualservice.networking.istio.io.v1.json, destinationrule.networking.istio.io.v1.json
#     from the crates.io package istio-api-rs 0.12.0 (feature v1_27: kopium-generated from the
#     Istio 1.27 CRDs, networking.istio.io/v1);
#   httproute.gateway.networking.k8s.io.v1.json
#     from the crates.io package gateway-api 0.22.0 (kopium-generated from Gateway API v1.5.1,
#     standard channel, gateway.networking.k8s.io/v1).
# Each file is the CRD's openAPIV3Schema as the package's `CustomResourceExt::crd()` produces
# it, with `additionalProperties: false` added to every object that lists its properties, so a
# misspelt or unknown field fails as it would under `kubectl apply --validate=strict`, and with
# `apiVersion`, `kind` and `metadata` declared at the root as the API server implies them.
# (The npm @kubernetes-models packages ship compiled validators, not schemas, so they were not
# usable from Rust.) Two scratch crates because the two packages need different kube versions.
# Usage: controller/testdata/schemas/extract.sh   (needs cargo and crates.io; a few minutes)
set -euo pipefail
out="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

write_main() { # $1 dir, $2 use-lines, $3 list of (file, expr, source)
  mkdir -p "$1/src"
  cat > "$1/src/main.rs" <<RS
use kube::CustomResourceExt;
$2
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
fn emit(file: &str, crd: serde_json::Value, source: &str) {
    let mut schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    strict(&mut schema);
    // The API server accepts these on every object without listing them in the CRD.
    if let Some(props) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) {
        props.insert("apiVersion".into(), serde_json::json!({"type": "string"}));
        props.insert("kind".into(), serde_json::json!({"type": "string"}));
        props.insert("metadata".into(), serde_json::json!({"type": "object"}));
    }
    let version = crd["spec"]["versions"][0]["name"].as_str().unwrap_or_default().to_owned();
    let doc = serde_json::json!({
        "\$comment": format!("{} {}/{} openAPIV3Schema from {source}; regenerate with controller/testdata/schemas/extract.sh",
            crd["spec"]["names"]["kind"].as_str().unwrap_or_default(), crd["spec"]["group"].as_str().unwrap_or_default(), version),
        "schema": schema,
    });
    std::fs::write(std::path::Path::new(std::env::args().nth(1).unwrap().as_str()).join(file),
        serde_json::to_string_pretty(&doc).unwrap() + "\n").unwrap();
}
fn main() {
$3
}
RS
}

mkdir -p "$work/istio"
cat > "$work/istio/Cargo.toml" <<'TOML'
[package]
name = "extract-istio"
version = "0.0.0"
edition = "2021"
[dependencies]
istio-api-rs = { version = "=0.12.0", features = ["v1_27"] }
kube = { version = "2", default-features = false, features = ["derive"] }
k8s-openapi = { version = "0.26", features = ["v1_31"] }
serde_json = "1"
[workspace]
TOML
write_main "$work/istio" "use istio_api_rs::networking::v1::{virtual_service::VirtualService, destination_rule::DestinationRule};" '
    emit("virtualservice.networking.istio.io.v1.json", serde_json::to_value(VirtualService::crd()).unwrap(), "crates.io istio-api-rs 0.12.0 (feature v1_27, Istio 1.27 CRDs)");
    emit("destinationrule.networking.istio.io.v1.json", serde_json::to_value(DestinationRule::crd()).unwrap(), "crates.io istio-api-rs 0.12.0 (feature v1_27, Istio 1.27 CRDs)");'

mkdir -p "$work/gateway"
cat > "$work/gateway/Cargo.toml" <<'TOML'
[package]
name = "extract-gateway"
version = "0.0.0"
edition = "2021"
[dependencies]
gateway-api = "=0.22.0"
kube = { version = "4.2", default-features = false, features = ["derive"] }
k8s-openapi = { version = "0.28", features = ["latest"] }
serde_json = "1"
[workspace]
TOML
write_main "$work/gateway" "use gateway_api::httproutes::HttpRoute;" '
    emit("httproute.gateway.networking.k8s.io.v1.json", serde_json::to_value(HttpRoute::crd()).unwrap(), "crates.io gateway-api 0.22.0 (Gateway API v1.5.1, standard channel)");'

for crate in istio gateway; do
  (cd "$work/$crate" && CARGO_TARGET_DIR="${SCHEMA_EXTRACT_TARGET:-$work/target}" cargo run -q -- "$out")
done
ls -l "$out"/*.json
