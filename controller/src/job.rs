//! Argo's `job` metric provider: each measurement creates a Kubernetes Job from the metric's
//! `job` (its metadata and spec) in the run's namespace, waits for it, and is Successful when
//! the Job completes, Failed when it fails (its condition's message says why). As in Argo, the
//! Jobs are kept for inspection, the newest [`KEPT_JOBS`] of each metric of a Canary, older ones
//! deleted (with their pods); a Job is labelled with its Canary, run and metric.
//!
//! [`JobSource`] wraps the other providers: it measures job metrics of runs that have a place in
//! the cluster ([`Source::for_named_run`]) and hands every other metric to them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::{Client, ResourceExt};
use plover_analysis::provider::{BoxFuture, Outcome, ProviderError, RunIdentity, Source};
use plover_analysis::template::{JobSpec, MetricSpec, ProviderSpec};
use plover_analysis::Phase;
use serde_json::{json, Value};
use tracing::{debug, warn};

/// Jobs kept per metric of a Canary (Argo keeps its runs' Jobs up to its retention).
pub const KEPT_JOBS: usize = 10;
/// How often a running Job is read.
const POLL: Duration = Duration::from_secs(1);

pub const LABEL_CANARY: &str = "plover.dev/canary";
pub const LABEL_RUN: &str = "plover.dev/analysis-run";
pub const LABEL_METRIC: &str = "plover.dev/metric";

/// The other providers, plus job metrics for runs placed in the cluster.
pub struct JobSource {
    inner: Arc<dyn Source>,
    client: Client,
}

impl JobSource {
    pub fn new(inner: Arc<dyn Source>, client: Client) -> JobSource {
        JobSource { inner, client }
    }
}

impl Source for JobSource {
    fn query<'a>(
        &'a self,
        metric: &'a MetricSpec,
    ) -> BoxFuture<'a, Result<Outcome, ProviderError>> {
        self.inner.query(metric)
    }

    fn for_run(&self) -> Option<Arc<dyn Source>> {
        self.inner.for_run()
    }

    fn for_named_run(&self, run: &RunIdentity) -> Option<Arc<dyn Source>> {
        Some(Arc::new(JobRun::new(
            self.inner.for_run().unwrap_or_else(|| self.inner.clone()),
            self.client.clone(),
            run.clone(),
        )))
    }

    fn unsupported(&self, metric: &MetricSpec) -> Option<String> {
        unsupported_but_jobs(&*self.inner, metric)
    }
}

/// What `inner` cannot measure, job metrics aside.
fn unsupported_but_jobs(inner: &dyn Source, metric: &MetricSpec) -> Option<String> {
    match &metric.provider {
        ProviderSpec::Job(_) => None,
        _ => inner.unsupported(metric),
    }
}

/// The source of one run: creates its Jobs.
pub struct JobRun {
    inner: Arc<dyn Source>,
    client: Client,
    run: RunIdentity,
    sequence: AtomicU64,
}

impl JobRun {
    /// A run placed in `run.namespace` (what `plover analyze --kubeconfig` measures with).
    pub fn new(inner: Arc<dyn Source>, client: Client, run: RunIdentity) -> JobRun {
        JobRun {
            inner,
            client,
            run,
            sequence: AtomicU64::new(0),
        }
    }
}

impl Source for JobRun {
    fn query<'a>(
        &'a self,
        metric: &'a MetricSpec,
    ) -> BoxFuture<'a, Result<Outcome, ProviderError>> {
        match &metric.provider {
            ProviderSpec::Job(spec) => Box::pin(self.measure(&metric.name, spec)),
            _ => self.inner.query(metric),
        }
    }

    fn unsupported(&self, metric: &MetricSpec) -> Option<String> {
        unsupported_but_jobs(&*self.inner, metric)
    }
}

/// A Kubernetes name: lower-case alphanumerics and `-`, at most `max` characters.
fn dns_label(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    out.truncate(max);
    out.trim_matches('-').to_owned()
}

