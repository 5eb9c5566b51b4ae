//! Turning what the API server and the exporter return into the decision's inputs: a
//! workload's revision and rollout state, and the observed canary share of traffic.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::PodTemplateSpec,
};
use plover_wire::stats::{StatsResponse, STATS_PATH};

use plover_analysis::provider::BoxFuture;

use crate::canary::{TrafficCheck, TrafficObservation, WorkloadState, DEFAULT_TRAFFIC_WINDOW};

/// Revision of a pod template: a hash of what promotion copies (`template.spec` and the
/// template's annotations). Labels are left out on purpose: the stable and canary Deployments
/// must select different pods, so their template labels always differ.
pub fn template_revision(template: &PodTemplateSpec) -> String {
    let annotations = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    let doc = serde_json::json!({"spec": template.spec, "annotations": annotations});
    // FNV-1a over the canonical JSON of typed values (field order fixed by the types).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in doc.to_string().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")[..10].to_owned()
}

/// The annotation the Deployment controller numbers a Deployment's templates with, on the
/// Deployment and on the ReplicaSet of each template.
const DEPLOYMENT_REVISION: &str = "deployment.kubernetes.io/revision";

/// The `pod-template-hash` of `deployment`'s current ReplicaSet among `replica_sets`: the one
/// it owns whose revision annotation equals its own (what `kubectl rollout` calls current).
/// None until the Deployment controller has created it.
pub fn pod_template_hash(deployment: &Deployment, replica_sets: &[ReplicaSet]) -> Option<String> {
    let uid = deployment.metadata.uid.as_deref()?;
    let revision = deployment
        .metadata
        .annotations
        .as_ref()?
        .get(DEPLOYMENT_REVISION)?;
    replica_sets
        .iter()
        .filter(|rs| {
            rs.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == uid && o.controller == Some(true))
        })
        .find(|rs| {
            rs.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DEPLOYMENT_REVISION))
                == Some(revision)
        })
        .and_then(|rs| {
            rs.metadata
                .labels
                .as_ref()?
                .get("pod-template-hash")
                .cloned()
        })
}

/// A Deployment's revision, whether its current template is fully rolled out, and the
/// pod-template-hash its pods carry (from `replica_sets`, the namespace's).
pub fn workload_state(
    deployment: Option<&Deployment>,
    replica_sets: &[ReplicaSet],
) -> WorkloadState {
    let Some(d) = deployment else {
        return WorkloadState::default();
    };
    let Some(spec) = &d.spec else {
        return WorkloadState {
            exists: true,
            ..Default::default()
        };
    };
    let desired = spec.replicas.unwrap_or(1);
    let rolled_out = d.status.as_ref().is_some_and(|s| {
        s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
            && s.updated_replicas.unwrap_or(0) == desired
            && s.available_replicas.unwrap_or(0) == desired
            && s.replicas.unwrap_or(0) == desired
    });
    WorkloadState {
        exists: true,
        revision: Some(template_revision(&spec.template)),
        rolled_out,
        pod_template_hash: pod_template_hash(d, replica_sets),
    }
}

/// The Deployment's `spec.selector.matchLabels` (what a DestinationRule subset must select).
pub fn selector_labels(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default()
}

/// The canary's requests (role `canary`) and all requests in an exporter answer.
pub fn traffic_from_stats(stats: &StatsResponse) -> TrafficObservation {
    traffic_where(stats, |r| r.role == "canary")
}

/// The requests of the revision named `canary` (local mode, where revisions are cluster names),
/// falling back to the `canary` role when no entry has that name. Names survive a promotion;
/// a role tag may lag behind it.
pub fn traffic_of_revision(stats: &StatsResponse, canary: &str) -> TrafficObservation {
    if !stats.revisions.iter().any(|r| r.revision == canary) {
        return traffic_from_stats(stats);
    }
    traffic_where(stats, |r| r.revision == canary)
}

fn traffic_where(
    stats: &StatsResponse,
    is_canary: impl Fn(&plover_wire::stats::RevisionStats) -> bool,
) -> TrafficObservation {
    TrafficObservation {
        canary_requests: stats
            .revisions
            .iter()
            .filter(|r| is_canary(r))
            .map(|r| r.requests)
            .sum(),
        requests: stats.revisions.iter().map(|r| r.requests).sum(),
        lost_requests: stats.lost_requests,
    }
}

