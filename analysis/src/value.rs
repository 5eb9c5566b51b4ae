//! The dynamic value a provider hands to the condition language: what Argo's `result` is.

use std::{collections::BTreeMap, fmt};

/// A provider's result, or any intermediate value of a condition.
///
/// Numbers keep Go's distinction between integers and floats because the condition language
/// does (`1 / 2` is `0.5`, `7 % 2` needs integers). JSON numbers always become [`Value::Float`],
/// as Go's `encoding/json` makes them `float64`; Prometheus values are floats too.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Value {
    /// Go's `nil`: no value at all (a provider that found nothing, a missing map key).
    #[default]
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
}

impl Value {
    /// The type name used in error messages, in Go's words where Argo users will recognise them.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Nil => "<nil>",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float64",
            Value::String(_) => "string",
            Value::List(_) => "array",
            Value::Map(_) => "map",
        }
    }

    /// A numeric value as `f64`, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// Argo's "nil or empty" test, used to explain a failed condition as "no data".
    pub fn is_nil_or_empty(&self) -> bool {
        matches!(self, Value::Nil) || matches!(self, Value::List(l) if l.is_empty())
    }

    /// Converts decoded JSON the way Go's `encoding/json` does into `any`: every number is a float.
    pub fn from_json(json: &serde_json::Value) -> Value {
        match json {
            serde_json::Value::Null => Value::Nil,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            serde_json::Value::String(s) => Value::String(s.clone()),
            serde_json::Value::Array(items) => {
                Value::List(items.iter().map(Value::from_json).collect())
            }
            serde_json::Value::Object(map) => Value::Map(
                map.iter()
                    .map(|(k, v)| (k.clone(), Value::from_json(v)))
                    .collect(),
            ),
        }
    }
}

/// Formats a float as Go's `strconv.FormatFloat(f, 'f', -1, 64)`: shortest form, no exponent,
/// `NaN`, `+Inf`, `-Inf`.
pub fn format_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".to_owned()
    } else if f == f64::INFINITY {
        "+Inf".to_owned()
    } else if f == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        format!("{f}")
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Nil => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => f.write_str(&format_float(*x)),
            Value::String(s) => f.write_str(&serde_json::Value::String(s.clone()).to_string()),
            Value::List(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            Value::Map(map) => {
                f.write_str("{")?;
                for (i, (k, v)) in map.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{}:{v}", serde_json::Value::String(k.clone()))?;
                }
                f.write_str("}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_print_as_argo_stores_them() {
        assert_eq!(Value::Float(0.98).to_string(), "0.98");
        assert_eq!(Value::Float(10.0).to_string(), "10");
        assert_eq!(Value::Float(f64::NAN).to_string(), "NaN");
        assert_eq!(Value::Float(f64::INFINITY).to_string(), "+Inf");
        assert_eq!(
            Value::List(vec![Value::Float(10.0), Value::Float(11.5)]).to_string(),
            "[10,11.5]"
        );
        assert_eq!(Value::List(vec![]).to_string(), "[]");
        let json = serde_json::json!({"a": [1, "x", null, true]});
        assert_eq!(
            Value::from_json(&json).to_string(),
            r#"{"a":[1,"x",null,true]}"#
        );
    }

    #[test]
    fn json_numbers_are_floats() {
        assert_eq!(Value::from_json(&serde_json::json!(1)), Value::Float(1.0));
    }
}
