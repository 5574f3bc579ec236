//! The file sink: JSON-lines records appended to files, one per stream if the
//! path contains `{stream}`.
//!
//! Durability follows the sink's `fsync` policy (see [`FsyncPolicy`]): a batch is
//! acknowledged once written to the operating system (`never`), once fsynced
//! (`every_batch`), or at the next periodic fsync (`interval`).
//!
//! File I/O is blocking, so each batch is encoded and written on tokio's blocking
//! pool. Batches are bounded in bytes ([`BATCH_BYTES`]) as well as in events:
//! a batch's encoding then stays in cache while it is copied to the kernel, the
//! stream keeps parsing while a batch is written, and one buffer per file is
//! reused from batch to batch. A write that fails part-way (disk full) is resumed from the byte where
//! it stopped, so a retry never duplicates or tears a line. A line torn by a
//! crash (the process died mid-write) is cut off when the file is next opened,
//! but only if it is a prefix of a record this sink could have written
//! ([`torn_tail`]): its event was never acknowledged, so the server sends it
//! again. Anything else at the end of a file is kept (see [`crate::files`]).

pub mod config;

pub use config::{FileSinkConfig, FsyncPolicy};

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Batching, Delivery, Sink, Written};
use crate::files::{self, Tail, TornTail};
use crate::record::{Encoding, RecordRef};
use crate::sse::Limits;

/// The most record bytes (data and id) in one batch. Writes this large cost
/// one syscall per ~half a MiB; larger buffers fall out of the CPU cache and
/// were measured slower, and they would hold more memory per sink.
pub(super) const BATCH_BYTES: usize = 512 << 10;

/// A buffer grown past this by a huge event is not kept for the next batch.
const KEEP_BUFFER: usize = 4 << 20;

pub struct FileSink {
    files: Option<Box<Files>>,
    fsync: FsyncPolicy,
    fsync_interval: Duration,
}

struct Files {
    sink: String,
    template: String,
    torn: TornTail,
    encoding: Encoding,
    fsync: FsyncPolicy,
    open: HashMap<PathBuf, File>,
    /// The encoded batch being written, per file, with progress.
    pending: Vec<PendingWrite>,
    /// Emptied buffers kept for the next batch.
    spare: Vec<Vec<u8>>,
    /// Files written since the last fsync (for the `interval` policy).
    unsynced: HashSet<PathBuf>,
    /// Reopen every file before the next batch (logrotate moved them).
    reopen_requested: bool,
}

struct PendingWrite {
    path: PathBuf,
    bytes: Vec<u8>,
    written: usize,
}

impl FileSink {
    pub fn new(
        sink: &str,
        template: &str,
        encoding: Encoding,
        fsync: FsyncPolicy,
        fsync_interval: Duration,
        torn: TornTail,
    ) -> Self {
        FileSink {
            files: Some(Box::new(Files {
                sink: sink.to_owned(),
                template: template.to_owned(),
                torn,
                encoding,
                fsync,
                open: HashMap::new(),
                pending: Vec::new(),
                spare: Vec::new(),
                unsynced: HashSet::new(),
                reopen_requested: false,
            })),
            fsync,
            fsync_interval,
        }
    }

    /// Runs `work` on the blocking pool with the files moved there and back.
    async fn blocking<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut Files) -> T + Send + 'static,
    ) -> io::Result<T> {
        let mut files = self
            .files
            .take()
            .ok_or_else(|| io::Error::other("file sink state lost after a panic"))?;
        let (files, out) = tokio::task::spawn_blocking(move || {
            let out = work(&mut files);
            (files, out)
        })
        .await
        .map_err(|e| io::Error::other(format!("file sink worker failed: {e}")))?;
        self.files = Some(files);
        Ok(out)
    }
}

impl Sink for FileSink {
    async fn write(&mut self, batch: &mut Vec<Delivery>) -> io::Result<Written> {
        let deliveries = std::mem::take(batch);
        let (deliveries, result) = self
            .blocking(move |files| {
                let result = files.write(&deliveries);
                (deliveries, result)
            })
            .await?;
        *batch = deliveries;
        result
    }

    async fn sync(&mut self) -> io::Result<()> {
        self.blocking(Files::sync).await?
    }

    fn sync_interval(&self) -> Option<Duration> {
        (self.fsync == FsyncPolicy::Interval).then_some(self.fsync_interval)
    }

    fn batching(&self) -> Batching {
        // Bounded by bytes alone: a batch of small events may hold thousands.
        Batching {
            max_bytes: BATCH_BYTES,
            max_events: usize::MAX,
            ..Batching::default()
        }
    }

    fn size(&self, record: &RecordRef<'_>) -> usize {
        record_bytes(record)
    }

    fn reopen(&mut self) {
        if let Some(files) = &mut self.files {
            files.reopen_requested = true;
        }
    }
}

impl Files {
    fn path_for(&self, stream: &str) -> PathBuf {
        PathBuf::from(self.template.replace("{stream}", stream))
    }

