//! Evaluates a parsed condition against `result`.

use std::cmp::Ordering;

use super::{
    parser::{BinaryOp, Expr, Node, UnaryOp},
    ExprError, Pos,
};
use crate::value::Value;

/// What a condition can see while it runs.
pub(super) struct Scope<'a> {
    /// The provider's value, as `result`.
    pub result: &'a Value,
    /// The elements of the predicates being evaluated, innermost last (`#`).
    pub pointers: Vec<Value>,
}

fn err<T>(message: impl Into<String>, pos: Pos) -> Result<T, ExprError> {
    Err(ExprError::new(message, pos))
}

fn mismatched<T>(op: &str, a: &Value, b: &Value, pos: Pos) -> Result<T, ExprError> {
    err(
        format!(
            "invalid operation: {op} (mismatched types {} and {})",
            a.type_name(),
            b.type_name()
        ),
        pos,
    )
}

pub(super) fn eval(node: &Node, scope: &mut Scope<'_>) -> Result<Value, ExprError> {
    let pos = node.pos;
    match &node.expr {
        Expr::Literal(v) => Ok(v.clone()),
        Expr::Name(name) => match name.as_str() {
            "result" => Ok(scope.result.clone()),
            other => err(format!("unknown name {other}"), pos),
        },
        Expr::Pointer => match scope.pointers.last() {
            Some(v) => Ok(v.clone()),
            None => err("`#` used outside a predicate", pos),
        },
        Expr::Unary(op, operand) => {
            let v = eval(operand, scope)?;
            match (op, v) {
                (UnaryOp::Not, Value::Bool(b)) => Ok(Value::Bool(!b)),
                (UnaryOp::Neg, Value::Int(i)) => i
                    .checked_neg()
                    .map(Value::Int)
                    .ok_or_else(|| ExprError::new(format!("integer overflow: -({i})"), node.pos)),
                (UnaryOp::Neg, Value::Float(f)) => Ok(Value::Float(-f)),
                (UnaryOp::Plus, v @ (Value::Int(_) | Value::Float(_))) => Ok(v),
                (op, v) => {
                    let sym = match op {
                        UnaryOp::Not => "!",
                        UnaryOp::Neg => "-",
                        UnaryOp::Plus => "+",
                    };
                    err(
                        format!(
                            "invalid operation: {sym} (mismatched type {})",
                            v.type_name()
                        ),
                        pos,
                    )
                }
            }
        }
        Expr::Binary(op, left, right) => binary(*op, left, right, pos, scope),
        Expr::Ternary(cond, then, otherwise) => match eval(cond, scope)? {
            Value::Bool(true) => eval(then, scope),
            Value::Bool(false) => eval(otherwise, scope),
            other => err(
                format!(
                    "non-bool {} used as the ternary's condition",
                    other.type_name()
                ),
                cond.pos,
            ),
        },
        Expr::Member {
            object,
            index,
            optional,
        } => {
            let object = eval(object, scope)?;
            if *optional && object == Value::Nil {
                return Ok(Value::Nil);
            }
            let index = eval(index, scope)?;
            member(&object, &index, pos)
        }
        Expr::Slice { object, from, to } => {
            let object = eval(object, scope)?;
            let len = match &object {
                Value::List(l) => l.len(),
                Value::String(s) => s.chars().count(),
                other => return err(format!("cannot slice {}", other.type_name()), pos),
            };
            let bound = |n: &Option<Box<Node>>,
                         default: usize,
                         scope: &mut Scope<'_>|
             -> Result<usize, ExprError> {
                match n {
                    None => Ok(default),
                    Some(n) => match eval(n, scope)? {
                        Value::Int(i) => {
                            let i = if i < 0 { i + len as i64 } else { i };
                            Ok(i.clamp(0, len as i64) as usize)
                        }
                        other => err(
                            format!("slice bounds must be int, got {}", other.type_name()),
                            n.pos,
                        ),
                    },
                }
            };
            let from = bound(from, 0, scope)?;
            let to = bound(to, len, scope)?.max(from);
            Ok(match object {
                Value::List(l) => Value::List(l[from..to].to_vec()),
                Value::String(s) => Value::String(s.chars().skip(from).take(to - from).collect()),
                _ => unreachable!("checked above"),
            })
        }
        Expr::Call { name, args } => call(name, args, pos, scope),
        Expr::Closure(_) => err(
            "a predicate can only be passed to all, any, filter, map, …",
            pos,
        ),
        Expr::Array(items) => Ok(Value::List(
            items
                .iter()
                .map(|i| eval(i, scope))
                .collect::<Result<_, _>>()?,
        )),
        Expr::Map(entries) => Ok(Value::Map(
            entries
                .iter()
                .map(|(k, v)| Ok((k.clone(), eval(v, scope)?)))
                .collect::<Result<_, ExprError>>()?,
        )),
    }
}

