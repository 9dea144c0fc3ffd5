//! Makes the HTTP/2 requests of gRPC-core clients acceptable to the server.
//!
//! Since gRPC 1.57, gRPC-core based clients (py-spiffe, and grpc-java,
//! C++, Ruby, ...) send the Unix socket's path, percent-encoded, as the
//! `:authority` of every request. That is not a valid URI authority, and
//! hyper's HTTP/2 implementation (under tonic) resets such streams with
//! PROTOCOL_ERROR, so those clients could not use attestd at all
//! (hyperium/h2#487, grpc/grpc#38142). grpc-go sends `localhost`, which is
//! what the h2 maintainers recommend for sockets.
//!
//! This adapter sits on the client-to-server bytes of a connection. It
//! passes every frame through unchanged except request header blocks,
//! which it decodes (keeping the client's HPACK state), and re-encodes
//! (keeping the server's), with an invalid `:authority` replaced by
//! `localhost`. Once a block has been re-encoded, every later one is too,
//! not only the broken ones, so the two HPACK contexts never disagree. The
//! authority carries no meaning over a Unix socket: attestd never reads it.
//!
//! A connection whose first header block needs no rewrite (grpc-go, tonic
//! and the other clients that send a valid authority) has that block
//! forwarded as sent, and from then on every byte passes untouched: the
//! server's HPACK state follows the client's, and the adapter has decoded
//! one block in all. Clients set the authority per channel, not per call;
//! one that switched to an invalid authority mid-connection would have
//! those streams reset by the server, as without this adapter.
//!
//! A client sends the same first block on every connection it opens (same
//! path, authority and headers, against an empty dynamic table), and
//! decoding it was a quarter of the allocations of a new connection. Each
//! runtime thread remembers the last few first blocks it found forwardable
//! ([`KnownForwardable`]): a byte-identical block decodes identically, so it
//! is forwarded without being decoded again.
//!
//! Decoding comes before h2 has any chance to bound a request, so this
//! adapter bounds it itself. HPACK lets a few bytes stand for a large
//! header (one 1-byte index names a 4 KB dynamic-table entry), so the
//! decoded header list is counted while decoding (name + value + 32 per
//! field, as SETTINGS_MAX_HEADER_LIST_SIZE counts it) and the connection is
//! refused as soon as it passes [`MAX_HEADER_LIST_SIZE`]. The work per block is bounded by the block's encoded size
//! ([`MAX_HEADER_BLOCK`]), and the output waiting for the server by
//! [`OUTPUT_HIGH_WATER`], so one connection can neither hold a runtime
//! worker for long nor make attestd buffer much for it.

use std::cell::RefCell;
use std::collections::VecDeque;

use httlib_hpack::Decoder;
use loona_hpack::Encoder;

use super::h2_wire::{
    CONTINUATION, END_HEADERS, END_STREAM, FRAME_HEADER, HEADERS, PADDED, PREFACE, PRIORITY, frame_length,
};

/// The largest frame payload the server accepts (HTTP/2's default
/// SETTINGS_MAX_FRAME_SIZE, which tonic's server keeps).
const MAX_FRAME: usize = 16_384;
/// The largest decoded header list a request may have (name + value + 32
/// per field): attestd's SETTINGS_MAX_HEADER_LIST_SIZE, also advertised to
/// clients. Workload API requests carry a handful of short headers; gRPC-core
/// clients refuse to send more than 16 KiB of metadata themselves.
pub const MAX_HEADER_LIST_SIZE: usize = 16 * 1024;
/// The most representations an acceptable header block can hold: one
/// field per 32 bytes of [`MAX_HEADER_LIST_SIZE`], plus the two dynamic
/// table size updates HPACK allows at a block's start.
const MAX_REPRESENTATIONS: usize = MAX_HEADER_LIST_SIZE / 32 + 2;
/// A request's header block (encoded) larger than this is refused outright.
/// No block that decodes within [`MAX_HEADER_LIST_SIZE`] is larger: every
/// field decodes to at least 32 bytes, and Huffman spends at most 30 bits on
/// a decoded byte (3.75 encoded bytes per decoded byte at worst).
const MAX_HEADER_BLOCK: usize = 4 * MAX_HEADER_LIST_SIZE;
/// Frames are taken from the client's bytes only while less than this waits
/// for the server: re-encoding can turn a few client bytes into more, and
/// what the server has not read yet must not pile up.
const OUTPUT_HIGH_WATER: usize = 64 * 1024;
/// Blocks larger than this are decoded with the runtime told that the
/// worker thread blocks (its other connections move to another thread):
/// no real request comes near it, and the worst block takes milliseconds.
const DECODE_OFF_WORKER: usize = 8 * 1024;
/// HPACK dynamic table size both sides use (HTTP/2's default, which
/// neither the clients nor tonic's server change).
const TABLE_SIZE: usize = 4096;
/// What an unusable `:authority` becomes.
const LOCAL_AUTHORITY: &[u8] = b"localhost";
/// A connection's first header block is kept as sent, to be forwarded
/// unchanged, while its frames take at most this much; a larger one (no
/// real request's) is re-encoded like any other.
const MAX_FORWARDED_BLOCK: usize = 4 * 1024;
/// How many forwardable first blocks each runtime thread remembers: a few
/// clients' worth (each RPC has its own `:path`, so its own block). At most
/// this many blocks of [`MAX_FORWARDED_BLOCK`] each.
const KNOWN_FORWARDABLE: usize = 16;

