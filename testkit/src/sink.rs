//! A stand-in for the exporter that decodes every batch strictly, remembers which
//! (gateway, instance, sequence) it has applied, and can be taken down and brought back on the
//! same port to test the filter's buffering.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use plover_wire::{Batch, Histogram, Role, StatusClass};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::http::{respond, serve};

/// Everything the sink has accepted, exactly once per batch identity.
#[derive(Default, Debug, Clone)]
pub struct Received {
    pub batches: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub dropped_requests: u64,
    pub instances: BTreeSet<(String, String)>,
    /// Requests by (role, revision).
    pub requests: BTreeMap<(Role, String), u64>,
    /// Requests by (revision, status class).
    pub by_class: BTreeMap<(String, StatusClass), u64>,
    /// Merged duration histograms by revision.
    pub durations: BTreeMap<String, Histogram>,
    seen: BTreeSet<(String, String, u64)>,
}

impl Received {
    pub fn total_requests(&self) -> u64 {
        self.requests.values().sum()
    }

    pub fn requests_of(&self, revision: &str) -> u64 {
        self.requests
            .iter()
            .filter(|((_, r), _)| r == revision)
            .map(|(_, n)| n)
            .sum()
    }

    fn apply(&mut self, batch: Batch) -> bool {
        if !self.seen.insert((
            batch.gateway.clone(),
            batch.instance.clone(),
            batch.sequence,
        )) {
            self.duplicates += 1;
            return false;
        }
        self.batches += 1;
        self.dropped_requests += batch.dropped_requests;
        self.instances.insert((batch.gateway, batch.instance));
        for (key, delta) in batch.series {
            *self
                .requests
                .entry((key.role, key.revision.clone()))
                .or_default() += delta.requests;
            *self
                .by_class
                .entry((key.revision.clone(), key.status_class))
                .or_default() += delta.requests;
            self.durations
                .entry(key.revision)
                .or_default()
                .merge(&delta.duration);
        }
        true
    }
}

/// A running sink. Stops when dropped.
pub struct Sink {
    pub port: u16,
    pub token: String,
    received: Arc<Mutex<Received>>,
    stop: Option<watch::Sender<bool>>,
}

impl Sink {
    pub async fn start(token: &str) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let port = listener.local_addr().expect("sink address").port();
        let mut sink = Sink {
            port,
            token: token.to_owned(),
            received: Arc::default(),
            stop: None,
        };
        sink.listen(listener);
        sink
    }

    fn listen(&mut self, listener: TcpListener) {
        let (stop, stopped) = watch::channel(false);
        let received = self.received.clone();
        let expected_auth = format!("Bearer {}", self.token);
        tokio::spawn(serve(
            listener,
            move |req| {
                let received = received.clone();
                let authorized = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    == Some(expected_auth.as_str());
                async move {
                    if !authorized {
                        return respond(401, "bad token", &[]);
                    }
                    match Batch::decode(req.body()) {
                        Ok(batch) => {
                            received.lock().expect("sink state").apply(batch);
                            respond(200, "", &[])
                        }
                        Err(e) => {
                            received.lock().expect("sink state").rejected += 1;
                            respond(400, e.to_string(), &[])
                        }
                    }
                }
            },
            stopped,
        ));
        self.stop = Some(stop);
    }

    /// Stops listening: connections are refused until [`Sink::up`].
    pub fn down(&mut self) {
        self.stop = None;
    }

    /// Listens again on the same port.
    pub async fn up(&mut self) {
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        };
        self.listen(listener);
    }

    pub fn received(&self) -> Received {
        self.received.lock().expect("sink state").clone()
    }
}
