//! `provider.plover`: Plover's exporter answers `GET /v1/stats` with precise per-revision
//! counts, so a measurement knows how much traffic it is based on. Too little traffic
//! (fewer than `minRequests` in the window, or no entry for the revision, or no value for the
//! asked quantity) is never judged by the conditions: it becomes the `noData` phase
//! (Inconclusive unless configured), with a message saying why.

pub mod vs_stable;

use std::time::Duration;

use plover_wire::stats::{self, RevisionStats, StatsResponse};

use super::{error_chain, Outcome, ProviderError, Providers};
use crate::{
    phase::Phase,
    template::{NoData, PloverQuantity, PloverSpec},
    value::{format_float, Value},
};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The exporter's address for `spec`.
pub(super) fn address(providers: &Providers, spec: &PloverSpec) -> Result<String, ProviderError> {
    if !spec.address.is_empty() {
        return Ok(spec.address.clone());
    }
    providers.settings().exporter.clone().ok_or_else(|| {
        ProviderError::Config("plover exporter address is not configured (set provider.plover.address, --exporter or PLOVER_EXPORTER_ADDRESS)".to_owned())
    })
}

pub(super) async fn query(
    providers: &Providers,
    name: &str,
    spec: &PloverSpec,
) -> Result<Outcome, ProviderError> {
    if stats::parse_window_seconds(&spec.window).is_none() {
        return Err(ProviderError::Config(format!(
            "window {:?}: expected e.g. 30s, 5m or 1h",
            spec.window
        )));
    }
    if spec.metric.is_vs_stable() {
        return vs_stable::query(providers, name, spec).await;
    }
    let answer = fetch(providers, spec, &spec.window).await?;
    evaluate(spec, &answer)
}

/// One `GET /v1/stats` for `spec`'s service over `window`.
async fn fetch(
    providers: &Providers,
    spec: &PloverSpec,
    window: &str,
) -> Result<StatsResponse, ProviderError> {
    let base = address(providers, spec)?;
    let url = format!("{}{}", base.trim_end_matches('/'), stats::STATS_PATH);
    let client = providers.client_for(&url, false)?;
    let timeout = spec
        .timeout
        .filter(|t| *t > 0)
        .map_or(DEFAULT_TIMEOUT, |t| Duration::from_secs(t as u64));
    let response = client
        .get(&url)
        .query(&[
            ("namespace", spec.namespace.as_str()),
            ("service", spec.service.as_str()),
            ("window", window),
        ])
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| ProviderError::Transport(format!("Get \"{url}\": {}", error_chain(&e))))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| ProviderError::Transport(error_chain(&e)))?;
    if !status.is_success() {
        return Err(ProviderError::Response(format!(
            "exporter returned HTTP status {status}: {}",
            String::from_utf8_lossy(&body).trim()
        )));
    }
    serde_json::from_slice(&body).map_err(|e| {
        ProviderError::Response(format!("exporter answer is not a /v1/stats response: {e}"))
    })
}

fn revision<'a>(answer: &'a StatsResponse, wanted: &str) -> Option<&'a RevisionStats> {
    match wanted {
        "canary" | "stable" => answer.role(wanted),
        name => answer.revisions.iter().find(|r| r.revision == name),
    }
}

/// The quantity asked for, or `None` when the window has no value for it.
fn quantity(spec: &PloverSpec, r: &RevisionStats) -> Result<Option<f64>, ProviderError> {
    Ok(match spec.metric {
        PloverQuantity::SuccessRate => r.success_ratio,
        PloverQuantity::ErrorRate => (r.requests > 0).then(|| r.errors as f64 / r.requests as f64),
        PloverQuantity::RequestRate => Some(r.request_rate),
        PloverQuantity::TrafficShare => Some(r.traffic_share),
        PloverQuantity::Requests => Some(r.requests as f64),
        PloverQuantity::ErrorRatioVsStable
        | PloverQuantity::LatencyVsStable
        | PloverQuantity::LatencyDistributionVsStable => {
            return Err(ProviderError::Config(format!(
                "{} is judged by the sequential test, not by conditions",
                spec.metric.as_str()
            )))
        }
        PloverQuantity::Latency => {
            let l = &r.latency_seconds;
            match spec.quantile.as_deref().unwrap_or("p99") {
                "p50" => l.p50,
                "p90" => l.p90,
                "p95" => l.p95,
                "p99" => l.p99,
                "p999" => l.p999,
                "max" => l.max,
                "mean" => l.mean,
                other => {
                    return Err(ProviderError::Config(format!(
                        "quantile {other:?}: expected p50, p90, p95, p99, p999, max or mean"
                    )))
                }
            }
        }
    })
}

fn no_data(spec: &PloverSpec, why: String) -> Result<Outcome, ProviderError> {
    let phase = match spec.no_data {
        NoData::Inconclusive => Phase::Inconclusive,
        NoData::Failed => Phase::Failed,
        NoData::Successful => Phase::Successful,
        NoData::Error => return Err(ProviderError::Response(format!("no data: {why}"))),
    };
    Ok(Outcome::Decided {
        phase,
        text: String::new(),
        message: format!("no data ({phase} by noData): {why}"),
    })
}

