//! The series vocabulary: what the filter labels each request with and the exporter keys its
//! counters by — the role a revision plays, how the request ended (status class, upstream
//! failure), the whole [`SeriesKey`] — and what one series counts ([`SeriesDelta`]). The label
//! names and values are Prometheus's too (`labels`); `batch` encodes them.

use crate::histogram::Histogram;
use crate::WireError;

/// The part a revision plays in a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Stable,
    Canary,
    /// Traffic the filter could not attribute to a configured revision.
    Unknown,
    /// Copies of requests a route mirrored to this revision (Envoy's `-shadow` host): their
    /// answers reached no client, so they are never the revision's traffic.
    Mirror,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Stable, Role::Canary, Role::Unknown, Role::Mirror];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Stable => "stable",
            Role::Canary => "canary",
            Role::Unknown => "unknown",
            Role::Mirror => "mirror",
        }
    }

    pub(crate) fn code(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_code(code: u8) -> Option<Role> {
        Role::ALL.get(usize::from(code)).copied()
    }
}

impl core::str::FromStr for Role {
    type Err = WireError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or(WireError::Malformed(
                "role must be one of stable, canary, unknown, mirror",
            ))
    }
}

/// How a request ended, by HTTP status class, or with no upstream response at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StatusClass {
    Informational,
    Success,
    Redirection,
    ClientError,
    ServerError,
    /// The upstream never answered (connect failure, reset, timeout, overflow…). The code is
    /// then the one Envoy generated, or 0 when the client went away first.
    NoResponse,
}

impl StatusClass {
    pub const ALL: [StatusClass; 6] = [
        StatusClass::Informational,
        StatusClass::Success,
        StatusClass::Redirection,
        StatusClass::ClientError,
        StatusClass::ServerError,
        StatusClass::NoResponse,
    ];

    /// Class of an upstream HTTP status code (codes outside 100–599 count as server errors).
    pub fn of_code(code: u16) -> StatusClass {
        match code {
            100..=199 => StatusClass::Informational,
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirection,
            400..=499 => StatusClass::ClientError,
            _ => StatusClass::ServerError,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StatusClass::Informational => "1xx",
            StatusClass::Success => "2xx",
            StatusClass::Redirection => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
            StatusClass::NoResponse => "no_response",
        }
    }

    /// Whether this outcome counts against the success ratio (5xx and no response).
    pub fn is_error(self) -> bool {
        matches!(self, StatusClass::ServerError | StatusClass::NoResponse)
    }

    pub(crate) fn from_code(code: u8) -> Option<StatusClass> {
        StatusClass::ALL.get(usize::from(code)).copied()
    }
}

/// Why no upstream response arrived, from Envoy's response flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UpstreamFailure {
    None,
    ConnectFailure,
    Reset,
    Timeout,
    Overflow,
    NoHealthyUpstream,
    NoRoute,
    DownstreamDisconnect,
    Other,
}

impl UpstreamFailure {
    pub const ALL: [UpstreamFailure; 9] = [
        UpstreamFailure::None,
        UpstreamFailure::ConnectFailure,
        UpstreamFailure::Reset,
        UpstreamFailure::Timeout,
        UpstreamFailure::Overflow,
        UpstreamFailure::NoHealthyUpstream,
        UpstreamFailure::NoRoute,
        UpstreamFailure::DownstreamDisconnect,
        UpstreamFailure::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::None => "",
            UpstreamFailure::ConnectFailure => "connect_failure",
            UpstreamFailure::Reset => "reset",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Overflow => "overflow",
            UpstreamFailure::NoHealthyUpstream => "no_healthy_upstream",
            UpstreamFailure::NoRoute => "no_route",
            UpstreamFailure::DownstreamDisconnect => "downstream_disconnect",
            UpstreamFailure::Other => "other",
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<UpstreamFailure> {
        UpstreamFailure::ALL.get(usize::from(code)).copied()
    }
}

/// Identity of one series: everything a metric is labelled by.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub namespace: String,
    pub service: String,
    /// Envoy route name (`xds.route_name`), empty when the route has none.
    pub route: String,
    /// Revision id (e.g. `v2`, a pod-template hash); empty when unknown.
    pub revision: String,
    pub role: Role,
    pub status_class: StatusClass,
    /// HTTP status code sent downstream; 0 when none was sent.
    pub code: u16,
    /// gRPC status (0–16) when the response was gRPC.
    pub grpc_status: Option<u8>,
    pub upstream_failure: UpstreamFailure,
}

/// What one series saw during a batch's interval.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeriesDelta {
    pub requests: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Request durations in microseconds; its count always equals `requests`.
    pub duration: Histogram,
}

impl SeriesDelta {
    pub fn merge(&mut self, other: &SeriesDelta) {
        self.requests = self.requests.saturating_add(other.requests);
        self.request_bytes = self.request_bytes.saturating_add(other.request_bytes);
        self.response_bytes = self.response_bytes.saturating_add(other.response_bytes);
        self.duration.merge(&other.duration);
    }
}

impl SeriesKey {
    /// A series of requests the upstream answered with HTTP `code`: the status class follows
    /// from the code, with no gRPC status and no upstream failure.
    pub fn answered(
        namespace: &str,
        service: &str,
        route: &str,
        revision: &str,
        role: Role,
        code: u16,
    ) -> SeriesKey {
        SeriesKey {
            namespace: namespace.to_owned(),
            service: service.to_owned(),
            route: route.to_owned(),
            revision: revision.to_owned(),
            role,
            status_class: StatusClass::of_code(code),
            code,
            grpc_status: None,
            upstream_failure: UpstreamFailure::None,
        }
    }

    /// The key with its labels borrowed.
    pub fn as_ref(&self) -> SeriesKeyRef<'_> {
        SeriesKeyRef {
            namespace: &self.namespace,
            service: &self.service,
            route: &self.route,
            revision: &self.revision,
            role: self.role,
            status_class: self.status_class,
            code: self.code,
            grpc_status: self.grpc_status,
            upstream_failure: self.upstream_failure,
        }
    }
}

/// A [`SeriesKey`] whose labels borrow from the encoded batch (or from an owned key).
/// Field order, and so the derived ordering, is the same as [`SeriesKey`]'s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKeyRef<'a> {
    pub namespace: &'a str,
    pub service: &'a str,
    pub route: &'a str,
    pub revision: &'a str,
    pub role: Role,
    pub status_class: StatusClass,
    pub code: u16,
    pub grpc_status: Option<u8>,
    pub upstream_failure: UpstreamFailure,
}

impl SeriesKeyRef<'_> {
    pub fn to_owned_key(&self) -> SeriesKey {
        SeriesKey {
            namespace: self.namespace.to_owned(),
            service: self.service.to_owned(),
            route: self.route.to_owned(),
            revision: self.revision.to_owned(),
            role: self.role,
            status_class: self.status_class,
            code: self.code,
            grpc_status: self.grpc_status,
            upstream_failure: self.upstream_failure,
        }
    }
}
