//! The lean HTTP/1.1 client's response decoding, fed arbitrary bytes split
//! arbitrarily: the head parser (`parse_head`), the body framing (chunked,
//! `Content-Length`, close-delimited) and content decoding (gzip, deflate).
//! Nothing may panic or loop, and no decoding call may hand out more than one
//! window of bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sse_relay::http::decode::{Coding, Decoder, WINDOW};
use sse_relay::stream::wire::{parse_head, Framing, Head};

fuzz_target!(|input: &[u8]| {
    let Some((&splits, bytes)) = input.split_first() else {
        return;
    };
    // Piece sizes cycle through 1..=16 scaled by the first byte's bits.
    let sizes = [1 + (splits & 0x0f) as usize, 1 + (splits >> 4) as usize * 7];
    let mut pieces = Vec::new();
    let mut at = 0;
    let mut n = 0;
    while at < bytes.len() {
        let take = sizes[n % 2].min(bytes.len() - at);
        pieces.push(&bytes[at..at + take]);
        at += take;
        n += 1;
    }

    // The head, a piece at a time, as the client reads it.
    let mut head = Vec::new();
    let mut rest = pieces.into_iter();
    let (headers, body_start) = loop {
        match parse_head(&head) {
            Err(_) => return,
            Ok(Head::Informational(length)) => {
                assert!(length <= head.len());
                head.drain(..length);
                continue;
            }
            Ok(Head::Final {
                headers, length, ..
            }) => {
                assert!(length <= head.len());
                break (headers, head.split_off(length));
            }
            Ok(Head::Partial) => {}
        }
        match rest.next() {
            Some(piece) => head.extend_from_slice(piece),
            None => return,
        }
        assert!(head.len() < (64 << 10) + 256, "head buffer grew past its bound");
    };
    let Ok(mut framing) = Framing::of(&headers) else {
        return;
    };
    let mut decoder = match Coding::of(&headers) {
        Ok(coding) => Decoder::new(coding),
        Err(_) => return,
    };
    let mut window = vec![0u8; WINDOW];
    let mut windows = 0usize;
    let mut feed = |raw: &[u8], decoder: &mut Option<Box<Decoder>>| -> bool {
        let mut ok = true;
        let mut ended = false;
        let result = framing.decode(raw, &mut |body: &[u8]| {
            if let Some(decoder) = decoder.as_mut() {
                decoder.push(body);
            }
        });
        match result {
            Ok(done) => ended = done,
            Err(_) => ok = false,
        }
        if let Some(decoder) = decoder.as_mut() {
            while !decoder.wants_input() {
                match decoder.decode(&mut window) {
                    Ok(n) => assert!(n <= WINDOW),
                    Err(_) => {
                        ok = false;
                        break;
                    }
                }
                windows += 1;
                // A 4 KiB input inflates to at most ~4 MiB: 128 windows.
                assert!(windows < 1 << 16, "decoding does not terminate");
            }
        }
        ok && !ended
    };
    if !feed(&body_start, &mut decoder) {
        return;
    }
    for piece in rest {
        if !feed(piece, &mut decoder) {
            return;
        }
    }
    let _ = framing.end_of_input();
    if let Some(decoder) = decoder {
        let _ = decoder.finish();
    }
});
