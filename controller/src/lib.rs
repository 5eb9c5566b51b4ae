//! Plover's controller crate: the `Canary` CRD, its pure decision core, the routers, reconcile
//! against the API server, local mode, and the `plover` / `kubectl plover` command lines.
//!
//! ```text
//!  canary (CRD types, validation, pure decide) ◀── reconcile (kube: observe + its Rim)
//!     │  Decision { SetWeight, StartAnalysis, StopAnalysis,     │        ▲ controller (Lease,
//!     │            PromoteWorkload, Event }                     │        │   /metrics, /healthz)
//!     ▼                                                         ▼        │
//!  router::{istio, gateway_api} (pure JSON patches), router::envoy_file (RDS file by rename)
//!  runner (drives plover_analysis::run with providers) · observe (revisions, exporter share)
//!  local (no API server: spec file, Envoy, status file)
//!  cli::{analyze, commands, kubectl} (plover analyze; crd/controller/local/get/promote/abort/retry)
//! ```
//!
//! The analysis engine (Argo Rollouts templates, expressions, providers) is the
//! `plover-analysis` crate and the sequential judges are `plover-sequential`; neither knows
//! about Kubernetes. `CANARY.md` describes the Canary resource and the decision core.

pub mod canary;
pub mod cli;
pub mod controller;
mod execute;
pub mod job;
pub mod lease;
pub mod local;
pub mod metrics;
pub mod notify;
pub mod observe;
pub mod rbac;
pub mod reconcile;
pub mod router;
pub mod runner;
