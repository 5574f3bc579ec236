//! The stdout sink: records to standard output, acknowledged once flushed.

use std::io;

use tokio::io::AsyncWriteExt;

use super::{Batching, Delivery, Sink, Written};
use crate::config::Encoding;

pub struct StdoutSink {
    out: tokio::io::Stdout,
    encoding: Encoding,
    buffer: Vec<u8>,
    /// How much of `buffer` has been written; a retry continues from here.
    written: usize,
}

impl StdoutSink {
    pub fn new(encoding: Encoding) -> Self {
        StdoutSink {
            out: tokio::io::stdout(),
            encoding,
            buffer: Vec::new(),
            written: 0,
        }
    }
}

impl Sink for StdoutSink {
    async fn write(&mut self, batch: &mut Vec<Delivery>) -> io::Result<Written> {
        // A retry after a partial write resumes with what is left in the buffer.
        if self.buffer.is_empty() {
            for delivery in batch.iter() {
                delivery.record.encode(self.encoding, &mut self.buffer);
            }
        }
        while self.written < self.buffer.len() {
            let n = self.out.write(&self.buffer[self.written..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.written += n;
        }
        self.out.flush().await?;
        self.buffer.clear();
        // Kept for the next batch, unless a huge event grew it.
        if self.buffer.capacity() > 4 << 20 {
            self.buffer = Vec::new();
        }
        self.written = 0;
        Ok(Written::Durable)
    }

    // Bounded in bytes as the file sink is, for the same reasons.
    fn batching(&self) -> Batching {
        Batching {
            max_bytes: super::file::BATCH_BYTES,
            ..Batching::default()
        }
    }

    fn size(&self, delivery: &Delivery) -> usize {
        super::file::record_bytes(delivery)
    }
}
