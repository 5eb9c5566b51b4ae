//! Gateway API: `backendRefs[].weight` of the stable and canary Services in HTTPRoute rules.
//!
//! Rules are chosen by name (`spec.rules[].name`), or, when none are named, every rule that
//! references both Services; a rule that references only one (a header route to the canary,
//! say) is left alone — Argo's plugin rewrites those too (its issue #158).

use serde_json::{json, Value};

use super::{
    each_match, managed_copy, managed_entry_ops, mirror_percentage, object_at, string_match,
    weighted_entry, weights_then_managed, Managed, ManagedRoute, RevisionTags, RouteWeights,
    RouterError,
};
use crate::canary::{GatewayApiRouting, RouteMatch, StringMatch};

const KIND: &str = "HTTPRoute";

/// A backendRef to a core Service named `service`.
fn is_service(backend: &Value, service: &str) -> bool {
    let kind = backend
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("Service");
    let group = backend.get("group").and_then(Value::as_str).unwrap_or("");
    kind == "Service"
        && group.is_empty()
        && backend.get("name").and_then(Value::as_str) == Some(service)
}

struct Selected {
    index: usize,
    label: String,
    canary: usize,
    stable: usize,
}

fn backends(rule: &Value) -> &[Value] {
    rule.get("backendRefs")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn find(rule: &Value, service: &str) -> Option<usize> {
    backends(rule).iter().position(|b| is_service(b, service))
}

fn select(
    route: &Value,
    cfg: &GatewayApiRouting,
    managed: &Managed<'_>,
) -> Result<Vec<Selected>, RouterError> {
    let err = |m: String| RouterError::object(KIND, route, m);
    let rules = route
        .pointer("/spec/rules")
        .and_then(Value::as_array)
        .ok_or_else(|| err("spec.rules is missing".to_owned()))?;
    let label = |i: usize| {
        rules[i]
            .get("name")
            .and_then(Value::as_str)
            .map_or_else(|| format!("spec.rules[{i}]"), |n| format!("rule {n:?}"))
    };
    let mut selected = Vec::new();
    if cfg.rules.is_empty() {
        for (index, rule) in rules.iter().enumerate() {
            // The controller's own header and mirror rules are not candidates.
            if managed.owns(rule.get("name").and_then(Value::as_str)) {
                continue;
            }
            if let (Some(canary), Some(stable)) = (
                find(rule, &cfg.canary_service),
                find(rule, &cfg.stable_service),
            ) {
                selected.push(Selected {
                    index,
                    label: label(index),
                    canary,
                    stable,
                });
            }
        }
        if selected.is_empty() {
            return Err(err(format!(
                "no rule references both backendRefs {:?} and {:?}",
                cfg.stable_service, cfg.canary_service
            )));
        }
        return Ok(selected);
    }
    for name in &cfg.rules {
        let index = rules
            .iter()
            .position(|r| r.get("name").and_then(Value::as_str) == Some(name.as_str()))
            .ok_or_else(|| err(format!("rule {name:?} not found in spec.rules")))?;
        let canary = find(&rules[index], &cfg.canary_service).ok_or_else(|| {
            err(format!(
                "backendRef {:?} not found in rule {name:?}",
                cfg.canary_service
            ))
        })?;
        let stable = find(&rules[index], &cfg.stable_service).ok_or_else(|| {
            err(format!(
                "backendRef {:?} not found in rule {name:?}",
                cfg.stable_service
            ))
        })?;
        selected.push(Selected {
            index,
            label: label(index),
            canary,
            stable,
        });
    }
    Ok(selected)
}

/// The weights the HTTPRoute now routes (absent weights are Gateway API's default, 1).
pub fn current_weights(
    route: &Value,
    cfg: &GatewayApiRouting,
    managed: &Managed<'_>,
) -> Result<Vec<RouteWeights>, RouterError> {
    Ok(select(route, cfg, managed)?
        .iter()
        .map(|s| {
            let weight = |j: usize| {
                route
                    .pointer(&format!("/spec/rules/{}/backendRefs/{j}/weight", s.index))
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

/// The patch that sets both weights on every selected rule, or `None` if they are set.
pub fn set_weights(
    route: &Value,
    cfg: &GatewayApiRouting,
    canary: u32,
    stable: u32,
    tags: Option<RevisionTags<'_>>,
) -> Result<Option<json_patch::Patch>, RouterError> {
    set_routes(route, cfg, (canary, stable), tags, &Managed::none())
}

/// The patch that sets both weights on every selected rule and makes the managed rules exactly
/// `managed`'s, ahead of every other rule; `None` if the HTTPRoute already does.
pub fn set_routes(
    route: &Value,
    cfg: &GatewayApiRouting,
    (canary, stable): (u32, u32),
    tags: Option<RevisionTags<'_>>,
    managed: &Managed<'_>,
) -> Result<Option<json_patch::Patch>, RouterError> {
    let ops = weight_ops(route, cfg, (canary, stable), tags, managed)?;
    weights_then_managed(KIND, route, managed, ops, |after| {
        Ok(managed_entry_ops(
            after,
            "/spec/rules",
            managed_rules(after, cfg, managed)?,
            managed,
        ))
    })
}

/// A Gateway API header match. Gateway API has no prefix match for headers: a prefix becomes
/// the regular expression of that prefix.
fn header_match(name: &str, m: &StringMatch) -> Value {
    match string_match(m) {
        ("exact", value) => json!({"type": "Exact", "name": name, "value": value}),
        ("prefix", value) => {
            json!({"type": "RegularExpression", "name": name, "value": format!("{}.*", regex::escape(value))})
        }
        (_, value) => json!({"type": "RegularExpression", "name": name, "value": value}),
    }
}

fn path_match(m: &StringMatch) -> Value {
    match string_match(m) {
        ("exact", value) => json!({"type": "Exact", "value": value}),
        ("prefix", value) => json!({"type": "PathPrefix", "value": value}),
        (_, value) => json!({"type": "RegularExpression", "value": value}),
    }
}

/// The rules of `managed`, each a copy of the (first) weighted rule (its filters and timeouts
/// apply alike) whose matches also require the managed route's. Written with the values the
/// API server defaults spelled out, so that what it gives back equals what was written.
fn managed_rules(
    after: &Value,
    cfg: &GatewayApiRouting,
    managed: &Managed<'_>,
) -> Result<Vec<Value>, RouterError> {
    let routes = managed.ordered();
    if routes.is_empty() {
        return Ok(Vec::new());
    }
    let Some(first) = select(after, cfg, managed)?.into_iter().next() else {
        return Ok(Vec::new());
    };
    // Gateway API's default match, spelled out as the API server stores it.
    let (weighted, own_matches) = weighted_entry(
        after,
        "/spec/rules",
        first.index,
        "matches",
        json!({"path": {"type": "PathPrefix", "value": "/"}}),
    );
    let canary = backends(&weighted)
        .get(first.canary)
        .cloned()
        .unwrap_or(Value::Null);
    let combined = |extra: &dyn Fn(&mut Value)| each_match(&own_matches, extra);
    let add_headers = |m: &mut Value, headers: Vec<Value>| {
        if let Some(list) = m
            .as_object_mut()
            .map(|m| m.entry("headers").or_insert_with(|| json!([])))
        {
            if let Some(list) = list.as_array_mut() {
                list.extend(headers);
            }
        }
    };
    let rule = |name: &str, matches| managed_copy(&weighted, name, "matches", matches);
    let mut rules: Vec<Value> = routes
        .into_iter()
        .map(|managed_route| match managed_route {
            ManagedRoute::Header(r) => {
                let matches = r
                    .matches
                    .iter()
                    .flat_map(|h| {
                        combined(&|m| {
                            add_headers(m, vec![header_match(&h.header_name, &h.header_value)])
                        })
                    })
                    .collect();
                let mut rule = rule(&r.name, matches);
                let mut backend = canary.clone();
                backend["weight"] = json!(1);
                rule["backendRefs"] = json!([backend]);
                rule
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
                                    m["method"] = json!(string_match(method).1);
                                }
                                if let Some(path) = path {
                                    m["path"] = path_match(path);
                                }
                                if !headers.is_empty() {
                                    add_headers(
                                        m,
                                        headers.iter().map(|(n, v)| header_match(n, v)).collect(),
                                    );
                                }
                            })
                        },
                    )
                    .collect();
                let mut rule = rule(&r.name, matches);
                let mirror = json!({
                    "type": "RequestMirror",
                    "requestMirror": {
                        "backendRef": {
                            "group": "",
                            "kind": "Service",
                            "name": cfg.canary_service,
                            "port": canary.get("port").cloned().unwrap_or(Value::Null),
                        },
                        "percent": mirror_percentage(r),
                    }
                });
                if let Some(filters) = rule
                    .as_object_mut()
                    .map(|r| r.entry("filters").or_insert_with(|| json!([])))
                    .and_then(Value::as_array_mut)
                {
                    filters.push(mirror);
                }
                rule
            }
        })
        .collect();
    prioritize(&mut rules);
    if let Some(rule) = rules
        .iter()
        .find(|r| r["matches"].as_array().map_or(0, Vec::len) > MAX_MATCHES)
    {
        return Err(RouterError::object(
            KIND,
            after,
            format!(
                "managed rule {} would need more than {MAX_MATCHES} matches (Gateway API's limit) to take precedence over the rules after it: give its route fewer matches",
                rule["name"]
            ),
        ));
    }
    Ok(rules)
}

/// `HTTPRouteRule.matches` holds at most this many.
const MAX_MATCHES: usize = 64;

/// Gateway API ranks rules by their matches (path, then method, then the number of headers),
/// not by their order, so a mirror rule matching `GET` would take a `GET` with the header route's
/// header away from that route. Each rule therefore also gets, for every match of each rule
/// after it, that match and'ed with its own: where both match, the earlier rule's is at least
/// as specific in every respect and has more headers, so it wins, as `managedRoutes` orders.
fn prioritize(rules: &mut [Value]) {
    let base: Vec<Vec<Value>> = rules
        .iter()
        .map(|r| r["matches"].as_array().cloned().unwrap_or_default())
        .collect();
    for (i, rule) in rules.iter_mut().enumerate() {
        let mut variants = Vec::new();
        for later in &base[i + 1..] {
            for own in &base[i] {
                variants.extend(later.iter().filter_map(|other| both(own, other)));
            }
        }
        if let Some(matches) = rule["matches"].as_array_mut() {
            for variant in variants {
                if !matches.contains(&variant) {
                    matches.push(variant);
                }
            }
        }
    }
}

/// A match that holds where both `a` and `b` do, when one can be written: `b` with `a`'s
/// method and headers added. `None` when they can never both hold (another method, path or
/// value of one header).
fn both(a: &Value, b: &Value) -> Option<Value> {
    let mut m = b.clone();
    if a.get("path").is_some_and(|p| Some(p) != b.get("path")) {
        return None;
    }
    match (a.get("method"), b.get("method")) {
        (Some(x), Some(y)) if x != y => return None,
        (Some(x), None) => m["method"] = x.clone(),
        _ => {}
    }
    let headers = m
        .as_object_mut()?
        .entry("headers")
        .or_insert_with(|| json!([]))
        .as_array_mut()?;
    for header in a
        .get("headers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match headers.iter().find(|h| h["name"] == header["name"]) {
            Some(same) if same == header => {}
            Some(_) => return None,
            None => headers.push(header.clone()),
        }
    }
    Some(m)
}

