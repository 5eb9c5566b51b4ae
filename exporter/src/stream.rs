//! A response body written while it is sent: `/metrics` at 100k series is hundreds of
//! megabytes of text, which rendered whole into one string would be held in memory at once on
//! every scrape. [`ChunkWriter`] (a `fmt::Write` for the renderer) hands full chunks to a
//! bounded channel that [`StreamBody`] drains into the connection, so at most a few chunks are
//! held and the render waits for a slow scraper instead of buffering for it.

use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame};
use tokio::sync::mpsc;

/// Bytes per chunk sent.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks waiting to be sent at most.
pub const CHUNKS_IN_FLIGHT: usize = 4;

/// The receiving end, as a hyper body.
#[derive(Debug)]
pub struct StreamBody {
    chunks: mpsc::Receiver<Bytes>,
}

impl Body for StreamBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.chunks
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// The writing end: a `fmt::Write` (text) with [`ChunkWriter::write_bytes`] (protobuf) that
/// sends each full chunk, blocking while the channel is
/// full (run it on a blocking thread). Writing fails once the body was dropped (the scraper
/// went away), which stops the render.
#[derive(Debug)]
pub struct ChunkWriter {
    buffer: Vec<u8>,
    chunks: mpsc::Sender<Bytes>,
}

/// A connected writer and body.
pub fn channel() -> (ChunkWriter, StreamBody) {
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    (
        ChunkWriter {
            buffer: Vec::with_capacity(CHUNK_BYTES),
            chunks: tx,
        },
        StreamBody { chunks: rx },
    )
}

impl ChunkWriter {
    fn send(&mut self) -> fmt::Result {
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_BYTES));
        self.chunks
            .blocking_send(Bytes::from(chunk))
            .map_err(|_| fmt::Error)
    }

    /// Appends bytes, sending each full chunk.
    pub fn write_bytes(&mut self, bytes: &[u8]) -> fmt::Result {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(())
    }

    /// Sends what is left; the body ends when the writer is dropped.
    pub fn finish(mut self) -> fmt::Result {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.send()
    }
}

impl fmt::Write for ChunkWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write_bytes(s.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fmt::Write as _;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn chunks_arrive_in_order_and_whole() {
        let (mut writer, body) = channel();
        let writing = tokio::task::spawn_blocking(move || {
            for i in 0..50_000 {
                writeln!(writer, "line {i}")?;
            }
            writer.finish()
        });
        let text = body.collect().await.map(|b| b.to_bytes());
        assert_eq!(writing.await.ok(), Some(Ok(())));
        let text =
            String::from_utf8(text.map(|b| b.to_vec()).unwrap_or_default()).unwrap_or_default();
        let expected: String = (0..50_000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, expected);
    }

    #[tokio::test]
    async fn a_scraper_that_leaves_stops_the_render() {
        let (mut writer, body) = channel();
        drop(body);
        let writing = tokio::task::spawn_blocking(move || {
            for _ in 0..1_000_000 {
                writer.write_str("0123456789abcdef")?;
            }
            Ok::<(), fmt::Error>(())
        });
        assert_eq!(writing.await.ok(), Some(Err(fmt::Error)));
    }
}
