//! A lean HTTP/1.1 client for `http://` and `https://` streams.
//!
//! Why not reqwest for these: an idle stream read through reqwest/hyper holds
//! about 20 KiB (hyper's 8 KiB read and write buffers and a request queue sized
//! for 32 requests), so 10,000 idle streams cost ~250 MiB. A stream sends one
//! GET and reads one endless body, so this module does just that on a bare
//! `TcpStream`, and reads with `readable()` + `try_read` into one buffer per
//! thread: an idle stream holds no read buffer at all (about 1 KiB a stream
//! with its task). It also skips hyper's body channel, one hand-off per chunk.
//! A big read of a busy stream is handed on as a [`Bytes`] that the records
//! keep (their data is not copied again), and the thread's buffer starts
//! anew. `https://` goes through `tls.rs`, which decrypts in a buffer per
//! thread too.
//!
//! What it covers: the request head, 1xx answers, `Content-Length`, chunked and
//! close-delimited bodies. Anything else stays with reqwest (see
//! [`eligible`]): HTTP/2, `tls_insecure`, a proxy set in the environment. It
//! sends one request and reads one answer: redirects are the stream's to follow
//! ([`crate::http::redirect`]), content decoding is [`crate::http::decode`]'s,
//! the same for both clients.
//!
//! The head parser ([`parse_head`]) and the body framing ([`Framing`]) take
//! bytes, not sockets, so the fuzz target `fuzz/fuzz_targets/wire_response.rs`
//! drives them with arbitrary input.

mod tls;
pub use tls::client_config;

use std::cell::RefCell;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The longest response head accepted.
const MAX_HEAD: usize = 64 << 10;

/// How much more of a response head is read at a time (most are 100–300 bytes).
const HEAD_STEP: usize = 512;

/// Bytes read from a socket at once, into the buffer of the thread reading.
/// Big enough that few events are cut between two reads (such an event is
/// copied by the parser): 16 KiB events relayed 6% faster than with 64 KiB.
const READ_BUFFER: usize = 256 << 10;

/// A plain read of at least this much is handed out as a [`Bytes`] that
/// records may keep; a smaller one is copied from, and its buffer reused. A
/// kept chunk holds its whole `READ_BUFFER` allocation, so sharing is for
/// reads that fill most of it (a busy stream's).
const SHARE_FROM: usize = READ_BUFFER / 4 * 3;

/// Whether a request to `url` can use this client rather than reqwest.
/// `tls` is the stream's lean TLS settings: `https://` needs them (a stream
/// with `tls_insecure` or HTTP/2 has none).
pub fn eligible(url: &Url, http2: bool, tls: Option<&Arc<rustls::ClientConfig>>) -> bool {
    let scheme_ok = match url.scheme() {
        "http" => true,
        "https" => tls.is_some(),
        _ => false,
    };
    scheme_ok
        && !http2
        && url.username().is_empty()
        && url.password().is_none()
        && !proxy_in_environment(url.scheme())
}

/// reqwest would route through a proxy named in the environment (and knows
/// `NO_PROXY`); leave those streams to it.
fn proxy_in_environment(scheme: &str) -> bool {
    proxy_named(scheme, |name| std::env::var_os(name))
}

