//! The one preparation path `check`, start-up and reload share: everything
//! about a configuration that can fail beyond its syntax (CA files that do not
//! read or hold no certificate, sink paths that are directories, directories
//! that cannot be created), tried before any of it runs. A configuration that
//! passes here starts; a reload that fails here is refused and the running
//! configuration keeps running.
//!
//! [`Mode::Start`] (`check` and start-up) changes nothing on disk and refuses
//! what can never work; a sink directory that is broken now (a file in its
//! place, a full disk) is not refused: the sink's writes fail and retry, and
//! its streams wait, until it is repaired. [`Mode::Reload`] goes further,
//! since refusing costs nothing there (the old configuration keeps running):
//! it creates the directories the sinks and checkpoints need and opens
//! (creating if needed, never truncating or repairing) every file a file sink
//! will append to.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::config::{CheckpointBackendConfig, Config, ConfigError, SinkKind};
use crate::files;

/// One problem: where in the configuration (table and key), and what.
struct Problem {
    table: String,
    key: &'static str,
    message: String,
}

/// Whether preparation may touch the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `sse-relay check` and start-up: look, change nothing.
    Start,
    /// A reload: create directories, open files.
    Reload,
}

/// Prepares `config`, read from `config_file` (for locating problems; `None`
/// for a configuration built in code). Every problem found, each located as
/// a configuration error is, one after the other.
pub fn prepare(config: &Config, mode: Mode, config_file: Option<&Path>) -> Result<(), String> {
    let mut problems = Vec::new();
    for stream in config.streams.values() {
        if let Some(ca_file) = &stream.ca_file {
            if let Err(message) = check_ca_file(ca_file) {
                problems.push(Problem {
                    table: format!("streams.{}", stream.name),
                    key: "ca_file",
                    message,
                });
            }
        }
    }
    if config.checkpoints == CheckpointBackendConfig::Local
        && !config.data_dir.as_os_str().is_empty()
    {
        if let Err(message) = directory(&config.data_dir.join("checkpoints"), mode) {
            problems.push(Problem {
                table: String::new(),
                key: "data_dir",
                message,
            });
        }
    }
    if let CheckpointBackendConfig::Nats(nats) = &config.checkpoints {
        if let Some(ca_file) = &nats.connection.ca_file {
            if let Err(message) = check_ca_file(ca_file) {
                problems.push(Problem {
                    table: "checkpoints".to_owned(),
                    key: "ca_file",
                    message,
                });
            }
        }
    }
    for sink in config.sinks.values() {
        let table = format!("sinks.{}", sink.name);
        let mut fail = |key: &'static str, message: String| {
            problems.push(Problem {
                table: table.clone(),
                key,
                message,
            })
        };
        match &sink.kind {
            SinkKind::File { path, .. } => {
                for stream in config
                    .streams
                    .values()
                    .filter(|s| sink.takes_stream(&s.name))
                {
                    let target = path.replace("{stream}", &stream.name);
                    if let Err(problem) = append_target(Path::new(&target), mode) {
                        fail("path", problem);
                    }
                    if !path.contains("{stream}") {
                        break;
                    }
                }
            }
            SinkKind::Webhook(webhook) => {
                if let Some(ca_file) = &webhook.ca_file {
                    if let Err(problem) = check_ca_file(ca_file) {
                        fail("ca_file", problem);
                    }
                }
                if let Some(dead) = &webhook.dead_letter_path {
                    if let Err(problem) = append_target(dead, mode) {
                        fail("dead_letter_path", problem);
                    }
                }
            }
            SinkKind::Nats(nats) => {
                if let Some(ca_file) = &nats.connection.ca_file {
                    if let Err(problem) = check_ca_file(ca_file) {
                        fail("ca_file", problem);
                    }
                }
            }
            SinkKind::Stdout => {}
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let source = config_file.and_then(|f| std::fs::read_to_string(f).ok());
    let shown: Vec<String> = problems
        .into_iter()
        .map(|p| match (config_file, &source) {
            (Some(file), Some(source)) => {
                let mut error = match locate(source, &p.table, p.key) {
                    Some(offset) => ConfigError::at(file, source, offset..offset, p.message),
                    None => ConfigError::file(file, p.message),
                };
                error.key = Some(p.key.to_owned());
                if !p.table.is_empty() {
                    error.table = Some(p.table);
                }
                error.to_string()
            }
            _ => format!("error: {} ({})", p.message, p.key),
        })
        .collect();
    Err(shown.join("\n"))
}

/// The byte offset of `key = ...` inside `[table]` (top level for an empty
/// table name), if the source spells it that way.
fn locate(source: &str, table: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    let mut offset = 0;
    for line in source.split_inclusive('\n') {
        let trimmed = line.trim();
        if let Some(inner) = trimmed.strip_prefix('[').and_then(|l| l.split(']').next()) {
            current = inner.trim_matches('[').trim().to_owned();
        } else if current == table {
            if let Some((k, _)) = trimmed.split_once('=') {
                if k.trim().trim_matches('"') == key {
                    return Some(offset + (line.len() - line.trim_start().len()));
                }
            }
        }
        offset += line.len();
    }
    None
}

/// A PEM CA bundle that reads and holds at least one certificate.
fn check_ca_file(path: &Path) -> Result<(), String> {
    let pem =
        std::fs::read(path).map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        format!(
            "ca_file {} holds no usable PEM certificate: {e}",
            path.display()
        )
    })?;
    if certs.is_empty() {
        return Err(format!(
            "ca_file {} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(())
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