fn member(object: &Value, index: &Value, pos: Pos) -> Result<Value, ExprError> {
    match (object, index) {
        // A missing key is nil, as for Go maps in expr-lang.
        (Value::Map(map), Value::String(key)) => Ok(map.get(key).cloned().unwrap_or(Value::Nil)),
        (Value::List(list), Value::Int(i)) => {
            let len = list.len() as i64;
            let at = if *i < 0 { i + len } else { *i };
            if at < 0 || at >= len {
                return err(
                    format!("index out of range: {i} (array length is {len})"),
                    pos,
                );
            }
            Ok(list[at as usize].clone())
        }
        (Value::String(s), Value::Int(i)) => {
            let chars: Vec<char> = s.chars().collect();
            let len = chars.len() as i64;
            let at = if *i < 0 { i + len } else { *i };
            if at < 0 || at >= len {
                return err(
                    format!("index out of range: {i} (string length is {len})"),
                    pos,
                );
            }
            Ok(Value::String(chars[at as usize].to_string()))
        }
        (Value::Nil, Value::String(key)) => err(
            format!("cannot fetch {key} from <nil> (use ?. to allow nil)"),
            pos,
        ),
        (Value::Nil, _) => err("cannot index <nil>", pos),
        (other, Value::String(key)) => err(
            format!("cannot fetch {key} from {}", other.type_name()),
            pos,
        ),
        (Value::List(_), other) => err(
            format!("array index must be int, got {}", other.type_name()),
            pos,
        ),
        (other, _) => err(format!("cannot index {}", other.type_name()), pos),
    }
}

fn truthy(v: Value, op: BinaryOp, pos: Pos) -> Result<bool, ExprError> {
    match v {
        Value::Bool(b) => Ok(b),
        other => err(
            format!(
                "invalid operation: {} (mismatched type {}, expected bool)",
                op.symbol(),
                other.type_name()
            ),
            pos,
        ),
    }
}

/// Deep equality; numbers compare by value across int and float. `None` when the two values
/// have types that cannot be compared (a number and a string …).
fn equal(a: &Value, b: &Value) -> Option<bool> {
    match (a, b) {
        (Value::Nil, Value::Nil) => Some(true),
        (Value::Nil, _) | (_, Value::Nil) => Some(false),
        (Value::Int(x), Value::Int(y)) => Some(x == y),
        (x, y) if x.as_f64().is_some() && y.as_f64().is_some() => Some(x.as_f64() == y.as_f64()),
        (Value::Bool(x), Value::Bool(y)) => Some(x == y),
        (Value::String(x), Value::String(y)) => Some(x == y),
        (Value::List(x), Value::List(y)) => {
            Some(x.len() == y.len() && x.iter().zip(y).all(|(a, b)| equal(a, b) == Some(true)))
        }
        (Value::Map(x), Value::Map(y)) => Some(
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| equal(v, w) == Some(true))),
        ),
        (Value::List(_) | Value::Map(_), _) | (_, Value::List(_) | Value::Map(_)) => Some(false),
        _ => None,
    }
}

