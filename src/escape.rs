//! JSON string escaping for the JSON-lines encoder ([`crate::record`]).
//!
//! Every record written to a stdout or file sink carries four JSON strings: the
//! stream name, the id and the event type, short and rarely escaped, and the
//! data, often itself JSON, up to tens of KiB with a `"` every few bytes.
//! Escaping was the largest single cost of the relay (43% of the time on 16 KiB
//! data lines), so this module is written for those two cases.
//!
//! The shape, as in `memchr`: a loop over blocks of the input, each classified
//! at once into a bit mask of the bytes that need escaping, writing straight
//! into the `Vec`'s spare capacity (its length is set once, at the end):
//!
//! * on x86_64 with AVX-512 VBMI2 (detected at run time; Intel since Ice
//!   Lake, AMD since Zen 4), strings of 32 bytes or more, 32 bytes at a time:
//!   `pdep` and `pext` turn the block's mask into the output places of its
//!   bytes, one `vpexpandb` moves them there, and a blend fills the other
//!   places with `\`; one 64-byte store. On the `large` data (a `"` every 5.5
//!   bytes) it ran at 20.0 GiB/s against 9.0 for the SSSE3 code below
//!   (criterion, consecutive runs on one machine);
//! * on x86_64 with SSSE3 (detected at run time; every x86_64 CPU since about
//!   2011 has it), 16 bytes at a time: SSE2 compares give the mask, and each
//!   half block is spread over 16 bytes by one `pshufb`, with a `\` slid in
//!   before each `"` or `\`, from a table of the 256 masks. There is no branch
//!   on the number or the place of the escapes, which is what the data's
//!   quotes made expensive: with SSE2 alone (no byte shuffle), a loop per
//!   escape (write the escape, store the rest of the block after it) ends on a
//!   data-dependent branch in almost every block, and ran at 2.4 to 2.9 GiB/s
//!   on the `large` data against 5 to 7 here. (Resuming the scan right after
//!   each escape, rather than at the next block, was slower still, 1 GiB/s: a
//!   chain of load, compare, mask and address per escape.);
//! * control characters (rare; some take the 6-byte `\u00XX` form) send their
//!   block to the word code below;
//! * elsewhere, without SSSE3, for the control characters, and for strings
//!   under 16 bytes (where the call into the SSSE3 code costs more than it
//!   saves), 8 bytes at a time in a `u64` (SWAR), with that loop per escape;
//! * each block or word is stored whole at the write position, which then
//!   advances only over its output: the bytes past it are overwritten next or
//!   left in the spare capacity. So a run of plain bytes costs one store, not a
//!   `memcpy` call and a capacity check (the capacity is checked once a block);
//! * the tail of the input (under a block) is read into registers with at most
//!   two overlapping loads, never past the end of the `&str` (which would be
//!   undefined behaviour even where the hardware allows it), and never through
//!   a stack buffer: narrow stores reloaded wide stall on store forwarding.
//!
//! [`json_string_len`] runs on every record too (batch limits), with SSE2 (no
//! shuffle needed): escapes are counted by a popcount of the mask, and only the
//! control characters are looked at one by one.

/// Appends `s` as a quoted JSON string (RFC 8259: `"` `\\` and bytes < 0x20 escaped; `\n` `\r` `\t` `\u{8}` `\u{c}` as short escapes, other controls as \u00XX lowercase hex; everything else, including non-ASCII UTF-8 and 0x7F, copied as is).
pub fn write_json_string(s: &str, out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    #[cfg(target_arch = "x86_64")]
    if bytes.len() >= 16 {
        if bytes.len() >= avx512::FROM && avx512::available() {
            // SAFETY: the features `avx512::write` needs are available.
            unsafe { avx512::write(bytes, out) };
            return;
        }
        if std::is_x86_feature_detected!("ssse3") {
            // SAFETY: SSSE3 is available.
            unsafe { ssse3::write(bytes, out) };
            return;
        }
    }
    words::write(bytes, out);
}

/// The exact length `write_json_string` appends, quotes included.
pub fn json_string_len(s: &str) -> usize {
    let bytes = s.as_bytes();
    #[cfg(target_arch = "x86_64")]
    let (extra, rest) = sse2::extra(bytes);
    #[cfg(not(target_arch = "x86_64"))]
    let (extra, rest) = (0, bytes);
    bytes.len() + extra + words::extra(rest) + 2
}

