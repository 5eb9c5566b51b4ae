//! The condition language: the part of [expr-lang](https://expr-lang.org) that Argo Rollouts
//! templates use in `successCondition` / `failureCondition`.
//!
//! ```text
//! source ──lexer──▶ tokens ──parser (Pratt)──▶ Node tree ──eval(result)──▶ Value
//! ```
//!
//! Supported: literals (`1`, `0.5`, `1e3`, `0x1f`, `"s"`, `'s'`, `` `raw` ``, `true`, `nil`,
//! `[1, 2]`, `{a: 1}`), `result`, member access (`a.b`, `a?.b`, `a["b"]`, `a[0]`, `a[-1]`,
//! `a[1:3]`), arithmetic (`+ - * / % **`), comparisons, `&&`/`||`/`!` and `and`/`or`/`not`,
//! `cond ? a : b`, `??`, `in`/`not in`, `matches`, `contains`, `startsWith`, `endsWith`,
//! `..`, and the functions in `builtins.rs`: Argo's `asInt`, `asFloat`, `isNaN`, `isInf`,
//! `isNil`, `default`, and expr-lang's `len`, `all`/`any`/`none`/`one`/`filter`/`map`/`count`
//! with `#` (and `.field` for `#.field`), `sum`, `mean`, `min`, `max`, `abs`, `ceil`, `floor`,
//! `round`, `first`, `last`, `int`, `float`, `string`, `lower`, `upper`, `trim`, `keys`,
//! `values`.
//!
//! Every error carries the line and column (`unknown name foo (1:1)`).

mod builtins;
mod eval;
mod lexer;
mod parser;
#[cfg(test)]
mod tests;

use std::fmt;

use crate::value::Value;

/// A 1-based position in a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Why a condition could not be compiled or evaluated. Either way the measurement is an Error.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub struct ExprError {
    /// What went wrong, in expr-lang's words where Argo users know them.
    pub message: String,
    /// Where, when it is about one place in the condition.
    pub pos: Option<Pos>,
}

impl ExprError {
    fn new(message: impl Into<String>, pos: Pos) -> Self {
        ExprError {
            message: message.into(),
            pos: Some(pos),
        }
    }
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some(pos) => write!(f, "{} ({pos})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// The names a condition may refer to.
const ENVIRONMENT: &[&str] = &["result"];

/// A compiled condition.
#[derive(Clone, Debug)]
pub struct Program {
    source: String,
    root: parser::Node,
}

impl Program {
    /// Parses and checks a condition: syntax, names and function arity.
    pub fn compile(source: &str) -> Result<Program, ExprError> {
        let tokens = lexer::tokenize(source)?;
        let root = parser::Parser::new(tokens, ENVIRONMENT).parse()?;
        Ok(Program {
            source: source.to_owned(),
            root,
        })
    }

    /// The condition's text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the condition with `result` bound to the provider's value.
    pub fn eval(&self, result: &Value) -> Result<Value, ExprError> {
        let mut scope = eval::Scope {
            result,
            pointers: Vec::new(),
        };
        eval::eval(&self.root, &mut scope)
    }

    /// Evaluates a condition that must yield a boolean, as Argo's `EvalCondition` does.
    pub fn eval_bool(&self, result: &Value) -> Result<bool, ExprError> {
        match self.eval(result)? {
            Value::Bool(b) => Ok(b),
            other => Err(ExprError {
                message: format!("expected bool, but got {}", other.type_name()),
                pos: None,
            }),
        }
    }
}

/// Compiles and evaluates `condition` against `result` (Argo's `EvalCondition`).
pub fn eval_condition(result: &Value, condition: &str) -> Result<bool, ExprError> {
    Program::compile(condition)?.eval_bool(result)
}
