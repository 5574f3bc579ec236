//! The connection keys of a NATS client (`url` or `urls`, credentials, TLS),
//! as `nats` sinks and `[checkpoints] backend = "nats"` write them.

// A config error is built once, on the way to exiting.
#![allow(clippy::result_large_err)]

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::validate::{spanned_duration, ConfigError, Secret, Validator};

/// How to reach a NATS server: used by `nats` sinks and by the NATS
/// checkpoint backend (and so by `[cluster]`).
#[derive(Debug, Clone, PartialEq)]
pub struct NatsConnection {
    /// `nats://host:port` or `tls://host:port`, one or more (a cluster's seeds).
    pub urls: Vec<String>,
    pub token: Option<Secret>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// A `.creds` file (JWT + NKey seed), as `nsc` writes them.
    pub credentials_file: Option<PathBuf>,
    pub tls_required: bool,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
}

/// The connection keys, as written in the table that holds them (split off
/// it with [`crate::validate::split_table`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConnection {
    url: Option<Spanned<String>>,
    urls: Option<Spanned<Vec<Spanned<String>>>>,
    token: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    credentials_file: Option<Spanned<String>>,
    tls_required: Option<Spanned<bool>>,
    ca_file: Option<Spanned<String>>,
    #[serde(default, deserialize_with = "spanned_duration")]
    connect_timeout: Option<Spanned<Duration>>,
}

impl RawConnection {
    /// The keys this table takes.
    pub fn keys() -> &'static [&'static str] {
        crate::validate::field_names::<RawConnection>()
    }

    /// Validates the connection keys of the table at `span`.
    pub fn validate(
        &self,
        v: &Validator,
        span: Range<usize>,
    ) -> Result<NatsConnection, ConfigError> {
        let raw = self;
        let mut urls = Vec::new();
        let mut given = Vec::new();
        if let Some(url) = &raw.url {
            given.push(url);
        }
        if let Some(list) = &raw.urls {
            if raw.url.is_some() {
                return Err(v
                    .error(list.span(), "set `url` or `urls`, not both")
                    .with_key("urls"));
            }
            given.extend(list.get_ref().iter());
        }
        if given.is_empty() {
            return Err(v
                .error(span, "missing key `url` for a NATS connection")
                .with_key("url")
                .with_help("e.g. url = \"nats://127.0.0.1:4222\""));
        }
        for value in given {
            let text = v.expand(value)?;
            let scheme = text.split_once("://").map(|(scheme, _)| scheme);
            if !matches!(scheme, Some("nats" | "tls")) {
                return Err(v
                    .error(
                        value.span(),
                        format!(
                            "unsupported NATS url `{}`",
                            crate::http::redact::redact_url_text(&text)
                        ),
                    )
                    .with_key("url")
                    .with_help("write nats://host:port, or tls://host:port for TLS"));
            }
            urls.push(text);
        }
        let secret = |value: &Option<Spanned<String>>, key: &str| -> Result<_, ConfigError> {
            match value {
                None => Ok(None),
                Some(given) => {
                    let text = v.expand(given)?;
                    if text.is_empty() {
                        return Err(v
                            .error(given.span(), format!("`{key}` is empty"))
                            .with_key(key.to_owned()));
                    }
                    Ok(Some(Secret::new(text)))
                }
            }
        };
        let token = secret(&raw.token, "token")?;
        let password = secret(&raw.password, "password")?;
        let user = raw.user.as_ref().map(|u| v.expand(u)).transpose()?;
        let credentials_file = raw
            .credentials_file
            .as_ref()
            .map(|f| v.expand(f).map(PathBuf::from))
            .transpose()?;
        if user.is_some() != password.is_some() {
            let at = raw
                .user
                .as_ref()
                .or(raw.password.as_ref())
                .map_or(span.clone(), Spanned::span);
            return Err(v
                .error(at, "`user` and `password` go together")
                .with_key(if user.is_some() { "password" } else { "user" }));
        }
        let methods = [token.is_some(), user.is_some(), credentials_file.is_some()];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err(v
                .error(span, "more than one way to authenticate to NATS")
                .with_help("set one of: `token`, `user` + `password`, `credentials_file`"));
        }
        let connect_timeout = match &raw.connect_timeout {
            None => Duration::from_secs(5),
            Some(t) if t.get_ref().is_zero() => {
                return Err(v
                    .error(t.span(), "`connect_timeout` must be above zero")
                    .with_key("connect_timeout"))
            }
            Some(t) => *t.get_ref(),
        };
        Ok(NatsConnection {
            urls,
            token,
            user,
            password,
            credentials_file,
            tls_required: raw.tls_required.as_ref().is_some_and(|t| *t.get_ref()),
            ca_file: raw
                .ca_file
                .as_ref()
                .map(|f| v.expand(f).map(PathBuf::from))
                .transpose()?,
            connect_timeout,
        })
    }
}