/// For each byte that needs escaping, its escape sequence in the low bytes of a
/// little-endian `u64` and the sequence's length (2 or 6) in the top byte; 0 for
/// the bytes copied as is.
static ESCAPES: [u64; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    /// Packs `sequence` (at most 7 bytes) and its length.
    const fn pack(sequence: &[u8]) -> u64 {
        let mut packed = (sequence.len() as u64) << 56;
        let mut i = 0;
        while i < sequence.len() {
            packed |= (sequence[i] as u64) << (8 * i);
            i += 1;
        }
        packed
    }
    let mut table = [0u64; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = pack(&[b'\\', b'u', b'0', b'0', HEX[b >> 4], HEX[b & 0xF]]);
        b += 1;
    }
    table[b'\n' as usize] = pack(b"\\n");
    table[b'\r' as usize] = pack(b"\\r");
    table[b'\t' as usize] = pack(b"\\t");
    table[0x08] = pack(b"\\b");
    table[0x0C] = pack(b"\\f");
    table[b'"' as usize] = pack(b"\\\"");
    table[b'\\' as usize] = pack(b"\\\\");
    table
};

/// The extra length of the escape of control `b`, beyond the byte itself and
/// its `\`: 4 for the `\u00XX` form, 0 for a short escape.
#[inline(always)]
fn control_extra(b: u8) -> usize {
    (ESCAPES[b as usize] >> 56) as usize - 2
}

/// Spare capacity a block may need: six bytes out per byte in (32 in, the
/// AVX-512 block), and the garbage of the last store past that.
const ROOM: usize = 7 * 32;

/// The capacity to reserve for escaping `n` more bytes: enough for most text,
/// and for JSON data with a quote every eight bytes, without a second pass to
/// count. Denser escapes grow the `Vec` mid-way (see [`Writer::grow`]).
fn estimate(n: usize) -> usize {
    n + n / 8 + ROOM + 2
}

/// Appends `bytes` quoted, escaped by `escape`.
#[inline(always)]
fn write_with(bytes: &[u8], out: &mut Vec<u8>, escape: impl FnOnce(&[u8], &mut Writer)) {
    out.reserve(estimate(bytes.len()));
    let mut w = Writer::new(out);
    // SAFETY: `estimate` reserved more than `ROOM`.
    unsafe { w.put(b'"') };
    escape(bytes, &mut w);
    // SAFETY: `make_room` (or `estimate`) left `ROOM` bytes before the last
    // block, and a block leaves more than one of them.
    unsafe { w.put(b'"') };
    w.finish();
}

/// The write position in a `Vec`'s spare capacity; the `Vec`'s length is set
/// by [`Writer::finish`].
struct Writer<'a> {
    out: &'a mut Vec<u8>,
    /// Where the next output byte goes; everything before it is written.
    dst: *mut u8,
    /// The end of the capacity.
    end: *mut u8,
}

impl<'a> Writer<'a> {
    #[inline(always)]
    fn new(out: &'a mut Vec<u8>) -> Self {
        let (dst, end) = Self::spare(out);
        Writer { out, dst, end }
    }

    /// The start and end of `out`'s spare capacity.
    #[inline(always)]
    fn spare(out: &mut Vec<u8>) -> (*mut u8, *mut u8) {
        let (len, cap) = (out.len(), out.capacity());
        let base = out.as_mut_ptr();
        // SAFETY: `len` and `cap` are within (or one past) the allocation.
        unsafe { (base.add(len), base.add(cap)) }
    }

    /// Ensures `ROOM` bytes of spare capacity at `dst`, with `remaining` bytes
    /// of input left to escape.
    #[inline(always)]
    fn make_room(&mut self, remaining: usize) {
        if self.end.addr() - self.dst.addr() < ROOM {
            self.grow(remaining);
        }
    }

    #[cold]
    #[inline(never)]
    fn grow(&mut self, remaining: usize) {
        self.finish();
        self.out.reserve(estimate(remaining));
        (self.dst, self.end) = Self::spare(self.out);
    }

    /// Writes one byte.
    ///
    /// # Safety
    ///
    /// A byte of spare capacity at `dst`.
    #[inline(always)]
    unsafe fn put(&mut self, b: u8) {
        // SAFETY: the caller guarantees the capacity.
        unsafe {
            self.dst.write(b);
            self.dst = self.dst.add(1);
        }
    }

