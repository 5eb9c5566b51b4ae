//! One finished request, as Envoy reports it in `on_log`, and the series it is counted in.
//!
//! Each host call costs the V8 runtime thousands of instructions, far more than the filter's own
//! work, so `on_log` asks Envoy for everything at once: one CEL expression ([`COMPLETION_EXPRESSION`],
//! compiled once per configuration through Envoy's `expr_create` foreign function) evaluated per
//! request, whose list result [`Completion::from_evaluated`] decodes. Where Envoy cannot compile
//! it (built without the CEL parser) or an evaluation fails, the stream reads the properties one
//! by one instead; both paths give the same [`Completion`].

use plover_wire::{SeriesKey, StatusClass, UpstreamFailure};

use crate::flags;
use crate::resolve::Resolution;

/// What the host says about a finished request. Every field has a default for the case where
/// the property could not be read, so a failed read never loses the request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Completion {
    /// `response.code`: the status sent downstream, 0 if none was sent.
    pub code: i64,
    /// `response.flags`.
    pub flags: u64,
    /// `request.duration` in nanoseconds.
    pub duration_ns: i64,
    /// `request.total_size` (headers and body).
    pub request_bytes: i64,
    /// `response.total_size`.
    pub response_bytes: i64,
    /// `response.grpc_status`, kept only when the response was gRPC.
    pub grpc_status: Option<i64>,
    /// `xds.route_name`: the name of the route Envoy matched (empty when unnamed).
    pub route: String,
}

/// The CEL list evaluated once per finished request. Absent values are guarded with `has` so
/// that a request without a response (the client left, the upstream never answered) still
/// evaluates; `-1` stands for "no gRPC status".
pub const COMPLETION_EXPRESSION: &str = "[\
has(response.code) ? response.code : 0, \
response.flags, \
request.duration, \
request.total_size, \
response.total_size, \
xds.route_name, \
'content-type' in response.headers ? response.headers['content-type'] : '', \
has(response.grpc_status) ? response.grpc_status : -1]";

/// Number of elements of [`COMPLETION_EXPRESSION`].
const COMPLETION_ELEMENTS: usize = 8;

impl Completion {
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

    /// Decodes the value of [`COMPLETION_EXPRESSION`] as Envoy serializes a CEL list for
    /// proxy-wasm: the element count (u32 LE), then per element its length and a zero (two u32
    /// LE, the header-map pair layout with empty values), then per element its bytes followed by
    /// two NULs. Integers are 8 bytes LE, strings their raw bytes. `None` when the bytes are not
    /// exactly that (another Envoy version's serialization, say): the caller then reads the
    /// properties one by one.
    pub fn from_evaluated(bytes: &[u8]) -> Option<Completion> {
        let elements = list_elements(bytes, COMPLETION_ELEMENTS)?;
        let int = |i: usize| -> Option<i64> {
            <[u8; 8]>::try_from(*elements.get(i)?)
                .ok()
                .map(i64::from_le_bytes)
        };
        let text = |i: usize| -> Option<&str> { std::str::from_utf8(elements.get(i)?).ok() };
        let content_type = text(6)?;
        let grpc_status = int(7)?;
        Some(Completion {
            code: int(0)?,
            flags: int(1)? as u64,
            duration_ns: int(2)?,
            request_bytes: int(3)?,
            response_bytes: int(4)?,
            route: text(5)?.to_owned(),
            grpc_status: (is_grpc(content_type) && grpc_status >= 0).then_some(grpc_status),
        })
    }