/// Ops that give both backends of every selected rule their weights (and tags).
fn weight_ops(
    route: &Value,
    cfg: &GatewayApiRouting,
    (canary, stable): (u32, u32),
    tags: Option<RevisionTags<'_>>,
    managed: &Managed<'_>,
) -> Result<Vec<Value>, RouterError> {
    let mut ops = Vec::new();
    for s in select(route, cfg, managed)? {
        let rule = format!("/spec/rules/{}", s.index);
        let current = |j: usize| {
            route
                .pointer(&format!("{rule}/backendRefs/{j}/weight"))
                .and_then(Value::as_i64)
        };
        let weights_match = current(s.canary) == Some(i64::from(canary))
            && current(s.stable) == Some(i64::from(stable));
        for (j, weight, service, revision) in [
            (
                s.canary,
                canary,
                &cfg.canary_service,
                tags.and_then(|t| t.canary),
            ),
            (
                s.stable,
                stable,
                &cfg.stable_service,
                tags.and_then(|t| t.stable),
            ),
        ] {
            let at = format!("{rule}/backendRefs/{j}");
            let mut changes = Vec::new();
            if !weights_match {
                changes.push(json!({"op": "add", "path": format!("{at}/weight"), "value": weight}));
            }
            if let Some(tags) = tags {
                if let Some(filters) = tagged_filters(
                    route.pointer(&format!("{at}/filters")),
                    tags.header,
                    revision,
                ) {
                    changes.push(
                        json!({"op": "add", "path": format!("{at}/filters"), "value": filters}),
                    );
                }
            }
            if !changes.is_empty() {
                ops.push(json!({"op": "test", "path": format!("{at}/name"), "value": service}));
                ops.extend(changes);
            }
        }
    }
    Ok(ops)
}

