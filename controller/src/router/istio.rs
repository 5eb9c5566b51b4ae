//! Istio: weights of the stable and canary destinations of named VirtualService HTTP routes,
//! and (subset mode) the DestinationRule subsets that select the two workloads' pods.
//!
//! Host mode tells destinations apart by `destination.host`, compared up to its first dot
//! (`podinfo-canary.ns.svc.cluster.local` is `podinfo-canary`), as Argo does. Subset mode tells
//! them apart by `destination.subset`. A route with any third destination that carries weight
//! is refused: its traffic would not add up to the desired split.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{
    each_match, escape, guarded, managed_copy, managed_entry_ops, mirror_percentage, object_at,
    string_match, weighted_entry, weights_then_managed, Managed, ManagedRoute, RevisionTags,
    RouteWeights, RouterError,
};
use crate::canary::IstioRouting;
use crate::canary::{HeaderRoutingMatch, RouteMatch};

const VS: &str = "VirtualService";
const DR: &str = "DestinationRule";

/// Which destination is which.
enum Match<'a> {
    Hosts { stable: &'a str, canary: &'a str },
    Subsets { stable: &'a str, canary: &'a str },
}

fn short_host(host: &str) -> &str {
    host.split('.').next().unwrap_or(host)
}

impl Match<'_> {
    fn from(cfg: &IstioRouting) -> Result<Match<'_>, String> {
        match (&cfg.destination_rule, cfg.stable_service.as_deref(), cfg.canary_service.as_deref()) {
            (Some(dr), _, _) => Ok(Match::Subsets { stable: &dr.stable_subset_name, canary: &dr.canary_subset_name }),
            (None, Some(stable), Some(canary)) => Ok(Match::Hosts { stable, canary }),
            _ => Err("spec.trafficRouting.istio names neither a destinationRule nor stableService and canaryService".to_owned()),
        }
    }

    /// `Some(true)` canary, `Some(false)` stable, `None` another destination.
    fn classify(&self, destination: &Value) -> Option<bool> {
        match self {
            Match::Hosts { stable, canary } => {
                let host = destination
                    .get("host")
                    .and_then(Value::as_str)
                    .map(short_host)?;
                if host == short_host(canary) {
                    Some(true)
                } else if host == short_host(stable) {
                    Some(false)
                } else {
                    None
                }
            }
            Match::Subsets { stable, canary } => {
                let subset = destination.get("subset").and_then(Value::as_str)?;
                if subset == *canary {
                    Some(true)
                } else if subset == *stable {
                    Some(false)
                } else {
                    None
                }
            }
        }
    }

    fn describe(&self, canary: bool) -> String {
        match (self, canary) {
            (Match::Hosts { canary: c, .. }, true) => format!("canary host {c:?}"),
            (Match::Hosts { stable: s, .. }, false) => format!("stable host {s:?}"),
            (Match::Subsets { canary: c, .. }, true) => format!("canary subset {c:?}"),
            (Match::Subsets { stable: s, .. }, false) => format!("stable subset {s:?}"),
        }
    }
}

/// One selected route: its index, label, and the indexes of its canary and stable destinations.
struct Selected {
    index: usize,
    label: String,
    canary: usize,
    stable: usize,
}

