//! The `…VsStable` metrics of `provider.plover`: canary against stable with the always-valid
//! sequential judges of [`plover_sequential`].
//!
//! Unlike every other provider these keep state across the measurements of a run: a judge per
//! metric accumulates evidence look after look ([`JudgeState`], held by
//! [`Providers`](super::super::Providers)). Each look consumes exactly the traffic since the
//! previous look — no second counted twice, none skipped when it can be avoided — with the
//! bookkeeping of [`plover_sequential::looks`]:
//!
//! 1. The first look judges the configured `window` (traffic before the run was never counted).
//! 2. Later looks ask for the whole seconds since the previous answer's `as_of_unix_ms`,
//!    estimated from the local clock and the exporter's clock as earlier answers revealed it.
//! 3. An answer that does not start exactly there is asked again once, with the corrected
//!    window. If it still does not line up, a later start is used and the skipped seconds are
//!    reported (skipping keeps the test valid); an overlapping answer is not used at all, and
//!    its whole stretch is skipped and reported (counting seconds twice would not be valid).
//! 4. If the exporter refuses the catch-up window (longer than it keeps), the configured
//!    `window` is asked instead, and the seconds before it are reported as skipped.
//! 5. When the canary's or stable's revision changes, a fresh test starts with that look.
//!
//! The measurement's phase is the judge's decision (Fail → Failed, Pass → Successful,
//! Inconclusive → Inconclusive), its value a JSON record of the statistics, its message
//! [`explain`]'s sentence plus any note about skipped seconds.

use std::{
    future::Future,
    time::{SystemTime, UNIX_EPOCH},
};

use plover_wire::{
    stats::{self, RevisionStats, StatsResponse},
    Histogram,
};

use super::{fetch, no_data, Outcome, ProviderError, Providers};
use plover_sequential::{
    compare::{explain, Interval, Judge, Sample, DISTRIBUTION_QUANTILES},
    looks::{Cursor, Fit},
    odds::{Decision, Evidence},
};

use crate::{
    phase::Phase,
    template::{PloverQuantity, PloverSpec},
};

/// A judge not looked at for this long is forgotten: its next look starts a fresh test. Longer
/// than the exporter keeps by default (10 minutes), so a live run never loses its judge.
pub const IDLE_EXPIRY_MS: u64 = 15 * 60 * 1000;

/// What the provider keeps for one `…VsStable` metric during a run.
#[derive(Clone, Debug)]
pub struct JudgeState {
    judge: Judge,
    cursor: Cursor,
    /// Canary and stable requests seen over every consumed look (for `noData`).
    canary_requests: u64,
    stable_requests: u64,
    /// Traffic time never judged because answers could not be lined up, ms.
    skipped_ms: u64,
    /// Local time of the latest look, ms (for [`IDLE_EXPIRY_MS`]).
    pub(crate) last_look_local_ms: u64,
    /// The canary and stable revisions the test is about (from the first look with both).
    revisions: Option<(String, String)>,
}

impl JudgeState {
    pub fn new(spec: &PloverSpec) -> JudgeState {
        let config = spec.odds_config();
        let judge = match spec.metric {
            PloverQuantity::LatencyVsStable => Judge::latency_quantile(
                spec.vs_stable_quantile().unwrap_or(0.99),
                config,
                spec.latency_margin_micros(),
            ),
            PloverQuantity::LatencyDistributionVsStable => {
                Judge::latency_distribution(config, spec.latency_margin_micros())
            }
            _ => Judge::error_ratio(config, spec.margin),
        };
        JudgeState {
            judge,
            cursor: Cursor::new(),
            canary_requests: 0,
            stable_requests: 0,
            skipped_ms: 0,
            last_look_local_ms: 0,
            revisions: None,
        }
    }
}

/// Local Unix time in ms.
pub fn local_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The state's key: metric name and its whole (resolved) spec, so that two Canaries, or a
/// changed template, never share a judge.
pub fn key(name: &str, spec: &PloverSpec) -> String {
    format!("{name}\u{1f}{spec:?}")
}

pub(super) async fn query(
    providers: &Providers,
    name: &str,
    spec: &PloverSpec,
) -> Result<Outcome, ProviderError> {
    let key = key(name, spec);
    let now = local_ms();
    let mut state = providers
        .take_judge(&key, now)
        .unwrap_or_else(|| JudgeState::new(spec));
    let result = look(&mut state, spec, now, |window| async move {
        let sent = local_ms();
        let answer = fetch(providers, spec, &format!("{window}s")).await;
        (answer, sent, local_ms())
    })
    .await;
    state.last_look_local_ms = local_ms();
    providers.put_judge(key, state);
    result
}

