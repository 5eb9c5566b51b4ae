//! Envoy's response flags (the `response.flags` attribute) and what they say about a request
//! that got no upstream response.
//!
//! The attribute is `StreamInfo::legacyResponseFlags()`: bit `n` is set when core flag `n` of
//! `enum CoreResponseFlag` (`envoy/stream_info/stream_info.h`) is set; extension-defined flags
//! never appear in it (`source/common/stream_info/stream_info_impl.h`). The CEL `response.flags`
//! attribute, which proxy-wasm's `get_property` serves, is that value as an int64
//! (`source/extensions/filters/common/expr/context.cc`). The enum is append-only, so a bit
//! never changes meaning; Envoy 1.40 was checked with `%CEL(response.flags)%` in an access log
//! next to `%RESPONSE_FLAGS%`: UH=2, UT=4, UF=32, UO=128, NR=256, DC=16384, NC=16777216.

use plover_wire::UpstreamFailure;

/// Bit of each core response flag, with the short name Envoy's access log prints.
pub mod bit {
    /// LH: this Envoy failed its own health check.
    pub const FAILED_LOCAL_HEALTH_CHECK: u64 = 1 << 0;
    /// UH: no healthy upstream host in the cluster.
    pub const NO_HEALTHY_UPSTREAM: u64 = 1 << 1;
    /// UT: upstream request timeout.
    pub const UPSTREAM_REQUEST_TIMEOUT: u64 = 1 << 2;
    /// LR: Envoy reset the stream locally.
    pub const LOCAL_RESET: u64 = 1 << 3;
    /// UR: the upstream reset the stream.
    pub const UPSTREAM_REMOTE_RESET: u64 = 1 << 4;
    /// UF: the upstream connection could not be established.
    pub const UPSTREAM_CONNECTION_FAILURE: u64 = 1 << 5;
    /// UC: the upstream connection closed under the stream.
    pub const UPSTREAM_CONNECTION_TERMINATION: u64 = 1 << 6;
    /// UO: circuit breaker overflow (pending requests, connections, retries).
    pub const UPSTREAM_OVERFLOW: u64 = 1 << 7;
    /// NR: no route matched.
    pub const NO_ROUTE_FOUND: u64 = 1 << 8;
    /// DI: fault injection delayed the request (it may still have been answered).
    pub const DELAY_INJECTED: u64 = 1 << 9;
    /// FI: fault injection aborted the request.
    pub const FAULT_INJECTED: u64 = 1 << 10;
    /// RL: rate limited locally.
    pub const RATE_LIMITED: u64 = 1 << 11;
    /// UAEX: denied by the external authorization service.
    pub const UNAUTHORIZED_EXTERNAL_SERVICE: u64 = 1 << 12;
    /// RLSE: the rate limit service could not be reached.
    pub const RATE_LIMIT_SERVICE_ERROR: u64 = 1 << 13;
    /// DC: the downstream connection went away mid-stream.
    pub const DOWNSTREAM_CONNECTION_TERMINATION: u64 = 1 << 14;
    /// URX: retries or connect attempts exhausted (the last attempt may have been answered).
    pub const UPSTREAM_RETRY_LIMIT_EXCEEDED: u64 = 1 << 15;
    /// SI: stream idle timeout.
    pub const STREAM_IDLE_TIMEOUT: u64 = 1 << 16;
    /// IH: invalid x-envoy-* request headers.
    pub const INVALID_ENVOY_REQUEST_HEADERS: u64 = 1 << 17;
    /// DPE: downstream HTTP protocol error.
    pub const DOWNSTREAM_PROTOCOL_ERROR: u64 = 1 << 18;
    /// UMSDR: the upstream stream hit its max duration.
    pub const UPSTREAM_MAX_STREAM_DURATION_REACHED: u64 = 1 << 19;
    /// RFCF: served from Envoy's cache.
    pub const RESPONSE_FROM_CACHE_FILTER: u64 = 1 << 20;
    /// NFCF: filter config not received in time.
    pub const NO_FILTER_CONFIG_FOUND: u64 = 1 << 21;
    /// DT: max connection/stream duration exceeded.
    pub const DURATION_TIMEOUT: u64 = 1 << 22;
    /// UPE: the upstream response had an HTTP protocol error.
    pub const UPSTREAM_PROTOCOL_ERROR: u64 = 1 << 23;
    /// NC: the route's cluster does not exist.
    pub const NO_CLUSTER_FOUND: u64 = 1 << 24;
    /// OM: the overload manager refused the stream.
    pub const OVERLOAD_MANAGER: u64 = 1 << 25;
    /// DF: DNS resolution of the upstream failed.
    pub const DNS_RESOLUTION_FAILED: u64 = 1 << 26;
    /// DO: dropped by the cluster's drop_overload.
    pub const DROP_OVERLOAD: u64 = 1 << 27;
    /// DR: the downstream reset the stream (HTTP/2, HTTP/3).
    pub const DOWNSTREAM_REMOTE_RESET: u64 = 1 << 28;
    /// UDO: dropped because drop_overload is 100%.
    pub const UNCONDITIONAL_DROP_OVERLOAD: u64 = 1 << 29;
}

