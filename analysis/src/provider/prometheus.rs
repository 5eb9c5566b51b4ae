//! `provider.prometheus`: an instant query, shaped as Argo shapes it (scalar ⇒ number,
//! vector ⇒ list of numbers in response order, matrix ⇒ one flat list).

use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::{error_chain, Outcome, ProviderError, Providers};
use crate::{
    template::PrometheusSpec,
    value::{format_float, Value},
};

/// Argo's default query timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why this metric cannot be measured by this build, if so.
pub fn unsupported(spec: &PrometheusSpec) -> Option<String> {
    if spec.range_query.is_some() {
        return Some("rangeQuery is not supported by Plover yet; use an instant query (e.g. with a [range] selector)".to_owned());
    }
    if !spec.authentication.oauth2.token_url.is_empty() {
        return Some("OAuth2 authentication is not supported by Plover yet".to_owned());
    }
    None
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiResponse {
    status: String,
    #[serde(default)]
    data: Option<ApiData>,
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiData {
    result_type: String,
    result: serde_json::Value,
}

/// `[unix_seconds, "value"]`.
fn sample_value(pair: &serde_json::Value) -> Result<f64, ProviderError> {
    let text = pair.get(1).and_then(|v| v.as_str()).ok_or_else(|| {
        ProviderError::Response("malformed sample in Prometheus response".to_owned())
    })?;
    match text {
        "NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        t => t
            .parse()
            .map_err(|_| ProviderError::Response(format!("malformed sample value {t:?}"))),
    }
}

fn list(values: Vec<f64>) -> Outcome {
    let text = format!(
        "[{}]",
        values
            .iter()
            .map(|v| format_float(*v))
            .collect::<Vec<_>>()
            .join(",")
    );
    Outcome::Value {
        value: Value::List(values.into_iter().map(Value::Float).collect()),
        text,
    }
}

/// Turns the `data` of a query answer into the value the conditions see.
pub fn shape(result_type: &str, result: &serde_json::Value) -> Result<Outcome, ProviderError> {
    let items = || result.as_array().cloned().unwrap_or_default();
    match result_type {
        "scalar" => {
            let v = sample_value(result)?;
            Ok(Outcome::Value {
                value: Value::Float(v),
                text: format_float(v),
            })
        }
        "vector" => Ok(list(
            items()
                .iter()
                .map(|s| sample_value(&s["value"]))
                .collect::<Result<_, _>>()?,
        )),
        "matrix" => {
            let mut values = Vec::new();
            for series in items() {
                for pair in series["values"].as_array().cloned().unwrap_or_default() {
                    values.push(sample_value(&pair)?);
                }
            }
            Ok(list(values))
        }
        _ => Err(ProviderError::Response(
            "Prometheus metric type not supported".to_owned(),
        )),
    }
}

/// Minimal `application/x-www-form-urlencoded` encoding.
pub(super) fn form_encode(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        let mut out = String::new();
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

pub(super) async fn query(
    providers: &Providers,
    spec: &PrometheusSpec,
) -> Result<Outcome, ProviderError> {
    if let Some(t) = spec.timeout {
        if t < 0 {
            return Err(ProviderError::Config(
                "prometheus timeout should not be negative".to_owned(),
            ));
        }
    }
    let address = providers
        .prometheus_address(spec)
        .ok_or_else(|| ProviderError::Config("prometheus address is not configured".to_owned()))?;
    if let Some(reason) = unsupported(spec) {
        return Err(ProviderError::Unsupported {
            provider: "prometheus".to_owned(),
            reason,
        });
    }
    let url = reqwest::Url::parse(&address)
        .ok()
        .filter(|u| u.has_host())
        .ok_or_else(|| {
            ProviderError::Config("prometheus address is not is url format".to_owned())
        })?;
    let endpoint = format!("{}/api/v1/query", url.as_str().trim_end_matches('/'));
    let client = providers.client_for(&endpoint, spec.insecure)?;
    let timeout = spec
        .timeout
        .filter(|t| *t > 0)
        .map_or(DEFAULT_TIMEOUT, |t| Duration::from_secs(t as u64));
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let mut request = client
        .post(&endpoint)
        .timeout(timeout)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form_encode(&[
            ("query", &spec.query),
            ("time", &format!("{now:.3}")),
        ]));
    for h in &spec.headers {
        request = request.header(&h.key, &h.value);
    }
    let basic = &spec.authentication.basic_auth;
    if !basic.username.is_empty() || !basic.password.is_empty() {
        if basic.username.is_empty() {
            return Err(ProviderError::Config(
                "missing mandatory parameter in metric for basic auth setup: username".to_owned(),
            ));
        }
        if basic.password.is_empty() {
            return Err(ProviderError::Config(
                "missing mandatory parameter in metric for basic auth setup: password".to_owned(),
            ));
        }
        request = request.basic_auth(&basic.username, Some(&basic.password));
    }
    let mut request = request
        .build()
        .map_err(|e| ProviderError::Config(format!("Post \"{endpoint}\": {}", error_chain(&e))))?;
    if spec.needs_sigv4(&address) {
        super::sigv4::sign_request(
            client,
            &providers.aws_credentials,
            &spec.authentication.sigv4,
            &mut request,
        )
        .await?;
    }
    let response = client.execute(request).await.map_err(|e| {
        ProviderError::Transport(format!("Post \"{endpoint}\": {}", error_chain(&e)))
    })?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| ProviderError::Transport(error_chain(&e)))?;
    let parsed: ApiResponse = serde_json::from_slice(&body).map_err(|_| {
        ProviderError::Response(format!(
            "server returned HTTP status {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ))
    })?;
    if parsed.status != "success" {
        return Err(ProviderError::Response(format!(
            "{}: {}",
            parsed.error_type.unwrap_or_else(|| "error".to_owned()),
            parsed.error.unwrap_or_default()
        )));
    }
    let data = parsed
        .data
        .ok_or_else(|| ProviderError::Response("Prometheus answered without data".to_owned()))?;
    shape(&data.result_type, &data.result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_match_argo() {
        let scalar = serde_json::json!([1700000000.0, "0.98"]);
        assert_eq!(
            shape("scalar", &scalar).unwrap(),
            Outcome::Value {
                value: Value::Float(0.98),
                text: "0.98".into()
            }
        );
        let nan = serde_json::json!([1700000000.0, "NaN"]);
        let Outcome::Value {
            value: Value::Float(v),
            text,
        } = shape("scalar", &nan).unwrap()
        else {
            panic!()
        };
        assert!(v.is_nan());
        assert_eq!(text, "NaN");
        let vector = serde_json::json!([
            {"metric": {"a": "1"}, "value": [1.0, "10"]},
            {"metric": {"a": "2"}, "value": [1.0, "+Inf"]}
        ]);
        assert_eq!(
            shape("vector", &vector).unwrap(),
            Outcome::Value {
                value: Value::List(vec![Value::Float(10.0), Value::Float(f64::INFINITY)]),
                text: "[10,+Inf]".into()
            }
        );
        assert_eq!(
            shape("vector", &serde_json::json!([])).unwrap(),
            Outcome::Value {
                value: Value::List(vec![]),
                text: "[]".into()
            }
        );
        let matrix = serde_json::json!([{"metric": {}, "values": [[1.0, "1"], [2.0, "2"]]}, {"metric": {}, "values": [[1.0, "3"]]}]);
        assert_eq!(
            shape("matrix", &matrix).unwrap().clone(),
            list(vec![1.0, 2.0, 3.0])
        );
        assert_eq!(
            shape("string", &serde_json::json!([1.0, "x"]))
                .unwrap_err()
                .to_string(),
            "Prometheus metric type not supported"
        );
    }

    #[test]
    fn form_encoding() {
        assert_eq!(
            form_encode(&[("query", "sum(x{a=\"b\"}) / 2")]),
            "query=sum%28x%7Ba%3D%22b%22%7D%29+%2F+2"
        );
    }
}
