//! Every manifest file parses and every object validates against its schema; every kustomization
//! renders to valid, unique objects; every file is used; ServiceMonitors scrape real ports; a
//! broken copy is reported usefully.

use super::*;

#[test]
fn every_manifest_file_parses_and_every_object_matches_its_schema() {
    let mut paths = Vec::new();
    files(&manifests_dir(), "yaml", &mut paths);
    let mut errors = Vec::new();
    let mut checked = 0;
    for path in paths.iter().filter(|p| !p.ends_with("kustomization.yaml")) {
        let text = std::fs::read_to_string(path).unwrap();
        match parse_yaml(&text, &relative(path)) {
            Err(e) => errors.push(e),
            Ok(objects) => {
                for object in objects {
                    errors.extend(schemas().validate(&object));
                    checked += 1;
                }
            }
        }
    }
    for path in paths.iter().filter(|p| p.ends_with("kustomization.yaml")) {
        if let Err(e) = parse_yaml(&std::fs::read_to_string(path).unwrap(), &relative(path)) {
            errors.push(e);
        }
    }
    let mut json_files = Vec::new();
    files(&manifests_dir(), "json", &mut json_files);
    for path in &json_files {
        if let Err(e) = serde_json::from_str::<Value>(&std::fs::read_to_string(path).unwrap()) {
            errors.push(format!("{}: JSON: {e}", relative(path)));
        }
    }
    assert_no_errors("manifests/", errors);
    assert!(
        checked >= 40 && !json_files.is_empty(),
        "objects checked: {checked}"
    );
}

#[test]
fn every_kustomization_renders_to_valid_unique_objects() {
    let mut errors = Vec::new();
    for rendering in renderings() {
        let mut seen = BTreeSet::new();
        for object in &rendering.objects {
            errors.extend(
                schemas()
                    .validate(object)
                    .into_iter()
                    .map(|e| format!("[{}] {e}", rendering.name)),
            );
            let key = (
                object.api_version().to_owned(),
                object.kind().to_owned(),
                object.namespace().to_owned(),
                object.name().to_owned(),
            );
            if !seen.insert(key) {
                errors.push(format!(
                    "[{}] {} is defined twice",
                    rendering.name,
                    object.describe()
                ));
            }
        }
    }
    assert_no_errors("kustomize renderings", errors);
    assert!(
        renderings().len() >= 2 + 2 * 4 + 3,
        "renderings: {}",
        renderings().len()
    );
}

/// Every manifest file is installed by some kustomization (`examples/local` is for `plover
/// local`, with no cluster), so nothing validated above is dead.
#[test]
fn every_manifest_file_is_used_by_a_kustomization() {
    let used: BTreeSet<String> = renderings()
        .iter()
        .flat_map(|r| r.objects.iter())
        .filter_map(|o| o.source.split(" (as rendered").next().map(str::to_owned))
        .collect();
    let mut paths = Vec::new();
    files(&manifests_dir(), "yaml", &mut paths);
    let unused: Vec<String> = paths
        .iter()
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .map(|p| relative(p))
        .filter(|p| !p.starts_with("manifests/examples/local/") && !used.contains(p))
        .collect();
    assert!(
        unused.is_empty(),
        "files no kustomization renders: {unused:?}"
    );
}

/// ServiceMonitors select a Service of the same rendering by its labels and scrape a port it
/// names; that port reaches a container port serving /metrics.
#[test]
fn servicemonitors_scrape_named_ports_of_existing_services() {
    let mut seen = 0;
    for rendering in install_renderings() {
        for monitor in rendering
            .objects
            .iter()
            .filter(|o| o.kind() == "ServiceMonitor")
        {
            let selector = monitor.value["spec"]["selector"]["matchLabels"]
                .as_object()
                .unwrap();
            let namespaces = &monitor.value["spec"]["namespaceSelector"]["matchNames"];
            let services: Vec<&Object> = rendering
                .objects
                .iter()
                .filter(|o| o.kind() == "Service")
                .filter(|o| {
                    namespaces
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|n| n == o.namespace())
                })
                .filter(|o| {
                    selector
                        .iter()
                        .all(|(k, v)| o.value["metadata"]["labels"][k] == *v)
                })
                .collect();
            assert_eq!(
                services.len(),
                1,
                "{}: selects {} Services",
                monitor.describe(),
                services.len()
            );
            for endpoint in monitor.value["spec"]["endpoints"].as_array().unwrap() {
                let port = &endpoint["port"];
                assert!(
                    services[0].value["spec"]["ports"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| p["name"] == *port),
                    "{}: Service {} has no port named {port}",
                    monitor.describe(),
                    services[0].name()
                );
                assert_eq!(endpoint["path"], "/metrics", "{}", monitor.describe());
            }
            // With ServiceMonitors, the pods are not also annotated for scraping.
            for deployment in rendering
                .objects
                .iter()
                .filter(|o| o.kind() == "Deployment")
            {
                let annotations = &deployment.value["spec"]["template"]["metadata"]["annotations"];
                assert!(
                    annotations["prometheus.io/scrape"].is_null(),
                    "{}: scraped twice",
                    deployment.describe()
                );
            }
            seen += 1;
        }
    }
    assert!(seen >= 4, "ServiceMonitors checked: {seen}");
}

/// A hand-broken copy of an object must fail, naming the file, the object and the field: the
/// validation really runs and its messages are usable.
#[test]
fn a_misspelt_or_mistyped_field_is_reported_with_file_object_and_field() {
    let base = &renderings()[0];
    let mut deployment = get(base, "Deployment", "plover-system", "plover-controller").clone();
    deployment.value["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesytem"] =
        json!(true);
    deployment.value["spec"]["replicas"] = json!("two");
    let errors = schemas().validate(&deployment).join("\n");
    assert!(
        errors.contains("Deployment plover-system/plover-controller"),
        "{errors}"
    );
    assert!(
        errors.contains(".spec.template.spec.containers[0]")
            && errors.contains("readOnlyRootFilesytem"),
        "{errors}"
    );
    assert!(errors.contains(".spec.replicas"), "{errors}");

    let overlay = install_renderings()
        .find(|r| r.name.ends_with("overlays/istio-ingress"))
        .unwrap();
    let mut plugin = get(overlay, "WasmPlugin", "istio-system", "plover").clone();
    plugin.value["spec"]["failStrategy"] = json!("FAIL_OPN");
    plugin.value["spec"]["selectr"] = json!({});
    let errors = schemas().validate(&plugin).join("\n");
    assert!(
        errors.contains(".spec.failStrategy") && errors.contains("selectr"),
        "{errors}"
    );

    let mut monitor = install_renderings()
        .flat_map(|r| r.objects.iter())
        .find(|o| o.kind() == "ServiceMonitor")
        .unwrap()
        .clone();
    monitor.value["spec"]["endpoints"][0]["intervall"] = json!("15s");
    assert!(schemas()
        .validate(&monitor)
        .join("\n")
        .contains("intervall"));

    let mut canary = renderings()
        .iter()
        .flat_map(|r| r.objects.iter())
        .find(|o| o.kind() == "Canary")
        .unwrap()
        .clone();
    canary.value["spec"]["stepz"] = json!([]);
    assert!(schemas().validate(&canary).join("\n").contains("stepz"));

    let mut unknown = canary.clone();
    unknown.value["apiVersion"] = json!("plover.dev/v9");
    assert!(schemas()
        .validate(&unknown)
        .join("\n")
        .contains("no schema for plover.dev/v9 Canary"));
}
