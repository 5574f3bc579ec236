//! Finding the line ends (CR or LF) of a chunk whose lines are mostly short.
//!
//! Most event-stream lines are tens of bytes: `id: 42`, `event: update`, a
//! small JSON `data` line. One `memchr2` call per line pays a call and a
//! vector set-up for every line; on ~70-byte events of three lines that was a
//! third of the parser's time. [`LineEnds`] instead classifies 64 bytes at a
//! time into a bit mask, one bit per CR or LF, and hands out the line ends of
//! a block from its mask. A block with no line end at all means a long line:
//! the rest of it is left to `memchr2`, which is faster over kilobytes.

/// Bytes classified at once: one bit of a `u64` each.
const BLOCK: usize = 64;

/// Blocks looked at for a line's end before the line counts as long and goes
/// to memchr2. Lines of a few hundred bytes (most JSON payloads) stay on the
/// masks; a long line pays for four masks, which left the parsing of 16 KiB
/// lines as fast as before.
const MASKED_BLOCKS: usize = 4;

/// The line ends of one chunk, found in increasing order.
pub(super) struct LineEnds<'c> {
    hay: &'c [u8],
    /// Where the block `mask` describes starts.
    base: usize,
    /// Bit `i` is set when `hay[base + i]` is CR or LF.
    mask: u64,
}

impl<'c> LineEnds<'c> {
    pub(super) fn new(hay: &'c [u8]) -> Self {
        LineEnds {
            hay,
            base: 0,
            mask: mask_at(hay, 0),
        }
    }

    /// The first CR or LF at or after `from`. `from` never goes back: it is
    /// at least every position asked for or returned before.
    #[inline]
    pub(super) fn next_from(&mut self, from: usize) -> Option<usize> {
        debug_assert!(from >= self.base, "line ends are asked for in order");
        let offset = from - self.base;
        if offset < BLOCK {
            let ahead = self.mask & (u64::MAX << offset);
            if ahead != 0 {
                let end = self.base + ahead.trailing_zeros() as usize;
                debug_assert!(matches!(self.hay[end], b'\n' | b'\r'));
                return Some(end);
            }
        }
        self.next_block(from)
    }

    /// The current block has no line end at or after `from`: look further.
    #[inline]
    fn next_block(&mut self, from: usize) -> Option<usize> {
        // Everything before the end of the current block has been looked at.
        let mut start = from.max(self.base + BLOCK);
        for _ in 0..MASKED_BLOCKS {
            if start >= self.hay.len() {
                return None;
            }
            self.base = start;
            self.mask = mask_at(self.hay, start);
            if self.mask != 0 {
                return Some(start + self.mask.trailing_zeros() as usize);
            }
            start += BLOCK;
        }
        self.long_line(start)
    }

    /// Blocks without a line end from the start of the line to `start`: a
    /// long line, whose end memchr2 finds at tens of GB/s.
    #[cold]
    fn long_line(&mut self, start: usize) -> Option<usize> {
        let end = start + memchr::memchr2(b'\n', b'\r', self.hay.get(start..)?)?;
        // The block that ends at `end`: the 63 bytes before it belong to the
        // long line (every block since the line's start was empty), so its
        // mask is known without looking.
        self.base = end + 1 - BLOCK;
        self.mask = 1 << (BLOCK - 1);
        debug_assert_eq!(self.mask, mask_at(self.hay, self.base));
        Some(end)
    }
}