/// A backendRef's `filters` whose `RequestHeaderModifier` and `ResponseHeaderModifier` set
/// `header` to `revision` (`None`: do not set it), every other filter and header kept; `None` if
/// they already do. `set` replaces what the client or the application sent.
fn tagged_filters(current: Option<&Value>, header: &str, revision: Option<&str>) -> Option<Value> {
    const MODIFIERS: [(&str, &str); 2] = [
        ("RequestHeaderModifier", "requestHeaderModifier"),
        ("ResponseHeaderModifier", "responseHeaderModifier"),
    ];
    let named = |e: &Value| {
        e.get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| n.eq_ignore_ascii_case(header))
    };
    let mut filters = current
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let says = |filters: &[Value], (kind, key): (&str, &str)| -> Option<String> {
        filters
            .iter()
            .filter(|f| f.get("type").and_then(Value::as_str) == Some(kind))
            .filter_map(|f| f.pointer(&format!("/{key}/set"))?.as_array())
            .flatten()
            .find(|e| named(e))
            .and_then(|e| Some(e.get("value")?.as_str()?.to_owned()))
    };
    if MODIFIERS
        .iter()
        .all(|&m| says(&filters, m).as_deref() == revision)
    {
        return None;
    }
    for (kind, key) in MODIFIERS {
        let is_modifier = |f: &Value| f.get("type").and_then(Value::as_str) == Some(kind);
        let modifier = match filters.iter().position(is_modifier) {
            Some(i) => i,
            None => {
                filters.push(json!({"type": kind, key: {}}));
                filters.len() - 1
            }
        };
        let settings = object_at(filters.get_mut(modifier)?.as_object_mut()?, key)?;
        let set = settings.entry("set").or_insert_with(|| json!([]));
        if !set.is_array() {
            *set = json!([]);
        }
        let entries = set.as_array_mut()?;
        entries.retain(|e| !named(e));
        if let Some(revision) = revision {
            entries.push(json!({"name": header, "value": revision}));
        } else if entries.is_empty() {
            // Leave no empty modifier behind (a filter that changes nothing).
            settings.remove("set");
            if settings.is_empty() {
                filters.remove(modifier);
            }
        }
    }
    Some(Value::Array(filters))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::apply;

    fn cfg(rules: &[&str]) -> GatewayApiRouting {
        GatewayApiRouting {
            http_route: "podinfo".into(),
            rules: rules.iter().map(|r| r.to_string()).collect(),
            stable_service: "podinfo-stable".into(),
            canary_service: "podinfo-canary".into(),
        }
    }

    fn route() -> Value {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "podinfo", "namespace": "test", "resourceVersion": "9"},
            "spec": {"parentRefs": [{"name": "gw"}], "rules": [
                {"name": "canary-header", "matches": [{"headers": [{"name": "x-canary", "value": "1"}]}],
                 "backendRefs": [{"name": "podinfo-canary", "port": 80}]},
                {"name": "main", "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                 "backendRefs": [{"name": "podinfo-stable", "port": 80}, {"name": "podinfo-canary", "port": 80}]}
            ]}
        })
    }

    #[test]
    fn managed_rules_go_first_with_defaults_spelled_out_and_are_removed() {
        use crate::canary::ManagedRoutes;
        use crate::router::managed_fixture;
        let (names, routes) = (managed_fixture::names(), managed_fixture::routes());
        let managed = Managed {
            names: &names,
            routes: &routes,
        };
        let mut route = route();
        route["spec"]["rules"] = json!([route["spec"]["rules"][1].clone()]);
        let cfg = cfg(&[]);
        let patch = set_routes(&route, &cfg, (10, 90), None, &managed)
            .unwrap()
            .unwrap();
        let out = apply(&route, &patch).unwrap();
        let rules = out["spec"]["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 3);
        let prefix = json!({"type": "PathPrefix", "value": "/"});
        assert_eq!(
            rules[0],
            json!({"name": "by-header",
                   "matches": [
                       {"path": prefix, "headers": [{"type": "Exact", "name": "x-canary", "value": "always"}]},
                       {"path": prefix, "headers": [{"type": "RegularExpression", "name": "x-user", "value": "test\\-.*"}]},
                       // Where the mirror rule also matches, these outrank it (more headers).
                       {"path": prefix, "method": "GET", "headers": [
                           {"type": "RegularExpression", "name": "x-debug", "value": "on|yes"},
                           {"type": "Exact", "name": "x-canary", "value": "always"}]},
                       {"path": prefix, "method": "GET", "headers": [
                           {"type": "RegularExpression", "name": "x-debug", "value": "on|yes"},
                           {"type": "RegularExpression", "name": "x-user", "value": "test\\-.*"}]}],
                   "backendRefs": [{"name": "podinfo-canary", "port": 80, "weight": 1}]})
        );
        assert_eq!(
            rules[1],
            json!({"name": "mirror",
                   "matches": [{"path": prefix, "method": "GET",
                                "headers": [{"type": "RegularExpression", "name": "x-debug", "value": "on|yes"}]}],
                   "backendRefs": rules[2]["backendRefs"].clone(),
                   "filters": [{"type": "RequestMirror", "requestMirror": {
                       "backendRef": {"group": "", "kind": "Service", "name": "podinfo-canary", "port": 80},
                       "percent": 35}}]})
        );
        assert_eq!(rules[1]["backendRefs"][1]["weight"], 10);
        // The mirror rule references both Services but is not weighted as a rule of the user's.
        assert_eq!(current_weights(&out, &cfg, &managed).unwrap().len(), 1);
        assert!(set_routes(&out, &cfg, (10, 90), None, &managed)
            .unwrap()
            .is_none());
        let none = ManagedRoutes::default();
        let cleared = Managed {
            names: &names,
            routes: &none,
        };
        let back = apply(
            &out,
            &set_routes(&out, &cfg, (0, 100), None, &cleared)
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(back["spec"]["rules"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn backends_are_tagged_with_their_revision_by_header_filters_both_ways() {
        let mut r = route();
        r["spec"]["rules"][1]["backendRefs"][0]["filters"] = json!([
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-team", "value": "a"}]}},
            {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "X-App-Revision", "value": "old"}], "remove": ["server"]}}
        ]);
        let tags = RevisionTags {
            header: "x-app-revision",
            stable: Some("5d8f7c9b6"),
            canary: Some("7c6b5a4d3"),
        };
        let patch = set_weights(&r, &cfg(&[]), 10, 90, Some(tags))
            .unwrap()
            .unwrap();
        let out = apply(&r, &patch).unwrap();
        let backends = &out["spec"]["rules"][1]["backendRefs"];
        assert_eq!(
            backends[0]["filters"],
            json!([
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-team", "value": "a"}, {"name": "x-app-revision", "value": "5d8f7c9b6"}]}},
                {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "x-app-revision", "value": "5d8f7c9b6"}], "remove": ["server"]}}
            ])
        );
        assert_eq!(
            backends[1]["filters"],
            json!([
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-app-revision", "value": "7c6b5a4d3"}]}},
                {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "x-app-revision", "value": "7c6b5a4d3"}]}}
            ])
        );
        assert_eq!(
            out["spec"]["rules"][0], r["spec"]["rules"][0],
            "the header rule is untouched"
        );
        assert!(set_weights(&out, &cfg(&[]), 10, 90, Some(tags))
            .unwrap()
            .is_none());
        // The canary rolling out a revision: its tag goes, and the filters it lived in with it.
        let rolling = RevisionTags {
            canary: None,
            ..tags
        };
        let patch = set_weights(&out, &cfg(&[]), 10, 90, Some(rolling))
            .unwrap()
            .unwrap();
        let untagged = apply(&out, &patch).unwrap();
        assert_eq!(
            untagged["spec"]["rules"][1]["backendRefs"][1]["filters"],
            json!([])
        );
        assert_eq!(
            untagged["spec"]["rules"][1]["backendRefs"][0],
            out["spec"]["rules"][1]["backendRefs"][0]
        );
    }

    #[test]
    fn weights_both_backends_of_rules_that_reference_both() {
        let r = route();
        let patch = set_weights(&r, &cfg(&[]), 10, 90, None).unwrap().unwrap();
        let out = apply(&r, &patch).unwrap();
        let mut expected = r.clone();
        expected["spec"]["rules"][1]["backendRefs"][0]["weight"] = json!(90);
        expected["spec"]["rules"][1]["backendRefs"][1]["weight"] = json!(10);
        assert_eq!(
            out, expected,
            "the header rule and everything else are untouched"
        );
        assert!(set_weights(&out, &cfg(&["main"]), 10, 90, None)
            .unwrap()
            .is_none());
        assert_eq!(
            current_weights(&out, &cfg(&[]), &Managed::none()).unwrap(),
            vec![RouteWeights {
                route: "rule \"main\"".into(),
                canary: Some(10),
                stable: Some(90)
            }]
        );
    }

    #[test]
    fn named_rules_must_reference_both_services() {
        let e = set_weights(&route(), &cfg(&["canary-header"]), 10, 90, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "HTTPRoute podinfo: backendRef \"podinfo-stable\" not found in rule \"canary-header\""
        );
        let e = set_weights(&route(), &cfg(&["nope"]), 10, 90, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "HTTPRoute podinfo: rule \"nope\" not found in spec.rules"
        );
    }
}
