//! Every example is self-contained and its Canaries resolve against its own templates.

use super::*;

#[test]
fn every_example_is_self_contained_and_its_canaries_resolve() {
    use plover_analysis::template;
    use plover_controller::canary::{resolve, validate, Canary};
    let examples: Vec<&Rendering> = renderings().iter().filter(|r| !r.install).collect();
    assert!(
        examples.len() >= 3,
        "examples with a kustomization: {}",
        examples.len()
    );
    let plugins: Vec<&Object> = install_renderings()
        .flat_map(|r| r.objects.iter())
        .filter(|o| o.kind() == "WasmPlugin")
        .collect();
    let mut modes = BTreeSet::new();
    for example in examples {
        let name = &example.name;
        let templates_yaml: String = example
            .objects
            .iter()
            .filter(|o| o.kind().ends_with("AnalysisTemplate"))
            .map(|o| format!("---\n{}", serde_yaml::to_string(&o.value).unwrap()))
            .collect();
        let templates = template::load(&templates_yaml)
            .unwrap_or_else(|e| panic!("{name}: AnalysisTemplates: {e}"));
        let canaries: Vec<&Object> = example
            .objects
            .iter()
            .filter(|o| o.kind() == "Canary")
            .collect();
        assert_eq!(canaries.len(), 1, "{name}: one Canary");
        for object in canaries {
            let at = object.describe();
            let ns = object.namespace();
            assert!(
                find(&example.objects, "Namespace", "", ns).is_some(),
                "{at}: its namespace is not in the example"
            );
            // The example's object of `kind` named `name` in the Canary's namespace; it must exist.
            let required = |kind: &str, name: &str| {
                find(&example.objects, kind, ns, name)
                    .unwrap_or_else(|| panic!("{at}: no {kind} {name} in the example"))
            };
            let canary: Canary = serde_json::from_value(object.value.clone())
                .unwrap_or_else(|e| panic!("{at}: {e}"));
            if let Err(e) = validate(&canary.spec) {
                panic!("{at}: {e}");
            }
            let stable = required("Deployment", &canary.spec.workload.stable);
            let candidate = required("Deployment", &canary.spec.workload.canary);
            let routing = &canary.spec.traffic_routing;
            let mut services = Vec::new();
            if let Some(istio) = &routing.istio {
                let vs = required("VirtualService", &istio.virtual_service.name);
                let routes = vs.value["spec"]["http"].as_array().unwrap();
                for route in &istio.virtual_service.routes {
                    assert!(
                        routes.iter().any(|r| r["name"] == *route),
                        "{at}: VirtualService has no route {route}"
                    );
                }
                if let Some(dr_ref) = &istio.destination_rule {
                    modes.insert("istio subsets");
                    let dr = required("DestinationRule", &dr_ref.name);
                    for (subset, deployment) in [
                        (&dr_ref.stable_subset_name, stable),
                        (&dr_ref.canary_subset_name, candidate),
                    ] {
                        let s = dr.value["spec"]["subsets"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .find(|s| s["name"] == *subset);
                        let s = s.unwrap_or_else(|| {
                            panic!("{at}: DestinationRule has no subset {subset}")
                        });
                        assert_eq!(
                            s["labels"],
                            deployment.value["spec"]["selector"]["matchLabels"],
                            "{at}: subset {subset} must select {}",
                            deployment.name()
                        );
                    }
                } else {
                    modes.insert("istio hosts");
                    services.extend([
                        istio.stable_service.clone().unwrap(),
                        istio.canary_service.clone().unwrap(),
                    ]);
                }
                if let Some(gateways) = vs.value["spec"]["gateways"].as_array() {
                    for g in gateways {
                        required("Gateway", g.as_str().unwrap());
                    }
                }
            }
            if let Some(gw) = &routing.gateway_api {
                modes.insert("gateway api");
                let route = required("HTTPRoute", &gw.http_route);
                let rules = route.value["spec"]["rules"].as_array().unwrap();
                for rule in &gw.rules {
                    assert!(
                        rules.iter().any(|r| r["name"] == *rule),
                        "{at}: HTTPRoute has no rule {rule}"
                    );
                }
                for parent in route.value["spec"]["parentRefs"].as_array().unwrap() {
                    required("Gateway", parent["name"].as_str().unwrap());
                }
                services.extend([gw.stable_service.clone(), gw.canary_service.clone()]);
            }
            for (service, deployment) in services.iter().zip([stable, candidate]) {
                let s = required("Service", service);
                assert_eq!(
                    s.value["spec"]["selector"],
                    deployment.value["spec"]["selector"]["matchLabels"],
                    "{at}: Service {service} must select {}",
                    deployment.name()
                );
            }
            // Every analysis resolves with the example's own templates.
            let sources = canary.spec.analysis_sources();
            assert!(!sources.is_empty(), "{at}: no analysis");
            for source in sources {
                // As reconcile fetches them: the referenced templates and those they reference
                // (a missing one makes resolve fail, naming it).
                let fetched = resolve::referenced(&source, &templates);
                let inputs = resolve::Inputs {
                    templates: fetched,
                    canary: &object.value,
                    stable_revision: "stable-rev",
                    canary_revision: "canary-rev",
                    secrets: Default::default(),
                };
                resolve::resolve(&source, inputs).unwrap_or_else(|e| panic!("{at}: analysis: {e}"));
            }
            // The filter of one of the overlays attributes the service's traffic to both roles.
            if let Some(check) = &canary.spec.traffic_check {
                let service = check.service.clone().unwrap_or_else(|| canary_name(object));
                for role in ["stable", "canary"] {
                    let covered = plugins.iter().any(|p| {
                        p.value["spec"]["pluginConfig"]["rules"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|r| {
                                r["namespace"] == ns
                                    && r["service"] == *service
                                    && r["role"] == role
                            })
                    });
                    assert!(
                        covered,
                        "{at}: no WasmPlugin rule maps {ns}/{service} role {role}"
                    );
                }
            }
        }
    }
    assert_eq!(modes.len(), 3, "examples cover: {modes:?}");
}

fn canary_name(object: &Object) -> String {
    object.name().to_owned()
}
