//! Content decoding (`Content-Encoding: gzip` or `deflate`), bounded.
//!
//! Compressed bytes are queued as they arrive ([`Decoder::push`]) and decoded
//! a window at a time ([`Decoder::decode`], at most [`WINDOW`] bytes out per
//! call), so the relay never holds more than one window of decoded bytes
//! ahead of the parser, whatever the compression ratio: a 2 MB gzip body that
//! expands to 1 GiB costs one window, not 1 GiB. The caller reads the socket
//! again only once [`Decoder::wants_input`] says everything queued is decoded.
//!
//! `gzip` bodies may hold several members (RFC 1952); each member's CRC and
//! length are checked. `deflate` is zlib-wrapped by the RFC, but some servers
//! send raw deflate, which browsers accept too: the first two bytes tell them
//! apart. Both clients (reqwest and the lean one) hand this module the bytes
//! undecoded, and send [`ACCEPT_ENCODING`], which names exactly what it
//! decodes.

use std::fmt;

use flate2::{Crc, Decompress, FlushDecompress, Status};
use reqwest::header::{HeaderMap, CONTENT_ENCODING};

/// The `Accept-Encoding` every stream request sends.
pub const ACCEPT_ENCODING: &str = "gzip, deflate";

/// The most decoded bytes one [`Decoder::decode`] call produces.
pub const WINDOW: usize = 32 << 10;

/// A body's content coding, from its `Content-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
    Deflate,
}

/// An encoding the relay cannot decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unsupported Content-Encoding {:?} (sse-relay decodes gzip and deflate, and asked for {ACCEPT_ENCODING:?})",
            self.0
        )
    }
}

impl Coding {
    /// The coding the headers name. Several codings stacked, or one not
    /// decoded here, are [`Unsupported`].
    pub fn of(headers: &HeaderMap) -> Result<Coding, Unsupported> {
        let mut found = Coding::Identity;
        let mut named = Vec::new();
        for value in headers.get_all(CONTENT_ENCODING) {
            let text = String::from_utf8_lossy(value.as_bytes());
            for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                named.push(part.to_owned());
                let coding = match part.to_ascii_lowercase().as_str() {
                    // `none` is no registered coding, but servers send it
                    // to mean identity (graphql-sse's reference server does).
                    "identity" | "none" => continue,
                    "gzip" | "x-gzip" => Coding::Gzip,
                    "deflate" => Coding::Deflate,
                    _ => return Err(Unsupported(named.join(", "))),
                };
                if found != Coding::Identity {
                    return Err(Unsupported(named.join(", ")));
                }
                found = coding;
            }
        }
        Ok(found)
    }
}

/// Why a compressed body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Decodes one response body, a window at a time.
pub struct Decoder {
    coding: Coding,
    state: State,
    inflate: Decompress,
    crc: Crc,
    /// Compressed bytes received and not yet decoded, from `at` on.
    queued: Vec<u8>,
    at: usize,
    /// The last call stopped for want of input (not because its window
    /// was full): decoding again gives nothing until more is pushed.
    needs_input: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `deflate`: the first two bytes decide zlib or raw.
    Sniff,
    /// A gzip member header, being read.
    Header(Header),
    /// Compressed data.
    Data,
    /// A gzip member's 8-byte trailer: how many bytes of it have been read,
    /// and the bytes.
    Trailer { read: u8, bytes: [u8; 8] },
    /// Between gzip members, or after the deflate stream's end.
    End,
}

/// Where a gzip member header's parser stands (RFC 1952, section 2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Header {
    /// The fixed 10 bytes: how many have been read, and the flags.
    Fixed {
        read: u8,
        flags: u8,
    },
    /// FEXTRA's 2-byte length, then its bytes.
    ExtraLength {
        flags: u8,
        read: u8,
        length: u16,
    },
    Extra {
        flags: u8,
        left: u16,
    },
    /// FNAME, then FCOMMENT: zero-terminated.
    Name {
        flags: u8,
    },
    Comment {
        flags: u8,
    },
    /// FHCRC: two bytes.
    Crc {
        left: u8,
    },
}

const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;

