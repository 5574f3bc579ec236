//! The stdout sink: records to standard output, acknowledged once written.
//!
//! It writes to its own duplicate of file descriptor 1, without any buffer in
//! between: tokio's and std's stdout both buffer, and a write they buffered
//! reports success even if the reader is gone, which would acknowledge events
//! nobody received. Writes are blocking syscalls, so they run on tokio's
//! blocking pool.
//!
//! A closed stdout (the reader exited: `sse-relay tail URL | head`) is an error
//! like any other for `run`: the sink retries and its streams wait. For `tail`
//! and `demo`, which keep no checkpoints, it ends the run instead.

pub mod config;

pub use config::StdoutConfig;

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;

use super::{Batching, Delivery, Sink, Written};
use crate::record::{encode_all, Encoding, RecordRef};
use crate::shutdown::Shutdown;

pub struct StdoutSink {
    encoding: Encoding,
    /// The encoded batch, and how much of it is written; a retry continues there.
    /// `None` only while a write is in flight on the blocking pool.
    pending: Option<(Vec<u8>, usize)>,
    out: Option<File>,
    /// Shut the daemon down when the reader goes away (`tail`, `demo`).
    stop_when_closed: Option<Shutdown>,
}

impl StdoutSink {
    pub fn new(encoding: Encoding, stop_when_closed: Option<Shutdown>) -> Self {
        StdoutSink {
            encoding,
            pending: Some((Vec::new(), 0)),
            out: None,
            stop_when_closed,
        }
    }
}

impl Sink for StdoutSink {
    async fn write(&mut self, batch: &mut Vec<Delivery>) -> io::Result<Written> {
        let out = match self.out.take() {
            Some(out) => out,
            None => File::from(io::stdout().as_fd().try_clone_to_owned()?),
        };
        let (mut buffer, written) = self.pending.take().unwrap_or_default();
        if buffer.is_empty() {
            for delivery in batch.iter() {
                encode_all(delivery.records(), self.encoding, &mut buffer);
            }
        }
        let (out, buffer, written, result) = tokio::task::spawn_blocking(move || {
            let mut out = out;
            let mut written = written;
            let result = loop {
                if written == buffer.len() {
                    break Ok(());
                }
                match out.write(&buffer[written..]) {
                    Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            (out, buffer, written, result)
        })
        .await
        .map_err(|e| io::Error::other(format!("stdout writer failed: {e}")))?;
        self.out = Some(out);
        match result {
            Ok(()) => {
                let mut buffer = buffer;
                buffer.clear();
                // Kept for the next batch, unless a huge event grew it.
                if buffer.capacity() > 4 << 20 {
                    buffer = Vec::new();
                }
                self.pending = Some((buffer, 0));
                Ok(Written::Durable)
            }
            Err(e) => {
                self.pending = Some((buffer, written));
                if e.kind() == io::ErrorKind::BrokenPipe {
                    if let Some(shutdown) = &self.stop_when_closed {
                        tracing::info!("stdout was closed by its reader; stopping");
                        shutdown.drain.cancel();
                        shutdown.abort.cancel();
                    }
                }
                Err(io::Error::new(e.kind(), format!("stdout: {e}")))
            }
        }
    }

    // Bounded in bytes as the file sink is, for the same reasons.
    fn batching(&self) -> Batching {
        Batching {
            max_bytes: super::file::BATCH_BYTES,
            max_events: usize::MAX,
            ..Batching::default()
        }
    }

    fn size(&self, record: &RecordRef<'_>) -> usize {
        super::file::record_bytes(record)
    }
}