fn binary(
    op: BinaryOp,
    left: &Node,
    right: &Node,
    pos: Pos,
    scope: &mut Scope<'_>,
) -> Result<Value, ExprError> {
    // Short-circuit operators evaluate their right side only when needed.
    match op {
        BinaryOp::And => {
            return Ok(Value::Bool(
                truthy(eval(left, scope)?, op, pos)? && truthy(eval(right, scope)?, op, pos)?,
            ))
        }
        BinaryOp::Or => {
            return Ok(Value::Bool(
                truthy(eval(left, scope)?, op, pos)? || truthy(eval(right, scope)?, op, pos)?,
            ))
        }
        BinaryOp::Coalesce => {
            let l = eval(left, scope)?;
            return if l == Value::Nil {
                eval(right, scope)
            } else {
                Ok(l)
            };
        }
        _ => {}
    }
    let a = eval(left, scope)?;
    let b = eval(right, scope)?;
    let sym = op.symbol();
    match op {
        BinaryOp::Eq | BinaryOp::Ne => match equal(&a, &b) {
            Some(eq) => Ok(Value::Bool(eq == (op == BinaryOp::Eq))),
            None => mismatched(sym, &a, &b, pos),
        },
        BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => {
            let ordering = match (&a, &b) {
                (Value::Int(x), Value::Int(y)) => Some(x.cmp(y)),
                (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
                // NaN compares false with everything, as in Go.
                (x, y) if x.as_f64().is_some() && y.as_f64().is_some() => x
                    .as_f64()
                    .unwrap_or(f64::NAN)
                    .partial_cmp(&y.as_f64().unwrap_or(f64::NAN)),
                _ => return mismatched(sym, &a, &b, pos),
            };
            let result = match ordering {
                None => false,
                Some(o) => match op {
                    BinaryOp::Lt => o == Ordering::Less,
                    BinaryOp::Le => o != Ordering::Greater,
                    BinaryOp::Gt => o == Ordering::Greater,
                    _ => o != Ordering::Less,
                },
            };
            Ok(Value::Bool(result))
        }
        BinaryOp::In | BinaryOp::NotIn => {
            let found = match &b {
                Value::List(items) => items.iter().any(|item| equal(&a, item) == Some(true)),
                Value::Map(map) => match &a {
                    Value::String(key) => map.contains_key(key),
                    other => {
                        return err(
                            format!("cannot use {} as a map key in `in`", other.type_name()),
                            pos,
                        )
                    }
                },
                Value::Nil => false,
                other => {
                    return err(
                        format!("operator `in` not defined on {}", other.type_name()),
                        pos,
                    )
                }
            };
            Ok(Value::Bool(found == (op == BinaryOp::In)))
        }
        BinaryOp::Matches => match (&a, &b) {
            (Value::String(s), Value::String(pattern)) => {
                let re = regex::Regex::new(pattern).map_err(|e| {
                    ExprError::new(format!("invalid regular expression: {e}"), right.pos)
                })?;
                Ok(Value::Bool(re.is_match(s)))
            }
            _ => mismatched(sym, &a, &b, pos),
        },
        BinaryOp::Contains | BinaryOp::StartsWith | BinaryOp::EndsWith => match (&a, &b) {
            (Value::String(s), Value::String(t)) => Ok(Value::Bool(match op {
                BinaryOp::Contains => s.contains(t.as_str()),
                BinaryOp::StartsWith => s.starts_with(t.as_str()),
                _ => s.ends_with(t.as_str()),
            })),
            _ => mismatched(sym, &a, &b, pos),
        },
        BinaryOp::Range => match (&a, &b) {
            (Value::Int(from), Value::Int(to)) => {
                // Checked: `-2..9223372036854775807` spans more than an i64 holds.
                if to.checked_sub(*from).is_none_or(|span| span > 1_000_000) {
                    return err(
                        format!("range {from}..{to} too large (at most 1000001 elements)"),
                        pos,
                    );
                }
                Ok(Value::List((*from..=*to).map(Value::Int).collect()))
            }
            _ => mismatched(sym, &a, &b, pos),
        },
        BinaryOp::Add => match (&a, &b) {
            (Value::Int(x), Value::Int(y)) => int_op(x.checked_add(*y), &a, &b, sym, pos),
            (Value::String(x), Value::String(y)) => Ok(Value::String(format!("{x}{y}"))),
            (Value::List(x), Value::List(y)) => {
                Ok(Value::List(x.iter().chain(y).cloned().collect()))
            }
            _ => float_op(&a, &b, sym, pos, |x, y| x + y),
        },
        BinaryOp::Sub => match (&a, &b) {
            (Value::Int(x), Value::Int(y)) => int_op(x.checked_sub(*y), &a, &b, sym, pos),
            _ => float_op(&a, &b, sym, pos, |x, y| x - y),
        },
        BinaryOp::Mul => match (&a, &b) {
            (Value::Int(x), Value::Int(y)) => int_op(x.checked_mul(*y), &a, &b, sym, pos),
            _ => float_op(&a, &b, sym, pos, |x, y| x * y),
        },
        // Division is always a float division in expr-lang (`1 / 2 == 0.5`).
        BinaryOp::Div => float_op(&a, &b, sym, pos, |x, y| x / y),
        BinaryOp::Pow => float_op(&a, &b, sym, pos, f64::powf),
        BinaryOp::Mod => match (&a, &b) {
            (Value::Int(_), Value::Int(0)) => err("integer divide by zero", pos),
            (Value::Int(x), Value::Int(y)) => Ok(Value::Int(x.wrapping_rem(*y))),
            _ => mismatched(sym, &a, &b, pos),
        },
        BinaryOp::And | BinaryOp::Or | BinaryOp::Coalesce => unreachable!("handled above"),
    }
}

/// An integer operation's result, or an error where Go would wrap around silently.
fn int_op(
    result: Option<i64>,
    a: &Value,
    b: &Value,
    sym: &str,
    pos: Pos,
) -> Result<Value, ExprError> {
    result
        .map(Value::Int)
        .ok_or_else(|| ExprError::new(format!("integer overflow: {a} {sym} {b}"), pos))
}

fn float_op(
    a: &Value,
    b: &Value,
    sym: &str,
    pos: Pos,
    f: impl Fn(f64, f64) -> f64,
) -> Result<Value, ExprError> {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => Ok(Value::Float(f(x, y))),
        _ => mismatched(sym, a, b, pos),
    }
}

