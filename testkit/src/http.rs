//! Small HTTP/1.1 pieces the harness shares: a server loop for loopback stand-ins and a
//! client that drives load through Envoy and tallies what came back.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use plover_wire::Histogram;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub type Body = Full<Bytes>;

/// Serves HTTP/1.1 on `listener` with `handler` until `stop` turns true; then stops accepting
/// and closes open connections.
pub async fn serve<H, F>(listener: TcpListener, handler: H, mut stop: watch::Receiver<bool>)
where
    H: Fn(Request<Bytes>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let handler = Arc::new(handler);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
            _ = stop.changed() => return,
        };
        tokio::spawn(serve_connection(stream, handler.clone(), stop.clone()));
    }
}

/// Serves HTTP/1.1 on `listener` like [`serve`], but each connection on a thread and runtime of
/// its own, so `handler` may block (a backend holding a request for a precise delay) without
/// delaying other connections, and without handing the request to another thread and back.
/// Every hand-off is a wake-up, which costs tens of µs even on an idle machine.
pub fn serve_thread_per_connection<H, F>(
    listener: std::net::TcpListener,
    handler: H,
    stop: watch::Receiver<bool>,
    name: &str,
) where
    H: Fn(Request<Bytes>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let handler = Arc::new(handler);
    let name = name.to_owned();
    let accept_name = format!("{name}-accept");
    let on_current_thread = |future: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime of a loopback server thread")
            .block_on(future)
    };
    std::thread::Builder::new()
        .name(accept_name)
        .spawn(move || {
            on_current_thread(Box::pin(async move {
                listener
                    .set_nonblocking(true)
                    .expect("non-blocking loopback listener");
                let listener = TcpListener::from_std(listener).expect("loopback listener");
                let mut accept_stop = stop.clone();
                loop {
                    let stream = tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => stream,
                            Err(_) => continue,
                        },
                        _ = accept_stop.changed() => return,
                    };
                    let Ok(stream) = stream.into_std() else {
                        continue;
                    };
                    let (handler, stop) = (handler.clone(), stop.clone());
                    let spawned = std::thread::Builder::new()
                        .name(name.clone())
                        .spawn(move || {
                            on_current_thread(Box::pin(async move {
                                if let Ok(stream) = tokio::net::TcpStream::from_std(stream) {
                                    serve_connection(stream, handler, stop).await;
                                }
                            }))
                        });
                    if spawned.is_err() {
                        continue; // the connection is dropped; the client sees a reset
                    }
                }
            }))
        })
        .expect("start a loopback server thread");
}

/// Serves one connection until it closes or `stop` turns true.
async fn serve_connection<H, F>(
    stream: tokio::net::TcpStream,
    handler: Arc<H>,
    mut stop: watch::Receiver<bool>,
) where
    H: Fn(Request<Bytes>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let handler = handler.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            Ok::<_, Infallible>(handler(Request::from_parts(parts, body)).await)
        }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = conn => {}
        _ = stop.changed() => {}
    }
}

/// A response with `status`, `body` and extra headers.
pub fn respond(status: u16, body: impl Into<Bytes>, headers: &[(&str, &str)]) -> Response<Body> {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(body.into()))
        .expect("valid test response")
}

/// What a load run got back.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub sent: u64,
    /// Responses by status code; transport errors under code 0.
    pub by_status: BTreeMap<u16, u64>,
    /// Responses by the value of the tag header (empty string when absent).
    pub by_tag: BTreeMap<String, u64>,
    /// Responses whose tag header disagreed with the body (the revision that served).
    pub mismatched_tags: u64,
    /// Latency the client observed (µs), by the revision that answered (the body).
    pub latency_by_revision: BTreeMap<String, Histogram>,
}

impl LoadReport {
    pub fn failures(&self) -> u64 {
        self.by_status.get(&0).copied().unwrap_or(0)
    }
}

type Client =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http()
}

