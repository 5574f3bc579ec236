//! Validating configuration tables: located errors ([`ConfigError`]),
//! `${VAR}` expansion, and the checks many tables share (URLs, headers,
//! durations, bounded numbers, names, secrets).
//!
//! It knows no table's meaning. [`crate::config`] (the file, its streams,
//! checkpoints and cluster) and each sink type's own `config` module build on
//! it, so a sink's keys are validated beside the sink with errors exactly as
//! located as the file's own.

// A config error is built once, on the way to exiting; boxing it to keep
// `Result` small would buy nothing.
#![allow(clippy::result_large_err)]

mod env;
mod error;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

pub use env::{expand, ExpandError};
pub use error::ConfigError;

/// The longest stream or sink name: names become file names.
pub const MAX_NAME_BYTES: usize = 128;

/// A secret from the configuration. It never prints: not in `Debug`, logs,
/// `check` output or errors.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A duration that remembers where it was written, for later errors about it.
pub fn spanned_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Spanned<Duration>>, D::Error> {
    let text = Spanned::<String>::deserialize(d)?;
    let span = text.span();
    humantime::parse_duration(text.get_ref())
        .map(|value| Some(Spanned::new(span, value)))
        .map_err(|e| {
            serde::de::Error::custom(format!("invalid duration `{}`: {e}", text.get_ref()))
        })
}

pub const DURATION_HELP: &str = "durations are written like \"250ms\", \"30s\", \"2m\" or \"1h\"";

pub fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    let value = humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration `{text}`: {e}")))?;
    if value > MAX_DURATION {
        return Err(serde::de::Error::custom(format!(
            "invalid duration `{text}`: durations are at most 10 years"
        )));
    }
    Ok(Some(value))
}

/// The longest duration any setting takes: far beyond any sensible timeout,
/// and far from the clock's limits.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A duration that must be above zero: an interval (a zero period would spin or
/// panic a timer) or a timeout (zero would fail every attempt).
pub fn nonzero_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    match duration(d)? {
        Some(zero) if zero.is_zero() => Err(serde::de::Error::custom(
            "invalid duration `0s`: this setting must be above zero",
        )),
        other => Ok(other),
    }
}

/// Turns a `toml` error into ours, in the words of this file's keys.
pub fn toml_error(path: &Path, source: &str, error: &toml::de::Error) -> ConfigError {
    let message = error.message().trim().to_owned();
    let span = error.span().unwrap_or(0..0);
    let mut err = ConfigError::at(path, source, span, &message);
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let (key, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
        err.message = format!("unknown key {key}");
        err.key = Some(key.trim_matches('`').to_owned());
        if !expected.is_empty() {
            let expected = expected.trim_start_matches("one of ").replace('`', "");
            err.help = Some(format!("expected one of: {expected}"));
        }
    } else if let Some(key) = message.strip_prefix("missing field ") {
        err.message = format!("missing key {key}");
        err.key = Some(key.trim_matches('`').to_owned());
    } else if message.starts_with("invalid duration") {
        err.help = Some(DURATION_HELP.to_owned());
    } else if message.starts_with("unknown variant") {
        err.message = message.replace("unknown variant", "unknown value");
    }
    err
}

