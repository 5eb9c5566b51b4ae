//! The controller's RBAC in every rendering is exactly `controller/src/rbac.rs`'s table, and the
//! README lists every rule. (That every request the code makes is in the table is checked where
//! the requests are recorded: `controller/tests/reconcile_mock.rs`.)

use super::*;

type Triple = (String, String, String);

fn rule_triples(role: &Object) -> Vec<Triple> {
    let mut out = Vec::new();
    for rule in role.value["rules"].as_array().unwrap_or(&Vec::new()) {
        assert!(
            rule["resourceNames"].is_null() && rule["nonResourceURLs"].is_null(),
            "{}: unexpected rule {rule}",
            role.describe()
        );
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    let t = (
                        group.as_str().unwrap().to_owned(),
                        resource.as_str().unwrap().to_owned(),
                        verb.as_str().unwrap().to_owned(),
                    );
                    assert!(
                        t.2 != "*" && t.1 != "*" && t.0 != "*",
                        "{}: wildcards are not least privilege",
                        role.describe()
                    );
                    out.push(t);
                }
            }
        }
    }
    out.sort();
    out
}

fn set_difference(a: &[Triple], b: &[Triple]) -> Vec<String> {
    a.iter()
        .filter(|t| !b.contains(t))
        .map(|(g, r, v)| {
            format!(
                "{v} {}{r}",
                if g.is_empty() {
                    String::new()
                } else {
                    format!("{g}/")
                }
            )
        })
        .collect()
}

/// The roles bound to the controller's ServiceAccount, by kind.
fn bound_rules(rendering: &Rendering, binding_kind: &str, role_kind: &str) -> Vec<Triple> {
    let mut out = Vec::new();
    for binding in rendering
        .objects
        .iter()
        .filter(|o| o.kind() == binding_kind)
    {
        let to_controller = binding.value["subjects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| {
                s["kind"] == "ServiceAccount"
                    && s["name"] == "plover-controller"
                    && s["namespace"] == "plover-system"
            });
        if !to_controller {
            continue;
        }
        assert_eq!(
            binding.value["roleRef"]["kind"],
            role_kind,
            "{}",
            binding.describe()
        );
        let role = get(
            rendering,
            role_kind,
            binding.namespace(),
            binding.value["roleRef"]["name"].as_str().unwrap(),
        );
        out.extend(rule_triples(role));
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn the_controller_rbac_is_exactly_the_calls_the_code_declares() {
    use plover_controller::rbac::{triples, Scope, CONTROLLER};
    for rendering in install_renderings() {
        let deployment = get(
            rendering,
            "Deployment",
            "plover-system",
            "plover-controller",
        );
        assert_eq!(
            deployment.value["spec"]["template"]["spec"]["serviceAccountName"],
            "plover-controller"
        );
        for (scope, binding, role) in [
            (Scope::Cluster, "ClusterRoleBinding", "ClusterRole"),
            (Scope::OwnNamespace, "RoleBinding", "Role"),
        ] {
            let granted = bound_rules(rendering, binding, role);
            let declared = triples(CONTROLLER, Some(scope));
            let missing = set_difference(&declared, &granted);
            let extra = set_difference(&granted, &declared);
            assert!(
                missing.is_empty() && extra.is_empty(),
                "{}: the {role} bound to plover-controller differs from controller/src/rbac.rs CONTROLLER ({scope:?}):\n  \
                 missing (the code calls, the manifest does not grant): {missing:?}\n  \
                 extra (granted, never called): {extra:?}",
                rendering.name
            );
        }
        // Roles are in the controller's namespace, where the Lease is.
        for role in rendering.objects.iter().filter(|o| o.kind() == "Role") {
            assert_eq!(role.namespace(), "plover-system", "{}", role.describe());
        }
    }
}

#[test]
fn the_readme_lists_every_rbac_rule() {
    use plover_controller::rbac::{CLI, CONTROLLER};
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let section = readme
        .split("## Install on a cluster")
        .nth(1)
        .expect("README.md has a section \"Install on a cluster\"");
    let section = section.split("\n## ").next().unwrap();
    for rule in CONTROLLER.iter().chain(CLI) {
        let group = if rule.group.is_empty() {
            "core"
        } else {
            rule.group
        };
        let listed = section.lines().any(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            cells.len() > 4
                && cells[1] == group
                && cells[2] == format!("`{}`", rule.resource)
                && rule
                    .verbs
                    .iter()
                    .all(|v| cells[3].split(", ").any(|c| c == *v))
                && cells[3].split(", ").count() == rule.verbs.len()
        });
        assert!(
            listed,
            "README.md \"Install on a cluster\" has no RBAC row `| {group} | `{}` | {} | … |`",
            rule.resource,
            rule.verbs.join(", ")
        );
    }
}
