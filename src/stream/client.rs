//! The HTTP clients a stream connects with, and the headers of its requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::Client;

use super::wire;
use crate::config::StreamConfig;
use crate::http::{basic_auth, ca_certificates, decode, with_trust, ClientError, TlsError};

/// What a stream connects with: reqwest for what the lean client
/// ([`wire`]) does not do, and the lean client's TLS settings.
#[derive(Clone)]
pub struct Clients {
    pub reqwest: Arc<LazyReqwest>,
    /// For `https://` through the lean client; `None` for `http://` streams
    /// and with `http2` or `tls_insecure`, which stay with reqwest.
    pub lean_tls: Option<Arc<rustls::ClientConfig>>,
}

/// The clients a stream uses. Streams speak HTTP/1.1 unless `http2 = true`, so
/// streams to one host never queue behind each other on a shared HTTP/2
/// connection: each request gets a connection of its own.
///
/// HTTP/1.1 streams with the same connection settings share their clients: a
/// client holds its own TLS root store and pool (over 100 KiB), and HTTP/1.1
/// never puts two requests on one connection, so sharing changes nothing on
/// the wire. A stream with `http2 = true` always gets its own.
pub fn build_client(config: &StreamConfig) -> Result<Clients, ClientError> {
    let ca_pem = match &config.ca_file {
        // The contents, not the path: a reload after the file changed must
        // not keep trusting the old CA.
        Some(path) => Some(
            std::fs::read(path).map_err(|source| TlsError::CaFileUnreadable {
                path: path.clone(),
                source,
            })?,
        ),
        None => None,
    };
    if config.http2 {
        return Ok(Clients {
            reqwest: Arc::new(LazyReqwest::new(config, ca_pem.as_deref())?),
            lean_tls: None,
        });
    }
    let key = ClientKey {
        connect_timeout: config.connect_timeout,
        ca_pem,
        tls_insecure: config.tls_insecure,
        https: config.url.scheme() == "https",
    };
    static SHARED: OnceLock<Mutex<HashMap<ClientKey, Clients>>> = OnceLock::new();
    let mut shared = SHARED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(clients) = shared.get(&key) {
        return Ok(clients.clone());
    }
    let reqwest = Arc::new(LazyReqwest::new(config, key.ca_pem.as_deref())?);
    // Only for https:// streams: building it reads the system's roots, which a
    // plain stream would wait for at start-up for nothing (a redirect from
    // http to https goes through reqwest then).
    let lean_tls = (key.https && !config.tls_insecure)
        .then(|| wire::client_config(config.ca_file.as_deref().zip(key.ca_pem.as_deref())))
        .transpose()?;
    let clients = Clients { reqwest, lean_tls };
    shared.insert(key, clients.clone());
    Ok(clients)
}

/// What makes two HTTP/1.1 streams' clients interchangeable.
#[derive(Hash, PartialEq, Eq)]
struct ClientKey {
    connect_timeout: Duration,
    ca_pem: Option<Vec<u8>>,
    tls_insecure: bool,
    /// Whether the lean client's TLS settings come along.
    https: bool,
}

/// A reqwest client built the first time a stream needs it (a request with
/// a body, HTTP/2, `tls_insecure`, a proxy, a redirect to `https://`):
/// building one reads every root certificate of the system, 3 ms of each
/// start-up here, which the plain `http://` streams of the lean client never
/// use. The CA file is read and parsed when the stream is set up, so a bad
/// one still stops `run` at start, as it did.
pub struct LazyReqwest {
    connect_timeout: Duration,
    http2: bool,
    ca: Vec<reqwest::Certificate>,
    tls_insecure: bool,
    client: OnceLock<Client>,
}

impl LazyReqwest {
    fn new(config: &StreamConfig, ca_pem: Option<&[u8]>) -> Result<LazyReqwest, ClientError> {
        let ca = match (config.ca_file.as_deref(), ca_pem) {
            (Some(path), Some(pem)) => ca_certificates(path, pem)?,
            _ => Vec::new(),
        };
        Ok(LazyReqwest {
            connect_timeout: config.connect_timeout,
            http2: config.http2,
            ca,
            tls_insecure: config.tls_insecure,
            client: OnceLock::new(),
        })
    }

    /// The client, built now if no request has needed it before. Clones
    /// share it (reqwest's client is a handle).
    pub fn get(&self) -> Result<Client, ClientError> {
        if let Some(client) = self.client.get() {
            return Ok(client.clone());
        }
        let mut builder = Client::builder()
            .user_agent(concat!("sse-relay/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(self.connect_timeout)
            // Streams follow redirects themselves, by [`redirect`]'s policy.
            .redirect(reqwest::redirect::Policy::none())
            .tcp_keepalive(Duration::from_secs(30))
            .tcp_nodelay(true)
            // One connection at a time; nothing to keep idle.
            .pool_max_idle_per_host(0);
        if !self.http2 {
            builder = builder.http1_only();
        }
        let built = with_trust(builder, &self.ca, self.tls_insecure)
            .build()
            .map_err(ClientError::Build)?;
        // Two streams may build at once: both get the one kept.
        Ok(self.client.get_or_init(|| built).clone())
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn stream(url: &str, extra: &str) -> Arc<StreamConfig> {
        let source = format!(
            "data_dir = \"/tmp/unused\"\n[streams.s]\nurl = \"{url}\"\n{extra}\n\
             [sinks.out]\ntype = \"stdout\"\ninputs = [\"*\"]\n"
        );
        let config = Config::parse(Path::new("t.toml"), &source, |_| None).unwrap();
        config.streams["s"].clone()
    }

    #[test]
    fn reqwest_is_built_on_first_use_only_and_then_kept() {
        // A timeout no other test uses: these clients are not shared with them.
        let config = stream("http://127.0.0.1:9/e", "connect_timeout = \"7s\"");
        let clients = build_client(&config).unwrap();
        assert!(clients.reqwest.client.get().is_none(), "built at start-up");
        assert!(
            clients.lean_tls.is_none(),
            "TLS settings for a plain stream"
        );
        clients.reqwest.get().unwrap();
        assert!(clients.reqwest.client.get().is_some(), "not kept");
        let again = build_client(&config).unwrap();
        assert!(Arc::ptr_eq(&clients.reqwest, &again.reqwest), "not shared");
    }

    #[test]
    fn a_ca_file_without_certificates_stops_the_stream_at_set_up_not_at_first_use() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "no certificate here\n").unwrap();
        let mut config = (*stream("http://127.0.0.1:9/e", "")).clone();
        config.ca_file = Some(ca.clone());
        for http2 in [false, true] {
            config.http2 = http2;
            let error = build_client(&config)
                .err()
                .expect("a CA file with no certificate");
            assert!(error.to_string().contains("ca.pem"), "{error}");
        }
    }
}
