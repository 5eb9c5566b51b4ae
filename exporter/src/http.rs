//! The HTTP server: one hyper HTTP/1.1 connection task per client, a router over a handful of
//! paths, a once-a-second housekeeping task, and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use plover_wire::batch::INGEST_PATH;
use plover_wire::batch::REFUSED_REQUESTS_HEADER;
use plover_wire::stats::STATS_PATH;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::ingest::{Ingest, IngestError};
use crate::metrics::{self, IngestMetrics, Registries};
use crate::stats::{self, StatsQuery};
use crate::store::{Applied, Store};

pub const METRICS_PATH: &str = "/metrics";
pub const HEALTHZ_PATH: &str = "/healthz";
pub const READYZ_PATH: &str = "/readyz";

/// OpenMetrics text, as prometheus-client writes it.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Prometheus protobuf: length-delimited `MetricFamily` messages (the only exposition that
/// carries native histograms).
const PROTOBUF: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// A client that opened a connection has this long to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Whole answers (`Full`) or `/metrics` written while sent (`StreamBody`).
type Body = http_body_util::Either<Full<Bytes>, crate::stream::StreamBody>;

fn full(bytes: Bytes) -> Body {
    http_body_util::Either::Left(Full::new(bytes))
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
}

/// Everything a request handler can reach.
#[derive(Debug)]
struct App {
    store: Arc<Mutex<Store>>,
    ingest: Ingest,
    ingest_metrics: IngestMetrics,
    registries: Registries,
    /// Longest window `/v1/stats` can answer.
    retained_seconds: u64,
    /// False once shutdown began, so that load balancers stop sending new work.
    ready: AtomicBool,
}

/// Current Unix time in milliseconds.
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Serves on `listener` until `shutdown` completes, then stops accepting, lets in-flight
/// requests (an ingest in particular) finish for up to `config.shutdown_timeout`, and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let store = Arc::new(Mutex::new(Store::new(config.store.clone())));
    let (registries, ingest_metrics) = metrics::registries(
        store.clone(),
        config.windows.clone(),
        config.series_per_code,
        config.native_histograms,
        unix_now_ms,
    );
    let app = Arc::new(App {
        ingest: Ingest::new(
            config.auth.clone(),
            config.max_batch_bytes,
            store.clone(),
            unix_now_ms,
        ),
        store: store.clone(),
        ingest_metrics,
        registries,
        retained_seconds: config.store.window_seconds,
        ready: AtomicBool::new(true),
    });
    info!(address = %listener.local_addr()?, windows = ?config.windows, max_series = config.store.max_series, max_revisions = config.store.max_revisions, "Listening.");

    let housekeeping = tokio::spawn(housekeeping(store));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);

    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    warn!(%error, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let service = service_fn(move |request| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(app.route(request).await) }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%peer, %error, "Connection ended with an error.");
            }
        });
    }

    app.ready.store(false, Ordering::SeqCst);
    drop(listener);
    info!("Shutting down: finishing in-flight requests.");
    if tokio::time::timeout(config.shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(timeout = ?config.shutdown_timeout, "Shutdown timed out; closing the remaining connections.");
    }
    housekeeping.abort();
    info!("Stopped.");
    Ok(())
}

/// Seals complete seconds and expires old data once a second.
async fn housekeeping(store: Arc<Mutex<Store>>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tick(unix_now_ms());
    }
}

impl App {
    async fn route(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let (method, path) = (request.method().clone(), request.uri().path().to_owned());
        match (&method, path.as_str()) {
            (&Method::POST, INGEST_PATH) => self.ingest(request).await,
            (&Method::GET, METRICS_PATH) => {
                let protobuf = request
                    .headers()
                    .get(ACCEPT)
                    .and_then(|accept| accept.to_str().ok())
                    .is_some_and(prefers_protobuf);
                self.metrics(protobuf).await
            }
            (&Method::GET, STATS_PATH) => self.stats(request.uri().query()),
            (&Method::GET, HEALTHZ_PATH) => text(StatusCode::OK, "ok\n"),
            (&Method::GET, READYZ_PATH) if self.ready.load(Ordering::SeqCst) => {
                text(StatusCode::OK, "ready\n")
            }
            (&Method::GET, READYZ_PATH) => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
            (_, INGEST_PATH) => not_allowed("POST"),
            (_, METRICS_PATH | STATS_PATH | HEALTHZ_PATH | READYZ_PATH) => not_allowed("GET"),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    async fn ingest(&self, request: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let result = self.ingest.handle(request).await;
        self.ingest_metrics.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Applied::Merged {
                series,
                series_folded,
                refused_requests,
            }) => {
                self.ingest_metrics.accepted();
                if series_folded > 0 {
                    debug!(
                        series,
                        series_folded, "Series folded into code other: --max-series reached."
                    );
                }
                let mut response = text(StatusCode::OK, "applied\n");
                if refused_requests > 0 {
                    warn!(
                        refused_requests,
                        "Requests of new revisions refused: --max-revisions reached."
                    );
                    // The filter counts them as dropped, so the loss is reported end to end.
                    response
                        .headers_mut()
                        .insert(REFUSED_REQUESTS_HEADER, HeaderValue::from(refused_requests));
                }
                response
            }
            Ok(Applied::Duplicate) => {
                self.ingest_metrics.duplicate();
                text(StatusCode::OK, "duplicate\n")
            }
            Err(error) => {
                self.ingest_metrics.rejected(error.reason());
                match &error {
                    IngestError::Unauthorized | IngestError::Body(_) => {
                        debug!(%error, "Batch refused.")
                    }
                    _ => warn!(%error, "Batch refused."),
                }
                let mut response = text(error.status(), &format!("{error}\n"));
                if matches!(error, IngestError::Unauthorized) {
                    response
                        .headers_mut()
                        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                }
                response
            }
        }
    }

