//! The filter's plugin configuration: the JSON Envoy (or an Istio `WasmPlugin`'s
//! `pluginConfig`) hands to `on_configure`. Parsed and validated once; every error names the
//! field and says what was expected.

use serde::{Deserialize, Serialize};

use crate::batch::{INGEST_PATH, MAX_STRING_BYTES};
use crate::series::Role;
use crate::ConfigError;

/// Where the filter learns which revision served a request, tried in the configured order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevisionSource {
    /// The upstream cluster Envoy picked (`xds.cluster_name`), mapped by `rules`.
    Cluster,
    /// A response header the application sets (`response_header.name`).
    ResponseHeader,
}

/// How a rule recognises an upstream cluster name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ClusterMatch {
    /// The exact cluster name, e.g. `canary` in a hand-written Envoy config.
    Exact(String),
    /// Istio subset mode: `outbound|<any port>|<subset>|<host>`.
    IstioSubset { host: String, subset: String },
    /// Istio host mode (Gateway API backends, stable/canary Services):
    /// `outbound|<any port>||<host>`.
    IstioHost(String),
}

impl ClusterMatch {
    /// Whether `cluster` (an `xds.cluster_name`) is matched.
    pub fn matches(&self, cluster: &str) -> bool {
        match self {
            ClusterMatch::Exact(name) => cluster == name,
            ClusterMatch::IstioSubset { host, subset } => {
                parse_istio_cluster(cluster).is_some_and(|c| c.subset == subset && c.host == host)
            }
            ClusterMatch::IstioHost(host) => {
                parse_istio_cluster(cluster).is_some_and(|c| c.subset.is_empty() && c.host == host)
            }
        }
    }
}

/// The parts of an Istio cluster name `direction|port|subset|host`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IstioCluster<'a> {
    pub direction: &'a str,
    pub port: u16,
    pub subset: &'a str,
    pub host: &'a str,
}

impl<'a> IstioCluster<'a> {
    /// `(service, namespace)` when the host is a Kubernetes Service FQDN
    /// (`SERVICE.NAMESPACE.svc…`).
    pub fn service_and_namespace(&self) -> Option<(&'a str, &'a str)> {
        let mut parts = self.host.splitn(3, '.');
        let service = parts.next()?;
        let namespace = parts.next()?;
        let rest = parts.next()?;
        (rest == "svc" || rest.starts_with("svc.")).then_some((service, namespace))
    }
}

/// Parses `outbound|80|canary|app.demo.svc.cluster.local`; `None` for other names.
pub fn parse_istio_cluster(cluster: &str) -> Option<IstioCluster<'_>> {
    let mut parts = cluster.splitn(4, '|');
    let direction = parts.next()?;
    if direction != "outbound" && direction != "inbound" {
        return None;
    }
    let port = parts.next()?.parse().ok()?;
    let subset = parts.next()?;
    let host = parts.next()?;
    (!host.is_empty()).then_some(IstioCluster {
        direction,
        port,
        subset,
        host,
    })
}

/// Maps one upstream cluster to a revision of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevisionRule {
    #[serde(rename = "match")]
    pub cluster: ClusterMatch,
    pub namespace: String,
    pub service: String,
    pub role: RoleName,
    /// Revision id. Empty: the revision comes from the response header (`response_header`),
    /// and the rule gives only the role — for stable/canary clusters whose backends change
    /// revision as a rollout proceeds.
    #[serde(default)]
    pub revision: String,
}

/// `stable` or `canary` (a rule never maps to `unknown`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleName {
    Stable,
    Canary,
}

impl From<RoleName> for Role {
    fn from(r: RoleName) -> Role {
        match r {
            RoleName::Stable => Role::Stable,
            RoleName::Canary => Role::Canary,
        }
    }
}

/// The response header an application sets with its own revision id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseHeaderSource {
    pub name: String,
}