    /// Sets the `Vec`'s length to what was written.
    #[inline(always)]
    fn finish(&mut self) {
        let len = self.dst.addr() - self.out.as_ptr().addr();
        // SAFETY: every byte before `dst` was written (by the block and escape
        // stores, or was there before), within the capacity.
        unsafe { self.out.set_len(len) };
    }
}

/// The SSE2 part (baseline on x86_64): classifying a block, and counting.
#[cfg(target_arch = "x86_64")]
mod sse2 {
    use core::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };

    use super::control_extra;

    /// A bit per byte (bit `i` for byte `i`) that needs escaping, and one per
    /// control (< 0x20) among them.
    #[inline(always)]
    pub(super) fn classify(block: __m128i) -> (u32, u32) {
        // SAFETY: SSE2 is part of the x86_64 baseline.
        unsafe {
            let quote = _mm_cmpeq_epi8(block, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(block, _mm_set1_epi8(b'\\' as i8));
            // `min(b, 0x1F) == b` is an unsigned `b <= 0x1F` (SSE2's ordered
            // compares are signed, and would take non-ASCII bytes for controls).
            let control = _mm_cmpeq_epi8(_mm_min_epu8(block, _mm_set1_epi8(0x1F)), block);
            let escapes = _mm_or_si128(_mm_or_si128(quote, backslash), control);
            (
                _mm_movemask_epi8(escapes) as u32,
                _mm_movemask_epi8(control) as u32,
            )
        }
    }

    /// The extra length of the escapes in the 16-byte blocks of `bytes`, and
    /// the rest (shorter than a block).
    #[inline(always)]
    pub(super) fn extra(bytes: &[u8]) -> (usize, &[u8]) {
        let mut extra = 0;
        let mut blocks = bytes.chunks_exact(16);
        for block in &mut blocks {
            // SAFETY: `block` is 16 bytes long.
            let (escapes, mut controls) =
                classify(unsafe { _mm_loadu_si128(block.as_ptr().cast()) });
            // One per escape (the `\`), then four more per `\u00XX`.
            extra += escapes.count_ones() as usize;
            while controls != 0 {
                extra += control_extra(block[controls.trailing_zeros() as usize]);
                controls &= controls - 1;
            }
        }
        (extra, blocks.remainder())
    }
}

/// 16-byte blocks spread with SSSE3's `pshufb`, no branch per escape.
#[cfg(target_arch = "x86_64")]
mod ssse3 {
    use core::arch::x86_64::{
        __m128i, _mm_cvtsi128_si64, _mm_load_si128, _mm_loadu_si128, _mm_set1_epi8, _mm_set_epi64x,
        _mm_shuffle_epi8, _mm_storeu_si128, _mm_unpackhi_epi64, _mm_unpacklo_epi64,
    };

    use super::{sse2::classify, words, Writer};

    /// For each mask of the `"` and `\` among 8 bytes: the `pshufb` lanes that
    /// spread the 8 bytes (lanes 0 to 7) over up to 16, each marked one after a
    /// `\` (lane 8, or any from 8 on: they all hold a `\`).
    static SPREAD: [Lanes; 256] = {
        let mut table = [Lanes([0x80; 16]); 256];
        let mut mask = 0;
        while mask < 256 {
            let mut k = 0;
            let mut j = 0;
            while j < 8 {
                if mask & (1 << j) != 0 {
                    table[mask].0[k] = 8;
                    k += 1;
                }
                table[mask].0[k] = j as u8;
                k += 1;
                j += 1;
            }
            mask += 1;
        }
        table
    };

    /// Aligned, so that a load never straddles two cache lines.
    #[derive(Clone, Copy)]
    #[repr(align(16))]
    struct Lanes([u8; 16]);

    /// The bits set in each byte: how many `\` a mask of 8 bytes adds. (The
    /// `popcnt` instruction is not part of SSSE3.)
    static ONES: [u8; 256] = {
        let mut table = [0; 256];
        let mut mask = 0;
        while mask < 256 {
            table[mask] = (mask as u8).count_ones() as u8;
            mask += 1;
        }
        table
    };

