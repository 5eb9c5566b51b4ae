//! Metric providers: the only part of the analysis engine that does I/O.
//!
//! A [`Source`] turns a metric into an [`Outcome`] (a value for the conditions, or a verdict
//! the provider reached itself, such as Plover's "too little traffic"). [`measure`] wraps one
//! query into a finished [`Measurement`]: provider failures become Error measurements, as in
//! Argo, and values are judged by [`judge`](super::judge).

pub mod jsonpath;
pub mod plover;
pub mod prometheus;
pub mod web;

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use super::{
    judge,
    phase::Phase,
    provider::plover::vs_stable::EvidenceRecord,
    run::Measurement,
    template::{MetricSpec, ProviderSpec},
    value::Value,
};

/// What a provider found.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// A value for the conditions, and its text for the measurement (`0.98`, `[0.98]`).
    Value { value: Value, text: String },
    /// The provider decided the phase itself (Plover's `noData`); conditions are not evaluated.
    Decided {
        phase: Phase,
        text: String,
        message: String,
    },
    /// A canary-versus-stable judge decided, with the statistics of its look.
    Judged {
        phase: Phase,
        evidence: Box<EvidenceRecord>,
        message: String,
    },
}

/// Why a provider could not produce a value. Every variant makes the measurement an Error.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The metric's configuration cannot be used (bad address, both body kinds …).
    #[error("{0}")]
    Config(String),
    /// The request failed or timed out.
    #[error("{0}")]
    Transport(String),
    /// The server answered, but not with a usable result.
    #[error("{0}")]
    Response(String),
    /// The metric's provider cannot run here.
    #[error("{provider}: {reason}")]
    Unsupported { provider: String, reason: String },
}

/// A boxed future, so that [`Source`] stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that can query a metric's provider.
pub trait Source: Send + Sync {
    fn query<'a>(&'a self, metric: &'a MetricSpec)
        -> BoxFuture<'a, Result<Outcome, ProviderError>>;

    /// A source for one new analysis run, when this one keeps state across a run's
    /// measurements (Plover's `…VsStable` judges): the caller should use it for every
    /// measurement of that run, so that each run starts its tests fresh. `None`: use `self`.
    fn for_run(&self) -> Option<Arc<dyn Source>> {
        None
    }

    /// Why this source cannot measure `metric` at all, if so (see [`runnable`]).
    fn unsupported(&self, metric: &MetricSpec) -> Option<String> {
        match &metric.provider {
            ProviderSpec::Unsupported { reason, .. } => Some(reason.clone()),
            _ => None,
        }
    }
}

/// The metrics of an analysis that will be measured, and those left out with why.
#[derive(Clone, Debug)]
pub struct Runnable {
    pub metrics: Vec<MetricSpec>,
    pub skipped: Vec<(MetricSpec, String)>,
}

/// Sorts `metrics` by whether `source` can measure them. One rule for `plover analyze`, the
/// controller and local mode: a metric that cannot be measured here is refused before anything
/// runs (`Err` names it) — left out, it would drop a gate without a word; measured, it could
/// only ever be an Error and roll the release back — unless it is dry-run, which cannot change
/// the run's phase anyway: then it is left out and reported as skipped.
pub fn runnable(source: &dyn Source, metrics: &[MetricSpec]) -> Result<Runnable, String> {
    let mut out = Runnable {
        metrics: Vec::new(),
        skipped: Vec::new(),
    };
    for metric in metrics {
        match source.unsupported(metric) {
            None => out.metrics.push(metric.clone()),
            Some(reason) if metric.dry_run => out.skipped.push((metric.clone(), reason)),
            Some(reason) => {
                return Err(format!(
                    "metric {:?} cannot be measured here: {reason}; list it under dryRun to run \
                     the analysis without it",
                    metric.name
                ))
            }
        }
    }
    Ok(out)
}

/// Addresses that complete or override the templates' own.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Replaces every prometheus metric's `address` (`plover analyze --prometheus`).
    pub prometheus_override: Option<String>,
    /// Used when a prometheus metric has no address (Argo's `ARGO_ROLLOUTS_PROMETHEUS_ADDRESS`).
    pub prometheus_default: Option<String>,
    /// The exporter, for plover metrics without `address` (`--exporter`, `PLOVER_EXPORTER_ADDRESS`).
    pub exporter: Option<String>,
}

/// The real providers over HTTP.
#[derive(Clone, Debug)]
pub struct Providers {
    client: reqwest::Client,
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    insecure_client: reqwest::Client,
    settings: Settings,
    /// The `…VsStable` judges of this run, by metric name and spec (see [`plover::vs_stable`]).
    judges: Arc<Mutex<HashMap<String, plover::vs_stable::JudgeState>>>,
}

