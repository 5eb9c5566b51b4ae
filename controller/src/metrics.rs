//! The controller's own Prometheus metrics and the `/metrics` + `/healthz` server.
//!
//! Per Canary: phase (one series per phase, 1 for the current one, as kube-state-metrics does),
//! desired and observed canary weight, and the measurements of its analysis runs by phase.
//! Per controller: reconciles and reconcile errors by kind.

use std::{
    convert::Infallible,
    sync::{atomic::AtomicU64, Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming, header::CONTENT_TYPE, service::service_fn, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::net::TcpListener;

use crate::canary::{AnalysisRunStatus, CanaryPhase, CanaryStatus};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CanaryLabels {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub namespace: String,
    pub name: String,
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MeasurementLabels {
    pub namespace: String,
    pub name: String,
    /// `step` or `background`.
    pub analysis: String,
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: String,
}

const PHASES: [CanaryPhase; 5] = [
    CanaryPhase::Progressing,
    CanaryPhase::Paused,
    CanaryPhase::Promoting,
    CanaryPhase::Healthy,
    CanaryPhase::Degraded,
];

pub struct Metrics {
    registry: Mutex<Registry>,
    phase: Family<PhaseLabels, Gauge>,
    desired_weight: Family<CanaryLabels, Gauge>,
    observed_weight: Family<CanaryLabels, Gauge<f64, AtomicU64>>,
    measurements: Family<MeasurementLabels, Gauge>,
    split_mismatch: Family<CanaryLabels, Gauge>,
    reconciles: Counter,
    reconcile_errors: Family<ErrorLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("plover");
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            phase: Family::default(),
            desired_weight: Family::default(),
            observed_weight: Family::default(),
            measurements: Family::default(),
            split_mismatch: Family::default(),
            reconciles: Counter::default(),
            reconcile_errors: Family::default(),
        };
        registry.register(
            "canary_phase",
            "Canary phase (1 for the current phase)",
            m.phase.clone(),
        );
        registry.register(
            "canary_desired_weight",
            "Canary weight written to the router, percent",
            m.desired_weight.clone(),
        );
        registry.register(
            "canary_observed_weight",
            "Canary share of requests seen by the exporter, percent",
            m.observed_weight.clone(),
        );
        registry.register(
            "canary_analysis_measurements",
            "Measurements of the current analysis runs by phase",
            m.measurements.clone(),
        );
        registry.register(
            "canary_traffic_split_mismatch",
            "1 while the observed split stays away from the desired weight (condition TrafficSplitMismatch)",
            m.split_mismatch.clone(),
        );
        registry.register("reconciles", "Canary reconciles", m.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Canary reconciles that failed, by error kind",
            m.reconcile_errors.clone(),
        );
        *m.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = registry;
        m
    }

    /// Records a Canary's status after a reconcile.
    pub fn observe(&self, namespace: &str, name: &str, status: &CanaryStatus) {
        self.reconciles.inc();
        let labels = CanaryLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        for phase in PHASES {
            let current = status.phase == Some(phase);
            self.phase
                .get_or_create(&PhaseLabels {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    phase: phase.as_str().to_owned(),
                })
                .set(i64::from(current));
        }
        let mismatch = status.is_condition_true(crate::canary::conditions::TRAFFIC_SPLIT_MISMATCH);
        self.split_mismatch
            .get_or_create(&labels)
            .set(i64::from(mismatch));
        self.desired_weight
            .get_or_create(&labels)
            .set(i64::from(status.desired_weight));
        // No observation at this weight: no sample, rather than the last weight's share.
        match status.observed_weight {
            Some(w) => {
                self.observed_weight.get_or_create(&labels).set(w);
            }
            None => {
                self.observed_weight.remove(&labels);
            }
        }
        for (analysis, run) in [
            ("step", &status.step_analysis),
            ("background", &status.background_analysis),
        ] {
            let counts = run.as_ref().map_or([0; 4], |r: &AnalysisRunStatus| {
                [r.successful, r.failed, r.inconclusive, r.error]
            });
            for (phase, count) in ["Successful", "Failed", "Inconclusive", "Error"]
                .into_iter()
                .zip(counts)
            {
                let l = MeasurementLabels {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    analysis: analysis.to_owned(),
                    phase: phase.to_owned(),
                };
                self.measurements.get_or_create(&l).set(i64::from(count));
            }
        }
    }

    pub fn reconcile_error(&self, kind: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                error: kind.to_owned(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

/// Serves `/metrics` and `/healthz` until the task is dropped. `/healthz` answers 200 while the
/// process serves: a controller that cannot work (no CRD, a lost Lease) exits instead, so
/// there is no unhealthy state to report.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(request.uri().path(), &metrics)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(path: &str, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        response.headers_mut().insert(CONTENT_TYPE, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canary::{AnalysisPhase, CanaryPhase};

    #[test]
    fn exposes_phase_weights_measurements_and_errors() {
        let m = Metrics::new();
        let status = CanaryStatus {
            phase: Some(CanaryPhase::Paused),
            desired_weight: 20,
            observed_weight: Some(19.5),
            step_analysis: Some(AnalysisRunStatus {
                name: "r".into(),
                phase: AnalysisPhase::Running,
                successful: 3,
                failed: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        m.observe("test", "podinfo", &status);
        m.reconcile_error("kube");
        let text = m.encode();
        for line in [
            "plover_canary_phase{namespace=\"test\",name=\"podinfo\",phase=\"Paused\"} 1",
            "plover_canary_phase{namespace=\"test\",name=\"podinfo\",phase=\"Healthy\"} 0",
            "plover_canary_desired_weight{namespace=\"test\",name=\"podinfo\"} 20",
            "plover_canary_observed_weight{namespace=\"test\",name=\"podinfo\"} 19.5",
            "plover_canary_analysis_measurements{namespace=\"test\",name=\"podinfo\",analysis=\"step\",phase=\"Successful\"} 3",
            "plover_reconcile_errors_total{error=\"kube\"} 1",
            "plover_reconciles_total 1",
            "plover_canary_traffic_split_mismatch{namespace=\"test\",name=\"podinfo\"} 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert_eq!(respond("/healthz", &m).status(), StatusCode::OK);
        assert_eq!(respond("/nope", &m).status(), StatusCode::NOT_FOUND);
    }
}
