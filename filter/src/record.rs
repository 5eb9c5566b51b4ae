//! One finished request, as Envoy reports it in `on_log`, and the series it is counted in.
//!
//! Each host call costs the V8 runtime thousands of instructions, far more than the filter's own
//! work, so `on_log` asks Envoy for everything at once: one CEL list ([`Reading::expression`],
//! compiled once per configuration through Envoy's `expr_create` foreign function) evaluated per
//! request, whose result [`Reading::decode`] turns into a [`Completion`]. The list holds only the
//! values this configuration uses: the four the judges need (upstream cluster, response code,
//! response flags, duration), the revision header when a source reads it, and the opt-in
//! `record` values (route, sizes, gRPC status).
//!
//! The fast form leaves out every `has()` guard (each costs about 1.7k instructions); when a
//! value is missing (no response was sent, no route matched, no revision header) its evaluation
//! fails and the guarded form, compiled beside it, answers instead. Where Envoy cannot compile either (built
//! without the CEL parser) or both fail, the stream reads the properties one by one; every path
//! gives the same [`Completion`].

use std::borrow::Cow;

use plover_wire::config::RevisionSource;
use plover_wire::{FilterConfig, Role, SeriesKeyRef, StatusClass, UpstreamFailure};

use crate::flags;
use crate::resolve::Resolution;

/// What the host says about a finished request. Every field has a default for the case where
/// the property could not be read, so a failed read never loses the request. Strings borrow from
/// the evaluated bytes where they can: counting a request allocates nothing once its series
/// exists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Completion<'a> {
    /// `xds.cluster_name`: the upstream cluster Envoy picked, empty when none (no route).
    pub cluster: Cow<'a, str>,
    /// `response.code`: the status sent downstream, 0 if none was sent.
    pub code: i64,
    /// `response.flags`.
    pub flags: u64,
    /// `request.duration` in nanoseconds.
    pub duration_ns: i64,
    /// The application's (or the router's) revision header, when a source reads it.
    pub revision_header: Option<Cow<'a, str>>,
    /// `request.total_size` (headers and body); 0 unless `record.sizes`.
    pub request_bytes: i64,
    /// `response.total_size`; 0 unless `record.sizes`.
    pub response_bytes: i64,
    /// `response.grpc_status`, kept only when the response was gRPC and `record.grpc_status`.
    pub grpc_status: Option<i64>,
    /// `xds.route_name`: the name of the route Envoy matched (empty when unnamed, or unless
    /// `record.route`).
    pub route: Cow<'a, str>,
    /// The request is a copy another proxy's route mirrored here (see [`is_mirrored`]).
    pub mirrored: bool,
}

/// What Envoy (and so Istio) appends to the host of a mirrored request.
pub const MIRROR_HOST_SUFFIX: &str = "-shadow";

/// Whether `request.host` is that of a mirrored copy (`app-shadow`, `app-shadow:8080`): its
/// answer was dropped by the proxy that mirrored it, so it is counted with role `mirror`, never
/// as the revision's traffic.
pub fn is_mirrored(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    name.ends_with(MIRROR_HOST_SUFFIX)
}

/// One value read from a finished request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value {
    Cluster,
    Code,
    Flags,
    Duration,
    RevisionHeader,
    Route,
    RequestSize,
    ResponseSize,
    ContentType,
    GrpcStatus,
    /// `request.host`, only to tell mirrored copies apart.
    Host,
}

/// Envoy attribute paths the filter reads (Envoy 1.40 names; the pre-1.25 top-level names such
/// as `cluster_name` are gone since 1.33).
pub mod property {
    pub const CLUSTER_NAME: &[&str] = &["xds", "cluster_name"];
    pub const ROUTE_NAME: &[&str] = &["xds", "route_name"];
    pub const NODE_ID: &[&str] = &["xds", "node", "id"];
    pub const REQUEST_HOST: &[&str] = &["request", "host"];
    pub const RESPONSE_CODE: &[&str] = &["response", "code"];
    pub const RESPONSE_FLAGS: &[&str] = &["response", "flags"];
    pub const RESPONSE_GRPC_STATUS: &[&str] = &["response", "grpc_status"];
    pub const REQUEST_DURATION: &[&str] = &["request", "duration"];
    pub const REQUEST_TOTAL_SIZE: &[&str] = &["request", "total_size"];
    pub const RESPONSE_TOTAL_SIZE: &[&str] = &["response", "total_size"];
}