fn select<'c>(
    vs: &Value,
    cfg: &'c IstioRouting,
    managed: &Managed<'_>,
) -> Result<(Vec<Selected>, Match<'c>), RouterError> {
    let err = |m: String| RouterError::object(VS, vs, m);
    let matcher = Match::from(cfg).map_err(err)?;
    let http = vs
        .pointer("/spec/http")
        .and_then(Value::as_array)
        .ok_or_else(|| err("spec.http is missing".to_owned()))?;
    let indexes: Vec<usize> = if cfg.virtual_service.routes.is_empty() {
        // The controller's own header and mirror routes are not candidates.
        let candidates: Vec<usize> = (0..http.len())
            .filter(|&i| !managed.owns(http[i].get("name").and_then(Value::as_str)))
            .collect();
        if candidates.len() != 1 {
            return Err(err(format!(
                "spec.http has {} routes; name the ones to weight in spec.trafficRouting.istio.virtualService.routes",
                candidates.len()
            )));
        }
        candidates
    } else {
        cfg.virtual_service
            .routes
            .iter()
            .map(|name| {
                http.iter()
                    .position(|r| r.get("name").and_then(Value::as_str) == Some(name.as_str()))
                    .ok_or_else(|| err(format!("HTTP route {name:?} not found in spec.http")))
            })
            .collect::<Result<_, _>>()?
    };
    let mut selected = Vec::new();
    for index in indexes {
        let route = &http[index];
        let label = route
            .get("name")
            .and_then(Value::as_str)
            .map_or_else(|| format!("spec.http[{index}]"), |n| format!("{n:?}"));
        let destinations = route
            .get("route")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let (mut canary, mut stable) = (None, None);
        for (j, d) in destinations.iter().enumerate() {
            let destination = d.get("destination").unwrap_or(&Value::Null);
            match matcher.classify(destination) {
                Some(true) if canary.is_some() => {
                    return Err(err(format!(
                        "route {label} has the {} twice",
                        matcher.describe(true)
                    )))
                }
                Some(false) if stable.is_some() => {
                    return Err(err(format!(
                        "route {label} has the {} twice",
                        matcher.describe(false)
                    )))
                }
                Some(true) => canary = Some(j),
                Some(false) => stable = Some(j),
                None => {
                    if d.get("weight").and_then(Value::as_i64).unwrap_or(0) != 0 {
                        return Err(err(format!(
                            "route {label} sends weight to a destination other than stable and canary (route[{j}])"
                        )));
                    }
                }
            }
        }
        let canary = canary.ok_or_else(|| {
            err(format!(
                "{} not found in route {label}",
                matcher.describe(true)
            ))
        })?;
        let stable = stable.ok_or_else(|| {
            err(format!(
                "{} not found in route {label}",
                matcher.describe(false)
            ))
        })?;
        selected.push(Selected {
            index,
            label,
            canary,
            stable,
        });
    }
    Ok((selected, matcher))
}

/// The weights the VirtualService routes now.
pub fn current_weights(
    vs: &Value,
    cfg: &IstioRouting,
    managed: &Managed<'_>,
) -> Result<Vec<RouteWeights>, RouterError> {
    let (selected, _) = select(vs, cfg, managed)?;
    Ok(selected
        .iter()
        .map(|s| {
            let weight = |j: usize| {
                vs.pointer(&format!("/spec/http/{}/route/{j}/weight", s.index))
                    .and_then(Value::as_i64)
            };
            RouteWeights {
                route: s.label.clone(),
                canary: weight(s.canary),
                stable: weight(s.stable),
            }
        })
        .collect())
}

/// The patch that routes `canary`/`stable` percent on every selected route, or `None` if the
/// VirtualService already does.
pub fn set_weights(
    vs: &Value,
    cfg: &IstioRouting,
    canary: u32,
    stable: u32,
    tags: Option<RevisionTags<'_>>,
) -> Result<Option<json_patch::Patch>, RouterError> {
    set_routes(vs, cfg, (canary, stable), tags, &Managed::none())
}

/// The patch that routes `canary`/`stable` percent on every selected route and makes the
/// managed routes exactly `managed`'s, ahead of every other route; `None` if the
/// VirtualService already does. One patch: weights and managed routes change together.
pub fn set_routes(
    vs: &Value,
    cfg: &IstioRouting,
    (canary, stable): (u32, u32),
    tags: Option<RevisionTags<'_>>,
    managed: &Managed<'_>,
) -> Result<Option<json_patch::Patch>, RouterError> {
    let ops = weight_ops(vs, cfg, (canary, stable), tags, managed)?;
    weights_then_managed(VS, vs, managed, ops, |after| {
        Ok(managed_entry_ops(
            after,
            "/spec/http",
            managed_http_routes(after, cfg, managed)?,
            managed,
        ))
    })
}

