//! What streams and the webhook sink share about HTTP: clients and TLS setup,
//! request headers, reading an answer's headers, and the policies that keep
//! credentials safe ([`redirect`], [`redact`]) and memory bounded ([`decode`]).

pub mod decode;
pub mod redact;
pub mod redirect;

pub use redact::redact_url;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Client, ClientBuilder, Url};

use crate::config::StreamConfig;

/// The client a stream uses. Streams speak HTTP/1.1 unless `http2 = true`, so
/// streams to one host never queue behind each other on a shared HTTP/2
/// connection: each request gets a connection of its own.
///
/// HTTP/1.1 streams with the same connection settings share one client: a
/// client holds its own TLS root store and pool (over 100 KiB), and HTTP/1.1
/// never puts two requests on one connection, so sharing changes nothing on
/// the wire. A stream with `http2 = true` always gets its own.
pub fn build_client(config: &StreamConfig) -> Result<Client, String> {
    if config.http2 {
        return new_client(config);
    }
    let ca_pem = match &config.ca_file {
        // The contents, not the path: a reload after the file changed must
        // not keep trusting the old CA.
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let key = ClientKey {
        connect_timeout: config.connect_timeout,
        ca_pem,
        tls_insecure: config.tls_insecure,
    };
    static SHARED: OnceLock<Mutex<HashMap<ClientKey, Client>>> = OnceLock::new();
    let mut clients = SHARED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(client) = clients.get(&key) {
        return Ok(client.clone());
    }
    let client = new_client(config)?;
    clients.insert(key, client.clone());
    Ok(client)
}

/// What makes two HTTP/1.1 streams' clients interchangeable.
#[derive(Hash, PartialEq, Eq)]
struct ClientKey {
    connect_timeout: Duration,
    ca_pem: Option<Vec<u8>>,
    tls_insecure: bool,
}

fn new_client(config: &StreamConfig) -> Result<Client, String> {
    let mut builder = Client::builder()
        .user_agent(concat!("sse-relay/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(config.connect_timeout)
        // Streams follow redirects themselves, by [`redirect`]'s policy.
        .redirect(reqwest::redirect::Policy::none())
        .tcp_keepalive(Duration::from_secs(30))
        .tcp_nodelay(true)
        // One connection at a time; nothing to keep idle.
        .pool_max_idle_per_host(0);
    if !config.http2 {
        builder = builder.http1_only();
    }
    with_tls(builder, config.ca_file.as_deref(), config.tls_insecure)?
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// Adds a private CA from `ca_file`, and turns verification off if
/// `tls_insecure` (the caller warns about that).
pub fn with_tls(
    mut builder: ClientBuilder,
    ca_file: Option<&Path>,
    tls_insecure: bool,
) -> Result<ClientBuilder, String> {
    if let Some(ca_file) = ca_file {
        let pem = std::fs::read(ca_file)
            .map_err(|e| format!("cannot read ca_file {}: {e}", ca_file.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            format!(
                "ca_file {} holds no usable PEM certificate: {e}",
                ca_file.display()
            )
        })?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if tls_insecure {
        builder = builder.danger_accept_invalid_certs(true);
    }
    Ok(builder)
}

/// The request headers for one request of an attempt. `credentials` says
/// whether the stream's configured headers and the `Authorization` derived
/// from its URL's user info go along (see [`redirect`]).
pub fn request_headers(config: &StreamConfig, last_event_id: &str, credentials: bool) -> HeaderMap {
    let mut headers = if credentials {
        let mut headers = config.headers.clone();
        if let Some(basic) = basic_auth(&config.url) {
            if !headers.contains_key(header::AUTHORIZATION) {
                headers.insert(header::AUTHORIZATION, basic);
            }
        }
        headers
    } else {
        HeaderMap::new()
    };
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static(decode::ACCEPT_ENCODING),
    );
    if !last_event_id.is_empty() {
        // A non-ASCII id goes out as its UTF-8 bytes.
        match HeaderValue::from_bytes(last_event_id.as_bytes()) {
            Ok(value) => {
                headers.insert("last-event-id", value);
            }
            Err(_) => tracing::warn!(
                stream = %config.name,
                "last event id {last_event_id:?} holds control characters and cannot be sent as Last-Event-ID; connecting without it"
            ),
        }
    }
    headers
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
    use base64::Engine as _;
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let pair = format!(
        "{}:{}",
        decode(url.username()),
        decode(url.password().unwrap_or_default())
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
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
