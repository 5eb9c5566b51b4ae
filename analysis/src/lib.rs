//! Plover's analysis engine: Argo Rollouts `AnalysisTemplate`s (args, metrics, conditions,
//! limits, phases) and the providers that measure them, with no Kubernetes client in sight.
//!
//! ```text
//!  AnalysisTemplate YAML ─▶ template (parse, args, {{args.x}}) ─▶ resolved metrics
//!                                                                     │
//!   caller (plover analyze, the Canary runner) ◀── run (pure state machine: what to measure
//!        │                                          when; metric and run phases)
//!        ▼                                                      ▲
//!  provider::{prometheus, web, plover} ── Value ─▶ judge (conditions via expr) ─▶ measurement
//! ```
//!
//! Everything except [`provider`] is pure: no clock, no network. The semantics follow Argo
//! Rollouts; every deliberate difference is listed in `analysis/ANALYSIS.md`. The `plover`
//! provider's canary-against-stable judges are the `plover-sequential` crate.

pub mod duration;
pub mod expr;
pub mod judge;
pub mod phase;
pub mod provider;
pub mod run;
pub mod template;
pub mod value;

pub use phase::Phase;
pub use value::Value;
