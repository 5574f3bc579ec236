//! TLS for the lean client: `https://` streams over rustls' unbuffered API.
//!
//! Why the unbuffered API: a buffered rustls connection owns a record buffer
//! of at least 4 KiB for its whole life, which is 40 MiB at 10,000 idle
//! streams. With the unbuffered one the caller owns the bytes: records are
//! read into the thread's read buffer (as plain streams' bytes are) and
//! decrypted there, and a connection keeps only the part of a record that a
//! read cut off, until the rest arrives. An idle stream holds its keys and
//! nothing else. (rustls 0.23 then copies each record's plaintext into a
//! `Vec` of its own, freed when the next record is asked for: one
//! allocation of at most 16 KiB per record, not a buffer per connection.)
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
    UnbufferedStatus, WriteTraffic,
};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::AsyncWriteExt;
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
        let mut added = 0usize;
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
    /// application data) as soon as the handshake allows. The handshake reads
    /// into the thread's buffer too: 10,000 streams connecting at once would
    /// otherwise each hold a buffer of their own for it, and leave the heap
    /// fragmented when they let go.
    pub async fn connect(
        socket: TcpStream,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        request: &[u8],
    ) -> io::Result<TlsSocket> {
        let connection = UnbufferedClientConnection::new(config, name).map_err(tls_error)?;
        let mut tls = TlsSocket {
            socket,
            connection,
            held: Vec::new(),
            outgoing: Vec::new(),
            closed: false,
        };
        let mut request = Some(request);
        // The server sending data before it has the request is a protocol
        // violation for HTTP: refused rather than dropped.
        let mut take = |_: &[u8]| false;
        // First the ClientHello, from nothing read.
        READ_BUF.with_borrow_mut(|buffer| tls.process(buffer, 0, &mut take, &mut request))?;
        loop {
            tls.send_outgoing().await?;
            if request.is_none() {
                return Ok(tls);
            }
            if tls.closed {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection during the TLS handshake",
                ));
            }
            tls.socket.readable().await?;
            let read = READ_BUF
                .with_borrow_mut(|buffer| tls.read_and_process(buffer, &mut take, &mut request));
            match read {
                Some(Ok(0)) | None => {}
                Some(Ok(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the server sent data before the request",
                    ))
                }
                Some(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection during the TLS handshake",
                    ))
                }
                Some(Err(e)) => return Err(e),
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
            self.send_outgoing().await?;
            if self.closed {
                return Ok(0);
            }
            self.socket.readable().await?;
            let read =
                READ_BUF.with_borrow_mut(|buffer| self.read_and_process(buffer, take, &mut None));
            if let Some(read) = read {
                return read;
            }
        }
    }

    /// Sends what rustls has queued (handshake messages, the encrypted
    /// request, a key update's answer).
    async fn send_outgoing(&mut self) -> io::Result<()> {
        if !self.outgoing.is_empty() {
            self.socket.write_all(&self.outgoing).await?;
            self.outgoing = Vec::new();
        }
        Ok(())
    }

    /// One read off the socket into `buffer`, behind the held bytes, and
    /// what they complete. `None`: nothing for `take` yet (a spurious
    /// wake-up, or only part of a record).
    fn read_and_process(
        &mut self,
        buffer: &mut Vec<u8>,
        take: &mut impl FnMut(&[u8]) -> bool,
        request: &mut Option<&[u8]>,
    ) -> Option<io::Result<usize>> {
        let held = self.held.len();
        if buffer.len() < held + MIN_READ {
            buffer.resize(held + MIN_READ, 0);
        }
        let read = match super::read_ready(&self.socket, &mut buffer[held..]) {
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
        match self.process(buffer, read, take, request) {
            Err(e) => Some(Err(e)),
            Ok(true) => Some(Ok(read)),
            Ok(false) if self.closed => Some(Ok(0)),
            Ok(false) => None,
        }
    }

    /// Feeds rustls the held bytes and the `read` bytes behind them in
    /// `buffer` (where the held ones are copied first): application data goes
    /// to `take`, what rustls has to send to `outgoing` (with `request`,
    /// taken, once the handshake allows it), and what no record completes
    /// yet back to `held`. Returns whether `take` got anything.
    fn process(
        &mut self,
        buffer: &mut [u8],
        read: usize,
        take: &mut impl FnMut(&[u8]) -> bool,
        request: &mut Option<&[u8]>,
    ) -> io::Result<bool> {
        let held = self.held.len();
        // The new bytes were read behind the held ones' place.
        buffer[..held].copy_from_slice(&self.held);
        let filled = held + read;
        let mut start = 0;
        let mut delivered = false;
        let mut taking = true;
        loop {
            let UnbufferedStatus { mut discard, state } = self
                .connection
                .process_tls_records(&mut buffer[start..filled]);
            let mut more = true;
            match state.map_err(tls_error)? {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        delivered = true;
                        if taking {
                            taking = take(record.payload);
                        }
                    }
                }
                ConnectionState::EncodeTlsData(mut data) => encode(&mut data, &mut self.outgoing)?,
                // Sent by the caller before it waits again.
                ConnectionState::TransmitTlsData(data) => data.done(),
                ConnectionState::WriteTraffic(mut traffic) => {
                    if let Some(request) = request.take() {
                        encrypt(&mut traffic, request, &mut self.outgoing)?;
                    }
                    // Nothing more in these bytes: the rest needs the next read.
                    more = false;
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    self.closed = true;
                    more = false;
                }
                _ => more = false,
            }
            start += discard;
            if !more {
                break;
            }
        }
        debug_assert!(start <= filled, "rustls discarded more than it was given");
        self.held = if start == filled {
            Vec::new()
        } else {
            buffer[start..filled].to_vec()
        };
        Ok(delivered)
    }
}

