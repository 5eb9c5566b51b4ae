//! One measurement's phase from its value and the metric's conditions (Argo's `EvaluateResult`).
//!
//! | successCondition | failureCondition | phase |
//! |---|---|---|
//! | unset | unset | Successful |
//! | set | unset | true ⇒ Successful, false ⇒ Failed |
//! | unset | set | true ⇒ Failed, false ⇒ Successful |
//! | set | set | failure true ⇒ Failed; else success true ⇒ Successful; else Inconclusive |
//!
//! A condition that does not compile (normally rejected when the template is loaded), fails at
//! run time, yields a non-boolean or panics the evaluator makes the measurement an Error; both
//! conditions are evaluated when present.

use super::{expr, phase::Phase, value::Value};

/// A measurement's verdict: its phase, and for an Error the reason.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    pub phase: Phase,
    pub message: Option<String>,
}

/// Which condition failed to evaluate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Success,
    Failure,
}

impl Which {
    fn field(self) -> &'static str {
        match self {
            Which::Success => "successCondition",
            Which::Failure => "failureCondition",
        }
    }
}

/// Why a condition could not be decided; the measurement is an Error with this text.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum JudgeError {
    /// The provider returned nil or an empty list and the condition needed a value.
    #[error("could not evaluate {} \"{condition}\": metric result is nil or empty: no data returned from the metric provider", .which.field())]
    NoData { which: Which, condition: String },
    #[error("could not evaluate {} \"{condition}\": {source}", .which.field())]
    Condition {
        which: Which,
        condition: String,
        source: expr::ExprError,
    },
}

fn evaluate(result: &Value, condition: &str, which: Which) -> Result<bool, JudgeError> {
    expr::eval_condition(result, condition).map_err(|source| {
        if result.is_nil_or_empty() {
            JudgeError::NoData {
                which,
                condition: condition.to_owned(),
            }
        } else {
            JudgeError::Condition {
                which,
                condition: condition.to_owned(),
                source,
            }
        }
    })
}

/// Decides one measurement from the provider's value. Empty strings count as unset, as in Argo.
pub fn evaluate_result(
    result: &Value,
    success: Option<&str>,
    failure: Option<&str>,
) -> Result<Phase, JudgeError> {
    let success = success.filter(|s| !s.is_empty());
    let failure = failure.filter(|s| !s.is_empty());
    let succeeded = success
        .map(|c| evaluate(result, c, Which::Success))
        .transpose()?;
    let failed = failure
        .map(|c| evaluate(result, c, Which::Failure))
        .transpose()?;
    Ok(match (succeeded, failed) {
        (None, None) => Phase::Successful,
        (Some(s), None) => {
            if s {
                Phase::Successful
            } else {
                Phase::Failed
            }
        }
        (None, Some(f)) => {
            if f {
                Phase::Failed
            } else {
                Phase::Successful
            }
        }
        (Some(_), Some(true)) => Phase::Failed,
        (Some(true), Some(false)) => Phase::Successful,
        (Some(false), Some(false)) => Phase::Inconclusive,
    })
}

/// [`evaluate_result`] as a [`Judgement`]: an evaluation problem becomes an Error measurement.
///
/// A panic while evaluating (a defect in the evaluator, never expected) is an Error measurement
/// too: it must not take the controller down or leave the run Running forever.
pub fn judge(result: &Value, success: Option<&str>, failure: Option<&str>) -> Judgement {
    let evaluated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        evaluate_result(result, success, failure)
    }));
    match evaluated {
        Ok(Ok(phase)) => Judgement {
            phase,
            message: None,
        },
        Ok(Err(e)) => Judgement {
            phase: Phase::Error,
            message: Some(e.to_string()),
        },
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            Judgement {
                phase: Phase::Error,
                message: Some(format!(
                    "evaluating the conditions failed inside Plover (a bug, please report it): {what}"
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests;
