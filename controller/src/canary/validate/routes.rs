//! The managed routes: `spec.trafficRouting.managedRoutes` and the `setHeaderRoute` /
//! `setMirrorRoute` steps that name them, checked against what each router can express.

use std::collections::BTreeSet;

use super::Errors;
use crate::canary::spec::{
    CanarySpec, HeaderRoutingMatch, RouteMatch, SetHeaderRoute, SetMirrorRoute, StringMatch,
    TrafficRouting,
};

/// Methods a Gateway API `HTTPRouteMatch.method` may name (it matches them exactly).
const GATEWAY_API_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// A route name every router accepts: a DNS-1123 label (Gateway API rule names are).
fn label(e: &mut Errors, field: &str, value: &str) {
    let valid = !value.is_empty()
        && value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !valid {
        e.push(
            field,
            format!("{value:?} is not a route name (up to 63 lowercase letters, digits and '-', starting and ending with a letter or digit)"),
        );
    }
}

pub(super) fn managed_routes(e: &mut Errors, spec: &CanarySpec) {
    let routing = &spec.traffic_routing;
    let weighted: Vec<&String> = match (&routing.istio, &routing.gateway_api) {
        (Some(istio), _) => istio.virtual_service.routes.iter().collect(),
        (_, Some(gw)) => gw.rules.iter().collect(),
        _ => Vec::new(),
    };
    let mut seen = BTreeSet::new();
    for (i, route) in routing.managed_routes.iter().enumerate() {
        let field = format!("spec.trafficRouting.managedRoutes[{i}].name");
        label(e, &field, &route.name);
        if !seen.insert(route.name.as_str()) {
            e.push(&field, format!("{:?} is listed twice", route.name));
        }
        if weighted.contains(&&route.name) {
            e.push(
                &field,
                format!("{:?} is also a weighted route: a managed route is the controller's own, added and removed by steps", route.name),
            );
        }
    }
    // One name, one kind of route: a header route replaced by a mirror route of the same name
    // would leave the router unable to tell which to remove.
    let headers: BTreeSet<&str> = spec
        .steps
        .iter()
        .filter_map(|s| s.set_header_route.as_ref().map(|r| r.name.as_str()))
        .collect();
    for (i, step) in spec.steps.iter().enumerate() {
        if let Some(route) = &step.set_mirror_route {
            if headers.contains(route.name.as_str()) {
                e.push(
                    format!("spec.steps[{i}].setMirrorRoute.name"),
                    format!(
                        "{:?} is also a setHeaderRoute's name: give each managed route one kind",
                        route.name
                    ),
                );
            }
        }
    }
}

fn listed(e: &mut Errors, field: &str, name: &str, routing: &TrafficRouting) {
    if !routing.managed_routes.iter().any(|r| r.name == name) {
        e.push(
            field,
            format!("{name:?} is not in spec.trafficRouting.managedRoutes, which lists the routes steps may add"),
        );
    }
}

pub(super) fn header_route(
    e: &mut Errors,
    step: &str,
    route: &SetHeaderRoute,
    routing: &TrafficRouting,
) {
    let field = format!("{step}.setHeaderRoute");
    listed(e, &format!("{field}.name"), &route.name, routing);
    for (
        i,
        HeaderRoutingMatch {
            header_name,
            header_value,
        },
    ) in route.matches.iter().enumerate()
    {
        let at = format!("{field}.match[{i}]");
        header(e, &format!("{at}.headerName"), header_name);
        string_match(e, &format!("{at}.headerValue"), header_value);
    }
}

pub(super) fn mirror_route(
    e: &mut Errors,
    step: &str,
    route: &SetMirrorRoute,
    routing: &TrafficRouting,
) {
    let field = format!("{step}.setMirrorRoute");
    listed(e, &format!("{field}.name"), &route.name, routing);
    if let Some(p) = route.percentage {
        if !(0..=100).contains(&p) {
            e.push(
                format!("{field}.percentage"),
                format!("{p} is not between 0 and 100"),
            );
        }
    }
    for (
        i,
        RouteMatch {
            method,
            path,
            headers,
        },
    ) in route.matches.iter().enumerate()
    {
        let at = format!("{field}.match[{i}]");
        if let Some(method) = method {
            let f = format!("{at}.method");
            string_match(e, &f, method);
            if routing.gateway_api.is_some() {
                match method.exact.as_deref() {
                    Some(m) if GATEWAY_API_METHODS.contains(&m) => {}
                    _ => e.push(
                        f,
                        format!(
                            "gatewayAPI matches a method exactly: give exact, one of {}",
                            GATEWAY_API_METHODS.join(", ")
                        ),
                    ),
                }
            }
        }
        if let Some(path) = path {
            let f = format!("{at}.path");
            string_match(e, &f, path);
            let value = [&path.exact, &path.prefix].into_iter().flatten().next();
            if value.is_some_and(|v| !v.starts_with('/')) {
                e.push(f, "an exact or prefix path starts with '/'");
            }
        }
        for (name, value) in headers {
            let f = format!("{at}.headers[{name:?}]");
            header(e, &f, name);
            string_match(e, &f, value);
        }
    }
}

/// Header names are matched as HTTP/2 carries them: lower case.
fn header(e: &mut Errors, field: &str, name: &str) {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        e.push(
            field,
            format!("{name:?} is not a header name in lower case (letters, digits, '-', '_')"),
        );
    }
}

fn string_match(e: &mut Errors, field: &str, m: &StringMatch) {
    let given: Vec<(&str, &String)> = [
        ("exact", &m.exact),
        ("prefix", &m.prefix),
        ("regex", &m.regex),
    ]
    .into_iter()
    .filter_map(|(kind, v)| Some((kind, v.as_ref()?)))
    .collect();
    match given.as_slice() {
        [("exact", _)] => {}
        [(kind, value)] if value.is_empty() => e.push(field, format!("{kind} must not be empty")),
        [("regex", value)] => {
            if let Err(err) = regex::Regex::new(value) {
                e.push(field, format!("regex {value:?} does not compile: {err}"));
            }
        }
        [_] => {}
        [] => e.push(field, "must set one of exact, prefix, regex"),
        _ => e.push(field, "must set only one of exact, prefix, regex"),
    }
}