/// The routes of `managed` as Istio HTTP routes, each a copy of the (first) weighted route
/// (its rewrites, timeouts and retries apply alike) whose matches also require the managed
/// route's: a header route sends what matches to the canary destination; a mirror route routes
/// what matches as the weighted route does and mirrors `percentage` of it to the canary.
fn managed_http_routes(
    after: &Value,
    cfg: &IstioRouting,
    managed: &Managed<'_>,
) -> Result<Vec<Value>, RouterError> {
    let routes = managed.ordered();
    if routes.is_empty() {
        return Ok(Vec::new());
    }
    let (selected, _) = select(after, cfg, managed)?;
    let Some(first) = selected.first() else {
        return Ok(Vec::new());
    };
    let (weighted, own_matches) =
        weighted_entry(after, "/spec/http", first.index, "match", json!({}));
    let mut canary = weighted
        .pointer(&format!("/route/{}", first.canary))
        .cloned()
        .unwrap_or(Value::Null);
    canary["weight"] = json!(100);
    let istio_match = |m| {
        let (kind, value) = string_match(m);
        json!({ kind: value })
    };
    let combined = |extra: &dyn Fn(&mut Value)| each_match(&own_matches, extra);
    let route = |name: &str, matches| managed_copy(&weighted, name, "match", matches);
    Ok(routes
        .into_iter()
        .map(|managed_route| match managed_route {
            ManagedRoute::Header(r) => {
                let matches = r
                    .matches
                    .iter()
                    .flat_map(
                        |HeaderRoutingMatch {
                             header_name,
                             header_value,
                         }| {
                            combined(&|m| {
                                if let Some(headers) =
                                    m.as_object_mut().and_then(|m| object_at(m, "headers"))
                                {
                                    headers.insert(header_name.clone(), istio_match(header_value));
                                }
                            })
                        },
                    )
                    .collect();
                let mut route = route(&r.name, matches);
                route["route"] = json!([canary.clone()]);
                route
            }
            ManagedRoute::Mirror(r) => {
                let matches = r
                    .matches
                    .iter()
                    .flat_map(
                        |RouteMatch {
                             method,
                             path,
                             headers,
                         }| {
                            combined(&|m| {
                                if let Some(method) = method {
                                    m["method"] = istio_match(method);
                                }
                                if let Some(path) = path {
                                    m["uri"] = istio_match(path);
                                }
                                if headers.is_empty() {
                                    return;
                                }
                                if let Some(own) =
                                    m.as_object_mut().and_then(|m| object_at(m, "headers"))
                                {
                                    for (name, value) in headers {
                                        own.insert(name.clone(), istio_match(value));
                                    }
                                }
                            })
                        },
                    )
                    .collect();
                let mut route = route(&r.name, matches);
                route["mirror"] = canary.get("destination").cloned().unwrap_or(Value::Null);
                // A whole number, as the API server gives it back (a float would differ from
                // it and be written again on every reconcile).
                route["mirrorPercentage"] = json!({"value": mirror_percentage(r)});
                route
            }
        })
        .collect())
}

/// Ops that give every selected route the weights (and its destinations their tags).
fn weight_ops(
    vs: &Value,
    cfg: &IstioRouting,
    (canary, stable): (u32, u32),
    tags: Option<RevisionTags<'_>>,
    managed: &Managed<'_>,
) -> Result<Vec<Value>, RouterError> {
    let (selected, _) = select(vs, cfg, managed)?;
    let mut ops = Vec::new();
    for s in &selected {
        let route = format!("/spec/http/{}", s.index);
        let current = |j: usize| {
            vs.pointer(&format!("{route}/route/{j}/weight"))
                .and_then(Value::as_i64)
        };
        let weights_match = current(s.canary) == Some(i64::from(canary))
            && current(s.stable) == Some(i64::from(stable));
        let mut route_ops = Vec::new();
        for (j, weight, revision) in [
            (s.canary, canary, tags.and_then(|t| t.canary)),
            (s.stable, stable, tags.and_then(|t| t.stable)),
        ] {
            let at = format!("{route}/route/{j}");
            let mut changes = Vec::new();
            if !weights_match {
                changes.push(json!({"op": "add", "path": format!("{at}/weight"), "value": weight}));
            }
            if let Some(tags) = tags {
                if let Some(headers) =
                    tagged_headers(vs.pointer(&format!("{at}/headers")), tags.header, revision)
                {
                    changes.push(
                        json!({"op": "add", "path": format!("{at}/headers"), "value": headers}),
                    );
                }
            }
            if !changes.is_empty() {
                let destination = vs
                    .pointer(&format!("{at}/destination"))
                    .cloned()
                    .unwrap_or(Value::Null);
                route_ops.push(json!({"op": "test", "path": format!("{at}/destination"), "value": destination}));
                route_ops.extend(changes);
            }
        }
        if route_ops.is_empty() {
            continue;
        }
        if let Some(name) = vs.pointer(&format!("{route}/name")) {
            ops.push(json!({"op": "test", "path": format!("{route}/name"), "value": name}));
        }
        ops.extend(route_ops);
    }
    Ok(ops)
}