impl Providers {
    pub fn new(settings: Settings) -> Result<Self, ProviderError> {
        let build = |insecure: bool| {
            let builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(30));
            #[cfg(feature = "tls")]
            let builder = builder.danger_accept_invalid_certs(insecure);
            #[cfg(not(feature = "tls"))]
            let _ = insecure;
            builder
                .build()
                .map_err(|e| ProviderError::Config(format!("cannot build the HTTP client: {e}")))
        };
        Ok(Providers {
            client: build(false)?,
            insecure_client: build(true)?,
            settings,
            judges: Arc::default(),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The same providers (clients and settings shared) with no sequential judge yet: what a
    /// new analysis run should measure with ([`Source::for_run`]).
    pub fn for_run(&self) -> Providers {
        Providers {
            judges: Arc::default(),
            ..self.clone()
        }
    }

    /// Takes a metric's judge out (forgetting judges idle for longer than
    /// [`plover::vs_stable::IDLE_EXPIRY_MS`]); [`Providers::put_judge`] puts it back.
    pub(crate) fn take_judge(
        &self,
        key: &str,
        local_now_ms: u64,
    ) -> Option<plover::vs_stable::JudgeState> {
        let mut judges = self.judges.lock().unwrap_or_else(|e| e.into_inner());
        judges.retain(|_, j| {
            local_now_ms.saturating_sub(j.last_look_local_ms) < plover::vs_stable::IDLE_EXPIRY_MS
        });
        judges.remove(key)
    }

    pub(crate) fn put_judge(&self, key: String, judge: plover::vs_stable::JudgeState) {
        let mut judges = self.judges.lock().unwrap_or_else(|e| e.into_inner());
        judges.insert(key, judge);
    }

    /// The client for a URL, refusing `https` in a build without TLS.
    pub(crate) fn client_for(
        &self,
        url: &str,
        insecure: bool,
    ) -> Result<&reqwest::Client, ProviderError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| ProviderError::Config(format!("{url:?} is not a URL: {e}")))?;
        match parsed.scheme() {
            "http" => {}
            "https" if cfg!(feature = "tls") => {}
            "https" => {
                return Err(ProviderError::Config(format!(
                    "{url}: https needs plover built with the `tls` feature"
                )))
            }
            other => {
                return Err(ProviderError::Config(format!(
                    "{url}: unsupported scheme {other:?}"
                )))
            }
        }
        #[cfg(feature = "tls")]
        if insecure {
            return Ok(&self.insecure_client);
        }
        let _ = insecure;
        Ok(&self.client)
    }

    /// The address a prometheus metric will query, after overrides and defaults.
    pub fn prometheus_address(&self, spec: &super::template::PrometheusSpec) -> Option<String> {
        self.settings
            .prometheus_override
            .clone()
            .or_else(|| (!spec.address.is_empty()).then(|| spec.address.clone()))
            .or_else(|| self.settings.prometheus_default.clone())
    }
}

impl Source for Providers {
    fn query<'a>(
        &'a self,
        metric: &'a MetricSpec,
    ) -> BoxFuture<'a, Result<Outcome, ProviderError>> {
        Box::pin(async move {
            match &metric.provider {
                ProviderSpec::Prometheus(spec) => prometheus::query(self, spec).await,
                ProviderSpec::Web(spec) => web::query(self, spec).await,
                ProviderSpec::Plover(spec) => plover::query(self, &metric.name, spec).await,
                ProviderSpec::Unsupported { provider, reason } => Err(ProviderError::Unsupported {
                    provider: provider.clone(),
                    reason: reason.clone(),
                }),
            }
        })
    }

    fn for_run(&self) -> Option<Arc<dyn Source>> {
        Some(Arc::new(Providers::for_run(self)))
    }

    /// Also what this build's providers cannot do: Prometheus range queries, OAuth2 and
    /// SigV4, web OAuth2 (decided before the run starts).
    fn unsupported(&self, metric: &MetricSpec) -> Option<String> {
        match &metric.provider {
            ProviderSpec::Unsupported { reason, .. } => Some(reason.clone()),
            ProviderSpec::Prometheus(p) => {
                prometheus::unsupported(p, &self.prometheus_address(p).unwrap_or_default())
            }
            ProviderSpec::Web(w) => web::unsupported(w),
            ProviderSpec::Plover(_) => None,
        }
    }
}

/// Takes one measurement of `metric`: query, then judge. `now` stamps start and finish.
pub async fn measure(
    source: &dyn Source,
    metric: &MetricSpec,
    now: &(dyn Fn() -> SystemTime + Sync),
) -> Measurement {
    let started_at = now();
    let mut evidence = None;
    let (phase, value, message) = match source.query(metric).await {
        Err(e) => (Phase::Error, String::new(), Some(e.to_string())),
        Ok(Outcome::Decided {
            phase,
            text,
            message,
        }) => (phase, text, Some(message)),
        Ok(Outcome::Judged {
            phase,
            evidence: record,
            message,
        }) => {
            // Plain numbers and strings: serializing cannot fail.
            let text = serde_json::to_string(&record).unwrap_or_default();
            evidence = Some(*record);
            (phase, text, Some(message))
        }
        Ok(Outcome::Value { value, text }) => {
            let j = judge::judge(
                &value,
                metric.success_condition.as_deref(),
                metric.failure_condition.as_deref(),
            );
            (j.phase, text, j.message)
        }
    };
    Measurement {
        phase,
        value,
        message,
        evidence,
        started_at,
        finished_at: now(),
    }
}