/// Headers the filter itself adds with the resolved revision. Off by default: on routes Plover
/// manages the router writes the tag beside the weights (cheaper by far than a header write
/// from Wasm), so this is for routes Plover does not manage, and it needs the filter build with
/// per-stream callbacks (`plover_filter_tagging.wasm`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tagging {
    /// Set on the request sent upstream: `role/revision`, e.g. `canary/v2`; empty: not set.
    pub request_header: String,
    /// Set on the response sent downstream; empty: not set.
    pub response_header: String,
}

impl Tagging {
    /// Whether the filter writes any header (and so needs its per-stream callbacks).
    pub fn is_on(&self) -> bool {
        !self.request_header.is_empty() || !self.response_header.is_empty()
    }
}

/// Values the filter reads beyond the four the judges need (upstream cluster, response code,
/// response flags, duration). Each costs instructions on every request (`cargo xtask bench
/// filter` prices them), so each is opt-in, but `mirrored`, whose absence would count copies as
/// a revision's traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Record {
    /// The matched route's name (`xds.route_name`) as the `route` label; off: every request
    /// counts under the route `""`.
    pub route: bool,
    /// Request and response sizes (`request.total_size`, `response.total_size`) for the byte
    /// counters; off: the exporter publishes no byte counter for what was not measured.
    pub sizes: bool,
    /// The gRPC status of gRPC responses (`content-type` and `response.grpc_status`) as the
    /// `grpc_status` label.
    pub grpc_status: bool,
    /// Mirrored copies (`request.host` ending in Envoy's `-shadow`) counted apart, with role
    /// `mirror` (default on). Off saves the host read where no copy can arrive, e.g. a gateway
    /// behind no mirroring proxy: Envoy sends the copies its own routes make after the filters.
    pub mirrored: bool,
}

impl Default for Record {
    fn default() -> Self {
        Record {
            route: false,
            sizes: false,
            grpc_status: false,
            mirrored: true,
        }
    }
}

/// Where and how batches are sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExporterTarget {
    /// Envoy cluster of the exporter (must exist on this proxy).
    pub cluster: String,
    /// `:authority` of the callout; defaults to the cluster name.
    #[serde(default)]
    pub authority: String,
    #[serde(default = "default_ingest_path")]
    pub path: String,
    /// Bearer token the exporter expects.
    pub token: String,
    /// Callout timeout.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_ingest_path() -> String {
    INGEST_PATH.to_owned()
}
fn default_timeout_ms() -> u64 {
    2_000
}

/// Bounds of the retransmit buffer kept while the exporter is unreachable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BufferLimits {
    /// Most unsent batches kept (one per flush interval): 120 at 1 s is two minutes.
    pub max_batches: usize,
    /// Most bytes of unsent batches kept per VM.
    pub max_bytes: usize,
}

impl Default for BufferLimits {
    fn default() -> Self {
        BufferLimits {
            max_batches: 120,
            max_bytes: 8 * 1024 * 1024,
        }
    }
}

/// The whole plugin configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Identifies this gateway in batches; defaults to Envoy's node id.
    #[serde(default)]
    pub gateway_id: String,
    pub exporter: ExporterTarget,
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    #[serde(default)]
    pub buffer: BufferLimits,
    /// Order in which revision sources are tried.
    #[serde(default = "default_sources")]
    pub sources: Vec<RevisionSource>,
    #[serde(default)]
    pub rules: Vec<RevisionRule>,
    #[serde(default)]
    pub response_header: Option<ResponseHeaderSource>,
    #[serde(default)]
    pub tagging: Tagging,
    #[serde(default)]
    pub record: Record,
}

fn default_flush_interval_ms() -> u64 {
    1_000
}
fn default_sources() -> Vec<RevisionSource> {
    vec![RevisionSource::Cluster]
}

