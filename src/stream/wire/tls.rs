//! TLS for the lean client: `https://` streams over rustls' unbuffered API.
//!
//! Why the unbuffered API: a buffered rustls connection owns a record buffer
//! of at least 4 KiB for its whole life, which is 40 MiB at 10,000 idle
//! streams. With the unbuffered one the caller owns the bytes: records are
//! read into the thread's read buffer (as plain streams' bytes are) and
//! decrypted there, and a connection keeps only the part of a record that a
//! read cut off, until the rest arrives. An idle stream holds its keys and
//! nothing else.
//!
//! Trust is what reqwest's clients trust (`stream/client.rs` builds both
//! from the same settings): the webpki roots and the system's, plus
//! `ca_file`; TLS 1.2 and 1.3 with ring; ALPN `http/1.1`; SNI for names,
//! none for addresses. `tls_insecure = true` stays with reqwest, so no
//! verifier here is ever switched off.

use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus,
};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::READ_BUF;
use crate::http::TlsError;

/// Free room a read gets in the thread's buffer after the part-record held
/// from the last read. A record is at most 16 KiB plus framing; a handshake
/// message spread over records is allowed up to 64 KiB by rustls, so a held
/// part can outgrow the buffer, which then grows (once per thread).
const MIN_READ: usize = 16 << 10;

