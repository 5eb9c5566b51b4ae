//! SigV4 signing of Prometheus queries to Amazon Managed Prometheus, as Argo does it: every
//! query to an address containing `aps-workspaces` is signed for the service `aps` in
//! `sigv4.region` (else `AWS_REGION`/`AWS_DEFAULT_REGION`), with the first credentials of the
//! standard chain:
//!
//! 1. `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`);
//! 2. a web identity (EKS IRSA, Pod Identity webhooks): `AWS_WEB_IDENTITY_TOKEN_FILE` and
//!    `AWS_ROLE_ARN`, exchanged with STS `AssumeRoleWithWebIdentity`;
//! 3. the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`),
//!    profile `sigv4.profile`, else `AWS_PROFILE`, else `default`.
//!
//! With `sigv4.roleArn`, those credentials assume the role (STS `AssumeRole`, itself signed).
//! STS is `https://sts.<region>.amazonaws.com` unless `AWS_ENDPOINT_URL_STS` (or
//! `AWS_ENDPOINT_URL`) says otherwise, as in the AWS SDKs. Temporary credentials are kept until
//! five minutes before they expire. The signature itself is computed by AWS's `aws-sigv4`
//! crate. Not read: EC2 instance metadata and ECS container credentials.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;

use super::{error_chain, prometheus::form_encode, ProviderError};
use crate::template::Sigv4;

/// Temporary credentials are renewed this long before they expire.
const RENEW_BEFORE: Duration = Duration::from_secs(300);

/// Credentials already obtained, by (region, profile, role).
#[derive(Debug, Default)]
pub(crate) struct CredentialCache {
    entries: Mutex<HashMap<(String, String, String), Credentials>>,
}

fn config_error(message: impl Into<String>) -> ProviderError {
    ProviderError::Config(format!("sigv4: {}", message.into()))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The region a metric signs for.
fn region(spec: &Sigv4) -> Result<String, ProviderError> {
    if !spec.region.is_empty() {
        return Ok(spec.region.clone());
    }
    env("AWS_REGION")
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .ok_or_else(|| config_error("no region: set authentication.sigv4.region, or AWS_REGION"))
}

/// Signs `request` (its method, URL, headers and body) for `aps`, adding the `authorization`,
/// `x-amz-date`, `x-amz-content-sha256` and (temporary credentials) `x-amz-security-token`
/// headers.
pub(crate) async fn sign_request(
    client: &reqwest::Client,
    cache: &CredentialCache,
    spec: &Sigv4,
    request: &mut reqwest::Request,
) -> Result<(), ProviderError> {
    let region = region(spec)?;
    let credentials = credentials(client, cache, spec, &region).await?;
    sign_with(&credentials, &region, "aps", request, SystemTime::now())
}

fn sign_with(
    credentials: &Credentials,
    region: &str,
    service: &str,
    request: &mut reqwest::Request,
    time: SystemTime,
) -> Result<(), ProviderError> {
    let identity = credentials.clone().into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = aws_sigv4::http_request::PayloadChecksumKind::XAmzSha256;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| config_error(e.to_string()))?
        .into();
    let body = request
        .body()
        .and_then(|b| b.as_bytes())
        .unwrap_or_default()
        .to_vec();
    let url = request.url().to_string();
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let signable = SignableRequest::new(
        request.method().as_str(),
        &url,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(&body),
    )
    .map_err(|e| config_error(format!("cannot sign the request: {e}")))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| config_error(format!("cannot sign the request: {e}")))?
        .into_parts();
    for (name, value) in instructions.headers() {
        let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(name.as_bytes()),
            reqwest::header::HeaderValue::from_str(value),
        ) else {
            return Err(config_error("the signature is not a valid header"));
        };
        request.headers_mut().insert(name, value);
    }
    Ok(())
}

