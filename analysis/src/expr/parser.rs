//! Pratt parser: tokens → [`Node`] tree, with expr-lang's operator precedences.
//!
//! Names and functions are checked here, before anything runs, as expr-lang does when Argo
//! compiles a condition against its environment: `invalidVariable` is an error even in a branch
//! that would never be evaluated.

use super::{
    builtins::{self, Arity},
    lexer::{Tok, Token},
    ExprError, Pos,
};
use crate::value::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum UnaryOp {
    Not,
    Neg,
    Plus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BinaryOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    NotIn,
    Matches,
    Contains,
    StartsWith,
    EndsWith,
    Range,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Coalesce,
}

impl BinaryOp {
    pub(super) fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Or => "||",
            BinaryOp::And => "&&",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::In => "in",
            BinaryOp::NotIn => "not in",
            BinaryOp::Matches => "matches",
            BinaryOp::Contains => "contains",
            BinaryOp::StartsWith => "startsWith",
            BinaryOp::EndsWith => "endsWith",
            BinaryOp::Range => "..",
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Mod => "%",
            BinaryOp::Pow => "**",
            BinaryOp::Coalesce => "??",
        }
    }
}

/// A binary operator's token → (operator, precedence, right-associative). Precedences are
/// expr-lang's (`parser/operator/operator.go`).
fn binary(op: &str) -> Option<(BinaryOp, u16, bool)> {
    Some(match op {
        "or" | "||" => (BinaryOp::Or, 10, false),
        "and" | "&&" => (BinaryOp::And, 15, false),
        "==" => (BinaryOp::Eq, 20, false),
        "!=" => (BinaryOp::Ne, 20, false),
        "<" => (BinaryOp::Lt, 20, false),
        "<=" => (BinaryOp::Le, 20, false),
        ">" => (BinaryOp::Gt, 20, false),
        ">=" => (BinaryOp::Ge, 20, false),
        "in" => (BinaryOp::In, 20, false),
        "matches" => (BinaryOp::Matches, 20, false),
        "contains" => (BinaryOp::Contains, 20, false),
        "startsWith" => (BinaryOp::StartsWith, 20, false),
        "endsWith" => (BinaryOp::EndsWith, 20, false),
        ".." => (BinaryOp::Range, 25, false),
        "+" => (BinaryOp::Add, 30, false),
        "-" => (BinaryOp::Sub, 30, false),
        "*" => (BinaryOp::Mul, 60, false),
        "/" => (BinaryOp::Div, 60, false),
        "%" => (BinaryOp::Mod, 60, false),
        "**" | "^" => (BinaryOp::Pow, 100, true),
        "??" => (BinaryOp::Coalesce, 500, false),
        _ => return None,
    })
}

const UNARY_NOT_PRECEDENCE: u16 = 50;
const UNARY_SIGN_PRECEDENCE: u16 = 90;

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Expr {
    Literal(Value),
    /// An environment variable (`result`).
    Name(String),
    /// `#`, the current element inside a predicate.
    Pointer,
    Unary(UnaryOp, Box<Node>),
    Binary(BinaryOp, Box<Node>, Box<Node>),
    Ternary(Box<Node>, Box<Node>, Box<Node>),
    /// `a.b`, `a?.b`, `a[b]`.
    Member {
        object: Box<Node>,
        index: Box<Node>,
        optional: bool,
    },
    /// `a[from:to]`.
    Slice {
        object: Box<Node>,
        from: Option<Box<Node>>,
        to: Option<Box<Node>>,
    },
    Call {
        name: String,
        args: Vec<Node>,
    },
    /// A predicate (`{# > 1}` or `# > 1`) passed to `all`, `filter`, …
    Closure(Box<Node>),
    Array(Vec<Node>),
    Map(Vec<(String, Node)>),
}

/// An expression with the position of its operator or first token.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Node {
    pub expr: Expr,
    pub pos: Pos,
    /// Levels of nodes from this one down to its deepest leaf (a leaf is 1); never above
    /// [`MAX_DEPTH`], so evaluating and dropping a tree cannot exhaust the stack.
    pub depth: u16,
}