/// The TLS settings every lean `https://` stream with the same trust uses.
/// `ca_file` is the path and the bytes read from it (the bytes, not the
/// path: a reload after the file changed must not keep the old CA).
pub fn client_config(ca_file: Option<(&Path, &[u8])>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in system_roots() {
        // As reqwest: system stores hold the odd certificate webpki refuses.
        let _ = roots.add(cert.clone());
    }
    if let Some((path, pem)) = ca_file {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let refused = |reason: String| TlsError::CaFileHasNoCertificate {
                path: path.to_owned(),
                reason,
            };
            let cert = cert.map_err(|e| refused(e.to_string()))?;
            roots.add(cert).map_err(|e| refused(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(TlsError::CaFileEmpty {
                path: path.to_owned(),
            });
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The system's trusted roots, read once per process.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

/// The name a server's certificate must be valid for.
pub fn server_name(host: url::Host<&str>) -> io::Result<ServerName<'static>> {
    match host {
        url::Host::Domain(name) => ServerName::try_from(name.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e)),
        url::Host::Ipv4(ip) => Ok(ServerName::from(IpAddr::from(ip))),
        url::Host::Ipv6(ip) => Ok(ServerName::from(IpAddr::from(ip))),
    }
}

/// A TLS connection after its handshake.
pub struct TlsSocket {
    socket: TcpStream,
    connection: UnbufferedClientConnection,
    /// The start of a record (or handshake message) that the last read cut
    /// off: fed again, ahead of the next bytes. Usually empty (no heap).
    held: Vec<u8>,
    /// TLS bytes rustls wants sent (a key update's answer), sent before the
    /// next read.
    outgoing: Vec<u8>,
    /// The server sent `close_notify`: the end of its data.
    closed: bool,
}

impl TlsSocket {
    /// Runs the handshake on `socket` and sends `request` (the first
    /// application data) as soon as the handshake allows.
    pub async fn connect(
        mut socket: TcpStream,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        request: &[u8],
    ) -> io::Result<TlsSocket> {
        let mut connection = UnbufferedClientConnection::new(config, name).map_err(tls_error)?;
        // The handshake's own buffers: dropped when it is over.
        let mut incoming: Vec<u8> = Vec::new();
        let mut outgoing: Vec<u8> = Vec::new();
        loop {
            let UnbufferedStatus { discard, state } = connection.process_tls_records(&mut incoming);
            let mut read_more = false;
            let mut sent_request = false;
            match state.map_err(tls_error)? {
                ConnectionState::EncodeTlsData(mut data) => encode(&mut data, &mut outgoing)?,
                ConnectionState::TransmitTlsData(data) => {
                    socket.write_all(&outgoing).await?;
                    outgoing.clear();
                    data.done();
                }
                ConnectionState::BlockedHandshake => read_more = true,
                ConnectionState::WriteTraffic(mut traffic) => {
                    let at = outgoing.len();
                    let needed = match traffic.encrypt(request, &mut []) {
                        Err(EncryptError::InsufficientSize(InsufficientSizeError {
                            required_size,
                        })) => required_size,
                        Ok(_) => 0,
                        Err(e) => return Err(tls_error(e)),
                    };
                    outgoing.resize(at + needed, 0);
                    let written = traffic
                        .encrypt(request, &mut outgoing[at..])
                        .map_err(tls_error)?;
                    outgoing.truncate(at + written);
                    socket.write_all(&outgoing).await?;
                    sent_request = true;
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection during the TLS handshake",
                    ))
                }
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected TLS state during the handshake: {other:?}"),
                    ))
                }
            }
            incoming.drain(..discard);
            if sent_request {
                return Ok(TlsSocket {
                    socket,
                    connection,
                    held: incoming,
                    outgoing: Vec::new(),
                    closed: false,
                });
            }
            if read_more {
                incoming.reserve(MIN_READ);
                if socket.read_buf(&mut incoming).await? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection during the TLS handshake",
                    ));
                }
            }
        }
    }

    /// Waits for bytes and hands the application data they complete to
    /// `take`, record by record, until `take` returns `false`. Returns how
    /// many bytes came off the wire, or 0 once the server has closed (with
    /// `close_notify`; closing without it is an error, as reqwest has it, since
    /// it could be an attacker cutting the body short).
    pub async fn read(&mut self, take: &mut impl FnMut(&[u8]) -> bool) -> io::Result<usize> {
        loop {
            if !self.outgoing.is_empty() {
                self.socket.write_all(&self.outgoing).await?;
                self.outgoing = Vec::new();
            }
            if self.closed {
                return Ok(0);
            }
            self.socket.readable().await?;
            if let Some(read) = READ_BUF.with_borrow_mut(|buffer| self.read_records(buffer, take)) {
                return read;
            }
        }
    }

    /// One read off the socket into `buffer`, behind the held bytes, and
    /// the records it completes. `None`: nothing for `take` yet (a spurious
    /// wake-up, or only part of a record).
    fn read_records(
        &mut self,
        buffer: &mut Vec<u8>,
        take: &mut impl FnMut(&[u8]) -> bool,
    ) -> Option<io::Result<usize>> {
        let held = self.held.len();
        if buffer.len() < held + MIN_READ {
            buffer.resize(held + MIN_READ, 0);
        }
        buffer[..held].copy_from_slice(&self.held);
        let read = match self.socket.try_read(&mut buffer[held..]) {
            Ok(0) => {
                return Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection without a TLS close_notify",
                )))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) => return Some(Err(e)),
        };
        let filled = held + read;
        let mut start = 0;
        let mut delivered = false;
        let mut taking = true;
        loop {
            let UnbufferedStatus { mut discard, state } = self
                .connection
                .process_tls_records(&mut buffer[start..filled]);
            match state {
                Err(e) => return Some(Err(tls_error(e))),
                Ok(ConnectionState::ReadTraffic(mut records)) => {
                    while let Some(record) = records.next_record() {
                        let record = match record {
                            Ok(record) => record,
                            Err(e) => return Some(Err(tls_error(e))),
                        };
                        discard += record.discard;
                        delivered = true;
                        if taking {
                            taking = take(record.payload);
                        }
                    }
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    if let Err(e) = encode(&mut data, &mut self.outgoing) {
                        return Some(Err(e));
                    }
                }
                // Sent by `read` before it waits again.
                Ok(ConnectionState::TransmitTlsData(data)) => data.done(),
                Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => self.closed = true,
                // Nothing more in these bytes: the rest needs the next read.
                Ok(_) => {
                    start += discard;
                    break;
                }
            }
            start += discard;
            if self.closed && !delivered {
                break;
            }
        }
        debug_assert!(start <= filled, "rustls discarded more than it was given");
        self.held = if start == filled {
            Vec::new()
        } else {
            buffer[start..filled].to_vec()
        };
        if delivered {
            Some(Ok(read))
        } else if self.closed {
            Some(Ok(0))
        } else {
            None
        }
    }
}

/// Appends the handshake bytes rustls has ready to `outgoing`.
fn encode(
    data: &mut EncodeTlsData<'_, ClientConnectionData>,
    outgoing: &mut Vec<u8>,
) -> io::Result<()> {
    let at = outgoing.len();
    let needed = match data.encode(&mut []) {
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            required_size
        }
        Ok(_) => return Ok(()),
        Err(e) => return Err(io::Error::other(e.to_string())),
    };
    outgoing.resize(at + needed, 0);
    let written = data
        .encode(&mut outgoing[at..])
        .map_err(|e| io::Error::other(e.to_string()))?;
    outgoing.truncate(at + written);
    Ok(())
}

/// A TLS failure as the I/O error it ends the attempt with; its text is
/// rustls' ("invalid peer certificate: UnknownIssuer").
fn tls_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}
