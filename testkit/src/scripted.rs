//! Scripted HTTP servers on loopback for the providers' tests: each answers with a handler
//! and records every request it saw. Raw HTTP/1.1 on purpose, so a test sees exactly the
//! method, target, headers and body a provider sent.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use plover_wire::stats::{RevisionStats, StatsResponse};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpListener,
};

/// What the server saw of one request.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub method: String,
    pub target: String,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// Answers a request with (status, content type, body).
pub type Handler = Arc<dyn Fn(&Seen) -> (u16, &'static str, String) + Send + Sync>;

/// Serves `handler` on a loopback port until the test's runtime ends; records every request.
pub async fn serve(handler: Handler) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_on(listener, handler, None).await
}

/// [`serve`] on a given loopback port (a receiver that comes up late, at an address already
/// handed out).
pub async fn serve_at(port: u16, handler: Handler) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    serve_on(listener, handler, None).await
}

/// [`serve`] over https with `identity`'s certificate (see [`TestCa`]); the URL names
/// `localhost`.
pub async fn serve_https(
    handler: Handler,
    identity: &ServerIdentity,
) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_on(listener, handler, Some(identity.acceptor())).await
}

async fn serve_on(
    listener: TcpListener,
    handler: Handler,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let port = listener.local_addr().unwrap().port();
    let url = match tls {
        Some(_) => format!("https://localhost:{port}"),
        None => format!("http://127.0.0.1:{port}"),
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let (handler, log, tls) = (handler.clone(), log.clone(), tls.clone());
            tokio::spawn(async move {
                match tls {
                    // A client that refuses the certificate ends the handshake: nothing to log.
                    Some(tls) => {
                        if let Ok(stream) = tls.accept(socket).await {
                            answer(stream, handler, log).await;
                        }
                    }
                    None => answer(socket, handler, log).await,
                }
            });
        }
    });
    (url, seen)
}

/// Reads one request from `socket`, logs it and answers with `handler`.
async fn answer(
    mut socket: impl AsyncRead + AsyncWrite + Unpin,
    handler: Handler,
    log: Arc<Mutex<Vec<Seen>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        let n = socket.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or_default().split(' ');
    let mut request = Seen {
        method: first.next().unwrap_or_default().to_owned(),
        target: first.next().unwrap_or_default().to_owned(),
        ..Default::default()
    };
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            request
                .headers
                .push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let length: usize = request
        .headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < header_end + length {
        let n = socket.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    request.body = String::from_utf8_lossy(&buf[header_end..]).into_owned();
    let (status, content_type, body) = handler(&request);
    log.lock().unwrap().push(request);
    let answer = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.write_all(answer.as_bytes()).await;
    let _ = socket.shutdown().await;
}

/// A certificate authority made for one test, and what it signs.
pub struct TestCa {
    /// The CA certificate, PEM: what a client is told to trust (`--ca-file`).
    pub ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A server certificate (for `localhost` and 127.0.0.1) and its key.
pub struct ServerIdentity {
    certificate: rustls_pki::CertificateDer<'static>,
    key: Vec<u8>,
}

use tokio_rustls::rustls::pki_types as rustls_pki;

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        TestCa {
            ca_pem: certificate.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Signs a certificate for `localhost` and 127.0.0.1.
    pub fn server(&self) -> ServerIdentity {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        ServerIdentity {
            certificate: certificate.der().clone(),
            key: key.serialize_der(),
        }
    }
}

impl ServerIdentity {
    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![self.certificate.clone()],
                rustls_pki::PrivateKeyDer::Pkcs8(self.key.clone().into()),
            )
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

/// A `/v1/stats` answer for bookinfo/reviews over 30 s: stable v1 900 requests (1 error),
/// canary v2 100 requests (3 errors, success ratio 0.97, traffic share 0.1).
pub const REVIEWS_STATS: &str = r#"{
  "namespace": "bookinfo", "service": "reviews", "window_seconds": 30, "as_of_unix_ms": 1700000000000,
  "revisions": [
    {"revision": "reviews-v1", "role": "stable", "requests": 900, "errors": 1, "success_ratio": 0.99889,
     "request_rate": 30.0, "traffic_share": 0.9, "by_status_class": {"2xx": 899, "5xx": 1}, "latency_samples": 900,
     "latency_seconds": {"p50": 0.01, "p90": 0.02, "p95": 0.03, "p99": 0.05, "p999": 0.09, "max": 0.1, "mean": 0.012},
     "histogram_v2_base64": ""},
    {"revision": "reviews-v2", "role": "canary", "requests": 100, "errors": 3, "success_ratio": 0.97,
     "request_rate": 3.3, "traffic_share": 0.1, "by_status_class": {"2xx": 97, "5xx": 3}, "latency_samples": 100,
     "latency_seconds": {"p50": 0.012, "p90": 0.025, "p95": 0.04, "p99": 0.25, "p999": null, "max": 0.3, "mean": 0.015},
     "histogram_v2_base64": ""}
  ]
}"#;

/// An exporter on the real clock: per second, the canary serves `canary` (requests, errors)
/// and stable `stable`; `/v1/stats` answers the asked whole seconds ending at the last complete
/// second, as the exporter does (`as_of_unix_ms`, `window_seconds`).
pub fn steady_exporter(canary: (u64, u64), stable: (u64, u64)) -> Handler {
    Arc::new(move |req: &Seen| {
        let window: u64 = req
            .target
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix("window="))
            .and_then(|w| w.strip_suffix('s'))
            .and_then(|w| w.parse().ok())
            .unwrap_or(0);
        if window == 0 {
            return (
                400,
                "text/plain",
                "window: expected whole seconds".to_owned(),
            );
        }
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let revision = |name: &str, role: &str, (n, x): (u64, u64)| RevisionStats {
            revision: name.into(),
            role: role.into(),
            requests: n * window,
            errors: x * window,
            ..Default::default()
        };
        let body = serde_json::to_string(&StatsResponse {
            namespace: "bookinfo".into(),
            service: "reviews".into(),
            window_seconds: window,
            as_of_unix_ms: now_ms / 1000 * 1000,
            revisions: vec![
                revision("reviews-v2", "canary", canary),
                revision("reviews-v1", "stable", stable),
            ],
            lost_requests: 0,
            mirrored: Vec::new(),
        })
        .unwrap();
        (200, "application/json", body)
    })
}