/// The first credentials of the chain, after `roleArn` if set; cached while valid.
async fn credentials(
    client: &reqwest::Client,
    cache: &CredentialCache,
    spec: &Sigv4,
    region: &str,
) -> Result<Credentials, ProviderError> {
    let key = (
        region.to_owned(),
        spec.profile.clone(),
        spec.role_arn.clone(),
    );
    let still_valid = |c: &Credentials| {
        c.expiry()
            .is_none_or(|expiry| SystemTime::now() + RENEW_BEFORE < expiry)
    };
    if let Some(c) = cache
        .entries
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .filter(|c| still_valid(c))
    {
        return Ok(c.clone());
    }
    let base = base_credentials(client, spec, region).await?;
    let credentials = if spec.role_arn.is_empty() {
        base
    } else {
        assume_role(client, &base, &spec.role_arn, region).await?
    };
    cache
        .entries
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, credentials.clone());
    Ok(credentials)
}

async fn base_credentials(
    client: &reqwest::Client,
    spec: &Sigv4,
    region: &str,
) -> Result<Credentials, ProviderError> {
    if let (Some(id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return Ok(Credentials::new(
            id,
            secret,
            env("AWS_SESSION_TOKEN"),
            None,
            "environment",
        ));
    }
    if let (Some(token_file), Some(role)) =
        (env("AWS_WEB_IDENTITY_TOKEN_FILE"), env("AWS_ROLE_ARN"))
    {
        let token = std::fs::read_to_string(&token_file)
            .map_err(|e| config_error(format!("AWS_WEB_IDENTITY_TOKEN_FILE {token_file}: {e}")))?;
        let session = env("AWS_ROLE_SESSION_NAME").unwrap_or_else(|| "plover".to_owned());
        let form = [
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", role.as_str()),
            ("RoleSessionName", session.as_str()),
            ("WebIdentityToken", token.trim()),
        ];
        let request = client
            .post(sts_endpoint(region))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_encode(&form))
            .build()
            .map_err(|e| config_error(error_chain(&e)))?;
        return sts_call(client, request, "AssumeRoleWithWebIdentity").await;
    }
    let profile = if spec.profile.is_empty() {
        env("AWS_PROFILE").unwrap_or_else(|| "default".to_owned())
    } else {
        spec.profile.clone()
    };
    let path = env("AWS_SHARED_CREDENTIALS_FILE")
        .or_else(|| env("HOME").map(|home| format!("{home}/.aws/credentials")));
    let Some(path) = path else {
        return Err(no_credentials(&profile));
    };
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Err(no_credentials(&profile));
    };
    let values = ini_section(&text, &profile);
    match (
        values.get("aws_access_key_id"),
        values.get("aws_secret_access_key"),
    ) {
        (Some(id), Some(secret)) => Ok(Credentials::new(
            id.clone(),
            secret.clone(),
            values.get("aws_session_token").cloned(),
            None,
            "profile",
        )),
        _ => Err(no_credentials(&profile)),
    }
}

fn no_credentials(profile: &str) -> ProviderError {
    config_error(format!(
        "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a web identity \
         (AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN), or profile {profile:?} in the shared \
         credentials file"
    ))
}

/// `key = value` lines of one `[section]` of an INI file.
fn ini_section(text: &str, section: &str) -> HashMap<String, String> {
    let mut values = HashMap::new();
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') && line.ends_with(']') {
            inside = line[1..line.len() - 1].trim() == section;
        } else if inside {
            if let Some((key, value)) = line.split_once('=') {
                values.insert(key.trim().to_owned(), value.trim().to_owned());
            }
        }
    }
    values
}

fn sts_endpoint(region: &str) -> String {
    env("AWS_ENDPOINT_URL_STS")
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"))
}

/// STS `AssumeRole` with `base`'s credentials (the request is signed for `sts`).
async fn assume_role(
    client: &reqwest::Client,
    base: &Credentials,
    role: &str,
    region: &str,
) -> Result<Credentials, ProviderError> {
    let form = [
        ("Action", "AssumeRole"),
        ("Version", "2011-06-15"),
        ("RoleArn", role),
        ("RoleSessionName", "plover"),
    ];
    let mut request = client
        .post(sts_endpoint(region))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_encode(&form))
        .build()
        .map_err(|e| config_error(error_chain(&e)))?;
    sign_with(base, region, "sts", &mut request, SystemTime::now())?;
    sts_call(client, request, "AssumeRole").await
}

