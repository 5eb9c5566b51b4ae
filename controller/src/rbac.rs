//! The Kubernetes API calls Plover makes, as RBAC rules: the one list the manifests' RBAC must
//! equal (`tests/tests/manifests.rs` compares the ClusterRole and Role in `manifests/` with
//! [`CONTROLLER`], rule for rule, verb for verb) and the README's RBAC table repeats.
//!
//! Each entry names where the call is made. When code starts making a new call, add it here;
//! the manifests test then fails until the ClusterRole/Role grants it. The calls recorded by
//! the mock API server in `controller/tests/reconcile_mock.rs` are checked against these
//! tables too (controller scenarios against [`CONTROLLER`], `kubectl` requests against [`CLI`]).

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
        why: "reconcile::fetch_templates: template args with valueFrom.secretKeyRef",
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
        why: "lease::Elector (daemon::run): leader election on the plover-controller Lease \
              (get; create when missing; update = replace to acquire or renew)",
    },
];

/// `plover get|promote|abort|retry` / `kubectl plover …`, run with the user's credentials.
pub const CLI: &[Rule] = &[
    Rule {
        group: "plover.dev",
        resource: "canaries",
        verbs: &["get"],
        scope: Scope::Cluster,
        why: "kubectl::fetch (get) and kubectl::request (the Canary must exist)",
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
        verbs: &["get"],
        scope: Scope::Cluster,
        why: "kubectl::fetch: the stable and canary Deployments shown by get",
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::{
        apps::v1::Deployment, coordination::v1::Lease, core::v1::Secret, events::v1::Event,
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
}