/// Response header naming the content type (gRPC responses are told apart by it).
pub const CONTENT_TYPE: &str = "content-type";

/// What `on_log` reads for one configuration, in the order of the evaluated list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reading {
    values: Vec<Value>,
    /// The header a revision source reads (`response_header.name`).
    revision_header: Option<String>,
}

impl Reading {
    pub fn new(config: &FilterConfig) -> Reading {
        let mut values = vec![Value::Cluster, Value::Code, Value::Flags, Value::Duration];
        if config.record.mirrored {
            values.push(Value::Host);
        }
        let revision_header = config
            .response_header
            .as_ref()
            .filter(|_| config.sources.contains(&RevisionSource::ResponseHeader))
            .map(|source| source.name.clone());
        if revision_header.is_some() {
            values.push(Value::RevisionHeader);
        }
        if config.record.route {
            values.push(Value::Route);
        }
        if config.record.sizes {
            values.extend([Value::RequestSize, Value::ResponseSize]);
        }
        if config.record.grpc_status {
            values.extend([Value::ContentType, Value::GrpcStatus]);
        }
        Reading {
            values,
            revision_header,
        }
    }

    /// The values read, in list order.
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// The header a revision source reads, if any.
    pub fn revision_header(&self) -> Option<&str> {
        self.revision_header.as_deref()
    }

    /// Whether sizes are read (else batches say they were not measured).
    pub fn measures_sizes(&self) -> bool {
        self.values.contains(&Value::RequestSize)
    }

    /// The CEL list Envoy evaluates per finished request. `guarded`: every value that can be
    /// absent gets a default (`has(…) ? … : default`), so the evaluation succeeds for requests
    /// without a response or a route; unguarded, it is cheaper and fails on those.
    pub fn expression(&self, guarded: bool) -> String {
        let header = |name: &str| {
            // Header names were validated as lower-case letters, digits, '-' and '_'. The
            // guard (`in`, then the lookup) costs about as much as a second lookup.
            if guarded {
                format!("'{name}' in response.headers ? response.headers['{name}'] : ''")
            } else {
                format!("response.headers['{name}']")
            }
        };
        let guard = |value: &str, default: &str| {
            if guarded {
                format!("has({value}) ? {value} : {default}")
            } else {
                value.to_owned()
            }
        };
        let items: Vec<String> = self
            .values
            .iter()
            .map(|value| match value {
                Value::Cluster => guard("xds.cluster_name", "''"),
                Value::Code => guard("response.code", "0"),
                Value::Flags => guard("response.flags", "0"),
                Value::Duration => guard("request.duration", "duration('0s')"),
                Value::RevisionHeader => {
                    header(self.revision_header.as_deref().unwrap_or_default())
                }
                Value::Route => guard("xds.route_name", "''"),
                Value::Host => guard("request.host", "''"),
                Value::RequestSize => guard("request.total_size", "0"),
                Value::ResponseSize => guard("response.total_size", "0"),
                Value::ContentType => header(CONTENT_TYPE),
                // Absent for every non-gRPC response: always guarded.
                Value::GrpcStatus => "has(response.grpc_status) ? response.grpc_status : -1".into(),
            })
            .collect();
        format!("[{}]", items.join(", "))
    }