    /// Appends `bytes` quoted.
    ///
    /// # Safety
    ///
    /// SSSE3 is available.
    #[target_feature(enable = "ssse3")]
    pub(super) unsafe fn write(bytes: &[u8], out: &mut Vec<u8>) {
        // SAFETY: SSSE3 is available (the caller guarantees it).
        super::write_with(bytes, out, |bytes, w| unsafe { escape(bytes, w) });
    }

    /// Escapes `bytes` (unquoted) at the writer's position.
    ///
    /// # Safety
    ///
    /// SSSE3 is available (enabled in the caller, into which this is inlined,
    /// as [`write_block`] is).
    #[inline(always)]
    pub(super) unsafe fn escape(bytes: &[u8], w: &mut Writer) {
        let mut blocks = bytes.chunks_exact(16);
        for (i, block) in (&mut blocks).enumerate() {
            w.make_room(bytes.len() - 16 * i);
            // SAFETY: `block` is 16 bytes long; `make_room` left `ROOM`.
            w.dst = unsafe { write_block(_mm_loadu_si128(block.as_ptr().cast()), 16, w.dst) };
        }
        let tail = blocks.remainder();
        if !tail.is_empty() {
            w.make_room(tail.len());
            let low = words::read(&tail[..tail.len().min(8)]);
            let high = if tail.len() > 8 {
                words::read(&tail[8..])
            } else {
                0
            };
            // SAFETY: `make_room` left `ROOM`.
            w.dst =
                unsafe { write_block(_mm_set_epi64x(high as i64, low as i64), tail.len(), w.dst) };
        }
    }

    /// Escapes the first `n` bytes (1 to 16) of `block` into `dst`, and returns
    /// the end of what it wrote.
    ///
    /// # Safety
    ///
    /// SSSE3 is available, and `ROOM` bytes are writable at `dst`.
    #[inline(always)]
    unsafe fn write_block(block: __m128i, n: usize, mut dst: *mut u8) -> *mut u8 {
        // Only the first `n` bytes: a tail is padded with zeros, controls.
        let valid = u32::MAX >> (32 - n);
        let (escapes, controls) = classify(block);
        let (escapes, controls) = (escapes & valid, controls & valid);
        // SAFETY: SSSE3 is available (the caller guarantees it); the stores
        // stay within `ROOM`: 16 bytes in, at most 96 out plus a store past them.
        unsafe {
            if controls != 0 {
                // Rare, and some take the 6-byte form: the word code does them.
                let low = _mm_cvtsi128_si64(block) as u64;
                let high = _mm_cvtsi128_si64(_mm_unpackhi_epi64(block, block)) as u64;
                dst = words::write_word(low, n.min(8), dst);
                if n > 8 {
                    dst = words::write_word(high, n - 8, dst);
                }
                return dst;
            }
            // Each half is spread from its 8 bytes and 8 `\` over 16 bytes,
            // stored whole; the write position advances over its output.
            let backslashes = _mm_set1_epi8(b'\\' as i8);
            let halves = [
                (
                    _mm_unpacklo_epi64(block, backslashes),
                    escapes & 0xFF,
                    n.min(8),
                ),
                (
                    _mm_unpackhi_epi64(block, backslashes),
                    escapes >> 8,
                    n.saturating_sub(8),
                ),
            ];
            for (half, mask, len) in halves {
                let lanes = _mm_load_si128(SPREAD[mask as usize].0.as_ptr().cast());
                _mm_storeu_si128(dst.cast(), _mm_shuffle_epi8(half, lanes));
                dst = dst.add(len + ONES[mask as usize] as usize);
            }
            dst
        }
    }
}

