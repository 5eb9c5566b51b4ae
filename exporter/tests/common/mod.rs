//! Helpers shared by the exporter's HTTP tests: start a server on 127.0.0.1:0, build batches,
//! and make requests with a minimal hyper client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use plover_exporter::Config;
use plover_wire::batch::{CONTENT_TYPE, INGEST_PATH};
use plover_wire::{Batch, Role, SeriesDelta, SeriesKey};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const TOKEN: &str = "test-token";

/// A running exporter; shut it down with [`Exporter::stop`].
pub struct Exporter {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Exporter {
    /// Starts an exporter with the test token and `extra` flags.
    pub async fn start(extra: &[&str]) -> Exporter {
        let mut args = vec!["plover-exporter", "--token", TOKEN];
        args.extend_from_slice(extra);
        let config = Config::parse_from(args).expect("valid test configuration");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            plover_exporter::run(config, listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Exporter {
            addr,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Begins shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Shuts down and waits until `run` returned.
    pub async fn stop(mut self) {
        self.begin_shutdown();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("shutdown in time")
            .unwrap();
    }

    pub async fn join(&mut self) {
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("shutdown in time")
            .unwrap();
    }

    pub async fn get(&self, path: &str) -> Reply {
        send(
            self.addr,
            Request::get(path)
                .header("host", "test")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
    }

    /// POSTs an encoded batch with the test token.
    pub async fn post_batch(&self, body: Vec<u8>) -> Reply {
        self.post(body, Some(TOKEN), CONTENT_TYPE).await
    }

    pub async fn post(&self, body: Vec<u8>, token: Option<&str>, content_type: &str) -> Reply {
        let mut request = Request::post(INGEST_PATH)
            .header("host", "test")
            .header("content-type", content_type);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        send(
            self.addr,
            request.body(Full::new(Bytes::from(body))).unwrap(),
        )
        .await
    }

    /// `/v1/stats` as JSON.
    pub async fn stats(&self, query: &str) -> serde_json::Value {
        let reply = self.get(&format!("/v1/stats?{query}")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        serde_json::from_str(&reply.body).unwrap()
    }

    /// The `/metrics` lines of one metric name prefix, sorted.
    pub async fn metric_lines(&self, prefix: &str) -> Vec<String> {
        let reply = self.get("/metrics").await;
        assert_eq!(reply.status, 200);
        let mut lines: Vec<String> = reply
            .body
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: String,
    /// `x-plover-refused-requests`, if the exporter set it.
    pub refused_requests: Option<String>,
}

pub async fn send(addr: SocketAddr, request: Request<Full<Bytes>>) -> Reply {
    try_send(addr, request)
        .await
        .unwrap_or_else(|e| panic!("request to {addr} failed: {e}"))
}

/// Like [`send`], but a connection or protocol failure is an error instead of a panic.
pub async fn try_send(
    addr: SocketAddr,
    request: Request<Full<Bytes>>,
) -> Result<Reply, Box<dyn std::error::Error>> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let refused_requests = response
        .headers()
        .get(plover_wire::batch::REFUSED_REQUESTS_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Reply {
        status,
        content_type,
        refused_requests,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One series of service `app` in namespace `demo`.
pub fn series(
    revision: &str,
    role: Role,
    code: u16,
    requests: u64,
    micros: u64,
) -> (SeriesKey, SeriesDelta) {
    let key = SeriesKey::answered("demo", "app", "app-route", revision, role, code);
    let mut delta = SeriesDelta {
        requests,
        request_bytes: requests * 100,
        response_bytes: requests * 1000,
        ..Default::default()
    };
    delta.duration.record_n(micros, requests);
    (key, delta)
}

/// A batch from gateway `gw-1`, ending `ago_ms` before now.
pub fn batch(
    instance: &str,
    sequence: u64,
    ago_ms: u64,
    mut series: Vec<(SeriesKey, SeriesDelta)>,
) -> Batch {
    series.sort_by(|a, b| a.0.cmp(&b.0));
    let end = now_ms() - ago_ms;
    Batch {
        gateway: "gw-1".into(),
        instance: instance.into(),
        sequence,
        start_unix_ms: end - 1000,
        end_unix_ms: end,
        dropped_requests: 0,
        sizes_unmeasured: false,
        series,
    }
}
