//! The HTTP/2 header re-encoder that sits on every Workload API
//! connection (`AuthorityFix`), fed arbitrary client bytes in arbitrary
//! pieces, driven as the connection drives it. Never panics; what waits
//! for the server stays bounded; and when the connection is not refused,
//! the server sees what the client sent: non-HTTP/2 bytes unchanged, every
//! frame other than a request header block unchanged and in order, and
//! every header block with the same fields (decoded by an independent
//! HPACK implementation on each side). The first whole header block decides
//! how: if it is small and its `:authority` valid, it is forwarded as sent
//! and everything after it passes untouched; otherwise every block is
//! re-encoded, an invalid `:authority` replaced by `localhost`.
#![no_main]

use attestd::workload_api::AuthorityFix;
use libfuzzer_sys::fuzz_target;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The most that may wait for the server: the re-encoder's high-water
/// mark (64 KiB), then one more frame (at most a 64 KiB block and its
/// header), then one read from the client (8 KiB).
const MAX_PENDING: usize = 64 * 1024 + 9 + 64 * 1024 + 8 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    // The client's bytes arrive in reads of 1 to 8 KiB (or single bytes).
    let chunk = if split == 0 { 1 } else { usize::from(split) * 32 };
    let mut fix = AuthorityFix::default();
    let mut server = Vec::new();
    for piece in input.chunks(chunk) {
        if fix.feed(piece).is_err() {
            return;
        }
        loop {
            let drained = drain(&mut fix, &mut server);
            assert!(drained <= MAX_PENDING, "{drained} bytes waited for the server");
            if fix.pump().is_err() {
                return;
            }
            if !fix.has_output() {
                break;
            }
        }
    }
    fix.finish();
    drain(&mut fix, &mut server);
    assert_eq!(fix.request_seen(), saw_headers(input));
    compare(input, &server);
});

fn drain(fix: &mut AuthorityFix, into: &mut Vec<u8>) -> usize {
    let mut buf = [0u8; 4096];
    let mut total = 0;
    loop {
        let n = fix.drain_into(&mut buf);
        if n == 0 {
            return total;
        }
        into.extend_from_slice(&buf[..n]);
        total += n;
    }
}

/// One frame as sent: type, flags, stream id, payload.
struct Frame<'a> {
    kind: u8,
    flags: u8,
    stream: [u8; 4],
    payload: &'a [u8],
    raw: &'a [u8],
}

/// The whole frames of `bytes` (after the preface), and what is left.
fn frames(mut bytes: &[u8]) -> (Vec<Frame<'_>>, &[u8]) {
    let mut out = Vec::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        if bytes.len() < 9 + len {
            break;
        }
        let (raw, rest) = bytes.split_at(9 + len);
        out.push(Frame {
            kind: raw[3],
            flags: raw[4],
            stream: [raw[5], raw[6], raw[7], raw[8]],
            payload: &raw[9..],
            raw,
        });
        bytes = rest;
    }
    (out, bytes)
}

fn saw_headers(input: &[u8]) -> bool {
    match input.strip_prefix(PREFACE) {
        Some(rest) => frames(rest).0.iter().any(|f| f.kind == HEADERS),
        None => false,
    }
}

/// What the other side makes of a byte stream: frames passed as they are,
/// and header blocks, each as (stream, end_stream, decoded fields).
#[derive(Debug, PartialEq)]
enum Event {
    Frame(Vec<u8>),
    Block([u8; 4], bool, Option<Vec<(Vec<u8>, Vec<u8>)>>),
}

/// What the re-encoder does with a connection, decided by its first whole
/// header block.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// No block has ended yet.
    Undecided,
    /// The first block was forwarded as sent; everything after it passes
    /// untouched, so no `:authority` is fixed.
    Pass,
    /// Every block is re-encoded, an invalid `:authority` fixed.
    Rewrite,
    /// The independent decoder refused the first block: the comparison
    /// ends there, and the mode is not known.
    Unknown,
}

/// The largest first block (its frames as sent) that is forwarded
/// unchanged (the re-encoder's `MAX_FORWARDED_BLOCK`).
const MAX_FORWARDED_BLOCK: usize = 4 * 1024;

/// A header block being collected: stream, end_stream, fragment, and the
/// size of its frames as sent while it may still be forwarded.
type Pending = ([u8; 4], bool, Vec<u8>, Option<usize>);

