//! Every object the routers write validates against the Istio and Gateway API CRD schemas kept
//! in `testdata/schemas/` (see `extract.sh` there for their origin), and keeps every field
//! the router has no business touching.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{apply, gateway_api, istio, RevisionTags};
use crate::canary::{DestinationRuleRef, GatewayApiRouting, IstioRouting, VirtualServiceRef};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");

fn load_yaml(name: &str) -> Value {
    let text = std::fs::read_to_string(format!("{DIR}/objects/{name}")).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn validator(name: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(format!("{DIR}/schemas/{name}")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&doc["schema"]).unwrap()
}

fn assert_valid(v: &jsonschema::Validator, obj: &Value) {
    let errors: Vec<String> = v
        .iter_errors(obj)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "schema errors: {errors:#?}\n{obj:#}");
}

/// `after` equals `before` except at the listed JSON pointers.
fn assert_only_changed(before: &Value, after: &Value, changed: &[(&str, Value)]) {
    let mut expected = before.clone();
    for (pointer, value) in changed {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        expected
            .pointer_mut(parent)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .insert(key.to_owned(), value.clone());
    }
    assert_eq!(after, &expected);
}

#[test]
fn the_schemas_reject_what_the_api_server_would() {
    let vs = validator("virtualservice.networking.istio.io.v1.json");
    let mut bad = load_yaml("virtualservice-hosts.yaml");
    bad["spec"]["http"][1]["route"][0]["weight"] = json!("eighty");
    assert!(!vs.is_valid(&bad), "a string weight");
    let mut bad = load_yaml("virtualservice-hosts.yaml");
    bad["spec"]["http"][1]["route"][0]["wieght"] = json!(80);
    assert!(!vs.is_valid(&bad), "an unknown field");
    let route = validator("httproute.gateway.networking.k8s.io.v1.json");
    let mut bad = load_yaml("httproute.yaml");
    bad["spec"]["rules"][1]["backendRefs"][0]["weight"] = json!(true);
    assert!(!route.is_valid(&bad));
}

/// The host-mode routing of `testdata/schemas/virtualservice-hosts.yaml`.
fn host_mode() -> IstioRouting {
    IstioRouting {
        virtual_service: VirtualServiceRef {
            name: "podinfo".into(),
            routes: vec!["primary".into()],
        },
        stable_service: Some("podinfo-stable".into()),
        canary_service: Some("podinfo-canary".into()),
        destination_rule: None,
    }
}

#[test]
fn istio_host_mode_writes_a_valid_virtual_service() {
    let schema = validator("virtualservice.networking.istio.io.v1.json");
    let before = load_yaml("virtualservice-hosts.yaml");
    assert_valid(&schema, &before);
    let cfg = host_mode();
    let mut current = before.clone();
    for (canary, stable) in [(5, 95), (50, 50), (100, 0), (0, 100)] {
        let patch = istio::set_weights(&current, &cfg, canary, stable, None)
            .unwrap()
            .unwrap();
        let after = apply(&current, &patch).unwrap();
        assert_valid(&schema, &after);
        assert_only_changed(
            &current,
            &after,
            &[
                ("/spec/http/1/route/0/weight", json!(stable)),
                ("/spec/http/1/route/1/weight", json!(canary)),
            ],
        );
        // The API server bumps the resourceVersion; the next patch must test the new one.
        current = after;
        current["metadata"]["resourceVersion"] = json!(format!("{}", 2000 + canary));
    }
}

/// The revision tags a router writes beside the weights (`spec.trafficRouting.revisionHeader`).
const TAGS: RevisionTags<'static> = RevisionTags {
    header: "x-app-revision",
    stable: Some("5d8f7c9b6"),
    canary: Some("7c6b5a4d3"),
};

#[test]
fn revision_tags_are_valid_in_a_virtual_service_and_an_http_route() {
    let cfg = host_mode();
    let schema = validator("virtualservice.networking.istio.io.v1.json");
    let before = load_yaml("virtualservice-hosts.yaml");
    let patch = istio::set_weights(&before, &cfg, 5, 95, Some(TAGS))
        .unwrap()
        .unwrap();
    let after = apply(&before, &patch).unwrap();
    assert_valid(&schema, &after);
    for side in ["request", "response"] {
        assert_eq!(
            after["spec"]["http"][1]["route"][1]["headers"][side]["set"]["x-app-revision"],
            "7c6b5a4d3"
        );
    }

    let schema = validator("httproute.gateway.networking.k8s.io.v1.json");
    let before = load_yaml("httproute.yaml");
    let cfg = GatewayApiRouting {
        http_route: "podinfo".into(),
        rules: vec![],
        stable_service: "podinfo-stable".into(),
        canary_service: "podinfo-canary".into(),
    };
    let patch = gateway_api::set_weights(&before, &cfg, 30, 70, Some(TAGS))
        .unwrap()
        .unwrap();
    let after = apply(&before, &patch).unwrap();
    assert_valid(&schema, &after);
    let filters = &after["spec"]["rules"][1]["backendRefs"][0]["filters"];
    assert_eq!(
        filters[0]["requestHeaderModifier"]["set"][0]["value"],
        "5d8f7c9b6"
    );
    assert_eq!(
        filters[1]["responseHeaderModifier"]["set"][0]["value"],
        "5d8f7c9b6"
    );
}