/// Why a connection's bytes could not be passed on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityFixError {
    /// A header block is larger than attestd accepts.
    #[error("HTTP/2 header block over {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge,
    /// A header block decodes to more than [`MAX_HEADER_LIST_SIZE`].
    #[error("HTTP/2 header list over {MAX_HEADER_LIST_SIZE} bytes decoded")]
    HeaderListTooLarge,
    /// A frame is malformed (padding longer than the frame, say).
    #[error("malformed HTTP/2 frame")]
    MalformedFrame,
    /// The client's HPACK encoding does not decode.
    #[error("HPACK: {0:?}")]
    Hpack(httlib_hpack::DecoderError),
}

/// Decoded header fields: (name, value).
type HeaderList = Vec<(Vec<u8>, Vec<u8>)>;

/// A header block split over HEADERS and CONTINUATION frames, being
/// collected.
struct PendingBlock {
    stream_id: [u8; 4],
    end_stream: bool,
    fragment: Vec<u8>,
    /// The frames as the client sent them, while the block could still
    /// be forwarded unchanged (the connection's first block, small).
    frames: Option<Vec<u8>>,
}

/// The client-to-server rewriter of one connection.
pub struct AuthorityFix {
    /// Bytes read from the client, not yet a whole frame.
    input: Vec<u8>,
    /// Bytes ready for the server.
    output: VecDeque<u8>,
    /// Until the preface is seen whole, frames cannot be parsed.
    preface_left: usize,
    /// Pass everything through: the connection is not HTTP/2 at all (the
    /// server will say so), or its first header block needed no rewrite.
    passthrough: bool,
    /// A header block has been re-encoded: every later one must be too.
    rewriting: bool,
    pending: Option<PendingBlock>,
    /// Whether the client has started a request (sent HEADERS).
    request_seen: bool,
    /// The HPACK contexts, made when a block is first decoded: a
    /// connection whose first block is known forwardable never needs them.
    decoder: Option<Decoder<'static>>,
    encoder: Option<Encoder<'static>>,
}

impl std::fmt::Debug for AuthorityFix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityFix")
            .field("buffered", &self.input.len())
            .field("ready", &self.output.len())
            .finish_non_exhaustive()
    }
}

impl Default for AuthorityFix {
    fn default() -> Self {
        Self {
            input: Vec::new(),
            output: VecDeque::new(),
            preface_left: PREFACE.len(),
            passthrough: false,
            rewriting: false,
            pending: None,
            request_seen: false,
            decoder: None,
            encoder: None,
        }
    }
}

