//! Configuration errors that read like the compiler's: what is wrong, where
//! (file:line:column, table and key), and what to do about it.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A problem with the configuration file, located in its source text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub message: String,
    pub file: PathBuf,
    /// 1-based line and column; `None` when the problem has no place in the file
    /// (e.g. the file cannot be read).
    pub position: Option<(usize, usize)>,
    /// The TOML table the problem is in, e.g. `streams.wiki`.
    pub table: Option<String>,
    /// The key the problem is about, e.g. `backoff_max`.
    pub key: Option<String>,
    pub help: Option<String>,
}

impl ConfigError {
    /// An error about the whole file.
    pub fn file(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            message: message.into(),
            file: file.to_owned(),
            position: None,
            table: None,
            key: None,
            help: None,
        }
    }

    /// An error at a byte range of the source. The table and key are read off
    /// the source around it, so every caller gets them for free.
    pub fn at(file: &Path, source: &str, span: Range<usize>, message: impl Into<String>) -> Self {
        let mut start = span.start.min(source.len());
        // A span computed inside a decoded string value (escapes make it shorter
        // than the source) may land inside a character: step back to its start.
        while !source.is_char_boundary(start) {
            start -= 1;
        }
        let (line, column) = line_column(source, start);
        ConfigError {
            message: message.into(),
            file: file.to_owned(),
            position: Some((line, column)),
            table: enclosing_table(source, start),
            key: key_on_line(source, start),
            help: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.message)?;
        match (&self.key, &self.table) {
            (Some(key), Some(table)) if !self.message.contains(key.as_str()) => {
                write!(f, " (key `{key}` in [{table}])")?
            }
            (Some(key), None) if !self.message.contains(key.as_str()) => {
                write!(f, " (key `{key}`)")?
            }
            (_, Some(table)) if !self.message.contains(table.as_str()) => {
                write!(f, " in [{table}]")?
            }
            _ => {}
        }
        match self.position {
            Some((line, column)) => write!(f, "\n  --> {}:{line}:{column}", self.file.display())?,
            None => write!(f, "\n  --> {}", self.file.display())?,
        }
        if let Some(help) = &self.help {
            write!(f, "\n  = help: {help}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The `[table]` header on the line of `offset` (an error about the table
/// itself, e.g. a missing key) or above it, if any.
fn enclosing_table(source: &str, offset: usize) -> Option<String> {
    let line_end = source[offset..]
        .find('\n')
        .map_or(source.len(), |i| offset + i);
    source[..line_end].lines().rev().find_map(|line| {
        let line = line.trim();
        let inner = line.strip_prefix("[[").and_then(|l| l.split("]]").next());
        let inner = inner.or_else(|| line.strip_prefix('[').and_then(|l| l.split(']').next()));
        inner.map(|name| name.trim().to_owned())
    })
}

/// The key assigned on the line holding `offset` (`key = value`).
fn key_on_line(source: &str, offset: usize) -> Option<String> {
    let line_start = source[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = source[offset..]
        .find('\n')
        .map_or(source.len(), |i| offset + i);
    let line = source[line_start..line_end].trim_start();
    if line.starts_with('[') || line.starts_with('#') {
        return None;
    }
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty()).then(|| key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_at_line_column_table_and_key() {
        let src = "data_dir = \"x\"\n\n[streams.wiki]\nurl = \"http://a\"\nbogus_key = 1\n";
        let offset = src.find("bogus_key").unwrap();
        let err = ConfigError::at(
            Path::new("/etc/x.toml"),
            src,
            offset..offset + 9,
            "unknown key",
        );
        assert_eq!(err.position, Some((5, 1)));
        assert_eq!(err.table.as_deref(), Some("streams.wiki"));
        assert_eq!(err.key.as_deref(), Some("bogus_key"));
        let text = err.to_string();
        assert!(text.contains("/etc/x.toml:5:1"), "{text}");
        assert!(text.contains("[streams.wiki]"), "{text}");
    }
}
