//! Splits a condition into tokens, each with its position.

use super::{ExprError, Pos};

/// One token of a condition.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Tok {
    Int(i64),
    Float(f64),
    Str(String),
    Ident(String),
    /// An operator or punctuation, including the word operators (`and`, `in`, …).
    Op(&'static str),
    Eof,
}

impl Tok {
    /// How the token is named in "expected …, found …" messages.
    pub(super) fn describe(&self) -> String {
        match self {
            Tok::Int(i) => format!("number {i}"),
            Tok::Float(f) => format!("number {f}"),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Ident(name) => format!("name `{name}`"),
            Tok::Op(op) => format!("`{op}`"),
            Tok::Eof => "end of condition".to_owned(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct Token {
    pub tok: Tok,
    pub pos: Pos,
}

/// Symbolic operators, longest first so that `**` wins over `*`.
const SYMBOLS: &[&str] = &[
    "?.", "??", "**", "==", "!=", "<=", ">=", "&&", "||", "..", "+", "-", "*", "/", "%", "^", "<",
    ">", "!", "?", ":", ".", ",", "(", ")", "[", "]", "{", "}", "#",
];

/// Words that are operators rather than names.
const WORD_OPS: &[&str] = &[
    "and",
    "or",
    "not",
    "in",
    "matches",
    "contains",
    "startsWith",
    "endsWith",
];

pub(super) fn tokenize(source: &str) -> Result<Vec<Token>, ExprError> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    let (mut line, mut column) = (1u32, 1u32);
    // Advances over `n` characters, keeping line and column.
    let advance = |i: &mut usize, n: usize, line: &mut u32, column: &mut u32| {
        for _ in 0..n {
            if chars.get(*i) == Some(&'\n') {
                *line += 1;
                *column = 1;
            } else {
                *column += 1;
            }
            *i += 1;
        }
    };
    while i < chars.len() {
        let c = chars[i];
        let pos = Pos { line, column };
        if c.is_whitespace() {
            advance(&mut i, 1, &mut line, &mut column);
            continue;
        }
        if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            let mut end = i;
            let mut is_float = false;
            let is_hex = c == '0' && matches!(chars.get(i + 1), Some('x' | 'X'));
            if is_hex {
                end += 2;
                while end < chars.len() && (chars[end].is_ascii_hexdigit() || chars[end] == '_') {
                    end += 1;
                }
            } else {
                while end < chars.len() && (chars[end].is_ascii_digit() || chars[end] == '_') {
                    end += 1;
                }
                // A fraction, but not the range operator `1..3`.
                if end < chars.len() && chars[end] == '.' && chars.get(end + 1) != Some(&'.') {
                    is_float = true;
                    end += 1;
                    while end < chars.len() && (chars[end].is_ascii_digit() || chars[end] == '_') {
                        end += 1;
                    }
                }
                if end < chars.len() && matches!(chars[end], 'e' | 'E') {
                    let mut exp = end + 1;
                    if exp < chars.len() && matches!(chars[exp], '+' | '-') {
                        exp += 1;
                    }
                    if exp < chars.len() && chars[exp].is_ascii_digit() {
                        is_float = true;
                        end = exp;
                        while end < chars.len() && chars[end].is_ascii_digit() {
                            end += 1;
                        }
                    }
                }
            }
            let text: String = chars[start..end].iter().filter(|c| **c != '_').collect();
            let tok = if is_hex {
                i64::from_str_radix(&text[2..], 16).map(Tok::Int).ok()
            } else if is_float {
                text.parse::<f64>().map(Tok::Float).ok()
            } else {
                text.parse::<i64>().map(Tok::Int).ok()
            };
            let tok = tok.ok_or_else(|| ExprError::new(format!("invalid number {text:?}"), pos))?;
            if chars
                .get(end)
                .is_some_and(|c| c.is_alphanumeric() || *c == '_')
            {
                return Err(ExprError::new(
                    format!(
                        "invalid number {:?}",
                        chars[start..=end].iter().collect::<String>()
                    ),
                    pos,
                ));
            }
            tokens.push(Token { tok, pos });
            advance(&mut i, end - start, &mut line, &mut column);
            continue;
        }
        if c.is_alphabetic() || c == '_' || c == '$' {
            let start = i;
            let mut end = i;
            while end < chars.len()
                && (chars[end].is_alphanumeric() || chars[end] == '_' || chars[end] == '$')
            {
                end += 1;
            }
            let word: String = chars[start..end].iter().collect();
            let tok = match WORD_OPS.iter().find(|op| **op == word) {
                Some(op) => Tok::Op(op),
                None => Tok::Ident(word),
            };
            tokens.push(Token { tok, pos });
            advance(&mut i, end - start, &mut line, &mut column);
            continue;
        }
        if c == '"' || c == '\'' || c == '`' {
            let (text, consumed) = string_literal(&chars[i..], pos)?;
            tokens.push(Token {
                tok: Tok::Str(text),
                pos,
            });
            advance(&mut i, consumed, &mut line, &mut column);
            continue;
        }
        let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
        match SYMBOLS.iter().find(|s| rest.starts_with(**s)) {
            Some(sym) => {
                tokens.push(Token {
                    tok: Tok::Op(sym),
                    pos,
                });
                advance(&mut i, sym.chars().count(), &mut line, &mut column);
            }
            None => return Err(ExprError::new(format!("unexpected character {c:?}"), pos)),
        }
    }
    tokens.push(Token {
        tok: Tok::Eof,
        pos: Pos { line, column },
    });
    Ok(tokens)
}

/// Reads a quoted string starting at `chars[0]`; returns its value and the characters consumed.
fn string_literal(chars: &[char], pos: Pos) -> Result<(String, usize), ExprError> {
    let quote = chars[0];
    let mut out = String::new();
    let mut i = 1;
    while i < chars.len() {
        let c = chars[i];
        if c == quote {
            return Ok((out, i + 1));
        }
        if c == '\\' && quote != '`' {
            let escaped = chars
                .get(i + 1)
                .ok_or_else(|| ExprError::new("unterminated string", pos))?;
            match escaped {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                '0' => out.push('\0'),
                '\\' | '"' | '\'' | '`' => out.push(*escaped),
                'u' => {
                    let hex: String = chars
                        .get(i + 2..i + 6)
                        .map(|h| h.iter().collect())
                        .unwrap_or_default();
                    let ch = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
                    out.push(
                        ch.ok_or_else(|| ExprError::new("invalid \\u escape in string", pos))?,
                    );
                    i += 4;
                }
                other => {
                    return Err(ExprError::new(
                        format!("invalid escape \\{other} in string"),
                        pos,
                    ))
                }
            }
            i += 2;
            continue;
        }
        out.push(c);
        i += 1;
    }
    Err(ExprError::new("unterminated string", pos))
}