/// 32-byte blocks with AVX-512's byte expand (`vpexpandb`, VBMI2): Intel
/// since Ice Lake, AMD since Zen 4. The data of the `large` corpus has a `"`
/// every 5.5 bytes, so nearly every 8-byte half block of the SSSE3 code has
/// an escape; here a whole block is one expand and one blend, whatever its
/// escapes.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use core::arch::x86_64::{
        _mm256_cmpeq_epi8_mask, _mm256_cmple_epu8_mask, _mm256_loadu_si256, _mm256_set1_epi8,
        _mm512_castsi256_si512, _mm512_mask_blend_epi8, _mm512_maskz_expand_epi8, _mm512_set1_epi8,
        _mm512_storeu_si512, _pdep_u64, _pext_u64,
    };

    use super::{ssse3, words};

    /// The shortest string this code takes: one block. (Its remainder goes
    /// through the SSSE3 code, inlined here: called out of line, it made the
    /// `small` corpus' data, 30 to 40 bytes, 13% slower to escape.)
    pub(super) const FROM: usize = 32;

    /// Whether this CPU has what [`write`] uses (checked once; cached by std).
    #[inline(always)]
    pub(super) fn available() -> bool {
        std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512vbmi2")
            && std::is_x86_feature_detected!("bmi2")
    }

    /// Appends `bytes` quoted.
    ///
    /// # Safety
    ///
    /// [`available`] is true.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi2,bmi2,popcnt,ssse3")]
    pub(super) unsafe fn write(bytes: &[u8], out: &mut Vec<u8>) {
        super::write_with(bytes, out, |bytes, w| {
            let mut blocks = bytes.chunks_exact(32);
            for (i, block) in (&mut blocks).enumerate() {
                w.make_room(bytes.len() - 32 * i);
                // SAFETY: `block` is 32 bytes long; `make_room` left `ROOM`:
                // 64 bytes stored, or 6 per byte plus a word by the word code.
                w.dst = unsafe { write_block(block, w.dst) };
            }
            // SAFETY: SSSE3 is available (an AVX-512 CPU has it).
            unsafe { ssse3::escape(blocks.remainder(), w) };
        });
    }

    /// Escapes the 32 bytes of `block` into `dst`, and returns the end of
    /// what it wrote.
    ///
    /// # Safety
    ///
    /// The features of [`write`], `block` is 32 bytes long, and `ROOM` bytes
    /// are writable at `dst`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi2,bmi2,popcnt")]
    unsafe fn write_block(block: &[u8], dst: *mut u8) -> *mut u8 {
        debug_assert_eq!(block.len(), 32);
        // SAFETY: `block` holds the 32 bytes loaded; the caller guarantees the
        // features and the room for the 64-byte store.
        unsafe {
            let bytes = _mm256_loadu_si256(block.as_ptr().cast());
            let quotes = _mm256_cmpeq_epi8_mask(bytes, _mm256_set1_epi8(b'"' as i8));
            let backslashes = _mm256_cmpeq_epi8_mask(bytes, _mm256_set1_epi8(b'\\' as i8));
            let controls = _mm256_cmple_epu8_mask(bytes, _mm256_set1_epi8(0x1F));
            if controls != 0 {
                // Rare, and some take the 6-byte form: the word code does them.
                let mut dst = dst;
                for word in block.chunks_exact(8) {
                    dst = words::write_word(words::read(word), 8, dst);
                }
                return dst;
            }
            let escapes = u64::from(quotes | backslashes);
            // Lay each input byte over two output slots, a `\` slot (even)
            // kept only before an escape, and its own slot (odd); squeezing out
            // the unkept slots leaves a bit per output byte that is an input
            // byte. Its length is the block's output length.
            const ODD: u64 = 0xAAAA_AAAA_AAAA_AAAA;
            let kept = ODD | _pdep_u64(escapes, !ODD);
            let from_input = _pext_u64(ODD, kept);
            let len = kept.count_ones() as usize;
            debug_assert_eq!(len, 32 + escapes.count_ones() as usize);
            let spread = _mm512_maskz_expand_epi8(from_input, _mm512_castsi256_si512(bytes));
            let out = _mm512_mask_blend_epi8(from_input, _mm512_set1_epi8(b'\\' as i8), spread);
            _mm512_storeu_si512(dst.cast(), out);
            dst.add(len)
        }
    }
}

/// 8-byte words in a `u64` (SWAR): short strings, blocks with control
/// characters, the tail after SSE2 counting, and other targets.
mod words {
    use super::{control_extra, ESCAPES};

    const ONES: u64 = 0x0101_0101_0101_0101;
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    const HIGH: u64 = 0x8080_8080_8080_8080;

    /// Appends `bytes` quoted.
    #[inline(always)]
    pub(super) fn write(bytes: &[u8], out: &mut Vec<u8>) {
        super::write_with(bytes, out, |bytes, w| {
            for (i, chunk) in bytes.chunks(8).enumerate() {
                w.make_room(bytes.len() - 8 * i);
                // SAFETY: `make_room` left `ROOM` bytes of spare capacity.
                w.dst = unsafe { write_word(read(chunk), chunk.len(), w.dst) };
            }
        });
    }

