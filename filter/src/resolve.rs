//! Revision resolution: which (namespace, service, role, revision) served a request.
//!
//! Two sources, tried in the configured order:
//! - **cluster**: the upstream cluster Envoy picked (`xds.cluster_name`), mapped by the rules.
//!   Known when the request headers are seen, so it can tag the upstream request.
//! - **response_header**: a header the application sets with its own revision id. Known only
//!   once the response headers arrive.
//!
//! The service is always named by the cluster, even when the revision comes from the header:
//! a matched rule names it; an unmatched Istio cluster names it by its host FQDN; any other
//! cluster is taken as the service itself (namespace empty). Nothing is ever dropped for being
//! unmatched: it is counted with role `unknown`.

use std::collections::BTreeMap;
use std::rc::Rc;

use plover_wire::config::{parse_istio_cluster, RevisionRule, RevisionSource};
use plover_wire::{FilterConfig, Role};

/// Distinct cluster names (or header revisions) remembered before a cache starts over. Envoy's
/// cluster names are finite, but header values come from applications.
const CACHE_LIMIT: usize = 1024;

/// Where one request's traffic went, as far as the filter can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    pub namespace: String,
    pub service: String,
    pub role: Role,
    /// Empty when no source named the revision.
    pub revision: String,
    /// `role/revision` for the tagging headers; empty when the revision is unknown.
    pub tag: String,
    /// The revision is the one the application named in its response header (bounded per
    /// service by the aggregate, since applications choose these values).
    pub from_header: bool,
}

impl Resolution {
    fn new(namespace: &str, service: &str, role: Role, revision: &str) -> Resolution {
        let tag = if revision.is_empty() {
            String::new()
        } else {
            format!("{}/{revision}", role.as_str())
        };
        Resolution {
            namespace: namespace.to_owned(),
            service: service.to_owned(),
            role,
            revision: revision.to_owned(),
            tag,
            from_header: false,
        }
    }

    fn from_rule(rule: &RevisionRule) -> Resolution {
        Resolution::new(
            &rule.namespace,
            &rule.service,
            rule.role.into(),
            &rule.revision,
        )
    }

    /// The same service with an unknown role and revision (also what a header-named revision
    /// over the aggregate's limit is counted as).
    pub fn unknown(&self) -> Resolution {
        Resolution::new(&self.namespace, &self.service, Role::Unknown, "")
    }
}

/// What the cluster alone says about a request: computed once per distinct cluster name.
#[derive(Debug, PartialEq, Eq)]
pub struct ClusterResolution {
    /// The rule's target when one matched, else the service guessed from the cluster name
    /// with role `unknown`.
    pub target: Rc<Resolution>,
    /// Whether a rule matched (the cluster source resolved the request).
    pub matched: bool,
    /// `target` with role and revision unknown, used when no source resolves the request.
    unknown: Rc<Resolution>,
}

/// One service's header-named revisions, by the role the cluster gave.
type HeaderRevisions = BTreeMap<Role, BTreeMap<String, Rc<Resolution>>>;

/// Maps clusters and response-header revisions to [`Resolution`]s, following the configured
/// source order. Both maps are caches: a hit costs no parsing and no allocation.
#[derive(Debug)]
pub struct RevisionResolver {
    rules: Vec<RevisionRule>,
    sources: Vec<RevisionSource>,
    by_cluster: BTreeMap<String, Rc<ClusterResolution>>,
    /// Keyed by (namespace, service, role the cluster gave, revision).
    /// Nested so that a hit is found from borrowed labels, without allocating.
    by_header: BTreeMap<String, BTreeMap<String, HeaderRevisions>>,
    /// Entries in `by_header`.
    header_entries: usize,
}

impl RevisionResolver {
    pub fn new(config: &FilterConfig) -> RevisionResolver {
        RevisionResolver {
            rules: config.rules.clone(),
            sources: config.sources.clone(),
            by_cluster: BTreeMap::new(),
            by_header: BTreeMap::new(),
            header_entries: 0,
        }
    }

    /// What the cluster says; `cluster` is empty when Envoy picked none (no route).
    pub fn resolve_cluster(&mut self, cluster: &str) -> Rc<ClusterResolution> {
        if let Some(hit) = self.by_cluster.get(cluster) {
            return Rc::clone(hit);
        }
        let resolved = Rc::new(self.compute_cluster(cluster));
        if self.by_cluster.len() >= CACHE_LIMIT {
            self.by_cluster.clear();
        }
        self.by_cluster
            .insert(cluster.to_owned(), Rc::clone(&resolved));
        resolved
    }

