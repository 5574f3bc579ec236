//! Credentials that rotate: the `Authorization` header a stream's or a
//! webhook's requests carry when their table has `auth`, renewed without a
//! reload.
//!
//! * `bearer_file`: the file is read before every attempt, so a token
//!   rotated on disk (systemd `LoadCredential=`, a sidecar, a cron job) is
//!   used at the next connection.
//! * `oauth2_client_credentials`: tokens come from the token endpoint
//!   ([`oauth2`]), cached and renewed before they expire; owners with the
//!   same settings share one token.
//!
//! On a 401 the owner calls [`Credentials::renew`] and tries once more at
//! once. Nothing here puts a token, a secret or a token endpoint's answer
//! into an error or a log line: errors name the file or the endpoint, its
//! status and its OAuth2 `error` code only.

pub mod config;
pub mod oauth2;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use reqwest::header::HeaderValue;

pub use config::{AuthConfig, ClientAuth, OAuth2Config, RawAuth};

/// Why no credentials could be had for an attempt. The attempt fails with
/// this, and the owner's backoff applies.
#[derive(Debug)]
pub enum AuthError {
    /// The bearer token file could not be read.
    FileUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The bearer token file holds nothing but whitespace.
    FileEmpty { path: PathBuf },
    /// The token (from a file or an endpoint) cannot be sent as a header
    /// value (control characters, a line break inside).
    TokenNotAHeader { from: String },
    /// The token endpoint could not be reached or did not answer in time.
    EndpointUnreachable { url: String, reason: String },
    /// The token endpoint answered with an error status.
    EndpointRefused {
        url: String,
        status: u16,
        /// RFC 6749 5.2's `error` code, when the answer has one.
        error: Option<String>,
    },
    /// The token endpoint answered 2xx with something that is not a token.
    EndpointAnswerInvalid { url: String, problem: &'static str },
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::FileUnreadable { path, source } => {
                write!(
                    f,
                    "cannot read the bearer token file {}: {source}",
                    path.display()
                )
            }
            AuthError::FileEmpty { path } => {
                write!(f, "the bearer token file {} is empty", path.display())
            }
            AuthError::TokenNotAHeader { from } => write!(
                f,
                "the token from {from} holds characters a header cannot carry"
            ),
            AuthError::EndpointUnreachable { url, reason } => {
                write!(f, "the OAuth2 token endpoint {url} failed: {reason}")
            }
            AuthError::EndpointRefused { url, status, error } => {
                write!(f, "the OAuth2 token endpoint {url} answered HTTP {status}")?;
                match error {
                    Some(code) => write!(f, " (error {code})"),
                    None => Ok(()),
                }
            }
            AuthError::EndpointAnswerInvalid { url, problem } => {
                write!(
                    f,
                    "the OAuth2 token endpoint {url} answered without a usable token: {problem}"
                )
            }
        }
    }
}

impl std::error::Error for AuthError {}

/// The credentials of one stream or sink.
#[derive(Clone)]
pub enum Credentials {
    BearerFile(PathBuf),
    OAuth2(Arc<oauth2::TokenSource>),
}

impl Credentials {
    /// The credentials `config` describes. OAuth2 token sources are shared
    /// by every owner with the same settings and TLS trust.
    pub fn new(
        config: &AuthConfig,
        ca_file: Option<&Path>,
        tls_insecure: bool,
    ) -> Result<Credentials, crate::http::ClientError> {
        Ok(match config {
            AuthConfig::BearerFile { path } => Credentials::BearerFile(path.clone()),
            AuthConfig::OAuth2(oauth) => {
                Credentials::OAuth2(oauth2::TokenSource::shared(oauth, ca_file, tls_insecure)?)
            }
        })
    }

    /// The `Authorization` header for the next attempt (marked sensitive).
    pub async fn authorization(&self) -> Result<HeaderValue, AuthError> {
        match self {
            Credentials::BearerFile(path) => bearer_from_file(path).await,
            Credentials::OAuth2(source) => source.authorization().await,
        }
    }

    /// Called after a 401 answered a request that carried `used`: the next
    /// [`Credentials::authorization`] gets fresh credentials (a file is read
    /// anew anyway; a cached token is dropped unless already replaced).
    pub async fn renew(&self, used: &HeaderValue) {
        if let Credentials::OAuth2(source) = self {
            source.forget(used).await;
        }
    }
}

/// `Bearer <the file's contents, trailing whitespace trimmed>`.
async fn bearer_from_file(path: &Path) -> Result<HeaderValue, AuthError> {
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|source| AuthError::FileUnreadable {
            path: path.to_owned(),
            source,
        })?;
    let token = bytes.trim_ascii_end();
    if token.trim_ascii_start().is_empty() {
        return Err(AuthError::FileEmpty {
            path: path.to_owned(),
        });
    }
    bearer(token).ok_or_else(|| AuthError::TokenNotAHeader {
        from: path.display().to_string(),
    })
}

/// `Bearer <token>` as a sensitive header value, if the token can be one.
fn bearer(token: &[u8]) -> Option<HeaderValue> {
    let mut value = Vec::with_capacity(7 + token.len());
    value.extend_from_slice(b"Bearer ");
    value.extend_from_slice(token);
    let mut value = HeaderValue::from_bytes(&value).ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bearer_file_is_read_each_time_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let credentials = Credentials::BearerFile(path.clone());
        let err = credentials.authorization().await.unwrap_err();
        assert!(matches!(err, AuthError::FileUnreadable { .. }), "{err}");
        std::fs::write(&path, " \n").unwrap();
        let err = credentials.authorization().await.unwrap_err();
        assert!(matches!(err, AuthError::FileEmpty { .. }), "{err}");
        std::fs::write(&path, "first\n").unwrap();
        let value = credentials.authorization().await.unwrap();
        assert_eq!(value, "Bearer first");
        assert!(value.is_sensitive());
        std::fs::write(&path, "second  \r\n").unwrap();
        assert_eq!(credentials.authorization().await.unwrap(), "Bearer second");
        std::fs::write(&path, "bad\ntoken").unwrap();
        let err = credentials.authorization().await.unwrap_err();
        assert!(!err.to_string().contains("bad"), "{err}");
    }
}
