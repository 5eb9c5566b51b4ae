//! `AnalysisPhase`: the phase of a measurement, a metric and a run.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Phase of a measurement, a metric or an analysis run: Argo's `AnalysisPhase`, same names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    #[default]
    Pending,
    Running,
    Successful,
    Failed,
    Error,
    Inconclusive,
}

impl Phase {
    /// Successful, Failed, Error and Inconclusive are final.
    pub fn is_completed(self) -> bool {
        matches!(
            self,
            Phase::Successful | Phase::Failed | Phase::Error | Phase::Inconclusive
        )
    }

    /// Rank from best to worst, Argo's `analysisStatusOrder`:
    /// Successful < Running < Pending < Inconclusive < Error < Failed.
    pub fn severity(self) -> u8 {
        match self {
            Phase::Successful => 0,
            Phase::Running => 1,
            Phase::Pending => 2,
            Phase::Inconclusive => 3,
            Phase::Error => 4,
            Phase::Failed => 5,
        }
    }

    /// Whether `self` is strictly worse than `other` (Argo's `IsWorse(other, self)`).
    pub fn is_worse_than(self, other: Phase) -> bool {
        self.severity() > other.severity()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Successful => "Successful",
            Phase::Failed => "Failed",
            Phase::Error => "Error",
            Phase::Inconclusive => "Inconclusive",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Phase::*;

    /// Argo `utils/analysis/helpers_test.go` TestIsWorse.
    #[test]
    fn severity_order_matches_argo() {
        assert!(!Successful.is_worse_than(Successful));
        assert!(Inconclusive.is_worse_than(Successful));
        assert!(Failed.is_worse_than(Successful));
        assert!(Error.is_worse_than(Successful));
        assert!(!Successful.is_worse_than(Inconclusive));
        assert!(!Inconclusive.is_worse_than(Inconclusive));
        assert!(Failed.is_worse_than(Inconclusive));
        assert!(Error.is_worse_than(Inconclusive));
        assert!(!Successful.is_worse_than(Error));
        assert!(!Inconclusive.is_worse_than(Error));
        assert!(Failed.is_worse_than(Error));
        assert!(!Error.is_worse_than(Error));
        assert!(!Successful.is_worse_than(Failed));
        assert!(!Error.is_worse_than(Failed));
        assert!(!Failed.is_worse_than(Failed));
        assert!(Pending.is_worse_than(Running));
        assert!(Running.is_worse_than(Successful));
    }
}