    fn compute_cluster(&self, cluster: &str) -> ClusterResolution {
        let (target, matched) = match self.rules.iter().find(|rule| rule.cluster.matches(cluster)) {
            Some(rule) => (Resolution::from_rule(rule), true),
            None => {
                let (service, namespace) = parse_istio_cluster(cluster)
                    .and_then(|c| c.service_and_namespace())
                    .unwrap_or((cluster, ""));
                (
                    Resolution::new(namespace, service, Role::Unknown, ""),
                    false,
                )
            }
        };
        let unknown = Rc::new(target.unknown());
        ClusterResolution {
            target: Rc::new(target),
            matched,
            unknown,
        }
    }

    /// Whether the response header can still change the answer for this cluster, i.e. whether
    /// reading it is worth a host call.
    pub fn wants_response_header(&self, cluster: &ClusterResolution) -> bool {
        if cluster.matched && cluster.target.revision.is_empty() {
            return true; // the rule gives the role; the application names the revision
        }
        for source in &self.sources {
            match source {
                RevisionSource::ResponseHeader => return true,
                RevisionSource::Cluster if cluster.matched => return false,
                RevisionSource::Cluster => {}
            }
        }
        false
    }

    /// The request's final resolution, given the cluster's and the response header's value
    /// (`None` when absent or not read).
    pub fn resolve(
        &mut self,
        cluster: &ClusterResolution,
        header_revision: Option<&str>,
    ) -> Rc<Resolution> {
        let header_revision = header_revision.map(str::trim).filter(|r| !r.is_empty());
        if cluster.matched && cluster.target.revision.is_empty() {
            return match header_revision {
                Some(revision) => self.resolve_role_and_header(&cluster.target, revision),
                None => Rc::clone(&cluster.target),
            };
        }
        for source in &self.sources {
            match source {
                RevisionSource::Cluster if cluster.matched => return Rc::clone(&cluster.target),
                RevisionSource::ResponseHeader => {
                    if let Some(revision) = header_revision {
                        return self.resolve_header(&cluster.target, revision);
                    }
                }
                RevisionSource::Cluster => {}
            }
        }
        Rc::clone(&cluster.unknown)
    }

    /// The cluster's rule gave the role and the application names the revision.
    fn resolve_role_and_header(&mut self, target: &Resolution, revision: &str) -> Rc<Resolution> {
        self.cached_header_resolution(target, revision, |target, revision| {
            Resolution::new(&target.namespace, &target.service, target.role, revision)
        })
    }

    /// The application says it is `revision` of `service`: the rule for that service and
    /// revision gives the role (and the namespace when the cluster did not); otherwise the role
    /// is unknown but the revision is kept.
    fn resolve_header(&mut self, service: &Resolution, revision: &str) -> Rc<Resolution> {
        let rules = &self.rules;
        let rule = rules
            .iter()
            .find(|rule| {
                rule.service == service.service
                    && rule.revision == revision
                    && (service.namespace.is_empty() || rule.namespace == service.namespace)
            })
            .cloned();
        self.cached_header_resolution(service, revision, move |service, revision| match &rule {
            Some(rule) => Resolution::from_rule(rule),
            None => Resolution::new(
                &service.namespace,
                &service.service,
                Role::Unknown,
                revision,
            ),
        })
    }