    /// Escapes the first `n` bytes (1 to 8) of `word` into `dst`, and returns
    /// the end of what it wrote.
    ///
    /// # Safety
    ///
    /// `6 * n + 8` bytes are writable at `dst`.
    #[inline(always)]
    pub(super) unsafe fn write_word(word: u64, n: usize, mut dst: *mut u8) -> *mut u8 {
        // SAFETY: the writes stay within 6 bytes per input byte plus 8.
        unsafe {
            dst.cast::<u64>().write_unaligned(word.to_le());
            let mut escapes = escapes(word) & (HIGH >> (64 - 8 * n));
            // Bytes before `done` are written.
            let mut done = 0;
            while escapes != 0 {
                let i = (escapes.trailing_zeros() / 8) as usize;
                let from_i = word >> (8 * i);
                // The escape, one 8-byte store of which its 2 or 6 bytes count.
                let packed = ESCAPES[from_i as u8 as usize];
                dst = dst.add(i - done);
                dst.cast::<u64>().write_unaligned(packed.to_le());
                dst = dst.add((packed >> 56) as usize);
                done = i + 1;
                // Then the rest of the word (in two shifts: 64 would overflow).
                dst.cast::<u64>().write_unaligned((from_i >> 8).to_le());
                escapes &= escapes - 1;
            }
            dst.add(n - done)
        }
    }

    /// The extra length of the escapes in `bytes`.
    #[inline(always)]
    pub(super) fn extra(bytes: &[u8]) -> usize {
        let mut extra = 0;
        for chunk in bytes.chunks(8) {
            let word = read(chunk);
            let lanes = HIGH >> (64 - 8 * chunk.len());
            let escapes = escapes(word) & lanes;
            if escapes == 0 {
                continue;
            }
            // One per escape (the `\`), then four more per `\u00XX`.
            extra += escapes.count_ones() as usize;
            let mut controls = below(word, 0x20) & lanes;
            while controls != 0 {
                extra += control_extra(chunk[(controls.trailing_zeros() / 8) as usize]);
                controls &= controls - 1;
            }
        }
        extra
    }

    /// `chunk` (1 to 8 bytes) as a little-endian word, zero-padded, read with
    /// at most two overlapping loads.
    #[inline(always)]
    pub(super) fn read(chunk: &[u8]) -> u64 {
        let n = chunk.len();
        let le32 = |at: usize| u64::from(u32::from_le_bytes(chunk[at..at + 4].try_into().unwrap()));
        match n {
            8.. => u64::from_le_bytes(chunk[..8].try_into().unwrap()),
            4..8 => le32(0) | le32(n - 4) << (8 * (n - 4)),
            _ => {
                let byte = |at: usize| u64::from(chunk[at]) << (8 * at);
                byte(0) | byte(n / 2) | byte(n - 1)
            }
        }
    }

    /// The top bit of each byte that needs escaping: `"`, `\` and controls.
    #[inline(always)]
    fn escapes(word: u64) -> u64 {
        let quote = below(word ^ (ONES * u64::from(b'"')), 1);
        let backslash = below(word ^ (ONES * u64::from(b'\\')), 1);
        quote | backslash | below(word, 0x20)
    }

    /// The top bit of each byte below `n` (at most 0x80). Exact for every
    /// byte, unlike the shorter `(x - n) & !x` trick, whose borrows may flag
    /// the bytes after a match: here the addition cannot carry out of a byte.
    #[inline(always)]
    fn below(word: u64, n: u8) -> u64 {
        !(((word & LOW7) + ONES * u64::from(0x80 - n)) | word) & HIGH
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The obvious escaper, a byte at a time, as the reference.
    fn reference(s: &str) -> Vec<u8> {
        let mut out = vec![b'"'];
        for &b in s.as_bytes() {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0C => out.extend_from_slice(b"\\f"),
                0..0x20 => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
                _ => out.push(b),
            }
        }
        out.push(b'"');
        out
    }