impl AuthorityFix {
    /// Takes bytes read from the client, and rewrites what it can of them
    /// (see [`Self::pump`]).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), AuthorityFixError> {
        if self.passthrough {
            self.output.extend(bytes);
            return Ok(());
        }
        self.input.extend_from_slice(bytes);
        self.pump()
    }

    /// Rewrites whole frames already fed, until the output for the server
    /// reaches [`OUTPUT_HIGH_WATER`]; the rest waits for the next call
    /// (after the server read some), so read no more from the client while
    /// this leaves output or whole frames behind.
    pub fn pump(&mut self) -> Result<(), AuthorityFixError> {
        if self.passthrough || (self.preface_left > 0 && !self.take_preface()) {
            return Ok(());
        }
        self.take_frames()
    }

    /// Whether the client has sent the start of a request (a HEADERS frame).
    pub fn request_seen(&self) -> bool {
        self.request_seen
    }

    /// Whether the client's bytes now pass unchanged: once no output
    /// waits, the connection reads them straight into the server's buffer.
    pub fn passes_through(&self) -> bool {
        self.passthrough
    }

    /// Moves bytes ready for the server into `into`; returns how many.
    pub fn drain_into(&mut self, into: &mut [u8]) -> usize {
        let n = into.len().min(self.output.len());
        let (front, back) = self.output.as_slices();
        let from_front = n.min(front.len());
        into[..from_front].copy_from_slice(&front[..from_front]);
        into[from_front..n].copy_from_slice(&back[..n - from_front]);
        self.output.drain(..n);
        if self.output.is_empty() {
            // An open stream's connection is idle most of its life: it
            // holds no buffer between the client's frames.
            self.output = VecDeque::new();
        }
        n
    }

    /// Whether bytes are ready for the server.
    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// How many bytes are ready for the server.
    pub fn output_len(&self) -> usize {
        self.output.len()
    }

    /// The client closed its side: whatever partial frame is left goes to
    /// the server as it is (which will report the truncation).
    pub fn finish(&mut self) {
        self.output.extend(self.input.drain(..));
    }

    /// Consumes the preface once whole; returns whether frames follow.
    fn take_preface(&mut self) -> bool {
        let seen = self.input.len().min(PREFACE.len());
        if self.input[..seen] != PREFACE[..seen] {
            self.passthrough = true;
            self.output.extend(self.input.drain(..));
            return false;
        }
        if seen < PREFACE.len() {
            return false;
        }
        self.output.extend(self.input.drain(..PREFACE.len()));
        self.preface_left = 0;
        true
    }

    /// Takes whole frames from the front of the input. The input is cut
    /// once, after the last frame taken: cutting it per frame moved every
    /// byte behind each frame, so a read of many small frames cost the
    /// square of its length.
    fn take_frames(&mut self) -> Result<(), AuthorityFixError> {
        let input = std::mem::take(&mut self.input);
        let mut taken = 0;
        let result = self.take_frames_from(&input, &mut taken);
        self.input = input;
        self.input.drain(..taken);
        if self.passthrough {
            // A header block switched the connection to passing through:
            // what follows it needs no parsing.
            self.output.extend(self.input.drain(..));
        }
        if self.input.is_empty() {
            self.input = Vec::new();
        }
        result
    }

    /// Takes frames from `input[*taken..]`, advancing `taken` past each.
    fn take_frames_from(&mut self, input: &[u8], taken: &mut usize) -> Result<(), AuthorityFixError> {
        while !self.passthrough
            && input.len() - *taken >= FRAME_HEADER
            && self.output.len() < OUTPUT_HIGH_WATER
        {
            let rest = &input[*taken..];
            let length = frame_length(rest);
            if length > MAX_HEADER_BLOCK {
                return Err(AuthorityFixError::HeaderBlockTooLarge);
            }
            let Some(frame) = rest.get(..FRAME_HEADER + length) else {
                return Ok(());
            };
            self.take_frame(frame)?;
            *taken += frame.len();
        }
        Ok(())
    }

    fn take_frame(&mut self, frame: &[u8]) -> Result<(), AuthorityFixError> {
        let (kind, flags) = (frame[3], frame[4]);
        let stream_id: [u8; 4] = [frame[5], frame[6], frame[7], frame[8]];
        let payload = &frame[FRAME_HEADER..];
        match kind {
            HEADERS => {
                self.request_seen = true;
                let fragment = header_fragment(flags, payload)?;
                self.pending = Some(
                    PendingBlock {
                        stream_id,
                        end_stream: flags & END_STREAM != 0,
                        fragment: fragment.to_vec(),
                        frames: None,
                    }
                    .keeping_frames(!self.rewriting, frame),
                );
            }
            CONTINUATION if self.pending.is_some() => {
                if let Some(pending) = &mut self.pending {
                    pending.fragment.extend_from_slice(payload);
                    pending.keep_frame(frame);
                }
            }
            // Anything else (DATA, SETTINGS, PING, ... or a stray
            // CONTINUATION the server will reject) passes as it is.
            _ => {
                self.output.extend(frame);
                return Ok(());
            }
        }
        let size = self.pending.as_ref().map_or(0, |p| p.fragment.len());
        if size > MAX_HEADER_BLOCK {
            return Err(AuthorityFixError::HeaderBlockTooLarge);
        }
        if flags & END_HEADERS != 0
            && let Some(block) = self.pending.take()
        {
            self.emit(block)?;
        }
        Ok(())
    }

    /// Decodes a whole header block. The connection's first, if it needs
    /// no rewrite, is forwarded as sent and everything after it passes
    /// through; any other is re-encoded and written as HEADERS (and
    /// CONTINUATION) frames.
    fn emit(&mut self, block: PendingBlock) -> Result<(), AuthorityFixError> {
        if let Some(frames) = &block.frames
            && KnownForwardable::contains(&block.fragment)
        {
            self.output.extend(frames);
            self.pass_through();
            return Ok(());
        }
        // Bounds the client's dynamic table: a larger size update is an
        // error, not an allocation.
        let decoder = self
            .decoder
            .get_or_insert_with(|| Decoder::with_dynamic_size(TABLE_SIZE as u32));
        let mut headers = off_worker_if(block.fragment.len() > DECODE_OFF_WORKER, || {
            decode_bounded(decoder, &block.fragment)
        })?;
        let mut rewritten = false;
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority" && !is_valid_authority(value) {
                *value = LOCAL_AUTHORITY.to_vec();
                rewritten = true;
            }
        }
        if let (false, Some(frames)) = (rewritten, block.frames) {
            KnownForwardable::insert(&block.fragment);
            self.output.extend(frames);
            self.pass_through();
            return Ok(());
        }
        self.rewriting = true;
        let encoded = self.encoder.get_or_insert_with(Encoder::new).encode(
            headers
                .iter()
                .map(|(name, value)| (name.as_slice(), value.as_slice())),
        );
        let chunks: Vec<&[u8]> = if encoded.is_empty() {
            vec![&[]]
        } else {
            encoded.chunks(MAX_FRAME).collect()
        };
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let (kind, mut flags) = if i == 0 { (HEADERS, 0) } else { (CONTINUATION, 0) };
            if i == 0 && block.end_stream {
                flags |= END_STREAM;
            }
            if i == last {
                flags |= END_HEADERS;
            }
            let length = chunk.len();
            self.output.extend([
                (length >> 16) as u8,
                (length >> 8) as u8,
                length as u8,
                kind,
                flags,
            ]);
            self.output.extend(block.stream_id);
            self.output.extend(chunk);
        }
        Ok(())
    }

    /// From now on the client's bytes pass unchanged (the server's HPACK
    /// state follows the client's). The adapter's own HPACK tables are
    /// freed: an open stream's connection would hold them for nothing.
    fn pass_through(&mut self) {
        self.passthrough = true;
        self.decoder = None;
        self.encoder = None;
    }
}