/// Judges one `/v1/stats` answer: the gate first, then the value for the conditions. Pure.
pub fn evaluate(spec: &PloverSpec, answer: &StatsResponse) -> Result<Outcome, ProviderError> {
    let window = &spec.window;
    let Some(r) = revision(answer, &spec.revision) else {
        return no_data(
            spec,
            format!(
                "no traffic recorded for revision {:?} of {}/{} in the last {window}",
                spec.revision, spec.namespace, spec.service
            ),
        );
    };
    if answer.lost_requests > 0 {
        // Counts with known losses in their window are never a clean number.
        return Ok(Outcome::Decided {
            phase: Phase::Inconclusive,
            text: String::new(),
            message: format!(
                "data incomplete: {} may belong to the last {window}, so its counts are not judged",
                stats::lost_requests_phrase(answer.lost_requests)
            ),
        });
    }
    if r.requests < spec.min_requests {
        return no_data(
            spec,
            format!(
                "{} requests to revision {:?} in the last {window}, fewer than minRequests ({})",
                r.requests, spec.revision, spec.min_requests
            ),
        );
    }
    match quantity(spec, r)? {
        None => no_data(
            spec,
            format!(
                "no value for {:?} of revision {:?} in the last {window}",
                spec.metric, spec.revision
            ),
        ),
        Some(v) => Ok(Outcome::Value {
            value: Value::Float(v),
            text: format_float(v),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(metric: PloverQuantity) -> PloverSpec {
        serde_json::from_value(
            serde_json::json!({"namespace": "ns", "service": "svc", "metric": metric}),
        )
        .unwrap()
    }

    fn answer(requests: u64, errors: u64) -> StatsResponse {
        StatsResponse {
            namespace: "ns".into(),
            service: "svc".into(),
            window_seconds: 30,
            revisions: vec![
                RevisionStats {
                    revision: "v2".into(),
                    role: "canary".into(),
                    requests,
                    errors,
                    success_ratio: (requests > 0).then(|| 1.0 - errors as f64 / requests as f64),
                    request_rate: requests as f64 / 30.0,
                    traffic_share: 0.1,
                    ..Default::default()
                },
                RevisionStats {
                    revision: "v1".into(),
                    role: "stable".into(),
                    requests: 900,
                    success_ratio: Some(1.0),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn quantities_per_revision() {
        let v = |s: &PloverSpec, a: &StatsResponse| match evaluate(s, a).unwrap() {
            Outcome::Value {
                value: Value::Float(f),
                ..
            } => f,
            other => panic!("{other:?}"),
        };
        assert_eq!(v(&spec(PloverQuantity::SuccessRate), &answer(100, 2)), 0.98);
        assert_eq!(v(&spec(PloverQuantity::ErrorRate), &answer(100, 2)), 0.02);
        assert_eq!(v(&spec(PloverQuantity::Requests), &answer(100, 2)), 100.0);
        assert_eq!(v(&spec(PloverQuantity::TrafficShare), &answer(100, 2)), 0.1);
        let mut stable = spec(PloverQuantity::Requests);
        stable.revision = "stable".into();
        assert_eq!(v(&stable, &answer(100, 2)), 900.0);
        stable.revision = "v2".into();
        assert_eq!(v(&stable, &answer(100, 2)), 100.0);
    }

    #[test]
    fn counts_with_known_losses_are_inconclusive_never_a_clean_number() {
        // Issue 17, item 1: the exporter says requests were lost in the window.
        let mut incomplete = answer(1_000, 0);
        incomplete.lost_requests = 12;
        for s in [
            spec(PloverQuantity::SuccessRate),
            PloverSpec {
                no_data: NoData::Successful,
                ..spec(PloverQuantity::ErrorRate)
            },
        ] {
            let Outcome::Decided { phase, message, .. } = evaluate(&s, &incomplete).unwrap() else {
                panic!()
            };
            assert_eq!(phase, Phase::Inconclusive);
            assert!(
                message.starts_with("data incomplete: 12 requests lost (dropped by a gateway or refused by the exporter) may belong to the last 30s"),
                "{message}"
            );
        }
    }

    #[test]
    fn too_little_traffic_is_no_data() {
        let s = spec(PloverQuantity::SuccessRate);
        let Outcome::Decided { phase, message, .. } = evaluate(&s, &answer(5, 0)).unwrap() else {
            panic!()
        };
        assert_eq!(phase, Phase::Inconclusive);
        assert!(
            message.contains(
                "5 requests to revision \"canary\" in the last 30s, fewer than minRequests (20)"
            ),
            "{message}"
        );
        let mut failing = s.clone();
        failing.no_data = NoData::Failed;
        assert!(matches!(
            evaluate(&failing, &answer(0, 0)).unwrap(),
            Outcome::Decided {
                phase: Phase::Failed,
                ..
            }
        ));
        failing.no_data = NoData::Error;
        assert!(evaluate(&failing, &answer(0, 0)).is_err());
        let mut missing = s;
        missing.revision = "v9".into();
        let Outcome::Decided { message, .. } = evaluate(&missing, &answer(100, 0)).unwrap() else {
            panic!()
        };
        assert!(
            message.contains("no traffic recorded for revision \"v9\""),
            "{message}"
        );
        // Latency without samples: no quantile ⇒ no data.
        let mut latency = spec(PloverQuantity::Latency);
        latency.min_requests = 0;
        assert!(matches!(
            evaluate(&latency, &answer(0, 0)).unwrap(),
            Outcome::Decided { .. }
        ));
    }
}