    /// Checks every path against the reference: the public functions, and the
    /// word and SSSE3 code on strings of any length (the public function picks
    /// by length), appending to an empty `Vec` and to a non-empty one.
    fn check(s: &str) {
        let expected = reference(s);
        type Write = fn(&[u8], &mut Vec<u8>);
        let mut paths: Vec<(&str, Write)> = vec![
            ("public", |b, out| {
                write_json_string(std::str::from_utf8(b).unwrap(), out)
            }),
            ("words", words::write),
        ];
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("ssse3") {
            // SAFETY: SSSE3 is available.
            paths.push(("ssse3", |b, out| unsafe { ssse3::write(b, out) }));
        }
        #[cfg(target_arch = "x86_64")]
        if avx512::available() {
            // SAFETY: the features it needs are available.
            paths.push(("avx512", |b, out| unsafe { avx512::write(b, out) }));
        }
        for (name, write) in paths {
            let mut out = Vec::new();
            write(s.as_bytes(), &mut out);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&expected),
                "{name}: {s:?}"
            );
            let mut out = b"prefix".to_vec();
            write(s.as_bytes(), &mut out);
            assert_eq!(&out[..6], b"prefix", "{name}");
            assert_eq!(out[6..], expected, "{name}: {s:?}");
        }
        assert_eq!(json_string_len(s), expected.len(), "{s:?}");
        let words = s.len() + words::extra(s.as_bytes()) + 2;
        assert_eq!(words, expected.len(), "words: {s:?}");
    }

    #[test]
    fn reference_matches_serde_json() {
        let all: String = (0u8..0x80).map(char::from).collect::<String>() + "ü€😀";
        assert_eq!(reference(&all), serde_json::to_vec(&all).unwrap());
    }

    #[test]
    fn every_ascii_byte_and_multibyte_chars_round_trip() {
        let all: String = (0u8..0x80).map(char::from).collect::<String>() + "ü€😀\u{7f}";
        let mut out = Vec::new();
        write_json_string(&all, &mut out);
        assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), all);
        assert_eq!(json_string_len(&all), out.len());
        check(&all);
        // Each alone too: a string shorter than a block.
        for b in 0u8..0x80 {
            check(&char::from(b).to_string());
        }
        check("");
    }

    #[test]
    fn escapes_are_found_at_every_offset() {
        // Each special byte at every offset of a plain string: every lane of a
        // block, both sides of block boundaries, and the tail. 0x7F and the
        // non-ASCII bytes must be copied as is.
        let plain: Vec<char> = "abcdefghij\u{7f}é€lmnopqrstuvwxyz0123456789ABCDEFGHIJ"
            .chars()
            .collect();
        for special in ['"', '\\', '\n', '\u{1}', '\u{1f}', '\u{7f}'] {
            for at in 0..40 {
                for len in [at, at + 1, at + 3, at + 17, plain.len()] {
                    let mut s: Vec<char> = plain[..len.min(plain.len())].to_vec();
                    s.insert(at.min(s.len()), special);
                    let s: String = s.into_iter().collect();
                    check(&s);
                }
            }
        }
    }

    #[test]
    fn long_strings_with_every_kind_of_escape() {
        let s: String = (0..20_000u32)
            .map(|i| match i % 13 {
                0 => '"',
                2 => '\\',
                3 => '\u{2}',
                5 => 'é',
                7 => '\n',
                8 => '\u{1f}',
                9 => '😀',
                _ => 'x',
            })
            .collect();
        check(&s);
        // Nothing but 6-byte escapes: the worst case for the capacity estimate.
        check(&"\u{1}".repeat(20_000));
        check(&"\"".repeat(20_000));
        let mut out = Vec::new();
        write_json_string(&s, &mut out);
        assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), s);
    }

    /// Strings biased towards the bytes that need escaping.
    fn escapey() -> impl Strategy<Value = String> {
        let c = prop_oneof![
            3 => Just('"'),
            2 => Just('\\'),
            2 => (0u8..0x20).prop_map(char::from),
            1 => Just('\u{7f}'),
            6 => any::<char>(),
            6 => proptest::char::range('a', 'z'),
        ];
        proptest::collection::vec(c, 0..200).prop_map(|v| v.into_iter().collect())
    }

    proptest! {
        #[test]
        fn any_string_matches_the_reference(s in any::<String>()) {
            check(&s);
        }

        #[test]
        fn escape_heavy_strings_match_the_reference(s in escapey()) {
            check(&s);
        }
    }
}
