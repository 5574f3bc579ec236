//! Checkpoints in the state directory: `<data_dir>/checkpoints/<stream>.json`,
//! replaced atomically through [`crate::files::replace`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{decode, encode, CheckpointError};

/// The checkpoints of every stream, in one directory.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
}

impl CheckpointStore {
    /// Opens (creating if needed) `<data_dir>/checkpoints`.
    pub fn open(data_dir: &Path) -> Result<Self, CheckpointError> {
        let dir = data_dir.join("checkpoints");
        crate::files::create_dir_all(&dir).map_err(|e| CheckpointError {
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
        decode(stream, text.as_bytes(), path, way_out).map(Some)
    }

    /// Atomically replaces the checkpoint of `stream`.
    pub fn save(&self, stream: &str, last_event_id: &str) -> io::Result<()> {
        let bytes = encode(stream, last_event_id)?;
        // An exclusive, randomly named temporary file: a symlink planted in
        // the directory is never followed.
        crate::files::replace(&self.path(stream), &bytes, crate::files::STATE_MODE)
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

    #[test]
    fn a_checkpoint_that_cannot_be_read_is_an_error_not_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path()).unwrap();
        std::fs::create_dir(store.path("wiki")).unwrap();
        let err = store.load("wiki").unwrap_err();
        assert!(err.to_string().contains("cannot be read"), "{err}");
        assert_eq!(
            store.load("other").unwrap(),
            None,
            "a missing one is a fresh start"
        );
    }
}
