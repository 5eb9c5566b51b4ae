//! The analysis engine: Argo Rollouts-compatible metrics, conditions, providers and phases.

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
