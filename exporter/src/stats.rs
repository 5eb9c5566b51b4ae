//! `GET /v1/stats?namespace=…&service=…&window=30s`: the precise windowed answer per revision
//! that the controller's analysis reads, as [`plover_wire::stats::StatsResponse`] JSON.

use std::collections::BTreeMap;

use base64::Engine;
use plover_wire::stats::{parse_window_seconds, LatencySummary, RevisionStats, StatsResponse};
use plover_wire::{Histogram, Role, StatusClass};

use crate::store::Store;
use crate::window::{Accumulator, Summary};

/// Why a stats query was refused; every variant names the parameter at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatsError {
    #[error("missing query parameter `{0}`")]
    Missing(&'static str),
    #[error("query parameter `{0}` is given twice")]
    Repeated(String),
    #[error("unknown query parameter `{0}` (expected namespace, service, window)")]
    Unknown(String),
    #[error("query parameter `{param}`: {reason}")]
    Invalid { param: &'static str, reason: String },
}

/// A validated query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsQuery {
    pub namespace: String,
    pub service: String,
    pub window_seconds: u64,
}

impl StatsQuery {
    /// Parses the URL query string; `retained` is the longest window the store can answer.
    pub fn parse(query: Option<&str>, retained: u64) -> Result<StatsQuery, StatsError> {
        let (mut namespace, mut service, mut window) = (None, None, None);
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let slot = match key.as_ref() {
                "namespace" => &mut namespace,
                "service" => &mut service,
                "window" => &mut window,
                other => return Err(StatsError::Unknown(other.to_owned())),
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(StatsError::Repeated(key.into_owned()));
            }
        }
        let namespace = namespace
            .filter(|s| !s.is_empty())
            .ok_or(StatsError::Missing("namespace"))?;
        let service = service
            .filter(|s| !s.is_empty())
            .ok_or(StatsError::Missing("service"))?;
        let window = window.ok_or(StatsError::Missing("window"))?;
        let window_seconds = parse_window_seconds(&window).ok_or_else(|| StatsError::Invalid {
            param: "window",
            reason: format!("`{window}` is not a duration like 30s, 5m or 1h"),
        })?;
        if window_seconds > retained {
            return Err(StatsError::Invalid {
                param: "window",
                reason: format!("{window_seconds}s is longer than the {retained}s this exporter keeps (--window)"),
            });
        }
        Ok(StatsQuery {
            namespace,
            service,
            window_seconds,
        })
    }
}

/// Answers a query at `now_ms`. The window ends with the last complete second.
pub fn answer(store: &Store, query: &StatsQuery, now_ms: u64) -> StatsResponse {
    let newest = (now_ms / 1000).saturating_sub(1);
    let mut response = StatsResponse {
        namespace: query.namespace.clone(),
        service: query.service.clone(),
        window_seconds: query.window_seconds,
        as_of_unix_ms: (newest + 1) * 1000,
        revisions: Vec::new(),
        lost_requests: store
            .lost_requests((newest + 1).saturating_sub(query.window_seconds), newest),
        mirrored: Vec::new(),
    };
    let Some(service) = store.service(&query.namespace, &query.service) else {
        return response;
    };
    let mut acc = Accumulator::default();
    // Mirrored copies are answered apart: they are no revision's traffic, so neither in the
    // shares nor where a revision is looked up by name.
    let (mirrored, revisions): (Vec<_>, Vec<_>) = service
        .windows(newest, &[query.window_seconds], &mut acc)
        .into_iter()
        .partition(|r| r.role == Role::Mirror);
    let mut covered = response.window_seconds;
    let mut answer = |entries: Vec<crate::store::RevisionWindows<'_>>| {
        let total = entries
            .iter()
            .map(|r| r.summaries[0].requests())
            .fold(0, u64::saturating_add);
        entries
            .iter()
            .map(|r| {
                let summary = &r.summaries[0];
                covered = covered.max(summary.covered_seconds);
                revision_stats(r.revision, r.role.as_str(), summary, total)
            })
            .collect::<Vec<_>>()
    };
    response.revisions = answer(revisions);
    response.mirrored = answer(mirrored);
    response.window_seconds = covered;
    response
}

fn revision_stats(revision: &str, role: &str, s: &Summary, service_total: u64) -> RevisionStats {
    let requests = s.requests();
    let errors = s.errors();
    let seconds = s.covered_seconds.max(1) as f64;
    RevisionStats {
        revision: revision.to_owned(),
        role: role.to_owned(),
        requests,
        errors,
        success_ratio: (requests > 0).then(|| 1.0 - errors as f64 / requests as f64),
        request_rate: requests as f64 / seconds,
        traffic_share: if service_total > 0 {
            requests as f64 / service_total as f64
        } else {
            0.0
        },
        by_status_class: StatusClass::ALL
            .iter()
            .zip(s.counts)
            .map(|(c, n)| (c.as_str().to_owned(), n))
            .collect::<BTreeMap<_, _>>(),
        latency_samples: s.histogram.count(),
        latency_seconds: latency(&s.histogram),
        histogram_v2_base64: base64::engine::general_purpose::STANDARD.encode(s.histogram.to_v2()),
    }
}

fn latency(h: &Histogram) -> LatencySummary {
    let seconds = |micros: Option<u64>| micros.map(|m| m as f64 / 1e6);
    LatencySummary {
        p50: seconds(h.value_at_quantile(0.5)),
        p90: seconds(h.value_at_quantile(0.9)),
        p95: seconds(h.value_at_quantile(0.95)),
        p99: seconds(h.value_at_quantile(0.99)),
        p999: seconds(h.value_at_quantile(0.999)),
        max: seconds(h.max()),
        mean: h.mean().map(|m| m / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_name_the_bad_parameter() {
        let ok = StatsQuery::parse(Some("namespace=demo&service=app&window=30s"), 600).unwrap();
        assert_eq!(
            ok,
            StatsQuery {
                namespace: "demo".into(),
                service: "app".into(),
                window_seconds: 30
            }
        );
        assert_eq!(
            StatsQuery::parse(Some("service=app&window=30s"), 600),
            Err(StatsError::Missing("namespace"))
        );
        assert_eq!(
            StatsQuery::parse(None, 600),
            Err(StatsError::Missing("namespace"))
        );
        assert_eq!(
            StatsQuery::parse(Some("namespace=demo&window=1m"), 600),
            Err(StatsError::Missing("service"))
        );
        assert_eq!(
            StatsQuery::parse(Some("namespace=demo&service=app"), 600),
            Err(StatsError::Missing("window"))
        );
        assert!(matches!(
            StatsQuery::parse(Some("namespace=demo&service=app&window=abc"), 600),
            Err(StatsError::Invalid {
                param: "window",
                ..
            })
        ));
        assert!(matches!(
            StatsQuery::parse(Some("namespace=demo&service=app&window=11m"), 600),
            Err(StatsError::Invalid {
                param: "window",
                ..
            })
        ));
        assert_eq!(
            StatsQuery::parse(Some("namespace=a&namespace=b&service=app&window=1m"), 600),
            Err(StatsError::Repeated("namespace".into()))
        );
        assert_eq!(
            StatsQuery::parse(Some("namespace=a&service=app&window=1m&x=1"), 600),
            Err(StatsError::Unknown("x".into()))
        );
        let encoded =
            StatsQuery::parse(Some("namespace=my%20ns&service=a%2Bb&window=10m"), 600).unwrap();
        assert_eq!(
            (encoded.namespace.as_str(), encoded.service.as_str()),
            ("my ns", "a+b")
        );
    }
}