/// Whether `variable` names a proxy for `scheme` in one of the variables
/// reqwest reads (a variable set but empty names none).
fn proxy_named(scheme: &str, variable: impl Fn(&str) -> Option<std::ffi::OsString>) -> bool {
    let names: &[&str] = if scheme == "https" {
        &["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"]
    } else {
        &["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
    };
    names
        .iter()
        .any(|name| variable(name).is_some_and(|v| !v.is_empty()))
}

/// Reads what `socket` has into `buffer`, as `try_read` does. A read that
/// leaves room in the buffer emptied the socket, so its readiness is cleared
/// then as after a `WouldBlock`: the next wait goes to epoll at once, instead
/// of one more `recv` (per heartbeat, at 10,000 streams) only to learn that.
/// Safe with edge-triggered readiness: bytes arriving after this read are a
/// new edge, tokio clears only if no new one came in between, and an end of
/// input stays flagged (tokio never clears "read closed").
fn read_ready(socket: &TcpStream, buffer: &mut [u8]) -> io::Result<usize> {
    use std::io::Read as _;
    let room = buffer.len();
    read_clearing_when_short(socket, room, || {
        (&*socket2::SockRef::from(socket)).read(buffer)
    })
}

/// [`read_ready`] into the spare capacity of `buffer`, which is not zeroed
/// first (the buffer is new whenever records kept the last one it held).
fn read_ready_into(socket: &TcpStream, buffer: &mut BytesMut) -> io::Result<usize> {
    let spare = buffer.spare_capacity_mut();
    let room = spare.len();
    let n = read_clearing_when_short(socket, room, || socket2::SockRef::from(socket).recv(spare))?;
    // SAFETY: `recv` initialised the first `n` bytes of the spare capacity.
    unsafe { buffer.set_len(buffer.len() + n) };
    Ok(n)
}

/// Runs `read` (at most `room` bytes) as a `try_io`, clearing the readiness
/// after a short read (see [`read_ready`]).
fn read_clearing_when_short(
    socket: &TcpStream,
    room: usize,
    read: impl FnOnce() -> io::Result<usize>,
) -> io::Result<usize> {
    let mut short = None;
    let read = socket.try_io(tokio::io::Interest::READABLE, || {
        let n = read()?;
        if n > 0 && n < room {
            short = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match (read, short) {
        (Err(e), Some(n)) if e.kind() == io::ErrorKind::WouldBlock => Ok(n),
        (read, _) => read,
    }
}

/// How an attempt failed, in the words the stream logs.
#[derive(Debug)]
pub enum WireError {
    Connect(io::Error),
    /// Sending the request or reading the answer's head.
    Request(String),
    /// Reading the body.
    Body(String),
}

impl WireError {
    /// The reconnect kind and the reason, as for reqwest's errors.
    pub fn describe(&self) -> (&'static str, String) {
        match self {
            WireError::Connect(e) => ("connect_error", format!("connect error: {e}")),
            WireError::Request(what) => ("request_error", format!("request error: {what}")),
            WireError::Body(what) => ("body_error", format!("error reading the body: {what}")),
        }
    }
}

/// The answer to a request: its status and headers, and the body to read
/// (even if the status says there is nothing to read: the caller decides).
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Body,
}

/// Connects to `url` (over TLS with `tls` for `https://`) and sends a GET
/// with `headers` (which must not hold `Host`), then reads the answer's head.
pub async fn open(
    url: &Url,
    headers: &HeaderMap,
    connect_timeout: Duration,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Response, WireError> {
    let mut socket = connect(url, connect_timeout).await?;
    let request = request_head(url, headers);
    let mut transport = match (url.scheme(), tls) {
        ("https", Some(config)) => {
            let host = url.host().ok_or_else(|| {
                WireError::Connect(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the URL has no host",
                ))
            })?;
            let name = tls::server_name(host).map_err(WireError::Connect)?;
            // The handshake counts toward connect_timeout, as with reqwest.
            let connecting = tls::TlsSocket::connect(socket, config.clone(), name, &request);
            match tokio::time::timeout(connect_timeout, connecting).await {
                Ok(Ok(tls)) => Transport::Tls(Box::new(tls)),
                Ok(Err(e)) => return Err(WireError::Connect(e)),
                Err(_) => {
                    return Err(WireError::Connect(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no TLS handshake within connect_timeout",
                    )))
                }
            }
        }
        _ => {
            socket
                .write_all(&request)
                .await
                .map_err(|e| WireError::Request(format!("sending the request: {e}")))?;
            Transport::Plain(socket)
        }
    };
    let (status, headers, rest) = read_head(&mut transport).await?;
    let framing = Framing::of(&headers)?;
    Ok(Response {
        status,
        headers,
        body: Body {
            transport,
            framing,
            head_rest: (!rest.is_empty()).then_some(rest),
        },
    })
}

/// The connection a request went out on.
enum Transport {
    Plain(TcpStream),
    /// Boxed: most of it is rustls' connection state.
    Tls(Box<tls::TlsSocket>),
}

impl Transport {
    /// Waits for bytes and hands them (decrypted, for TLS) to `take` until
    /// it returns `false`. Returns how many bytes came off the wire; 0 once
    /// the server has closed the connection.
    async fn read(&mut self, take: &mut impl FnMut(&[u8]) -> bool) -> io::Result<usize> {
        match self {
            Transport::Tls(tls) => tls.read(take).await,
            Transport::Plain(socket) => {
                read_plain(socket, |bytes| {
                    if !bytes.is_empty() {
                        take(bytes);
                    }
                    bytes.len()
                })
                .await
            }
        }
    }
}

/// Waits until `socket` is readable, reads what it has into the thread's
/// [`CHUNK_BUF`] and lets `take` have it (empty: the server closed the
/// connection); the buffer is empty again after. Readiness can be spurious:
/// then it waits again, without calling `take`.
async fn read_plain<R>(
    socket: &TcpStream,
    mut take: impl FnMut(&mut BytesMut) -> R,
) -> io::Result<R> {
    loop {
        socket.readable().await?;
        let read = CHUNK_BUF.with_borrow_mut(|buffer| {
            // The whole buffer again if nothing kept a chunk of it (it is
            // empty: nothing is copied); a new one otherwise.
            buffer.reserve(READ_BUFFER);
            debug_assert!(buffer.is_empty());
            let read = read_ready_into(socket, buffer).map(|_| take(buffer));
            buffer.clear();
            match read {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                read => Some(read),
            }
        });
        if let Some(read) = read {
            return read;
        }
    }
}

/// One read of a plain socket's body: the body's part of what came is moved
/// to the front of the buffer ([`Framing::decode_in_place`]) and handed to
/// `emit` in one piece, as a [`Bytes`] `emit` may keep when it is big (see
/// [`SHARE_FROM`]). Returns how many bytes came off the wire (0: the server
/// closed the connection) and whether they completed the body.
async fn read_plain_body(
    socket: &TcpStream,
    framing: &mut Framing,
    emit: &mut impl FnMut(&[u8], Option<&Bytes>),
) -> Result<(usize, bool), WireError> {
    let read = read_plain(socket, |buffer| {
        let n = buffer.len();
        hand_out(buffer, framing, emit).map(|ended| (n, ended))
    });
    read.await.map_err(|e| WireError::Body(e.to_string()))?
}

/// Decodes what was read into `buffer` in place and hands the body's part
/// of it to `emit`: as a [`Bytes`] `emit` may keep, when it is at least
/// [`SHARE_FROM`]. Leaves `buffer` empty; returns whether the body is
/// complete.
fn hand_out(
    buffer: &mut BytesMut,
    framing: &mut Framing,
    emit: &mut impl FnMut(&[u8], Option<&Bytes>),
) -> Result<bool, WireError> {
    let decoded = framing.decode_in_place(buffer);
    if let Ok((body, _)) = decoded {
        buffer.truncate(body);
        if body >= SHARE_FROM {
            let chunk = buffer.split().freeze();
            emit(&chunk, Some(&chunk));
        } else if body > 0 {
            emit(buffer, None);
        }
    }
    buffer.clear();
    decoded.map(|(_, ended)| ended)
}

async fn connect(url: &Url, connect_timeout: Duration) -> Result<TcpStream, WireError> {
    let port = url.port_or_known_default().unwrap_or(80);
    let addresses: Vec<SocketAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => vec![SocketAddr::from((ip, port))],
        Some(url::Host::Ipv6(ip)) => vec![SocketAddr::from((ip, port))],
        Some(url::Host::Domain(name)) => tokio::net::lookup_host((name, port))
            .await
            .map_err(WireError::Connect)?
            .collect(),
        None => {
            return Err(WireError::Connect(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the URL has no host",
            )))
        }
    };
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
    for address in addresses {
        match tokio::time::timeout(connect_timeout, TcpStream::connect(address)).await {
            Ok(Ok(socket)) => {
                // As reqwest was set up: no Nagle delay on the request, and
                // keepalive probes to notice a peer that vanished.
                let _ = socket.set_nodelay(true);
                let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(30));
                let _ = socket2::SockRef::from(&socket).set_tcp_keepalive(&keepalive);
                return Ok(socket);
            }
            Ok(Err(e)) => last_error = e,
            Err(_) => {
                last_error = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{address}: no answer within connect_timeout"),
                )
            }
        }
    }
    Err(WireError::Connect(last_error))
}

