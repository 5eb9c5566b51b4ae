//! `GET /v1/stats` — the exporter's precise windowed answer per revision, read by the
//! controller's analysis (Plover's provider) and by `plover get`.

use serde::{Deserialize, Serialize};

/// Path of the stats endpoint. Query: `namespace`, `service`, `window` (e.g. `30s`, `5m`).
pub const STATS_PATH: &str = "/v1/stats";

/// Latency quantiles over the window, in seconds. `None` when the window has no samples.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
}

/// One revision of the service over the window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RevisionStats {
    pub revision: String,
    /// `stable`, `canary` or `unknown`.
    pub role: String,
    /// Requests completed in the window.
    pub requests: u64,
    /// Of which 5xx or no upstream response.
    pub errors: u64,
    /// `1 - errors/requests`; `None` with no requests (never a fake 1.0).
    pub success_ratio: Option<f64>,
    /// Requests per second over the window.
    pub request_rate: f64,
    /// This revision's share of the service's requests in the window, 0–1.
    pub traffic_share: f64,
    /// Request counts by status class (`2xx`, `5xx`, `no_response`, …).
    pub by_status_class: std::collections::BTreeMap<String, u64>,
    /// Number of latency samples behind the quantiles (equals `requests`).
    pub latency_samples: u64,
    pub latency_seconds: LatencySummary,
    /// The merged duration histogram (µs), HdrHistogram V2, base64: lets a client merge
    /// answers from several exporter replicas exactly.
    pub histogram_v2_base64: String,
}

/// The whole answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsResponse {
    pub namespace: String,
    pub service: String,
    /// Window actually covered, in seconds.
    pub window_seconds: u64,
    /// End of the window, Unix milliseconds.
    pub as_of_unix_ms: u64,
    pub revisions: Vec<RevisionStats>,
    /// Requests known lost that may belong to this window, of any service: dropped by a
    /// gateway (its buffer was full, the exporter refused a batch) or refused by the exporter
    /// (`--max-revisions`). When not zero the counts above are incomplete, and a judge must
    /// not take them as the whole truth. Absent (0) from exporters older than this field.
    #[serde(default)]
    pub lost_requests: u64,
    /// Copies of requests a route mirrored to a revision (role `mirror`), apart from
    /// `revisions`: their answers reached no client, so they are no revision's traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrored: Vec<RevisionStats>,
}

impl StatsResponse {
    /// The entry for a role (`stable`/`canary`); when several revisions share the role (a
    /// revision changed inside the window), the one that served the most requests.
    pub fn role(&self, role: &str) -> Option<&RevisionStats> {
        self.revisions
            .iter()
            .filter(|r| r.role == role)
            .max_by_key(|r| r.requests)
    }
}

/// How every sentence names requests known lost, e.g. `12 requests lost (dropped by a gateway
/// or refused by the exporter)`: one wording wherever incomplete counts are reported.
pub fn lost_requests_phrase(lost: u64) -> String {
    format!("{lost} requests lost (dropped by a gateway or refused by the exporter)")
}

/// Parses a window such as `30s`, `5m`, `1h` or `90` (seconds) into seconds.
pub fn parse_window_seconds(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits.parse().ok()?;
    let seconds = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        _ => return None,
    };
    (seconds > 0).then_some(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse() {
        assert_eq!(parse_window_seconds("30s"), Some(30));
        assert_eq!(parse_window_seconds("5m"), Some(300));
        assert_eq!(parse_window_seconds("1h"), Some(3600));
        assert_eq!(parse_window_seconds("45"), Some(45));
        for bad in ["", "0s", "s", "5d", "-1s", "1.5m"] {
            assert_eq!(parse_window_seconds(bad), None, "{bad}");
        }
    }
}
