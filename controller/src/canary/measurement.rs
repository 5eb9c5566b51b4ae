//! From the analysis engine's measurements to the Canary's status, and from the status to
//! words: each metric of a run with its latest measurement ([`metric_statuses`]), and for the
//! canary-versus-stable tests the evidence in a sentence a person understands
//! ([`evidence_sentence`]), which `plover get` and the local demo print.
//!
//! Pure: the runner calls [`metric_statuses`] when asked for verdicts; what it returns depends
//! only on the measurements taken, so the status changes when a measurement is taken and at no
//! other reconcile.

use std::time::SystemTime;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use plover_sequential::{
    compare::{what_would_decide, PassSide},
    odds::Decision,
};

use super::status::{
    AnalysisPhase, AnalysisRunStatus, Comparison, EvidenceDecision, EvidenceStatus,
    MeasurementStatus, MetricCounts, MetricStatus,
};
use plover_analysis::{
    provider::plover::vs_stable::EvidenceRecord,
    run::{Measurement, MetricResult},
    template::{Analysis, MetricSpec, PloverQuantity, ProviderSpec},
};

/// Longest measurement message kept in status (the judge's sentence with its notes fits).
pub const MESSAGE_LIMIT: usize = 480;
/// Longest measurement value kept in status (a long Prometheus vector is cut).
pub const VALUE_LIMIT: usize = 64;