impl Decoder {
    /// A decoder for `coding`; `None` for identity (nothing to decode).
    pub fn new(coding: Coding) -> Option<Box<Decoder>> {
        let state = match coding {
            Coding::Identity => return None,
            Coding::Gzip => State::Header(Header::Fixed { read: 0, flags: 0 }),
            Coding::Deflate => State::Sniff,
        };
        Some(Box::new(Decoder {
            coding,
            state,
            inflate: Decompress::new(false),
            crc: Crc::new(),
            queued: Vec::new(),
            at: 0,
            needs_input: true,
        }))
    }

    /// Queues compressed bytes for [`Decoder::decode`].
    pub fn push(&mut self, compressed: &[u8]) {
        if self.at == self.queued.len() {
            self.queued.clear();
            self.at = 0;
        }
        self.queued.extend_from_slice(compressed);
        self.needs_input = compressed.is_empty() && self.needs_input;
    }

    /// Whether all that can be decoded from what is queued has been (read
    /// the socket again).
    pub fn wants_input(&self) -> bool {
        self.needs_input
    }

    /// Decodes what is queued into `out` (at most its length, which should
    /// be [`WINDOW`]); returns how many bytes it wrote.
    pub fn decode(&mut self, out: &mut [u8]) -> Result<usize, DecodeError> {
        let mut filled = 0;
        // Every `break` below is for want of input, but the one for a full window.
        self.needs_input = true;
        loop {
            let input = &self.queued[self.at..];
            match self.state {
                State::Sniff => {
                    if input.len() < 2 {
                        break;
                    }
                    let zlib = (input[0] & 0x0f) == 8
                        && (input[0] >> 4) <= 7
                        && (u16::from(input[0]) << 8 | u16::from(input[1])) % 31 == 0;
                    self.inflate = Decompress::new(zlib);
                    self.state = State::Data;
                }
                State::Header(header) => {
                    let Some((&b, _)) = input.split_first() else {
                        break;
                    };
                    self.at += 1;
                    self.state = self.header_byte(header, b)?;
                }
                State::Data => {
                    if filled == out.len() {
                        self.needs_input = false;
                        break;
                    }
                    let before_in = self.inflate.total_in();
                    let before_out = self.inflate.total_out();
                    let status = self
                        .inflate
                        .decompress(input, &mut out[filled..], FlushDecompress::None)
                        .map_err(|e| DecodeError(format!("{}: {e}", self.name())))?;
                    let consumed = (self.inflate.total_in() - before_in) as usize;
                    let produced = (self.inflate.total_out() - before_out) as usize;
                    debug_assert!(consumed <= input.len() && filled + produced <= out.len());
                    self.at += consumed;
                    if self.coding == Coding::Gzip {
                        self.crc.update(&out[filled..filled + produced]);
                    }
                    filled += produced;
                    match status {
                        Status::StreamEnd => {
                            self.state = match self.coding {
                                Coding::Gzip => State::Trailer {
                                    read: 0,
                                    bytes: [0; 8],
                                },
                                _ => State::End,
                            };
                        }
                        Status::Ok | Status::BufError if consumed == 0 && produced == 0 => break,
                        Status::Ok | Status::BufError => {}
                    }
                }
                State::Trailer {
                    mut read,
                    mut bytes,
                } => {
                    let take = (8 - read as usize).min(input.len());
                    if take == 0 {
                        break;
                    }
                    bytes[read as usize..read as usize + take].copy_from_slice(&input[..take]);
                    read += take as u8;
                    self.at += take;
                    if read < 8 {
                        self.state = State::Trailer { read, bytes };
                        continue;
                    }
                    let crc = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                    let size = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
                    if crc != self.crc.sum() || size != self.crc.amount() {
                        return Err(DecodeError(
                            "gzip: the member's CRC or length does not match its data".to_owned(),
                        ));
                    }
                    self.state = State::End;
                }
                State::End => {
                    if input.is_empty() {
                        break;
                    }
                    if self.coding != Coding::Gzip {
                        // Bytes after the end of a deflate stream mean nothing.
                        self.at = self.queued.len();
                        break;
                    }
                    // The next gzip member.
                    self.inflate.reset(false);
                    self.crc.reset();
                    self.state = State::Header(Header::Fixed { read: 0, flags: 0 });
                }
            }
        }
        if self.at == self.queued.len() && self.queued.capacity() > 0 {
            // Nothing held while the stream idles.
            self.queued = Vec::new();
            self.at = 0;
        }
        Ok(filled)
    }

