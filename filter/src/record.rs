//! One finished request, as Envoy reports it in `on_log`, and the series it is counted in.

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
    /// `response.grpc_status`, read only when the response was gRPC.
    pub grpc_status: Option<i64>,
}

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

    /// The series this request is counted in.
    pub fn series_key(&self, resolution: &Resolution, route: &str) -> SeriesKey {
        let (status_class, code, upstream_failure) = self.outcome();
        SeriesKey {
            namespace: resolution.namespace.clone(),
            service: resolution.service.clone(),
            route: route.to_owned(),
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
mod tests {
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
        let key = c.series_key(&canary(), "app_route");
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
        assert_eq!(bogus.series_key(&canary(), "").grpc_status, None);
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
