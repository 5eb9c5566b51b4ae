//! Traffic routers: pure functions from the router's object (JSON as the API server returns
//! it) and the desired weights to the change to write, plus the Envoy file writer.
//!
//! Kubernetes routers return an RFC 6902 JSON Patch that touches only the weights of the stable
//! and canary destinations, guarded by `test` ops on `metadata.resourceVersion` (optimistic
//! concurrency: a concurrent edit makes the API server refuse the patch) and on the identity of
//! every element it writes into (a reordered route cannot receive the wrong weight). Every other
//! byte of the object is left to the API server as it was. `None` means the object already
//! routes as desired, so a level-triggered reconcile writes nothing in the steady state.
//!
//! Both weights are always written together: Gateway API's default weight is 1 and Istio's
//! depends on the number of destinations, so a missing weight is never left to a default.

pub mod envoy_file;
pub mod gateway_api;
pub mod istio;

use serde_json::{json, Value};

use crate::canary::{ManagedRouteRef, ManagedRoutes, SetHeaderRoute, SetMirrorRoute, StringMatch};

/// Why a router cannot apply weights to the object it was given. Messages name the object and
/// the field, as they end up in the Canary's status.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("{kind} {name}: {message}")]
    Object {
        kind: &'static str,
        name: String,
        message: String,
    },
    #[error("envoy routes file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("envoy routes file {path}: {message}")]
    Render { path: String, message: String },
}

impl RouterError {
    pub(crate) fn object(kind: &'static str, obj: &Value, message: impl Into<String>) -> Self {
        RouterError::Object {
            kind,
            name: name_of(obj).to_owned(),
            message: message.into(),
        }
    }
}

pub(crate) fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
}

/// Escapes a key for a JSON pointer (RFC 6901).
pub(crate) fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The object under `key` in `parent`, made one if missing or not an object.
pub(crate) fn object_at<'v>(
    parent: &'v mut serde_json::Map<String, Value>,
    key: &str,
) -> Option<&'v mut serde_json::Map<String, Value>> {
    let slot = parent.entry(key).or_insert_with(|| json!({}));
    if !slot.is_object() {
        *slot = json!({});
    }
    slot.as_object_mut()
}

/// Builds the guarded patch: `test` on resourceVersion first, then the given ops.
pub(crate) fn guarded(
    obj: &Value,
    ops: Vec<Value>,
) -> Result<json_patch::Patch, serde_json::Error> {
    let mut all = Vec::with_capacity(ops.len() + 1);
    if let Some(rv) = obj.pointer("/metadata/resourceVersion") {
        all.push(json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv}));
    }
    all.extend(ops);
    serde_json::from_value(Value::Array(all))
}

/// Applies a patch to a copy of `obj` (what the API server will store); for tests, local
/// checks and the dry-run output.
pub fn apply(obj: &Value, patch: &json_patch::Patch) -> Result<Value, json_patch::PatchError> {
    let mut out = obj.clone();
    json_patch::patch(&mut out, patch)?;
    Ok(out)
}

/// The revision header a router sets on each destination's responses
/// (`spec.trafficRouting.revisionHeader`): Plover's filter reads it (`response_header`), so
/// each request is counted under the revision that served it even when the app does not say.
/// A destination is tagged only while one revision serves it: `None` (its Deployment is rolling
/// out, so old and new pods share the destination) removes the tag, and those requests count
/// under no revision rather than under a wrong one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevisionTags<'a> {
    pub header: &'a str,
    pub stable: Option<&'a str>,
    pub canary: Option<&'a str>,
}

/// Weights found on one route or rule (`None` where a destination carries no weight).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteWeights {
    /// Route or rule name, or its index when it has none.
    pub route: String,
    pub canary: Option<i64>,
    pub stable: Option<i64>,
}

/// The managed routes a router writes besides the weights (`setHeaderRoute`,
/// `setMirrorRoute`), ahead of the weighted routes, highest priority first.
#[derive(Clone, Copy, Debug)]
pub struct Managed<'a> {
    /// The names the controller owns (`spec.trafficRouting.managedRoutes`), in priority order:
    /// a route of one of these names that `routes` does not hold is removed.
    pub names: &'a [ManagedRouteRef],
    pub routes: &'a ManagedRoutes,
}

/// One managed route to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManagedRoute<'a> {
    Header(&'a SetHeaderRoute),
    Mirror(&'a SetMirrorRoute),
}

impl ManagedRoute<'_> {
    pub fn name(&self) -> &str {
        match self {
            ManagedRoute::Header(r) => &r.name,
            ManagedRoute::Mirror(r) => &r.name,
        }
    }
}

static NO_ROUTES: ManagedRoutes = ManagedRoutes {
    header: Vec::new(),
    mirror: Vec::new(),
};

impl<'a> Managed<'a> {
    /// No managed routes, and none owned: only the weights are written.
    pub fn none() -> Managed<'static> {
        Managed {
            names: &[],
            routes: &NO_ROUTES,
        }
    }

    /// Whether a route of this name is the controller's.
    pub fn owns(&self, name: Option<&str>) -> bool {
        name.is_some_and(|name| self.names.iter().any(|n| n.name == name))
    }

    /// The routes to write, in `names` order (validation made every route's name one of them).
    pub fn ordered(&self) -> Vec<ManagedRoute<'a>> {
        let routes = self.routes;
        self.names
            .iter()
            .filter_map(|n| {
                routes
                    .header
                    .iter()
                    .find(|r| r.name == n.name)
                    .map(ManagedRoute::Header)
                    .or_else(|| {
                        routes
                            .mirror
                            .iter()
                            .find(|r| r.name == n.name)
                            .map(ManagedRoute::Mirror)
                    })
            })
            .collect()
    }
}