/// One revision's sample from an answer, decoding its histogram only when latency is judged.
fn sample(r: Option<&RevisionStats>, latency: bool, role: &str) -> Result<Sample, ProviderError> {
    let Some(r) = r else {
        return Ok(Sample::default());
    };
    let histogram = if latency && !r.histogram_v2_base64.is_empty() {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(r.histogram_v2_base64.trim())
            .map_err(|e| {
                ProviderError::Response(format!(
                    "{role} revision {:?}: histogram_v2_base64 is not base64: {e}",
                    r.revision
                ))
            })?;
        Histogram::decode_v2(&bytes).map_err(|e| {
            ProviderError::Response(format!(
                "{role} revision {:?}: histogram_v2_base64: {e}",
                r.revision
            ))
        })?
    } else {
        Histogram::new()
    };
    Ok(Sample {
        requests: r.requests,
        errors: r.errors,
        latency: histogram,
    })
}

/// The canary side of an answer: the revision `spec.revision` names, or with `canary` the
/// busiest revision with role canary.
fn canary_of<'a>(spec: &PloverSpec, answer: &'a StatsResponse) -> Option<&'a RevisionStats> {
    match spec.revision.as_str() {
        "canary" => answer.role("canary"),
        named => by_name(answer, named, "canary"),
    }
}

/// The entry of revision `name`. One revision can have two entries in a window, one per role
/// (a promoted revision served as canary, then as stable): the one in `role` is taken.
fn by_name<'a>(answer: &'a StatsResponse, name: &str, role: &str) -> Option<&'a RevisionStats> {
    let mut named = answer.revisions.iter().filter(|r| r.revision == name);
    let first = named.clone().next();
    named.find(|r| r.role == role).or(first)
}

/// The stable side: the revision `spec.stable_revision` names, or with `stable` the busiest
/// revision with role stable.
fn stable_of<'a>(spec: &PloverSpec, answer: &'a StatsResponse) -> Option<&'a RevisionStats> {
    match spec.stable_revision.as_str() {
        "stable" => answer.role("stable"),
        named => by_name(answer, named, "stable"),
    }
}

/// Canary (see [`canary_of`]) and stable (see [`stable_of`]) of one answer.
fn interval(spec: &PloverSpec, answer: &StatsResponse) -> Result<Interval, ProviderError> {
    let latency = spec.metric != PloverQuantity::ErrorRatioVsStable;
    Ok(Interval {
        canary: sample(canary_of(spec, answer), latency, "canary")?,
        stable: sample(stable_of(spec, answer), latency, "stable")?,
    })
}

fn seconds(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.3}s", ms as f64 / 1000.0)
    }
}