    /// Header-based resolutions are cached by (namespace, service, role, revision) so that a
    /// hit costs no search and no allocation.
    fn cached_header_resolution(
        &mut self,
        base: &Resolution,
        revision: &str,
        compute: impl FnOnce(&Resolution, &str) -> Resolution,
    ) -> Rc<Resolution> {
        let hit = self
            .by_header
            .get(&base.namespace)
            .and_then(|services| services.get(&base.service))
            .and_then(|roles| roles.get(&base.role))
            .and_then(|revisions| revisions.get(revision));
        if let Some(hit) = hit {
            return Rc::clone(hit);
        }
        let resolved = Rc::new(Resolution {
            from_header: true,
            ..compute(base, revision)
        });
        if self.header_entries >= CACHE_LIMIT {
            self.by_header.clear();
            self.header_entries = 0;
        }
        self.by_header
            .entry(base.namespace.clone())
            .or_default()
            .entry(base.service.clone())
            .or_default()
            .entry(base.role)
            .or_default()
            .insert(revision.to_owned(), Rc::clone(&resolved));
        self.header_entries += 1;
        resolved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"
        {"match": {"exact": "stable"}, "namespace": "demo", "service": "app", "role": "stable", "revision": "v1"},
        {"match": {"exact": "canary"}, "namespace": "demo", "service": "app", "role": "canary", "revision": "v2"},
        {"match": {"istio_subset": {"host": "shop.prod.svc.cluster.local", "subset": "canary"}},
         "namespace": "prod", "service": "shop", "role": "canary", "revision": "7f9c"},
        {"match": {"istio_host": "cart-stable.prod.svc.cluster.local"},
         "namespace": "prod", "service": "cart", "role": "stable", "revision": "c1"}"#;

    fn resolver(sources: &str) -> RevisionResolver {
        let json = format!(
            r#"{{"exporter": {{"cluster": "e", "token": "t"}}, "sources": {sources},
                "response_header": {{"name": "x-app-revision"}}, "rules": [{RULES}]}}"#
        );
        RevisionResolver::new(&FilterConfig::from_json(json.as_bytes()).unwrap())
    }

    fn cluster_only(r: &mut RevisionResolver, cluster: &str) -> Rc<Resolution> {
        let c = r.resolve_cluster(cluster);
        r.resolve(&c, None)
    }

    fn parts(r: &Resolution) -> (&str, &str, Role, &str, &str) {
        (&r.namespace, &r.service, r.role, &r.revision, &r.tag)
    }

    #[test]
    fn exact_cluster_names_map_to_their_rule() {
        let mut r = resolver(r#"["cluster"]"#);
        assert_eq!(
            parts(&cluster_only(&mut r, "canary")),
            ("demo", "app", Role::Canary, "v2", "canary/v2")
        );
        assert_eq!(
            parts(&cluster_only(&mut r, "stable")),
            ("demo", "app", Role::Stable, "v1", "stable/v1")
        );
    }

    #[test]
    fn istio_subset_and_host_forms_match_on_any_port() {
        let mut r = resolver(r#"["cluster"]"#);
        let subset = cluster_only(&mut r, "outbound|8080|canary|shop.prod.svc.cluster.local");
        assert_eq!(
            parts(&subset),
            ("prod", "shop", Role::Canary, "7f9c", "canary/7f9c")
        );
        let host = cluster_only(&mut r, "outbound|80||cart-stable.prod.svc.cluster.local");
        assert_eq!(
            parts(&host),
            ("prod", "cart", Role::Stable, "c1", "stable/c1")
        );
    }

    #[test]
    fn unmatched_clusters_are_unknown_but_keep_their_service() {
        let mut r = resolver(r#"["cluster"]"#);
        let istio = cluster_only(&mut r, "outbound|80|stable|shop.prod.svc.cluster.local");
        assert_eq!(parts(&istio), ("prod", "shop", Role::Unknown, "", ""));
        let plain = cluster_only(&mut r, "legacy_backend");
        assert_eq!(parts(&plain), ("", "legacy_backend", Role::Unknown, "", ""));
        let no_route = cluster_only(&mut r, "");
        assert_eq!(parts(&no_route), ("", "", Role::Unknown, "", ""));
        // An Istio cluster whose host is not a Service FQDN (a ServiceEntry, say).
        let external = cluster_only(&mut r, "outbound|443||api.example.com");
        assert_eq!(
            parts(&external),
            ("", "outbound|443||api.example.com", Role::Unknown, "", "")
        );
        assert!(!r.resolve_cluster("legacy_backend").matched);
    }

    #[test]
    fn each_cluster_name_is_parsed_once() {
        let mut r = resolver(r#"["cluster"]"#);
        let first = r.resolve_cluster("canary");
        let second = r.resolve_cluster("canary");
        assert!(Rc::ptr_eq(&first, &second));
        assert_eq!(r.by_cluster.len(), 1);
    }

    #[test]
    fn cache_starts_over_when_full() {
        let mut r = resolver(r#"["cluster"]"#);
        for i in 0..CACHE_LIMIT + 5 {
            r.resolve_cluster(&format!("c{i}"));
        }
        assert!(r.by_cluster.len() <= CACHE_LIMIT);
        assert_eq!(cluster_only(&mut r, "canary").revision, "v2");
    }

    #[test]
    fn cluster_first_ignores_the_header_when_a_rule_matched() {
        let mut r = resolver(r#"["cluster", "response_header"]"#);
        let c = r.resolve_cluster("stable");
        assert!(!r.wants_response_header(&c));
        assert_eq!(r.resolve(&c, Some("v2")).role, Role::Stable);
        // Unmatched cluster: the header fills in.
        let c = r.resolve_cluster("outbound|80||app.demo.svc.cluster.local");
        assert!(r.wants_response_header(&c));
        assert_eq!(
            parts(&r.resolve(&c, Some("v2"))),
            ("demo", "app", Role::Canary, "v2", "canary/v2")
        );
        assert_eq!(
            parts(&r.resolve(&c, None)),
            ("demo", "app", Role::Unknown, "", "")
        );
    }

    #[test]
    fn a_rule_without_revision_takes_the_role_from_the_cluster_and_the_revision_from_the_app() {
        let config = FilterConfig::from_json(
            br#"{"exporter": {"cluster": "e", "token": "t"},
                 "sources": ["cluster", "response_header"],
                 "response_header": {"name": "x-app-revision"},
                 "rules": [
                   {"match": {"exact": "stable"}, "namespace": "demo", "service": "app", "role": "stable"},
                   {"match": {"exact": "canary"}, "namespace": "demo", "service": "app", "role": "canary"}]}"#,
        )
        .unwrap();
        let mut r = RevisionResolver::new(&config);
        let canary = r.resolve_cluster("canary");
        assert!(r.wants_response_header(&canary));
        assert_eq!(
            parts(&r.resolve(&canary, Some("v3"))),
            ("demo", "app", Role::Canary, "v3", "canary/v3")
        );
        // After promotion the stable cluster serves v3: same revision, role stable.
        let stable = r.resolve_cluster("stable");
        assert_eq!(
            parts(&r.resolve(&stable, Some("v3"))),
            ("demo", "app", Role::Stable, "v3", "stable/v3")
        );
        // No header: the role is still known, the revision is not.
        assert_eq!(
            parts(&r.resolve(&canary, None)),
            ("demo", "app", Role::Canary, "", "")
        );
    }

    #[test]
    fn header_first_overrides_the_cluster() {
        let mut r = resolver(r#"["response_header", "cluster"]"#);
        let c = r.resolve_cluster("stable");
        assert!(r.wants_response_header(&c));
        assert_eq!(
            parts(&r.resolve(&c, Some("v2"))),
            ("demo", "app", Role::Canary, "v2", "canary/v2")
        );
        // No header (a local reply, say): the cluster still resolves it.
        assert_eq!(r.resolve(&c, None).role, Role::Stable);
        assert_eq!(r.resolve(&c, Some("  ")).role, Role::Stable);
    }

    #[test]
    fn header_revision_without_a_rule_keeps_the_revision_with_role_unknown() {
        let mut r = resolver(r#"["response_header"]"#);
        let c = r.resolve_cluster("outbound|80||app.demo.svc.cluster.local");
        assert_eq!(
            parts(&r.resolve(&c, Some("v9"))),
            ("demo", "app", Role::Unknown, "v9", "unknown/v9")
        );
        // Same revision id, other namespace: not that rule.
        let c = r.resolve_cluster("outbound|80||app.other.svc.cluster.local");
        assert_eq!(r.resolve(&c, Some("v2")).role, Role::Unknown);
        // Header-only config: a matched cluster still names the service but not the revision.
        let c = r.resolve_cluster("canary");
        assert_eq!(
            parts(&r.resolve(&c, None)),
            ("demo", "app", Role::Unknown, "", "")
        );
        assert_eq!(r.resolve(&c, Some("v1")).role, Role::Stable);
    }

    #[test]
    fn plain_cluster_without_namespace_matches_header_rules_by_service() {
        let mut r = resolver(r#"["response_header"]"#);
        let c = r.resolve_cluster("app");
        assert_eq!(
            parts(&r.resolve(&c, Some("v1"))),
            ("demo", "app", Role::Stable, "v1", "stable/v1")
        );
    }
}
