//! `plover analyze` against Amazon Managed Prometheus stand-ins on loopback: every query to an
//! `aps-workspaces` address is signed with SigV4, which a verifier written here from AWS's
//! documentation (with `ring`, not the signer's crate) checks before it answers; credentials
//! come from each link of the standard chain (environment, web identity, shared profile), and
//! `roleArn` goes through an STS stand-in that checks its own signed `AssumeRole` call.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use plover_testkit::scripted::{serve, Seen};
use ring::{digest, hmac};

const REGION: &str = "us-west-2";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

fn hmac_sha256(key: &[u8], data: &str) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
        .as_ref()
        .to_vec()
}

/// A request as the server received it, and what its signature covers.
struct Received<'a> {
    method: &'a str,
    target: &'a str,
    headers: &'a BTreeMap<String, String>,
    signed: &'a [&'a str],
    payload_hash: &'a str,
    amz_date: &'a str,
}

/// The signature AWS's SigV4 documentation defines for `request`, with `secret` in `scope`
/// (date, region, service).
fn expected_signature(request: &Received, secret: &str, scope: (&str, &str, &str)) -> String {
    let Received {
        method,
        target,
        headers,
        signed,
        payload_hash,
        amz_date,
    } = *request;
    let (date, region, service) = scope;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut pairs: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    pairs.sort_unstable();
    let canonical_headers: String = signed
        .iter()
        .map(|h| format!("{h}:{}\n", headers[*h].trim()))
        .collect();
    let canonical_request = format!(
        "{method}\n{path}\n{}\n{canonical_headers}\n{}\n{payload_hash}",
        pairs.join("&"),
        signed.join(";")
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/{service}/aws4_request\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), date);
    let k_region = hmac_sha256(&k_date, region);
    let k_service = hmac_sha256(&k_region, service);
    let k_signing = hmac_sha256(&k_service, "aws4_request");
    hex(&hmac_sha256(&k_signing, &string_to_sign))
}

/// Checks `seen`'s SigV4 signature for `service` with the secret of the access key it names
/// (`secrets`); returns that key.
fn verify(seen: &Seen, service: &str, secrets: &[(&str, &str)]) -> Result<String, String> {
    let headers: BTreeMap<String, String> = seen.headers.iter().cloned().collect();
    let authorization = headers
        .get("authorization")
        .ok_or("no authorization header")?;
    let rest = authorization
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("not AWS4-HMAC-SHA256")?;
    let mut fields = BTreeMap::new();
    for part in rest.split(", ") {
        let (k, v) = part.split_once('=').ok_or("malformed authorization")?;
        fields.insert(k, v);
    }
    let credential: Vec<&str> = fields["Credential"].split('/').collect();
    let [key, date, region, scope_service, "aws4_request"] = credential[..] else {
        return Err(format!("bad credential scope {credential:?}"));
    };
    if region != REGION || scope_service != service {
        return Err(format!("scope {region}/{scope_service}"));
    }
    let secret = secrets
        .iter()
        .find(|(k, _)| *k == key)
        .ok_or(format!("unknown access key {key}"))?
        .1;
    let payload_hash = sha256_hex(seen.body.as_bytes());
    if headers.get("x-amz-content-sha256") != Some(&payload_hash) {
        return Err("x-amz-content-sha256 is not the body's hash".into());
    }
    let amz_date = &headers["x-amz-date"];
    if !amz_date.starts_with(date) {
        return Err("x-amz-date is not the scope's date".into());
    }
    let signed: Vec<&str> = fields["SignedHeaders"].split(';').collect();
    for required in ["host", "x-amz-date"] {
        if !signed.contains(&required) {
            return Err(format!("{required} is not signed"));
        }
    }
    let request = Received {
        method: &seen.method,
        target: &seen.target,
        headers: &headers,
        signed: &signed,
        payload_hash: &payload_hash,
        amz_date,
    };
    let expected = expected_signature(&request, secret, (date, region, service));
    if fields["Signature"] != expected {
        return Err("signature mismatch".into());
    }
    Ok(key.to_owned())
}

