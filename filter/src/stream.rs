//! One HTTP stream through the filter: resolve, tag, and count it.
//!
//! The stream reaches Envoy only through [`StreamHost`], so the whole request path, including
//! the number of host calls it makes, is tested natively. Each hook reads each property at
//! most once, and nothing here can fail a request: a failed read gives a default, a failed
//! header write is ignored, and every hook lets the stream continue.

use std::cell::RefCell;
use std::rc::Rc;

use plover_wire::config::RevisionSource;
use plover_wire::{ConfigError, FilterConfig};

use crate::aggregate::Aggregate;
use crate::record::{is_grpc, Completion};
use crate::resolve::{ClusterResolution, Resolution, RevisionResolver};

/// Envoy attribute paths the filter reads (Envoy 1.40 names; the pre-1.25 top-level names such
/// as `cluster_name` are gone since 1.33).
pub mod property {
    pub const CLUSTER_NAME: &[&str] = &["xds", "cluster_name"];
    pub const ROUTE_NAME: &[&str] = &["xds", "route_name"];
    pub const NODE_ID: &[&str] = &["xds", "node", "id"];
    pub const RESPONSE_CODE: &[&str] = &["response", "code"];
    pub const RESPONSE_FLAGS: &[&str] = &["response", "flags"];
    pub const RESPONSE_GRPC_STATUS: &[&str] = &["response", "grpc_status"];
    pub const REQUEST_DURATION: &[&str] = &["request", "duration"];
    pub const REQUEST_TOTAL_SIZE: &[&str] = &["request", "total_size"];
    pub const RESPONSE_TOTAL_SIZE: &[&str] = &["response", "total_size"];
}

const CONTENT_TYPE: &str = "content-type";

/// Envoy's handle for a compiled CEL expression (`expr_create`).
pub type ExpressionToken = u32;

/// What a stream needs from the proxy.
pub trait StreamHost {
    /// A property's raw bytes; `None` when absent or unreadable.
    fn property(&self, path: &[&str]) -> Option<Vec<u8>>;
    /// The serialized value of a compiled expression for this stream; `None` when evaluation
    /// failed.
    fn evaluate(&self, expression: ExpressionToken) -> Option<Vec<u8>>;
    fn response_header(&self, name: &str) -> Option<String>;
    fn set_request_header(&self, name: &str, value: &str);
    fn set_response_header(&self, name: &str, value: &str);
}

