//! Checks that a file or directory a configuration names is usable, the
//! pieces [`crate::prepare`] and each sink type's `prepare` are made of.
//! Problems are collected, not returned at the first: `check` shows them all.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::files;

/// Whether preparation may touch the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `sse-relay check` and start-up: look, change nothing.
    Start,
    /// A reload: create directories, open files.
    Reload,
}

/// One problem: where in the configuration (table and key), and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The table, e.g. `sinks.archive`; empty for the top level.
    pub table: String,
    pub key: &'static str,
    pub message: String,
}

/// The problems found so far, and the table now being checked.
#[derive(Debug)]
pub struct Findings {
    mode: Mode,
    table: String,
    problems: Vec<Problem>,
}

impl Findings {
    pub fn new(mode: Mode) -> Findings {
        Findings {
            mode,
            table: String::new(),
            problems: Vec::new(),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Later problems are about `table` (`""` for the top level).
    pub fn in_table(&mut self, table: impl Into<String>) {
        self.table = table.into();
    }

    /// Records `result`'s problem, if any, as one about `key`.
    pub fn note(&mut self, key: &'static str, result: Result<(), String>) {
        if let Err(message) = result {
            self.problems.push(Problem {
                table: self.table.clone(),
                key,
                message,
            });
        }
    }

    /// `key` names a CA file: it must read and hold a certificate.
    pub fn ca_file(&mut self, key: &'static str, path: &Path) {
        let result = crate::http::read_ca_file(path)
            .map(drop)
            .map_err(|e| e.to_string());
        self.note(key, result);
    }

    /// `key` names a file to append to.
    pub fn append_target(&mut self, key: &'static str, path: &Path) {
        let result = append_target(path, self.mode);
        self.note(key, result);
    }

    /// `key` names a directory.
    pub fn directory(&mut self, key: &'static str, dir: &Path) {
        let result = directory(dir, self.mode);
        self.note(key, result);
    }

    pub fn into_problems(self) -> Vec<Problem> {
        self.problems
    }
}

/// A directory that exists or (in [`Mode::Reload`]) can be created.
fn directory(dir: &Path, mode: Mode) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} is not a directory", dir.display())),
        Err(_) if mode == Mode::Reload => files::create_dir_all(dir)
            .map_err(|e| format!("cannot create directory {}: {e}", dir.display())),
        Err(_) => Ok(()),
    }
}

/// A file to append to: not a directory and (on reload) its directory
/// created and the file opened for appending once.
fn append_target(path: &Path, mode: Mode) -> Result<(), String> {
    if path.is_dir() {
        return Err(format!("{} is a directory, not a file", path.display()));
    }
    if mode == Mode::Reload {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            directory(parent, mode)?;
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(files::OUTPUT_MODE)
            .open(path)
            .map_err(|e| format!("cannot open {} for appending: {e}", path.display()))?;
    }
    Ok(())
}