    async fn metrics(self: Arc<Self>, protobuf: bool) -> Response<Body> {
        // The exposition is written on a blocking thread (off the threads serving ingest) and
        // sent while it is written, a chunk at a time: a scrape holds a few chunks (and a
        // protobuf one the part being built), not the whole exposition. A render that fails
        // midway ends the body early; the scraper then sees a truncated exposition and fails
        // the scrape, as it should.
        let (mut writer, body) = crate::stream::channel();
        tokio::task::spawn_blocking(move || {
            let rendered = if protobuf {
                self.registries.protobuf.encode(&mut writer)
            } else {
                prometheus_client::encoding::text::encode(&mut writer, &self.registries.text)
            };
            if rendered.and_then(|()| writer.finish()).is_err() {
                debug!("/metrics render stopped: the scraper left or encoding failed.");
            }
        });
        let mut response = Response::new(http_body_util::Either::Right(body));
        let content_type = if protobuf { PROTOBUF } else { OPENMETRICS };
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    }

    fn stats(&self, query: Option<&str>) -> Response<Body> {
        let query = match StatsQuery::parse(query, self.retained_seconds) {
            Ok(query) => query,
            Err(error) => return text(StatusCode::BAD_REQUEST, &format!("{error}\n")),
        };
        let answer = {
            let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
            stats::answer(&store, &query, unix_now_ms())
        };
        match serde_json::to_vec(&answer) {
            Ok(json) => {
                let mut response = Response::new(full(Bytes::from(json)));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                response
            }
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding the answer failed\n",
            ),
        }
    }
}

/// Whether an `Accept` header ranks the Prometheus protobuf exposition above every text one
/// (Prometheus sends the protobuf type first, at a higher `q`, when its native histograms
/// are enabled; a type without `q` has 1).
pub fn prefers_protobuf(accept: &str) -> bool {
    let (mut protobuf, mut text) = (None::<f64>, None::<f64>);
    for range in accept.split(',') {
        let mut parameters = range.split(';').map(str::trim);
        let media_type = parameters.next().unwrap_or("").to_ascii_lowercase();
        let (mut q, mut proto, mut delimited) = (1.0, None, false);
        for parameter in parameters {
            let Some((name, value)) = parameter.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            match name.trim().to_ascii_lowercase().as_str() {
                "q" => {
                    q = value
                        .parse::<f64>()
                        .ok()
                        .filter(|q| q.is_finite())
                        .unwrap_or(0.0)
                }
                "proto" => proto = Some(value.to_owned()),
                "encoding" => delimited = value == "delimited",
                _ => {}
            }
        }
        let best = |slot: &mut Option<f64>| *slot = Some(slot.map_or(q, |b: f64| b.max(q)));
        match media_type.as_str() {
            "application/vnd.google.protobuf"
                if proto.as_deref() == Some("io.prometheus.client.MetricFamily") && delimited =>
            {
                best(&mut protobuf)
            }
            "application/openmetrics-text" | "text/plain" | "text/*" | "*/*" => best(&mut text),
            _ => {}
        }
    }
    match (protobuf, text) {
        (Some(p), Some(t)) => p > 0.0 && p > t,
        (Some(p), None) => p > 0.0,
        (None, _) => false,
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(full(Bytes::copy_from_slice(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

#[cfg(test)]
mod tests {
    use super::prefers_protobuf;

    #[test]
    fn protobuf_only_when_ranked_above_text() {
        // Prometheus 2.4x with native histograms enabled.
        assert!(prefers_protobuf(
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,\
             application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,\
             text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        // Older scrapers (and telegraf) rank it first too.
        assert!(prefers_protobuf(
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,\
             text/plain;version=0.0.4;q=0.3,*/*;q=0.1"
        ));
        // Prometheus without native histograms, curl, browsers.
        assert!(!prefers_protobuf(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
             text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(!prefers_protobuf("*/*"));
        assert!(!prefers_protobuf(""));
        // Ranked below text, another message type, not delimited, or refused.
        assert!(!prefers_protobuf(
            "text/plain;q=0.9,application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.5"
        ));
        assert!(!prefers_protobuf(
            "application/vnd.google.protobuf;proto=io.prometheus.write.v2.Request;encoding=delimited"
        ));
        assert!(!prefers_protobuf(
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily"
        ));
        assert!(!prefers_protobuf(
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0"
        ));
    }
}