/// `GET` with the path, `Host`, the user agent and `headers`.
fn request_head(url: &Url, headers: &HeaderMap) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    let target = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    let host = url.host_str().unwrap_or_default();
    let _ = write!(head, "GET {target} HTTP/1.1\r\nHost: {host}");
    if let Some(port) = url.port() {
        let _ = write!(head, ":{port}");
    }
    head.extend_from_slice(
        concat!(
            "\r\nUser-Agent: sse-relay/",
            env!("CARGO_PKG_VERSION"),
            "\r\n"
        )
        .as_bytes(),
    );
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// What the bytes received so far hold of a response head.
#[derive(Debug)]
pub enum Head {
    /// Not all of it yet.
    Partial,
    /// A 1xx answer of this many bytes, to skip: the real answer follows.
    Informational(usize),
    /// The final answer's head, `length` bytes long.
    Final {
        status: StatusCode,
        headers: HeaderMap,
        length: usize,
    },
}

/// Parses a response head at the start of `buffer`. Header fields whose name
/// or value is not valid are left out.
pub fn parse_head(buffer: &[u8]) -> Result<Head, WireError> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut fields);
    match response.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => {
            let code = response.code.unwrap_or(0);
            let status = StatusCode::from_u16(code)
                .map_err(|_| WireError::Request(format!("invalid status {code}")))?;
            if status.is_informational() {
                return Ok(Head::Informational(length));
            }
            let mut headers = HeaderMap::with_capacity(response.headers.len());
            for field in response.headers.iter() {
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(field.name.as_bytes()),
                    HeaderValue::from_bytes(field.value),
                ) {
                    headers.append(name, value);
                }
            }
            Ok(Head::Final {
                status,
                headers,
                length,
            })
        }
        Ok(httparse::Status::Partial) if buffer.len() >= MAX_HEAD => Err(WireError::Request(
            format!("the response head is over {} KiB", MAX_HEAD >> 10),
        )),
        Ok(httparse::Status::Partial) => Ok(Head::Partial),
        Err(e) => Err(WireError::Request(format!("invalid response head: {e}"))),
    }
}

/// Reads the head of the final answer (skipping 1xx ones); returns it and the
/// body bytes that came with it.
async fn read_head(
    transport: &mut Transport,
) -> Result<(StatusCode, HeaderMap, Vec<u8>), WireError> {
    // Small steps: 10,000 streams connecting at once would otherwise leave
    // their freed head buffers behind as heap holes (RSS).
    let mut buffer = Vec::with_capacity(HEAD_STEP);
    loop {
        match parse_head(&buffer)? {
            Head::Final {
                status,
                headers,
                length,
            } => return Ok((status, headers, buffer.split_off(length))),
            Head::Informational(length) => {
                buffer.drain(..length);
                continue;
            }
            Head::Partial => {}
        }
        buffer.reserve(HEAD_STEP);
        let read = transport
            .read(&mut |bytes| {
                buffer.extend_from_slice(bytes);
                true
            })
            .await;
        match read {
            Ok(0) => {
                return Err(WireError::Request(
                    "the server closed the connection before answering".to_owned(),
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(WireError::Request(format!("reading the answer: {e}"))),
        }
    }
}

/// How the body's end is known (RFC 9112, section 6.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    Chunked(Chunked),
    Length(u64),
    /// Until the server closes the connection.
    Close,
}

impl Framing {
    /// The framing the final answer's headers say.
    pub fn of(headers: &HeaderMap) -> Result<Framing, WireError> {
        if let Some(coding) = headers
            .get_all(reqwest::header::TRANSFER_ENCODING)
            .iter()
            .next_back()
        {
            let last = coding
                .to_str()
                .unwrap_or_default()
                .rsplit(',')
                .next()
                .unwrap_or_default();
            return Ok(if last.trim().eq_ignore_ascii_case("chunked") {
                Framing::Chunked(Chunked::Size {
                    value: 0,
                    digits: 0,
                })
            } else {
                Framing::Close
            });
        }
        let mut lengths = headers.get_all(reqwest::header::CONTENT_LENGTH).iter();
        match (lengths.next(), lengths.next()) {
            (None, _) => Ok(Framing::Close),
            (Some(length), None) => length
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Framing::Length)
                .ok_or_else(|| WireError::Request("invalid Content-Length".to_owned())),
            (Some(_), Some(_)) => Err(WireError::Request(
                "several Content-Length headers".to_owned(),
            )),
        }
    }
}

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// Reading a chunk-size line's hex digits.
    Size {
        value: u64,
        digits: u8,
    },
    /// Past the size: whitespace, then an optional extension (`;` up to the
    /// line end).
    SizeRest {
        value: u64,
        extension: bool,
    },
    /// After the size line's CR.
    SizeLf {
        value: u64,
    },
    Data {
        left: u64,
    },
    /// After a chunk's data: its CRLF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (after the last chunk).
    TrailerStart,
    TrailerLine,
    /// After the CR of the empty line that ends the body.
    EndLf,
    Done,
}

impl Chunked {
    /// Decodes `input`, handing the data to `emit`. Returns whether the body
    /// is complete.
    pub fn decode(
        &mut self,
        mut input: &[u8],
        emit: &mut impl FnMut(&[u8]),
    ) -> Result<bool, String> {
        while let Some((&b, rest)) = input.split_first() {
            *self = match *self {
                Chunked::Data { left } => {
                    // A chunk's data state always has bytes left (else this
                    // loop would take nothing and never end).
                    debug_assert!(left > 0, "a chunk with no data left to read");
                    let take = (left.min(input.len() as u64)) as usize;
                    emit(&input[..take]);
                    input = &input[take..];
                    let left = left - take as u64;
                    *self = if left == 0 {
                        Chunked::DataCr
                    } else {
                        Chunked::Data { left }
                    };
                    continue;
                }
                Chunked::Size { value, digits } => match (b as char).to_digit(16) {
                    Some(digit) if digits < 15 => Chunked::Size {
                        value: value << 4 | u64::from(digit),
                        digits: digits + 1,
                    },
                    Some(_) => return Err("a chunk size over 15 hex digits".to_owned()),
                    None if digits == 0 => return Err("a chunk without a size".to_owned()),
                    None => Chunked::after_size(value, false, b)?,
                },
                Chunked::SizeRest { value, extension } => Chunked::after_size(value, extension, b)?,
                Chunked::SizeLf { value } if b == b'\n' => Chunked::chunk(value),
                Chunked::SizeLf { .. } => return Err("a chunk size line without LF".to_owned()),
                Chunked::DataCr if b == b'\r' => Chunked::DataLf,
                Chunked::DataCr | Chunked::DataLf if b == b'\n' => Chunked::Size {
                    value: 0,
                    digits: 0,
                },
                Chunked::DataCr | Chunked::DataLf => {
                    return Err("a chunk longer than its size".to_owned())
                }
                Chunked::TrailerStart if b == b'\r' => Chunked::EndLf,
                Chunked::TrailerStart | Chunked::EndLf if b == b'\n' => Chunked::Done,
                Chunked::EndLf => return Err("a trailer line without LF".to_owned()),
                Chunked::TrailerStart | Chunked::TrailerLine if b == b'\n' => Chunked::TrailerStart,
                Chunked::TrailerStart | Chunked::TrailerLine => Chunked::TrailerLine,
                Chunked::Done => return Ok(true),
            };
            input = rest;
        }
        Ok(*self == Chunked::Done)
    }

