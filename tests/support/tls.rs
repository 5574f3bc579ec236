//! An HTTPS server on loopback with a fresh certificate for 127.0.0.1 (rcgen):
//! it reads each request head and answers with the bytes its handler returns,
//! then closes.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio_rustls::rustls;

use super::{read_request, Request};

type Handler = dyn Fn(usize, &Request) -> Vec<u8> + Send + Sync;

pub struct TlsServer {
    pub addr: SocketAddr,
    /// The certificate as PEM, for a stream's `ca_file`.
    pub cert_pem: String,
    requests: Arc<Mutex<Vec<Request>>>,
    failed: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// TLS settings for a server with a fresh self-signed ECDSA P-256
/// certificate for 127.0.0.1, and that certificate as PEM.
pub fn server_config() -> (Arc<rustls::ServerConfig>, String) {
    let (config, pem, _) = server_config_with_fillers(0);
    (config, pem)
}

/// As [`server_config`], with `fillers` unrelated certificates sent after the
/// server's own (clients ignore intermediates they do not need), and the
/// bytes of the whole chain: a certificate message that long spans records.
pub fn server_config_with_fillers(fillers: usize) -> (Arc<rustls::ServerConfig>, String, usize) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let mut chain = vec![certified.cert.der().clone()];
    for i in 0..fillers {
        let filler =
            rcgen::generate_simple_self_signed(vec![format!("filler-{i}.invalid")]).unwrap();
        chain.push(filler.cert.der().clone());
    }
    let chain_bytes = chain.iter().map(|c| c.len()).sum();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    (Arc::new(config), certified.cert.pem(), chain_bytes)
}

impl TlsServer {
    /// Serves `handler(n, request)` for the n-th request (0-based).
    pub async fn start(
        handler: impl Fn(usize, &Request) -> Vec<u8> + Send + Sync + 'static,
    ) -> TlsServer {
        let (config, cert_pem) = server_config();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let seen = requests.clone();
        let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let failed_in = failed.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, handler, seen) = (acceptor.clone(), handler.clone(), seen.clone());
                let failed = failed_in.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(socket).await else {
                        failed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return;
                    };
                    let Some(request) = read_request(&mut tls).await else {
                        return;
                    };
                    let index = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(request.clone());
                        seen.len() - 1
                    };
                    let out = handler(index, &request);
                    let _ = tls.write_all(&out).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        TlsServer {
            addr,
            cert_pem,
            requests,
            failed,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// Connections whose TLS handshake failed (the client refused the
    /// certificate, say).
    pub fn failed_handshakes(&self) -> u64 {
        self.failed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A redirect answer to `location`.
pub fn redirect(status: u16, location: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} Moved\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}
