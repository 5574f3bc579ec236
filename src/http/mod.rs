//! What streams and the webhook sink share about HTTP: TLS setup, reading an
//! answer's headers, credentials from URLs, and the policies that keep
//! credentials safe ([`redirect`], [`redact`]) and memory bounded ([`decode`]).

pub mod decode;
pub mod redact;
pub mod redirect;

pub use redact::redact_url;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{ClientBuilder, Url};

/// Why a client's TLS settings could not be used. Both are fixed in the
/// configuration (or the file it names), not by retrying.
#[derive(Debug)]
pub enum TlsError {
    /// `ca_file` could not be read.
    CaFileUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `ca_file` was read but the TLS library refused what it holds.
    CaFileHasNoCertificate { path: PathBuf, reason: String },
    /// `ca_file` holds no PEM certificate at all (an empty file, a key).
    CaFileEmpty { path: PathBuf },
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::CaFileUnreadable { path, source } => {
                write!(f, "cannot read ca_file {}: {source}", path.display())
            }
            TlsError::CaFileHasNoCertificate { path, reason } => write!(
                f,
                "ca_file {} holds no usable PEM certificate: {reason}",
                path.display()
            ),
            TlsError::CaFileEmpty { path } => write!(
                f,
                "ca_file {} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::CaFileUnreadable { source, .. } => Some(source),
            TlsError::CaFileHasNoCertificate { .. } | TlsError::CaFileEmpty { .. } => None,
        }
    }
}

/// Why an HTTP client (a stream's, a webhook's, a token endpoint's) could
/// not be built. Fixed in the configuration or the files it names, not by
/// retrying.
#[derive(Debug)]
pub enum ClientError {
    /// Its `ca_file` is unusable.
    Tls(TlsError),
    /// The HTTP client library refused the settings.
    Build(reqwest::Error),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Tls(e) => e.fmt(f),
            ClientError::Build(e) => write!(f, "cannot build the HTTP client: {e}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Tls(e) => Some(e),
            ClientError::Build(e) => Some(e),
        }
    }
}

impl From<TlsError> for ClientError {
    fn from(e: TlsError) -> Self {
        ClientError::Tls(e)
    }
}

/// Reads `ca_file` and parses the certificates in it.
pub fn read_ca_file(ca_file: &Path) -> Result<Vec<reqwest::Certificate>, TlsError> {
    let pem = std::fs::read(ca_file).map_err(|source| TlsError::CaFileUnreadable {
        path: ca_file.to_owned(),
        source,
    })?;
    ca_certificates(ca_file, &pem)
}

/// The certificates of `pem`, read from `ca_file`: at least one, or an error
/// naming the file.
pub fn ca_certificates(ca_file: &Path, pem: &[u8]) -> Result<Vec<reqwest::Certificate>, TlsError> {
    let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
        TlsError::CaFileHasNoCertificate {
            path: ca_file.to_owned(),
            reason: e.to_string(),
        }
    })?;
    if certs.is_empty() {
        return Err(TlsError::CaFileEmpty {
            path: ca_file.to_owned(),
        });
    }
    Ok(certs)
}

/// Adds a private CA from `ca_file`, and turns verification off if
/// `tls_insecure` (the caller warns about that).
pub fn with_tls(
    builder: ClientBuilder,
    ca_file: Option<&Path>,
    tls_insecure: bool,
) -> Result<ClientBuilder, TlsError> {
    let ca = match ca_file {
        Some(ca_file) => read_ca_file(ca_file)?,
        None => Vec::new(),
    };
    Ok(with_trust(builder, &ca, tls_insecure))
}

/// Trusts the private CA certificates `ca` as well as the system's, and
/// turns verification off if `tls_insecure` (the caller warns about that).
pub fn with_trust(
    mut builder: ClientBuilder,
    ca: &[reqwest::Certificate],
    tls_insecure: bool,
) -> ClientBuilder {
    for cert in ca {
        builder = builder.add_root_certificate(cert.clone());
    }
    if tls_insecure {
        builder = builder.danger_accept_invalid_certs(true);
    }
    builder
}

/// Whether the response says `Content-Type: text/event-stream` (parameters allowed).
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// A `Retry-After` header in seconds or as an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// `Authorization: Basic` from the URL's user info (percent-decoded, as
/// browsers send it), marked sensitive.
pub fn basic_auth(url: &Url) -> Option<HeaderValue> {
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    Some(basic_auth_pair(
        &decode(url.username()),
        &decode(url.password().unwrap_or_default()),
    ))
}

/// `Authorization: Basic base64(user:password)`, marked sensitive.
pub fn basic_auth_pair(user: &str, password: &str) -> HeaderValue {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut value =
        HeaderValue::from_str(&format!("Basic {encoded}")).expect("base64 is a valid header value");
    value.set_sensitive(true);
    value
}

/// The URL a request goes to: without user info, which travels as a header
/// (and only where the redirect policy allows).
pub fn without_user_info(url: &Url) -> Url {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_allows_parameters_and_case() {
        let mut h = HeaderMap::new();
        assert!(!is_event_stream(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Text/Event-Stream; charset=utf-8"),
        );
        assert!(is_event_stream(&h));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(!is_event_stream(&h));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        h.insert(header::RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn user_info_becomes_basic_auth() {
        let url = Url::parse("http://us%20er:p%40ss@h/").unwrap();
        let value = basic_auth(&url).unwrap();
        assert!(value.is_sensitive());
        // base64("us er:p@ss")
        assert_eq!(value.to_str().unwrap(), "Basic dXMgZXI6cEBzcw==");
        assert!(basic_auth(&Url::parse("http://h/").unwrap()).is_none());
        assert_eq!(without_user_info(&url).as_str(), "http://h/");
    }
}
