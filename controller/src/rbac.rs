//! The Kubernetes API calls Plover makes, as RBAC rules: the one list the manifests' RBAC must
//! equal (`tests/tests/manifests/rbac.rs` compares the ClusterRole and Role in `manifests/` with
//! [`CONTROLLER`], rule for rule, verb for verb) and the README's RBAC table repeats.
//!
//! Each entry names where the call is made. When code starts making a new call, add it here;
//! the manifests test then fails until the ClusterRole/Role grants it. Every request the mock
//! API server in `controller/tests/reconcile_mock.rs` receives is checked against these tables
//! with [`check`] (controller scenarios against [`CONTROLLER`], `kubectl` requests against
//! [`CLI`]).

/// Where a rule is granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// In every namespace that may hold Canaries: a ClusterRole bound by a ClusterRoleBinding.
    Cluster,
    /// Only in the controller's own namespace (the Lease): a Role bound by a RoleBinding.
    OwnNamespace,
}

/// One resource and the verbs used on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// API group; `""` is the core group.
    pub group: &'static str,
    /// Plural resource name, with `/subresource` where one is used.
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    pub scope: Scope,
    /// Why, and where in the code.
    pub why: &'static str,
}

/// `plover controller` (the in-cluster Deployment's ServiceAccount).
pub const CONTROLLER: &[Rule] = &[
    Rule {
        group: "plover.dev",
        resource: "canaries",
        verbs: &["list", "watch"],
        scope: Scope::Cluster,
        why: "reconcile::run: the CRD check (list, limit 1) and the Controller's watcher (list + watch)",
    },
    Rule {
        group: "plover.dev",
        resource: "canaries/status",
        verbs: &["patch"],
        scope: Scope::Cluster,
        why: "reconcile::reconcile: the status, as a JSON patch guarded by the resourceVersion",
    },
    Rule {
        group: "apps",
        resource: "deployments",
        verbs: &["get", "list", "watch", "patch"],
        scope: Scope::Cluster,
        why: "reconcile::reconcile reads the stable and canary Deployments (get); reconcile::run watches them \
              for new revisions (list + watch); reconcile::promote copies the canary's pod template to stable (patch)",
    },
    Rule {
        group: "apps",
        resource: "replicasets",
        verbs: &["list"],
        scope: Scope::Cluster,
        why: "reconcile::reconcile lists the stable and canary Deployments' ReplicaSets (by their selectors): \
              the current one's pod-template-hash is the revision the pods report",
    },
    Rule {
        group: "networking.istio.io",
        resource: "virtualservices",
        verbs: &["get", "patch"],
        scope: Scope::Cluster,
        why: "reconcile::route → patch_router_object: the route weights (Istio routing)",
    },
    Rule {
        group: "networking.istio.io",
        resource: "destinationrules",
        verbs: &["get", "patch"],
        scope: Scope::Cluster,
        why: "reconcile::route → patch_router_object: the stable/canary subsets' labels (Istio subset mode)",
    },
    Rule {
        group: "gateway.networking.k8s.io",
        resource: "httproutes",
        verbs: &["get", "patch"],
        scope: Scope::Cluster,
        why: "reconcile::route → patch_router_object: backendRef weights (Gateway API routing)",
    },
    Rule {
        group: "argoproj.io",
        resource: "analysistemplates",
        verbs: &["get"],
        scope: Scope::Cluster,
        why: "reconcile::fetch_templates: the AnalysisTemplates a Canary references",
    },
    Rule {
        group: "argoproj.io",
        resource: "clusteranalysistemplates",
        verbs: &["get"],
        scope: Scope::Cluster,
        why: "reconcile::fetch_templates: templates referenced with clusterScope: true",
    },
    Rule {
        group: "",
        resource: "secrets",
        verbs: &["get"],
        scope: Scope::Cluster,
        why: "reconcile::fetch_templates: template args with valueFrom.secretKeyRef; ClusterRim::notify: notification URLs from urlFrom.secretKeyRef",
    },
    Rule {
        group: "batch",
        resource: "jobs",
        verbs: &["create", "get", "list", "delete"],
        scope: Scope::Cluster,
        why: "job::JobRun: a job metric's Job (create, then get until it finishes); the Jobs beyond the newest ten of a metric deleted (list, delete)",
    },
    Rule {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        scope: Scope::Cluster,
        why: "reconcile::execute → kube Recorder::publish: Normal/Warning events on the Canary \
              (create; patch when the same event repeats)",
    },
    Rule {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "update"],
        scope: Scope::OwnNamespace,
        why: "lease::Elector (controller::run): leader election on the plover-controller Lease \
              (get; create when missing; update = replace to acquire or renew)",
    },
];