/// The verifier is AWS's: the documented `get-vanilla` example gives the documented signature.
#[test]
fn the_verifier_reproduces_aws_documented_signature() {
    let headers: BTreeMap<String, String> = [
        ("host".to_owned(), "example.amazonaws.com".to_owned()),
        ("x-amz-date".to_owned(), "20150830T123600Z".to_owned()),
    ]
    .into();
    let request = Received {
        method: "GET",
        target: "/",
        headers: &headers,
        signed: &["host", "x-amz-date"],
        payload_hash: &sha256_hex(b""),
        amz_date: "20150830T123600Z",
    };
    assert_eq!(
        expected_signature(
            &request,
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            ("20150830", "us-east-1", "service"),
        ),
        "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    );
}

const VECTOR: &str = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000,"0.999"]}]}}"#;

/// STS: `AssumeRole` signed with the base key, or `AssumeRoleWithWebIdentity` with the token;
/// both answer the temporary key `ASIATEMP`.
fn sts() -> plover_testkit::scripted::Handler {
    Arc::new(|seen: &Seen| {
        let form = &seen.body;
        let ok = if form.contains("Action=AssumeRoleWithWebIdentity") {
            form.contains("WebIdentityToken=eyJ.web.token")
                && form.contains("RoleArn=arn%3Aaws%3Aiam%3A%3A111122223333%3Arole%2Firsa")
        } else {
            form.contains("Action=AssumeRole")
                && form.contains("RoleArn=arn%3Aaws%3Aiam%3A%3A111122223333%3Arole%2Famp-query")
                && verify(seen, "sts", &[("AKIDBASE", "base-secret")]).is_ok()
        };
        if !ok {
            return (403, "text/xml", "<ErrorResponse><Error><Message>denied by the test STS</Message></Error></ErrorResponse>".to_owned());
        }
        (
            200,
            "text/xml",
            "<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>ASIATEMP</AccessKeyId><SecretAccessKey>temp-secret</SecretAccessKey><SessionToken>temp-token</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration></Credentials></AssumeRoleResult></AssumeRoleResponse>".to_owned(),
        )
    })
}

/// AMP: answers the query only when signed by a known key (temporary keys with their token).
fn amp() -> plover_testkit::scripted::Handler {
    Arc::new(|seen: &Seen| {
        if seen.target == "/" {
            return (404, "text/plain", "not found".to_owned()); // plover analyze's reachability check
        }
        match verify(
            seen,
            "aps",
            &[
                ("AKIDBASE", "base-secret"),
                ("AKIDPROFILE", "profile-secret"),
                ("ASIATEMP", "temp-secret"),
            ],
        ) {
            Ok(key)
                if !key.starts_with("ASIA")
                    || seen
                        .headers
                        .contains(&("x-amz-security-token".into(), "temp-token".into())) =>
            {
                (200, "application/json", VECTOR.to_owned())
            }
            Ok(_) => (
                403,
                "application/json",
                r#"{"message":"missing security token"}"#.to_owned(),
            ),
            Err(why) => (403, "application/json", format!(r#"{{"message":"{why}"}}"#)),
        }
    })
}

fn template(dir: &Path, address: &str, sigv4: &str) -> std::path::PathBuf {
    let file = dir.join("amp.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {{name: amp}}\nspec:\n  metrics:\n  - name: success-rate\n    successCondition: result[0] >= 0.95\n    provider:\n      prometheus:\n        address: {address}\n        query: sum(rate(up[1m]))\n        authentication:\n          sigv4: {sigv4}\n"
        ),
    )
    .unwrap();
    file
}

async fn analyze(file: &Path, home: &Path, env: &[(&str, String)]) -> Output {
    let (file, home) = (file.to_owned(), home.to_owned());
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_plover"));
        // Errors are retried as in Argo (5 × 10 s): scaled down for the failing cases.
        command
            .arg("analyze")
            .arg("-f")
            .arg(file)
            .args(["--time-scale", "0.01"]);
        for (name, _) in std::env::vars() {
            if name.starts_with("AWS_") {
                command.env_remove(name);
            }
        }
        command.env("HOME", home).envs(env);
        command.output().unwrap()
    })
    .await
    .unwrap()
}

