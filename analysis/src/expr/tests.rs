//! Table tests of the condition language. The `argo_*` tests mirror Argo's
//! `utils/evaluate/evaluate_test.go` (same inputs, same outcomes); the rest cover the syntax
//! templates use.

use std::collections::BTreeMap;

use super::*;

fn f(x: f64) -> Value {
    Value::Float(x)
}
fn s(x: &str) -> Value {
    Value::String(x.to_owned())
}
fn floats(xs: &[f64]) -> Value {
    Value::List(xs.iter().copied().map(Value::Float).collect())
}
fn eval(result: &Value, condition: &str) -> Result<Value, ExprError> {
    Program::compile(condition)?.eval(result)
}

#[test]
fn argo_eval_condition_cases() {
    // TestEvaluateConditionWithSuccess / WithFailure
    assert_eq!(
        eval_condition(&Value::Bool(true), "result == true"),
        Ok(true)
    );
    assert_eq!(
        eval_condition(&Value::Bool(true), "result == false"),
        Ok(false)
    );
    // TestErrorWithNonBoolReturn
    assert_eq!(
        eval_condition(&Value::Bool(true), "1")
            .unwrap_err()
            .to_string(),
        "expected bool, but got int"
    );
    // TestErrorWithInvalidReference
    let e = eval_condition(&Value::Bool(true), "invalidVariable").unwrap_err();
    assert_eq!(e.message, "unknown name invalidVariable");
    assert_eq!(e.pos, Some(Pos { line: 1, column: 1 }));
    // TestEvaluateArray
    let mut values = BTreeMap::new();
    values.insert("values".to_owned(), floats(&[2.0, 2.0]));
    let mut apdex = BTreeMap::new();
    apdex.insert("label".to_owned(), Value::Nil);
    apdex.insert("values".to_owned(), Value::Map(values));
    let mut top = BTreeMap::new();
    top.insert("service_apdex".to_owned(), Value::Map(apdex));
    assert_eq!(
        eval_condition(
            &Value::Map(top),
            "all(result.service_apdex.values.values, {# > 1})"
        ),
        Ok(true)
    );
    // TestEvaluateInOperator
    assert_eq!(
        eval_condition(&floats(&[2.0, 2.0]), "2 in result"),
        Ok(true)
    );
    // TestEvaluateFloat64
    assert_eq!(eval_condition(&f(5.0), "result > 1"), Ok(true));
    // TestEvaluateInvalidStruct
    assert!(eval_condition(&Value::Bool(true), "result.Name() == 'hi'").is_err());
    // TestEvaluateAsIntPanic
    assert!(eval_condition(&s("1.1"), "asInt(result) == 1.1").is_err());
}

