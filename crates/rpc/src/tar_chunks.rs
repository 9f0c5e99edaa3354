//! A `std::io::Write` that cuts what the (synchronous) exporter writes into the chunks of an
//! Export response stream.

use crate::pb::{ExportChunk, ExportSummary};
use std::io;
use tokio::sync::mpsc;
use tonic::Status;

/// Size of the tar piece in each chunk: large enough that per-message overhead is noise, far
/// below gRPC's default 4 MiB message limit on clients.
pub(crate) const CHUNK_BYTES: usize = 64 * 1024;

pub(crate) type ChunkSender = mpsc::Sender<Result<ExportChunk, Status>>;

/// Writes into a bounded channel, so the exporter waits while the client is slow (backpressure)
/// and fails as soon as the client is gone (the receiver dropped).
pub(crate) struct ChunkWriter {
    tx: ChunkSender,
    buf: Vec<u8>,
    client_gone: bool,
}

impl ChunkWriter {
    /// Must be used from a blocking thread: sends block.
    pub(crate) fn new(tx: ChunkSender) -> Self {
        ChunkWriter {
            tx,
            buf: Vec::with_capacity(CHUNK_BYTES),
            client_gone: false,
        }
    }

    /// True once a send failed because nobody receives any more.
    pub(crate) fn client_gone(&self) -> bool {
        self.client_gone
    }

    /// Sends what is left with the summary: the last chunk.
    pub(crate) fn finish(mut self, summary: ExportSummary) -> io::Result<()> {
        let tar = std::mem::take(&mut self.buf);
        self.send(ExportChunk {
            tar,
            summary: Some(summary),
        })
    }

    fn send(&mut self, chunk: ExportChunk) -> io::Result<()> {
        if self.tx.blocking_send(Ok(chunk)).is_err() {
            self.client_gone = true;
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the client cancelled the export or went away",
            ));
        }
        Ok(())
    }
}

impl io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.client_gone {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let mut rest = data;
        while !rest.is_empty() {
            let take = (CHUNK_BYTES - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() == CHUNK_BYTES {
                let tar = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES));
                self.send(ExportChunk { tar, summary: None })?;
            }
        }
        Ok(data.len())
    }

    /// Nothing to do: a partial chunk waits for more bytes or for `finish`, so every chunk but
    /// the last is full.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