fn outcome(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The run ended Successful (exit 0); its output.
fn succeeded(out: &Output) -> String {
    let text = outcome(out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    text
}

/// Whether the STS stand-in saw a call of `action`.
fn sts_called(seen: &std::sync::Mutex<Vec<Seen>>, action: &str) -> bool {
    let action = format!("Action={action}&");
    seen.lock()
        .unwrap()
        .iter()
        .any(|s| s.body.contains(&action))
}

#[tokio::test]
async fn queries_to_amazon_managed_prometheus_are_signed_with_each_kind_of_credentials() {
    let (amp_url, amp_seen) = serve(amp()).await;
    let (sts_url, sts_seen) = serve(sts()).await;
    let address = format!("{amp_url}/aps-workspaces/workspaces/ws-1");
    let dir = tempfile::tempdir().unwrap();
    let sts_env = ("AWS_ENDPOINT_URL_STS", sts_url.clone());

    // 1. Keys from the environment, signing directly.
    let plain = template(dir.path(), &address, &format!("{{region: {REGION}}}"));
    let keys = [
        ("AWS_ACCESS_KEY_ID", "AKIDBASE".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "base-secret".to_owned()),
    ];
    let out = analyze(&plain, dir.path(), &keys).await;
    let text = succeeded(&out);
    assert!(text.contains("value=[0.999]  Successful"), "{text}");
    // A wrong secret: the verifier refuses, the measurement is an Error saying why.
    let wrong = [
        ("AWS_ACCESS_KEY_ID", "AKIDBASE".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "not-the-secret".to_owned()),
    ];
    let text = outcome(&analyze(&plain, dir.path(), &wrong).await);
    assert!(
        text.contains("signature mismatch") && text.contains("Error"),
        "{text}"
    );

    // 2. The same keys assuming `roleArn` through STS; the query is signed with the role's.
    let role = template(
        dir.path(),
        &address,
        &format!("{{region: {REGION}, roleArn: 'arn:aws:iam::111122223333:role/amp-query'}}"),
    );
    let out = analyze(
        &role,
        dir.path(),
        &[keys[0].clone(), keys[1].clone(), sts_env.clone()],
    )
    .await;
    succeeded(&out);
    assert!(sts_called(&sts_seen, "AssumeRole"));

    // 3. A web identity (EKS IRSA), no keys; the region from AWS_REGION.
    let token = dir.path().join("token");
    std::fs::write(&token, "eyJ.web.token\n").unwrap();
    let irsa = template(dir.path(), &address, "{}");
    let out = analyze(
        &irsa,
        dir.path(),
        &[
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token.display().to_string()),
            (
                "AWS_ROLE_ARN",
                "arn:aws:iam::111122223333:role/irsa".to_owned(),
            ),
            ("AWS_REGION", REGION.to_owned()),
            sts_env.clone(),
        ],
    )
    .await;
    succeeded(&out);
    assert!(sts_called(&sts_seen, "AssumeRoleWithWebIdentity"));

    // 4. A profile of the shared credentials file.
    let credentials = dir.path().join("credentials");
    std::fs::write(
        &credentials,
        "[default]\naws_access_key_id = AKIDNOPE\naws_secret_access_key = nope\n\n[team]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = profile-secret\n",
    )
    .unwrap();
    let profile = template(
        dir.path(),
        &address,
        &format!("{{region: {REGION}, profile: team}}"),
    );
    let out = analyze(
        &profile,
        dir.path(),
        &[(
            "AWS_SHARED_CREDENTIALS_FILE",
            credentials.display().to_string(),
        )],
    )
    .await;
    succeeded(&out);

    // No credentials at all: said before anything is sent.
    let text = outcome(&analyze(&plain, dir.path(), &[]).await);
    assert!(text.contains("sigv4: no AWS credentials"), "{text}");

    // Every query that reached the stand-in was signed (the reachability check aside).
    let queries: Vec<Seen> = amp_seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.target != "/")
        .cloned()
        .collect();
    assert!(queries.len() >= 5, "{}", queries.len());
    assert!(queries
        .iter()
        .all(|s| s.headers.iter().any(|(k, _)| k == "authorization")));
}