/// Bit `i` set when `hay[at + i]` is CR or LF, for the up to 64 bytes from
/// `at`.
#[inline]
fn mask_at(hay: &[u8], at: usize) -> u64 {
    let rest = &hay[at.min(hay.len())..];
    match rest.first_chunk::<BLOCK>() {
        Some(block) => mask_of(block),
        None => {
            // The chunk's last, short block: zeros are neither CR nor LF.
            let mut block = [0u8; BLOCK];
            block[..rest.len()].copy_from_slice(rest);
            mask_of(&block)
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn mask_of(block: &[u8; BLOCK]) -> u64 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    let mut mask = 0u64;
    // SAFETY: SSE2 is part of every x86_64 CPU; each unaligned 16-byte load
    // lies inside `block`, which is 64 bytes long.
    unsafe {
        let lf = _mm_set1_epi8(b'\n' as i8);
        let cr = _mm_set1_epi8(b'\r' as i8);
        for lane in 0..BLOCK / 16 {
            let bytes = _mm_loadu_si128(block.as_ptr().add(lane * 16).cast::<__m128i>());
            let ends = _mm_or_si128(_mm_cmpeq_epi8(bytes, lf), _mm_cmpeq_epi8(bytes, cr));
            // movemask sets the low 16 bits only: the cast keeps them.
            mask |= u64::from(_mm_movemask_epi8(ends) as u16) << (lane * 16);
        }
    }
    mask
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn mask_of(block: &[u8; BLOCK]) -> u64 {
    portable_mask_of(block)
}

/// [`mask_of`] without vector instructions: what other targets use, and
/// what the SSE2 version is tested against.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn portable_mask_of(block: &[u8; BLOCK]) -> u64 {
    block.iter().enumerate().fold(0, |mask, (i, &b)| {
        mask | (u64::from(b == b'\n' || b == b'\r') << i)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every line end, asked for the way the parser asks: from one past the
    /// last, or further on.
    fn all_ends(hay: &[u8], skips: &[usize]) -> Vec<usize> {
        let mut ends = LineEnds::new(hay);
        let mut found = Vec::new();
        let mut from = 0;
        let mut skips = skips.iter().cycle();
        while let Some(end) = ends.next_from(from) {
            // A scanner that stood still or went back would loop forever.
            assert!(end >= from && end < hay.len(), "{end} from {from}");
            found.push(end);
            from = end + 1 + skips.next().copied().unwrap_or(0);
        }
        found
    }

    fn expected(hay: &[u8], skips: &[usize]) -> Vec<usize> {
        let mut found = Vec::new();
        let mut from = 0;
        let mut skips = skips.iter().cycle();
        while let Some(i) = memchr::memchr2(b'\n', b'\r', hay.get(from..).unwrap_or(&[])) {
            found.push(from + i);
            from += i + 1 + skips.next().copied().unwrap_or(0);
        }
        found
    }

    #[test]
    fn short_lines_long_lines_and_the_chunks_tail() {
        let mut hay = b"id: 1\r\nevent: e\rdata: x\n\n".to_vec();
        hay.extend(std::iter::repeat_n(b'a', 600)); // more than the masked blocks
        hay.extend(b"\n:ok\r\n");
        hay.extend(std::iter::repeat_n(b'b', 64)); // exactly one block with none
        hay.push(b'\r');
        hay.extend(b"tail without an end");
        let found = all_ends(&hay, &[0]);
        assert_eq!(found, expected(&hay, &[0]));
        assert_eq!(found.len(), 9);
        assert_eq!(all_ends(b"", &[0]), Vec::<usize>::new());
        assert_eq!(all_ends(b"no end at all", &[0]), Vec::<usize>::new());
        assert_eq!(all_ends(&[b'x'; 64], &[0]), Vec::<usize>::new());
        assert_eq!(all_ends(&[b'\n'; 130], &[0]), (0..130).collect::<Vec<_>>());
    }

    #[test]
    fn every_byte_value_but_cr_and_lf_is_passed_over() {
        let mut hay: Vec<u8> = (0..=255u8)
            .filter(|b| !matches!(b, b'\n' | b'\r'))
            .collect();
        hay.push(b'\r');
        hay.extend((0..=255u8).rev().filter(|b| !matches!(b, b'\n' | b'\r')));
        hay.push(b'\n');
        assert_eq!(all_ends(&hay, &[0]), [254, 509]);
    }

    #[test]
    fn the_vector_mask_and_the_portable_one_agree_on_every_byte_and_position() {
        for byte in 0..=255u8 {
            for at in [0, 1, 15, 16, 17, 31, 32, 47, 48, 62, 63] {
                let mut block = [b'a'; BLOCK];
                block[at] = byte;
                block[BLOCK - 1 - at] = byte;
                let expected = if matches!(byte, b'\n' | b'\r') {
                    (1 << at) | (1 << (BLOCK - 1 - at))
                } else {
                    0
                };
                assert_eq!(portable_mask_of(&block), expected, "{byte} at {at}");
                assert_eq!(mask_of(&block), expected, "{byte} at {at}");
            }
        }
    }

    proptest! {
        /// Anywhere in a chunk, with any lines and any skipping ahead (the
        /// parser skips the LF of a CRLF and a blank line's LF), the same
        /// line ends as memchr2 over the rest of the chunk.
        #[test]
        fn the_same_line_ends_as_memchr2(
            parts in proptest::collection::vec(
                (
                    // Short lines, and long ones that memchr2 finishes.
                    prop_oneof![4 => 0usize..100, 1 => 0usize..800],
                    prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'x')],
                ),
                0..30,
            ),
            skips in proptest::collection::vec(0usize..3, 1..5),
        ) {
            let mut hay = Vec::new();
            for (len, end) in parts {
                hay.extend((0..len).map(|i| b'a' + (i % 26) as u8));
                hay.push(end);
            }
            prop_assert_eq!(all_ends(&hay, &skips), expected(&hay, &skips));
        }
    }
}