/// `plover get|promote|abort|retry` / `kubectl plover …`, run with the user's credentials.
pub const CLI: &[Rule] = &[
    Rule {
        group: "plover.dev",
        resource: "canaries",
        verbs: &["get", "list"],
        scope: Scope::Cluster,
        why: "kubectl::fetch (get), kubectl::status, kubectl::request and the edits (the Canary must exist); kubectl::list (list)",
    },
    Rule {
        group: "plover.dev",
        resource: "canaries/status",
        verbs: &["patch"],
        scope: Scope::Cluster,
        why: "kubectl::request: promote, abort and retry are merge patches of the status",
    },
    Rule {
        group: "apps",
        resource: "deployments",
        verbs: &["get", "patch"],
        scope: Scope::Cluster,
        why: "kubectl::fetch and kubectl::status read the stable and canary Deployments; kubectl::set_image and kubectl::undo patch the canary Deployment's pod template",
    },
];

/// `(group, resource, verb)` triples of a table, sorted, for comparisons.
pub fn triples(rules: &[Rule], scope: Option<Scope>) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = rules
        .iter()
        .filter(|r| scope.is_none_or(|s| s == r.scope))
        .flat_map(|r| {
            r.verbs
                .iter()
                .map(|v| (r.group.to_owned(), r.resource.to_owned(), (*v).to_owned()))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The (group, resource, verb) an API request needs: `GET` of a name is `get`, of a collection
/// `list` (or `watch` with `watch=true`/`1` in the query); `POST` is `create`, `PUT` `update`,
/// `PATCH` `patch`, `DELETE` `delete`. Paths are `/api/v1/…` or `/apis/GROUP/VERSION/…`,
/// namespaced or not, with an optional subresource (`canaries/status`).
pub fn required(method: &str, path: &str, query: &str) -> Result<(String, String, String), String> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return Err(format!("{path}: not a Kubernetes API path")),
    };
    let rest = match rest {
        ["namespaces", _namespace, rest @ ..] if !rest.is_empty() => rest,
        rest => rest,
    };
    let (resource, named) = match rest {
        [resource] => ((*resource).to_owned(), false),
        [resource, _name] => ((*resource).to_owned(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => return Err(format!("{path}: no resource")),
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, named) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return Err(format!("{method} {path}: no RBAC verb for this method")),
    };
    Ok((group.to_owned(), resource, verb.to_owned()))
}

/// Whether `rules` grant the request; the error names the request and the missing rule.
pub fn check(rules: &[Rule], method: &str, path: &str, query: &str) -> Result<(), String> {
    let (group, resource, verb) = required(method, path, query)?;
    let granted = rules
        .iter()
        .any(|r| r.group == group && r.resource == resource && r.verbs.contains(&verb.as_str()));
    if granted {
        Ok(())
    } else {
        Err(format!(
            "{method} {path}: needs {verb} on {group}/{resource}, which the table does not declare"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::{
        apps::v1::{Deployment, ReplicaSet},
        coordination::v1::Lease,
        core::v1::Secret,
        events::v1::Event,
    };
    use kube::{api::ApiResource, Resource};

    fn has(rules: &[Rule], group: &str, resource: &str) -> bool {
        rules
            .iter()
            .any(|r| r.group == group && r.resource == resource)
    }

    fn k8s<K: k8s_openapi::Resource>() -> (&'static str, &'static str) {
        (K::GROUP, K::URL_PATH_SEGMENT)
    }

    /// The table's names are the ones the code's API types and ApiResources use, so a renamed
    /// group or plural cannot leave a stale rule behind.
    #[test]
    fn names_match_the_types_the_code_uses() {
        let canary = (
            crate::canary::Canary::group(&()).into_owned(),
            crate::canary::Canary::plural(&()).into_owned(),
        );
        assert!(has(CONTROLLER, &canary.0, &canary.1));
        assert!(has(CONTROLLER, &canary.0, &format!("{}/status", canary.1)));
        for (group, plural) in [
            k8s::<Deployment>(),
            k8s::<ReplicaSet>(),
            k8s::<Lease>(),
            k8s::<Secret>(),
            k8s::<Event>(),
        ] {
            assert!(has(CONTROLLER, group, plural), "{group}/{plural}");
        }
        let dynamic: [ApiResource; 3] = [
            crate::reconcile::virtual_services(),
            crate::reconcile::destination_rules(),
            crate::reconcile::http_routes(),
        ];
        for r in dynamic {
            assert!(
                has(CONTROLLER, &r.group, &r.plural),
                "{}/{}",
                r.group,
                r.plural
            );
        }
        assert!(has(CLI, &canary.0, &canary.1));
        assert!(has(CLI, k8s::<Deployment>().0, k8s::<Deployment>().1));
    }

    #[test]
    fn every_rule_has_known_verbs_and_a_reason() {
        const VERBS: [&str; 8] = [
            "get",
            "list",
            "watch",
            "create",
            "update",
            "patch",
            "delete",
            "deletecollection",
        ];
        for rule in CONTROLLER.iter().chain(CLI) {
            assert!(!rule.verbs.is_empty() && rule.verbs.iter().all(|v| VERBS.contains(v)));
            assert!(!rule.why.is_empty());
        }
        let leases = triples(CONTROLLER, Some(Scope::OwnNamespace));
        assert!(leases.iter().all(|(_, r, _)| r == "leases"), "{leases:?}");
    }

    #[test]
    fn requests_map_to_the_rule_they_need() {
        let need = |m, p, q| required(m, p, q).unwrap();
        let t = |g: &str, r: &str, v: &str| (g.to_owned(), r.to_owned(), v.to_owned());
        assert_eq!(
            need(
                "GET",
                "/apis/apps/v1/namespaces/test/deployments/podinfo",
                ""
            ),
            t("apps", "deployments", "get")
        );
        assert_eq!(
            need("GET", "/apis/plover.dev/v1alpha1/canaries", "limit=1"),
            t("plover.dev", "canaries", "list")
        );
        assert_eq!(
            need(
                "GET",
                "/apis/plover.dev/v1alpha1/canaries",
                "watch=true&timeoutSeconds=290"
            ),
            t("plover.dev", "canaries", "watch")
        );
        assert_eq!(
            need(
                "PATCH",
                "/apis/plover.dev/v1alpha1/namespaces/test/canaries/podinfo/status",
                ""
            ),
            t("plover.dev", "canaries/status", "patch")
        );
        assert_eq!(
            need("POST", "/apis/events.k8s.io/v1/namespaces/test/events", ""),
            t("events.k8s.io", "events", "create")
        );
        assert_eq!(
            need("GET", "/api/v1/namespaces/test/secrets/token", ""),
            t("", "secrets", "get")
        );
        assert_eq!(
            need(
                "PUT",
                "/apis/coordination.k8s.io/v1/namespaces/plover-system/leases/plover-controller",
                ""
            ),
            t("coordination.k8s.io", "leases", "update")
        );
        assert!(required("GET", "/healthz", "").is_err());
        assert!(check(
            CLI,
            "DELETE",
            "/apis/apps/v1/namespaces/test/deployments/podinfo",
            ""
        )
        .is_err());
        assert!(check(
            CONTROLLER,
            "PATCH",
            "/apis/apps/v1/namespaces/test/deployments/podinfo",
            ""
        )
        .is_ok());
    }
}
