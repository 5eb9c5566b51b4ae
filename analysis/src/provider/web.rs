//! `provider.web`: an HTTP request whose JSON answer is narrowed by a JSONPath (Argo's
//! `metricproviders/webmetric`). A body that is not JSON is passed to the conditions as a string.

use std::time::Duration;

use super::{error_chain, jsonpath, Outcome, ProviderError, Providers};
use crate::{template::WebSpec, value::Value};

/// Argo's default web timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why this metric cannot be measured by this build, if so.
pub fn unsupported(spec: &WebSpec) -> Option<String> {
    (!spec.authentication.oauth2.token_url.is_empty())
        .then(|| "OAuth2 authentication is not supported by Plover yet".to_owned())
}

pub(super) async fn query(providers: &Providers, spec: &WebSpec) -> Result<Outcome, ProviderError> {
    if let Some(reason) = unsupported(spec) {
        return Err(ProviderError::Unsupported {
            provider: "web".to_owned(),
            reason,
        });
    }
    let method = if spec.method.is_empty() {
        "GET"
    } else {
        spec.method.as_str()
    };
    let has_body = !spec.body.is_empty();
    let has_json = spec.json_body.is_some();
    if has_body && has_json {
        return Err(ProviderError::Config(
            "use either Body or JSONBody; both cannot exists for WebMetric payload".to_owned(),
        ));
    }
    if (has_body || has_json) && method == "GET" {
        return Err(ProviderError::Config(
            "Body/JSONBody can only be used with POST or PUT WebMetric Method types".to_owned(),
        ));
    }
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| ProviderError::Config(format!("invalid method {method:?}")))?;
    let client = providers.client_for(&spec.url, spec.insecure)?;
    let timeout = if spec.timeout_seconds <= 0 {
        DEFAULT_TIMEOUT
    } else {
        Duration::from_secs(spec.timeout_seconds as u64)
    };
    let mut request = client.request(method, &spec.url).timeout(timeout);
    for h in &spec.headers {
        request = request.header(&h.key, &h.value);
    }
    if let Some(json) = &spec.json_body {
        request = request
            .header("Content-Type", "application/json")
            .body(json.to_string());
    } else if has_body {
        request = request.body(spec.body.clone());
    }
    let basic = &spec.authentication.basic_auth;
    if !basic.username.is_empty() {
        request = request.basic_auth(&basic.username, Some(&basic.password));
    }
    let response = request
        .send()
        .await
        .map_err(|e| ProviderError::Transport(error_chain(&e)))?;
    let status = response.status();
    if !status.is_success() {
        return Err(ProviderError::Response(format!(
            "received non 2xx response code: {}",
            status.as_u16()
        )));
    }
    let body = response.bytes().await.map_err(|e| {
        ProviderError::Transport(format!(
            "Received no bytes in response: {}",
            error_chain(&e)
        ))
    })?;
    parse_body(&body, &spec.json_path)
}

/// Argo's `parseResponse`: JSON ⇒ first JSONPath match; anything else ⇒ the body as a string.
pub fn parse_body(body: &[u8], json_path: &str) -> Result<Outcome, ProviderError> {
    let Ok(data) = serde_json::from_slice::<serde_json::Value>(body) else {
        let text = String::from_utf8_lossy(body).into_owned();
        return Ok(Outcome::Value {
            value: Value::String(text.clone()),
            text,
        });
    };
    let matches = jsonpath::find(json_path, &data)
        .map_err(|e| ProviderError::Response(format!("Could not find JSONPath in body: {e}")))?;
    let first = matches.first().ok_or_else(|| {
        ProviderError::Response("result of web metric produced no value".to_owned())
    })?;
    Ok(Outcome::Value {
        value: Value::from_json(first),
        text: first.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_as_argo_reads_them() {
        let out = parse_body(br#"{"data": {"ok": true, "rate": 0.5}}"#, "{$.data.rate}").unwrap();
        assert_eq!(
            out,
            Outcome::Value {
                value: Value::Float(0.5),
                text: "0.5".into()
            }
        );
        let out = parse_body(br#"{"data": {"ok": true}}"#, "").unwrap();
        let Outcome::Value { text, .. } = out else {
            panic!()
        };
        assert_eq!(text, r#"{"data":{"ok":true}}"#);
        let out = parse_body(b"OK", "{$.x}").unwrap();
        assert_eq!(
            out,
            Outcome::Value {
                value: Value::String("OK".into()),
                text: "OK".into()
            }
        );
        let err = parse_body(br#"{"a": 1}"#, "{$.b}").unwrap_err().to_string();
        assert_eq!(err, "Could not find JSONPath in body: b is not found");
    }
}