/// One look: fetch what is new since the previous look (`fetch(window_seconds)` returns the
/// answer with the local times it was asked and received), feed the judge, report.
pub async fn look<F, Fut>(
    state: &mut JudgeState,
    spec: &PloverSpec,
    local_now_ms: u64,
    mut fetch: F,
) -> Result<Outcome, ProviderError>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = (Result<StatsResponse, ProviderError>, u64, u64)>,
{
    let configured = stats::parse_window_seconds(&spec.window).ok_or_else(|| {
        ProviderError::Config(format!(
            "window {:?}: expected e.g. 30s, 5m or 1h",
            spec.window
        ))
    })?;
    let mut notes: Vec<String> = Vec::new();
    let ask = state
        .cursor
        .window_to_ask(local_now_ms)
        .unwrap_or(configured);
    let mut requeried = false;
    let (mut answer, mut sent, mut received) = match fetch(ask).await {
        (Ok(a), s, r) => (a, s, r),
        (Err(ProviderError::Response(e)), _, _) if ask > configured => {
            // Most likely longer than the exporter keeps: take the configured window, skip the rest.
            notes.push(format!(
                "the exporter refused a {ask}s window ({e}), so {configured}s were asked"
            ));
            requeried = true;
            let (a, s, r) = fetch(configured).await;
            (a?, s, r)
        }
        (Err(e), _, _) => return Err(e),
    };
    let mut fit = state
        .cursor
        .fit(answer.as_of_unix_ms, answer.window_seconds);
    if !requeried && matches!(fit, Fit::Gap { .. } | Fit::Overlap { .. }) {
        if let Some(w) = state.cursor.corrected_window(answer.as_of_unix_ms) {
            match fetch(w).await {
                (Ok(a), s, r) => {
                    fit = state.cursor.fit(a.as_of_unix_ms, a.window_seconds);
                    (answer, sent, received) = (a, s, r);
                }
                (Err(e), _, _) => notes.push(format!("asking again for {w}s failed ({e})")),
            }
        }
    }
    // A test is about one canary revision against one stable revision: when either changes
    // (a new canary, or a promotion), the evidence so far says nothing about the new pair, so a
    // fresh test starts with this look. The cursor stays: no second is counted twice.
    if let (Some(c), Some(st)) = (canary_of(spec, &answer), stable_of(spec, &answer)) {
        let now = (c.revision.clone(), st.revision.clone());
        match &state.revisions {
            Some(before) if *before != now => {
                notes.push(format!(
                    "the revisions changed from canary {:?} / stable {:?} to {:?} / {:?}: a fresh test started",
                    before.0, before.1, now.0, now.1
                ));
                let cursor = state.cursor;
                *state = JudgeState::new(spec);
                state.cursor = cursor;
                state.revisions = Some(now);
            }
            Some(_) => {}
            None => state.revisions = Some(now),
        }
    }
    let consumed = match fit {
        Fit::First | Fit::Exact => Some(interval(spec, &answer)?),
        Fit::Gap { skipped_ms } => {
            let i = interval(spec, &answer)?;
            state.skipped_ms += skipped_ms;
            notes.push(format!(
                "{} of traffic before this look could not be lined up with the previous look and were skipped, never counted",
                seconds(skipped_ms)
            ));
            Some(i)
        }
        Fit::Overlap { overlap_ms } => {
            let skipped = state
                .cursor
                .last_as_of_ms()
                .map_or(0, |last| answer.as_of_unix_ms.saturating_sub(last));
            state.skipped_ms += skipped;
            notes.push(format!(
                "the exporter's answer covered {}s, {} more than the time since the previous look; its {} were skipped rather than count seconds twice",
                answer.window_seconds,
                seconds(overlap_ms),
                seconds(skipped)
            ));
            None
        }
        Fit::Stale => {
            notes.push("no complete second of traffic since the previous look".to_owned());
            None
        }
    };
    // Requests known lost may belong to these seconds: their counts are not the whole truth,
    // so they are skipped (which keeps the test valid) rather than judged.
    let consumed = match consumed {
        Some(_) if answer.lost_requests > 0 => {
            let window_ms = answer.window_seconds.saturating_mul(1000);
            state.skipped_ms = state.skipped_ms.saturating_add(window_ms);
            notes.push(format!(
                "data incomplete: {} may belong to these {}s, which were skipped, not judged",
                stats::lost_requests_phrase(answer.lost_requests),
                answer.window_seconds
            ));
            None
        }
        other => other,
    };
    state.cursor.advance(answer.as_of_unix_ms, sent, received);
    let first = fit == Fit::First;
    let interval = consumed.unwrap_or_default();
    state.canary_requests += interval.canary.requests;
    state.stable_requests += interval.stable.requests;
    let evidence = state.judge.observe(&interval);
    let evidence = Evidence {
        needed_canary_requests: state.judge.needed_canary_requests(),
        ..evidence
    };
    Ok(report(state, spec, &evidence, &answer, first, notes))
}

/// What the judge compares, in words, and the α its boundary stands for.
fn subject(state: &JudgeState, spec: &PloverSpec) -> (String, f64) {
    let alpha = spec.odds_config().alpha;
    match spec.metric {
        PloverQuantity::LatencyVsStable => {
            let q = spec.quantile.as_deref().unwrap_or("p99");
            let what = match state.judge.threshold_micros() {
                Some(t) => format!(
                    "requests slower than stable's {q} ({:.1} ms)",
                    t as f64 / 1000.0
                ),
                None => format!("requests slower than stable's {q}"),
            };
            (what, alpha)
        }
        PloverQuantity::LatencyDistributionVsStable => {
            let qs: Vec<String> = DISTRIBUTION_QUANTILES
                .iter()
                .map(|q| format!("p{}", (q * 100.0).round()))
                .collect();
            (
                format!(
                    "requests slower than stable's {} (the least favourable; each tested at α/{})",
                    qs.join("/"),
                    qs.len()
                ),
                alpha / DISTRIBUTION_QUANTILES.len() as f64,
            )
        }
        _ => ("error ratio".to_owned(), alpha),
    }
}

/// Rounded to 4 decimals; `None` when not finite (JSON has no NaN or infinity).
fn round(x: f64) -> Option<f64> {
    x.is_finite().then(|| (x * 10_000.0).round() / 10_000.0)
}

/// The sequential test's decision so far.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
pub enum EvidenceDecision {
    /// The canary is shown worse than `tolerance` allows.
    Fail,
    /// The canary is shown not worse by `minEffect` or more.
    Pass,
    /// Neither yet.
    #[default]
    Inconclusive,
}

