//! The file sink: JSON-lines records appended to files, one per stream if the
//! path contains `{stream}`.
//!
//! Durability follows the sink's `fsync` policy (see [`FsyncPolicy`]): a batch is
//! acknowledged once written to the operating system (`never`), once fsynced
//! (`every_batch`), or at the next periodic fsync (`interval`).
//!
//! File I/O is blocking, so each batch is encoded and written on tokio's blocking
//! pool. Batches are bounded in bytes (`BATCH_BYTES`) as well as in events:
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
use crate::record::{encode_all, Encoding, RecordRef};
use crate::sse::Limits;

/// The most records one batch holds, counted as the sink's queue counts them
/// ([`record_bytes`]): half its default budget. The stream fills the other
/// half while a batch is written, and a batch is as large as that allows, so
/// each hand-off to the blocking pool moves as much as it can. Measured (20
/// alternating runs each): against 512 KiB of data and ids, 16 KiB events
/// relayed in 11% less time and small ones in 5% less; a whole budget's worth
/// was 25% slower on small events (the stream waited for each batch).
pub(super) const BATCH_BYTES: usize = crate::sink::queue::DEFAULT_QUEUE_BYTES / 2;

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
            if let Err(e) = write_lines(file, bytes, written) {
                // Reopen on the retry: the handle may be what is broken (and
                // reopening cuts the torn line `write_lines` rewound past).
                self.open.remove(path.as_path());
                return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())));
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
            encode_all(
                delivery.records(),
                self.encoding,
                &mut self.pending[current].bytes,
            );
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

