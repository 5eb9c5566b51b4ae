//! The `Canary` resource (`plover.dev/v1alpha1`) and the pure rollout logic around it.
//!
//! ```text
//!  spec (what the user wants) ──validate──▶ Plan (typed steps, durations, defaults)
//!       │
//!  Observation { spec, status, workloads, traffic share, analysis verdicts, now }
//!       │ decide (pure: no clock, no I/O)
//!       ▼
//!  Decision { actions: SetWeight / StartAnalysis / StopAnalysis / PromoteWorkload / Event,
//!             status, requeue_after }
//! ```
//!
//! Everything here is plain data and functions; `crate::execute` performs the actions, through
//! the rim of `reconcile` (Kubernetes) or `local` (a spec file, no API server).

pub mod crd;
pub mod decide;
pub mod measurement;
pub mod resolve;
pub mod spec;
pub mod split;
pub mod status;
pub mod validate;

pub use decide::{
    decide, Action, AnalysisKind, Decision, Observation, TrafficObservation, Verdict, WorkloadState,
};
pub use spec::*;
pub use status::*;
pub use validate::{validate, InvalidSpec, Plan, PlanStep};