impl FilterConfig {
    /// Parses and validates the plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<FilterConfig, ConfigError> {
        let config: FilterConfig =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::Json(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, expected: &str| {
            Err(ConfigError::Invalid {
                field: field.to_owned(),
                expected: expected.to_owned(),
            })
        };
        if self.exporter.cluster.is_empty() {
            return invalid(
                "exporter.cluster",
                "the name of the exporter's Envoy cluster",
            );
        }
        if !self.exporter.path.starts_with('/') {
            return invalid("exporter.path", "a path starting with '/'");
        }
        if self.exporter.token.is_empty() {
            return invalid("exporter.token", "the exporter's bearer token (non-empty)");
        }
        if !(1..=60_000).contains(&self.exporter.timeout_ms) {
            return invalid("exporter.timeout_ms", "a timeout between 1 and 60000 ms");
        }
        if !(100..=60_000).contains(&self.flush_interval_ms) {
            return invalid("flush_interval_ms", "an interval between 100 and 60000 ms");
        }
        if self.buffer.max_batches == 0 {
            return invalid("buffer.max_batches", "at least 1");
        }
        if self.buffer.max_bytes < 64 * 1024 {
            return invalid("buffer.max_bytes", "at least 65536 bytes");
        }
        if self.sources.is_empty() {
            return invalid(
                "sources",
                "at least one of \"cluster\", \"response_header\"",
            );
        }
        for (i, s) in self.sources.iter().enumerate() {
            if self.sources[..i].contains(s) {
                return invalid(&format!("sources[{i}]"), "each source at most once");
            }
        }
        if self.sources.contains(&RevisionSource::ResponseHeader) {
            match &self.response_header {
                Some(h) if is_header_name(&h.name) => {}
                Some(_) => return invalid("response_header.name", "a lower-case HTTP header name"),
                None => {
                    return invalid(
                        "response_header",
                        "{\"name\": …} because sources lists \"response_header\"",
                    )
                }
            }
        }
        if self.sources.contains(&RevisionSource::Cluster) && self.rules.is_empty() {
            return invalid(
                "rules",
                "at least one rule because sources lists \"cluster\"",
            );
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let field = |name: &str| format!("rules[{i}].{name}");
            let matcher_ok = match &rule.cluster {
                ClusterMatch::Exact(n) => !n.is_empty(),
                ClusterMatch::IstioSubset { host, subset } => {
                    !host.is_empty() && !subset.is_empty()
                }
                ClusterMatch::IstioHost(h) => !h.is_empty(),
            };
            if !matcher_ok {
                return invalid(
                    &field("match"),
                    "a non-empty exact, istio_subset or istio_host value",
                );
            }
            for (name, value) in [("namespace", &rule.namespace), ("service", &rule.service)] {
                if value.is_empty() || value.len() > MAX_STRING_BYTES {
                    return invalid(&field(name), "a non-empty string of at most 512 bytes");
                }
            }
            if rule.revision.len() > MAX_STRING_BYTES {
                return invalid(&field("revision"), "a string of at most 512 bytes");
            }
            if rule.revision.is_empty() && !self.sources.contains(&RevisionSource::ResponseHeader) {
                return invalid(
                    &field("revision"),
                    "a revision id (it may be left out only when sources lists \"response_header\")",
                );
            }
            if self.rules[..i]
                .iter()
                .any(|earlier| earlier.cluster == rule.cluster)
            {
                return invalid(&field("match"), "a cluster matched by no earlier rule");
            }
        }
        for (field, value) in [
            ("tagging.request_header", &self.tagging.request_header),
            ("tagging.response_header", &self.tagging.response_header),
        ] {
            if !value.is_empty() && !is_header_name(value) {
                return invalid(
                    field,
                    "a lower-case HTTP header name, or \"\" to turn tagging off",
                );
            }
        }
        Ok(())
    }
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{
        "exporter": {"cluster": "plover_exporter", "token": "secret"},
        "rules": [
            {"match": {"exact": "stable"}, "namespace": "demo", "service": "app", "role": "stable", "revision": "v1"},
            {"match": {"istio_subset": {"host": "app.demo.svc.cluster.local", "subset": "canary"}},
             "namespace": "demo", "service": "app", "role": "canary", "revision": "v2"}
        ]
    }"#;