/// The statistics of one look. It travels typed with the measurement
/// ([`crate::run::Measurement::evidence`]) to the Canary's status; its JSON is the measurement's
/// value text, which `plover analyze` prints.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EvidenceRecord {
    pub decision: EvidenceDecision,
    pub fail_log_evidence: Option<f64>,
    pub pass_log_evidence: Option<f64>,
    pub log_boundary: Option<f64>,
    pub alpha: f64,
    pub canary_requests: u64,
    pub canary_events: u64,
    pub stable_requests: u64,
    pub stable_events: u64,
    pub odds_ratio: Option<f64>,
    /// The absolute margin the pass side is about (`margin`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin: Option<f64>,
    /// The latency margin the pass side is about (`latencyMargin`), in seconds, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_margin_seconds: Option<f64>,
    /// While undecided: about how many more canary requests at the rates so far would decide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needed_canary_requests: Option<u64>,
    pub looks: u64,
    pub skipped_seconds: Option<f64>,
    pub as_of_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_seconds: Option<f64>,
}

fn report(
    state: &JudgeState,
    spec: &PloverSpec,
    e: &Evidence,
    answer: &StatsResponse,
    first: bool,
    mut notes: Vec<String>,
) -> Outcome {
    let (what, alpha) = subject(state, spec);
    let t = e.totals;
    let decision = match e.decision {
        Decision::Fail => EvidenceDecision::Fail,
        Decision::Pass => EvidenceDecision::Pass,
        Decision::Inconclusive => EvidenceDecision::Inconclusive,
    };
    let record = EvidenceRecord {
        decision,
        fail_log_evidence: round(e.fail_log_evidence),
        pass_log_evidence: round(e.pass_log_evidence),
        log_boundary: round(e.log_boundary),
        alpha,
        canary_requests: t.canary_trials,
        canary_events: t.canary_events,
        stable_requests: t.stable_trials,
        stable_events: t.stable_events,
        odds_ratio: round(t.odds_ratio()),
        margin: spec.margin,
        latency_margin_seconds: spec.latency_margin_micros().map(|m| m as f64 / 1e6),
        needed_canary_requests: e.needed_canary_requests,
        looks: state.judge.looks(),
        skipped_seconds: round(state.skipped_ms as f64 / 1000.0),
        as_of_unix_ms: answer.as_of_unix_ms,
        threshold_seconds: state
            .judge
            .threshold_micros()
            .and_then(|t| round(t as f64 / 1e6)),
    };
    if first {
        notes.insert(
            0,
            format!("first look: the last {}s", answer.window_seconds),
        );
    }
    if let (Some(at), Decision::Fail | Decision::Pass) = (state.judge.decided_at(), e.decision) {
        if at < state.judge.looks() {
            notes.push(format!(
                "decided at look {at}; decisions stand once reached"
            ));
        }
    }
    if spec.metric != PloverQuantity::ErrorRatioVsStable && t.canary_trials + t.stable_trials == 0 {
        notes.push("latency is compared from the second look on, against stable's latency over the earlier looks".to_owned());
    }
    if state.skipped_ms > 0 {
        notes.push(format!("{} skipped in all", seconds(state.skipped_ms)));
    }
    let mut message = explain(&what, e, alpha, spec.pass_side());
    if !notes.is_empty() {
        message = format!("{message}; {}", notes.join("; "));
    }
    if state.canary_requests == 0 || state.stable_requests == 0 {
        let missing = if state.canary_requests == 0 {
            "canary"
        } else {
            "stable"
        };
        let why = format!(
            "no {missing} traffic for {}/{} in any look so far. {message}",
            spec.namespace, spec.service
        );
        return match no_data(spec, why) {
            Ok(Outcome::Decided { phase, message, .. }) => Outcome::Judged {
                phase,
                evidence: Box::new(record),
                message,
            },
            Ok(other) => other,
            Err(e) => Outcome::Judged {
                phase: Phase::Error,
                evidence: Box::new(record),
                message: e.to_string(),
            },
        };
    }
    let phase = match e.decision {
        Decision::Fail => Phase::Failed,
        Decision::Pass => Phase::Successful,
        Decision::Inconclusive => Phase::Inconclusive,
    };
    Outcome::Judged {
        phase,
        evidence: Box::new(record),
        message,
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, rc::Rc};

    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn spec(extra: serde_json::Value) -> PloverSpec {
        let mut v = serde_json::json!({"namespace": "ns", "service": "svc", "metric": "errorRatioVsStable", "window": "10s"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let s: PloverSpec = serde_json::from_value(v).unwrap();
        s.validate().unwrap();
        s
    }

    /// A scripted exporter: per second, `canary` and `stable` (requests, errors); answers the
    /// asked window ending at its clock's last complete second, optionally widened.
    struct Exporter {
        clock_ms: u64,
        canary: (u64, u64),
        stable: (u64, u64),
        widen: u64,
        refuse_over: Option<u64>,
        asked: Vec<u64>,
        /// Per-second latency histograms of canary and stable, if latency is served.
        latency: Option<(Histogram, Histogram)>,
        canary_revision: String,
        /// `lost_requests` of the next answers.
        lost: u64,
    }

    impl Exporter {
        fn new(canary: (u64, u64), stable: (u64, u64)) -> Rc<RefCell<Exporter>> {
            Rc::new(RefCell::new(Exporter {
                clock_ms: T0 + 250,
                canary,
                stable,
                widen: 0,
                refuse_over: None,
                asked: Vec::new(),
                latency: None,
                canary_revision: "canary-rev".into(),
                lost: 0,
            }))
        }

        fn answer(&mut self, window: u64) -> Result<StatsResponse, ProviderError> {
            self.asked.push(window);
            if self.refuse_over.is_some_and(|max| window > max) {
                return Err(ProviderError::Response(
                    "exporter returned HTTP status 400 Bad Request: window: too long".into(),
                ));
            }
            let w = window + self.widen;
            let histogram = |per_second: Option<&Histogram>| {
                use base64::Engine as _;
                let Some(h) = per_second else {
                    return String::new();
                };
                let mut all = Histogram::new();
                (0..w).for_each(|_| all.merge(h));
                base64::engine::general_purpose::STANDARD.encode(all.to_v2())
            };
            let revision = |role: &str, (n, x): (u64, u64), h: Option<&Histogram>| RevisionStats {
                revision: if role == "canary" {
                    self.canary_revision.clone()
                } else {
                    format!("{role}-rev")
                },
                role: role.into(),
                requests: n * w,
                errors: x * w,
                histogram_v2_base64: histogram(h),
                ..Default::default()
            };
            let (c, st) = match &self.latency {
                Some((c, st)) => (Some(c), Some(st)),
                None => (None, None),
            };
            Ok(StatsResponse {
                window_seconds: w,
                as_of_unix_ms: self.clock_ms / 1000 * 1000,
                revisions: vec![
                    revision("canary", self.canary, c),
                    revision("stable", self.stable, st),
                ],
                lost_requests: self.lost,
                ..Default::default()
            })
        }
    }

    /// One look at local time = exporter clock − `skew` ms.
    async fn look_at(
        state: &mut JudgeState,
        spec: &PloverSpec,
        exporter: &Rc<RefCell<Exporter>>,
        skew: u64,
    ) -> Outcome {
        let now = exporter.borrow().clock_ms - skew;
        let e = exporter.clone();
        look(state, spec, now, move |w| {
            let e = e.clone();
            async move {
                let local = e.borrow().clock_ms - skew;
                (e.borrow_mut().answer(w), local, local + 3)
            }
        })
        .await
        .unwrap()
    }

    fn record(outcome: &Outcome) -> (Phase, serde_json::Value, String) {
        let Outcome::Judged {
            phase,
            evidence,
            message,
        } = outcome
        else {
            panic!("{outcome:?}")
        };
        (
            *phase,
            serde_json::to_value(evidence).unwrap(),
            message.clone(),
        )
    }

    #[tokio::test]
    async fn looks_line_up_and_every_second_counts_once() {
        let s = spec(serde_json::json!({}));
        let mut state = JudgeState::new(&s);
        let exporter = Exporter::new((10, 0), (90, 1));
        let (phase, v, message) = record(&look_at(&mut state, &s, &exporter, 400).await);
        assert_eq!(phase, Phase::Inconclusive);
        assert!(message.contains("first look: the last 10s"), "{message}");
        assert_eq!(v["canaryRequests"], 100);
        for step in [7_300, 10_000, 12_900, 1_000, 30_000] {
            exporter.borrow_mut().clock_ms += step;
            look_at(&mut state, &s, &exporter, 400).await;
        }
        let (_, v, message) = record(&look_at(&mut state, &s, &exporter, 400).await);
        // Exporter time 10 s before T0 … its last complete second, each second exactly once.
        let covered = (exporter.borrow().clock_ms / 1000 * 1000 - (T0 - 10_000)) / 1000;
        assert_eq!(v["canaryRequests"], 10 * covered, "{v}");
        assert_eq!(v["stableEvents"], covered, "{v}");
        assert_eq!(v["skippedSeconds"], 0.0);
        assert!(!message.contains("skipped"), "{message}");
        // Re-queries happen only while the clock offset is being learnt.
        assert!(
            exporter.borrow().asked.len() <= 9,
            "{:?}",
            exporter.borrow().asked
        );
    }

    #[tokio::test]
    async fn a_misjudged_window_is_asked_again() {
        let s = spec(serde_json::json!({}));
        let mut state = JudgeState::new(&s);
        let exporter = Exporter::new((10, 0), (90, 1));
        look_at(&mut state, &s, &exporter, 0).await;
        // Our clock runs 5 s behind the exporter's from now on: the estimate is too short.
        exporter.borrow_mut().clock_ms += 20_000;
        let (_, v, message) = record(&look_at(&mut state, &s, &exporter, 5_000).await);
        let asked = exporter.borrow().asked.clone();
        assert_eq!(asked[asked.len() - 1], 20, "{asked:?}");
        assert_eq!(v["canaryRequests"], 300);
        assert!(!message.contains("skipped"), "{message}");
    }

    #[tokio::test]
    async fn a_widened_answer_is_skipped_never_double_counted() {
        let s = spec(serde_json::json!({}));
        let mut state = JudgeState::new(&s);
        let exporter = Exporter::new((10, 0), (90, 1));
        look_at(&mut state, &s, &exporter, 0).await;
        exporter.borrow_mut().clock_ms += 10_000;
        exporter.borrow_mut().widen = 3;
        let (_, v, message) = record(&look_at(&mut state, &s, &exporter, 0).await);
        assert_eq!(v["canaryRequests"], 100, "only the first look: {v}");
        assert_eq!(v["skippedSeconds"], 10.0);
        assert!(
            message.contains("its 10s were skipped rather than count seconds twice"),
            "{message}"
        );
        // The next look lines up again after the skipped stretch.
        exporter.borrow_mut().widen = 0;
        exporter.borrow_mut().clock_ms += 5_000;
        let (_, v, _) = record(&look_at(&mut state, &s, &exporter, 0).await);
        assert_eq!(v["canaryRequests"], 150);
    }

    #[tokio::test]
    async fn seconds_with_known_losses_are_skipped_not_judged() {
        // Issue 17, item 1: the exporter says requests were lost in the window.
        let s = spec(serde_json::json!({}));
        let mut state = JudgeState::new(&s);
        let exporter = Exporter::new((10, 0), (90, 1));
        look_at(&mut state, &s, &exporter, 0).await;
        exporter.borrow_mut().clock_ms += 10_000;
        exporter.borrow_mut().lost = 7;
        let (phase, v, message) = record(&look_at(&mut state, &s, &exporter, 0).await);
        assert_eq!(v["canaryRequests"], 100, "only the first look: {v}");
        assert_eq!(v["skippedSeconds"], 10.0);
        assert!(
            message.contains("data incomplete: 7 requests lost (dropped by a gateway or refused by the exporter) may belong to these 10s, which were skipped, not judged"),
            "{message}"
        );
        assert_eq!(phase, Phase::Inconclusive);
        exporter.borrow_mut().lost = 0;
        exporter.borrow_mut().clock_ms += 5_000;
        let (_, v, _) = record(&look_at(&mut state, &s, &exporter, 0).await);
        assert_eq!(v["canaryRequests"], 150);
    }

    #[tokio::test]
    async fn a_gap_longer_than_the_exporter_keeps_is_skipped_and_said() {
        let s = spec(serde_json::json!({}));
        let mut state = JudgeState::new(&s);
        let exporter = Exporter::new((10, 0), (90, 1));
        look_at(&mut state, &s, &exporter, 0).await;
        exporter.borrow_mut().refuse_over = Some(600);
        exporter.borrow_mut().clock_ms += 900_000;
        let (_, v, message) = record(&look_at(&mut state, &s, &exporter, 0).await);
        assert_eq!(exporter.borrow().asked[1..], [900, 10]);
        assert_eq!(v["canaryRequests"], 200);
        assert_eq!(v["skippedSeconds"], 890.0);
        assert!(
            message.contains("the exporter refused a 900s window"),
            "{message}"
        );
        assert!(
            message.contains("890s of traffic before this look could not be lined up"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn verdicts_map_to_phases() {
        // Twice stable's errors: Failed, and it stays Failed.
        let s = spec(serde_json::json!({"window": "30s"}));
        let mut state = JudgeState::new(&s);
        let bad = Exporter::new((100, 4), (900, 18));
        let mut phases = Vec::new();
        for _ in 0..12 {
            phases.push(record(&look_at(&mut state, &s, &bad, 0).await).0);
            bad.borrow_mut().clock_ms += 10_000;
        }
        assert_eq!(phases.last(), Some(&Phase::Failed), "{phases:?}");
        let first_fail = phases.iter().position(|p| *p == Phase::Failed).unwrap();
        assert!(phases[first_fail..].iter().all(|p| *p == Phase::Failed));
        let (_, v, message) = record(&look_at(&mut state, &s, &bad, 0).await);
        assert_eq!(v["decision"], "Fail");
        assert!(v["failLogEvidence"].as_f64().unwrap() >= v["logBoundary"].as_f64().unwrap());
        assert!(
            message.starts_with("error ratio: canary is worse than stable (canary "),
            "{message}"
        );
        // Equal error rates: Successful eventually, never Failed.
        let mut state = JudgeState::new(&s);
        let equal = Exporter::new((100, 2), (900, 18));
        let mut phases = Vec::new();
        for _ in 0..40 {
            phases.push(record(&look_at(&mut state, &s, &equal, 0).await).0);
            equal.borrow_mut().clock_ms += 10_000;
        }
        assert!(!phases.contains(&Phase::Failed), "{phases:?}");
        assert_eq!(phases.last(), Some(&Phase::Successful), "{phases:?}");
        // No canary traffic: noData (Inconclusive by default).
        let mut state = JudgeState::new(&s);
        let none = Exporter::new((0, 0), (900, 18));
        let (phase, _, message) = record(&look_at(&mut state, &s, &none, 0).await);
        assert_eq!(phase, Phase::Inconclusive);
        assert!(
            message.contains("no data (Inconclusive by noData): no canary traffic"),
            "{message}"
        );
    }

    #[test]
    fn a_named_canary_revision_ignores_a_busier_previous_canary() {
        // The window still holds a previous canary (role canary, more requests, no errors);
        // the release being judged is `canary-rev` with 50% errors.
        let exporter = Exporter::new((10, 5), (100, 1));
        let previous = |answer: &mut StatsResponse| {
            answer.revisions.push(RevisionStats {
                revision: "previous-rev".into(),
                role: "canary".into(),
                requests: 10_000,
                ..Default::default()
            })
        };
        let named = spec(serde_json::json!({"revision": "canary-rev"}));
        let busiest = spec(serde_json::json!({}));
        let answer = |e: &Rc<RefCell<Exporter>>| {
            let mut a = e.borrow_mut().answer(10).unwrap();
            previous(&mut a);
            a
        };
        let a = answer(&exporter);
        assert_eq!(
            canary_of(&named, &a).map(|r| r.revision.as_str()),
            Some("canary-rev")
        );
        assert_eq!(
            canary_of(&busiest, &a).map(|r| r.revision.as_str()),
            Some("previous-rev")
        );
        assert_eq!(interval(&named, &a).unwrap().canary.errors, 50);
        assert_eq!(interval(&busiest, &a).unwrap().canary.errors, 0);
        // A named revision absent from the window is no canary data, not another revision's.
        let absent = spec(serde_json::json!({"revision": "not-deployed"}));
        assert_eq!(interval(&absent, &a).unwrap().canary.requests, 0);
        // An absolute margin: errorRatioVsStable only, a difference between 0 and 1.
        for (extra, expected) in [
            (serde_json::json!({"margin": 0}), "provider.plover.margin"),
            (
                serde_json::json!({"margin": "1.5"}),
                "provider.plover.margin",
            ),
            (
                serde_json::json!({"margin": 0.01, "metric": "latencyVsStable"}),
                "only errorRatioVsStable takes an absolute margin",
            ),
            // A latency margin: the latency metrics only, a duration above zero.
            (
                serde_json::json!({"latencyMargin": "5ms"}),
                "provider.plover.latencyMargin: only latencyVsStable",
            ),
            (
                serde_json::json!({"latencyMargin": "0s", "metric": "latencyVsStable"}),
                "provider.plover.latencyMargin: \"0s\": expected a duration above zero",
            ),
            (
                serde_json::json!({"latencyMargin": "five", "metric": "latencyDistributionVsStable"}),
                "provider.plover.latencyMargin",
            ),
            (
                serde_json::json!({"latencyMargin": "5ms", "metric": "errorRate"}),
                "provider.plover.latencyMargin: only the errorRatioVsStable",
            ),
        ] {
            let mut v = serde_json::json!({"namespace": "ns", "service": "svc", "metric": "errorRatioVsStable"});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let err = serde_json::from_value::<PloverSpec>(v)
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
        assert_eq!(
            spec(serde_json::json!({"margin": "0.005"})).margin,
            Some(0.005)
        );
        let latency =
            spec(serde_json::json!({"latencyMargin": "5ms", "metric": "latencyVsStable"}));
        assert_eq!(latency.validate(), Ok(()));
        assert_eq!(latency.latency_margin_micros(), Some(5_000));
        assert_eq!(
            latency.pass_side(),
            plover_sequential::compare::PassSide::Latency(5_000)
        );
        // The stable side cannot be named.
        let mut v = serde_json::json!({"namespace": "ns", "service": "svc", "metric": "errorRatioVsStable", "revision": "stable"});
        let err = serde_json::from_value::<PloverSpec>(v.take())
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.contains("provider.plover.revision"), "{err}");
    }

    #[test]
    fn a_named_stable_revision_ignores_the_previous_stable_after_a_promotion() {
        // Right after a promotion the window still holds the old stable (role stable, busier,
        // many errors); stable is now `stable-rev`, clean.
        let exporter = Exporter::new((10, 0), (100, 0));
        let mut a = exporter.borrow_mut().answer(10).unwrap();
        a.revisions.push(RevisionStats {
            revision: "old-stable-rev".into(),
            role: "stable".into(),
            requests: 10_000,
            errors: 5_000,
            ..Default::default()
        });
        let named = spec(serde_json::json!({"stableRevision": "stable-rev"}));
        let by_role = spec(serde_json::json!({}));
        assert_eq!(interval(&named, &a).unwrap().stable.errors, 0);
        assert_eq!(interval(&named, &a).unwrap().stable.requests, 1000);
        assert_eq!(interval(&by_role, &a).unwrap().stable.errors, 5_000);
        // The same revision served as canary before the promotion: stable's entry is taken.
        a.revisions.insert(
            0,
            RevisionStats {
                revision: "stable-rev".into(),
                role: "canary".into(),
                requests: 77,
                errors: 7,
                ..Default::default()
            },
        );
        assert_eq!(interval(&named, &a).unwrap().stable.requests, 1000);
        // A named stable revision absent from the window is no stable data.
        let absent = spec(serde_json::json!({"stableRevision": "gone"}));
        assert_eq!(interval(&absent, &a).unwrap().stable.requests, 0);
    }

    #[tokio::test]
    async fn a_new_canary_revision_starts_a_fresh_test() {
        let s = spec(serde_json::json!({}));
        let mut state = JudgeState::new(&s);
        let bad = Exporter::new((100, 4), (900, 18));
        let (phase, _, _) = record(&look_at(&mut state, &s, &bad, 0).await);
        assert_eq!(phase, Phase::Failed);
        // Same service, same metric, a new canary revision: the Fail does not carry over.
        let good = Exporter::new((100, 2), (900, 18));
        good.borrow_mut().clock_ms = bad.borrow().clock_ms + 10_000;
        good.borrow_mut().canary_revision = "canary-rev2".into();
        let (phase, v, message) = record(&look_at(&mut state, &s, &good, 0).await);
        assert_ne!(phase, Phase::Failed, "{message}");
        assert!(message.contains("the revisions changed from canary \"canary-rev\" / stable \"stable-rev\" to \"canary-rev2\" / \"stable-rev\": a fresh test started"), "{message}");
        assert_eq!(v["canaryRequests"], 1000, "only the new look: {v}");
        assert_eq!(v["looks"], 1);
    }

    /// 100 requests a second, 10–30 ms (stable) or `factor` × that (canary).
    fn latencies(factor: f64) -> Histogram {
        let mut h = Histogram::new();
        for i in 0..100u64 {
            h.record(((10_000 + 200 * i) as f64 * factor) as u64);
        }
        h
    }

    #[tokio::test]
    async fn latency_judges_decode_the_histograms() {
        for (metric, quantile) in [
            ("latencyVsStable", Some("p90")),
            ("latencyDistributionVsStable", None),
        ] {
            let mut extra = serde_json::json!({"metric": metric});
            if let Some(q) = quantile {
                extra["quantile"] = q.into();
            }
            let s = spec(extra);
            let mut state = JudgeState::new(&s);
            let slow = Exporter::new((100, 0), (100, 0));
            slow.borrow_mut().latency = Some((latencies(1.3), latencies(1.0)));
            let (phase, v, message) = record(&look_at(&mut state, &s, &slow, 0).await);
            // The first look only sets stable's threshold.
            assert_eq!(
                (phase, v["canaryRequests"].as_u64()),
                (Phase::Inconclusive, Some(0)),
                "{message}"
            );
            assert!(
                message.contains("latency is compared from the second look on"),
                "{message}"
            );
            let mut last = (phase, v, message);
            for _ in 0..10 {
                slow.borrow_mut().clock_ms += 5_000;
                last = record(&look_at(&mut state, &s, &slow, 0).await);
                if last.0 == Phase::Failed {
                    break;
                }
            }
            let (phase, v, message) = last;
            assert_eq!(phase, Phase::Failed, "{metric}: {message}");
            assert!(
                message.starts_with("requests slower than stable's p"),
                "{message}"
            );
            if quantile.is_some() {
                // Stable's p90 of 10–30 ms is about 28 ms.
                let t = v["thresholdSeconds"].as_f64().unwrap();
                assert!((0.027..0.030).contains(&t), "{v}");
            }
            // The same latency: never Failed.
            let mut state = JudgeState::new(&s);
            let same = Exporter::new((100, 0), (100, 0));
            same.borrow_mut().latency = Some((latencies(1.0), latencies(1.0)));
            for _ in 0..10 {
                let (phase, _, message) = record(&look_at(&mut state, &s, &same, 0).await);
                assert_ne!(phase, Phase::Failed, "{metric}: {message}");
                same.borrow_mut().clock_ms += 5_000;
            }
        }
    }
}
