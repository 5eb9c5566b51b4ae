//! One HTTP stream through the filter: resolve and count it (and, in the tagging build, tag
//! it).
//!
//! The stream reaches Envoy only through [`StreamHost`], so the whole request path, including
//! the number of host calls it makes, is tested natively. Counting needs one host call, in
//! `on_log`: one evaluation of the configuration's [`Reading`] gives the cluster, the outcome,
//! the duration and whatever else is read. The header hooks do something only when the filter
//! itself tags (`tagging`, the build with per-stream callbacks); the default build does not even
//! export them, so Envoy never enters the VM for them. Nothing here can fail a request: a failed
//! read gives a default, a failed header write is ignored, and every hook lets the stream
//! continue.

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;

use plover_wire::config::RevisionSource;
use plover_wire::{ConfigError, FilterConfig};

use crate::aggregate::Aggregate;
use crate::record::{is_grpc, is_mirrored, property, Completion, Reading, Value, CONTENT_TYPE};
use crate::resolve::{ClusterResolution, Resolution, RevisionResolver};

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

/// The two compiled forms of a configuration's [`Reading::expression`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expressions {
    /// Without guards: one cheap evaluation for every request that got a response.
    pub fast: Option<ExpressionToken>,
    /// With guards: for the requests the fast form fails on.
    pub guarded: Option<ExpressionToken>,
}

/// A valid configuration and the per-VM state every stream of the VM shares. VMs are single
/// threaded; the `RefCell`s are only ever borrowed for the length of one call.
#[derive(Debug)]
pub struct Plugin {
    pub config: FilterConfig,
    resolver: RefCell<RevisionResolver>,
    aggregate: Rc<RefCell<Aggregate>>,
    /// What `on_log` reads.
    pub reading: Reading,
    tag_requests: bool,
    /// The reading compiled by this Envoy, where it could: then `on_log` makes one host call.
    expressions: Expressions,
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
            reading: Reading::new(&config),
            config,
            aggregate,
            tag_requests,
            expressions: Expressions::default(),
        })
    }

    /// Uses Envoy's compiled forms of [`Plugin::reading`] to read finished requests.
    pub fn with_expressions(mut self, expressions: Expressions) -> Plugin {
        self.expressions = expressions;
        self
    }

    /// The finished request: one evaluation where the fast form succeeds, a second (guarded)
    /// where it fails, else one read per value. An evaluation's bytes are kept in `evaluated`,
    /// which the completion borrows.
    fn completion<'b>(
        &self,
        host: &impl StreamHost,
        evaluated: &'b mut [Vec<u8>; 2],
    ) -> Completion<'b> {
        let [first, second] = evaluated;
        let Expressions { fast, guarded } = self.expressions;
        for (token, slot) in [(fast, first), (guarded, second)] {
            if let Some(bytes) = token.and_then(|token| host.evaluate(token)) {
                *slot = bytes;
                if let Some(completion) = self.reading.decode(slot) {
                    return completion;
                }
            }
        }
        self.read_properties(host)
    }

    /// The same values as the evaluation, one host call each.
    fn read_properties(&self, host: &impl StreamHost) -> Completion<'static> {
        let mut completion = Completion::default();
        let mut grpc = false;
        for value in self.reading.values() {
            match value {
                Value::Cluster => {
                    completion.cluster =
                        string_property(host, property::CLUSTER_NAME).map_or("".into(), Cow::Owned)
                }
                Value::Code => {
                    completion.code = int_property(host, property::RESPONSE_CODE).unwrap_or(0)
                }
                Value::Flags => {
                    completion.flags =
                        int_property(host, property::RESPONSE_FLAGS).map_or(0, |f| f as u64)
                }
                Value::Duration => {
                    completion.duration_ns =
                        int_property(host, property::REQUEST_DURATION).unwrap_or(0)
                }
                Value::RevisionHeader => {
                    completion.revision_header = self
                        .reading
                        .revision_header()
                        .and_then(|name| host.response_header(name))
                        .map(Cow::Owned)
                }
                Value::Route => {
                    completion.route =
                        string_property(host, property::ROUTE_NAME).map_or("".into(), Cow::Owned)
                }
                Value::Host => {
                    completion.mirrored = string_property(host, property::REQUEST_HOST)
                        .is_some_and(|h| is_mirrored(&h))
                }
                Value::RequestSize => {
                    completion.request_bytes =
                        int_property(host, property::REQUEST_TOTAL_SIZE).unwrap_or(0)
                }
                Value::ResponseSize => {
                    completion.response_bytes =
                        int_property(host, property::RESPONSE_TOTAL_SIZE).unwrap_or(0)
                }
                Value::ContentType => {
                    grpc = host
                        .response_header(CONTENT_TYPE)
                        .is_some_and(|ct| is_grpc(&ct))
                }
                // Only worth a host call for a gRPC response.
                Value::GrpcStatus if grpc => {
                    completion.grpc_status = int_property(host, property::RESPONSE_GRPC_STATUS)
                }
                Value::GrpcStatus => {}
            }
        }
        completion
    }

    fn resolve_cluster(&self, cluster: &str) -> Option<Rc<ClusterResolution>> {
        Some(
            self.resolver
                .try_borrow_mut()
                .ok()?
                .resolve_cluster(cluster),
        )
    }

    fn read_and_resolve_cluster(&self, host: &impl StreamHost) -> Option<Rc<ClusterResolution>> {
        let cluster = string_property(host, property::CLUSTER_NAME).unwrap_or_default();
        self.resolve_cluster(&cluster)
    }
}