    /// Decodes the value of [`Reading::expression`] as Envoy serializes a CEL list for
    /// proxy-wasm: the element count (u32 LE), then per element its length and a zero (two u32
    /// LE, the header-map pair layout with empty values), then per element its bytes followed by
    /// two NULs. Integers and durations are 8 bytes LE (durations in nanoseconds), strings their
    /// raw bytes. `None` when the bytes are not exactly that (another Envoy version's
    /// serialization, say): the caller then reads the properties one by one.
    pub fn decode<'b>(&self, bytes: &'b [u8]) -> Option<Completion<'b>> {
        let mut completion = Completion::default();
        let mut content_type = "";
        let mut grpc_status = -1;
        for (value, element) in self
            .values
            .iter()
            .zip(ListElements::new(bytes, self.values.len())?)
        {
            let element = element?;
            let int = || <[u8; 8]>::try_from(element).ok().map(i64::from_le_bytes);
            let text = || std::str::from_utf8(element).ok();
            match value {
                Value::Cluster => completion.cluster = Cow::Borrowed(text()?),
                Value::Code => completion.code = int()?,
                Value::Flags => completion.flags = int()? as u64,
                Value::Duration => completion.duration_ns = int()?,
                Value::RevisionHeader => {
                    completion.revision_header =
                        Some(Cow::Borrowed(text()?)).filter(|h| !h.is_empty())
                }
                Value::Route => completion.route = Cow::Borrowed(text()?),
                Value::Host => completion.mirrored = is_mirrored(text()?),
                Value::RequestSize => completion.request_bytes = int()?,
                Value::ResponseSize => completion.response_bytes = int()?,
                Value::ContentType => content_type = text()?,
                Value::GrpcStatus => grpc_status = int()?,
            }
        }
        completion.grpc_status = (is_grpc(content_type) && grpc_status >= 0).then_some(grpc_status);
        Some(completion)
    }
}

impl Completion<'_> {
    /// How the request ended: an upstream HTTP status, or no upstream response and why.
    pub fn outcome(&self) -> (StatusClass, u16, UpstreamFailure) {
        let code = u16::try_from(self.code)
            .ok()
            .filter(|c| *c <= 999)
            .unwrap_or(0);
        let failure = flags::upstream_failure(self.flags);
        if failure != UpstreamFailure::None {
            return (StatusClass::NoResponse, code, failure);
        }
        if code == 0 {
            // No code and no flag naming a cause: nothing was sent downstream.
            return (StatusClass::NoResponse, 0, UpstreamFailure::Other);
        }
        (StatusClass::of_code(code), code, UpstreamFailure::None)
    }

    /// The series this request is counted in.
    pub fn series_key<'k>(&'k self, resolution: &'k Resolution) -> SeriesKeyRef<'k> {
        let (status_class, code, upstream_failure) = self.outcome();
        SeriesKeyRef {
            namespace: &resolution.namespace,
            service: &resolution.service,
            route: &self.route,
            revision: &resolution.revision,
            role: if self.mirrored {
                Role::Mirror
            } else {
                resolution.role
            },
            status_class,
            code,
            grpc_status: self
                .grpc_status
                .and_then(|s| u8::try_from(s).ok())
                .filter(|s| *s <= 16),
            upstream_failure,
        }
    }

    /// Duration in whole microseconds, the histogram's unit.
    pub fn duration_micros(&self) -> u64 {
        u64::try_from(self.duration_ns).unwrap_or(0) / 1_000
    }

    pub fn request_bytes(&self) -> u64 {
        u64::try_from(self.request_bytes).unwrap_or(0)
    }

    pub fn response_bytes(&self) -> u64 {
        u64::try_from(self.response_bytes).unwrap_or(0)
    }
}

/// The elements of a serialized CEL list (layout in [`Reading::decode`]), in order; an element
/// is `None` where the bytes break the layout, and the bytes must end with the last element.
struct ListElements<'b> {
    bytes: &'b [u8],
    count: usize,
    next: usize,
    /// Where the next element's bytes start.
    data: usize,
}

impl<'b> ListElements<'b> {
    /// `None` unless the list has exactly `expected` elements.
    fn new(bytes: &'b [u8], expected: usize) -> Option<ListElements<'b>> {
        let list = ListElements {
            bytes,
            count: expected,
            next: 0,
            data: expected.checked_mul(8)?.checked_add(4)?,
        };
        (list.word(0)? == expected).then_some(list)
    }

    fn word(&self, at: usize) -> Option<usize> {
        let raw = self.bytes.get(at..at.checked_add(4)?)?;
        usize::try_from(u32::from_le_bytes(raw.try_into().ok()?)).ok()
    }

    fn element(&mut self) -> Option<&'b [u8]> {
        let i = self.next;
        let (len, value_len) = (self.word(4 + i * 8)?, self.word(8 + i * 8)?);
        if value_len != 0 {
            return None;
        }
        let end = self.data.checked_add(len)?;
        let element = self.bytes.get(self.data..end)?;
        if self.bytes.get(end..end.checked_add(2)?)? != [0, 0] {
            return None;
        }
        self.data = end + 2;
        self.next += 1;
        // The last element must end the bytes.
        if self.next == self.count && self.data != self.bytes.len() {
            return None;
        }
        Some(element)
    }
}