#[test]
fn istio_subset_mode_writes_a_valid_virtual_service_and_destination_rule() {
    let cfg = IstioRouting {
        virtual_service: VirtualServiceRef {
            name: "podinfo".into(),
            routes: vec![],
        },
        destination_rule: Some(DestinationRuleRef {
            name: "podinfo".into(),
            stable_subset_name: "stable".into(),
            canary_subset_name: "canary".into(),
        }),
        ..Default::default()
    };
    let vs_schema = validator("virtualservice.networking.istio.io.v1.json");
    let before = load_yaml("virtualservice-subsets.yaml");
    assert_valid(&vs_schema, &before);
    let after = apply(
        &before,
        &istio::set_weights(&before, &cfg, 10, 90, None)
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_valid(&vs_schema, &after);
    assert_only_changed(
        &before,
        &after,
        &[
            ("/spec/http/0/route/0/weight", json!(90)),
            ("/spec/http/0/route/1/weight", json!(10)),
        ],
    );

    let dr_schema = validator("destinationrule.networking.istio.io.v1.json");
    let before = load_yaml("destinationrule.yaml");
    assert_valid(&dr_schema, &before);
    let stable = BTreeMap::from([
        ("app".to_owned(), "podinfo".to_owned()),
        ("track".to_owned(), "stable".to_owned()),
    ]);
    let canary = BTreeMap::from([
        ("app".to_owned(), "podinfo".to_owned()),
        ("track".to_owned(), "canary".to_owned()),
    ]);
    let after = apply(
        &before,
        &istio::sync_subsets(&before, &cfg, &stable, &canary)
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_valid(&dr_schema, &after);
    let mut expected = before.clone();
    expected["spec"]["subsets"][0]["labels"]["track"] = json!("stable");
    expected["spec"]["subsets"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "canary", "labels": canary}));
    assert_eq!(
        after, expected,
        "trafficPolicy, other subsets and other labels are kept"
    );
}

#[test]
fn gateway_api_writes_a_valid_http_route() {
    let schema = validator("httproute.gateway.networking.k8s.io.v1.json");
    let before = load_yaml("httproute.yaml");
    assert_valid(&schema, &before);
    for rules in [vec![], vec!["main".to_owned()]] {
        let cfg = GatewayApiRouting {
            http_route: "podinfo".into(),
            rules,
            stable_service: "podinfo-stable".into(),
            canary_service: "podinfo-canary".into(),
        };
        let after = apply(
            &before,
            &gateway_api::set_weights(&before, &cfg, 30, 70, None)
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        assert_valid(&schema, &after);
        assert_only_changed(
            &before,
            &after,
            &[
                ("/spec/rules/1/backendRefs/0/weight", json!(70)),
                ("/spec/rules/1/backendRefs/1/weight", json!(30)),
            ],
        );
    }
}

#[test]
fn managed_header_and_mirror_routes_are_valid_istio_and_gateway_api() {
    use super::{managed_fixture, Managed};
    let (names, routes) = (managed_fixture::names(), managed_fixture::routes());
    let managed = Managed {
        names: &names,
        routes: &routes,
    };
    let schema = validator("virtualservice.networking.istio.io.v1.json");
    let before = load_yaml("virtualservice-hosts.yaml");
    let patch = istio::set_routes(&before, &host_mode(), (10, 90), Some(TAGS), &managed)
        .unwrap()
        .unwrap();
    let after = apply(&before, &patch).unwrap();
    assert_valid(&schema, &after);
    assert_eq!(after["spec"]["http"][0]["name"], "by-header");
    assert_eq!(after["spec"]["http"][1]["mirrorPercentage"]["value"], 35);

    let schema = validator("httproute.gateway.networking.k8s.io.v1.json");
    let before = load_yaml("httproute.yaml");
    let cfg = GatewayApiRouting {
        http_route: "podinfo".into(),
        rules: vec![],
        stable_service: "podinfo-stable".into(),
        canary_service: "podinfo-canary".into(),
    };
    let patch = gateway_api::set_routes(&before, &cfg, (10, 90), Some(TAGS), &managed)
        .unwrap()
        .unwrap();
    let after = apply(&before, &patch).unwrap();
    assert_valid(&schema, &after);
    let mirror = after["spec"]["rules"][1]["filters"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["type"] == "RequestMirror"))
        .cloned();
    assert_eq!(
        mirror.map(|m| m["requestMirror"]["percent"].clone()),
        Some(json!(35))
    );
}