fn number(v: &Value, name: &str, pos: Pos) -> Result<f64, ExprError> {
    v.as_f64().ok_or_else(|| {
        ExprError::new(
            format!("{name}() expects a number, got {}", v.type_name()),
            pos,
        )
    })
}

fn list<'v>(v: &'v Value, name: &str, pos: Pos) -> Result<&'v [Value], ExprError> {
    match v {
        Value::List(items) => Ok(items),
        other => err(
            format!("{name}() expects an array, got {}", other.type_name()),
            pos,
        ),
    }
}

fn string<'v>(v: &'v Value, name: &str, pos: Pos) -> Result<&'v str, ExprError> {
    match v {
        Value::String(s) => Ok(s),
        other => err(
            format!("{name}() expects a string, got {}", other.type_name()),
            pos,
        ),
    }
}

fn call(name: &str, args: &[Node], pos: Pos, scope: &mut Scope<'_>) -> Result<Value, ExprError> {
    // Predicates: the second argument runs once per element with `#` bound to it.
    if let [collection, Node {
        expr: Expr::Closure(body),
        pos: predicate_pos,
        ..
    }] = args
    {
        let items = eval(collection, scope)?;
        let items = list(&items, name, collection.pos)?.to_vec();
        let mut outputs = Vec::with_capacity(items.len());
        for item in items.iter() {
            scope.pointers.push(item.clone());
            let out = eval(body, scope);
            scope.pointers.pop();
            outputs.push(out?);
        }
        if name == "map" {
            return Ok(Value::List(outputs));
        }
        let mut flags = Vec::with_capacity(outputs.len());
        for out in outputs {
            match out {
                Value::Bool(b) => flags.push(b),
                other => {
                    return err(
                        format!(
                            "predicate of {name}() must return bool, got {}",
                            other.type_name()
                        ),
                        *predicate_pos,
                    )
                }
            }
        }
        let trues = flags.iter().filter(|b| **b).count();
        return Ok(match name {
            "all" => Value::Bool(trues == flags.len()),
            "any" => Value::Bool(trues > 0),
            "none" => Value::Bool(trues == 0),
            "one" => Value::Bool(trues == 1),
            "count" => Value::Int(trues as i64),
            "filter" => Value::List(
                items
                    .into_iter()
                    .zip(flags)
                    .filter(|(_, keep)| *keep)
                    .map(|(v, _)| v)
                    .collect(),
            ),
            _ => return err(format!("unknown func {name}"), pos),
        });
    }
    let values: Vec<Value> = args
        .iter()
        .map(|a| eval(a, scope))
        .collect::<Result<_, _>>()?;
    let arg = |i: usize| -> &Value { &values[i] };
    match name {
        // Argo: isNil and default look at the whole result, whatever their first argument.
        "isNil" => Ok(Value::Bool(*scope.result == Value::Nil)),
        "default" => Ok(if *scope.result == Value::Nil {
            arg(1).clone()
        } else {
            scope.result.clone()
        }),
        "asInt" => match arg(0) {
            Value::Int(i) => Ok(Value::Int(*i)),
            Value::Float(f) => Ok(Value::Int(*f as i64)),
            Value::String(s) => s.parse::<i64>().map(Value::Int).map_err(|_| {
                ExprError::new(
                    format!("strconv.ParseInt: parsing {s:?}: invalid syntax"),
                    pos,
                )
            }),
            other => err(
                format!("asInt() not supported on {} {other}", other.type_name()),
                pos,
            ),
        },
        "asFloat" => match arg(0) {
            Value::Int(i) => Ok(Value::Float(*i as f64)),
            Value::Float(f) => Ok(Value::Float(*f)),
            Value::String(s) => parse_go_float(s).map(Value::Float).ok_or_else(|| {
                ExprError::new(
                    format!("strconv.ParseFloat: parsing {s:?}: invalid syntax"),
                    pos,
                )
            }),
            other => err(
                format!("asFloat() not supported on {} {other}", other.type_name()),
                pos,
            ),
        },
        "isNaN" => Ok(Value::Bool(number(arg(0), name, pos)?.is_nan())),
        "isInf" => Ok(Value::Bool(number(arg(0), name, pos)?.is_infinite())),
        "len" => match arg(0) {
            Value::String(s) => Ok(Value::Int(s.len() as i64)),
            Value::List(l) => Ok(Value::Int(l.len() as i64)),
            Value::Map(m) => Ok(Value::Int(m.len() as i64)),
            other => err(
                format!("invalid argument for len (type {})", other.type_name()),
                pos,
            ),
        },
        "sum" | "mean" => {
            let items = list(arg(0), name, pos)?;
            let all_int = items.iter().all(|v| matches!(v, Value::Int(_)));
            if name == "sum" && all_int {
                let mut total: i64 = 0;
                for item in items {
                    if let Value::Int(i) = item {
                        total = total.checked_add(*i).ok_or_else(|| {
                            ExprError::new(format!("integer overflow in sum() at {i}"), pos)
                        })?;
                    }
                }
                return Ok(Value::Int(total));
            }
            let mut total = 0.0;
            for item in items {
                total += number(item, name, pos)?;
            }
            Ok(Value::Float(if name == "mean" {
                total / items.len() as f64
            } else {
                total
            }))
        }
        "min" | "max" => {
            let items: &[Value] = match values.as_slice() {
                [Value::List(items)] => items,
                all => all,
            };
            let mut best: Option<&Value> = None;
            for item in items {
                let x = number(item, name, pos)?;
                let better = match best {
                    None => true,
                    Some(b) => {
                        let y = b.as_f64().unwrap_or(f64::NAN);
                        if name == "min" {
                            x < y
                        } else {
                            x > y
                        }
                    }
                };
                if better {
                    best = Some(item);
                }
            }
            best.cloned()
                .ok_or_else(|| ExprError::new(format!("{name}() of an empty array"), pos))
        }
        "abs" => match arg(0) {
            Value::Int(i) => i
                .checked_abs()
                .map(Value::Int)
                .ok_or_else(|| ExprError::new(format!("integer overflow: abs({i})"), pos)),
            v => Ok(Value::Float(number(v, name, pos)?.abs())),
        },
        "ceil" => Ok(Value::Float(number(arg(0), name, pos)?.ceil())),
        "floor" => Ok(Value::Float(number(arg(0), name, pos)?.floor())),
        "round" => Ok(Value::Float(number(arg(0), name, pos)?.round())),
        "first" => Ok(list(arg(0), name, pos)?
            .first()
            .cloned()
            .unwrap_or(Value::Nil)),
        "last" => Ok(list(arg(0), name, pos)?
            .last()
            .cloned()
            .unwrap_or(Value::Nil)),
        "int" => match arg(0) {
            Value::String(s) => s
                .trim()
                .parse::<i64>()
                .map(Value::Int)
                .map_err(|_| ExprError::new(format!("int(): cannot parse {s:?}"), pos)),
            v => Ok(Value::Int(number(v, name, pos)? as i64)),
        },
        "float" => match arg(0) {
            Value::String(s) => parse_go_float(s.trim())
                .map(Value::Float)
                .ok_or_else(|| ExprError::new(format!("float(): cannot parse {s:?}"), pos)),
            v => Ok(Value::Float(number(v, name, pos)?)),
        },
        "string" => Ok(Value::String(match arg(0) {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })),
        "lower" => Ok(Value::String(string(arg(0), name, pos)?.to_lowercase())),
        "upper" => Ok(Value::String(string(arg(0), name, pos)?.to_uppercase())),
        "trim" => {
            let s = string(arg(0), name, pos)?;
            Ok(Value::String(match values.get(1) {
                Some(cut) => {
                    let cut = string(cut, name, pos)?;
                    s.trim_matches(|c| cut.contains(c)).to_owned()
                }
                None => s.trim().to_owned(),
            }))
        }
        "keys" | "values" => match arg(0) {
            Value::Map(m) => Ok(Value::List(if name == "keys" {
                m.keys().cloned().map(Value::String).collect()
            } else {
                m.values().cloned().collect()
            })),
            other => err(
                format!("{name}() expects a map, got {}", other.type_name()),
                pos,
            ),
        },
        _ => err(format!("unknown func {name}"), pos),
    }
}

/// Go's `strconv.ParseFloat`: also accepts `NaN`, `Inf`, `+Inf`, `-Inf` (any case).
fn parse_go_float(s: &str) -> Option<f64> {
    match s.to_ascii_lowercase().as_str() {
        "nan" => Some(f64::NAN),
        "inf" | "+inf" | "infinity" | "+infinity" => Some(f64::INFINITY),
        "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
        _ if s
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-' | '_')) =>
        {
            s.replace('_', "").parse().ok()
        }
        _ => None,
    }
}
