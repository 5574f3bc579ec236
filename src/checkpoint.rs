//! Per-stream resume points in the state directory.
//!
//! Each stream has one small JSON file, `<data_dir>/checkpoints/<stream>.json`:
//!
//! ```text
//! {"stream":"wiki","last_event_id":"12345","saved_at":"2026-11-25T23:36:07Z"}
//! ```
//!
//! A file is replaced atomically: the new content goes to a temporary file that
//! is fsynced, renamed over the old one, and the directory is fsynced, so after a
//! crash or power loss the file holds either the old checkpoint or the new one,
//! never a mix. A file that exists but cannot be read or understood stops the
//! daemon with an error naming it: silently starting over could skip events.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Why a checkpoint could not be read or written.
#[derive(Debug)]
pub struct CheckpointError {
    pub path: PathBuf,
    pub problem: String,
    pub help: String,
}

impl std::fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "error: checkpoint {}: {}\n  = help: {}",
            self.path.display(),
            self.problem,
            self.help
        )
    }
}

impl std::error::Error for CheckpointError {}

#[derive(Serialize, Deserialize)]
struct CheckpointFile {
    stream: String,
    last_event_id: String,
    #[serde(default)]
    saved_at: Option<String>,
}

/// The checkpoints of every stream, in one directory.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
}

impl CheckpointStore {
    /// Opens (creating if needed) `<data_dir>/checkpoints`.
    pub fn open(data_dir: &Path) -> Result<Self, CheckpointError> {
        let dir = data_dir.join("checkpoints");
        fs::create_dir_all(&dir).map_err(|e| CheckpointError {
            path: dir.clone(),
            problem: format!("cannot create the checkpoint directory: {e}"),
            help:
                "set `data_dir` to a directory this user can write (StateDirectory= under systemd)"
                    .into(),
        })?;
        Ok(CheckpointStore { dir })
    }

    pub fn path(&self, stream: &str) -> PathBuf {
        self.dir.join(format!("{stream}.json"))
    }

    /// The saved last event id of `stream`, or `None` if it has no checkpoint yet.
    pub fn load(&self, stream: &str) -> Result<Option<String>, CheckpointError> {
        let path = self.path(stream);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(CheckpointError {
                    path,
                    problem: format!("cannot be read: {e}"),
                    help: "fix its permissions so the daemon's user can read it".into(),
                })
            }
        };
        let way_out = format!(
            "fix it by hand ({{\"stream\":\"{stream}\",\"last_event_id\":\"<id>\"}}), or delete it to \
             start from `initial_last_event_id` (events since the last checkpoint may then be missed)"
        );
        let file: CheckpointFile = serde_json::from_str(&text).map_err(|e| CheckpointError {
            path: path.clone(),
            problem: format!("is corrupt: {e}"),
            help: way_out.clone(),
        })?;
        if file.stream != stream {
            return Err(CheckpointError {
                path,
                problem: format!("belongs to stream `{}`, not `{stream}`", file.stream),
                help: way_out,
            });
        }
        Ok(Some(file.last_event_id))
    }

    /// Atomically replaces the checkpoint of `stream`.
    pub fn save(&self, stream: &str, last_event_id: &str) -> io::Result<()> {
        let record = CheckpointFile {
            stream: stream.to_owned(),
            last_event_id: last_event_id.to_owned(),
            saved_at: Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string()),
        };
        let mut bytes = serde_json::to_vec(&record).map_err(io::Error::other)?;
        bytes.push(b'\n');
        let path = self.path(stream);
        let tmp = self.dir.join(format!(".{stream}.json.tmp"));
        {
            let mut file = File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()
    }
}

/// One stream's checkpoint as the writer tracks it.
pub struct Tracked {
    pub stream: String,
    pub tracker: Arc<crate::ack::AckTracker>,
    /// What is on disk now.
    pub saved: Arc<str>,
    /// Set to the Unix time of each save, for the checkpoint-age metric.
    pub saved_at: crate::metrics::SecondsGauge,
}

impl Tracked {
    /// Saves the tracker's checkpoint if it moved. Errors are logged, not fatal:
    /// the next round tries again, and an old checkpoint only means replays.
    pub fn flush(&mut self, store: &CheckpointStore) {
        let current = self.tracker.checkpoint();
        if *current == *self.saved {
            return;
        }
        match store.save(&self.stream, &current) {
            Ok(()) => {
                self.saved = current;
                self.saved_at.set(crate::metrics::unix_now());
            }
            Err(e) => tracing::warn!(
                stream = %self.stream,
                "cannot save checkpoint to {}: {e}; retrying at the next interval",
                store.path(&self.stream).display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_and_refuses_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path()).unwrap();
        assert_eq!(store.load("wiki").unwrap(), None);
        store.save("wiki", "12\"34").unwrap();
        assert_eq!(store.load("wiki").unwrap().as_deref(), Some("12\"34"));
        store.save("wiki", "99").unwrap();
        assert_eq!(store.load("wiki").unwrap().as_deref(), Some("99"));
        std::fs::write(store.path("wiki"), "{\"stream\":\"wi").unwrap();
        let err = store.load("wiki").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("wiki.json") && text.contains("corrupt"),
            "{text}"
        );
        assert!(text.contains("delete it"), "{text}");
    }
}