/// The first header blocks this runtime thread found forwardable (they
/// decoded within the bounds, with a valid `:authority` or none), most
/// recent last. A connection's first block is decoded against an empty
/// dynamic table, so what it decodes to depends on its bytes alone. A
/// caller can only push blocks out (each then costs one decode again).
struct KnownForwardable;

thread_local! {
    static KNOWN: RefCell<VecDeque<Box<[u8]>>> = const { RefCell::new(VecDeque::new()) };
}

impl KnownForwardable {
    /// Whether `fragment` (a first block's, whole) is known forwardable.
    fn contains(fragment: &[u8]) -> bool {
        KNOWN.with_borrow(|known| known.iter().any(|block| **block == *fragment))
    }

    /// Remembers `fragment`, forgetting the oldest beyond [`KNOWN_FORWARDABLE`].
    fn insert(fragment: &[u8]) {
        KNOWN.with_borrow_mut(|known| {
            if known.len() == KNOWN_FORWARDABLE {
                known.pop_front();
            }
            known.push_back(fragment.into());
        });
    }
}

impl PendingBlock {
    /// Starts keeping the block's frames as sent, when `forwardable`.
    fn keeping_frames(mut self, forwardable: bool, first: &[u8]) -> Self {
        if forwardable {
            self.frames = Some(Vec::new());
            self.keep_frame(first);
        }
        self
    }

    /// Adds a frame to the block's frames as sent, unless they would pass
    /// [`MAX_FORWARDED_BLOCK`]: the block is then re-encoded instead.
    fn keep_frame(&mut self, frame: &[u8]) {
        if let Some(frames) = &mut self.frames {
            if frames.len() + frame.len() > MAX_FORWARDED_BLOCK {
                self.frames = None;
            } else {
                frames.extend_from_slice(frame);
            }
        }
    }
}

/// Decodes a header block one field at a time, refusing it as soon as the
/// decoded list passes [`MAX_HEADER_LIST_SIZE`] (the connection is closed
/// then, so the HPACK state left behind does not matter). Every field
/// counts at least 32 bytes, so no acceptable block has more than
/// [`MAX_REPRESENTATIONS`] representations; a block with more is refused
/// before the decoder walks it further.
///
/// The decoder is httlib-hpack's: its Huffman decoding is table-driven.
/// (loona-hpack, which attestd used before, builds a 257-entry hash table
/// for every Huffman string it decodes: a 64 KiB block of one-byte Huffman
/// strings took 0.6 s of CPU; here it is refused after about 500 fields,
/// in under a millisecond.)
fn decode_bounded(decoder: &mut Decoder<'static>, block: &[u8]) -> Result<HeaderList, AuthorityFixError> {
    let mut input = block.to_vec();
    let mut headers = HeaderList::new();
    let mut size = 0usize;
    let mut representations = 0usize;
    while !input.is_empty() {
        representations += 1;
        if representations > MAX_REPRESENTATIONS {
            return Err(AuthorityFixError::HeaderListTooLarge);
        }
        if !starts_whole(&input) {
            // What the decoder says of a buffer that ends too soon.
            return Err(AuthorityFixError::Hpack(
                httlib_hpack::DecoderError::IntegerUnderflow,
            ));
        }
        // Capacity 1: the decoder reads one representation per call.
        let mut field = Vec::with_capacity(1);
        decoder
            .decode_exact(&mut input, &mut field)
            .map_err(AuthorityFixError::Hpack)?;
        for (name, value, _flags) in field {
            size = size.saturating_add(name.len() + value.len() + 32);
            if size > MAX_HEADER_LIST_SIZE {
                return Err(AuthorityFixError::HeaderListTooLarge);
            }
            headers.push((name, value));
        }
    }
    Ok(headers)
}