/// Writes `bytes[*written..]` (whole lines) to `file`, moving `written` as
/// they go out. On a failure `written` goes back to the start of the line it
/// stopped in: the caller reopens the file, which cuts that torn line, so the
/// retry writes the line again whole and nothing before it twice.
fn write_lines(file: &mut impl Write, bytes: &[u8], written: &mut usize) -> io::Result<()> {
    debug_assert!(
        bytes.is_empty() || bytes.ends_with(b"\n"),
        "whole lines only"
    );
    while *written < bytes.len() {
        let failed = match file.write(&bytes[*written..]) {
            Ok(0) => io::ErrorKind::WriteZero.into(),
            Ok(n) => {
                let before = *written;
                *written += n;
                // Never stuck, never past the end: a write loop that did
                // not move would append the same bytes forever.
                debug_assert!(before < *written && *written <= bytes.len());
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => e,
        };
        *written = memchr::memrchr(b'\n', &bytes[..*written]).map_or(0, |i| i + 1);
        return Err(failed);
    }
    Ok(())
}

/// What a record counts against [`BATCH_BYTES`]: what it counts against a
/// queue's budget, its type, id and data and a fixed overhead (exact encoded
/// sizes would cost a pass over the data).
pub(super) fn record_bytes(record: &RecordRef<'_>) -> usize {
    record.event.len() + record.id.len() + record.data.len() + crate::record::QUEUE_OVERHEAD
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use super::*;
    use crate::ack::AckTracker;
    use crate::record::Records;
    use crate::sink::queue::{Held, Selection};
    use crate::sse::EventRef;

    /// A delivery of `stream`'s events with these ids, data `d<id>`.
    fn delivery(stream: &str, ids: &[&str]) -> Delivery {
        let events: Vec<(&str, String)> = ids.iter().map(|id| (*id, format!("d{id}"))).collect();
        deliver(stream, &events)
    }

    /// A delivery of `stream`'s events, each `(id, data)`.
    fn deliver(stream: &str, events: &[(&str, String)]) -> Delivery {
        let mut records = Records::new(Arc::from(stream), SystemTime::UNIX_EPOCH, 0);
        for (id, data) in events {
            records.push(&EventRef {
                event: "message",
                data,
                id,
                retry: None,
            });
        }
        Delivery {
            records: Arc::new(records),
            selection: Selection::Run(0..events.len()),
            first_seq: 1,
            tracker: Arc::new(AckTracker::new(1, "")),
            slot: 0,
            held: Held::default(),
        }
    }

    fn files(template: &Path, encoding: Encoding, fsync: FsyncPolicy) -> Files {
        let sink = FileSink::new(
            "archive",
            template.to_str().unwrap(),
            encoding,
            fsync,
            Duration::from_secs(1),
            torn_tail(encoding, Limits::default(), 8),
        );
        *sink.files.unwrap()
    }

    fn data_lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_batch_of_several_streams_goes_to_each_streams_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = files(
            &dir.path().join("{stream}.log"),
            Encoding::Data,
            FsyncPolicy::Never,
        );
        let batch = [
            delivery("a", &["1", "2"]),
            delivery("b", &["1"]),
            delivery("b", &["2"]),
            delivery("a", &["3"]),
        ];
        assert_eq!(files.write(&batch).unwrap(), Written::Durable);
        assert_eq!(data_lines(&dir.path().join("a.log")), ["d1", "d2", "d3"]);
        assert_eq!(data_lines(&dir.path().join("b.log")), ["d1", "d2"]);
        // The next batch appends, and the buffers of the last one are reused.
        assert_eq!(files.spare.len(), 2);
        files.write(&[delivery("b", &["3"])]).unwrap();
        assert_eq!(data_lines(&dir.path().join("b.log")), ["d1", "d2", "d3"]);
        assert_eq!(files.spare.len(), 2, "one taken, one given back");
    }

    #[test]
    fn a_buffer_grown_by_a_huge_event_is_not_kept_for_the_next_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        let mut files = files(&path, Encoding::Data, FsyncPolicy::Never);
        let huge = "x".repeat(KEEP_BUFFER + 1);
        let big = deliver("s", &[("1", huge.clone())]);
        files.write(&[big]).unwrap();
        assert!(
            files.spare.is_empty(),
            "a {} MiB buffer kept",
            KEEP_BUFFER >> 20
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            huge.len() as u64 + 1
        );
        // One just under the limit is kept.
        let medium = deliver("s", &[("2", "y".repeat(KEEP_BUFFER / 4))]);
        files.write(&[medium]).unwrap();
        assert_eq!(files.spare.len(), 1);
    }

    #[test]
    fn json_records_are_whole_lines_of_the_output_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut files = files(&path, Encoding::Json, FsyncPolicy::EveryBatch);
        assert_eq!(
            files.write(&[delivery("s", &["7"])]).unwrap(),
            Written::Durable
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"stream\":\"s\",\"id\":\"7\",\"event\":\"message\",\"data\":\"d7\",\"received_at\":\"1970-01-01T00:00:00.000000Z\"}\n"
        );
    }

    #[test]
    fn the_interval_policy_acknowledges_after_the_sync_that_covers_the_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = files(
            &dir.path().join("{stream}.log"),
            Encoding::Data,
            FsyncPolicy::Interval,
        );
        let written = files
            .write(&[delivery("a", &["1"]), delivery("b", &["1"])])
            .unwrap();
        assert_eq!(written, Written::AwaitingSync);
        assert_eq!(files.unsynced.len(), 2);
        files.sync().unwrap();
        assert!(files.unsynced.is_empty());
        // Only the interval policy asks the runner for periodic syncs.
        let sink = |fsync| {
            FileSink::new(
                "s",
                "x",
                Encoding::Data,
                fsync,
                Duration::from_secs(3),
                torn_tail(Encoding::Data, Limits::default(), 1),
            )
        };
        assert_eq!(
            sink(FsyncPolicy::Interval).sync_interval(),
            Some(Duration::from_secs(3))
        );
        assert_eq!(sink(FsyncPolicy::Never).sync_interval(), None);
        assert_eq!(sink(FsyncPolicy::EveryBatch).sync_interval(), None);
    }

    #[tokio::test]
    async fn the_sinks_sync_covers_what_the_interval_policy_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::new(
            "s",
            dir.path().join("{stream}.log").to_str().unwrap(),
            Encoding::Data,
            FsyncPolicy::Interval,
            Duration::from_secs(1),
            torn_tail(Encoding::Data, Limits::default(), 1),
        );
        let mut batch = vec![delivery("a", &["1"]), delivery("b", &["1"])];
        assert_eq!(sink.write(&mut batch).await.unwrap(), Written::AwaitingSync);
        assert_eq!(batch.len(), 2, "the batch is given back");
        assert_eq!(sink.files.as_ref().unwrap().unsynced.len(), 2);
        sink.sync().await.unwrap();
        assert!(sink.files.as_ref().unwrap().unsynced.is_empty());
    }

    #[test]
    fn a_reopen_after_logrotate_writes_to_a_new_file_at_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        let mut sink = FileSink::new(
            "s",
            path.to_str().unwrap(),
            Encoding::Data,
            FsyncPolicy::Interval,
            Duration::from_secs(1),
            torn_tail(Encoding::Data, Limits::default(), 1),
        );
        let mut files = sink.files.take().unwrap();
        files.write(&[delivery("s", &["1"])]).unwrap();
        let rotated = dir.path().join("out.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        // Without a reopen the handle still writes to the moved file.
        files.write(&[delivery("s", &["2"])]).unwrap();
        sink.files = Some(files);
        sink.reopen();
        let mut files = sink.files.take().unwrap();
        assert!(files.reopen_requested);
        files.write(&[delivery("s", &["3"])]).unwrap();
        assert!(!files.reopen_requested);
        // What went to the old file was synced before it was let go.
        assert!(files.unsynced.iter().all(|p| p == &path));
        assert_eq!(data_lines(&rotated), ["d1", "d2"]);
        assert_eq!(data_lines(&path), ["d3"]);
    }

    /// A writer that takes `room` bytes in pieces of at most `piece`, with an
    /// interruption now and then, then fails with `error` (or writes 0).
    struct Flaky {
        out: Vec<u8>,
        room: usize,
        piece: usize,
        calls: usize,
        error: Option<io::ErrorKind>,
    }

    impl Write for Flaky {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            // A writer retried forever fails the test at once.
            assert!(self.calls < 10_000, "written to {} times", self.calls);
            if self.calls.is_multiple_of(3) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(self.piece).min(self.room);
            if n == 0 && !buf.is_empty() {
                return match self.error {
                    Some(kind) => Err(kind.into()),
                    None => Ok(0),
                };
            }
            self.room -= n;
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_write_resumes_at_the_start_of_its_torn_line_at_every_byte() {
        let bytes = b"first line\nsecond\nthird and last\n";
        for error in [Some(io::ErrorKind::StorageFull), None] {
            for room in 0..bytes.len() {
                // The disk fills after `room` bytes; the reopened file has
                // the torn line cut; then the retry finishes.
                let mut disk = Flaky {
                    out: Vec::new(),
                    room,
                    piece: 4,
                    calls: 0,
                    error,
                };
                let mut written = 0;
                let failed = write_lines(&mut disk, bytes, &mut written).unwrap_err();
                let kind = error.unwrap_or(io::ErrorKind::WriteZero);
                assert_eq!(failed.kind(), kind, "room {room}");
                assert!(written <= room, "room {room}");
                assert!(
                    written == 0 || bytes[written - 1] == b'\n',
                    "room {room}: resumes mid-line at {written}"
                );
                let torn_cut = memchr::memrchr(b'\n', &disk.out).map_or(0, |i| i + 1);
                assert_eq!(torn_cut, written, "room {room}");
                disk.out.truncate(torn_cut);
                disk.room = usize::MAX;
                write_lines(&mut disk, bytes, &mut written).unwrap();
                assert_eq!(written, bytes.len());
                assert_eq!(disk.out, bytes, "room {room}");
            }
        }
    }

    #[test]
    fn the_largest_json_record_fits_the_torn_tail_bound_and_the_bound_is_tight() {
        let limits = Limits {
            max_line_bytes: 64,
            max_event_bytes: 1000,
        };
        let name = "\u{1}".repeat(8);
        let torn = torn_tail(Encoding::Json, limits, name.len());
        assert_eq!(torn.prefix, b"{\"stream\":");
        // Every byte a control character: each escaped as \u00XX.
        let mut records = Records::new(Arc::from(name.as_str()), SystemTime::UNIX_EPOCH, 0);
        let field = "\u{1}".repeat(limits.max_line_bytes);
        records.push(&EventRef {
            event: &field,
            data: &"\u{1}".repeat(limits.max_event_bytes),
            id: &field,
            retry: None,
        });
        let mut line = Vec::new();
        records.get(0).encode(Encoding::Json, &mut line);
        let longest_tear = line.len() as u64 - 1;
        assert!(longest_tear <= torn.max_bytes, "{longest_tear} > {torn:?}");
        assert!(
            torn.max_bytes - longest_tear < 64,
            "{torn:?} for {longest_tear}"
        );
        // Data lines: any text, up to the largest event and its line end.
        let torn = torn_tail(Encoding::Data, limits, name.len());
        assert_eq!(torn.prefix, b"");
        assert_eq!(torn.max_bytes, limits.max_event_bytes as u64 + 1);
    }

    #[test]
    fn batches_count_as_queues_do_and_hold_half_a_queue() {
        let record = delivery("s", &["12345"]);
        let record = record.records().next().unwrap();
        let counted = "message".len() + "12345".len() + "d12345".len() + 64;
        assert_eq!(record_bytes(&record), counted);
        let sink = FileSink::new(
            "s",
            "x",
            Encoding::Data,
            FsyncPolicy::Never,
            Duration::from_secs(1),
            torn_tail(Encoding::Data, Limits::default(), 1),
        );
        assert_eq!(sink.size(&record), counted);
        let batching = sink.batching();
        // As documented: file batches are bounded by 1 MiB of records only.
        assert_eq!(BATCH_BYTES, 1024 * 1024);
        assert_eq!(batching.max_bytes, BATCH_BYTES);
        assert_eq!(batching.max_events, usize::MAX);
    }
}
