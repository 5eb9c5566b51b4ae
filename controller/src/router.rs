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

#[cfg(test)]
mod schema_tests;