impl<'b> Iterator for ListElements<'b> {
    type Item = Option<&'b [u8]>;

    fn next(&mut self) -> Option<Option<&'b [u8]>> {
        (self.next < self.count).then(|| self.element())
    }
}

/// Whether a response `content-type` is gRPC (`application/grpc`, `application/grpc+proto`,
/// `application/grpc-web…`), the only case where `response.grpc_status` means anything: Envoy
/// reports 2 (UNKNOWN) for plain HTTP responses too.
pub fn is_grpc(content_type: &str) -> bool {
    let prefix = "application/grpc";
    content_type
        .get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::flags::bit;
    use plover_wire::Role;

    fn canary() -> Resolution {
        Resolution {
            namespace: "demo".into(),
            service: "app".into(),
            role: Role::Canary,
            revision: "v2".into(),
            tag: "canary/v2".into(),
            from_header: false,
        }
    }

    #[test]
    fn upstream_codes_are_classified_by_class() {
        let c = Completion {
            code: 503,
            ..Default::default()
        };
        assert_eq!(
            c.outcome(),
            (StatusClass::ServerError, 503, UpstreamFailure::None)
        );
        let c = Completion {
            code: 204,
            ..Default::default()
        };
        assert_eq!(c.outcome().0, StatusClass::Success);
        let c = Completion {
            code: 404,
            ..Default::default()
        };
        assert_eq!(c.outcome().0, StatusClass::ClientError);
    }

    #[test]
    fn failure_flags_mean_no_response_with_envoys_code() {
        let c = Completion {
            code: 503,
            flags: bit::UPSTREAM_CONNECTION_FAILURE,
            ..Default::default()
        };
        assert_eq!(
            c.outcome(),
            (
                StatusClass::NoResponse,
                503,
                UpstreamFailure::ConnectFailure
            )
        );
        let c = Completion {
            code: 504,
            flags: bit::UPSTREAM_REQUEST_TIMEOUT,
            ..Default::default()
        };
        assert_eq!(
            c.outcome(),
            (StatusClass::NoResponse, 504, UpstreamFailure::Timeout)
        );
        // The client left before anything was sent.
        let c = Completion {
            code: 0,
            flags: bit::DOWNSTREAM_CONNECTION_TERMINATION,
            ..Default::default()
        };
        assert_eq!(
            c.outcome(),
            (
                StatusClass::NoResponse,
                0,
                UpstreamFailure::DownstreamDisconnect
            )
        );
    }

    #[test]
    fn missing_or_absurd_codes_are_no_response() {
        assert_eq!(
            Completion::default().outcome(),
            (StatusClass::NoResponse, 0, UpstreamFailure::Other)
        );
        let c = Completion {
            code: -1,
            ..Default::default()
        };
        assert_eq!(c.outcome().1, 0);
        let c = Completion {
            code: 70_000,
            ..Default::default()
        };
        assert_eq!(c.outcome().1, 0);
    }

    #[test]
    fn series_key_carries_resolution_route_and_grpc_status() {
        let c = Completion {
            code: 200,
            grpc_status: Some(14),
            ..Default::default()
        };
        let c = Completion {
            route: "app_route".into(),
            ..c
        };
        let canary = canary();
        let key = c.series_key(&canary);
        assert_eq!(
            (key.namespace, key.service, key.route),
            ("demo", "app", "app_route")
        );
        assert_eq!((key.role, key.revision), (Role::Canary, "v2"));
        assert_eq!((key.code, key.grpc_status), (200, Some(14)));
        let bogus = Completion {
            code: 200,
            grpc_status: Some(99),
            ..Default::default()
        };
        assert_eq!(bogus.series_key(&canary).grpc_status, None);
    }

    #[test]
    fn mirrored_copies_are_told_by_their_host_and_counted_apart() {
        for (host, mirrored) in [
            ("app-shadow", true),
            ("app.demo.svc-shadow:8080", true),
            ("app", false),
            ("app:8080", false),
            ("shadow", false),
            ("app-shadow.example.com", false),
            ("", false),
        ] {
            assert_eq!(is_mirrored(host), mirrored, "{host}");
        }
        let copy = Completion {
            code: 200,
            mirrored: true,
            ..Default::default()
        };
        let canary = canary();
        let key = copy.series_key(&canary);
        assert_eq!((key.role, key.revision), (Role::Mirror, "v2"));
    }

    #[test]
    fn units_and_negative_sizes() {
        let c = Completion {
            duration_ns: 1_234_567,
            request_bytes: -5,
            response_bytes: 42,
            ..Default::default()
        };
        assert_eq!(c.duration_micros(), 1_234);
        assert_eq!((c.request_bytes(), c.response_bytes()), (0, 42));
    }

    /// A CEL list serialized as Envoy 1.40 does (see `from_evaluated`).
    pub(crate) fn serialize_list(elements: &[Vec<u8>]) -> Vec<u8> {
        let mut out = (elements.len() as u32).to_le_bytes().to_vec();
        for e in elements {
            out.extend((e.len() as u32).to_le_bytes());
            out.extend(0u32.to_le_bytes());
        }
        for e in elements {
            out.extend(e);
            out.extend([0, 0]);
        }
        out
    }

    fn reading(fields: &str) -> Reading {
        let json = format!(
            r#"{{"exporter": {{"cluster": "e", "token": "t"}},
                "rules": [{{"match": {{"exact": "c"}}, "namespace": "n", "service": "s", "role": "stable", "revision": "v1"}}]
                {fields}}}"#
        );
        Reading::new(&FilterConfig::from_json(json.as_bytes()).unwrap())
    }

    fn all() -> Reading {
        reading(
            r#", "record": {"route": true, "sizes": true, "grpc_status": true},
               "sources": ["cluster", "response_header"], "response_header": {"name": "x-app-revision"}"#,
        )
    }

    fn evaluated(content_type: &str, grpc_status: i64) -> Vec<u8> {
        serialize_list(&[
            b"outbound|80||app.demo.svc".to_vec(),
            503i64.to_le_bytes().to_vec(),
            (bit::UPSTREAM_REQUEST_TIMEOUT as i64)
                .to_le_bytes()
                .to_vec(),
            2_500_000i64.to_le_bytes().to_vec(),
            b"app.example.com".to_vec(),
            b"5d8f7c9b6".to_vec(),
            b"app_route".to_vec(),
            100i64.to_le_bytes().to_vec(),
            1_000i64.to_le_bytes().to_vec(),
            content_type.as_bytes().to_vec(),
            grpc_status.to_le_bytes().to_vec(),
        ])
    }

    #[test]
    fn the_expression_holds_only_what_the_configuration_reads() {
        assert_eq!(
            reading("").expression(false),
            "[xds.cluster_name, response.code, response.flags, request.duration, request.host]"
        );
        assert_eq!(
            reading("").expression(true),
            "[has(xds.cluster_name) ? xds.cluster_name : '', has(response.code) ? response.code : 0, \
has(response.flags) ? response.flags : 0, has(request.duration) ? request.duration : duration('0s'), \
has(request.host) ? request.host : '']"
        );
        assert_eq!(
            reading(r#", "record": {"mirrored": false}"#).expression(false),
            "[xds.cluster_name, response.code, response.flags, request.duration]",
            "no host read where no copy can arrive"
        );
        assert!(!reading("").measures_sizes());
        let all = all();
        assert!(all.measures_sizes());
        assert_eq!(
            all.expression(false),
            "[xds.cluster_name, response.code, response.flags, request.duration, request.host, \
response.headers['x-app-revision'], xds.route_name, request.total_size, response.total_size, \
response.headers['content-type'], has(response.grpc_status) ? response.grpc_status : -1]"
        );
    }

    #[test]
    fn an_evaluated_completion_decodes_every_field() {
        let all = all();
        let plain = evaluated("text/plain", 2);
        let c = all.decode(&plain).unwrap();
        assert_eq!(
            c,
            Completion {
                cluster: "outbound|80||app.demo.svc".into(),
                code: 503,
                flags: bit::UPSTREAM_REQUEST_TIMEOUT,
                duration_ns: 2_500_000,
                revision_header: Some("5d8f7c9b6".into()),
                request_bytes: 100,
                response_bytes: 1_000,
                grpc_status: None,
                route: "app_route".into(),
                mirrored: false,
            }
        );
        let grpc = evaluated("application/grpc", 14);
        assert_eq!(all.decode(&grpc).unwrap().grpc_status, Some(14));
        let absent = evaluated("application/grpc", -1);
        assert_eq!(all.decode(&absent).unwrap().grpc_status, None);
        // The five values alone; a mirrored copy's host.
        let five = serialize_list(&[
            b"stable".to_vec(),
            200i64.to_le_bytes().to_vec(),
            0i64.to_le_bytes().to_vec(),
            7_000i64.to_le_bytes().to_vec(),
            b"app.demo-shadow:8080".to_vec(),
        ]);
        let c = reading("").decode(&five).unwrap();
        assert_eq!(
            (&*c.cluster, c.code, c.duration_ns, &*c.route, c.mirrored),
            ("stable", 200, 7_000, "", true)
        );
    }

    /// The byte layout of Envoy 1.40's serialization of `[200, 'r']`, as logged by a filter.
    #[test]
    fn the_layout_matches_envoys_bytes() {
        let envoy: &[u8] = &[
            2, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 200, 0, 0, 0, 0, 0, 0, 0,
            0, 0, b'r', 0, 0,
        ];
        let elements: Option<Vec<&[u8]>> = ListElements::new(envoy, 2).unwrap().collect();
        assert_eq!(elements, Some(vec![&[200, 0, 0, 0, 0, 0, 0, 0][..], b"r"]));
    }

    #[test]
    fn anything_but_the_exact_layout_is_refused() {
        let all = all();
        let decode = |bytes: &[u8]| all.decode(bytes).map(|c| c.code);
        let good = evaluated("text/plain", 2);
        assert!(decode(&good).is_some());
        // Every truncation, and a trailing byte.
        for len in 0..good.len() {
            assert_eq!(decode(&good[..len]), None, "len {len}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(decode(&longer), None);
        // Every single-byte change either is refused or decodes without panicking.
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0xff;
            let _ = decode(&bad);
        }
        // Wrong element count, a non-empty pair value, a 4-byte integer, invalid UTF-8.
        let mut count = good.clone();
        count[0] = 7;
        assert_eq!(decode(&count), None);
        let mut value = good.clone();
        value[8] = 1;
        assert_eq!(decode(&value), None);
        let mut short = vec![vec![0u8; 8]; 11];
        for text in [0, 4, 5, 6, 9] {
            short[text] = b"r".to_vec();
        }
        assert!(decode(&serialize_list(&short)).is_some());
        short[1] = vec![0; 4];
        assert_eq!(decode(&serialize_list(&short)), None);
        short[1] = vec![0; 8];
        short[6] = vec![0xff];
        assert_eq!(decode(&serialize_list(&short)), None);
        // Protobuf ListValue, as older Envoys serialize lists.
        assert_eq!(
            decode(&[0x0a, 0x09, 0x11, 0, 0, 0, 0, 0, 0, 0x69, 0x40]),
            None
        );
    }

    #[test]
    fn grpc_content_types() {
        assert!(is_grpc("application/grpc"));
        assert!(is_grpc("application/grpc+proto"));
        assert!(is_grpc("Application/GRPC-web+proto"));
        assert!(!is_grpc("application/json"));
        assert!(!is_grpc("application/gr"));
        assert!(!is_grpc(""));
    }
}