/// How deep a condition may nest (parentheses, operators, calls, members), and how deep its
/// tree may grow (`a + b + …` chains count too). Argo's conditions use a handful of levels;
/// thousands would overflow the stack of whatever parses or evaluates them, and anyone allowed
/// to write a template could take the shared controller down with one. 64 levels parse and
/// evaluate within 1 MiB of stack even unoptimised (a tokio worker has 2 MiB).
pub const MAX_DEPTH: u16 = 64;

impl Node {
    /// A node over `expr`, or an error when it would be nested deeper than [`MAX_DEPTH`].
    fn new(expr: Expr, pos: Pos) -> Result<Node, ExprError> {
        let deepest = |nodes: &mut dyn Iterator<Item = &Node>| nodes.map(|n| n.depth).max();
        let below = match &expr {
            Expr::Literal(_) | Expr::Name(_) | Expr::Pointer => None,
            Expr::Unary(_, a) | Expr::Closure(a) => Some(a.depth),
            Expr::Binary(_, a, b) => Some(a.depth.max(b.depth)),
            Expr::Ternary(a, b, c) => Some(a.depth.max(b.depth).max(c.depth)),
            Expr::Member { object, index, .. } => Some(object.depth.max(index.depth)),
            Expr::Slice { object, from, to } => deepest(
                &mut std::iter::once(&**object)
                    .chain(from.as_deref())
                    .chain(to.as_deref()),
            ),
            Expr::Call { args, .. } | Expr::Array(args) => deepest(&mut args.iter()),
            Expr::Map(entries) => deepest(&mut entries.iter().map(|(_, n)| n)),
        };
        let depth = below.unwrap_or(0).saturating_add(1);
        if depth > MAX_DEPTH {
            return Err(too_deep(pos));
        }
        Ok(Node { expr, pos, depth })
    }
}

fn too_deep(pos: Pos) -> ExprError {
    ExprError::new(
        format!("condition nested too deeply: at most {MAX_DEPTH} levels of operators, parentheses and calls"),
        pos,
    )
}

pub(super) struct Parser<'a> {
    tokens: Vec<Token>,
    at: usize,
    names: &'a [&'a str],
    closure_depth: usize,
    /// How many `expression` calls are open: bounds the parser's own recursion, which
    /// parentheses and prefix operators deepen without building nodes (`((((1))))`, `!!!!a`).
    nesting: u16,
}