impl JobRun {
    /// The Job of one measurement of `metric`.
    fn job(&self, metric: &str, spec: &JobSpec) -> Result<Job, ProviderError> {
        let sequence = self.sequence.fetch_add(1, Ordering::SeqCst) + 1;
        // Unique across controller restarts too: a second-resolution stamp.
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let suffix = format!("-{}-{stamp:x}{sequence}", dns_label(metric, 20));
        // Job names become label values: 63 characters at most.
        let name = format!("{}{suffix}", dns_label(&self.run.run, 63 - suffix.len()));
        let mut metadata = match &spec.metadata {
            Value::Object(m) => Value::Object(m.clone()),
            _ => json!({}),
        };
        metadata["name"] = json!(name);
        metadata["namespace"] = json!(self.run.namespace);
        let labels = metadata
            .as_object_mut()
            .and_then(|m| {
                m.entry("labels")
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
            })
            .ok_or_else(|| ProviderError::Config("job.metadata.labels: expected a map".into()))?;
        labels.insert(LABEL_CANARY.into(), json!(dns_label(&self.run.canary, 63)));
        labels.insert(LABEL_RUN.into(), json!(dns_label(&self.run.run, 63)));
        labels.insert(LABEL_METRIC.into(), json!(dns_label(metric, 63)));
        serde_json::from_value(json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": metadata,
            "spec": spec.spec,
        }))
        .map_err(|e| ProviderError::Config(format!("job: not a valid Job: {e}")))
    }

    async fn measure(&self, metric: &str, spec: &JobSpec) -> Result<Outcome, ProviderError> {
        let job = self.job(metric, spec)?;
        let name = job.name_any();
        let api: Api<Job> = Api::namespaced(self.client.clone(), &self.run.namespace);
        if let Err(e) = api.create(&PostParams::default(), &job).await {
            warn!(job = %name, namespace = %self.run.namespace, error = %e, "Job of a job metric not created.");
            return Err(ProviderError::Transport(format!(
                "creating Job {name}: {e}"
            )));
        }
        debug!(job = %name, "Job of a job metric created.");
        let outcome = loop {
            tokio::time::sleep(POLL).await;
            let job = match api.get_opt(&name).await {
                Ok(Some(job)) => job,
                Ok(None) => {
                    break Err(ProviderError::Response(format!(
                        "Job {name} was deleted before it finished"
                    )))
                }
                Err(e) => {
                    warn!(job = %name, error = %e, "Job of a job metric not read.");
                    continue;
                }
            };
            if let Some(outcome) = finished(&job) {
                break Ok(outcome);
            }
        };
        self.collect_garbage(&api, metric).await;
        outcome
    }

    /// Deletes this Canary's Jobs of `metric` beyond the newest [`KEPT_JOBS`].
    async fn collect_garbage(&self, api: &Api<Job>, metric: &str) {
        let selector = format!(
            "{LABEL_CANARY}={},{LABEL_METRIC}={}",
            dns_label(&self.run.canary, 63),
            dns_label(metric, 63)
        );
        let Ok(list) = api.list(&ListParams::default().labels(&selector)).await else {
            return;
        };
        let mut jobs = list.items;
        jobs.sort_by_key(|j| std::cmp::Reverse(j.metadata.creation_timestamp.clone()));
        let delete = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        for old in jobs.iter().skip(KEPT_JOBS) {
            if let Err(e) = api.delete(&old.name_any(), &delete).await {
                warn!(job = %old.name_any(), error = %e, "Old Job of a job metric not deleted.");
            }
        }
    }
}

/// The measurement of a finished Job: Successful when it completed, Failed when it failed.
fn finished(job: &Job) -> Option<Outcome> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    let holds = |kind: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == kind && c.status == "True")
    };
    if holds("Complete").is_some() {
        return Some(Outcome::Decided {
            phase: Phase::Successful,
            text: String::new(),
            message: format!("Job {} completed", job.name_any()),
        });
    }
    holds("Failed").map(|c| Outcome::Decided {
        phase: Phase::Failed,
        text: String::new(),
        message: format!(
            "Job {} failed: {}{}",
            job.name_any(),
            c.reason.clone().unwrap_or_default(),
            c.message
                .as_ref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_kubernetes() {
        assert_eq!(dns_label("Podinfo_Canary.x", 63), "podinfo-canary-x");
        assert_eq!(dns_label("abc-", 3), "abc");
        let long = "a".repeat(80);
        assert_eq!(dns_label(&long, 40).len(), 40);
    }

    #[test]
    fn a_job_is_judged_by_its_final_condition() {
        let job = |conditions: Value| -> Job {
            serde_json::from_value(json!({
                "metadata": {"name": "j"},
                "status": {"conditions": conditions}
            }))
            .unwrap()
        };
        assert_eq!(finished(&job(json!([]))), None);
        assert!(matches!(
            finished(&job(json!([{"type": "Complete", "status": "True"}]))),
            Some(Outcome::Decided {
                phase: Phase::Successful,
                ..
            })
        ));
        let failed = finished(&job(json!([
            {"type": "FailureTarget", "status": "True"},
            {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}
        ])));
        let Some(Outcome::Decided { phase, message, .. }) = failed else {
            panic!("{failed:?}")
        };
        assert_eq!(phase, Phase::Failed);
        assert_eq!(
            message,
            "Job j failed: DeadlineExceeded: Job was active longer than specified deadline"
        );
    }
}
