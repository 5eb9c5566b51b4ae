//! A receiver for Envoy's gRPC access-log service (`envoy.access_loggers.http_grpc`), the native
//! way to stream per-request fields out of Envoy that `cargo xtask bench filter` measures beside
//! the filter. It speaks HTTP/2 without TLS (Envoy's `envoy_grpc` to a cluster with HTTP/2), reads
//! each `StreamAccessLogs` stream to its end and counts the gRPC messages and bytes it got; it
//! does not decode them (what it costs Envoy to produce them is what is measured).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// A running receiver; stops with the runtime it was started on.
pub struct AccessLogReceiver {
    pub port: u16,
    bytes: Arc<AtomicU64>,
    messages: Arc<AtomicU64>,
}

impl AccessLogReceiver {
    pub async fn start() -> AccessLogReceiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the access-log receiver");
        let port = listener.local_addr().expect("local address").port();
        let (bytes, messages) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (b, m) = (bytes.clone(), messages.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (b, m) = (b.clone(), m.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let (b, m) = (b.clone(), m.clone());
                        async move { drain(request, &b, &m).await }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        AccessLogReceiver {
            port,
            bytes,
            messages,
        }
    }

    /// gRPC messages and bytes received so far.
    pub fn received(&self) -> (u64, u64) {
        (
            self.messages.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

/// Reads one stream to its end, then answers OK (an empty `StreamAccessLogsResponse`).
async fn drain(
    request: Request<Incoming>,
    bytes: &AtomicU64,
    messages: &AtomicU64,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let mut body = request.into_body();
    // Bytes of the current gRPC message still to come, and a partial 5-byte prefix.
    let (mut remaining, mut prefix) = (0usize, Vec::with_capacity(5));
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        let mut data = &data[..];
        while !data.is_empty() {
            if remaining > 0 {
                let n = remaining.min(data.len());
                (remaining, data) = (remaining - n, &data[n..]);
                continue;
            }
            let n = (5 - prefix.len()).min(data.len());
            prefix.extend_from_slice(&data[..n]);
            data = &data[n..];
            if prefix.len() == 5 {
                remaining =
                    u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
                prefix.clear();
                messages.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(Response::builder()
        .header("content-type", "application/grpc")
        .header("grpc-status", "0")
        .body(Full::new(Bytes::new()))
        .expect("a static response"))
}