/// Checks values of one configuration file, and locates what it refuses.
pub struct Validator<'a> {
    path: &'a Path,
    source: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Validator<'a> {
    /// A validator for `source`, read from `path`, taking `${VAR}`s from `env`.
    pub fn new(
        path: &'a Path,
        source: &'a str,
        env: &'a dyn Fn(&str) -> Option<String>,
    ) -> Validator<'a> {
        Validator { path, source, env }
    }

    /// The file the configuration was read from.
    pub fn path(&self) -> &Path {
        self.path
    }

    pub fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError::at(self.path, self.source, span, message)
    }

    /// An error about `key` of the table at `span`: at the line that sets the
    /// key if the table spells it out (a value given as a duration has no
    /// span of its own), else at the table. The key is named either way.
    pub fn error_at_key(
        &self,
        span: Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        // The span may cover the header only: read on to the next table.
        let text = &self.source[span.start.min(self.source.len())..];
        let mut offset = span.start;
        let mut at = span.clone();
        for (n, line) in text.split_inclusive('\n').enumerate() {
            let trimmed = line.trim_start();
            if n > 0 && trimmed.starts_with('[') {
                break;
            }
            if let Some((k, _)) = trimmed.split_once('=') {
                if k.trim().trim_matches('"') == key {
                    let start = offset + (line.len() - trimmed.len());
                    at = start..start + key.len();
                    break;
                }
            }
            offset += line.len();
        }
        self.error(at, message).with_key(key.to_owned())
    }

    /// Expands `${VAR}`s in a string value, pointing at the reference on error.
    pub fn expand(&self, value: &Spanned<String>) -> Result<String, ConfigError> {
        expand(value.get_ref(), |name| (self.env)(name)).map_err(|e| {
            // +1 skips the opening quote of the TOML string.
            let at = |offset: usize| value.span().start + 1 + offset;
            match e {
                ExpandError::Unset { name, offset } => self
                    .error(at(offset)..at(offset), format!("environment variable `{name}` is not set"))
                    .with_help(format!(
                        "set {name} in the environment (Environment= or EnvironmentFile= under systemd), \
                         give a default with ${{{name}:-value}}, or write $$ for a literal $"
                    )),
                ExpandError::Unclosed { offset } => self
                    .error(at(offset)..at(offset), "`${` without a closing `}`")
                    .with_help("write ${NAME}, or $$ for a literal $"),
            }
        })
    }

    /// A number within `range`, or `default` when the key is absent.
    pub fn bounded(
        &self,
        value: &Option<Spanned<usize>>,
        key: &str,
        range: std::ops::RangeInclusive<usize>,
        default: usize,
    ) -> Result<usize, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        let n = *value.get_ref();
        if range.contains(&n) {
            return Ok(n);
        }
        Err(self
            .error(
                value.span(),
                format!(
                    "`{key}` is {n}; it must be between {} and {}",
                    range.start(),
                    range.end()
                ),
            )
            .with_key(key.to_owned()))
    }

    pub fn check_name(
        &self,
        kind: &str,
        name: &str,
        span: Range<usize>,
    ) -> Result<(), ConfigError> {
        if name.len() > MAX_NAME_BYTES {
            return Err(self
                .error(
                    span,
                    format!(
                        "{kind} name `{}…` is {} bytes long; at most {MAX_NAME_BYTES}",
                        &name[..name.char_indices().nth(32).map_or(name.len(), |(i, _)| i)],
                        name.len()
                    ),
                )
                .with_help("names become file names (checkpoints, `{stream}` paths), which have a length limit"));
        }
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            && !name.starts_with('.');
        if valid {
            Ok(())
        } else {
            Err(self
                .error(span, format!("invalid {kind} name `{name}`"))
                .with_help("names use letters, digits, `_`, `-` and `.` (they become file names)"))
        }
    }

    /// An `http://` or `https://` URL, after `${VAR}` expansion.
    pub fn http_url(&self, value: &Spanned<String>) -> Result<reqwest::Url, ConfigError> {
        let url_text = self.expand(value)?;
        let url = reqwest::Url::parse(&url_text).map_err(|e| {
            self.error(value.span(), format!("invalid url: {e}"))
                .with_key("url")
                .with_help("write a full URL, e.g. \"https://example.com/events\"")
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(self
                .error(
                    value.span(),
                    format!("unsupported url scheme `{}`", url.scheme()),
                )
                .with_key("url")
                .with_help("use http:// or https://"));
        }
        Ok(url)
    }

    /// Request headers, `${VAR}`s expanded and every value marked sensitive.
    pub fn headers(
        &self,
        raw: &BTreeMap<String, Spanned<String>>,
    ) -> Result<HeaderMap, ConfigError> {
        let mut headers = HeaderMap::new();
        for (header, value) in raw {
            let header_name = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
                self.error(value.span(), format!("invalid header name `{header}`"))
                    .with_key(header.clone())
            })?;
            let text = self.expand(value)?;
            let mut header_value = HeaderValue::from_str(&text).map_err(|_| {
                // The value may hold a secret: say where, never what.
                self.error(value.span(), format!("invalid value for header `{header}`"))
                    .with_key(header.clone())
                    .with_help("header values cannot contain line breaks or control characters")
            })?;
            header_value.set_sensitive(true);
            headers.insert(header_name, header_value);
        }
        Ok(headers)
    }

    /// A duration above zero, or `default` when the key is absent.
    pub fn above_zero(
        &self,
        key: &str,
        value: &Option<Spanned<Duration>>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            None => Ok(default),
            Some(v) if v.get_ref().is_zero() => Err(self
                .error(v.span(), format!("`{key}` must be above zero"))
                .with_key(key.to_owned())),
            Some(v) => Ok(*v.get_ref()),
        }
    }

    /// A path, after `${VAR}` expansion.
    pub fn path_value(
        &self,
        value: &Option<Spanned<String>>,
    ) -> Result<Option<PathBuf>, ConfigError> {
        value
            .as_ref()
            .map(|v| self.expand(v).map(PathBuf::from))
            .transpose()
    }

    /// `backoff_initial` and `backoff_max` of a table at `span`, above zero
    /// and in order.
    pub fn backoff(
        &self,
        span: Range<usize>,
        initial: &Option<Spanned<Duration>>,
        max: &Option<Spanned<Duration>>,
        defaults: (Duration, Duration),
    ) -> Result<(Duration, Duration), ConfigError> {
        let backoff_initial = self.above_zero("backoff_initial", initial, defaults.0)?;
        let backoff_max = self.above_zero("backoff_max", max, defaults.1)?;
        if backoff_initial > backoff_max {
            let at = initial.as_ref().map_or(span, Spanned::span);
            return Err(self
                .error(at, "`backoff_initial` must be at most `backoff_max`")
                .with_key("backoff_initial"));
        }
        Ok((backoff_initial, backoff_max))
    }

    /// A secret given inline (`key`) or in a file (`file_key`), one of them or
    /// neither. Errors name the key and the file, never the value. A file's
    /// trailing line break (as `echo` and editors write) is not part of it.
    pub fn secret_or_file(
        &self,
        inline: (&str, &Option<Spanned<String>>),
        file: (&str, &Option<Spanned<String>>),
    ) -> Result<Option<Secret>, ConfigError> {
        let ((key, inline), (file_key, file)) = (inline, file);
        let secret = match (inline, file) {
            (None, None) => return Ok(None),
            (Some(_), Some(file)) => {
                return Err(self
                    .error(
                        file.span(),
                        format!("set `{key}` or `{file_key}`, not both"),
                    )
                    .with_key(file_key.to_owned()))
            }
            (Some(secret), None) => {
                let text = self.expand(secret)?;
                if text.is_empty() {
                    return Err(self
                        .error(secret.span(), format!("`{key}` is empty"))
                        .with_key(key.to_owned())
                        .with_help(format!(
                            "give it a value, e.g. {key} = \"${{WEBHOOK_SECRET}}\""
                        )));
                }
                text.into_bytes()
            }
            (None, Some(file)) => {
                let path = PathBuf::from(self.expand(file)?);
                let mut bytes = std::fs::read(&path).map_err(|e| {
                    self.error(
                        file.span(),
                        format!("cannot read {file_key} {}: {e}", path.display()),
                    )
                    .with_key(file_key.to_owned())
                })?;
                while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    bytes.pop();
                }
                if bytes.is_empty() {
                    return Err(self
                        .error(
                            file.span(),
                            format!("{file_key} {} is empty", path.display()),
                        )
                        .with_key(file_key.to_owned()));
                }
                bytes
            }
        };
        Ok(Some(Secret::new(secret)))
    }

    /// Refuses the first key of `table` not in `known`, listing those.
    pub fn refuse_unknown_keys(
        &self,
        table: &DeTable<'_>,
        known: &[&str],
    ) -> Result<(), ConfigError> {
        match keys_of(table)
            .into_iter()
            .find(|(key, _)| !known.contains(&key.as_str()))
        {
            None => Ok(()),
            Some((key, at)) => Err(self.unknown_key(key, at, known)),
        }
    }

    /// "unknown key", with the keys the table does take.
    pub fn unknown_key(&self, key: String, at: Range<usize>, known: &[&str]) -> ConfigError {
        let mut known = known.to_vec();
        known.sort_unstable();
        self.error(at, format!("unknown key `{key}`"))
            .with_key(key)
            .with_help(format!("expected one of: {}", known.join(", ")))
    }

    /// Deserializes one table (as [`split_table`] or the file gives it),
    /// spans intact, turning `toml`'s errors into located ones.
    pub fn table<'de, T: Deserialize<'de>>(
        &self,
        table: Spanned<DeTable<'de>>,
    ) -> Result<T, ConfigError> {
        let (span, table) = (table.span(), table.into_inner());
        let value = Spanned::new(span, DeValue::Table(table));
        T::deserialize(toml::de::ValueDeserializer::from(value))
            .map_err(|e| toml_error(self.path, self.source, &e))
    }
}