/// Appends `plaintext`, encrypted, to `outgoing`.
fn encrypt(
    traffic: &mut WriteTraffic<'_, ClientConnectionData>,
    plaintext: &[u8],
    outgoing: &mut Vec<u8>,
) -> io::Result<()> {
    append(
        outgoing,
        |room| traffic.encrypt(plaintext, room),
        |e| match e {
            EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Some(*required_size)
            }
            _ => None,
        },
    )
}

/// Appends the handshake bytes rustls has ready to `outgoing`.
fn encode(
    data: &mut EncodeTlsData<'_, ClientConnectionData>,
    outgoing: &mut Vec<u8>,
) -> io::Result<()> {
    append(
        outgoing,
        |room| data.encode(room),
        |e| match e {
            EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Some(*required_size)
            }
            _ => None,
        },
    )
}

/// Appends to `outgoing` what `write` puts in the room it is given. It is
/// asked first with no room, which rustls answers with the size it needs
/// (`needs` reads it from the error) and without consuming anything.
fn append<E: std::fmt::Display>(
    outgoing: &mut Vec<u8>,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
    needs: impl Fn(&E) -> Option<usize>,
) -> io::Result<()> {
    let at = outgoing.len();
    let needed = match write(&mut []) {
        Ok(_) => return Ok(()),
        Err(e) => needs(&e).ok_or_else(|| tls_error(e))?,
    };
    outgoing.resize(at + needed, 0);
    let written = write(&mut outgoing[at..]).map_err(tls_error)?;
    outgoing.truncate(at + written);
    Ok(())
}