    /// A byte after a chunk size's digits: whitespace or an extension goes
    /// on, a line end starts the chunk.
    fn after_size(value: u64, extension: bool, b: u8) -> Result<Chunked, String> {
        Ok(match b {
            b'\r' => Chunked::SizeLf { value },
            b'\n' => Chunked::chunk(value),
            b';' => Chunked::SizeRest {
                value,
                extension: true,
            },
            b'\t' | b' ' => Chunked::SizeRest { value, extension },
            _ if extension => Chunked::SizeRest { value, extension },
            _ => return Err("an invalid chunk size".to_owned()),
        })
    }

    fn chunk(size: u64) -> Chunked {
        if size == 0 {
            Chunked::TrailerStart
        } else {
            Chunked::Data { left: size }
        }
    }
}

/// What one read of a body gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// Bytes arrived (framing included; the body part went to `emit`).
    Bytes(usize),
    /// The body ended where its framing says, or (without framing) the server
    /// closed the connection.
    End,
}

/// A response body being read.
pub struct Body {
    transport: Transport,
    framing: Framing,
    /// Body bytes that arrived with the head, handed out first.
    head_rest: Option<Vec<u8>>,
}

thread_local! {
    /// The buffer TLS sockets are read and decrypted into on this thread: one
    /// per worker thread, not one per stream.
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_BUFFER]);

    /// The buffer plain sockets are read into on this thread. A big read is
    /// handed out as a [`Bytes`] that records may keep (their data is not
    /// copied out of it); the buffer then starts a new allocation.
    static CHUNK_BUF: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

impl Body {
    /// Waits for the next bytes and hands the body's part of them (decoded)
    /// to `emit`, which may be called several times or not at all.
    /// With the bytes comes the [`Bytes`] they lie in, when `emit` may keep
    /// them.
    pub async fn read(
        &mut self,
        emit: &mut impl FnMut(&[u8], Option<&Bytes>),
    ) -> Result<Read, WireError> {
        if let Some(rest) = self.head_rest.take() {
            return self.decode(&rest, &mut |body| emit(body, None));
        }
        let framing = &mut self.framing;
        let (read, ended) = match &mut self.transport {
            Transport::Plain(socket) => read_plain_body(socket, framing, emit).await?,
            Transport::Tls(tls) => {
                let mut ended = Ok(false);
                let read = tls
                    .read(&mut |bytes| {
                        ended = framing.decode(bytes, &mut |body| emit(body, None));
                        matches!(ended, Ok(false))
                    })
                    .await
                    .map_err(|e| WireError::Body(e.to_string()))?;
                (read, ended?)
            }
        };
        match ended {
            true => Ok(Read::End),
            false if read == 0 => self.end_of_input().map(|()| Read::End),
            false => Ok(Read::Bytes(read)),
        }
    }

    /// Decodes bytes off the wire: [`Read::End`] if they complete the body.
    fn decode(&mut self, input: &[u8], emit: &mut impl FnMut(&[u8])) -> Result<Read, WireError> {
        if self.framing.decode(input, emit)? {
            Ok(Read::End)
        } else {
            Ok(Read::Bytes(input.len()))
        }
    }

    /// The server closed the connection: the end of a close-delimited body, or
    /// a body cut short.
    fn end_of_input(&self) -> Result<(), WireError> {
        self.framing.end_of_input()
    }
}

impl Framing {
    /// Hands the body's part of `input` (bytes off the wire) to `emit`;
    /// returns whether the body is complete.
    pub fn decode(
        &mut self,
        input: &[u8],
        emit: &mut impl FnMut(&[u8]),
    ) -> Result<bool, WireError> {
        Ok(match self {
            Framing::Chunked(state) => state.decode(input, emit).map_err(WireError::Body)?,
            Framing::Length(left) => {
                let take = (*left).min(input.len() as u64) as usize;
                emit(&input[..take]);
                *left -= take as u64;
                *left == 0
            }
            Framing::Close => {
                emit(input);
                false
            }
        })
    }

    /// Decodes `buffer` (bytes off the wire) in place: the body's part of it
    /// is moved to the front, so that it can be handed on in one piece and
    /// kept whole. Returns its length and whether the body is complete.
    ///
    /// Servers and proxies that cut a body into chunks of their own size
    /// (nginx's 8 or 16 KiB buffers) split events between chunks. Handed on
    /// chunk by chunk, every such event was copied twice, into the parser and
    /// into its record; moving the bytes here, in the cache, is one short copy.
    pub fn decode_in_place(&mut self, buffer: &mut [u8]) -> Result<(usize, bool), WireError> {
        let Framing::Chunked(state) = self else {
            let mut length = 0;
            let ended = self.decode(buffer, &mut |body| length = body.len())?;
            return Ok((length, ended));
        };
        let base = buffer.as_ptr() as usize;
        // Most reads of an idle stream hold one piece (a heartbeat): only a
        // second one allocates.
        let mut first: Option<Range<usize>> = None;
        let mut more: Vec<Range<usize>> = Vec::new();
        let ended = state
            .decode(buffer, &mut |piece| {
                let start = piece.as_ptr() as usize - base;
                let piece = start..start + piece.len();
                match first {
                    None => first = Some(piece),
                    Some(_) => more.push(piece),
                }
            })
            .map_err(WireError::Body)?;
        let mut length = 0;
        for piece in first.into_iter().chain(more) {
            debug_assert!(piece.start >= length, "pieces come in order, apart");
            let size = piece.len();
            buffer.copy_within(piece, length);
            length += size;
        }
        Ok((length, ended))
    }

