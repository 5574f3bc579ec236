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
//! crash (the process died mid-write) is cut off when the file is next opened:
//! its event was never acknowledged, so the server sends it again.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Batching, Delivery, Sink, Written};
use crate::config::{Encoding, FsyncPolicy};
use crate::record::RecordRef;

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
    ) -> Self {
        FileSink {
            files: Some(Box::new(Files {
                sink: sink.to_owned(),
                template: template.to_owned(),
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
            let file = open(&mut self.open, &self.sink, path)?;
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
                    let file = open(&mut self.open, &self.sink, &p.path)?;
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
            let file = open(&mut self.open, &self.sink, &path)?;
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

/// The open handle for `path`, opening (and repairing) it on first use.
fn open<'a>(
    open: &'a mut HashMap<PathBuf, File>,
    sink: &str,
    path: &Path,
) -> io::Result<&'a mut File> {
    if !open.contains_key(path) {
        let file = open_for_append(sink, path).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
        })?;
        open.insert(path.to_owned(), file);
    }
    Ok(open.get_mut(path).expect("inserted above"))
}

/// Opens `path` for appending, creating it and its directory if needed, and
/// cuts off a torn final line.
pub(super) fn open_for_append(sink: &str, path: &Path) -> io::Result<File> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let removed = cut_torn_line(&mut file)?;
    if removed > 0 {
        tracing::warn!(
            sink = %sink,
            "{}: removed a torn final line ({removed} bytes) left by a crash; its event was never acknowledged and will be sent again",
            path.display()
        );
    }
    Ok(file)
}

/// If the file does not end with `\n`, truncates it after its last `\n`.
/// Returns how many bytes were removed.
fn cut_torn_line(file: &mut File) -> io::Result<u64> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    let mut block = vec![0u8; 64 << 10];
    let mut end = len;
    let mut checked_last_byte = false;
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let chunk = &mut block[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if !checked_last_byte {
            if chunk.last() == Some(&b'\n') {
                return Ok(0);
            }
            checked_last_byte = true;
        }
        if let Some(i) = memchr::memrchr(b'\n', chunk) {
            let keep = start + i as u64 + 1;
            file.set_len(keep)?;
            return Ok(len - keep);
        }
        end = start;
    }
    file.set_len(0)?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_final_line_is_cut_and_whole_lines_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"a\":2}\n{\"a\":").unwrap();
        drop(open_for_append("t", &path).unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"a\":2}\n"
        );
        drop(open_for_append("t", &path).unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"a\":2}\n"
        );
        let long = "x".repeat(200_000);
        std::fs::write(&path, format!("ok\n{long}")).unwrap();
        drop(open_for_append("t", &path).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "ok\n");
    }
}