impl<'a> Parser<'a> {
    pub(super) fn new(tokens: Vec<Token>, names: &'a [&'a str]) -> Self {
        Parser {
            tokens,
            at: 0,
            names,
            closure_depth: 0,
            nesting: 0,
        }
    }

    pub(super) fn parse(mut self) -> Result<Node, ExprError> {
        if self.peek().tok == Tok::Eof {
            return Err(ExprError::new(
                "empty condition: expected an expression",
                self.peek().pos,
            ));
        }
        let node = self.expression(0)?;
        let next = self.peek();
        if next.tok != Tok::Eof {
            return Err(ExprError::new(
                format!(
                    "expected an operator or the end of the condition, found {}",
                    next.tok.describe()
                ),
                next.pos,
            ));
        }
        Ok(node)
    }

    fn peek(&self) -> &Token {
        &self.tokens[self.at]
    }

    fn peek_at(&self, n: usize) -> &Tok {
        &self.tokens[(self.at + n).min(self.tokens.len() - 1)].tok
    }

    fn next(&mut self) -> Token {
        let token = self.tokens[self.at].clone();
        if self.at < self.tokens.len() - 1 {
            self.at += 1;
        }
        token
    }

    fn is_op(&self, op: &str) -> bool {
        matches!(&self.peek().tok, Tok::Op(o) if *o == op)
    }

    fn expect(&mut self, op: &str, what: &str) -> Result<Pos, ExprError> {
        if self.is_op(op) {
            Ok(self.next().pos)
        } else {
            let found = self.peek();
            Err(ExprError::new(
                format!("expected `{op}` {what}, found {}", found.tok.describe()),
                found.pos,
            ))
        }
    }

    fn expression(&mut self, min_precedence: u16) -> Result<Node, ExprError> {
        if self.nesting >= MAX_DEPTH {
            return Err(too_deep(self.peek().pos));
        }
        self.nesting += 1;
        let node = self.operators(min_precedence);
        self.nesting -= 1;
        node
    }

    fn operators(&mut self, min_precedence: u16) -> Result<Node, ExprError> {
        let mut left = self.unary()?;
        loop {
            let token = self.peek().clone();
            let Tok::Op(op) = token.tok else { break };
            // `not in` / `not matches` … are binary operators spelled with two tokens.
            let (op, negated) = if op == "not" {
                match self.peek_at(1) {
                    Tok::Op("in") => ("in", true),
                    _ => break,
                }
            } else {
                (op, false)
            };
            let Some((bin, precedence, right_assoc)) = binary(op) else {
                if op == "?" && min_precedence == 0 {
                    self.next();
                    let then = self.expression(0)?;
                    self.expect(":", "in the ternary `cond ? a : b`")?;
                    let otherwise = self.expression(0)?;
                    left = Node::new(
                        Expr::Ternary(Box::new(left), Box::new(then), Box::new(otherwise)),
                        token.pos,
                    )?;
                    continue;
                }
                break;
            };
            if precedence < min_precedence {
                break;
            }
            self.next();
            if negated {
                self.next();
            }
            let next_min = if right_assoc {
                precedence
            } else {
                precedence + 1
            };
            let right = self.expression(next_min)?;
            let bin = if negated { BinaryOp::NotIn } else { bin };
            left = Node::new(
                Expr::Binary(bin, Box::new(left), Box::new(right)),
                token.pos,
            )?;
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Node, ExprError> {
        let token = self.peek().clone();
        let op = match token.tok {
            Tok::Op("!") | Tok::Op("not") => Some((UnaryOp::Not, UNARY_NOT_PRECEDENCE)),
            Tok::Op("-") => Some((UnaryOp::Neg, UNARY_SIGN_PRECEDENCE)),
            Tok::Op("+") => Some((UnaryOp::Plus, UNARY_SIGN_PRECEDENCE)),
            _ => None,
        };
        if let Some((op, precedence)) = op {
            self.next();
            let operand = self.expression(precedence)?;
            return Node::new(Expr::Unary(op, Box::new(operand)), token.pos);
        }
        let primary = self.primary()?;
        self.postfix(primary)
    }

    fn primary(&mut self) -> Result<Node, ExprError> {
        let token = self.next();
        let pos = token.pos;
        let expr = match token.tok {
            Tok::Int(i) => Expr::Literal(Value::Int(i)),
            Tok::Float(f) => Expr::Literal(Value::Float(f)),
            Tok::Str(s) => Expr::Literal(Value::String(s)),
            Tok::Ident(name) => match name.as_str() {
                "true" => Expr::Literal(Value::Bool(true)),
                "false" => Expr::Literal(Value::Bool(false)),
                "nil" => Expr::Literal(Value::Nil),
                _ if self.is_op("(") => return self.call(name, pos),
                _ if self.names.contains(&name.as_str()) => Expr::Name(name),
                _ => return Err(ExprError::new(format!("unknown name {name}"), pos)),
            },
            Tok::Op("#") => {
                if self.closure_depth == 0 {
                    return Err(ExprError::new(
                        "`#` is only meaningful inside a predicate such as all(list, {# > 0})",
                        pos,
                    ));
                }
                Expr::Pointer
            }
            // `.field` inside a predicate is `#.field`.
            Tok::Op(".") if self.closure_depth > 0 => {
                let name = self.property_name()?;
                Expr::Member {
                    object: Box::new(Node::new(Expr::Pointer, pos)?),
                    index: Box::new(Node::new(Expr::Literal(Value::String(name)), pos)?),
                    optional: false,
                }
            }
            Tok::Op("(") => {
                let inner = self.expression(0)?;
                self.expect(")", "to close `(`")?;
                return Ok(inner);
            }
            Tok::Op("[") => {
                let mut items = Vec::new();
                while !self.is_op("]") {
                    items.push(self.expression(0)?);
                    if !self.is_op("]") {
                        self.expect(",", "between list elements")?;
                    }
                }
                self.next();
                Expr::Array(items)
            }
            Tok::Op("{") => {
                let mut entries = Vec::new();
                while !self.is_op("}") {
                    let key_token = self.next();
                    let key = match key_token.tok {
                        Tok::Ident(k) | Tok::Str(k) => k,
                        Tok::Int(i) => i.to_string(),
                        other => {
                            return Err(ExprError::new(
                                format!(
                                    "expected a map key (name or string), found {}",
                                    other.describe()
                                ),
                                key_token.pos,
                            ))
                        }
                    };
                    self.expect(":", "after a map key")?;
                    entries.push((key, self.expression(0)?));
                    if !self.is_op("}") {
                        self.expect(",", "between map entries")?;
                    }
                }
                self.next();
                Expr::Map(entries)
            }
            other => {
                return Err(ExprError::new(
                    format!("expected an expression, found {}", other.describe()),
                    pos,
                ))
            }
        };
        Node::new(expr, pos)
    }

    fn property_name(&mut self) -> Result<String, ExprError> {
        let token = self.next();
        match token.tok {
            Tok::Ident(name) => Ok(name),
            // Word operators are valid field names after a dot (`result.in`).
            Tok::Op(op) if op.chars().all(char::is_alphabetic) => Ok(op.to_owned()),
            other => Err(ExprError::new(
                format!(
                    "expected a field name after `.`, found {}",
                    other.describe()
                ),
                token.pos,
            )),
        }
    }

    fn postfix(&mut self, mut node: Node) -> Result<Node, ExprError> {
        loop {
            let token = self.peek().clone();
            match token.tok {
                Tok::Op(op @ ("." | "?.")) => {
                    self.next();
                    let name_pos = self.peek().pos;
                    let name = self.property_name()?;
                    node = Node::new(
                        Expr::Member {
                            object: Box::new(node),
                            index: Box::new(Node::new(
                                Expr::Literal(Value::String(name)),
                                name_pos,
                            )?),
                            optional: op == "?.",
                        },
                        token.pos,
                    )?;
                }
                Tok::Op("[") => {
                    self.next();
                    let from = if self.is_op(":") {
                        None
                    } else {
                        Some(Box::new(self.expression(0)?))
                    };
                    if self.is_op(":") {
                        self.next();
                        let to = if self.is_op("]") {
                            None
                        } else {
                            Some(Box::new(self.expression(0)?))
                        };
                        self.expect("]", "to close the slice")?;
                        node = Node::new(
                            Expr::Slice {
                                object: Box::new(node),
                                from,
                                to,
                            },
                            token.pos,
                        )?;
                    } else {
                        self.expect("]", "to close the index")?;
                        let index = from.expect("an index expression was parsed");
                        node = Node::new(
                            Expr::Member {
                                object: Box::new(node),
                                index,
                                optional: false,
                            },
                            token.pos,
                        )?;
                    }
                }
                _ => return Ok(node),
            }
        }
    }

    fn call(&mut self, name: String, pos: Pos) -> Result<Node, ExprError> {
        let Some(builtin) = builtins::lookup(&name) else {
            return Err(ExprError::new(format!("unknown func {name}"), pos));
        };
        self.expect("(", "to start the arguments")?;
        let mut args = Vec::new();
        while !self.is_op(")") {
            let is_predicate = builtin.predicate && args.len() == 1;
            if is_predicate {
                self.closure_depth += 1;
                let body_pos = self.peek().pos;
                let body = if self.is_op("{") {
                    self.next();
                    let body = self.expression(0)?;
                    self.expect("}", "to close the predicate")?;
                    body
                } else {
                    self.expression(0)?
                };
                self.closure_depth -= 1;
                args.push(Node::new(Expr::Closure(Box::new(body)), body_pos)?);
            } else {
                args.push(self.expression(0)?);
            }
            if !self.is_op(")") {
                self.expect(",", "between arguments")?;
            }
        }
        self.next();
        let ok = match builtin.arity {
            Arity::Exactly(n) => args.len() == n,
            Arity::AtLeast(n) => args.len() >= n,
            Arity::Between(lo, hi) => (lo..=hi).contains(&args.len()),
        };
        if !ok {
            let expected = match builtin.arity {
                Arity::Exactly(n) => format!("{n}"),
                Arity::AtLeast(n) => format!("at least {n}"),
                Arity::Between(lo, hi) => format!("{lo} to {hi}"),
            };
            return Err(ExprError::new(
                format!(
                    "{name}() expects {expected} argument(s), got {}",
                    args.len()
                ),
                pos,
            ));
        }
        if builtin.predicate && args.len() >= 2 && !matches!(args[1].expr, Expr::Closure(_)) {
            return Err(ExprError::new(
                format!("{name}() expects a predicate as its second argument"),
                pos,
            ));
        }
        Node::new(Expr::Call { name, args }, pos)
    }
}