/// Flag groups in precedence order: when several are set, the first group that matches names
/// the cause. Routing failures come first (nothing was attempted), then capacity, then the
/// connection, then timing; a downstream disconnect outranks the resets it provokes.
const CAUSES: [(u64, UpstreamFailure); 8] = [
    (
        bit::NO_ROUTE_FOUND | bit::NO_CLUSTER_FOUND,
        UpstreamFailure::NoRoute,
    ),
    (bit::NO_HEALTHY_UPSTREAM, UpstreamFailure::NoHealthyUpstream),
    (
        bit::UPSTREAM_OVERFLOW
            | bit::OVERLOAD_MANAGER
            | bit::DROP_OVERLOAD
            | bit::UNCONDITIONAL_DROP_OVERLOAD,
        UpstreamFailure::Overflow,
    ),
    (
        bit::UPSTREAM_CONNECTION_FAILURE | bit::DNS_RESOLUTION_FAILED,
        UpstreamFailure::ConnectFailure,
    ),
    (
        bit::UPSTREAM_REQUEST_TIMEOUT
            | bit::UPSTREAM_MAX_STREAM_DURATION_REACHED
            | bit::STREAM_IDLE_TIMEOUT
            | bit::DURATION_TIMEOUT,
        UpstreamFailure::Timeout,
    ),
    (
        bit::DOWNSTREAM_CONNECTION_TERMINATION | bit::DOWNSTREAM_REMOTE_RESET,
        UpstreamFailure::DownstreamDisconnect,
    ),
    (
        bit::UPSTREAM_REMOTE_RESET | bit::UPSTREAM_CONNECTION_TERMINATION | bit::LOCAL_RESET,
        UpstreamFailure::Reset,
    ),
    (
        bit::UPSTREAM_PROTOCOL_ERROR | bit::FAULT_INJECTED | bit::FAILED_LOCAL_HEALTH_CHECK,
        UpstreamFailure::Other,
    ),
];

/// Why no upstream response arrived, or `None` when the flags don't say the upstream failed.
///
/// Deliberately ignored: URX alone (retries exhausted on answered 5xx: the last answer is a real
/// upstream response), local policy rejections (RL, UAEX, RLSE, IH, DPE, NFCF: they never
/// reached a revision and are counted by their HTTP code), and DI/RFCF (informational).
pub fn upstream_failure(flags: u64) -> UpstreamFailure {
    CAUSES
        .iter()
        .find(|(mask, _)| flags & mask != 0)
        .map_or(UpstreamFailure::None, |&(_, failure)| failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_match_envoy_core_response_flag_order() {
        // Spot checks against `enum CoreResponseFlag`: UF is the 6th entry, NR the 9th,
        // DC the 15th, and UDO (the last flag) the 30th.
        assert_eq!(bit::UPSTREAM_CONNECTION_FAILURE, 0x20);
        assert_eq!(bit::NO_ROUTE_FOUND, 0x100);
        assert_eq!(bit::DOWNSTREAM_CONNECTION_TERMINATION, 0x4000);
        assert_eq!(bit::UNCONDITIONAL_DROP_OVERLOAD, 0x2000_0000);
    }

    #[test]
    fn single_flags_map_to_their_cause() {
        for (flags, want) in [
            (0, UpstreamFailure::None),
            (
                bit::UPSTREAM_CONNECTION_FAILURE,
                UpstreamFailure::ConnectFailure,
            ),
            (bit::UPSTREAM_REMOTE_RESET, UpstreamFailure::Reset),
            (bit::UPSTREAM_CONNECTION_TERMINATION, UpstreamFailure::Reset),
            (bit::UPSTREAM_REQUEST_TIMEOUT, UpstreamFailure::Timeout),
            (bit::UPSTREAM_OVERFLOW, UpstreamFailure::Overflow),
            (bit::NO_HEALTHY_UPSTREAM, UpstreamFailure::NoHealthyUpstream),
            (bit::NO_ROUTE_FOUND, UpstreamFailure::NoRoute),
            (bit::NO_CLUSTER_FOUND, UpstreamFailure::NoRoute),
            (
                bit::DOWNSTREAM_CONNECTION_TERMINATION,
                UpstreamFailure::DownstreamDisconnect,
            ),
            (bit::UPSTREAM_PROTOCOL_ERROR, UpstreamFailure::Other),
        ] {
            assert_eq!(upstream_failure(flags), want, "flags {flags:#x}");
        }
    }

    #[test]
    fn policy_and_informational_flags_are_not_upstream_failures() {
        for flags in [
            bit::UPSTREAM_RETRY_LIMIT_EXCEEDED,
            bit::RATE_LIMITED,
            bit::UNAUTHORIZED_EXTERNAL_SERVICE,
            bit::DELAY_INJECTED,
            bit::RESPONSE_FROM_CACHE_FILTER,
            1 << 40, // a bit a newer Envoy might define
        ] {
            assert_eq!(
                upstream_failure(flags),
                UpstreamFailure::None,
                "flags {flags:#x}"
            );
        }
    }

    #[test]
    fn combined_flags_name_the_root_cause() {
        // Connect attempts exhausted: URX accompanies the last attempt's UF.
        assert_eq!(
            upstream_failure(bit::UPSTREAM_RETRY_LIMIT_EXCEEDED | bit::UPSTREAM_CONNECTION_FAILURE),
            UpstreamFailure::ConnectFailure
        );
        // The client left, so Envoy reset the upstream stream.
        assert_eq!(
            upstream_failure(bit::DOWNSTREAM_CONNECTION_TERMINATION | bit::LOCAL_RESET),
            UpstreamFailure::DownstreamDisconnect
        );
        assert_eq!(
            upstream_failure(bit::NO_HEALTHY_UPSTREAM | bit::UPSTREAM_OVERFLOW),
            UpstreamFailure::NoHealthyUpstream
        );
    }
}