    fn write(&mut self, batch: &[Delivery]) -> io::Result<Written> {
        if self.pending.is_empty() {
            // Only between batches: a batch half written to the old file must
            // be finished there, or its torn line would stay behind in it.
            if self.reopen_requested {
                // What went to the old files is fsynced there first (the
                // `interval` policy), so no acknowledgement waits on a closed file.
                self.sync()?;
                self.open.clear();
                self.reopen_requested = false;
            }
            self.encode(batch);
        }
        for i in 0..self.pending.len() {
            let PendingWrite {
                path,
                bytes,
                written,
            } = &mut self.pending[i];
            if *written == bytes.len() {
                continue;
            }
            let file = open(&mut self.open, &self.sink, path, self.torn)?;
            while *written < bytes.len() {
                match file.write(&bytes[*written..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => *written += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        // Reopen on the retry: the handle may be what is broken.
                        // Reopening cuts a torn final line, so the retry must
                        // start again from the beginning of that line.
                        self.open.remove(path.as_path());
                        *written = memchr::memrchr(b'\n', &bytes[..*written]).map_or(0, |i| i + 1);
                        return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())));
                    }
                }
            }
        }
        let written = match self.fsync {
            FsyncPolicy::Never => Written::Durable,
            FsyncPolicy::EveryBatch => {
                for p in &self.pending {
                    let file = open(&mut self.open, &self.sink, &p.path, self.torn)?;
                    file.sync_data().map_err(|e| {
                        io::Error::new(e.kind(), format!("fsync {}: {e}", p.path.display()))
                    })?;
                }
                Written::Durable
            }
            FsyncPolicy::Interval => {
                for p in &self.pending {
                    self.unsynced.insert(p.path.clone());
                }
                Written::AwaitingSync
            }
        };
        for p in self.pending.drain(..) {
            if p.bytes.capacity() <= KEEP_BUFFER {
                let mut bytes = p.bytes;
                bytes.clear();
                self.spare.push(bytes);
            }
        }
        Ok(written)
    }

    /// Encodes a batch into one buffer per destination file, in order.
    fn encode(&mut self, batch: &[Delivery]) {
        let mut last_stream: Option<&str> = None;
        let mut current = 0;
        for delivery in batch {
            let stream = delivery.stream();
            if last_stream != Some(stream) {
                let path = self.path_for(stream);
                current = match self.pending.iter().position(|p| p.path == path) {
                    Some(i) => i,
                    None => {
                        self.pending.push(PendingWrite {
                            path,
                            bytes: self.spare.pop().unwrap_or_default(),
                            written: 0,
                        });
                        self.pending.len() - 1
                    }
                };
                last_stream = Some(stream);
            }
            let out = &mut self.pending[current].bytes;
            for record in delivery.records() {
                record.encode(self.encoding, out);
            }
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        for path in self.unsynced.clone() {
            let file = open(&mut self.open, &self.sink, &path, self.torn)?;
            file.sync_data()
                .map_err(|e| io::Error::new(e.kind(), format!("fsync {}: {e}", path.display())))?;
            self.unsynced.remove(&path);
        }
        Ok(())
    }
}

/// What a delivery counts against [`BATCH_BYTES`]: its data and id, which
/// is close to its encoded size for text (exact sizes would cost a pass over
/// the data).
pub(super) fn record_bytes(record: &RecordRef<'_>) -> usize {
    record.data.len() + record.id.len()
}

/// What a line this sink tore can look like, for streams within `limits`:
/// for JSON records, a prefix of `{"stream":` no longer than the largest
/// record (every byte of data, id and type escaped as `\u00XX`, the stream
/// name likewise, plus the keys and timestamp); for data lines, any text no
/// longer than the largest event.
pub fn torn_tail(encoding: Encoding, limits: Limits, longest_stream_name: usize) -> TornTail {
    let text = limits.max_event_bytes as u64 + 2 * limits.max_line_bytes as u64;
    match encoding {
        Encoding::Json | Encoding::Ndjson => TornTail {
            prefix: b"{\"stream\":",
            max_bytes: 6 * (text + longest_stream_name as u64) + 128,
        },
        Encoding::Data => TornTail {
            prefix: b"",
            max_bytes: limits.max_event_bytes as u64 + 1,
        },
    }
}

/// The open handle for `path`, opening (and repairing) it on first use.
fn open<'a>(
    open: &'a mut HashMap<PathBuf, File>,
    sink: &str,
    path: &Path,
    torn: TornTail,
) -> io::Result<&'a mut File> {
    if !open.contains_key(path) {
        let file = open_for_append(sink, path, torn).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
        })?;
        open.insert(path.to_owned(), file);
    }
    Ok(open.get_mut(path).expect("inserted above"))
}

/// Opens `path` for appending (see [`files::open_append`]) and says what it
/// did to the file's end.
pub(super) fn open_for_append(sink: &str, path: &Path, torn: TornTail) -> io::Result<File> {
    let (file, tail) = files::open_append(path, torn)?;
    match tail {
        Tail::Clean => {}
        Tail::Cut(removed) => tracing::warn!(
            sink = %sink,
            "{}: removed a torn final line ({removed} bytes, part of a record whose write was interrupted); its event was never acknowledged and will be sent again",
            path.display()
        ),
        Tail::Kept(kept) => tracing::warn!(
            sink = %sink,
            "{}: the file did not end with a newline, and its last {kept} bytes are not a record this relay could have written: kept them as they are; new records start on the next line",
            path.display()
        ),
    }
    Ok(file)
}