/// Sends an STS request and reads the credentials of its XML answer.
async fn sts_call(
    client: &reqwest::Client,
    request: reqwest::Request,
    action: &str,
) -> Result<Credentials, ProviderError> {
    let url = request.url().to_string();
    let response = client.execute(request).await.map_err(|e| {
        ProviderError::Transport(format!("sigv4: STS {action} at {url}: {}", error_chain(&e)))
    })?;
    let status = response.status();
    let text = response.text().await.map_err(|e| {
        ProviderError::Transport(format!("sigv4: STS {action}: {}", error_chain(&e)))
    })?;
    let field = |name: &str| -> Option<String> {
        let start = text.find(&format!("<{name}>"))? + name.len() + 2;
        let end = start + text[start..].find(&format!("</{name}>"))?;
        Some(text[start..end].trim().to_owned())
    };
    if !status.is_success() {
        return Err(ProviderError::Response(format!(
            "sigv4: STS {action} answered {status}: {}",
            field("Message").unwrap_or_else(|| text.trim().to_owned())
        )));
    }
    let (Some(id), Some(secret)) = (field("AccessKeyId"), field("SecretAccessKey")) else {
        return Err(ProviderError::Response(format!(
            "sigv4: STS {action} answered without credentials"
        )));
    };
    let expiry = field("Expiration").and_then(|e| parse_utc(&e));
    Ok(Credentials::new(
        id,
        secret,
        field("SessionToken"),
        expiry,
        "sts",
    ))
}

/// `2026-12-03T15:04:05Z` (STS's `Expiration`; fractions of a second ignored) as a time.
fn parse_utc(text: &str) -> Option<SystemTime> {
    let text = text.trim().strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (date.next()??, date.next()??, date.next()??);
    let time = time.split('.').next()?;
    let mut time = time.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (time.next()??, time.next()??, time.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days
        .checked_mul(86_400)?
        .checked_add(hh * 3600 + mm * 60 + ss)?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sts_expirations_parse() {
        assert_eq!(
            parse_utc("2026-12-03T15:04:05Z"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_310_245))
        );
        assert_eq!(
            parse_utc("1970-01-01T00:00:00.123Z"),
            Some(SystemTime::UNIX_EPOCH)
        );
        assert_eq!(parse_utc("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_utc("yesterday"), None);
    }

    #[test]
    fn profiles_are_read_from_their_section() {
        let text = "[default]\naws_access_key_id = A\n\n[team]\naws_access_key_id=B\naws_secret_access_key = S\n";
        assert_eq!(
            ini_section(text, "team")
                .get("aws_access_key_id")
                .map(String::as_str),
            Some("B")
        );
        assert_eq!(ini_section(text, "default").len(), 1);
        assert!(ini_section(text, "other").is_empty());
    }

    /// AWS's documented example (the IAM `ListUsers` request of the SigV4 guide's
    /// "get-vanilla" style): same inputs, same signature every time.
    #[test]
    fn signing_adds_the_aws_headers() {
        let credentials = Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "test",
        );
        crate::provider::install_tls_provider();
        let client = reqwest::Client::new();
        let mut request = client
            .post("https://aps-workspaces.us-east-1.amazonaws.com/workspaces/ws-1/api/v1/query")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("query=up")
            .build()
            .unwrap();
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160); // 20150830T123600Z
        sign_with(&credentials, "us-east-1", "aps", &mut request, time).unwrap();
        let header = |n: &str| {
            request
                .headers()
                .get(n)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(header("x-amz-date"), "20150830T123600Z");
        let authorization = header("authorization");
        assert!(
            authorization.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/aps/aws4_request, SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date, Signature="
            ),
            "{authorization}"
        );
    }
}
