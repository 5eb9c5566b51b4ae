//! The subset of kubectl's JSONPath (`k8s.io/client-go/util/jsonpath`) that web metrics use:
//! `{$}`, `{$.a.b}`, `{.a.b}`, `{.a['b-c']}`, `{.items[0]}`, `{.items[-1]}`, `{.items[*].x}`,
//! `{.*}`, `{..x}` (recursive descent). Like Argo, the caller keeps the first match.

use serde_json::Value as Json;

/// Why a path could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JsonPathError {
    #[error("invalid JSONPath {path:?}: {message}")]
    Syntax { path: String, message: String },
    #[error("{0} is not found")]
    NotFound(String),
}

#[derive(Clone, Debug, PartialEq)]
enum Step {
    Field(String),
    Index(i64),
    Wildcard,
    Descend(String),
}

fn parse(path: &str) -> Result<Vec<Step>, JsonPathError> {
    let syntax = |message: &str| JsonPathError::Syntax {
        path: path.to_owned(),
        message: message.to_owned(),
    };
    let trimmed = path.trim();
    let inner = if trimmed.is_empty() {
        "$"
    } else {
        trimmed
            .strip_prefix('{')
            .and_then(|p| p.strip_suffix('}'))
            .ok_or_else(|| syntax("expected the form {…}"))?
            .trim()
    };
    let mut rest = inner.strip_prefix('$').unwrap_or(inner);
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("..") {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end == 0 {
                return Err(syntax("expected a field name after .."));
            }
            steps.push(Step::Descend(r[..end].to_owned()));
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let name = &r[..end];
            match name {
                "" => return Err(syntax("expected a field name after .")),
                "*" => steps.push(Step::Wildcard),
                _ => steps.push(Step::Field(name.to_owned())),
            }
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').ok_or_else(|| syntax("unterminated ["))?;
            let inside = r[..end].trim();
            if inside == "*" {
                steps.push(Step::Wildcard);
            } else if let Some(name) = inside
                .strip_prefix('\'')
                .and_then(|s| s.strip_suffix('\''))
                .or_else(|| inside.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
            {
                steps.push(Step::Field(name.to_owned()));
            } else if let Ok(i) = inside.parse::<i64>() {
                steps.push(Step::Index(i));
            } else {
                return Err(syntax(&format!(
                    "unsupported subscript [{inside}] (filters and slices are not supported)"
                )));
            }
            rest = &r[end + 1..];
        } else {
            return Err(syntax(&format!("unexpected {rest:?}")));
        }
    }
    Ok(steps)
}

fn descend<'a>(node: &'a Json, name: &str, out: &mut Vec<&'a Json>) {
    match node {
        Json::Object(map) => {
            if let Some(v) = map.get(name) {
                out.push(v);
            }
            for v in map.values() {
                descend(v, name, out);
            }
        }
        Json::Array(items) => items.iter().for_each(|v| descend(v, name, out)),
        _ => {}
    }
}

/// Every match of `path` in `data`, in document order.
pub fn find<'a>(path: &str, data: &'a Json) -> Result<Vec<&'a Json>, JsonPathError> {
    let mut current = vec![data];
    for step in parse(path)? {
        let mut next = Vec::new();
        for node in current {
            match (&step, node) {
                (Step::Field(name), Json::Object(map)) => next.extend(map.get(name)),
                (Step::Index(i), Json::Array(items)) => {
                    let len = items.len() as i64;
                    let at = if *i < 0 { i + len } else { *i };
                    if (0..len).contains(&at) {
                        next.push(&items[at as usize]);
                    }
                }
                (Step::Wildcard, Json::Array(items)) => next.extend(items.iter()),
                (Step::Wildcard, Json::Object(map)) => next.extend(map.values()),
                (Step::Descend(name), n) => descend(n, name, &mut next),
                _ => {}
            }
        }
        if next.is_empty() {
            let what = match &step {
                Step::Field(n) | Step::Descend(n) => n.clone(),
                Step::Index(i) => format!("array index {i}"),
                Step::Wildcard => "*".to_owned(),
            };
            return Err(JsonPathError::NotFound(what));
        }
        current = next;
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn kubectl_paths() {
        let data =
            json!({"data": {"ok": true, "rate": 0.99, "a-b": 1, "items": [{"x": 1}, {"x": 2}]}});
        let first = |p: &str| find(p, &data).map(|v| v[0].clone());
        assert_eq!(first("{$}").unwrap(), data);
        assert_eq!(first("").unwrap(), data);
        assert_eq!(first("{$.data.ok}").unwrap(), json!(true));
        assert_eq!(first("{.data.rate}").unwrap(), json!(0.99));
        assert_eq!(first("{.data['a-b']}").unwrap(), json!(1));
        assert_eq!(first("{.data.items[1].x}").unwrap(), json!(2));
        assert_eq!(first("{.data.items[-1].x}").unwrap(), json!(2));
        assert_eq!(
            find("{.data.items[*].x}", &data).unwrap(),
            vec![&json!(1), &json!(2)]
        );
        assert_eq!(find("{..x}", &data).unwrap().len(), 2);
        assert_eq!(
            first("{.data.missing}").unwrap_err(),
            JsonPathError::NotFound("missing".into())
        );
        assert!(matches!(
            first("{.data.items[?(@.x==1)]}"),
            Err(JsonPathError::Syntax { .. })
        ));
        assert!(matches!(first(".data"), Err(JsonPathError::Syntax { .. })));
    }
}
