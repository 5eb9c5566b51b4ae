//! An AnalysisTemplate's successCondition/failureCondition: compiling and evaluating any text
//! against the kinds of values providers return never panics, overflows or recurses without
//! bound; it succeeds or says why not.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use plover_analysis::{expr::Program, Value};

fuzz_target!(|source: &str| {
    let Ok(program) = Program::compile(source) else {
        return;
    };
    let map = Value::Map(BTreeMap::from([("p99".to_owned(), Value::Float(0.25))]));
    for result in [
        Value::Float(0.97),
        Value::Int(i64::MAX),
        Value::Int(i64::MIN),
        Value::Nil,
        Value::String("1e308".into()),
        Value::List(vec![Value::Float(f64::NAN), Value::Int(-1), map]),
    ] {
        let _ = program.eval(&result);
        let _ = program.eval_bool(&result);
    }
});