/// The patch of a Kubernetes router: `weight_ops` on `obj`, then the ops `managed_ops` finds on
/// the object as those leave it (the managed routes copy the weighted route's destinations with
/// their new weights), all behind one guard; `None` when there is nothing to change.
pub(crate) fn weights_then_managed(
    kind: &'static str,
    obj: &Value,
    managed: &Managed<'_>,
    mut ops: Vec<Value>,
    managed_ops: impl FnOnce(&Value) -> Result<Vec<Value>, RouterError>,
) -> Result<Option<json_patch::Patch>, RouterError> {
    let build_err = |e: String| RouterError::object(kind, obj, format!("building the patch: {e}"));
    // Without managed routes there is nothing to write or remove: no copy of the object.
    if !managed.names.is_empty() {
        let weighted: json_patch::Patch = serde_json::from_value(Value::Array(ops.clone()))
            .map_err(|e| build_err(e.to_string()))?;
        let after = apply(obj, &weighted).map_err(|e| build_err(e.to_string()))?;
        ops.extend(managed_ops(&after)?);
    }
    if ops.is_empty() {
        return Ok(None);
    }
    guarded(obj, ops)
        .map(Some)
        .map_err(|e| build_err(e.to_string()))
}

/// Ops that make the managed entries of the array at `pointer` (`/spec/http`, `/spec/rules`)
/// exactly `wanted`, at its head in priority order: none when they already are; else every
/// owned entry is removed (each guarded by its name) and the wanted ones inserted.
pub(crate) fn managed_entry_ops(
    after: &Value,
    pointer: &str,
    wanted: Vec<Value>,
    managed: &Managed<'_>,
) -> Vec<Value> {
    let entries = after
        .pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let owned: Vec<usize> = (0..entries.len())
        .filter(|&i| managed.owns(entries[i].get("name").and_then(Value::as_str)))
        .collect();
    let in_place = owned.iter().copied().eq(0..wanted.len())
        && wanted.iter().zip(entries).all(|(w, e)| w == e);
    if in_place {
        return Vec::new();
    }
    let mut ops = Vec::new();
    for &i in owned.iter().rev() {
        let path = format!("{pointer}/{i}");
        ops.push(
            json!({"op": "test", "path": format!("{path}/name"), "value": entries[i]["name"]}),
        );
        ops.push(json!({"op": "remove", "path": path}));
    }
    for (i, entry) in wanted.into_iter().enumerate() {
        ops.push(json!({"op": "add", "path": format!("{pointer}/{i}"), "value": entry}));
    }
    ops
}

/// Each of the weighted route's matches (`own`) with `extra` applied: and'ed with one of a
/// managed route's.
pub(crate) fn each_match(own: &[Value], extra: impl Fn(&mut Value)) -> Vec<Value> {
    own.iter()
        .map(|m| {
            let mut m = m.clone();
            extra(&mut m);
            m
        })
        .collect()
}

/// The weighted route or rule at `{pointer}/{index}` and its matches under `key`
/// (`[default_match]` when it has none): what the managed routes are copies of.
pub(crate) fn weighted_entry(
    after: &Value,
    pointer: &str,
    index: usize,
    key: &str,
    default_match: Value,
) -> (Value, Vec<Value>) {
    let weighted = after
        .pointer(&format!("{pointer}/{index}"))
        .cloned()
        .unwrap_or(Value::Null);
    let matches = weighted
        .get(key)
        .and_then(Value::as_array)
        .cloned()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| vec![default_match]);
    (weighted, matches)
}

/// A copy of the weighted route or rule named `name`, with `matches` under `key`.
pub(crate) fn managed_copy(weighted: &Value, name: &str, key: &str, matches: Vec<Value>) -> Value {
    let mut copy = weighted.clone();
    copy["name"] = json!(name);
    copy[key] = Value::Array(matches);
    copy
}

/// A [`StringMatch`] as (kind, value), `kind` one of `exact`, `prefix`, `regex` (validation
/// made exactly one of them set).
pub(crate) fn string_match(m: &StringMatch) -> (&'static str, &str) {
    [
        ("exact", &m.exact),
        ("prefix", &m.prefix),
        ("regex", &m.regex),
    ]
    .into_iter()
    .find_map(|(kind, v)| Some((kind, v.as_deref()?)))
    .unwrap_or(("exact", ""))
}

/// The mirror percentage written (the status fills the default in).
pub(crate) fn mirror_percentage(route: &SetMirrorRoute) -> u32 {
    route
        .percentage
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or(100)
        .min(100)
}

#[cfg(test)]
mod schema_tests;

/// Managed routes the routers' tests write: a header route (two matches) and a 35% mirror.
#[cfg(test)]
pub(crate) mod managed_fixture {
    use crate::canary::{ManagedRouteRef, ManagedRoutes};

    pub fn names() -> Vec<ManagedRouteRef> {
        ["by-header", "mirror"]
            .into_iter()
            .map(|name| ManagedRouteRef { name: name.into() })
            .collect()
    }

    pub fn routes() -> ManagedRoutes {
        serde_yaml::from_str(
            "header: [{name: by-header, match: [{headerName: x-canary, headerValue: {exact: always}}, {headerName: x-user, headerValue: {prefix: test-}}]}]\n\
             mirror: [{name: mirror, percentage: 35, match: [{method: {exact: GET}, headers: {x-debug: {regex: 'on|yes'}}}]}]",
        )
        .expect("fixture")
    }
}