/// A TLS failure as the I/O error it ends the attempt with; its text is
/// rustls' ("invalid peer certificate: UnknownIssuer").
fn tls_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;
    use tokio_rustls::server::TlsStream;

    use super::super::tests::promptly;
    use super::super::READ_BUFFER;
    use super::*;

    /// TLS 1.3 adds this much to each record: a 5-byte header, the inner
    /// content type and a 16-byte AEAD tag.
    const RECORD_OVERHEAD: usize = 22;

    /// A TLS 1.3 server on loopback (a fresh certificate, no session
    /// tickets: after the handshake only what `serve` writes comes) that
    /// reads the 4-byte request `GET ` and then runs `serve`; and a lean
    /// client connected to it, the request sent, with room in its socket for
    /// far more than the thread's read buffer.
    async fn connected<F, Fut>(serve: F) -> (TlsSocket, tokio::task::JoinHandle<()>)
    where
        F: FnOnce(TlsStream<TcpStream>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let mut server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
        server_config.send_tls13_tickets = 0;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(socket).await.unwrap();
            let mut request = [0u8; 4];
            tokio::io::AsyncReadExt::read_exact(&mut tls, &mut request)
                .await
                .unwrap();
            assert_eq!(&request, b"GET ");
            serve(tls).await;
        });
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4 << 20).unwrap();
        let socket = socket.connect(address).await.unwrap();
        let pem = certified.cert.pem();
        let config = client_config(Some((Path::new("ca.pem"), pem.as_bytes()))).unwrap();
        let name = server_name(url::Host::Ipv4([127, 0, 0, 1].into())).unwrap();
        let tls = TlsSocket::connect(socket, config, name, b"GET ")
            .await
            .unwrap();
        (tls, server)
    }

    /// Waits until `bytes` have arrived in the client's socket (the receive
    /// window opens as they come, so the last of them may take a moment).
    async fn arrived(tls: &TlsSocket, bytes: usize) {
        let mut probe = vec![0; bytes + 1];
        while tls.socket.peek(&mut probe).await.unwrap() < bytes {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn a_read_that_filled_the_buffer_with_records_and_emptied_the_socket_waits_for_more() {
        promptly(filled_then_waits());
    }

    async fn filled_then_waits() {
        // Records whose bytes on the wire add up to the thread's whole read
        // buffer: 15 full ones and one that makes up the rest.
        let full = 16 << 10;
        let last = READ_BUFFER - 15 * (full + RECORD_OVERHEAD) - RECORD_OVERHEAD;
        let plaintext = 15 * full + last;
        let (written, all_written) = tokio::sync::oneshot::channel();
        let (mut tls, server) = connected(move |mut tls| async move {
            for size in std::iter::repeat_n(full, 15).chain([last]) {
                tls.write_all(&vec![b'x'; size]).await.unwrap();
                tls.flush().await.unwrap();
            }
            written.send(()).unwrap();
            // Written while the client waits on the readiness that the full
            // read left set, which finds nothing.
            tokio::time::sleep(Duration::from_millis(300)).await;
            tls.write_all(b"end").await.unwrap();
            tls.shutdown().await.unwrap();
        })
        .await;
        // Everything has arrived before the first read.
        all_written.await.unwrap();
        arrived(&tls, READ_BUFFER).await;
        let mut got = Vec::new();
        let mut take = |bytes: &[u8]| {
            got.extend_from_slice(bytes);
            true
        };
        let wire = tls.read(&mut take).await.unwrap();
        assert_eq!(wire, READ_BUFFER, "the first read was to fill the buffer");
        assert_eq!(got.len(), plaintext);
        got.clear();
        let mut take = |bytes: &[u8]| {
            got.extend_from_slice(bytes);
            true
        };
        // Not an end, not an error: a wait for the next record.
        let wire = tls.read(&mut take).await.unwrap();
        // Its record, and maybe the close_notify alert behind it (24 bytes).
        assert!(
            [3 + RECORD_OVERHEAD, 3 + RECORD_OVERHEAD + 24].contains(&wire),
            "{wire}"
        );
        assert_eq!(got, b"end");
        let mut take = |_: &[u8]| true;
        assert_eq!(
            tls.read(&mut take).await.unwrap(),
            0,
            "close_notify ends it"
        );
        server.await.unwrap();
    }

    #[test]
    fn a_buffer_too_small_for_the_held_part_and_a_read_grows_to_hold_both() {
        promptly(buffer_grows());
    }

    async fn buffer_grows() {
        // One record, and the second when the client has read the first.
        let (go, again) = tokio::sync::oneshot::channel();
        let (mut tls, server) = connected(|mut tls| async move {
            tls.write_all(b"data: hello\n\n").await.unwrap();
            tls.flush().await.unwrap();
            again.await.unwrap();
            tls.write_all(b"data: again\n\n").await.unwrap();
            tls.flush().await.unwrap();
        })
        .await;
        let record = 13 + RECORD_OVERHEAD;
        // Each record's header came in an earlier read, as a cut record's
        // start does: it is held, to be fed again ahead of the rest.
        let mut header = [0u8; 5];
        let mut got = Vec::new();
        let mut read_one = async |tls: &mut TlsSocket, buffer: &mut Vec<u8>| {
            arrived(tls, record).await;
            assert_eq!(tls.socket.try_read(&mut header).unwrap(), 5);
            tls.held = header.to_vec();
            got.clear();
            let mut take = |bytes: &[u8]| {
                got.extend_from_slice(bytes);
                true
            };
            let read = tls.read_and_process(buffer, &mut take, &mut None);
            assert_eq!(read.unwrap().unwrap(), record - 5);
            assert!(tls.held.is_empty(), "the record was whole: nothing is held");
            got.clone()
        };
        // A thread buffer smaller than the held part plus a read's room
        // grows to hold both.
        let mut small = vec![0; 3];
        assert_eq!(read_one(&mut tls, &mut small).await, b"data: hello\n\n");
        assert_eq!(
            small.len(),
            5 + MIN_READ,
            "room for the held part and a read"
        );
        // One with room enough is left as it is.
        go.send(()).unwrap();
        let mut roomy = vec![0; 2 * MIN_READ];
        assert_eq!(read_one(&mut tls, &mut roomy).await, b"data: again\n\n");
        assert_eq!(roomy.len(), 2 * MIN_READ);
        server.await.unwrap();
    }
}