#[test]
fn argo_as_int_and_as_float() {
    // TestEvaluateAsInt
    for (input, expr) in [
        (s("1"), "asInt(result) == 1"),
        (Value::Int(1), "asInt(result) == 1"),
        (f(1.123), "asInt(result) == 1"),
    ] {
        assert_eq!(eval_condition(&input, expr), Ok(true), "{input:?} {expr}");
    }
    // TestEvaluateAsFloat
    for (input, expr) in [
        (s("1.1"), "asFloat(result) == 1.1"),
        (s("1.1"), "asFloat(result) >= 1.1"),
        (s("1.1"), "asFloat(result) <= 1.1"),
        (f(1.1), "asFloat(result) == 1.1"),
        (Value::Int(1), "asFloat(result) == 1"),
        (Value::Int(1), "asFloat(result) >= 1"),
    ] {
        assert_eq!(eval_condition(&input, expr), Ok(true), "{input:?} {expr}");
    }
    // TestEvaluateAsFloatError
    let e = eval_condition(&s("NotANum"), "asFloat(result) == 1.1").unwrap_err();
    assert!(
        e.message
            .contains(r#"strconv.ParseFloat: parsing "NotANum": invalid syntax"#),
        "{e}"
    );
    let e = eval_condition(&s("1.1"), r#"asFloat(result) == "1.1""#).unwrap_err();
    assert!(
        e.message
            .contains("invalid operation: == (mismatched types float64 and string)"),
        "{e}"
    );
    // TestAsInt / TestAsFloat
    assert_eq!(eval(&s("1"), "asInt(result)"), Ok(Value::Int(1)));
    assert!(eval(&s("notint"), "asInt(result)").is_err());
    assert!(eval(&s("1.1"), "asInt(result)").is_err());
    assert_eq!(eval(&s("1"), "asFloat(result)"), Ok(f(1.0)));
    assert!(eval(&s("notfloat"), "asFloat(result)").is_err());
    assert_eq!(eval(&s("1.1"), "asFloat(result)"), Ok(f(1.1)));
}

#[test]
fn argo_is_nil_and_default_look_at_the_whole_result() {
    // TestDefaultFunc
    assert_eq!(eval(&Value::Nil, "default(result, 0)"), Ok(Value::Int(0)));
    assert_eq!(eval(&Value::Nil, "default(result, 2)"), Ok(Value::Int(2)));
    assert_eq!(eval(&f(1.0), "default(result, 0)"), Ok(f(1.0)));
    // TestIsNilFunc / TestIsNil
    assert_eq!(eval_condition(&Value::Nil, "isNil(result)"), Ok(true));
    assert_eq!(eval_condition(&f(1.0), "isNil(result)"), Ok(false));
    assert_eq!(
        eval_condition(&Value::List(vec![s("hi"), s("hello")]), "isNil(result)"),
        Ok(false)
    );
    assert_eq!(
        eval_condition(&Value::Bool(false), "isNil(result)"),
        Ok(false)
    );
    // The argument is ignored, exactly as in Argo.
    assert_eq!(eval_condition(&f(1.0), "isNil(nil)"), Ok(false));
    assert_eq!(
        eval_condition(&Value::List(vec![]), "isNil(result)"),
        Ok(false)
    );
    // TestIsInf
    assert_eq!(eval_condition(&f(f64::INFINITY), "isInf(result)"), Ok(true));
    assert_eq!(eval_condition(&f(0.0), "isInf(result)"), Ok(false));
}

#[test]
fn syntax_that_templates_use() {
    let r = floats(&[0.5, 0.97, 1.0]);
    let cases: &[(&str, Value)] = &[
        ("result[0] < result[1]", Value::Bool(true)),
        ("result[-1]", f(1.0)),
        ("len(result)", Value::Int(3)),
        ("result[1:]", floats(&[0.97, 1.0])),
        ("1 + 2 * 3", Value::Int(7)),
        ("(1 + 2) * 3", Value::Int(9)),
        ("7 / 2", f(3.5)),
        ("7 % 2", Value::Int(1)),
        ("2 ** 3 ** 2", f(512.0)),
        ("-2 ** 2", f(-4.0)),
        ("1 < 2 && 2 < 3 || false", Value::Bool(true)),
        ("not true or true", Value::Bool(true)),
        ("!(1 > 2) and 1 == 1.0", Value::Bool(true)),
        ("result[0] > 0.9 ? 'ok' : 'low'", s("low")),
        ("true ? 1 : false ? 2 : 3", Value::Int(1)),
        ("0.97 in result", Value::Bool(true)),
        ("0.1 not in result", Value::Bool(true)),
        ("any(result, # > 0.99)", Value::Bool(true)),
        ("all(result, {# >= 0.5})", Value::Bool(true)),
        ("none(result, # > 1)", Value::Bool(true)),
        ("one(result, # == 1)", Value::Bool(true)),
        ("count(result, # > 0.6)", Value::Int(2)),
        ("filter(result, # > 0.6)", floats(&[0.97, 1.0])),
        ("map(result, # * 2)", floats(&[1.0, 1.94, 2.0])),
        ("len(filter(result, {# < 0.9})) == 1", Value::Bool(true)),
        ("sum(map(result, # * 0))", f(0.0)),
        ("max(result)", f(1.0)),
        ("min(3, 1, 2)", Value::Int(1)),
        ("abs(-2.5)", f(2.5)),
        ("{a: 1, 'b': [1, 2]}.b[1]", Value::Int(2)),
        ("'abc' + \"def\"", s("abcdef")),
        ("'canary-1' startsWith 'canary'", Value::Bool(true)),
        ("'canary-1' matches '^canary-[0-9]+$'", Value::Bool(true)),
        ("nil ?? 3", Value::Int(3)),
        (
            "1..3",
            Value::List(vec![Value::Int(1), Value::Int(2), Value::Int(3)]),
        ),
        ("1_000 == 1e3", Value::Bool(true)),
        ("0x10", Value::Int(16)),
        ("isNaN(result[0])", Value::Bool(false)),
        ("first([]) == nil", Value::Bool(true)),
        ("result\n  [0]\n  >= 0.5", Value::Bool(true)),
    ];
    for (expr, expected) in cases {
        assert_eq!(eval(&r, expr).as_ref(), Ok(expected), "{expr}");
    }
}

#[test]
fn maps_fields_and_closures() {
    let json = serde_json::json!({
        "data": {"ok": true, "rate": 0.99, "items": [{"code": 200, "n": 5}, {"code": 500, "n": 1}]}
    });
    let r = Value::from_json(&json);
    let cases: &[(&str, Value)] = &[
        ("result.data.ok", Value::Bool(true)),
        ("result['data'].rate >= 0.95", Value::Bool(true)),
        ("result.data.missing == nil", Value::Bool(true)),
        ("result.data.missing?.deeper", Value::Nil),
        ("all(result.data.items, .n > 0)", Value::Bool(true)),
        ("sum(map(result.data.items, #.n))", f(6.0)),
        (
            "len(filter(result.data.items, {#.code >= 500})) / len(result.data.items)",
            f(0.5),
        ),
        ("'ok' in result.data", Value::Bool(true)),
        ("result.data.items[0].code == 200", Value::Bool(true)),
    ];
    for (expr, expected) in cases {
        assert_eq!(eval(&r, expr).as_ref(), Ok(expected), "{expr}");
    }
}

#[test]
fn errors_name_the_position_and_what_was_expected() {
    let cases: &[(&str, &str, (u32, u32))] = &[
        (
            "result >",
            "expected an expression, found end of condition",
            (1, 9),
        ),
        (
            "result[0] >= ",
            "expected an expression, found end of condition",
            (1, 14),
        ),
        (
            "(result",
            "expected `)` to close `(`, found end of condition",
            (1, 8),
        ),
        ("result[0 > 1", "expected `]` to close the index", (1, 13)),
        ("result ? 1", "expected `:` in the ternary", (1, 11)),
        (
            "1 2",
            "expected an operator or the end of the condition, found number 2",
            (1, 3),
        ),
        ("foo > 1", "unknown name foo", (1, 1)),
        ("bogus(result)", "unknown func bogus", (1, 1)),
        (
            "len(result, 1)",
            "len() expects 1 argument(s), got 2",
            (1, 1),
        ),
        ("result == 'x", "unterminated string", (1, 11)),
        ("result @ 1", "unexpected character '@'", (1, 8)),
        ("# > 1", "`#` is only meaningful inside a predicate", (1, 1)),
        ("", "empty condition", (1, 1)),
        ("true &&\n  nope", "unknown name nope", (2, 3)),
    ];
    for (expr, message, (line, column)) in cases {
        let e = Program::compile(expr).unwrap_err();
        assert!(e.message.contains(message), "{expr}: {e}");
        assert_eq!(
            e.pos,
            Some(Pos {
                line: *line,
                column: *column
            }),
            "{expr}: {e}"
        );
    }
}

#[test]
fn runtime_errors_name_the_position() {
    let r = floats(&[0.5]);
    let cases: &[(&str, &str, (u32, u32))] = &[
        (
            "result >= 0.95",
            "invalid operation: >= (mismatched types array and float64)",
            (1, 8),
        ),
        (
            "result[3] > 0",
            "index out of range: 3 (array length is 1)",
            (1, 7),
        ),
        (
            "result[0] && true",
            "invalid operation: && (mismatched type float64, expected bool)",
            (1, 11),
        ),
        ("1 % 0 == 0", "integer divide by zero", (1, 3)),
        (
            "all(result, # + 1)",
            "predicate of all() must return bool, got float64",
            (1, 13),
        ),
        ("result.x", "cannot fetch x from array", (1, 7)),
    ];
    for (expr, message, (line, column)) in cases {
        let e = eval(&r, expr).unwrap_err();
        assert!(e.message.contains(message), "{expr}: {e}");
        assert_eq!(
            e.pos,
            Some(Pos {
                line: *line,
                column: *column
            }),
            "{expr}: {e}"
        );
    }
    assert!(eval(&Value::Nil, "result.x")
        .unwrap_err()
        .message
        .contains("cannot fetch x from <nil>"));
}

#[test]
fn short_circuit_skips_runtime_errors_but_not_unknown_names() {
    let empty = Value::List(vec![]);
    assert_eq!(
        eval_condition(&empty, "len(result) == 0 || result[0] > 1"),
        Ok(true)
    );
    assert_eq!(
        eval_condition(&empty, "len(result) > 0 && result[0] > 1"),
        Ok(false)
    );
    assert!(eval_condition(&empty, "true || missing > 1").is_err());
}

#[test]
fn nan_comparisons_are_false() {
    let nan = f(f64::NAN);
    for expr in [
        "result > 0",
        "result < 0",
        "result >= 0",
        "result <= 0",
        "result == result",
    ] {
        assert_eq!(eval_condition(&nan, expr), Ok(false), "{expr}");
    }
    assert_eq!(eval_condition(&nan, "result != result"), Ok(true));
}

#[test]
fn integer_overflow_is_an_error_not_a_wrapped_number_or_a_panic() {
    let nil = Value::Nil;
    for (condition, expected) in [
        ("len(-2..9223372036854775807) > 0", "too large"),
        (
            "len(-9223372036854775807..9223372036854775807) > 0",
            "too large",
        ),
        ("9223372036854775807 + 1 > 0", "integer overflow"),
        ("-9223372036854775807 - 2 < 0", "integer overflow"),
        ("9223372036854775807 * 2 > 0", "integer overflow"),
        ("-(-9223372036854775807 - 1) > 0", "integer overflow"),
        ("abs(-9223372036854775807 - 1) > 0", "integer overflow"),
        ("sum([9223372036854775807, 1]) > 0", "integer overflow"),
    ] {
        let error = eval_condition(&nil, condition).expect_err(condition);
        assert!(error.message.contains(expected), "{condition}: {error}");
    }
    // In range, the same operations still compute.
    assert_eq!(eval_condition(&nil, "len(-2..2) == 5"), Ok(true));
    assert_eq!(
        eval_condition(&nil, "9223372036854775806 + 1 == 9223372036854775807"),
        Ok(true)
    );
}

#[test]
fn deep_nesting_is_a_parse_error_not_a_stack_overflow() {
    let deep = 3_000;
    for condition in [
        format!("{}true", "!".repeat(deep)),
        format!("{}true{}", "(".repeat(deep), ")".repeat(deep)),
        format!("{}1{} > 0", "[".repeat(deep), "]".repeat(deep)),
        format!("{} > 0", vec!["1"; deep].join(" + ")),
        format!("result{} == nil", ".a".repeat(deep)),
        format!("{}1{} > 0", "abs(".repeat(deep), ")".repeat(deep)),
        // Far beyond what any stack holds: still a prompt, clear error.
        format!("{}true", "!".repeat(1_000_000)),
    ] {
        let error = Program::compile(&condition).expect_err("too deep");
        assert!(
            error.message.contains("nested too deeply"),
            "{}…: {error}",
            &condition[..40]
        );
    }
    // Just inside the limit compiles and evaluates, on a test thread's ordinary stack.
    let levels = usize::from(parser::MAX_DEPTH) - 1;
    for (condition, expected) in [
        (format!("{}true", "!".repeat(levels)), levels % 2 == 0),
        (
            format!("{}true{}", "(".repeat(levels), ")".repeat(levels)),
            true,
        ),
        (
            format!("{} == {levels}", vec!["1"; levels].join(" + ")),
            true,
        ),
    ] {
        let program = Program::compile(&condition).expect("within the limit");
        assert_eq!(program.eval_bool(&Value::Nil), Ok(expected));
    }
}
