//! Plover installed as the README says, on a real Kubernetes API server: kube-apiserver
//! v1.37.2 built from source with etcd, kube-controller-manager, kube-scheduler and KWOK
//! (`plover_testkit::cluster`; `cargo xtask cluster-tools` builds them).
//!
//! Every kustomize rendering the README documents — the base, each overlay, each overlay with
//! every component, each example — is rendered by the release's own kubectl and applied with
//! `kubectl apply --server-side`, after the upstream CRDs (Istio, Gateway API,
//! prometheus-operator, Argo Rollouts, copied from their pinned Go modules). An object the API
//! server rejects fails the test with the server's message. Then the Canary CRD is checked as
//! a user meets it: served, printer columns in `kubectl get canaries`, a status subresource,
//! and its schema enforced by the server.

use std::path::{Component, Path, PathBuf};

use plover_testkit::cluster::{Cluster, NODE};
use plover_testkit::tools::workspace_root;

/// The kustomizations the README documents, as (name, kustomization text or directory).
fn renderings(scratch: &Path) -> Vec<(String, PathBuf)> {
    let manifests = workspace_root().join("manifests");
    let mut out = vec![("base".to_owned(), manifests.join("base"))];
    let components: Vec<PathBuf> = subdirs(&manifests.join("components"));
    for overlay in subdirs(&manifests.join("overlays")) {
        let name = format!("overlays/{}", file_name(&overlay));
        out.push((name.clone(), overlay.clone()));
        // The README's own shape: a directory of the user's with the overlay as a resource and
        // the components they want.
        let mine = scratch.join(format!("my-plover-{}", file_name(&overlay)));
        std::fs::create_dir_all(&mine).unwrap();
        let components_list: Vec<String> = components.iter().map(|c| relative(&mine, c)).collect();
        std::fs::write(
            mine.join("kustomization.yaml"),
            format!(
                "resources: [{}]\ncomponents: [{}]\n",
                relative(&mine, &overlay),
                components_list.join(", ")
            ),
        )
        .unwrap();
        out.push((format!("{name} + every component"), mine));
    }
    for example in subdirs(&manifests.join("examples")) {
        if example.join("kustomization.yaml").is_file() {
            out.push((format!("examples/{}", file_name(&example)), example));
        }
    }
    out
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// `to` relative to the directory `from` (both absolute), as kustomize wants its paths.
fn relative(from: &Path, to: &Path) -> String {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".to_owned(); from.len() - common];
    parts.extend(
        to[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    parts.join("/")
}

#[test]
fn every_documented_rendering_applies_to_a_real_api_server() {
    let cluster = Cluster::start();
    let scratch = tempfile::tempdir().unwrap();

    cluster.install_prerequisites();

    let mut applied = Vec::new();
    for (name, dir) in renderings(scratch.path()) {
        let yaml = cluster.kustomize(&dir);
        let objects = yaml.matches("\nkind: ").count() + usize::from(yaml.starts_with("kind: "));
        if let Err(message) = cluster.apply(&yaml) {
            panic!("{name}: the API server refused it:\n{message}");
        }
        if name == "base" {
            cluster.wait_established(&["crd/canaries.plover.dev"]);
        }
        applied.push(format!("{name}: {objects} objects"));
    }
    println!("applied:\n  {}", applied.join("\n  "));
    assert!(applied.len() >= 8, "renderings: {applied:?}");

    // As the README's install ends: the Deployments roll out (kube-controller-manager makes
    // the pods, kube-scheduler places them on the KWOK node, KWOK makes them Ready).
    cluster.kubectl_ok(&[
        "-n",
        "plover-system",
        "rollout",
        "status",
        "deploy/plover-controller",
        "deploy/plover-exporter",
        "--timeout=90s",
    ]);
    let ready = cluster.kubectl_ok(&[
        "get",
        "pods",
        "-n",
        "plover-system",
        "-o",
        "jsonpath={range .items[*]}{.spec.nodeName} {.status.phase}{\"\\n\"}{end}",
    ]);
    assert!(
        ready.lines().count() >= 3 && ready.lines().all(|l| l == format!("{NODE} Running")),
        "{ready}"
    );

    // The examples' Canaries are served with the CRD's printer columns.
    let table = cluster.kubectl_ok(&["get", "canaries", "--all-namespaces"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAMESPACE",
            "NAME",
            "PHASE",
            "STEP",
            "DESIRED",
            "OBSERVED",
            "AGE"
        ],
        "{table}"
    );
    assert!(
        table.lines().count() >= 4,
        "one Canary per example:\n{table}"
    );

    // The status is a subresource: a status patch lands there, and a write of the whole
    // object does not change it.
    let canary_line = table.lines().nth(1).unwrap();
    let fields: Vec<&str> = canary_line.split_whitespace().collect();
    let (namespace, name) = (fields[0], fields[1]);
    let read_phase = || {
        cluster.kubectl_ok(&[
            "get",
            "canary",
            name,
            "-n",
            namespace,
            "-o",
            "jsonpath={.status.phase}",
        ])
    };
    cluster.kubectl_ok(&[
        "patch",
        "canary",
        name,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Paused","message":"set by the test"}}"#,
    ]);
    let phase = read_phase();
    assert_eq!(phase, "Paused");
    cluster.kubectl_ok(&[
        "patch",
        "canary",
        name,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Degraded"}}"#,
    ]);
    let phase = read_phase();
    assert_eq!(
        phase, "Paused",
        "a main-resource write must not touch the status"
    );
    let printed = cluster.kubectl_ok(&["get", "canary", name, "-n", namespace]);
    assert!(printed.contains("Paused"), "{printed}");

    // The server enforces the generated schema: a mistyped field is refused, naming it.
    let refused = cluster
        .apply(&format!(
            "apiVersion: plover.dev/v1alpha1\nkind: Canary\nmetadata: {{name: broken, namespace: {namespace}}}\n\
             spec:\n  workload: {{stable: a, canary: b}}\n  steps: not-a-list\n"
        ))
        .expect_err("a Canary whose steps are a string");
    assert!(refused.contains("spec.steps"), "{refused}");
}