/// `text` cut to at most `limit` characters, ending in `…` when cut.
pub fn cap(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(limit.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// What a `…VsStable` metric compares, with `latencyVsStable`'s quantile; `None` for every
/// other metric.
fn comparison(spec: &MetricSpec) -> Option<(Comparison, Option<String>)> {
    let ProviderSpec::Plover(plover) = &spec.provider else {
        return None;
    };
    match plover.metric {
        PloverQuantity::ErrorRatioVsStable => Some((Comparison::ErrorRatio, None)),
        PloverQuantity::LatencyVsStable => Some((
            Comparison::Latency,
            Some(plover.quantile.clone().unwrap_or_else(|| "p99".to_owned())),
        )),
        PloverQuantity::LatencyDistributionVsStable => {
            Some((Comparison::LatencyDistribution, None))
        }
        _ => None,
    }
}

/// The evidence of a comparative measurement, from its value record.
fn evidence(
    record: &EvidenceRecord,
    comparison: Comparison,
    quantile: Option<String>,
) -> EvidenceStatus {
    let finite = |x: Option<f64>| x.filter(|v| v.is_finite());
    EvidenceStatus {
        comparison,
        decision: record.decision,
        quantile,
        threshold_seconds: finite(record.threshold_seconds),
        fail_log_evidence: finite(record.fail_log_evidence),
        pass_log_evidence: finite(record.pass_log_evidence),
        log_boundary: finite(record.log_boundary),
        alpha: record.alpha,
        canary_requests: record.canary_requests,
        canary_events: record.canary_events,
        stable_requests: record.stable_requests,
        stable_events: record.stable_events,
        odds_ratio: finite(record.odds_ratio),
        margin: finite(record.margin),
        latency_margin_seconds: finite(record.latency_margin_seconds),
        needed_canary_requests: record.needed_canary_requests,
        looks: record.looks,
    }
}

/// Whole seconds: what the API server keeps of a time.
fn whole_seconds(t: SystemTime) -> Option<Time> {
    let ts = Timestamp::try_from(t).ok()?;
    Timestamp::from_second(ts.as_second()).ok().map(Time)
}

/// One measurement as the status keeps it; `redact` hides secret values, as in messages.
pub fn measurement_status(
    m: &Measurement,
    spec: Option<&MetricSpec>,
    redact: &dyn Fn(&str) -> String,
) -> MeasurementStatus {
    let compared = spec.and_then(comparison);
    let evidence = compared.and_then(|(comparison, quantile)| {
        m.evidence
            .as_ref()
            .map(|r| evidence(r, comparison, quantile))
    });
    // A comparative measurement's value is the record the evidence already holds.
    let value = Some(m.value.as_str())
        .filter(|v| !v.is_empty() && evidence.is_none())
        .map(|v| cap(&redact(v), VALUE_LIMIT));
    MeasurementStatus {
        phase: m.phase,
        value,
        message: m
            .message
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| cap(&redact(s), MESSAGE_LIMIT)),
        measured_at: whole_seconds(m.finished_at),
        evidence,
    }
}

/// Every metric of a run with its latest measurement, in the template's order.
pub fn metric_statuses(results: &[MetricResult], analysis: &Analysis) -> Vec<MetricStatus> {
    let redact = |s: &str| analysis.redact(s);
    results
        .iter()
        .map(|r| {
            let spec = analysis.metrics.iter().find(|m| m.name == r.name);
            MetricStatus {
                name: r.name.clone(),
                phase: r.phase,
                latest: r
                    .last_measurement()
                    .map(|m| measurement_status(m, spec, &redact)),
                counts: MetricCounts {
                    count: r.count,
                    successful: r.successful,
                    failed: r.failed,
                    inconclusive: r.inconclusive,
                    error: r.error,
                    consecutive_error: r.consecutive_error,
                    consecutive_success: r.consecutive_success,
                },
            }
        })
        .collect()
}

/// What a run's status kept of its metrics, for the engine to resume the run from
/// ([`plover_analysis::run::Run::resume`]): counters, phase and the latest measurement (its
/// phase, value, message and time; a judge's statistics are not carried back, the judge starts
/// a fresh test).
pub fn kept_results(run: &AnalysisRunStatus) -> Vec<MetricResult> {
    run.metrics
        .iter()
        .map(|m| {
            let c = m.counts;
            let latest = m.latest.as_ref().map(|l| {
                let at = l
                    .measured_at
                    .as_ref()
                    .map_or(SystemTime::UNIX_EPOCH, |t| SystemTime::from(t.0));
                Measurement {
                    phase: l.phase,
                    value: l.value.clone().unwrap_or_default(),
                    message: l.message.clone(),
                    evidence: None,
                    started_at: at,
                    finished_at: at,
                }
            });
            MetricResult {
                name: m.name.clone(),
                phase: m.phase,
                message: None,
                reason: None,
                measurements: latest.into_iter().collect(),
                count: c.count,
                successful: c.successful,
                failed: c.failed,
                inconclusive: c.inconclusive,
                error: c.error,
                consecutive_error: c.consecutive_error,
                consecutive_success: c.consecutive_success,
                dry_run: false,
            }
        })
        .collect()
}

/// A positive number in three significant digits, without trailing zeros (`20`, `31.2`,
/// `0.0832`), or in scientific notation when very large or small (`2.4e17`).
fn number(x: f64) -> String {
    plover_sequential::compare::significant(x)
}

/// `4.1% (41/1000)`, or `none` when nothing was counted.
fn share(events: u64, requests: u64, none: &str) -> String {
    if requests == 0 {
        return none.to_owned();
    }
    let pct = 100.0 * events as f64 / requests as f64;
    let pct = if pct > 0.0 && pct < 1.0 {
        format!("{pct:.2}")
    } else {
        format!("{pct:.1}")
    };
    format!("{pct}% ({events}/{requests})")
}

/// The evidence in words, ending in the measurement's phase, e.g. `error ratio vs stable:
/// canary 4.1% (41/1000) vs stable 1.0% (98/9800); evidence for worse 31.2 ≥ boundary 20
/// (α 0.05) → Failed`. The evidence values are the likelihood ratios themselves (e^statistic),
/// the boundary is 1/α.
pub fn evidence_sentence(e: &EvidenceStatus, phase: AnalysisPhase) -> String {
    let margin = match (e.margin, e.latency_margin_seconds) {
        (Some(m), _) => Some(PassSide::ErrorRate(m)),
        (None, Some(seconds)) => Some(PassSide::Latency((seconds * 1e6).round() as u64)),
        (None, None) => None,
    };
    let (subject, worse, relative) = match e.comparison {
        Comparison::ErrorRatio => ("error ratio vs stable".to_owned(), "worse", "not worse"),
        Comparison::Latency => {
            let q = e.quantile.as_deref().unwrap_or("p99");
            let threshold = e
                .threshold_seconds
                .map(|t| format!(" ({} ms)", number(t * 1000.0)))
                .unwrap_or_default();
            (
                format!("{q} latency vs stable: requests slower than stable's {q}{threshold}"),
                "slower",
                "not slower",
            )
        }
        Comparison::LatencyDistribution => (
            "latency distribution vs stable: requests slower than stable's p50/p75/p90/p99 (least favourable)".to_owned(),
            "slower",
            "not slower",
        ),
    };
    let not_worse = margin.map_or_else(|| relative.to_owned(), |m| m.not_worse());
    let boundary = if e.alpha > 0.0 {
        number(1.0 / e.alpha)
    } else {
        e.log_boundary
            .map_or_else(|| "—".into(), |b| number(b.exp()))
    };
    let ratio = |log: Option<f64>| log.map_or_else(|| "—".into(), |l| number(l.exp()));
    let evidence = match e.decision {
        EvidenceDecision::Fail => format!(
            "evidence for {worse} {} ≥ boundary {boundary}",
            ratio(e.fail_log_evidence)
        ),
        EvidenceDecision::Pass => format!(
            "evidence for {not_worse} {} ≥ boundary {boundary}",
            ratio(e.pass_log_evidence)
        ),
        EvidenceDecision::Inconclusive => format!(
            "evidence for {worse} {}, for {not_worse} {}, both < boundary {boundary}",
            ratio(e.fail_log_evidence),
            ratio(e.pass_log_evidence),
        ),
    };
    let next = e
        .needed_canary_requests
        .filter(|_| e.decision == EvidenceDecision::Inconclusive)
        .and_then(|n| what_would_decide(Decision::Inconclusive, e.canary_requests, Some(n)))
        .map(|n| format!("; {n}"))
        .unwrap_or_default();
    // The latency judges count requests compared with stable's latency, which starts at the
    // second look: "no requests" would contradict the traffic the error judge counts.
    let none = match e.comparison {
        Comparison::ErrorRatio => "no requests yet",
        Comparison::Latency | Comparison::LatencyDistribution => "none compared yet",
    };
    format!(
        "{subject}: canary {} vs stable {}; {evidence} (α {}) → {phase:?}{next}",
        share(e.canary_events, e.canary_requests, none),
        share(e.stable_events, e.stable_requests, none),
        number(e.alpha),
    )
}

/// A metric's latest measurement in one line: the evidence sentence for a comparative
/// metric, else `value 0.983 → Successful` with the message, if any.
pub fn measurement_sentence(m: &MeasurementStatus) -> String {
    if let Some(e) = &m.evidence {
        return evidence_sentence(e, m.phase);
    }
    let mut parts = Vec::new();
    if let Some(v) = &m.value {
        parts.push(format!("value {v}"));
    }
    if let Some(message) = &m.message {
        parts.push(message.clone());
    }
    if parts.is_empty() {
        parts.push("no value".to_owned());
    }
    format!("{} → {:?}", parts.join("; "), m.phase)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use plover_analysis::{
        template::{self, ArgInputs},
        Phase,
    };

    fn analysis() -> Analysis {
        let yaml = "apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {name: t}\nspec:\n  args:\n  - name: token\n    valueFrom: {secretKeyRef: {name: api, key: token}}\n  metrics:\n  - name: errors-vs-stable\n    provider: {plover: {namespace: ns, service: svc, metric: errorRatioVsStable}}\n  - name: p95-vs-stable\n    provider: {plover: {namespace: ns, service: svc, metric: latencyVsStable, quantile: p95}}\n  - name: success-rate\n    successCondition: result >= 0.95\n    provider: {web: {url: 'http://x/?t={{args.token}}'}}\n";
        let docs = template::load(yaml).unwrap();
        let inputs = ArgInputs {
            secrets: [(("api".to_owned(), "token".to_owned()), "s3cret".to_owned())].into(),
            ..Default::default()
        };
        template::resolve(&template::flatten(&docs).unwrap(), &inputs).unwrap()
    }

    fn measurement(phase: Phase, value: &str, message: Option<&str>) -> Measurement {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_750);
        Measurement {
            phase,
            value: value.to_owned(),
            message: message.map(str::to_owned),
            // A judge's measurement carries its record typed; its value is the record's JSON.
            evidence: serde_json::from_str(value).ok(),
            started_at: at,
            finished_at: at,
        }
    }

    fn result(name: &str, phase: Phase, m: Measurement) -> MetricResult {
        let mut r = MetricResult::new(&plover_analysis::run::MetricPlan::new(name));
        r.phase = phase;
        r.measurements = vec![measurement(Phase::Successful, "0.1", None), m];
        r
    }

    const RECORD: &str = r#"{"decision":"Fail","failLogEvidence":3.4404,"passLogEvidence":-2.49,"logBoundary":2.9957,"alpha":0.05,"canaryRequests":1000,"canaryEvents":41,"stableRequests":9800,"stableEvents":98,"oddsRatio":4.21,"looks":7,"skippedSeconds":0.0,"asOfUnixMs":1700000000000}"#;

    #[test]
    fn comparative_measurements_keep_their_evidence_and_others_their_value() {
        let a = analysis();
        let results = [
            result(
                "errors-vs-stable",
                Phase::Failed,
                measurement(
                    Phase::Failed,
                    RECORD,
                    Some("error ratio: canary is worse than stable (…)"),
                ),
            ),
            result(
                "success-rate",
                Phase::Running,
                measurement(
                    Phase::Error,
                    "",
                    Some("GET http://x/?t=s3cret: connection refused"),
                ),
            ),
        ];
        let statuses = metric_statuses(&results, &a);
        assert_eq!(statuses.len(), 2);
        let errors = &statuses[0];
        assert_eq!(
            (errors.name.as_str(), errors.phase),
            ("errors-vs-stable", AnalysisPhase::Failed)
        );
        let latest = errors.latest.as_ref().unwrap();
        assert_eq!(latest.value, None, "the record is in the evidence");
        assert_eq!(
            latest.measured_at,
            Some(Time(Timestamp::from_second(1_700_000_000).unwrap())),
            "whole seconds, as the API server keeps them"
        );
        let e = latest.evidence.as_ref().unwrap();
        assert_eq!(e.comparison, Comparison::ErrorRatio);
        assert_eq!(e.decision, EvidenceDecision::Fail);
        assert_eq!(
            (
                e.canary_requests,
                e.canary_events,
                e.stable_requests,
                e.stable_events
            ),
            (1000, 41, 9800, 98)
        );
        assert_eq!(
            (e.fail_log_evidence, e.log_boundary, e.looks),
            (Some(3.4404), Some(2.9957), 7)
        );
        let other = statuses[1].latest.as_ref().unwrap();
        assert_eq!(other.evidence, None);
        assert_eq!(other.phase, AnalysisPhase::Error);
        assert_eq!(
            other.message.as_deref(),
            Some("GET http://x/?t=*****: connection refused"),
            "secret values are redacted as in every message"
        );
    }

    #[test]
    fn a_value_that_is_not_a_record_is_kept_as_a_value() {
        let a = analysis();
        let m = measurement(
            Phase::Inconclusive,
            "",
            Some("no data (Inconclusive by noData): no canary traffic"),
        );
        let s = measurement_status(
            &m,
            a.metrics.iter().find(|m| m.name == "p95-vs-stable"),
            &|s| s.to_owned(),
        );
        assert_eq!(s.evidence, None);
        assert_eq!(s.value, None);
        assert_eq!(
            measurement_sentence(&s),
            "no data (Inconclusive by noData): no canary traffic → Inconclusive"
        );
    }

    #[test]
    fn long_values_and_messages_are_capped() {
        let long = "x".repeat(5 * MESSAGE_LIMIT);
        let m = measurement(
            Phase::Successful,
            &format!("[{}]", "0.99,".repeat(100)),
            Some(&long),
        );
        let s = measurement_status(&m, None, &|s| s.to_owned());
        assert_eq!(
            s.value.as_deref().map(|v| v.chars().count()),
            Some(VALUE_LIMIT)
        );
        assert_eq!(
            s.message.as_deref().map(|v| v.chars().count()),
            Some(MESSAGE_LIMIT)
        );
        assert!(s.message.unwrap().ends_with('…'));
        assert_eq!(cap("short", 10), "short");
    }

    #[test]
    fn the_same_measurements_give_the_same_status() {
        // What keeps status writes quiet: no field depends on when the mapping runs.
        let a = analysis();
        let results = [result(
            "errors-vs-stable",
            Phase::Running,
            measurement(Phase::Inconclusive, RECORD, None),
        )];
        let first = metric_statuses(&results, &a);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(metric_statuses(&results, &a), first);
        let json = serde_json::to_value(&first).unwrap();
        let back: Vec<MetricStatus> = serde_json::from_value(json).unwrap();
        assert_eq!(back, first, "a status read back equals the one written");
    }

    #[test]
    fn evidence_reads_as_a_sentence() {
        let record = serde_json::from_str::<EvidenceRecord>(RECORD).unwrap();
        let fail = evidence(&record, Comparison::ErrorRatio, None);
        assert_eq!(
            evidence_sentence(&fail, AnalysisPhase::Failed),
            "error ratio vs stable: canary 4.1% (41/1000) vs stable 1.0% (98/9800); evidence for worse 31.2 ≥ boundary 20 (α 0.05) → Failed"
        );
        let waiting = EvidenceStatus {
            comparison: Comparison::Latency,
            decision: EvidenceDecision::Inconclusive,
            quantile: Some("p99".into()),
            threshold_seconds: Some(0.0412),
            fail_log_evidence: Some(-0.5),
            pass_log_evidence: Some(1.2),
            canary_requests: 180,
            canary_events: 3,
            stable_requests: 1620,
            stable_events: 15,
            ..fail.clone()
        };
        assert_eq!(
            evidence_sentence(&waiting, AnalysisPhase::Inconclusive),
            "p99 latency vs stable: requests slower than stable's p99 (41.2 ms): canary 1.7% (3/180) vs stable 0.93% (15/1620); evidence for slower 0.607, for not slower 3.32, both < boundary 20 (α 0.05) → Inconclusive"
        );
        let clean = EvidenceStatus {
            decision: EvidenceDecision::Pass,
            pass_log_evidence: Some(3.4),
            canary_requests: 2730,
            canary_events: 0,
            stable_requests: 3471,
            stable_events: 0,
            margin: Some(0.005),
            ..fail.clone()
        };
        assert_eq!(
            evidence_sentence(&clean, AnalysisPhase::Successful),
            "error ratio vs stable: canary 0.0% (0/2730) vs stable 0.0% (0/3471); evidence for not worse than stable by 0.5 points 30 ≥ boundary 20 (α 0.05) → Successful"
        );
        // An undecided latency judge with a margin says what would decide it.
        let with_margin = EvidenceStatus {
            latency_margin_seconds: Some(0.005),
            needed_canary_requests: Some(1_300),
            ..waiting.clone()
        };
        assert_eq!(
            evidence_sentence(&with_margin, AnalysisPhase::Inconclusive),
            "p99 latency vs stable: requests slower than stable's p99 (41.2 ms): canary 1.7% (3/180) vs stable 0.93% (15/1620); evidence for slower 0.607, for not slower than stable by 5 ms 3.32, both < boundary 20 (α 0.05) → Inconclusive; needs about 1300 more canary requests at these rates"
        );
        let pass = EvidenceStatus {
            comparison: Comparison::LatencyDistribution,
            decision: EvidenceDecision::Pass,
            pass_log_evidence: Some(45.0),
            alpha: 0.0125,
            canary_requests: 0,
            ..fail
        };
        assert_eq!(
            evidence_sentence(&pass, AnalysisPhase::Successful),
            "latency distribution vs stable: requests slower than stable's p50/p75/p90/p99 (least favourable): canary none compared yet vs stable 1.0% (98/9800); evidence for not slower 3.5e19 ≥ boundary 80 (α 0.0125) → Successful"
        );
    }
}
