//! The one preparation path `check`, start-up and reload share: everything
//! about a configuration that can fail beyond its syntax (CA files that do not
//! read or hold no certificate, sink paths that are directories, directories
//! that cannot be created), tried before any of it runs. A configuration that
//! passes here starts; a reload that fails here is refused and the running
//! configuration keeps running.
//!
//! [`Mode::Check`] changes nothing on disk. [`Mode::Run`] also creates the
//! directories the sinks and checkpoints need, and opens (creating if needed,
//! never truncating or repairing) every file a file sink will append to.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::config::{CheckpointBackendConfig, Config, SinkKind};
use crate::files;

/// Whether preparation may touch the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `sse-relay check`: look, change nothing.
    Check,
    /// Start-up and reload: create directories, open files.
    Run,
}

/// Prepares `config`; every problem found, one per line, if any.
pub fn prepare(config: &Config, mode: Mode) -> Result<(), String> {
    let mut problems = Vec::new();
    for stream in config.streams.values() {
        if let Some(ca_file) = &stream.ca_file {
            if let Err(problem) = check_ca_file(ca_file) {
                problems.push(format!("error: stream `{}`: {problem}", stream.name));
            }
        }
    }
    if config.checkpoints == CheckpointBackendConfig::Local
        && !config.data_dir.as_os_str().is_empty()
    {
        if let Err(problem) = directory(&config.data_dir.join("checkpoints"), mode) {
            problems.push(format!("error: data_dir: {problem}"));
        }
    }
    for sink in config.sinks.values() {
        let mut fail =
            |problem: String| problems.push(format!("error: sink `{}`: {problem}", sink.name));
        match &sink.kind {
            SinkKind::File { path, .. } => {
                for stream in config
                    .streams
                    .values()
                    .filter(|s| sink.takes_stream(&s.name))
                {
                    let file = path.replace("{stream}", &stream.name);
                    if let Err(problem) = append_target(Path::new(&file), mode) {
                        fail(problem);
                    }
                    if !path.contains("{stream}") {
                        break;
                    }
                }
            }
            SinkKind::Webhook(webhook) => {
                if let Some(ca_file) = &webhook.ca_file {
                    if let Err(problem) = check_ca_file(ca_file) {
                        fail(problem);
                    }
                }
                if let Some(dead) = &webhook.dead_letter_path {
                    if let Err(problem) = append_target(dead, mode) {
                        fail(problem);
                    }
                }
            }
            SinkKind::Stdout | SinkKind::Nats(_) => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
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

/// A directory that exists or (in [`Mode::Run`]) can be created.
fn directory(dir: &Path, mode: Mode) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} is not a directory", dir.display())),
        Err(_) if mode == Mode::Run => files::create_dir_all(dir)
            .map_err(|e| format!("cannot create directory {}: {e}", dir.display())),
        Err(_) => {
            // Check mode: the nearest existing ancestor must be a directory.
            match dir.ancestors().skip(1).find(|a| a.exists()) {
                Some(ancestor) if !ancestor.is_dir() => Err(format!(
                    "{} cannot be created: {} is not a directory",
                    dir.display(),
                    ancestor.display()
                )),
                _ => Ok(()),
            }
        }
    }
}

/// A file to append to: not a directory, its directory usable, and (in
/// [`Mode::Run`]) opened for appending once.
fn append_target(path: &Path, mode: Mode) -> Result<(), String> {
    if path.is_dir() {
        return Err(format!("{} is a directory, not a file", path.display()));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        directory(parent, mode)?;
    }
    if mode == Mode::Run {
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(files::OUTPUT_MODE)
            .open(path)
            .map_err(|e| format!("cannot open {} for appending: {e}", path.display()))?;
    }
    Ok(())
}