/// Where the observed split comes from.
pub trait TrafficSource: Send + Sync {
    /// The exporter's answer for `service` in `namespace` over the check's window.
    fn stats<'a>(
        &'a self,
        check: &'a TrafficCheck,
        namespace: &'a str,
        service: &'a str,
    ) -> BoxFuture<'a, Result<StatsResponse, String>>;
}

/// The Plover exporter over HTTP (`GET /v1/stats`).
pub struct Exporter {
    client: reqwest::Client,
}

impl Exporter {
    pub fn new() -> Result<Self, String> {
        plover_analysis::provider::install_tls_provider();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Exporter { client })
    }
}

impl TrafficSource for Exporter {
    fn stats<'a>(
        &'a self,
        check: &'a TrafficCheck,
        namespace: &'a str,
        service: &'a str,
    ) -> BoxFuture<'a, Result<StatsResponse, String>> {
        Box::pin(async move {
            let url = format!("{}{STATS_PATH}", check.exporter.trim_end_matches('/'));
            let window = check.window.as_deref().unwrap_or(DEFAULT_TRAFFIC_WINDOW);
            let response = self
                .client
                .get(&url)
                .query(&[
                    ("namespace", namespace),
                    ("service", service),
                    ("window", window),
                ])
                .send()
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            if !response.status().is_success() {
                return Err(format!("{url}: HTTP {}", response.status()));
            }
            let body = response.bytes().await.map_err(|e| format!("{url}: {e}"))?;
            serde_json::from_slice::<StatsResponse>(&body).map_err(|e| format!("{url}: {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
    use plover_wire::stats::RevisionStats;

    use super::*;

    fn deployment(image: &str, track: &str) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("podinfo-{track}"), "generation": 3},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "podinfo", "track": track}},
                     "template": {"metadata": {"labels": {"app": "podinfo", "track": track}},
                                  "spec": {"containers": [{"name": "app", "image": image}]}}},
            "status": {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}
        }))
        .unwrap()
    }

    #[test]
    fn revisions_ignore_labels_and_follow_the_pod_spec() {
        let stable = deployment("podinfo:6.0", "stable");
        let canary = deployment("podinfo:6.0", "canary");
        let state = workload_state(Some(&stable), &[]);
        assert!(state.rolled_out);
        assert_eq!(state.revision, workload_state(Some(&canary), &[]).revision);
        assert_ne!(
            state.revision,
            workload_state(Some(&deployment("podinfo:6.1", "canary")), &[]).revision
        );
        assert_eq!(state.revision.as_deref().map(str::len), Some(10));
        assert_eq!(selector_labels(&canary)["track"], "canary");
    }

    #[test]
    fn a_rollout_in_progress_is_not_rolled_out() {
        let mut d = deployment("podinfo:6.0", "stable");
        d.status = Some(DeploymentStatus {
            observed_generation: Some(3),
            replicas: Some(3),
            updated_replicas: Some(1),
            available_replicas: Some(2),
            ..Default::default()
        });
        assert!(!workload_state(Some(&d), &[]).rolled_out);
        d.spec = Some(DeploymentSpec {
            replicas: Some(1),
            ..d.spec.unwrap()
        });
        d.metadata.generation = Some(4);
        assert!(
            !workload_state(Some(&d), &[]).rolled_out,
            "generation not observed yet"
        );
        assert_eq!(workload_state(None, &[]), WorkloadState::default());
    }

    #[test]
    fn share_is_computed_from_request_counts() {
        let stats = StatsResponse {
            revisions: vec![
                RevisionStats {
                    revision: "a".into(),
                    role: "stable".into(),
                    requests: 750,
                    ..Default::default()
                },
                RevisionStats {
                    revision: "b".into(),
                    role: "canary".into(),
                    requests: 250,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            traffic_from_stats(&stats),
            TrafficObservation {
                canary_requests: 250,
                requests: 1000,
                lost_requests: 0
            }
        );
        let by_name = StatsResponse {
            revisions: vec![
                RevisionStats {
                    revision: "v1".into(),
                    role: "stable".into(),
                    requests: 600,
                    ..Default::default()
                },
                RevisionStats {
                    revision: "v2".into(),
                    role: "stable".into(),
                    requests: 400,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            traffic_of_revision(&by_name, "v2"),
            TrafficObservation {
                canary_requests: 400,
                requests: 1000,
                lost_requests: 0
            }
        );
        assert_eq!(
            traffic_of_revision(&stats, "v9"),
            traffic_from_stats(&stats)
        );
        assert_eq!(
            traffic_from_stats(&StatsResponse::default()),
            TrafficObservation {
                canary_requests: 0,
                requests: 0,
                lost_requests: 0
            }
        );
    }
}