    /// The series this request is counted in.
    pub fn series_key(&self, resolution: &Resolution) -> SeriesKey {
        let (status_class, code, upstream_failure) = self.outcome();
        SeriesKey {
            namespace: resolution.namespace.clone(),
            service: resolution.service.clone(),
            route: self.route.clone(),
            revision: resolution.revision.clone(),
            role: resolution.role,
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

/// The `expected` elements of a serialized CEL list (layout in [`Completion::from_evaluated`]).
fn list_elements(bytes: &[u8], expected: usize) -> Option<Vec<&[u8]>> {
    let word = |at: usize| -> Option<usize> {
        let raw = bytes.get(at..at.checked_add(4)?)?;
        usize::try_from(u32::from_le_bytes(raw.try_into().ok()?)).ok()
    };
    if word(0)? != expected {
        return None;
    }
    let mut data = 4 + expected * 8;
    let mut elements = Vec::with_capacity(expected);
    for i in 0..expected {
        let (len, value_len) = (word(4 + i * 8)?, word(8 + i * 8)?);
        if value_len != 0 {
            return None;
        }
        let end = data.checked_add(len)?;
        elements.push(bytes.get(data..end)?);
        if bytes.get(end..end + 2)? != [0, 0] {
            return None;
        }
        data = end + 2;
    }
    (data == bytes.len()).then_some(elements)
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
        let key = c.series_key(&canary());
        assert_eq!(
            (
                key.namespace.as_str(),
                key.service.as_str(),
                key.route.as_str()
            ),
            ("demo", "app", "app_route")
        );
        assert_eq!((key.role, key.revision.as_str()), (Role::Canary, "v2"));
        assert_eq!((key.code, key.grpc_status), (200, Some(14)));
        let bogus = Completion {
            code: 200,
            grpc_status: Some(99),
            ..Default::default()
        };
        assert_eq!(bogus.series_key(&canary()).grpc_status, None);
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

    fn evaluated(content_type: &str, grpc_status: i64) -> Vec<u8> {
        serialize_list(&[
            503i64.to_le_bytes().to_vec(),
            (bit::UPSTREAM_REQUEST_TIMEOUT as i64)
                .to_le_bytes()
                .to_vec(),
            2_500_000i64.to_le_bytes().to_vec(),
            100i64.to_le_bytes().to_vec(),
            1_000i64.to_le_bytes().to_vec(),
            b"app_route".to_vec(),
            content_type.as_bytes().to_vec(),
            grpc_status.to_le_bytes().to_vec(),
        ])
    }

    #[test]
    fn an_evaluated_completion_decodes_every_field() {
        let c = Completion::from_evaluated(&evaluated("text/plain", 2)).unwrap();
        assert_eq!(
            c,
            Completion {
                code: 503,
                flags: bit::UPSTREAM_REQUEST_TIMEOUT,
                duration_ns: 2_500_000,
                request_bytes: 100,
                response_bytes: 1_000,
                grpc_status: None,
                route: "app_route".into(),
            }
        );
        let grpc = Completion::from_evaluated(&evaluated("application/grpc", 14)).unwrap();
        assert_eq!(grpc.grpc_status, Some(14));
        let absent = Completion::from_evaluated(&evaluated("application/grpc", -1)).unwrap();
        assert_eq!(absent.grpc_status, None);
    }

    /// The byte layout of Envoy 1.40's serialization of `[200, 'r']`, as logged by a filter.
    #[test]
    fn the_layout_matches_envoys_bytes() {
        let envoy: &[u8] = &[
            2, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 200, 0, 0, 0, 0, 0, 0, 0,
            0, 0, b'r', 0, 0,
        ];
        assert_eq!(
            list_elements(envoy, 2),
            Some(vec![&[200, 0, 0, 0, 0, 0, 0, 0][..], b"r"])
        );
    }

    #[test]
    fn anything_but_the_exact_layout_is_refused() {
        let good = evaluated("text/plain", 2);
        assert!(Completion::from_evaluated(&good).is_some());
        // Every truncation, and a trailing byte.
        for len in 0..good.len() {
            assert_eq!(Completion::from_evaluated(&good[..len]), None, "len {len}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(Completion::from_evaluated(&longer), None);
        // Every single-byte change either is refused or decodes without panicking.
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0xff;
            let _ = Completion::from_evaluated(&bad);
        }
        // Wrong element count, a non-empty pair value, a 4-byte integer, invalid UTF-8.
        let mut count = good.clone();
        count[0] = 7;
        assert_eq!(Completion::from_evaluated(&count), None);
        let mut value = good.clone();
        value[8] = 1;
        assert_eq!(Completion::from_evaluated(&value), None);
        let mut short = vec![vec![0u8; 8]; 8];
        short[0] = vec![0; 4];
        short[5] = b"r".to_vec();
        short[6] = vec![];
        assert_eq!(Completion::from_evaluated(&serialize_list(&short)), None);
        short[0] = vec![0; 8];
        short[5] = vec![0xff];
        assert_eq!(Completion::from_evaluated(&serialize_list(&short)), None);
        // Protobuf ListValue, as older Envoys serialize lists.
        assert_eq!(
            Completion::from_evaluated(&[0x0a, 0x09, 0x11, 0, 0, 0, 0, 0, 0, 0x69, 0x40]),
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
