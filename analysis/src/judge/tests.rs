//! Mirrors Argo's `utils/evaluate/evaluate_test.go` `TestEvaluateResult*` cases, plus the NaN,
//! Inf and empty-vector behaviours the Argo study lists.

use super::*;

const INVALID_REF: &str = "a == true";

#[test]
fn decision_table_matches_argo() {
    let t = Value::Bool(true);
    // (name of Argo's test, success, failure, expected)
    let cases: &[(&str, Option<&str>, Option<&str>, Phase)] = &[
        (
            "TestEvaluateResultWithSuccess",
            Some("true"),
            Some("false"),
            Phase::Successful,
        ),
        (
            "TestEvaluateResultWithFailure",
            Some("true"),
            Some("true"),
            Phase::Failed,
        ),
        (
            "TestEvaluateResultInconclusive",
            Some("false"),
            Some("false"),
            Phase::Inconclusive,
        ),
        (
            "TestEvaluateResultNoSuccessConditionAndNotFailing",
            Some(""),
            Some("false"),
            Phase::Successful,
        ),
        (
            "TestEvaluateResultNoFailureConditionAndNotSuccessful",
            Some("false"),
            Some(""),
            Phase::Failed,
        ),
        (
            "TestEvaluateResultNoFailureConditionAndNoSuccessCondition",
            Some(""),
            Some(""),
            Phase::Successful,
        ),
        ("neither condition (None)", None, None, Phase::Successful),
        ("failure only, true", None, Some("true"), Phase::Failed),
        ("success only, true", Some("true"), None, Phase::Successful),
        (
            "TestEvaluateResultWithErrorOnSuccessCondition",
            Some(INVALID_REF),
            Some("true"),
            Phase::Error,
        ),
        (
            "TestEvaluateResultWithErrorOnFailureCondition",
            Some("true"),
            Some(INVALID_REF),
            Phase::Error,
        ),
    ];
    for (name, success, failure, expected) in cases {
        let j = judge(&t, *success, *failure);
        assert_eq!(j.phase, *expected, "{name}");
        assert_eq!(
            j.message.is_some(),
            *expected == Phase::Error,
            "{name}: {:?}",
            j.message
        );
    }
}

#[test]
fn error_messages_name_the_condition() {
    // TestEvaluateResultErrorMessageWithInvalidExpression
    let e = evaluate_result(&Value::Bool(true), Some(INVALID_REF), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("could not evaluate successCondition"), "{e}");
    assert!(e.contains(INVALID_REF), "{e}");
    // TestEvaluateResultErrorMessageOnFailureCondition
    let e = evaluate_result(&Value::Bool(true), Some("true"), Some("invalidVar == true"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("could not evaluate failureCondition"), "{e}");
    assert!(e.contains("invalidVar == true"), "{e}");
    assert!(e.contains("unknown name invalidVar (1:1)"), "{e}");
}

#[test]
fn nil_or_empty_results_say_no_data() {
    // TestEvaluateResultErrorMessageWithNilResult / …WithEmptySlice
    for result in [Value::Nil, Value::List(vec![])] {
        let e = evaluate_result(&result, Some("result[0] >= 0.95"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("metric result is nil or empty"), "{e}");
        assert!(e.contains("successCondition"), "{e}");
    }
}

#[test]
fn nan_and_inf_flow_through_the_conditions() {
    let nan = Value::Float(f64::NAN);
    let inf = Value::Float(f64::INFINITY);
    assert_eq!(
        judge(&nan, Some("result >= 0.9"), None).phase,
        Phase::Failed
    );
    assert_eq!(
        judge(&nan, Some("result >= 0.9"), Some("result < 0.9")).phase,
        Phase::Inconclusive
    );
    assert_eq!(
        judge(&nan, Some("isNaN(result) || result >= 0.9"), None).phase,
        Phase::Successful
    );
    assert_eq!(
        judge(&inf, Some("result >= 0.9"), None).phase,
        Phase::Successful
    );
    assert_eq!(
        judge(&inf, None, Some("isInf(result)")).phase,
        Phase::Failed
    );
}

#[test]
fn prometheus_shapes_behave_as_in_argo() {
    let vector = Value::List(vec![Value::Float(0.97)]);
    let empty = Value::List(vec![]);
    assert_eq!(
        judge(&vector, Some("result[0] >= 0.95"), None).phase,
        Phase::Successful
    );
    // A one-element vector is not a scalar (argo-rollouts#363).
    assert_eq!(
        judge(&vector, Some("result >= 0.95"), None).phase,
        Phase::Error
    );
    assert_eq!(
        judge(&empty, Some("result[0] >= 0.95"), None).phase,
        Phase::Error
    );
    assert_eq!(
        judge(&empty, Some("len(result) == 0 || result[0] >= 0.95"), None).phase,
        Phase::Successful
    );
    assert_eq!(
        judge(&empty, Some("len(result) > 0 && result[0] >= 0.95"), None).phase,
        Phase::Failed
    );
    // all() over nothing is vacuously true.
    assert_eq!(
        judge(&empty, Some("all(result, # < 1000)"), None).phase,
        Phase::Successful
    );
    // default() does not help for an empty vector: it is not nil.
    assert_eq!(
        judge(&empty, Some("default(result, 0) < 0.05"), None).phase,
        Phase::Error
    );
    // … but does for a nil result (Datadog's empty series).
    assert_eq!(
        judge(&Value::Nil, Some("default(result, 0) < 0.05"), None).phase,
        Phase::Successful
    );
    assert_eq!(
        judge(&Value::Nil, Some("default(result, 1) < 0.05"), None).phase,
        Phase::Failed
    );
    assert_eq!(
        judge(&Value::Nil, Some("result < 0.05"), None).phase,
        Phase::Error
    );
    // A failure-only condition that indexes an empty vector still errors.
    assert_eq!(
        judge(&empty, None, Some("result[0] < 0.95")).phase,
        Phase::Error
    );
}
