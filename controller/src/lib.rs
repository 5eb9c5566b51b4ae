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

pub mod analysis;
pub mod canary;
pub mod cli;
pub mod lease;
pub mod metrics;
pub mod observe;
pub mod reconcile;
pub mod router;
pub mod runner;
pub mod sequential;
