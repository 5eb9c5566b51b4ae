//! `POST /v1/batches`: authenticate, read the body within its limit, decode strictly, and merge
//! exactly once.
//!
//! Order matters: the token is checked before a byte of the body is read, and the whole batch
//! is decoded and validated before the store is touched, so a rejected request changes
//! nothing. The response tells the filter what to do: 2xx means "done, send the next one"
//! (including for a duplicate), any other 4xx means "drop it, retrying cannot help".

use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Body;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{HeaderMap, Request, StatusCode};
use plover_wire::batch::CONTENT_TYPE as BATCH_CONTENT_TYPE;
use plover_wire::{BatchView, DecodeBuffers, WireError};
use subtle::ConstantTimeEq;

use crate::config::Auth;
use crate::store::{Applied, Store, StoreError};

/// How long a client may take to send a batch body once its headers arrived.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Decode storage a thread keeps between batches; above this it is freed after use, so that
/// one huge batch does not pin its memory on every worker thread.
const KEPT_DECODE_BYTES: usize = 1 << 20;

thread_local! {
    /// Each worker thread decodes into its own buffers: decoding and merging never awaits, so
    /// a batch is done with them before the thread runs anything else.
    static DECODE_BUFFERS: RefCell<DecodeBuffers> = RefCell::new(DecodeBuffers::default());
}

/// Why a batch was refused.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// No `authorization: Bearer` header, or the wrong token.
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// The body is not declared as a Plover batch.
    #[error("content-type must be {BATCH_CONTENT_TYPE}")]
    UnsupportedMediaType,
    /// The body (declared or actual) is larger than `--max-batch-bytes`.
    #[error("batch exceeds {limit} bytes")]
    TooLarge { limit: usize },
    /// The body is not a valid batch; the reason is returned to the client.
    #[error("invalid batch: {0}")]
    Decode(#[from] WireError),
    /// The batch decoded but breaks a rule the store enforces.
    #[error("invalid batch: {0}")]
    Invalid(#[from] StoreError),
    /// The connection failed or stalled while the body was read.
    #[error("reading the body failed: {0}")]
    Body(String),
}

impl IngestError {
    pub fn status(&self) -> StatusCode {
        match self {
            IngestError::Unauthorized => StatusCode::UNAUTHORIZED,
            IngestError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngestError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::Decode(WireError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::Decode(_) | IngestError::Invalid(_) => StatusCode::BAD_REQUEST,
            IngestError::Body(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// Value of the `reason` label of `plover_exporter_batches_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::Unauthorized => "unauthorized",
            IngestError::UnsupportedMediaType => "unsupported_media_type",
            IngestError::TooLarge { .. } | IngestError::Decode(WireError::TooLarge { .. }) => {
                "too_large"
            }
            IngestError::Decode(_) | IngestError::Invalid(_) => "malformed",
            IngestError::Body(_) => "body",
        }
    }
}

/// The ingest endpoint's state.
#[derive(Debug)]
pub struct Ingest {
    auth: Auth,
    max_batch_bytes: usize,
    store: Arc<Mutex<Store>>,
    clock: fn() -> u64,
}

impl Ingest {
    pub fn new(
        auth: Auth,
        max_batch_bytes: usize,
        store: Arc<Mutex<Store>>,
        clock: fn() -> u64,
    ) -> Self {
        Ingest {
            auth,
            max_batch_bytes,
            store,
            clock,
        }
    }

    /// Handles one batch request end to end.
    pub async fn handle<B>(&self, request: Request<B>) -> Result<Applied, IngestError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.authorize(request.headers())?;
        check_content_type(request.headers())?;
        let declared = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_batch_bytes as u64) {
            return Err(IngestError::TooLarge {
                limit: self.max_batch_bytes,
            });
        }
        let body = self.read_body(request.into_body()).await?;
        self.apply_body(&body)
    }

    /// Decodes a batch body strictly and merges it: everything `handle` does after reading the
    /// body (the benchmark measures ingest through this, so that it times what requests do).
    /// Decoding happens before the store lock is taken, so a slow or bad body never holds it.
    pub fn apply_body(&self, body: &[u8]) -> Result<Applied, IngestError> {
        DECODE_BUFFERS.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buffers) => {
                let applied = self.decode_and_apply(body, &mut buffers);
                buffers.shrink_to(KEPT_DECODE_BYTES);
                applied
            }
            // Only if a store call re-entered ingest on this thread, which nothing does.
            Err(_) => self.decode_and_apply(body, &mut DecodeBuffers::default()),
        })
    }

    fn decode_and_apply(
        &self,
        body: &[u8],
        buffers: &mut DecodeBuffers,
    ) -> Result<Applied, IngestError> {
        let batch = BatchView::decode_with(body, buffers)?;
        let now_ms = (self.clock)();
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        Ok(store.apply(&batch, now_ms)?)
    }

    /// Checks `authorization: Bearer <token>` in constant time (for equal lengths).
    pub fn authorize(&self, headers: &HeaderMap) -> Result<(), IngestError> {
        let Auth::Bearer(expected) = &self.auth else {
            return Ok(());
        };
        let given = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .ok_or(IngestError::Unauthorized)?;
        if bool::from(given.ct_eq(expected.as_bytes())) {
            Ok(())
        } else {
            Err(IngestError::Unauthorized)
        }
    }

    async fn read_body<B>(&self, body: B) -> Result<Bytes, IngestError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let limited = Limited::new(body, self.max_batch_bytes);
        match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
            Err(_) => Err(IngestError::Body("timed out".into())),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                Err(IngestError::TooLarge {
                    limit: self.max_batch_bytes,
                })
            }
            Ok(Err(e)) => Err(IngestError::Body(e.to_string())),
        }
    }
}

/// Accepts the batch media type, with or without parameters.
fn check_content_type(headers: &HeaderMap) -> Result<(), IngestError> {
    let value = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media_type = value.split(';').next().unwrap_or("").trim();
    if media_type.eq_ignore_ascii_case(BATCH_CONTENT_TYPE) {
        Ok(())
    } else {
        Err(IngestError::UnsupportedMediaType)
    }
}