/// Reads the client's side as the re-encoder is meant to: a HEADERS frame
/// starts a block (without padding or priority), CONTINUATIONs extend it,
/// END_HEADERS ends it; everything else is a frame of its own. Returns the
/// events and the mode the first block decides.
fn client_events(frames: &[Frame<'_>]) -> (Vec<Event>, Mode) {
    let mut decoder = loona_hpack::Decoder::new();
    let mut events = Vec::new();
    let mut mode = Mode::Undecided;
    let mut pending: Option<Pending> = None;
    for frame in frames {
        let flags = frame.flags;
        match frame.kind {
            HEADERS => {
                let Some(fragment) = fragment(flags, frame.payload) else {
                    return (events, mode);
                };
                let kept = (mode == Mode::Undecided).then_some(0);
                pending = Some((frame.stream, flags & END_STREAM != 0, fragment.to_vec(), kept));
            }
            CONTINUATION if pending.is_some() => {
                if let Some((_, _, block, _)) = &mut pending {
                    block.extend_from_slice(frame.payload);
                }
            }
            _ => {
                events.push(Event::Frame(frame.raw.to_vec()));
                continue;
            }
        }
        if let Some((_, _, _, kept)) = &mut pending {
            *kept = kept
                .map(|size| size + frame.raw.len())
                .filter(|&size| size <= MAX_FORWARDED_BLOCK);
        }
        if flags & END_HEADERS != 0
            && let Some((stream, end_stream, block, kept)) = pending.take()
        {
            let decoded = decoder.decode(&block).ok();
            if mode == Mode::Undecided {
                mode = match &decoded {
                    None => Mode::Unknown,
                    Some(fields) if kept.is_some() && !fields.iter().any(invalid_authority) => Mode::Pass,
                    Some(_) => Mode::Rewrite,
                };
            }
            let fields = decoded.map(|fields| {
                fields
                    .into_iter()
                    .map(|field| {
                        if mode == Mode::Rewrite && invalid_authority(&field) {
                            (field.0, b"localhost".to_vec())
                        } else {
                            field
                        }
                    })
                    .collect()
            });
            events.push(Event::Block(stream, end_stream, fields));
        }
    }
    (events, mode)
}

fn invalid_authority((name, value): &(Vec<u8>, Vec<u8>)) -> bool {
    name == b":authority" && http::uri::Authority::try_from(&value[..]).is_err()
}

fn fragment(flags: u8, payload: &[u8]) -> Option<&[u8]> {
    let mut start = 0;
    let mut end = payload.len();
    if flags & PADDED != 0 {
        start = 1;
        end = end.checked_sub(usize::from(*payload.first()?))?;
    }
    if flags & PRIORITY != 0 {
        start += 5;
    }
    payload.get(start..end)
}

/// The server's side. In a re-encoded connection every block the
/// re-encoder wrote is HEADERS then CONTINUATIONs, nothing between them,
/// END_HEADERS on the last, and decodes. In one passed through (or whose
/// mode is not known) the server reads what the client sent, so it is read
/// the same way: padding and priority stripped, other frames in between.
fn server_events(frames: &[Frame<'_>], mode: Mode) -> Vec<Event> {
    let strict = mode == Mode::Rewrite;
    let mut decoder = loona_hpack::Decoder::new();
    let mut events = Vec::new();
    let mut pending: Option<([u8; 4], bool, Vec<u8>)> = None;
    for frame in frames {
        match (frame.kind, &mut pending) {
            (HEADERS, None) if strict => {
                assert_eq!(frame.flags & !(END_STREAM | END_HEADERS), 0);
                pending = Some((
                    frame.stream,
                    frame.flags & END_STREAM != 0,
                    frame.payload.to_vec(),
                ));
            }
            (HEADERS, _) if !strict => {
                // The client's side ends at a malformed one too.
                let Some(fragment) = fragment(frame.flags, frame.payload) else {
                    return events;
                };
                pending = Some((frame.stream, frame.flags & END_STREAM != 0, fragment.to_vec()));
            }
            (CONTINUATION, Some((stream, _, block))) => {
                if strict {
                    assert_eq!(frame.flags & !END_HEADERS, 0);
                    assert_eq!(*stream, frame.stream);
                }
                block.extend_from_slice(frame.payload);
            }
            (_, Some(_)) if strict => panic!("a frame inside a re-encoded header block"),
            // Outside a block, or between a passed-through block's frames:
            // a frame of its own.
            _ => {
                events.push(Event::Frame(frame.raw.to_vec()));
                continue;
            }
        }
        if frame.flags & END_HEADERS != 0
            && let Some((stream, end_stream, block)) = pending.take()
        {
            let fields = decoder.decode(&block);
            assert!(!strict || fields.is_ok(), "the re-encoded block decodes");
            events.push(Event::Block(stream, end_stream, fields.ok()));
        }
    }
    assert!(
        !strict || pending.is_none(),
        "a re-encoded block without END_HEADERS"
    );
    events
}

fn compare(input: &[u8], server: &[u8]) {
    let Some(rest) = input.strip_prefix(PREFACE) else {
        // Not HTTP/2 (or not even a whole preface): passed through untouched.
        assert_eq!(server, input);
        return;
    };
    let server = server.strip_prefix(PREFACE).expect("the preface passes first");
    let (sent, _) = frames(rest);
    let (received, _) = frames(server);
    let (expected, mode) = client_events(&sent);
    let got = server_events(&received, mode);
    // A block the independent decoder does not accept on the client's side
    // ends the comparison (the two HPACK contexts part there).
    for (want, have) in expected.iter().zip(&got) {
        match (want, have) {
            (Event::Block(s1, e1, None), Event::Block(s2, e2, _)) => {
                assert_eq!((s1, e1), (s2, e2));
                return;
            }
            _ => assert_eq!(want, have),
        }
    }
    assert_eq!(got.len(), expected.len());
}
