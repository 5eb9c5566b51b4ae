//! Plover's controller crate: the analysis engine and the `plover` command line.
//!
//! ```text
//!  AnalysisTemplate YAML ─▶ analysis::template (parse, args, {{args.x}}) ─▶ resolved metrics
//!                                                                              │
//!   cli::analyze (I/O: clock, signals, output) ◀── analysis::run (pure state machine: what to
//!        │                                             measure when; metric and run phases)
//!        ▼                                                      ▲
//!  analysis::provider::{prometheus, web, plover} ── Value ─▶ analysis::judge (conditions via
//!                                                              analysis::expr) ─▶ measurement
//! ```
//!
//! Everything under [`analysis`] except [`analysis::provider`] is pure: no clock, no network.
//! The semantics follow Argo Rollouts; every deliberate difference is listed in `ANALYSIS.md`.
//!
//! The canary controller around it:
//!
//! ```text
//!  canary (CRD types, validation, pure decide) ◀── reconcile (kube: observe, execute, status)
//!     │  Decision { SetWeight, StartAnalysis, StopAnalysis,     │        ▲ daemon (Lease, /metrics)
//!     │            PromoteWorkload, Event }                     │        │
//!     ▼                                                         ▼        │
//!  router::{istio, gateway_api} (pure JSON patches), router::envoy_file (RDS file by rename)
//!  runner (drives analysis::run with providers) · observe (revisions, exporter share)
//!  local (no API server: spec file, Envoy, status file) · kubectl + commands (get/promote/abort/retry)
//! ```

pub mod analysis;
pub mod canary;
pub mod cli;
pub mod commands;
pub mod daemon;
pub mod kubectl;
pub mod lease;
pub mod local;
pub mod metrics;
pub mod observe;
pub mod rbac;
pub mod reconcile;
pub mod router;
pub mod runner;
pub mod sequential;
