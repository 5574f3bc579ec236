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

use std::path::Path;

use crate::config::{CheckpointBackendConfig, Config, ConfigError};
use crate::preflight::Findings;
pub use crate::preflight::Mode;

/// Prepares `config`, read from `config_file` (for locating problems; `None`
/// for a configuration built in code). Every problem found, each located as
/// a configuration error is, one after the other.
pub fn prepare(config: &Config, mode: Mode, config_file: Option<&Path>) -> Result<(), String> {
    let mut findings = Findings::new(mode);
    for stream in config.streams.values() {
        if let Some(ca_file) = &stream.ca_file {
            findings.in_table(format!("streams.{}", stream.name));
            findings.ca_file("ca_file", ca_file);
        }
    }
    findings.in_table("");
    if config.checkpoints == CheckpointBackendConfig::Local
        && !config.data_dir.as_os_str().is_empty()
    {
        findings.directory("data_dir", &config.data_dir.join("checkpoints"));
    }
    if let CheckpointBackendConfig::Nats(nats) = &config.checkpoints {
        if let Some(ca_file) = &nats.connection.ca_file {
            findings.in_table("checkpoints");
            findings.ca_file("ca_file", ca_file);
        }
    }
    for sink in config.sinks.values() {
        findings.in_table(format!("sinks.{}", sink.name));
        let streams: Vec<&str> = config
            .streams
            .keys()
            .map(String::as_str)
            .filter(|s| sink.takes_stream(s))
            .collect();
        sink.kind.prepare(&streams, &mut findings);
    }
    let problems = findings.into_problems();
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