    /// The body ended: an error if it stopped inside a member or stream.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.state {
            State::End => Ok(()),
            // Nothing at all arrived: an empty body.
            State::Sniff if self.inflate.total_in() == 0 => Ok(()),
            State::Header(Header::Fixed { read: 0, .. }) if self.inflate.total_in() == 0 => Ok(()),
            _ => Err(DecodeError(format!(
                "{}: the body ended inside the compressed data",
                self.name()
            ))),
        }
    }

    fn name(&self) -> &'static str {
        match self.coding {
            Coding::Gzip => "gzip",
            _ => "deflate",
        }
    }

    fn header_byte(&self, header: Header, b: u8) -> Result<State, DecodeError> {
        let bad = |what: &str| Err(DecodeError(format!("gzip: {what}")));
        let next = match header {
            Header::Fixed { read, flags } => {
                match read {
                    0 if b != 0x1f => return bad("not a gzip member (bad magic)"),
                    1 if b != 0x8b => return bad("not a gzip member (bad magic)"),
                    2 if b != 8 => return bad("an unknown compression method"),
                    3 if b & 0xe0 != 0 => return bad("reserved header flags set"),
                    _ => {}
                }
                let flags = if read == 3 { b } else { flags };
                if read < 9 {
                    Header::Fixed {
                        read: read + 1,
                        flags,
                    }
                } else {
                    return Ok(Self::after(flags, FEXTRA - 1));
                }
            }
            Header::ExtraLength {
                flags,
                read,
                length,
            } => {
                let length = length | u16::from(b) << (8 * read);
                if read == 0 {
                    Header::ExtraLength {
                        flags,
                        read: 1,
                        length,
                    }
                } else if length == 0 {
                    return Ok(Self::after(flags, FEXTRA));
                } else {
                    Header::Extra {
                        flags,
                        left: length,
                    }
                }
            }
            Header::Extra { flags, left } => {
                if left > 1 {
                    Header::Extra {
                        flags,
                        left: left - 1,
                    }
                } else {
                    return Ok(Self::after(flags, FEXTRA));
                }
            }
            Header::Name { flags } if b == 0 => return Ok(Self::after(flags, FNAME)),
            Header::Comment { flags } if b == 0 => return Ok(Self::after(flags, FCOMMENT)),
            Header::Name { .. } | Header::Comment { .. } => header,
            Header::Crc { left } => {
                if left > 1 {
                    Header::Crc { left: left - 1 }
                } else {
                    return Ok(State::Data);
                }
            }
        };
        Ok(State::Header(next))
    }

    /// The header part that follows the one for flag `done` (the optional
    /// parts come in flag order: extra, name, comment, header CRC).
    fn after(flags: u8, done: u8) -> State {
        let pending = |flag: u8| flags & flag != 0 && flag > done;
        if pending(FEXTRA) {
            State::Header(Header::ExtraLength {
                flags,
                read: 0,
                length: 0,
            })
        } else if pending(FNAME) {
            State::Header(Header::Name { flags })
        } else if pending(FCOMMENT) {
            State::Header(Header::Comment { flags })
        } else if flags & FHCRC != 0 {
            State::Header(Header::Crc { left: 2 })
        } else {
            State::Data
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Decodes `body` pushed in pieces of `split` bytes, checking the window
    /// bound on every call.
    fn decode_all(coding: Coding, body: &[u8], split: usize) -> Result<Vec<u8>, DecodeError> {
        let mut decoder = Decoder::new(coding).unwrap();
        let mut all = Vec::new();
        let mut window = vec![0; WINDOW];
        for piece in body.chunks(split.max(1)) {
            decoder.push(piece);
            loop {
                let n = decoder.decode(&mut window)?;
                all.extend_from_slice(&window[..n]);
                if decoder.wants_input() {
                    break;
                }
            }
        }
        decoder.finish()?;
        Ok(all)
    }

    #[test]
    fn codings_come_from_the_header() {
        let mut h = HeaderMap::new();
        assert_eq!(Coding::of(&h), Ok(Coding::Identity));
        h.insert(CONTENT_ENCODING, "GZip".parse().unwrap());
        assert_eq!(Coding::of(&h), Ok(Coding::Gzip));
        h.insert(CONTENT_ENCODING, "deflate".parse().unwrap());
        assert_eq!(Coding::of(&h), Ok(Coding::Deflate));
        h.insert(CONTENT_ENCODING, "identity".parse().unwrap());
        assert_eq!(Coding::of(&h), Ok(Coding::Identity));
        h.insert(CONTENT_ENCODING, "None".parse().unwrap());
        assert_eq!(Coding::of(&h), Ok(Coding::Identity));
        h.insert(CONTENT_ENCODING, "none, gzip".parse().unwrap());
        assert_eq!(Coding::of(&h), Ok(Coding::Gzip));
        h.insert(CONTENT_ENCODING, "br".parse().unwrap());
        assert_eq!(Coding::of(&h), Err(Unsupported("br".into())));
        h.insert(CONTENT_ENCODING, "gzip, deflate".parse().unwrap());
        assert!(Coding::of(&h).is_err());
        assert!(Unsupported("zstd".into()).to_string().contains("\"zstd\""));
    }

    #[test]
    fn gzip_with_every_header_part_and_several_members_at_every_split() {
        // A member with FEXTRA, FNAME, FCOMMENT and FHCRC, built by hand.
        let deflated = {
            let mut e =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(b"data: one\n\n").unwrap();
            e.finish().unwrap()
        };
        let mut crc = Crc::new();
        crc.update(b"data: one\n\n");
        let mut member = vec![
            0x1f,
            0x8b,
            8,
            FHCRC | FEXTRA | FNAME | FCOMMENT,
            0,
            0,
            0,
            0,
            0,
            3,
        ];
        member.extend_from_slice(&[3, 0, b'a', b'b', b'c']);
        member.extend_from_slice(b"name\0comment\0");
        member.extend_from_slice(&[0xaa, 0xbb]);
        member.extend_from_slice(&deflated);
        member.extend_from_slice(&crc.sum().to_le_bytes());
        member.extend_from_slice(&crc.amount().to_le_bytes());
        let mut body = member.clone();
        body.extend_from_slice(&gzip(b"data: two\n\n"));
        for split in 1..=body.len() {
            assert_eq!(
                decode_all(Coding::Gzip, &body, split).unwrap(),
                b"data: one\n\ndata: two\n\n",
                "split {split}"
            );
        }
    }

    #[test]
    fn deflate_zlib_and_raw_both_decode() {
        let text = b"data: hello\n\n".repeat(50);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&text).unwrap();
        let zlib = z.finish().unwrap();
        let mut r = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        r.write_all(&text).unwrap();
        let raw = r.finish().unwrap();
        for split in [1, 2, 3, 7, 1000] {
            assert_eq!(decode_all(Coding::Deflate, &zlib, split).unwrap(), text);
            assert_eq!(decode_all(Coding::Deflate, &raw, split).unwrap(), text);
        }
    }

    #[test]
    fn a_bomb_comes_out_a_window_at_a_time() {
        let body = gzip(&vec![b'a'; 64 << 20]);
        assert!(body.len() < 400 << 10, "{}", body.len());
        let mut decoder = Decoder::new(Coding::Gzip).unwrap();
        decoder.push(&body);
        let mut window = vec![0; WINDOW];
        let mut total = 0usize;
        let mut calls = 0;
        while !decoder.wants_input() {
            total += decoder.decode(&mut window).unwrap();
            calls += 1;
        }
        assert_eq!(total, 64 << 20);
        assert!(calls >= (64 << 20) / WINDOW, "{calls}");
        decoder.finish().unwrap();
    }

    #[test]
    fn corrupt_and_cut_bodies_are_errors() {
        let mut body = gzip(b"data: x\n\n");
        let n = body.len();
        body[n - 5] ^= 0xff; // the length in the trailer
        assert!(decode_all(Coding::Gzip, &body, 3).is_err());
        assert!(decode_all(Coding::Gzip, b"not gzip at all", 3).is_err());
        let body = gzip(b"data: x\n\n");
        let cut = &body[..body.len() - 3];
        assert!(decode_all(Coding::Gzip, cut, 64).is_err());
        // Nothing at all is an empty body, not an error.
        assert_eq!(decode_all(Coding::Gzip, b"", 1).unwrap(), b"");
    }
}