    /// The connection closed: fine for a close-delimited body, an error for
    /// one cut short.
    pub fn end_of_input(&self) -> Result<(), WireError> {
        match self {
            Framing::Close => Ok(()),
            Framing::Length(left) => Err(WireError::Body(format!(
                "the connection closed {left} bytes before the end of the body"
            ))),
            Framing::Chunked(_) => Err(WireError::Body(
                "the connection closed before the end of the chunked body".to_owned(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(body: &[u8], split: usize) -> Result<(Vec<u8>, bool), String> {
        let mut state = Chunked::Size {
            value: 0,
            digits: 0,
        };
        let mut out = Vec::new();
        let mut done = false;
        for piece in body.chunks(split.max(1)) {
            done = state.decode(piece, &mut |d| out.extend_from_slice(d))?;
        }
        Ok((out, done))
    }

    #[test]
    fn chunked_bodies_decode_the_same_at_every_split() {
        let body = b"5\r\nhello\r\n1;ext=\"x\"\r\n \r\nA \r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n";
        for split in 1..=body.len() {
            let (out, done) = decode_all(body, split).unwrap();
            assert_eq!(out, b"hello 0123456789", "split {split}");
            assert!(done, "split {split}");
        }
        // Bare LFs are accepted; an unfinished body is not done.
        assert_eq!(
            decode_all(b"3\nabc\n0\n\n", 2).unwrap(),
            (b"abc".to_vec(), true)
        );
        assert_eq!(decode_all(b"3\r\nab", 1).unwrap(), (b"ab".to_vec(), false));
    }

    /// `body` decoded in place, `split` bytes off the wire at a time, as the
    /// plain-socket read does.
    fn decode_in_place_all(framing: &mut Framing, body: &[u8], split: usize) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let mut done = false;
        for piece in body.chunks(split.max(1)) {
            let mut buffer = piece.to_vec();
            let (length, ended) = framing.decode_in_place(&mut buffer).unwrap();
            out.extend_from_slice(&buffer[..length]);
            done = ended;
        }
        (out, done)
    }

    #[test]
    fn bodies_decoded_in_place_are_the_same_at_every_split() {
        let body = b"5\r\nhello\r\n1;ext=\"x\"\r\n \r\nA \r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n";
        for split in 1..=body.len() {
            let mut chunked = Framing::Chunked(Chunked::Size {
                value: 0,
                digits: 0,
            });
            let decoded = decode_in_place_all(&mut chunked, body, split);
            assert_eq!(
                decoded,
                (b"hello 0123456789".to_vec(), true),
                "split {split}"
            );
            // A length ends where it says; bytes past it are not the body's.
            let mut length = Framing::Length(7);
            let decoded = decode_in_place_all(&mut length, b"0123456789", split);
            assert_eq!(decoded, (b"0123456".to_vec(), true), "split {split}");
            let mut close = Framing::Close;
            let decoded = decode_in_place_all(&mut close, b"0123456789", split);
            assert_eq!(decoded, (b"0123456789".to_vec(), false), "split {split}");
        }
        let mut broken = Framing::Chunked(Chunked::Size {
            value: 0,
            digits: 0,
        });
        assert!(broken
            .decode_in_place(&mut b"3\r\nabcd\r\n".to_vec())
            .is_err());
    }

    /// Events of about 300 bytes in HTTP chunks of 1,000: most events are
    /// split between two chunks, as a proxy with its own buffer size cuts
    /// them. Returns the events and the chunked wire bytes.
    fn events_in_small_chunks(bytes: usize) -> (Vec<u8>, Vec<u8>) {
        let mut events = Vec::new();
        for n in 0..bytes / 300 {
            events.extend_from_slice(format!("id: {n}\ndata: {}\n\n", "y".repeat(280)).as_bytes());
        }
        let mut wire = Vec::new();
        for piece in events.chunks(1000) {
            wire.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            wire.extend_from_slice(piece);
            wire.extend_from_slice(b"\r\n");
        }
        (events, wire)
    }

    #[test]
    fn a_big_read_is_handed_out_whole_to_keep_and_a_small_one_to_copy() {
        let chunked = || {
            Framing::Chunked(Chunked::Size {
                value: 0,
                digits: 0,
            })
        };
        let (events, wire) = events_in_small_chunks(2 * READ_BUFFER);
        let mut buffer = BytesMut::with_capacity(READ_BUFFER);
        buffer.extend_from_slice(&wire[..READ_BUFFER]);
        let mut framing = chunked();
        let mut kept = None;
        let mut emit = |bytes: &[u8], chunk: Option<&Bytes>| {
            let chunk = chunk.expect("a big read comes as a chunk to keep");
            assert_eq!((chunk.as_ptr(), chunk.len()), (bytes.as_ptr(), bytes.len()));
            kept = Some(chunk.clone());
        };
        assert!(!hand_out(&mut buffer, &mut framing, &mut emit).unwrap());
        assert!(buffer.is_empty());
        let kept = kept.unwrap();
        assert!(kept.len() >= SHARE_FROM);
        assert_eq!(kept, events[..kept.len()]);
        // The next read goes to a new buffer: what was kept stays as it was.
        buffer.reserve(READ_BUFFER);
        buffer.extend_from_slice(&vec![b'z'; READ_BUFFER]);
        assert_eq!(kept, events[..kept.len()]);
        // A small read is lent, not given: its buffer is used again.
        buffer.clear();
        buffer.extend_from_slice(&wire[..4000]);
        let mut framing = chunked();
        let mut lent = Vec::new();
        let mut emit = |bytes: &[u8], chunk: Option<&Bytes>| {
            assert!(chunk.is_none(), "a small read came as a chunk to keep");
            lent.extend_from_slice(bytes);
        };
        hand_out(&mut buffer, &mut framing, &mut emit).unwrap();
        assert_eq!(lent, events[..lent.len()]);
        assert!(lent.len() > 3900);
    }

    #[test]
    fn a_chunked_body_of_small_chunks_reads_whole_off_a_socket() {
        promptly(a_chunked_body_of_small_chunks_reads_whole_off_a_socket_run());
    }

    async fn a_chunked_body_of_small_chunks_reads_whole_off_a_socket_run() {
        use tokio::io::AsyncWriteExt;
        let (events, mut wire) = events_in_small_chunks(3 * READ_BUFFER);
        wire.extend_from_slice(b"0\r\n\r\n");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            // In pieces that cut chunk heads and events anywhere.
            for piece in wire.chunks(7777) {
                socket.write_all(piece).await.unwrap();
            }
        });
        let mut body = Body {
            transport: Transport::Plain(TcpStream::connect(address).await.unwrap()),
            framing: Framing::Chunked(Chunked::Size {
                value: 0,
                digits: 0,
            }),
            head_rest: None,
        };
        let mut out = Vec::new();
        let mut kept = Vec::new();
        loop {
            let mut emit = |bytes: &[u8], chunk: Option<&Bytes>| {
                out.extend_from_slice(bytes);
                kept.extend(chunk.cloned().map(|chunk| (out.len() - chunk.len(), chunk)));
            };
            let read = tokio::time::timeout(Duration::from_secs(10), body.read(&mut emit));
            match read.await.expect("a body read hung") {
                Ok(Read::Bytes(_)) => {}
                Ok(Read::End) => break,
                Err(e) => panic!("{}", e.describe().1),
            }
        }
        assert_eq!(out, events);
        // Whatever was handed out to keep is still what it was.
        for (at, chunk) in kept {
            assert_eq!(chunk, out[at..at + chunk.len()]);
        }
        server.await.unwrap();
    }

    #[test]
    fn a_chunked_body_ends_only_after_its_trailer_and_final_line() {
        let body = b"3\r\nabc\r\n0\r\nTrailer: x\r\nOther: y\r\n\r\n";
        for end in 0..body.len() {
            for split in [1, 2, 5, 64] {
                let (out, done) = decode_all(&body[..end], split).unwrap();
                assert!(
                    !done,
                    "done after {:?}",
                    String::from_utf8_lossy(&body[..end])
                );
                assert_eq!(out, &b"abc"[..out.len()]);
            }
        }
        assert_eq!(decode_all(body, 3).unwrap(), (b"abc".to_vec(), true));
        // The final line's CR must be followed by its LF.
        assert!(decode_all(b"0\r\n\rX", 64).is_err());
        assert!(decode_all(b"0\r\nTrailer: x\r\n\rX", 64).is_err());
    }

    #[test]
    fn broken_chunked_bodies_are_errors() {
        for bad in [
            &b"zz\r\n"[..],
            b"3\r\nabcd\r\n",
            b"5x\r\n",
            b"1234567890abcdef0\r\n",
            b"\r\n",
            b"3\rX",
            // A stray byte between chunks is not skipped.
            b"3\r\nabcX1\r\nz\r\n0\r\n\r\n",
            b"3\r\nabc\rX1\r\nz\r\n0\r\n\r\n",
        ] {
            assert!(
                decode_all(bad, 64).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn framing_follows_the_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(Framing::of(&h).unwrap(), Framing::Close);
        h.insert("content-length", HeaderValue::from_static("12"));
        assert_eq!(Framing::of(&h).unwrap(), Framing::Length(12));
        h.insert(
            "transfer-encoding",
            HeaderValue::from_static("gzip, chunked"),
        );
        assert!(matches!(Framing::of(&h).unwrap(), Framing::Chunked(_)));
        h.insert("transfer-encoding", HeaderValue::from_static("gzip"));
        assert_eq!(Framing::of(&h).unwrap(), Framing::Close);
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("x"));
        assert!(Framing::of(&h).is_err());
    }

    #[test]
    fn only_http1_without_credentials_or_proxies_is_eligible() {
        let url = |s: &str| Url::parse(s).unwrap();
        let tls = client_config(None).unwrap();
        let no_proxy = !proxy_in_environment("http") && !proxy_in_environment("https");
        assert!(eligible(&url("http://127.0.0.1:8080/s?x=1"), false, None) || !no_proxy);
        assert!(eligible(&url("https://example.com/"), false, Some(&tls)) || !no_proxy);
        assert!(!eligible(&url("https://example.com/"), false, None));
        assert!(!eligible(&url("https://example.com/"), true, Some(&tls)));
        assert!(!eligible(&url("http://example.com/"), true, None));
        assert!(!eligible(&url("http://u:p@example.com/"), false, None));
        assert!(!eligible(&url("ftp://example.com/"), false, Some(&tls)));
    }

    #[test]
    fn a_proxy_is_whatever_reqwest_would_read_for_the_scheme() {
        let only = |set: &'static str, value: &'static str| {
            move |name: &str| (name == set).then(|| std::ffi::OsString::from(value))
        };
        assert!(proxy_named("https", only("HTTPS_PROXY", "http://p:3128")));
        assert!(proxy_named("https", only("https_proxy", "http://p:3128")));
        assert!(!proxy_named("https", only("HTTP_PROXY", "http://p:3128")));
        assert!(proxy_named("http", only("http_proxy", "http://p:3128")));
        assert!(!proxy_named("http", only("HTTPS_PROXY", "http://p:3128")));
        assert!(proxy_named("http", only("ALL_PROXY", "socks5://p")));
        assert!(proxy_named("https", only("all_proxy", "socks5://p")));
        assert!(
            !proxy_named("http", only("HTTP_PROXY", "")),
            "set but empty"
        );
        assert!(!proxy_named("http", |_: &str| None));
    }

    #[test]
    fn a_url_with_either_half_of_user_info_is_left_to_reqwest() {
        let url = |s: &str| Url::parse(s).unwrap();
        if proxy_in_environment("http") {
            return; // every http:// stream goes to reqwest then
        }
        assert!(!eligible(&url("http://u@example.com/"), false, None));
        assert!(!eligible(&url("http://:p@example.com/"), false, None));
    }

    #[test]
    fn errors_name_the_reconnect_reason_and_what_failed() {
        let (kind, text) =
            WireError::Connect(io::Error::from(io::ErrorKind::ConnectionRefused)).describe();
        assert_eq!(kind, "connect_error");
        assert!(text.starts_with("connect error: "), "{text}");
        let (kind, text) = WireError::Request("no head".into()).describe();
        assert_eq!(
            (kind, text.as_str()),
            ("request_error", "request error: no head")
        );
        let (kind, text) = WireError::Body("cut".into()).describe();
        assert_eq!(
            (kind, text.as_str()),
            ("body_error", "error reading the body: cut")
        );
    }

    #[test]
    fn response_heads_parse_skip_1xx_and_are_bounded() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata";
        match parse_head(head).unwrap() {
            Head::Final {
                status,
                headers,
                length,
            } => {
                assert_eq!(status, StatusCode::OK);
                assert_eq!(headers["content-type"], "text/event-stream");
                assert_eq!(length, head.len() - 4);
            }
            other => panic!("{other:?}"),
        }
        let informational = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n";
        assert!(matches!(
            parse_head(informational).unwrap(),
            Head::Informational(n) if n == informational.len()
        ));
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\nA: b\r\n").unwrap(),
            Head::Partial
        ));
        assert!(matches!(parse_head(b"").unwrap(), Head::Partial));
        // A head still unfinished at the limit is refused; under it, it waits.
        let mut long = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        long.resize(MAX_HEAD - 1, b'a');
        assert!(matches!(parse_head(&long).unwrap(), Head::Partial));
        long.push(b'a');
        let Err(WireError::Request(why)) = parse_head(&long) else {
            panic!("a {} KiB head accepted", MAX_HEAD >> 10)
        };
        assert!(why.contains("64 KiB"), "{why}");
        assert!(parse_head(b"HTTP/1.1 099 Low\r\n\r\n").is_err());
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }

    #[test]
    fn a_length_framed_body_ends_at_its_length_and_not_before() {
        let mut framing = Framing::Length(5);
        let mut out = Vec::new();
        assert!(!framing
            .decode(b"hel", &mut |d| out.extend_from_slice(d))
            .unwrap());
        assert_eq!(framing, Framing::Length(2));
        assert!(framing.end_of_input().is_err(), "closed 2 bytes short");
        assert!(framing
            .decode(b"lo, and more", &mut |d| out.extend_from_slice(d))
            .unwrap());
        assert_eq!(out, b"hello");
        assert!(Framing::Close.end_of_input().is_ok());
        let mut close = Framing::Close;
        assert!(!close
            .decode(b"all of it", &mut |d| out.extend_from_slice(d))
            .unwrap());
        assert_eq!(out, b"helloall of it");
        let chunked = Framing::Chunked(Chunked::Size {
            value: 0,
            digits: 0,
        });
        assert!(chunked.end_of_input().is_err());
    }

    #[test]
    fn a_chunk_size_of_sixteen_hex_digits_is_refused_and_fifteen_taken() {
        assert!(decode_all(b"1000000000000000\r\n", 64).is_err());
        let mut state = Chunked::Size {
            value: 0,
            digits: 0,
        };
        state.decode(b"100000000000000\r\n", &mut |_| {}).unwrap();
        assert_eq!(state, Chunked::Data { left: 1 << 56 });
        let mut state = Chunked::Size {
            value: 0,
            digits: 0,
        };
        state.decode(b"1aF;x=y\r\n", &mut |_| {}).unwrap();
        assert_eq!(state, Chunked::Data { left: 0x1af });
    }