/// Whether `block` starts with a whole HPACK representation (RFC 7541,
/// section 6). httlib-hpack indexes past the end of a representation cut
/// short (a literal's missing name or value, an integer's missing
/// continuation byte): a panic, on any caller's bytes. Found by
/// fuzz/fuzz_targets/authority_fix.rs.
fn starts_whole(block: &[u8]) -> bool {
    let Some(&first) = block.first() else {
        return false;
    };
    // The prefix bits of the first integer, and whether strings follow.
    let (prefix, literal) = match first {
        b if b & 0x80 != 0 => (7, false), // indexed field
        b if b & 0x40 != 0 => (6, true),  // literal, incremental indexing
        b if b & 0x20 != 0 => (5, false), // dynamic table size update
        _ => (4, true),                   // literal, without or never indexing
    };
    let Some((index, mut at)) = hpack_integer(block, prefix) else {
        return false;
    };
    if !literal {
        return true;
    }
    // A new name (index 0) comes as a string before the value.
    for _ in 0..1 + usize::from(index == 0) {
        let Some(length) = block.get(at..).and_then(hpack_string_length) else {
            return false;
        };
        at += length;
    }
    at <= block.len()
}

/// An HPACK integer with a `prefix`-bit prefix (RFC 7541, section 5.1)
/// at the start of `bytes`: its value and length in bytes, or `None` if
/// `bytes` ends first or it runs past the 5 bytes the decoder reads.
fn hpack_integer(bytes: &[u8], prefix: u8) -> Option<(u64, usize)> {
    let mask = (1u8 << prefix) - 1;
    let first = *bytes.first()? & mask;
    if first < mask {
        return Some((u64::from(first), 1));
    }
    let mut value = u64::from(mask);
    for (i, &byte) in bytes.iter().enumerate().skip(1).take(4) {
        value += u64::from(byte & 0x7f) << (7 * (i - 1));
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// The length of the HPACK string literal (length, then that many bytes)
/// at the start of `bytes`, if it is whole.
fn hpack_string_length(bytes: &[u8]) -> Option<usize> {
    let (length, used) = hpack_integer(bytes, 7)?;
    let total = used.checked_add(usize::try_from(length).ok()?)?;
    (total <= bytes.len()).then_some(total)
}

/// Runs `work`; when `large` and on a multi-threaded tokio runtime, as
/// blocking work, so the connections sharing this worker are not stalled.
fn off_worker_if<T>(large: bool, work: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|runtime| runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if large && multi_thread {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

/// The header block fragment of a HEADERS payload: without padding and
/// priority fields (the server gets neither; priority is advisory and
/// deprecated).
fn header_fragment(flags: u8, payload: &[u8]) -> Result<&[u8], AuthorityFixError> {
    let mut start = 0;
    let mut end = payload.len();
    if flags & PADDED != 0 {
        let pad = usize::from(*payload.first().ok_or(AuthorityFixError::MalformedFrame)?);
        start = 1;
        end = end.checked_sub(pad).ok_or(AuthorityFixError::MalformedFrame)?;
    }
    if flags & PRIORITY != 0 {
        start += 5;
    }
    payload.get(start..end).ok_or(AuthorityFixError::MalformedFrame)
}

/// Whether the server's HTTP/2 layer accepts `value` as `:authority`.
fn is_valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::workload_api::h2_wire::frame;

    /// What a client sends first: the preface, then a FetchX509SVID
    /// request's HEADERS frame.
    pub(in crate::workload_api) fn first_request_wire() -> Vec<u8> {
        let block = Encoder::new().encode(request(b"localhost").iter().map(|(n, v)| (&n[..], &v[..])));
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(HEADERS, END_HEADERS, 1, &block));
        wire
    }

    fn request(path_authority: &[u8]) -> HeaderList {
        vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (b":path".to_vec(), b"/SpiffeWorkloadAPI/FetchX509SVID".to_vec()),
            (b":authority".to_vec(), path_authority.to_vec()),
            (b"workload.spiffe.io".to_vec(), b"true".to_vec()),
        ]
    }

    /// What the server side would decode from `bytes` (after the preface):
    /// the header lists and each frame's (type, flags).
    fn server_view(bytes: &[u8]) -> (Vec<HeaderList>, Vec<(u8, u8)>) {
        assert!(bytes.starts_with(PREFACE));
        let mut rest = &bytes[PREFACE.len()..];
        let mut decoder = loona_hpack::Decoder::new();
        let (mut blocks, mut frames, mut block) = (Vec::new(), Vec::new(), Vec::new());
        while !rest.is_empty() {
            let len = frame_length(rest);
            let (kind, flags) = (rest[3], rest[4]);
            frames.push((kind, flags));
            if kind == HEADERS || kind == CONTINUATION {
                block.extend_from_slice(&rest[9..9 + len]);
                if flags & END_HEADERS != 0 {
                    blocks.push(decoder.decode(&block).unwrap());
                    block.clear();
                }
            }
            rest = &rest[9 + len..];
        }
        (blocks, frames)
    }

    #[test]
    fn a_socket_path_authority_becomes_localhost_and_the_rest_is_kept() {
        let mut client = Encoder::new();
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        let first = client.encode(
            request(b"tmp%2Fattestd%2Fapi.sock")
                .iter()
                .map(|(n, v)| (&n[..], &v[..])),
        );
        wire.extend(frame(HEADERS, END_HEADERS, 1, &first));
        wire.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0")); // DATA
        // A second request on the same connection reuses the client's
        // dynamic table: the two HPACK contexts must stay in step.
        let second = client.encode(
            request(b"tmp%2Fattestd%2Fapi.sock")
                .iter()
                .map(|(n, v)| (&n[..], &v[..])),
        );
        wire.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &second));

        let mut fix = AuthorityFix::default();
        let mut out = Vec::new();
        // Byte by byte: frames split anywhere must still work.
        for byte in &wire {
            fix.feed(std::slice::from_ref(byte)).unwrap();
            let mut buf = [0u8; 64];
            loop {
                let n = fix.drain_into(&mut buf);
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
        }
        let (blocks, frames) = server_view(&out);
        assert_eq!(blocks.len(), 2);
        for block in &blocks {
            assert_eq!(block, &request(b"localhost"));
        }
        assert_eq!(
            frames,
            [
                (0x4, 0),
                (HEADERS, END_HEADERS),
                (0x0, END_STREAM),
                (HEADERS, END_HEADERS | END_STREAM)
            ]
        );
    }

    /// A request whose block is split over a PADDED + PRIORITY HEADERS
    /// frame and a CONTINUATION, then a DATA frame.
    fn split_request(authority: &[u8]) -> Vec<u8> {
        let block = Encoder::new().encode(request(authority).iter().map(|(n, v)| (&n[..], &v[..])));
        let (head, tail) = block.split_at(10);
        let mut payload = vec![3u8];
        payload.extend([0, 0, 0, 0, 16]);
        payload.extend(head);
        payload.extend([0, 0, 0]);
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(HEADERS, PADDED | PRIORITY, 1, &payload));
        wire.extend(frame(CONTINUATION, END_HEADERS, 1, tail));
        wire.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0"));
        wire
    }

    #[test]
    fn a_valid_first_block_is_forwarded_as_sent_and_the_rest_passes_through() {
        let wire = split_request(b"localhost");
        let mut fix = AuthorityFix::default();
        fix.feed(&wire).unwrap();
        assert!(fix.passes_through());
        let mut out = vec![0u8; 4096];
        let n = fix.drain_into(&mut out);
        assert_eq!(&out[..n], &wire[..], "every byte as the client sent it");
    }

    /// A forwarded first block is remembered, and a remembered one is
    /// forwarded without being decoded (shown here with a block that would
    /// be rewritten, planted in the memory); a rewritten one is not
    /// remembered.
    #[test]
    fn a_first_block_known_forwardable_is_forwarded_without_decoding() {
        let fragment = |authority: &[u8]| {
            Encoder::new().encode(request(authority).iter().map(|(n, v)| (&n[..], &v[..])))
        };
        let connect = |wire: &[u8]| {
            let mut fix = AuthorityFix::default();
            fix.feed(wire).unwrap();
            let mut out = vec![0u8; 4096];
            let n = fix.drain_into(&mut out);
            (fix.passes_through(), out[..n].to_vec())
        };
        assert!(!KnownForwardable::contains(&fragment(b"localhost")));
        let wire = split_request(b"localhost");
        assert_eq!(connect(&wire), (true, wire.clone()));
        assert!(KnownForwardable::contains(&fragment(b"localhost")));

        let broken = split_request(b"tmp%2Fapi.sock");
        let (passes, out) = connect(&broken);
        assert!(!passes);
        assert_eq!(server_view(&out).0, [request(b"localhost")]);
        assert!(!KnownForwardable::contains(&fragment(b"tmp%2Fapi.sock")));

        KnownForwardable::insert(&fragment(b"tmp%2Fapi.sock"));
        assert_eq!(connect(&broken), (true, broken.clone()), "not decoded");
    }

    #[test]
    fn the_memory_of_forwardable_blocks_is_bounded() {
        let blocks: Vec<Vec<u8>> = (0..=KNOWN_FORWARDABLE).map(|i| vec![0x82; i + 1]).collect();
        for block in &blocks {
            KnownForwardable::insert(block);
        }
        assert!(!KnownForwardable::contains(&blocks[0]), "the oldest is forgotten");
        assert!(blocks[1..].iter().all(|block| KnownForwardable::contains(block)));
        assert_eq!(KNOWN.with_borrow(VecDeque::len), KNOWN_FORWARDABLE);
    }

    #[test]
    fn after_a_forwarded_block_the_hpack_contexts_stay_in_step() {
        // The second request names the first's dynamic-table entries: the
        // server decodes it only if its table followed the client's.
        let mut client = Encoder::new();
        let mut wire = PREFACE.to_vec();
        for stream in [1, 3] {
            let block = client.encode(request(b"localhost").iter().map(|(n, v)| (&n[..], &v[..])));
            wire.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &block));
        }
        let mut fix = AuthorityFix::default();
        let mut out = Vec::new();
        for chunk in wire.chunks(7) {
            fix.feed(chunk).unwrap();
            let mut buf = vec![0u8; fix.output_len()];
            let n = fix.drain_into(&mut buf);
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(
            server_view(&out).0,
            [request(b"localhost"), request(b"localhost")]
        );
    }

    #[test]
    fn a_rewritten_block_drops_padding_and_priority_and_joins_continuations() {
        let mut fix = AuthorityFix::default();
        fix.feed(&split_request(b"tmp%2Fapi.sock")).unwrap();
        assert!(!fix.passes_through());
        let mut out = vec![0u8; 4096];
        let n = fix.drain_into(&mut out);
        let (blocks, frames) = server_view(&out[..n]);
        assert_eq!(blocks, [request(b"localhost")]);
        assert_eq!(frames, [(HEADERS, END_HEADERS), (0x0, END_STREAM)]);
    }

    #[test]
    fn a_first_block_too_large_to_keep_is_rewritten_like_any_other() {
        let mut headers = request(b"localhost");
        headers.push((b"x-large".to_vec(), vec![b'a'; MAX_FORWARDED_BLOCK]));
        let block = Encoder::new().encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
        let mut wire = PREFACE.to_vec();
        wire.extend(block_frames(&block));
        let mut fix = AuthorityFix::default();
        fix.feed(&wire).unwrap();
        assert!(!fix.passes_through());
        let mut out = vec![0u8; 64 * 1024];
        let n = fix.drain_into(&mut out);
        assert_eq!(server_view(&out[..n]).0, [headers]);
    }

    /// A header block that enters one large field into the dynamic table,
    /// then names it by a 1-byte index `repeats` times.
    fn amplifying_block(value_len: usize, repeats: usize) -> Vec<u8> {
        // Literal with incremental indexing, new name, no Huffman.
        let mut block = vec![0x40, 3];
        block.extend(b"x-a");
        block.extend(loona_hpack::encoder::encode_integer(value_len, 7));
        block.extend(std::iter::repeat_n(b'a', value_len));
        // Index 62: the newest dynamic-table entry.
        block.extend(std::iter::repeat_n(0x80 | 62, repeats));
        block
    }

    /// The block as HEADERS then CONTINUATION frames of at most 16 KiB.
    fn block_frames(block: &[u8]) -> Vec<u8> {
        let mut wire = Vec::new();
        let chunks: Vec<&[u8]> = block.chunks(MAX_FRAME).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let kind = if i == 0 { HEADERS } else { CONTINUATION };
            let flags = if i == chunks.len() - 1 { END_HEADERS } else { 0 };
            wire.extend(frame(kind, flags, 1, chunk));
        }
        wire
    }

    #[test]
    fn the_decoded_header_list_is_bounded_while_decoding() {
        // 4 KB referenced ~65,000 times: 260 MB if decoded in full.
        let block = amplifying_block(4000, MAX_HEADER_BLOCK - 4010);
        assert!(block.len() <= MAX_HEADER_BLOCK);
        let mut wire = PREFACE.to_vec();
        wire.extend(block_frames(&block));
        let mut fix = AuthorityFix::default();
        let started = std::time::Instant::now();
        let result = fix.feed(&wire);
        // The worst block attestd accepts to decode; the README quotes this.
        println!("worst-case header block decoded in {:?}", started.elapsed());
        assert!(
            matches!(result, Err(AuthorityFixError::HeaderListTooLarge)),
            "{result:?}"
        );
        assert!(
            !fix.has_output() || fix.output.len() < 1024,
            "nothing of the block was passed on"
        );
    }

    /// Blocks whose cost is in the number of representations rather than
    /// in what they decode to: 13,000 one-byte Huffman names and values
    /// (each string once cost a hash table build), and 64 Ki dynamic table
    /// size updates. Both are refused after at most MAX_REPRESENTATIONS.
    #[test]
    fn blocks_of_many_tiny_representations_are_refused() {
        // Literal without indexing, new name; name and value each one
        // Huffman-coded 'a' (00011, padded with ones).
        let field = [0x00u8, 0x81, 0x1f, 0x81, 0x1f];
        let huffman: Vec<u8> = field
            .iter()
            .copied()
            .cycle()
            .take(MAX_HEADER_BLOCK / 5 * 5)
            .collect();
        // Dynamic table size update to 0, over and over.
        let updates = vec![0x20u8; MAX_HEADER_BLOCK];
        for block in [huffman, updates] {
            let mut wire = PREFACE.to_vec();
            wire.extend(block_frames(&block));
            let result = AuthorityFix::default().feed(&wire);
            assert!(
                matches!(result, Err(AuthorityFixError::HeaderListTooLarge)),
                "{result:?}"
            );
        }
        let mut decoder = Decoder::with_dynamic_size(TABLE_SIZE as u32);
        let few: Vec<u8> = field.iter().copied().cycle().take(5 * 10).collect();
        assert_eq!(decode_bounded(&mut decoder, &few).unwrap().len(), 10);
    }

    #[test]
    fn a_header_list_at_the_bound_passes() {
        // One field of 4000 + 3 + 32 bytes, referenced again until the
        // list is exactly at the bound (or just under).
        let field = 4000 + 3 + 32;
        let block = amplifying_block(4000, MAX_HEADER_LIST_SIZE / field - 1);
        let mut wire = PREFACE.to_vec();
        wire.extend(block_frames(&block));
        let mut fix = AuthorityFix::default();
        fix.feed(&wire).unwrap();
        let mut out = vec![0u8; 64 * 1024];
        let n = fix.drain_into(&mut out);
        let (blocks, _) = server_view(&out[..n]);
        assert_eq!(blocks[0].len(), MAX_HEADER_LIST_SIZE / field);

        let over = amplifying_block(4000, MAX_HEADER_LIST_SIZE / field);
        let mut wire = PREFACE.to_vec();
        wire.extend(block_frames(&over));
        assert!(matches!(
            AuthorityFix::default().feed(&wire),
            Err(AuthorityFixError::HeaderListTooLarge)
        ));
    }

    #[test]
    fn output_waiting_for_the_server_stays_bounded() {
        // Many small frames at once: only about the high-water mark is
        // rewritten before the server reads; the rest follows as it does.
        let mut wire = PREFACE.to_vec();
        let ping = frame(0x6, 0, 0, &[0; 8]);
        let count = 4 * OUTPUT_HIGH_WATER / ping.len();
        for _ in 0..count {
            wire.extend(&ping);
        }
        let mut fix = AuthorityFix::default();
        fix.feed(&wire).unwrap();
        assert!(fix.output.len() < OUTPUT_HIGH_WATER + ping.len());
        let mut passed = 0;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = fix.drain_into(&mut buf);
            passed += n;
            if n == 0 {
                fix.pump().unwrap();
                if !fix.has_output() {
                    break;
                }
            }
        }
        assert_eq!(passed, wire.len());
    }

    /// Representations cut short at the end of a block: each panicked
    /// inside the decoder (found by fuzz/fuzz_targets/authority_fix.rs).
    #[test]
    fn truncated_representations_are_refused_not_a_panic() {
        for block in [
            &b"\x40"[..],                // literal with a new name: no name
            b"\x40\x01n",                // ... no value
            b"\x00\x81",                 // name length 1, no name
            b"\x44\x05/pa",              // indexed name, value cut
            b"\xff",                     // indexed field: continuation missing
            b"\xff\x80",                 // ... still missing
            b"\x3f\xe1",                 // table size update: continuation missing
            b"\x82\x0f",                 // a whole field, then a cut one
            b"\xff\xff\xff\xff\xff\x01", // an integer longer than the decoder reads
        ] {
            let mut decoder = Decoder::with_dynamic_size(TABLE_SIZE as u32);
            assert!(
                matches!(
                    decode_bounded(&mut decoder, block),
                    Err(AuthorityFixError::Hpack(_))
                ),
                "{block:x?}"
            );
        }
        let mut decoder = Decoder::with_dynamic_size(TABLE_SIZE as u32);
        let whole = decode_bounded(&mut decoder, b"\x82\x44\x02/p\x40\x01n\x01v").unwrap();
        assert_eq!(whole.len(), 3);
    }

    #[test]
    fn notes_the_first_request() {
        let mut fix = AuthorityFix::default();
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(0x4, 0, 0, &[]));
        fix.feed(&wire).unwrap();
        assert!(!fix.request_seen(), "SETTINGS is not a request");
        let block = Encoder::new().encode(request(b"localhost").iter().map(|(n, v)| (&n[..], &v[..])));
        fix.feed(&frame(HEADERS, END_HEADERS, 1, &block)).unwrap();
        assert!(fix.request_seen());
    }

    #[test]
    fn an_idle_connection_holds_no_buffer() {
        let mut fix = AuthorityFix::default();
        let mut wire = PREFACE.to_vec();
        // A rewritten connection: the adapter keeps parsing its frames.
        let block = Encoder::new().encode(request(b"tmp%2Fapi.sock").iter().map(|(n, v)| (&n[..], &v[..])));
        wire.extend(frame(HEADERS, END_HEADERS, 1, &block));
        // Half a WINDOW_UPDATE waits for the rest in the input.
        let window_update = frame(0x8, 0, 0, &[0, 0, 0x40, 0]);
        wire.extend(&window_update[..5]);
        fix.feed(&wire).unwrap();
        assert_ne!(fix.input.capacity(), 0, "the partial frame is kept");
        fix.feed(&window_update[5..]).unwrap();
        assert_eq!(fix.input.capacity(), 0, "nothing left to parse");
        let mut out = vec![0u8; fix.output_len()];
        assert_eq!(fix.drain_into(&mut out), out.len());
        assert_eq!(fix.output.capacity(), 0, "nothing left for the server");
        assert!(out.ends_with(&window_update));
    }

    #[test]
    fn refuses_oversized_blocks_and_passes_non_http2_through() {
        let mut fix = AuthorityFix::default();
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(HEADERS, 0, 1, &vec![0x40; MAX_HEADER_BLOCK]));
        wire.extend(frame(CONTINUATION, 0, 1, &[0x40; 16]));
        assert!(matches!(
            fix.feed(&wire),
            Err(AuthorityFixError::HeaderBlockTooLarge)
        ));

        let mut fix = AuthorityFix::default();
        fix.feed(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut out = [0u8; 64];
        let n = fix.drain_into(&mut out);
        assert_eq!(&out[..n], b"GET / HTTP/1.1\r\n\r\n");
    }
}