    fn error_field(json: &str) -> String {
        match FilterConfig::from_json(json.as_bytes()) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = FilterConfig::from_json(MINIMAL.as_bytes()).unwrap();
        assert_eq!(c.flush_interval_ms, 1000);
        assert_eq!(c.exporter.path, "/v1/batches");
        assert_eq!(c.sources, vec![RevisionSource::Cluster]);
        assert_eq!(c.buffer.max_batches, 120);
        assert!(!c.tagging.is_on());
        assert_eq!(c.record, Record::default());
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            error_field(&MINIMAL.replace("\"secret\"", "\"\"")),
            "exporter.token"
        );
        assert_eq!(
            error_field(&MINIMAL.replace(
                "\"cluster\": \"plover_exporter\"",
                "\"cluster\": \"e\", \"timeout_ms\": 0"
            )),
            "exporter.timeout_ms"
        );
        assert_eq!(
            error_field(&MINIMAL.replace("\"revision\": \"v2\"", "\"revision\": \"\"")),
            "rules[1].revision"
        );
        let header_source = MINIMAL.replacen('{', "{\"sources\": [\"response_header\"],", 1);
        assert_eq!(error_field(&header_source), "response_header");
        let no_revision = MINIMAL.replace(", \"revision\": \"v1\"", "");
        assert_eq!(error_field(&no_revision), "rules[0].revision");
    }

    #[test]
    fn unknown_fields_and_bad_json_are_reported() {
        let err =
            FilterConfig::from_json(br#"{"exporter": {"cluster": "x", "token": "t", "tokn": 1}}"#)
                .unwrap_err();
        assert!(err.to_string().contains("tokn"), "{err}");
        assert!(FilterConfig::from_json(b"not json").is_err());
        assert!(FilterConfig::from_json(b"").is_err());
    }

    #[test]
    fn istio_cluster_names_are_matched() {
        let subset = ClusterMatch::IstioSubset {
            host: "app.demo.svc.cluster.local".into(),
            subset: "canary".into(),
        };
        assert!(subset.matches("outbound|80|canary|app.demo.svc.cluster.local"));
        assert!(subset.matches("outbound|8080|canary|app.demo.svc.cluster.local"));
        assert!(!subset.matches("outbound|80|stable|app.demo.svc.cluster.local"));
        let host = ClusterMatch::IstioHost("app-canary.demo.svc.cluster.local".into());
        assert!(host.matches("outbound|80||app-canary.demo.svc.cluster.local"));
        assert!(!host.matches("outbound|80|v1|app-canary.demo.svc.cluster.local"));
        assert!(!host.matches("app-canary.demo.svc.cluster.local"));
        let parsed = parse_istio_cluster("outbound|80||app.demo.svc.cluster.local").unwrap();
        assert_eq!(parsed.service_and_namespace(), Some(("app", "demo")));
        assert_eq!(parse_istio_cluster("outbound|x||a"), None);
    }

    /// The plugin configuration is what users write in `WasmPlugin.spec.pluginConfig`: each
    /// `testdata/filter-config/NAME.json` parses, and its configuration with every default
    /// filled in is pinned in `NAME.resolved.json` (`PLOVER_UPDATE_GOLDEN=1` rewrites those).
    /// A changed field name or default shows here as a diff.
    #[test]
    fn configurations_match_their_golden_files() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/filter-config");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".json") || name.ends_with(".resolved.json") {
                continue;
            }
            let config = FilterConfig::from_json(&std::fs::read(&path).unwrap())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let resolved = serde_json::to_string_pretty(&config).unwrap() + "\n";
            let golden_path = path.with_extension("resolved.json");
            if std::env::var_os("PLOVER_UPDATE_GOLDEN").is_some() {
                std::fs::write(&golden_path, &resolved).unwrap();
            }
            let golden = std::fs::read_to_string(&golden_path).unwrap_or_else(|_| {
                panic!(
                    "{} (PLOVER_UPDATE_GOLDEN=1 writes it)",
                    golden_path.display()
                )
            });
            assert_eq!(
                resolved, golden,
                "{name}: the resolved configuration changed"
            );
            // The resolved form is itself a valid configuration meaning the same.
            assert_eq!(
                FilterConfig::from_json(golden.as_bytes()).unwrap(),
                config,
                "{name}"
            );
            seen += 1;
        }
        assert!(seen >= 2, "only {seen} configurations in {dir}");
    }
}