/// Splits `table` in two: the keys in `keys`, and all the others; both keep
/// the table's span.
pub fn split_table<'de>(
    table: Spanned<DeTable<'de>>,
    keys: &[&str],
) -> (Spanned<DeTable<'de>>, Spanned<DeTable<'de>>) {
    let span = table.span();
    let mut taken = DeTable::new();
    let mut rest = DeTable::new();
    for (key, value) in table.into_inner() {
        if keys.contains(&key.get_ref().as_ref()) {
            taken.insert(key, value);
        } else {
            rest.insert(key, value);
        }
    }
    (Spanned::new(span.clone(), taken), Spanned::new(span, rest))
}

/// The keys a table struct takes: the field names its `Deserialize`
/// implementation asks for (as `#[serde(rename)]` spells them). Errors that
/// say which keys another sink type takes are built from these, so no list of
/// keys is kept by hand.
pub fn field_names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Fields(&'static [&'static str]);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("field names read")
        }
    }
    impl std::error::Error for Stop {}
    impl serde::de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    struct Recorder<'f>(&'f mut Fields);
    impl<'de> serde::Deserializer<'de> for Recorder<'_> {
        type Error = Stop;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Stop> {
            self.0 .0 = fields;
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields = Fields(&[]);
    let _ = T::deserialize(Recorder(&mut fields));
    fields.0
}

/// The keys of `table`, with where each is written.
pub fn keys_of(table: &DeTable<'_>) -> Vec<(String, Range<usize>)> {
    table
        .keys()
        .map(|key| (key.get_ref().to_string(), key.span()))
        .collect()
}