/// A destination's `headers` with `request.set[header]` and `response.set[header]` = revision
/// (`None`: without that header), everything else kept; `None` if it already says so. `set`
/// replaces whatever the client or the application sent, so neither can forge the tag.
fn tagged_headers(current: Option<&Value>, header: &str, revision: Option<&str>) -> Option<Value> {
    const SIDES: [&str; 2] = ["request", "response"];
    let says = |side: &str| {
        current
            .and_then(|h| h.pointer(&format!("/{side}/set/{}", escape(header))))
            .and_then(Value::as_str)
    };
    if SIDES.iter().all(|side| says(side) == revision) {
        return None;
    }
    let mut headers = current
        .cloned()
        .filter(Value::is_object)
        .unwrap_or(json!({}));
    for side in SIDES {
        let set = object_at(object_at(headers.as_object_mut()?, side)?, "set")?;
        match revision {
            Some(revision) => {
                set.insert(header.to_owned(), revision.into());
            }
            None => {
                set.remove(header);
            }
        }
    }
    Some(headers)
}

/// Subset mode: makes the stable and canary subsets select their workloads' pods (each
/// Deployment's `spec.selector.matchLabels`). Adds a missing subset, sets missing or different
/// selector labels, keeps every other label and field (e.g. `trafficPolicy`) and every other
/// subset. `None` if nothing needs to change.
pub fn sync_subsets(
    dr: &Value,
    cfg: &IstioRouting,
    stable_labels: &BTreeMap<String, String>,
    canary_labels: &BTreeMap<String, String>,
) -> Result<Option<json_patch::Patch>, RouterError> {
    let Some(rule) = &cfg.destination_rule else {
        return Ok(None);
    };
    let subsets = dr.pointer("/spec/subsets").and_then(Value::as_array);
    let mut ops = Vec::new();
    if subsets.is_none() {
        ops.push(json!({"op": "add", "path": "/spec/subsets", "value": []}));
    }
    for (name, labels) in [
        (&rule.stable_subset_name, stable_labels),
        (&rule.canary_subset_name, canary_labels),
    ] {
        if labels.is_empty() {
            return Err(RouterError::object(
                DR,
                dr,
                format!("no selector labels for subset {name:?}"),
            ));
        }
        let position = subsets.and_then(|s| {
            s.iter()
                .position(|x| x.get("name").and_then(Value::as_str) == Some(name.as_str()))
        });
        let Some(k) = position else {
            ops.push(json!({"op": "add", "path": "/spec/subsets/-", "value": {"name": name, "labels": labels}}));
            continue;
        };
        let path = format!("/spec/subsets/{k}");
        let existing = dr
            .pointer(&format!("{path}/labels"))
            .and_then(Value::as_object);
        let mut changes = Vec::new();
        match existing {
            None => changes
                .push(json!({"op": "add", "path": format!("{path}/labels"), "value": labels})),
            Some(existing) => {
                for (key, value) in labels {
                    if existing.get(key).and_then(Value::as_str) != Some(value.as_str()) {
                        changes.push(json!({"op": "add", "path": format!("{path}/labels/{}", escape(key)), "value": value}));
                    }
                }
            }
        }
        if !changes.is_empty() {
            ops.push(json!({"op": "test", "path": format!("{path}/name"), "value": name}));
            ops.extend(changes);
        }
    }
    if ops.is_empty() {
        return Ok(None);
    }
    guarded(dr, ops)
        .map(Some)
        .map_err(|e| RouterError::object(DR, dr, format!("building the patch: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        canary::{DestinationRuleRef, ManagedRoutes, VirtualServiceRef},
        router::apply,
    };

    fn host_cfg(routes: &[&str]) -> IstioRouting {
        IstioRouting {
            virtual_service: VirtualServiceRef {
                name: "podinfo".into(),
                routes: routes.iter().map(|r| r.to_string()).collect(),
            },
            stable_service: Some("podinfo-stable".into()),
            canary_service: Some("podinfo-canary".into()),
            destination_rule: None,
        }
    }

    fn vs() -> Value {
        json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "podinfo", "namespace": "test", "resourceVersion": "41"},
            "spec": {"hosts": ["podinfo"], "http": [
                {"name": "header", "match": [{"headers": {"x-canary": {"exact": "1"}}}],
                 "route": [{"destination": {"host": "podinfo-canary"}}]},
                {"name": "primary", "route": [
                    {"destination": {"host": "podinfo-stable.test.svc.cluster.local", "port": {"number": 80}}, "weight": 100},
                    {"destination": {"host": "podinfo-canary.test.svc.cluster.local", "port": {"number": 80}}, "weight": 0}],
                 "retries": {"attempts": 3}}
            ]}
        })
    }

    #[test]
    fn managed_routes_go_first_and_are_written_once_then_removed() {
        use crate::router::managed_fixture;
        let (names, routes) = (managed_fixture::names(), managed_fixture::routes());
        let managed = Managed {
            names: &names,
            routes: &routes,
        };
        // The example's single route, unnamed: it stays the one weighted route.
        let mut vs = vs();
        vs["spec"]["http"] = json!([vs["spec"]["http"][1].clone()]);
        vs["spec"]["http"][0]["match"] = json!([{"uri": {"prefix": "/api"}}]);
        vs["spec"]["http"][0]
            .as_object_mut()
            .unwrap()
            .remove("name");
        let cfg = host_cfg(&[]);
        let patch = set_routes(&vs, &cfg, (20, 80), None, &managed)
            .unwrap()
            .unwrap();
        let out = apply(&vs, &patch).unwrap();
        let http = out["spec"]["http"].as_array().unwrap();
        assert_eq!(http.len(), 3);
        let canary = json!({"destination": {"host": "podinfo-canary.test.svc.cluster.local", "port": {"number": 80}}, "weight": 100});
        assert_eq!(
            http[0],
            json!({"name": "by-header", "retries": {"attempts": 3},
                   "match": [{"uri": {"prefix": "/api"}, "headers": {"x-canary": {"exact": "always"}}},
                             {"uri": {"prefix": "/api"}, "headers": {"x-user": {"prefix": "test-"}}}],
                   "route": [canary]})
        );
        assert_eq!(
            http[1],
            json!({"name": "mirror", "retries": {"attempts": 3},
                   "match": [{"uri": {"prefix": "/api"}, "method": {"exact": "GET"}, "headers": {"x-debug": {"regex": "on|yes"}}}],
                   "route": http[2]["route"].clone(),
                   "mirror": {"host": "podinfo-canary.test.svc.cluster.local", "port": {"number": 80}},
                   "mirrorPercentage": {"value": 35}})
        );
        assert_eq!(
            http[2]["route"][1]["weight"], 20,
            "the mirror route carries the new weights"
        );
        // Level-triggered: the same desire writes nothing.
        assert!(set_routes(&out, &cfg, (20, 80), None, &managed)
            .unwrap()
            .is_none());
        assert_eq!(
            current_weights(&out, &cfg, &managed).unwrap()[0].canary,
            Some(20)
        );
        // No routes any more (promotion, abort): both removed, each guarded by its name.
        let none = ManagedRoutes::default();
        let cleared = Managed {
            names: &names,
            routes: &none,
        };
        let patch = set_routes(&out, &cfg, (0, 100), None, &cleared)
            .unwrap()
            .unwrap();
        let ops = serde_json::to_value(&patch).unwrap();
        assert!(ops
            .as_array()
            .unwrap()
            .contains(&json!({"op": "test", "path": "/spec/http/1/name", "value": "mirror"})));
        let back = apply(&out, &patch).unwrap();
        assert_eq!(back["spec"]["http"].as_array().unwrap().len(), 1);
        assert_eq!(back["spec"]["http"][0]["route"][0]["weight"], 100);
    }

    #[test]
    fn patch_writes_both_weights_of_the_named_route_only() {
        let vs = vs();
        let patch = set_weights(&vs, &host_cfg(&["primary"]), 20, 80, None)
            .unwrap()
            .unwrap();
        let ops = serde_json::to_value(&patch).unwrap();
        assert_eq!(
            ops[0],
            json!({"op": "test", "path": "/metadata/resourceVersion", "value": "41"})
        );
        let out = apply(&vs, &patch).unwrap();
        assert_eq!(out["spec"]["http"][1]["route"][0]["weight"], 80);
        assert_eq!(out["spec"]["http"][1]["route"][1]["weight"], 20);
        let mut expected = vs.clone();
        expected["spec"]["http"][1]["route"][0]["weight"] = json!(80);
        expected["spec"]["http"][1]["route"][1]["weight"] = json!(20);
        assert_eq!(out, expected, "nothing else changes");
        assert_eq!(
            current_weights(&out, &host_cfg(&["primary"]), &Managed::none()).unwrap()[0].canary,
            Some(20)
        );
        assert!(
            set_weights(&out, &host_cfg(&["primary"]), 20, 80, None)
                .unwrap()
                .is_none(),
            "already routed: no write"
        );
    }

    #[test]
    fn destinations_are_tagged_with_their_revision_and_other_headers_kept() {
        let mut vs = vs();
        vs["spec"]["http"][1]["route"][0]["headers"] =
            json!({"request": {"set": {"x-team": "a"}}, "response": {"remove": ["server"]}});
        let tags = RevisionTags {
            header: "x-app-revision",
            stable: Some("5d8f7c9b6"),
            canary: Some("7c6b5a4d3"),
        };
        let patch = set_weights(&vs, &host_cfg(&["primary"]), 20, 80, Some(tags))
            .unwrap()
            .unwrap();
        let out = apply(&vs, &patch).unwrap();
        let stable = &out["spec"]["http"][1]["route"][0];
        assert_eq!(stable["weight"], 80);
        assert_eq!(
            stable["headers"],
            json!({"request": {"set": {"x-team": "a", "x-app-revision": "5d8f7c9b6"}},
                   "response": {"remove": ["server"], "set": {"x-app-revision": "5d8f7c9b6"}}})
        );
        assert_eq!(
            out["spec"]["http"][1]["route"][1]["headers"],
            json!({"request": {"set": {"x-app-revision": "7c6b5a4d3"}},
                   "response": {"set": {"x-app-revision": "7c6b5a4d3"}}})
        );
        assert!(
            set_weights(&out, &host_cfg(&["primary"]), 20, 80, Some(tags))
                .unwrap()
                .is_none(),
            "tagged and weighted already: no write"
        );
        // A new canary revision: only its tag changes.
        let next = RevisionTags {
            canary: Some("99aa88bb7"),
            ..tags
        };
        let patch = set_weights(&out, &host_cfg(&["primary"]), 20, 80, Some(next))
            .unwrap()
            .unwrap();
        let ops = serde_json::to_value(&patch).unwrap();
        assert!(
            !ops.to_string().contains("/weight"),
            "weights unchanged: {ops}"
        );
        let again = apply(&out, &patch).unwrap();
        assert_eq!(
            again["spec"]["http"][1]["route"][1]["headers"]["response"]["set"]["x-app-revision"],
            "99aa88bb7"
        );
        // The stable Deployment rolling out (old and new pods behind one destination): its tag
        // goes, other headers stay.
        let rolling = RevisionTags {
            stable: None,
            ..tags
        };
        let patch = set_weights(&again, &host_cfg(&["primary"]), 20, 80, Some(rolling))
            .unwrap()
            .unwrap();
        let untagged = apply(&again, &patch).unwrap();
        assert_eq!(
            untagged["spec"]["http"][1]["route"][0]["headers"],
            json!({"request": {"set": {"x-team": "a"}}, "response": {"remove": ["server"], "set": {}}})
        );
        // A headers field that is not an object is replaced, not a crash.
        let mut odd = vs.clone();
        odd["spec"]["http"][1]["route"][1]["headers"] = json!("junk");
        assert!(set_weights(&odd, &host_cfg(&["primary"]), 20, 80, Some(tags)).is_ok());
    }

    #[test]
    fn a_moved_route_or_a_concurrent_edit_fails_the_patch() {
        let vs = vs();
        let patch = set_weights(&vs, &host_cfg(&["primary"]), 20, 80, None)
            .unwrap()
            .unwrap();
        let mut edited = vs.clone();
        edited["metadata"]["resourceVersion"] = json!("42");
        assert!(apply(&edited, &patch).is_err());
        let mut reordered = vs.clone();
        reordered["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("resourceVersion");
        reordered["spec"]["http"].as_array_mut().unwrap().swap(0, 1);
        assert!(apply(&reordered, &patch).is_err());
    }

    #[test]
    fn route_selection_errors_name_the_problem() {
        let vs = vs();
        let e = set_weights(&vs, &host_cfg(&["missing"]), 20, 80, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "VirtualService podinfo: HTTP route \"missing\" not found in spec.http"
        );
        let e = set_weights(&vs, &host_cfg(&[]), 20, 80, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.http has 2 routes"), "{e}");
        let e = set_weights(&vs, &host_cfg(&["header"]), 20, 80, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "VirtualService podinfo: stable host \"podinfo-stable\" not found in route \"header\""
        );
    }

    #[test]
    fn subset_mode_matches_by_subset_and_syncs_the_destination_rule() {
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
        let vs = json!({"metadata": {"name": "podinfo"}, "spec": {"hosts": ["podinfo"], "http": [{"route": [
            {"destination": {"host": "podinfo", "subset": "stable"}},
            {"destination": {"host": "podinfo", "subset": "canary"}}]}]}});
        let out = apply(&vs, &set_weights(&vs, &cfg, 30, 70, None).unwrap().unwrap()).unwrap();
        assert_eq!(out["spec"]["http"][0]["route"][0]["weight"], 70);
        assert_eq!(out["spec"]["http"][0]["route"][1]["weight"], 30);

        let dr = json!({"metadata": {"name": "podinfo", "resourceVersion": "7"}, "spec": {"host": "podinfo",
            "subsets": [{"name": "stable", "labels": {"app": "podinfo", "track": "old"}, "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}},
                        {"name": "other", "labels": {"x": "y"}}]}});
        let stable = BTreeMap::from([
            ("app".to_owned(), "podinfo".to_owned()),
            ("track".to_owned(), "stable".to_owned()),
        ]);
        let canary = BTreeMap::from([
            ("app".to_owned(), "podinfo".to_owned()),
            ("track".to_owned(), "canary".to_owned()),
        ]);
        let out = apply(
            &dr,
            &sync_subsets(&dr, &cfg, &stable, &canary).unwrap().unwrap(),
        )
        .unwrap();
        assert_eq!(
            out["spec"]["subsets"][0],
            json!({"name": "stable", "labels": {"app": "podinfo", "track": "stable"}, "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}})
        );
        assert_eq!(
            out["spec"]["subsets"][1],
            json!({"name": "other", "labels": {"x": "y"}})
        );
        assert_eq!(
            out["spec"]["subsets"][2],
            json!({"name": "canary", "labels": {"app": "podinfo", "track": "canary"}})
        );
        assert!(sync_subsets(&out, &cfg, &stable, &canary)
            .unwrap()
            .is_none());
    }
}