/// A string property (Envoy serializes strings as their raw bytes).
pub fn string_property(host: &impl StreamHost, path: &[&str]) -> Option<String> {
    host.property(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// An integer property (Envoy serializes int64, uint64, durations and timestamps as 8 bytes,
/// little-endian; durations and timestamps in nanoseconds).
pub fn int_property(host: &impl StreamHost, path: &[&str]) -> Option<i64> {
    let bytes = host.property(path)?;
    <[u8; 8]>::try_from(bytes.as_slice())
        .ok()
        .map(i64::from_le_bytes)
}

/// A valid configuration and the per-VM state every stream of the VM shares. VMs are single
/// threaded; the `RefCell`s are only ever borrowed for the length of one call.
#[derive(Debug)]
pub struct Plugin {
    pub config: FilterConfig,
    resolver: RefCell<RevisionResolver>,
    aggregate: Rc<RefCell<Aggregate>>,
    tag_requests: bool,
    /// [`crate::record::COMPLETION_EXPRESSION`] compiled by this Envoy, if it could: then
    /// `on_log` makes one host call instead of six or seven.
    completion_expression: Option<ExpressionToken>,
}

impl Plugin {
    /// Parses the plugin configuration. Streams count into `aggregate`, which the root context
    /// owns so that it outlives a reconfiguration.
    pub fn configure(
        json: &[u8],
        aggregate: Rc<RefCell<Aggregate>>,
    ) -> Result<Plugin, ConfigError> {
        let config = FilterConfig::from_json(json)?;
        let tag_requests = !config.tagging.request_header.is_empty()
            && config.sources.contains(&RevisionSource::Cluster);
        Ok(Plugin {
            resolver: RefCell::new(RevisionResolver::new(&config)),
            config,
            aggregate,
            tag_requests,
            completion_expression: None,
        })
    }

    /// Uses Envoy's compiled [`crate::record::COMPLETION_EXPRESSION`] to read finished requests.
    pub fn with_completion_expression(mut self, token: Option<ExpressionToken>) -> Plugin {
        self.completion_expression = token;
        self
    }

    /// The finished request: one evaluation where the expression is available and its result
    /// decodes, else one read per property.
    fn completion(&self, host: &impl StreamHost, grpc: bool) -> Completion {
        if let Some(completion) = self
            .completion_expression
            .and_then(|token| host.evaluate(token))
            .and_then(|bytes| Completion::from_evaluated(&bytes))
        {
            return completion;
        }
        let grpc = grpc
            || (self.completion_expression.is_some()
                && host
                    .response_header(CONTENT_TYPE)
                    .is_some_and(|ct| is_grpc(&ct)));
        Completion {
            code: int_property(host, property::RESPONSE_CODE).unwrap_or(0),
            flags: int_property(host, property::RESPONSE_FLAGS).map_or(0, |f| f as u64),
            duration_ns: int_property(host, property::REQUEST_DURATION).unwrap_or(0),
            request_bytes: int_property(host, property::REQUEST_TOTAL_SIZE).unwrap_or(0),
            response_bytes: int_property(host, property::RESPONSE_TOTAL_SIZE).unwrap_or(0),
            grpc_status: if grpc {
                int_property(host, property::RESPONSE_GRPC_STATUS)
            } else {
                None
            },
            route: string_property(host, property::ROUTE_NAME).unwrap_or_default(),
        }
    }

    fn resolve_cluster(&self, host: &impl StreamHost) -> Option<Rc<ClusterResolution>> {
        let cluster = string_property(host, property::CLUSTER_NAME).unwrap_or_default();
        Some(
            self.resolver
                .try_borrow_mut()
                .ok()?
                .resolve_cluster(&cluster),
        )
    }
}

/// One stream's state. Without a plugin (invalid configuration) it is a passthrough that makes
/// no host call at all.
#[derive(Debug)]
pub struct Stream {
    plugin: Option<Rc<Plugin>>,
    cluster: Option<Rc<ClusterResolution>>,
    resolution: Option<Rc<Resolution>>,
    grpc: bool,
}

impl Stream {
    pub fn new(plugin: Option<Rc<Plugin>>) -> Stream {
        Stream {
            plugin,
            cluster: None,
            resolution: None,
            grpc: false,
        }
    }

    /// Request headers: the route, hence the upstream cluster, is picked by now. Tags the
    /// upstream request when the cluster names the revision.
    pub fn on_request_headers(&mut self, host: &impl StreamHost) {
        let Some(plugin) = self.plugin.as_deref() else {
            return;
        };
        let Some(cluster) = plugin.resolve_cluster(host) else {
            return;
        };
        if plugin.tag_requests && cluster.matched && !cluster.target.tag.is_empty() {
            host.set_request_header(&plugin.config.tagging.request_header, &cluster.target.tag);
        }
        self.cluster = Some(cluster);
    }

    /// Response headers: the application's revision header (if configured and still able to
    /// change the answer) settles the resolution, which tags the downstream response.
    pub fn on_response_headers(&mut self, host: &impl StreamHost) {
        let Some(plugin) = self.plugin.as_deref() else {
            return;
        };
        let Some(cluster) = self
            .cluster
            .clone()
            .or_else(|| plugin.resolve_cluster(host))
        else {
            return;
        };
        // With the completion expression, `on_log` reads the content type along with the rest.
        if plugin.completion_expression.is_none() {
            self.grpc = host
                .response_header(CONTENT_TYPE)
                .is_some_and(|ct| is_grpc(&ct));
        }
        let Ok(mut resolver) = plugin.resolver.try_borrow_mut() else {
            return;
        };
        let header_revision = match &plugin.config.response_header {
            Some(source) if resolver.wants_response_header(&cluster) => {
                host.response_header(&source.name)
            }
            _ => None,
        };
        let resolution = resolver.resolve(&cluster, header_revision.as_deref());
        drop(resolver);
        let tag_header = &plugin.config.tagging.response_header;
        if !tag_header.is_empty() && !resolution.tag.is_empty() {
            host.set_response_header(tag_header, &resolution.tag);
        }
        self.cluster = Some(cluster);
        self.resolution = Some(resolution);
    }

    /// The stream is done: count it. Runs for every stream, including ones that never got a
    /// response (the client left, the upstream never answered).
    pub fn on_log(&mut self, host: &impl StreamHost) {
        let Some(plugin) = self.plugin.as_deref() else {
            return;
        };
        let resolution = match self.resolution.take() {
            Some(resolution) => resolution,
            None => {
                let Some(cluster) = self.cluster.take().or_else(|| plugin.resolve_cluster(host))
                else {
                    return;
                };
                let Ok(mut resolver) = plugin.resolver.try_borrow_mut() else {
                    return;
                };
                resolver.resolve(&cluster, None)
            }
        };
        let completion = plugin.completion(host, self.grpc);
        if let Ok(mut aggregate) = plugin.aggregate.try_borrow_mut() {
            let over_limit = resolution.from_header
                && !aggregate.admit_header_revision(
                    &resolution.namespace,
                    &resolution.service,
                    &resolution.revision,
                );
            let key = if over_limit {
                completion.series_key(&resolution.unknown())
            } else {
                completion.series_key(&resolution)
            };
            aggregate.record(
                key,
                completion.duration_micros(),
                completion.request_bytes(),
                completion.response_bytes(),
            );
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::flags::bit;
    use plover_wire::{Batch, Role, StatusClass, UpstreamFailure};
    use std::cell::Cell;
    use std::collections::HashMap;

    /// A scripted Envoy: properties and response headers in, header writes and a call count
    /// out.
    #[derive(Default)]
    pub(crate) struct MockHost {
        pub properties: HashMap<String, Vec<u8>>,
        pub response_headers: HashMap<String, String>,
        pub request_tags: RefCell<Vec<(String, String)>>,
        pub response_tags: RefCell<Vec<(String, String)>>,
        pub calls: Cell<usize>,
    }

    impl MockHost {
        pub fn with_str(mut self, path: &[&str], value: &str) -> Self {
            self.properties
                .insert(path.join("."), value.as_bytes().to_vec());
            self
        }
        pub fn with_int(mut self, path: &[&str], value: i64) -> Self {
            self.properties
                .insert(path.join("."), value.to_le_bytes().to_vec());
            self
        }
        pub fn with_header(mut self, name: &str, value: &str) -> Self {
            self.response_headers.insert(name.into(), value.into());
            self
        }
        /// A finished plain-HTTP request that `cluster` answered with `code`.
        pub fn request(cluster: &str, code: i64) -> Self {
            MockHost::default()
                .with_str(property::CLUSTER_NAME, cluster)
                .with_str(property::ROUTE_NAME, "app_route")
                .with_int(property::RESPONSE_CODE, code)
                .with_int(property::RESPONSE_FLAGS, 0)
                .with_int(property::REQUEST_DURATION, 2_500_000)
                .with_int(property::REQUEST_TOTAL_SIZE, 100)
                .with_int(property::RESPONSE_TOTAL_SIZE, 1_000)
                .with_int(property::RESPONSE_GRPC_STATUS, 2)
                .with_header(CONTENT_TYPE, "text/plain")
        }
        fn call(&self) {
            self.calls.set(self.calls.get() + 1);
        }
    }

    /// The token the mock Envoy gave [`crate::record::COMPLETION_EXPRESSION`].
    const COMPLETION_TOKEN: ExpressionToken = 7;

    impl StreamHost for MockHost {
        fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
            self.call();
            self.properties.get(&path.join(".")).cloned()
        }
        /// Evaluates the completion expression over the scripted properties the way Envoy
        /// does: guarded values default, any other missing value fails the evaluation.
        fn evaluate(&self, expression: ExpressionToken) -> Option<Vec<u8>> {
            self.call();
            if expression != COMPLETION_TOKEN {
                return None;
            }
            let get = |path: &[&str]| self.properties.get(&path.join(".")).cloned();
            let int_or = |path: &[&str], default: i64| {
                get(path).unwrap_or_else(|| default.to_le_bytes().to_vec())
            };
            let content_type = self
                .response_headers
                .get(CONTENT_TYPE)
                .cloned()
                .unwrap_or_default();
            Some(crate::record::tests::serialize_list(&[
                int_or(property::RESPONSE_CODE, 0),
                get(property::RESPONSE_FLAGS)?,
                get(property::REQUEST_DURATION)?,
                get(property::REQUEST_TOTAL_SIZE)?,
                get(property::RESPONSE_TOTAL_SIZE)?,
                get(property::ROUTE_NAME)?,
                content_type.into_bytes(),
                int_or(property::RESPONSE_GRPC_STATUS, -1),
            ]))
        }
        fn response_header(&self, name: &str) -> Option<String> {
            self.call();
            self.response_headers.get(name).cloned()
        }
        fn set_request_header(&self, name: &str, value: &str) {
            self.call();
            self.request_tags
                .borrow_mut()
                .push((name.into(), value.into()));
        }
        fn set_response_header(&self, name: &str, value: &str) {
            self.call();
            self.response_tags
                .borrow_mut()
                .push((name.into(), value.into()));
        }
    }

    pub(crate) const CONFIG: &str = r#"{
        "exporter": {"cluster": "exporter", "token": "secret"},
        "rules": [
            {"match": {"exact": "stable"}, "namespace": "demo", "service": "app", "role": "stable", "revision": "v1"},
            {"match": {"exact": "canary"}, "namespace": "demo", "service": "app", "role": "canary", "revision": "v2"}
        ]
    }"#;

    /// A plugin on an Envoy that compiled the completion expression (Envoy 1.40).
    fn plugin(json: &str) -> (Rc<Plugin>, Rc<RefCell<Aggregate>>) {
        let aggregate = Rc::new(RefCell::new(Aggregate::new(0)));
        let plugin = Plugin::configure(json.as_bytes(), Rc::clone(&aggregate))
            .unwrap()
            .with_completion_expression(Some(COMPLETION_TOKEN));
        (Rc::new(plugin), aggregate)
    }

    /// A plugin on an Envoy without CEL: every value is a property read.
    fn plugin_reading_properties(json: &str) -> (Rc<Plugin>, Rc<RefCell<Aggregate>>) {
        let aggregate = Rc::new(RefCell::new(Aggregate::new(0)));
        let plugin = Plugin::configure(json.as_bytes(), Rc::clone(&aggregate)).unwrap();
        (Rc::new(plugin), aggregate)
    }

    fn run(plugin: &Rc<Plugin>, host: &MockHost) {
        let mut stream = Stream::new(Some(Rc::clone(plugin)));
        stream.on_request_headers(host);
        stream.on_response_headers(host);
        stream.on_log(host);
    }

    fn flush(aggregate: &Rc<RefCell<Aggregate>>) -> Batch {
        aggregate.borrow_mut().take_batch(1_000)
    }

    fn header(name: &str, value: &str) -> Vec<(String, String)> {
        vec![(name.into(), value.into())]
    }

    #[test]
    fn a_canary_request_is_tagged_both_ways_and_counted() {
        let (plugin, aggregate) = plugin(CONFIG);
        let host = MockHost::request("canary", 200);
        run(&plugin, &host);
        assert_eq!(
            *host.request_tags.borrow(),
            header("x-plover-revision", "canary/v2")
        );
        assert_eq!(
            *host.response_tags.borrow(),
            header("x-plover-revision", "canary/v2")
        );
        // cluster + request tag; response tag; one evaluation in on_log.
        assert_eq!(host.calls.get(), 4);

        let batch = flush(&aggregate);
        assert_eq!(batch.series.len(), 1);
        let (key, delta) = &batch.series[0];
        assert_eq!(
            (
                key.namespace.as_str(),
                key.service.as_str(),
                key.route.as_str()
            ),
            ("demo", "app", "app_route")
        );
        assert_eq!((key.role, key.revision.as_str()), (Role::Canary, "v2"));
        assert_eq!(
            (key.status_class, key.code, key.grpc_status),
            (StatusClass::Success, 200, None)
        );
        assert_eq!(
            (delta.requests, delta.request_bytes, delta.response_bytes),
            (1, 100, 1_000)
        );
        // 2.5 ms in µs, within the histogram's 1% precision.
        assert!(
            delta
                .duration
                .max()
                .is_some_and(|us| (2_500..2_525).contains(&us)),
            "{:?}",
            delta.duration.max()
        );
    }

    /// Without CEL in Envoy every value is its own read, and the batch is the same.
    #[test]
    fn reading_properties_one_by_one_counts_the_same() {
        let hosts = || {
            [
                MockHost::request("canary", 200),
                MockHost::request("stable", 503).with_int(
                    property::RESPONSE_FLAGS,
                    bit::UPSTREAM_REQUEST_TIMEOUT as i64,
                ),
                MockHost::request("canary", 200)
                    .with_header(CONTENT_TYPE, "application/grpc")
                    .with_int(property::RESPONSE_GRPC_STATUS, 14),
            ]
        };
        let (evaluating, evaluated) = plugin(CONFIG);
        let (reading, read) = plugin_reading_properties(CONFIG);
        for host in hosts() {
            run(&evaluating, &host);
        }
        let calls: Vec<usize> = hosts()
            .iter()
            .map(|host| {
                run(&reading, host);
                host.calls.get()
            })
            .collect();
        // cluster + request tag; content-type + response tag; six properties (seven for gRPC).
        assert_eq!(calls, [10, 10, 11]);
        assert_eq!(flush(&evaluated), flush(&read));
    }

    #[test]
    fn a_failed_evaluation_falls_back_to_reading_properties() {
        let (plugin, aggregate) = plugin(CONFIG);
        // Envoy fails the evaluation when an unguarded value is missing (here the route);
        // the stream then reads each property, content type included.
        let mut host = MockHost::request("canary", 200)
            .with_header(CONTENT_TYPE, "application/grpc")
            .with_int(property::RESPONSE_GRPC_STATUS, 4);
        host.properties.remove(&property::ROUTE_NAME.join("."));
        run(&plugin, &host);
        // 3 as usual, the failed evaluation, content-type, six properties and the gRPC status.
        assert_eq!(host.calls.get(), 12);
        let batch = flush(&aggregate);
        let (key, delta) = &batch.series[0];
        assert_eq!(
            (key.role, key.code, key.grpc_status, key.route.as_str()),
            (Role::Canary, 200, Some(4), "")
        );
        assert_eq!(delta.requests, 1);
    }

    #[test]
    fn an_unmatched_cluster_is_counted_as_unknown_and_not_tagged() {
        let (plugin, aggregate) = plugin(CONFIG);
        let host = MockHost::request("outbound|80||other.shop.svc.cluster.local", 404);
        run(&plugin, &host);
        assert!(host.request_tags.borrow().is_empty());
        assert!(host.response_tags.borrow().is_empty());
        let batch = flush(&aggregate);
        let (key, _) = &batch.series[0];
        assert_eq!(
            (key.namespace.as_str(), key.service.as_str()),
            ("shop", "other")
        );
        assert_eq!(
            (key.role, key.revision.as_str(), key.code),
            (Role::Unknown, "", 404)
        );
    }

    #[test]
    fn invalid_config_is_refused_with_the_field_and_streams_pass_through_untouched() {
        let aggregate = Rc::new(RefCell::new(Aggregate::new(0)));
        let err = Plugin::configure(
            br#"{"exporter": {"cluster": "", "token": "t"}}"#,
            Rc::clone(&aggregate),
        )
        .unwrap_err();
        assert!(err.to_string().contains("exporter.cluster"), "{err}");
        assert!(Plugin::configure(b"{not json", Rc::clone(&aggregate)).is_err());

        let host = MockHost::request("canary", 200);
        let mut stream = Stream::new(None);
        stream.on_request_headers(&host);
        stream.on_response_headers(&host);
        stream.on_log(&host);
        assert_eq!(
            host.calls.get(),
            0,
            "a passthrough stream makes no host call"
        );
        assert!(aggregate.borrow().is_empty());
    }

    #[test]
    fn tagging_can_be_turned_off() {
        let json = CONFIG.replacen(
            '{',
            r#"{"tagging": {"request_header": "", "response_header": ""},"#,
            1,
        );
        let (plugin, aggregate) = plugin(&json);
        let host = MockHost::request("stable", 200);
        run(&plugin, &host);
        assert!(host.request_tags.borrow().is_empty() && host.response_tags.borrow().is_empty());
        assert_eq!(host.calls.get(), 2, "the cluster and one evaluation");
        assert_eq!(flush(&aggregate).requests(), 1);
    }

    #[test]
    fn response_header_source_resolves_and_has_priority() {
        let json = CONFIG.replacen(
            '{',
            r#"{"sources": ["response_header", "cluster"], "response_header": {"name": "x-app-revision"},"#,
            1,
        );
        let (plugin, aggregate) = plugin(&json);
        // Envoy picked "stable", but the application says it is v2.
        let host = MockHost::request("stable", 200).with_header("x-app-revision", "v2");
        run(&plugin, &host);
        // The request tag could only use the cluster; the response tag uses the final answer.
        assert_eq!(
            *host.request_tags.borrow(),
            header("x-plover-revision", "stable/v1")
        );
        assert_eq!(
            *host.response_tags.borrow(),
            header("x-plover-revision", "canary/v2")
        );
        let batch = flush(&aggregate);
        assert_eq!(batch.series[0].0.role, Role::Canary);

        // Header missing: the cluster source answers.
        let host = MockHost::request("stable", 200);
        run(&plugin, &host);
        assert_eq!(flush(&aggregate).series[0].0.role, Role::Stable);
    }

    #[test]
    fn an_application_naming_many_revisions_gets_the_rest_counted_as_unknown() {
        // Issue 17, item 1: the header source must not let an application create unbounded
        // revisions.
        let json = CONFIG.replacen(
            '{',
            r#"{"sources": ["response_header", "cluster"], "response_header": {"name": "x-app-revision"},"#,
            1,
        );
        let (plugin, aggregate) = plugin(&json);
        let limit = crate::aggregate::MAX_HEADER_REVISIONS_PER_SERVICE;
        for i in 0..limit + 4 {
            let host =
                MockHost::request("unmatched", 200).with_header("x-app-revision", &format!("r{i}"));
            run(&plugin, &host);
        }
        let batch = flush(&aggregate);
        let named = batch.series.iter().filter(|(k, _)| !k.revision.is_empty());
        assert_eq!(named.count(), limit);
        let unknown: Vec<_> = batch
            .series
            .iter()
            .filter(|(k, _)| k.revision.is_empty())
            .collect();
        assert_eq!(unknown.len(), 1);
        assert_eq!(
            (unknown[0].0.role, unknown[0].1.requests),
            (Role::Unknown, 4)
        );
    }

    #[test]
    fn cluster_first_skips_reading_the_revision_header_when_a_rule_matched() {
        let json = CONFIG.replacen(
            '{',
            r#"{"sources": ["cluster", "response_header"], "response_header": {"name": "x-app-revision"},"#,
            1,
        );
        let (plugin, _) = plugin(&json);
        let host = MockHost::request("canary", 200).with_header("x-app-revision", "v1");
        run(&plugin, &host);
        assert_eq!(host.calls.get(), 4, "the revision header is not read");
        assert_eq!(
            *host.response_tags.borrow(),
            header("x-plover-revision", "canary/v2")
        );
    }

    #[test]
    fn grpc_status_is_read_only_for_grpc_responses() {
        let (plugin, aggregate) = plugin_reading_properties(CONFIG);
        let plain = MockHost::request("canary", 200);
        run(&plugin, &plain);
        let grpc = MockHost::request("canary", 200)
            .with_header(CONTENT_TYPE, "application/grpc")
            .with_int(property::RESPONSE_GRPC_STATUS, 14);
        run(&plugin, &grpc);
        assert_eq!(grpc.calls.get(), plain.calls.get() + 1);
        let statuses: Vec<_> = flush(&aggregate)
            .series
            .iter()
            .map(|(k, _)| k.grpc_status)
            .collect();
        assert_eq!(statuses, [None, Some(14)]);
    }

    #[test]
    fn upstream_failures_are_no_response_with_their_cause() {
        let (plugin, aggregate) = plugin(CONFIG);
        let host = MockHost::request("canary", 503).with_int(
            property::RESPONSE_FLAGS,
            bit::UPSTREAM_CONNECTION_FAILURE as i64,
        );
        run(&plugin, &host);
        let (key, _) = &flush(&aggregate).series[0];
        assert_eq!(
            (key.status_class, key.code, key.upstream_failure),
            (
                StatusClass::NoResponse,
                503,
                UpstreamFailure::ConnectFailure
            )
        );
        assert_eq!(key.role, Role::Canary);
    }

    #[test]
    fn a_stream_without_response_headers_is_still_counted() {
        let (plugin, aggregate) = plugin(CONFIG);
        let host = MockHost::request("canary", 0).with_int(
            property::RESPONSE_FLAGS,
            bit::DOWNSTREAM_CONNECTION_TERMINATION as i64,
        );
        let mut stream = Stream::new(Some(Rc::clone(&plugin)));
        stream.on_request_headers(&host);
        stream.on_log(&host);
        let (key, _) = &flush(&aggregate).series[0];
        assert_eq!(
            (key.role, key.upstream_failure, key.code),
            (Role::Canary, UpstreamFailure::DownstreamDisconnect, 0)
        );
    }

    #[test]
    fn failed_property_reads_give_defaults_and_the_request_still_counts() {
        let (plugin, aggregate) = plugin_reading_properties(CONFIG);
        let host = MockHost::default()
            .with_int(property::RESPONSE_CODE, 200)
            .with_str(property::REQUEST_DURATION, "garbage");
        run(&plugin, &host);
        let batch = flush(&aggregate);
        let (key, delta) = &batch.series[0];
        assert_eq!(
            (key.service.as_str(), key.role, key.route.as_str(), key.code),
            ("", Role::Unknown, "", 200)
        );
        assert_eq!((delta.requests, delta.request_bytes), (1, 0));
    }

    #[test]
    fn property_decoding() {
        let host = MockHost::default()
            .with_int(&["a"], -7)
            .with_str(&["s"], "x")
            .with_str(&["short"], "1234");
        assert_eq!(int_property(&host, &["a"]), Some(-7));
        assert_eq!(int_property(&host, &["short"]), None);
        assert_eq!(int_property(&host, &["missing"]), None);
        assert_eq!(string_property(&host, &["s"]).as_deref(), Some("x"));
    }
}