/// One stream's state. Without a plugin (invalid configuration) it is a passthrough that makes
/// no host call at all.
#[derive(Debug)]
pub struct Stream {
    plugin: Option<Rc<Plugin>>,
    cluster: Option<Rc<ClusterResolution>>,
    resolution: Option<Rc<Resolution>>,
}

impl Stream {
    pub fn new(plugin: Option<Rc<Plugin>>) -> Stream {
        Stream {
            plugin,
            cluster: None,
            resolution: None,
        }
    }

    /// Request headers (tagging build only): the route, hence the upstream cluster, is picked
    /// by now. Tags the upstream request when the cluster names the revision.
    pub fn on_request_headers(&mut self, host: &impl StreamHost) {
        let Some(plugin) = self.plugin.as_deref().filter(|p| p.tag_requests) else {
            return;
        };
        let Some(cluster) = plugin.read_and_resolve_cluster(host) else {
            return;
        };
        if cluster.matched && !cluster.target.tag.is_empty() {
            host.set_request_header(&plugin.config.tagging.request_header, &cluster.target.tag);
        }
        self.cluster = Some(cluster);
    }

    /// Response headers (tagging build only): the revision header (if a source reads it and it
    /// can still change the answer) settles the resolution, which tags the downstream response.
    pub fn on_response_headers(&mut self, host: &impl StreamHost) {
        let Some(plugin) = self
            .plugin
            .as_deref()
            .filter(|p| !p.config.tagging.response_header.is_empty())
        else {
            return;
        };
        let Some(cluster) = self
            .cluster
            .clone()
            .or_else(|| plugin.read_and_resolve_cluster(host))
        else {
            return;
        };
        let Ok(mut resolver) = plugin.resolver.try_borrow_mut() else {
            return;
        };
        let header_revision = match plugin.reading.revision_header() {
            Some(name) if resolver.wants_response_header(&cluster) => host.response_header(name),
            _ => None,
        };
        let resolution = resolver.resolve(&cluster, header_revision.as_deref());
        drop(resolver);
        if !resolution.tag.is_empty() {
            host.set_response_header(&plugin.config.tagging.response_header, &resolution.tag);
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
        let mut evaluated = [Vec::new(), Vec::new()];
        let completion = plugin.completion(host, &mut evaluated);
        let resolution = match self.resolution.take() {
            Some(resolution) => resolution,
            None => {
                let Some(cluster) = self
                    .cluster
                    .take()
                    .or_else(|| plugin.resolve_cluster(&completion.cluster))
                else {
                    return;
                };
                let Ok(mut resolver) = plugin.resolver.try_borrow_mut() else {
                    return;
                };
                resolver.resolve(&cluster, completion.revision_header.as_deref())
            }
        };
        let Ok(mut aggregate) = plugin.aggregate.try_borrow_mut() else {
            return;
        };
        let over_limit = resolution.from_header
            && !aggregate.admit_header_revision(
                &resolution.namespace,
                &resolution.service,
                &resolution.revision,
            );
        let unknown;
        let counted_as = if over_limit {
            unknown = resolution.unknown();
            &unknown
        } else {
            &*resolution
        };
        let key = completion.series_key(counted_as);
        let sizes = plugin
            .reading
            .measures_sizes()
            .then(|| (completion.request_bytes(), completion.response_bytes()));
        aggregate.record(key, completion.duration_micros(), sizes);
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
        /// The reading of the plugin the stream runs with (what Envoy compiled).
        pub reading: RefCell<Option<Reading>>,
        /// Evaluations return bytes no decoder accepts (another Envoy's serialization).
        pub evaluation_breaks: Cell<bool>,
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
                .with_str(property::REQUEST_HOST, "app.example.com")
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

    /// The tokens the mock Envoy gave the fast and the guarded form of a reading.
    const FAST_TOKEN: ExpressionToken = 7;
    const GUARDED_TOKEN: ExpressionToken = 8;

    impl StreamHost for MockHost {
        fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
            self.call();
            self.properties.get(&path.join(".")).cloned()
        }
        /// Evaluates the reading the stream's plugin compiled over the scripted properties the
        /// way Envoy does: unguarded values fail the evaluation when missing, guarded ones
        /// default.
        fn evaluate(&self, expression: ExpressionToken) -> Option<Vec<u8>> {
            self.call();
            let guarded = match expression {
                FAST_TOKEN => false,
                GUARDED_TOKEN => true,
                _ => return None,
            };
            if self.evaluation_breaks.get() {
                return Some(b"a serialization no decoder knows".to_vec());
            }
            let reading = self.reading.borrow().clone()?;
            let get = |path: &[&str]| self.properties.get(&path.join(".")).cloned();
            let or = |path: &[&str], default: Vec<u8>| match get(path) {
                Some(value) => Some(value),
                None if guarded => Some(default),
                None => None,
            };
            let int = |v: i64| v.to_le_bytes().to_vec();
            let header = |name: &str| match self.response_headers.get(name) {
                Some(value) => Some(value.clone().into_bytes()),
                None if guarded => Some(Vec::new()),
                None => None,
            };
            let mut elements = Vec::new();
            for value in reading.values() {
                elements.push(match value {
                    Value::Cluster => or(property::CLUSTER_NAME, Vec::new())?,
                    Value::Code => or(property::RESPONSE_CODE, int(0))?,
                    Value::Flags => or(property::RESPONSE_FLAGS, int(0))?,
                    Value::Duration => or(property::REQUEST_DURATION, int(0))?,
                    Value::RevisionHeader => header(reading.revision_header().unwrap())?,
                    Value::Route => or(property::ROUTE_NAME, Vec::new())?,
                    Value::Host => or(property::REQUEST_HOST, Vec::new())?,
                    Value::RequestSize => or(property::REQUEST_TOTAL_SIZE, int(0))?,
                    Value::ResponseSize => or(property::RESPONSE_TOTAL_SIZE, int(0))?,
                    Value::ContentType => header(CONTENT_TYPE)?,
                    Value::GrpcStatus => get(property::RESPONSE_GRPC_STATUS).unwrap_or(int(-1)),
                });
            }
            Some(crate::record::tests::serialize_list(&elements))
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

    /// A plugin on an Envoy that compiled both forms of its reading (Envoy 1.40).
    fn plugin(json: &str) -> (Rc<Plugin>, Rc<RefCell<Aggregate>>) {
        let aggregate = Rc::new(RefCell::new(Aggregate::new(0)));
        let plugin = Plugin::configure(json.as_bytes(), Rc::clone(&aggregate))
            .unwrap()
            .with_expressions(Expressions {
                fast: Some(FAST_TOKEN),
                guarded: Some(GUARDED_TOKEN),
            });
        (Rc::new(plugin), aggregate)
    }

    /// A plugin on an Envoy without CEL: every value is a property read.
    fn plugin_reading_properties(json: &str) -> (Rc<Plugin>, Rc<RefCell<Aggregate>>) {
        let aggregate = Rc::new(RefCell::new(Aggregate::new(0)));
        let plugin = Plugin::configure(json.as_bytes(), Rc::clone(&aggregate)).unwrap();
        (Rc::new(plugin), aggregate)
    }

    fn run(plugin: &Rc<Plugin>, host: &MockHost) {
        host.reading.replace(Some(plugin.reading.clone()));
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

    /// `CONFIG` with further top-level fields.
    fn config_with(fields: &str) -> String {
        CONFIG.replacen('{', &format!("{{{fields},"), 1)
    }

    const TAGGING: &str = r#""tagging": {"request_header": "x-plover-revision", "response_header": "x-plover-revision"}"#;
    const RECORD_ALL: &str = r#""record": {"route": true, "sizes": true, "grpc_status": true}"#;
    const HEADER_SOURCE: &str = r#""sources": ["response_header", "cluster"], "response_header": {"name": "x-app-revision"}"#;

    #[test]
    fn a_request_is_counted_with_one_host_call_and_not_tagged() {
        let (plugin, aggregate) = plugin(CONFIG);
        let host = MockHost::request("canary", 200);
        run(&plugin, &host);
        assert_eq!(host.calls.get(), 1, "one evaluation in on_log");
        assert!(host.request_tags.borrow().is_empty() && host.response_tags.borrow().is_empty());
        let batch = flush(&aggregate);
        assert_eq!(batch.series.len(), 1);
        assert!(batch.sizes_unmeasured, "sizes are opt-in");
        let (key, delta) = &batch.series[0];
        assert_eq!(
            (
                key.namespace.as_str(),
                key.service.as_str(),
                key.route.as_str()
            ),
            ("demo", "app", ""),
            "the route is opt-in"
        );
        assert_eq!((key.role, key.revision.as_str()), (Role::Canary, "v2"));
        assert_eq!(
            (key.status_class, key.code, key.grpc_status),
            (StatusClass::Success, 200, None)
        );
        assert_eq!((delta.requests, delta.request_bytes), (1, 0));
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

    #[test]
    fn recorded_values_are_read_in_the_same_evaluation() {
        let (plugin, aggregate) = plugin(&config_with(RECORD_ALL));
        let host = MockHost::request("canary", 200)
            .with_header(CONTENT_TYPE, "application/grpc")
            .with_int(property::RESPONSE_GRPC_STATUS, 14);
        run(&plugin, &host);
        assert_eq!(host.calls.get(), 1);
        let batch = flush(&aggregate);
        assert!(!batch.sizes_unmeasured);
        let (key, delta) = &batch.series[0];
        assert_eq!(
            (key.route.as_str(), key.grpc_status),
            ("app_route", Some(14))
        );
        assert_eq!(
            (delta.requests, delta.request_bytes, delta.response_bytes),
            (1, 100, 1_000)
        );
    }

    #[test]
    fn the_tagging_build_tags_both_ways() {
        let (plugin, aggregate) = plugin(&config_with(TAGGING));
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
        assert_eq!(flush(&aggregate).series[0].0.role, Role::Canary);
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
        for (fields, expected_calls) in [
            (CONFIG.to_owned(), [5, 5, 5]),
            // Five values, route, two sizes and the content type (and the gRPC status).
            (config_with(RECORD_ALL), [9, 9, 10]),
        ] {
            let (evaluating, evaluated) = plugin(&fields);
            let (reading, read) = plugin_reading_properties(&fields);
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
            assert_eq!(calls, expected_calls);
            assert_eq!(flush(&evaluated), flush(&read));
        }
    }

    #[test]
    fn a_request_without_a_response_takes_the_guarded_form() {
        let (plugin, aggregate) = plugin(CONFIG);
        let mut host = MockHost::request("canary", 0).with_int(
            property::RESPONSE_FLAGS,
            bit::DOWNSTREAM_CONNECTION_TERMINATION as i64,
        );
        host.properties.remove(&property::RESPONSE_CODE.join("."));
        run(&plugin, &host);
        assert_eq!(
            host.calls.get(),
            2,
            "the fast form fails, the guarded one answers"
        );
        let (key, delta) = &flush(&aggregate).series[0];
        assert_eq!(
            (key.role, key.code, key.upstream_failure),
            (Role::Canary, 0, UpstreamFailure::DownstreamDisconnect)
        );
        assert_eq!(delta.requests, 1);
    }

    #[test]
    fn evaluations_that_do_not_decode_fall_back_to_reading_properties() {
        let (plugin, aggregate) = plugin(CONFIG);
        let host = MockHost::request("canary", 200);
        host.evaluation_breaks.set(true);
        run(&plugin, &host);
        // Both forms, then cluster, code, flags, duration and host.
        assert_eq!(host.calls.get(), 7);
        let (key, delta) = &flush(&aggregate).series[0];
        assert_eq!((key.role, key.code, delta.requests), (Role::Canary, 200, 1));
    }

    #[test]
    fn an_unmatched_cluster_is_counted_as_unknown_and_not_tagged() {
        let (plugin, aggregate) = plugin(&config_with(TAGGING));
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
    fn response_header_source_resolves_and_has_priority() {
        let (counting, aggregate) = plugin(&config_with(HEADER_SOURCE));
        // Envoy picked "stable", but the application (or the router) says it is v2.
        let host = MockHost::request("stable", 200).with_header("x-app-revision", "v2");
        run(&counting, &host);
        assert_eq!(host.calls.get(), 1, "the header is part of the evaluation");
        let batch = flush(&aggregate);
        assert_eq!(batch.series[0].0.role, Role::Canary);

        // Header missing: the fast form fails, the guarded one reads it as absent, and the
        // cluster source answers.
        let host = MockHost::request("stable", 200);
        run(&counting, &host);
        assert_eq!(host.calls.get(), 2);
        assert_eq!(flush(&aggregate).series[0].0.role, Role::Stable);

        // The tagging build: the request tag could only use the cluster; the response tag
        // uses the final answer.
        let (tagging, _) = plugin(&config_with(&format!("{HEADER_SOURCE}, {TAGGING}")));
        let host = MockHost::request("stable", 200).with_header("x-app-revision", "v2");
        run(&tagging, &host);
        assert_eq!(
            *host.request_tags.borrow(),
            header("x-plover-revision", "stable/v1")
        );
        assert_eq!(
            *host.response_tags.borrow(),
            header("x-plover-revision", "canary/v2")
        );
    }

    #[test]
    fn an_application_naming_many_revisions_gets_the_rest_counted_as_unknown() {
        // Issue 17, item 1: the header source must not let an application create unbounded
        // revisions.
        let (plugin, aggregate) = plugin(&config_with(HEADER_SOURCE));
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
    fn cluster_first_tagging_skips_reading_the_revision_header_when_a_rule_matched() {
        let json = config_with(&format!(
            r#""sources": ["cluster", "response_header"], "response_header": {{"name": "x-app-revision"}}, {TAGGING}"#
        ));
        let (plugin, aggregate) = plugin(&json);
        let host = MockHost::request("canary", 200).with_header("x-app-revision", "v1");
        run(&plugin, &host);
        assert_eq!(
            host.calls.get(),
            4,
            "the revision header is not read by a hook"
        );
        assert_eq!(
            *host.response_tags.borrow(),
            header("x-plover-revision", "canary/v2")
        );
        assert_eq!(flush(&aggregate).series[0].0.revision, "v2");
    }

    #[test]
    fn grpc_status_is_read_only_for_grpc_responses() {
        let (plugin, aggregate) =
            plugin_reading_properties(&config_with(r#""record": {"grpc_status": true}"#));
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