    /// A body read over loopback from a server that sends `parts` (each
    /// after the last was read) and then closes.
    async fn read_body(
        framing: Framing,
        head_rest: &[u8],
        parts: &[&[u8]],
    ) -> (Vec<u8>, Result<Read, String>) {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let parts: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
        let (go, mut went) = tokio::sync::mpsc::channel::<()>(1);
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            for part in parts {
                went.recv().await;
                socket.write_all(&part).await.unwrap();
            }
            went.recv().await;
        });
        let mut body = Body {
            transport: Transport::Plain(TcpStream::connect(address).await.unwrap()),
            framing,
            head_rest: (!head_rest.is_empty()).then(|| head_rest.to_vec()),
        };
        let mut out = Vec::new();
        let deadline = Duration::from_secs(10);
        let last = loop {
            let _ = go.try_send(());
            let read =
                tokio::time::timeout(deadline, body.read(&mut |d, _| out.extend_from_slice(d)))
                    .await
                    .expect("a body read hung");
            match read {
                Ok(Read::Bytes(n)) => assert!(n > 0, "a read of nothing"),
                other => break other.map_err(|e| e.describe().1),
            }
        };
        drop(go);
        server.await.unwrap();
        (out, last)
    }

    #[test]
    fn bodies_are_read_off_a_socket_until_their_framing_ends() {
        promptly(bodies_are_read_off_a_socket_until_their_framing_ends_run());
    }

    async fn bodies_are_read_off_a_socket_until_their_framing_ends_run() {
        let (out, end) = read_body(Framing::Length(9), b"abc", &[b"def", b"ghiXYZ"]).await;
        assert_eq!((out.as_slice(), end), (&b"abcdefghi"[..], Ok(Read::End)));
        let chunked = Framing::Chunked(Chunked::Size {
            value: 0,
            digits: 0,
        });
        let (out, end) = read_body(chunked, b"3\r\nab", &[b"c\r\n0\r", b"\n\r\n"]).await;
        assert_eq!((out.as_slice(), end), (&b"abc"[..], Ok(Read::End)));
        let (out, end) = read_body(Framing::Close, b"", &[b"x", b"yz"]).await;
        assert_eq!((out.as_slice(), end), (&b"xyz"[..], Ok(Read::End)));
        // Closed early: the body was cut short.
        let (out, end) = read_body(Framing::Length(10), b"", &[b"abc"]).await;
        assert_eq!(out, b"abc");
        let why = end.unwrap_err();
        assert!(why.contains("7 bytes before the end"), "{why}");
    }

    /// Runs `test` on a runtime of its own thread under
    /// [`crate::test_deadline::promptly`]: a read loop that never yields
    /// cannot be stopped by a tokio timeout, and must not hang the suite.
    pub(super) fn promptly(test: impl std::future::Future<Output = ()> + Send + 'static) {
        crate::test_deadline::promptly("the lean client", move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(test)
        })
    }

    /// The request head `socket` sends, read byte by byte (nothing past it).
    async fn request_sent(socket: &mut TcpStream) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut request = Vec::new();
        while !request.ends_with(b"\r\n\r\n") {
            let mut byte = [0];
            socket.read_exact(&mut byte).await.unwrap();
            request.push(byte[0]);
        }
        request
    }

    /// Accepts one connection on `listener`, reads the request head if
    /// `read_request`, and resets the connection (RST, not FIN).
    async fn reset_one(listener: tokio::net::TcpListener, read_request: bool) {
        let (mut socket, _) = listener.accept().await.unwrap();
        if read_request {
            request_sent(&mut socket).await;
        }
        socket2::SockRef::from(&socket)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(socket);
    }

    #[test]
    fn a_reset_connection_is_an_error_not_an_end_or_a_wait() {
        promptly(a_reset_connection_is_an_error_run());
    }

    async fn a_reset_connection_is_an_error_run() {
        // The head: the reset is said, not taken for a close before the answer.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/s", listener.local_addr().unwrap())).unwrap();
        let server = tokio::spawn(reset_one(listener, true));
        let no_headers = HeaderMap::new();
        let opening = open(&url, &no_headers, Duration::from_secs(5), None);
        let error = match tokio::time::timeout(Duration::from_secs(10), opening).await {
            Ok(Err(e)) => e.describe().1,
            Ok(Ok(_)) => panic!("an answer from a reset connection"),
            Err(_) => panic!("open hung on a reset connection"),
        };
        assert!(error.contains("reset"), "{error}");
        server.await.unwrap();
        // A body read off the wire until the server closes: a reset ends it
        // with an error, where a close would be its end.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(reset_one(listener, false));
        let mut body = Body {
            transport: Transport::Plain(TcpStream::connect(address).await.unwrap()),
            framing: Framing::Close,
            head_rest: None,
        };
        server.await.unwrap();
        let mut emit = |_: &[u8], _: Option<&Bytes>| panic!("bytes from a reset connection");
        let read = body.read(&mut emit);
        match tokio::time::timeout(Duration::from_secs(10), read).await {
            Ok(Err(e)) => assert!(e.describe().1.contains("reset"), "{}", e.describe().1),
            Ok(Ok(read)) => panic!("a reset connection read as {read:?}"),
            Err(_) => panic!("a body read hung on a reset connection"),
        }
    }

    #[test]
    fn open_sends_the_request_and_reads_the_head_before_a_body_that_comes_later() {
        promptly(open_then_read());
    }

    async fn open_then_read() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/s?a=1", listener.local_addr().unwrap())).unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let request = request_sent(&mut socket).await;
            socket
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 10\r\n\r\n")
                .await
                .unwrap();
            // The body comes in a later segment: the head came alone.
            tokio::time::sleep(Duration::from_millis(50)).await;
            socket.write_all(b"data: hi\n\n").await.unwrap();
            String::from_utf8(request).unwrap()
        });
        let no_headers = HeaderMap::new();
        let opening = open(&url, &no_headers, Duration::from_secs(5), None);
        let mut response = tokio::time::timeout(Duration::from_secs(10), opening)
            .await
            .expect("open hung")
            .unwrap_or_else(|e| panic!("{}", e.describe().1));
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.headers["content-type"], "text/event-stream");
        assert_eq!(response.body.framing, Framing::Length(10));
        let mut out = Vec::new();
        let mut reads = Vec::new();
        loop {
            let mut emit = |d: &[u8], _: Option<&Bytes>| out.extend_from_slice(d);
            let read = response.body.read(&mut emit);
            match tokio::time::timeout(Duration::from_secs(10), read)
                .await
                .expect("a body read hung")
            {
                Ok(Read::Bytes(n)) => reads.push(n),
                Ok(Read::End) => break,
                Err(e) => panic!("{}", e.describe().1),
            }
        }
        assert_eq!(out, b"data: hi\n\n");
        assert!(reads.iter().all(|&n| n > 0), "empty reads: {reads:?}");
        let request = server.await.unwrap();
        assert!(request.starts_with("GET /s?a=1 HTTP/1.1\r\n"), "{request}");
    }

    #[test]
    fn a_read_that_filled_the_buffer_and_emptied_the_socket_waits_for_more() {
        promptly(a_read_that_filled_the_buffer_and_emptied_the_socket_waits_for_more_run());
    }

    async fn a_read_that_filled_the_buffer_and_emptied_the_socket_waits_for_more_run() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            // Exactly one thread buffer's worth: the read that takes it all
            // leaves the readiness set, and the next wait finds nothing.
            socket.write_all(&vec![b'x'; READ_BUFFER]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            socket.write_all(b"end").await.unwrap();
        });
        let mut body = Body {
            transport: Transport::Plain(TcpStream::connect(address).await.unwrap()),
            framing: Framing::Close,
            head_rest: None,
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut got = 0;
        while got < READ_BUFFER + 3 {
            let mut count = |d: &[u8], _: Option<&Bytes>| got += d.len();
            let read = body.read(&mut count);
            match tokio::time::timeout(Duration::from_secs(10), read)
                .await
                .expect("a body read hung")
            {
                Ok(Read::Bytes(_)) => {}
                other => panic!("{:?} after {got} bytes", other.map_err(|e| e.describe().1)),
            }
        }
        assert_eq!(got, READ_BUFFER + 3);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_short_read_waits_for_the_next_edge_and_never_misses_the_end() {
        use tokio::io::AsyncWriteExt;
        use tokio::time::{timeout, Duration};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut buffer = vec![0; 64];
        client.write_all(b"hello").await.unwrap();
        server.readable().await.unwrap();
        assert_eq!(read_ready(&server, &mut buffer).unwrap(), 5);
        // Emptied: no readiness until more bytes come.
        assert!(timeout(Duration::from_millis(50), server.readable())
            .await
            .is_err());
        client.write_all(b"world").await.unwrap();
        timeout(Duration::from_secs(5), server.readable())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read_ready(&server, &mut buffer).unwrap(), 5);
        assert_eq!(&buffer[..5], b"world");
        // Bytes and the end together: the end is still seen after the bytes.
        client.write_all(b"last").await.unwrap();
        client.shutdown().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        server.readable().await.unwrap();
        assert_eq!(read_ready(&server, &mut buffer).unwrap(), 4);
        timeout(Duration::from_secs(5), server.readable())
            .await
            .expect("the end of input keeps the socket readable")
            .unwrap();
        assert_eq!(read_ready(&server, &mut buffer).unwrap(), 0);
        // A read that fills the buffer leaves the readiness alone.
        let (mut client, server) = {
            let client = TcpStream::connect(listener.local_addr().unwrap());
            let (client, accepted) = tokio::join!(client, listener.accept());
            (client.unwrap(), accepted.unwrap().0)
        };
        client.write_all(&[7; 100]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        server.readable().await.unwrap();
        assert_eq!(read_ready(&server, &mut buffer).unwrap(), 64);
        timeout(Duration::from_secs(5), server.readable())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read_ready(&server, &mut buffer).unwrap(), 36);
    }

    #[test]
    fn the_request_head_carries_host_agent_and_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("last-event-id", HeaderValue::from_static("42"));
        let head = request_head(
            &Url::parse("http://h.example:81/a/b?c=d#frag").unwrap(),
            &headers,
        );
        let head = String::from_utf8(head).unwrap();
        assert!(
            head.starts_with("GET /a/b?c=d HTTP/1.1\r\nHost: h.example:81\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nlast-event-id: 42\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "{head}");
    }
}