/// One GET; returns status, the value of `tag_header` and the body. Transport errors → status 0.
pub async fn get(client: &Client, url: &str, tag_header: &str) -> (u16, String, String) {
    let req = Request::get(url)
        .body(Body::default())
        .expect("valid request");
    match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let tag = resp
                .headers()
                .get(tag_header)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            (status, tag, String::from_utf8_lossy(&body).into_owned())
        }
        _ => (0, String::new(), String::new()),
    }
}

/// Sends `total` GETs to `url` over `concurrency` parallel connections and tallies them.
/// A tag matches when it ends with `/<body>` (backends answer with their revision id).
pub async fn load(url: &str, total: u64, concurrency: u64, tag_header: &str) -> LoadReport {
    let client = client();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, next, url, tag_header) = (
            client.clone(),
            next.clone(),
            url.to_owned(),
            tag_header.to_owned(),
        );
        workers.push(tokio::spawn(async move {
            let mut report = LoadReport::default();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                let started = std::time::Instant::now();
                let (status, tag, body) = get(&client, &url, &tag_header).await;
                if status != 0 {
                    let took = started.elapsed().as_micros() as u64;
                    report
                        .latency_by_revision
                        .entry(body.clone())
                        .or_default()
                        .record(took);
                }
                report.sent += 1;
                *report.by_status.entry(status).or_default() += 1;
                if status != 0 {
                    if !tag.is_empty() && !tag.ends_with(&format!("/{body}")) {
                        report.mismatched_tags += 1;
                    }
                    *report.by_tag.entry(tag).or_default() += 1;
                }
            }
            report
        }));
    }
    let mut total_report = LoadReport::default();
    for w in workers {
        let r = w.await.expect("load worker");
        total_report.sent += r.sent;
        total_report.mismatched_tags += r.mismatched_tags;
        for (k, v) in r.by_status {
            *total_report.by_status.entry(k).or_default() += v;
        }
        for (k, v) in r.by_tag {
            *total_report.by_tag.entry(k).or_default() += v;
        }
        for (k, v) in r.latency_by_revision {
            total_report
                .latency_by_revision
                .entry(k)
                .or_default()
                .merge(&v);
        }
    }
    total_report
}

/// A blocking HTTP/1.1 GET (Envoy's admin answers HTTP/1.0 with 426): status and body, the
/// body de-chunked. `None` when nothing answers within a few seconds.
pub fn blocking_get(address: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    blocking_request(address, &address.to_string(), path)
}

/// A blocking HTTP/1.1 GET of `path` with `Host: host`, sent to `address`.
pub fn blocking_request(
    address: std::net::SocketAddr,
    host: &str,
    path: &str,
) -> Option<(u16, String)> {
    blocking_request_with(address, host, path, &[])
}

/// The same with further request headers.
pub fn blocking_request_with(
    address: std::net::SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String)> {
    let stream =
        std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_millis(500))
            .ok()?;
    request_on(stream, host, path, headers)
}

/// A blocking HTTP/1.1 GET on a connected stream.
pub fn request_on(
    mut stream: std::net::TcpStream,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Some((
        status,
        if chunked {
            dechunk(body)?
        } else {
            body.to_owned()
        },
    ))
}

fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size + 2..)?;
    }
}

/// Status of a blocking GET of `http://IP:PORT/PATH`.
pub fn get_status(url: &str) -> Option<u16> {
    let (address, path) = split_url(url)?;
    blocking_get(address, path).map(|(status, _)| status)
}

/// Body of a blocking GET of `http://IP:PORT/PATH` that answered 200.
pub fn get_text(url: &str) -> Option<String> {
    let (address, path) = split_url(url)?;
    match blocking_get(address, path)? {
        (200, body) => Some(body),
        _ => None,
    }
}

fn split_url(url: &str) -> Option<(std::net::SocketAddr, &str)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    Some((
        authority.parse().ok()?,
        if path.is_empty() { "/" } else { path },
    ))
}
