//! Leader election on a `coordination.k8s.io/v1` Lease, so several controller replicas can run
//! for HA while only one reconciles.
//!
//! [`step`] is the pure rule (client-go's): take the lease when nobody holds it or the holder
//! let it expire; renew it while we hold it; otherwise follow until it expires. Every write is a
//! replace carrying the resourceVersion that was read, so two candidates cannot both win.
//! A leader that fails to renew before its lease expires stops (the process exits and is
//! restarted as a follower) rather than risk two leaders.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::api::{Api, PostParams};
use tracing::info;

/// What to do with the lease now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseStep {
    /// No lease object: create it with us as holder.
    Create,
    /// Free or expired: take it over.
    Acquire,
    /// Ours: renew it.
    Renew,
    /// Someone else's and still valid: wait until it may have expired.
    Follow {
        holder: String,
        retry_after: Duration,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("lease {name}: {source}")]
    Kube { name: String, source: kube::Error },
    #[error("lease {0}: lost to another holder")]
    Lost(String),
}

/// The pure rule.
pub fn step(lease: Option<&Lease>, identity: &str, now: Timestamp) -> LeaseStep {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return if lease.is_some() {
            LeaseStep::Acquire
        } else {
            LeaseStep::Create
        };
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == identity {
        return LeaseStep::Renew;
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    match renewed {
        Some(at) if !holder.is_empty() && at + duration > now => {
            let left = (at + duration).duration_since(now);
            LeaseStep::Follow {
                holder,
                retry_after: Duration::try_from(left).unwrap_or(Duration::from_secs(1)),
            }
        }
        _ => LeaseStep::Acquire,
    }
}

/// The lease as we write it.
pub fn held(
    existing: Option<&Lease>,
    name: &str,
    identity: &str,
    duration: Duration,
    now: Timestamp,
    acquired: bool,
) -> Lease {
    let mut lease = existing.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        spec: None,
    });
    let mut spec = lease.spec.take().unwrap_or_default();
    if acquired {
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions =
            Some(spec.lease_transitions.unwrap_or(0) + i32::from(existing.is_some()));
    }
    spec.holder_identity = Some(identity.to_owned());
    spec.lease_duration_seconds = Some(i32::try_from(duration.as_secs()).unwrap_or(15));
    spec.renew_time = Some(MicroTime(now));
    lease.spec = Some(LeaseSpec { ..spec });
    lease
}

/// A lease this process competes for.
pub struct Elector {
    pub api: Api<Lease>,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

impl Elector {
    fn err(&self, source: kube::Error) -> LeaseError {
        LeaseError::Kube {
            name: self.name.clone(),
            source,
        }
    }

    /// One attempt; true when we hold the lease afterwards.
    async fn try_once(&self) -> Result<Result<(), Duration>, LeaseError> {
        let existing = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.err(e))?;
        let now = Timestamp::now();
        let write = match step(existing.as_ref(), &self.identity, now) {
            LeaseStep::Follow {
                holder,
                retry_after,
            } => {
                info!(lease = %self.name, %holder, "Following the leader.");
                return Ok(Err(retry_after.min(self.duration)));
            }
            LeaseStep::Create => {
                let lease = held(None, &self.name, &self.identity, self.duration, now, true);
                self.api
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            LeaseStep::Acquire | LeaseStep::Renew => {
                let acquired = step(existing.as_ref(), &self.identity, now) == LeaseStep::Acquire;
                let lease = held(
                    existing.as_ref(),
                    &self.name,
                    &self.identity,
                    self.duration,
                    now,
                    acquired,
                );
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
        };
        match write {
            Ok(()) => Ok(Ok(())),
            // Someone else wrote in between: look again soon.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Err(Duration::from_secs(1))),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Waits until this process holds the lease.
    pub async fn acquire(&self) -> Result<(), LeaseError> {
        loop {
            match self.try_once().await? {
                Ok(()) => {
                    info!(lease = %self.name, identity = %self.identity, "Became the leader.");
                    return Ok(());
                }
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Renews the lease every third of its duration; returns when it is lost or cannot be
    /// renewed before it expires.
    pub async fn hold(&self) -> LeaseError {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.duration / 3).await;
            match self.try_once().await {
                Ok(Ok(())) => last_renewed = tokio::time::Instant::now(),
                Ok(Err(_)) => return LeaseError::Lost(self.name.clone()),
                Err(e) if last_renewed.elapsed() >= self.duration => return e,
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: i64, duration: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("plover".into()),
                resource_version: Some("5".into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(duration),
                renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
                ..Default::default()
            }),
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn the_election_rule() {
        assert_eq!(step(None, "a", at(100)), LeaseStep::Create);
        assert_eq!(
            step(Some(&lease("a", 90, 15)), "a", at(100)),
            LeaseStep::Renew
        );
        assert_eq!(
            step(Some(&lease("b", 90, 15)), "a", at(100)),
            LeaseStep::Follow {
                holder: "b".into(),
                retry_after: Duration::from_secs(5)
            }
        );
        assert_eq!(
            step(Some(&lease("b", 80, 15)), "a", at(100)),
            LeaseStep::Acquire,
            "expired"
        );
        assert_eq!(
            step(Some(&lease("", 99, 15)), "a", at(100)),
            LeaseStep::Acquire,
            "released"
        );
    }

    #[test]
    fn taking_over_counts_a_transition_and_keeps_the_resource_version() {
        let old = lease("b", 80, 15);
        let new = held(
            Some(&old),
            "plover",
            "a",
            Duration::from_secs(15),
            at(100),
            true,
        );
        let spec = new.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(1));
        assert_eq!(spec.renew_time, Some(MicroTime(at(100))));
        assert_eq!(
            new.metadata.resource_version.as_deref(),
            Some("5"),
            "the replace is conditional on what was read"
        );
    }
}
