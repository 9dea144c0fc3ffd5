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
//! `localhost`. Every block is re-encoded, not only the broken ones, so the
//! two HPACK contexts never disagree. The authority carries no meaning over
//! a Unix socket: attestd never reads it.

use std::collections::VecDeque;

use loona_hpack::{Decoder, Encoder};

/// The HTTP/2 client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame payload the server accepts (HTTP/2's default
/// SETTINGS_MAX_FRAME_SIZE, which tonic's server keeps).
const MAX_FRAME: usize = 16_384;
/// A request's header block larger than this is refused outright.
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// HPACK dynamic table size both sides use (HTTP/2's default, which
/// neither the clients nor tonic's server change).
const TABLE_SIZE: usize = 4096;
/// What an unusable `:authority` becomes.
const LOCAL_AUTHORITY: &[u8] = b"localhost";

/// Why a connection's bytes could not be passed on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityFixError {
    /// A header block is larger than attestd accepts.
    #[error("HTTP/2 header block over {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge,
    /// A frame is malformed (padding longer than the frame, say).
    #[error("malformed HTTP/2 frame")]
    MalformedFrame,
    /// The client's HPACK encoding does not decode.
    #[error("HPACK: {0:?}")]
    Hpack(loona_hpack::decoder::DecoderError),
}

/// A header block split over HEADERS and CONTINUATION frames, being
/// collected.
struct PendingBlock {
    stream_id: [u8; 4],
    end_stream: bool,
    fragment: Vec<u8>,
}

/// The client-to-server rewriter of one connection.
pub struct AuthorityFix {
    /// Bytes read from the client, not yet a whole frame.
    input: Vec<u8>,
    /// Bytes ready for the server.
    output: VecDeque<u8>,
    /// Until the preface is seen whole, frames cannot be parsed.
    preface_left: usize,
    /// Not HTTP/2 at all: pass everything through and let the server say so.
    passthrough: bool,
    pending: Option<PendingBlock>,
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
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
        let mut decoder = Decoder::new();
        // Bounds the client's dynamic table: a larger size update is an
        // error, not an allocation.
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Self {
            input: Vec::new(),
            output: VecDeque::new(),
            preface_left: PREFACE.len(),
            passthrough: false,
            pending: None,
            decoder,
            encoder: Encoder::new(),
        }
    }
}

impl AuthorityFix {
    /// Takes bytes read from the client.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), AuthorityFixError> {
        if self.passthrough {
            self.output.extend(bytes);
            return Ok(());
        }
        self.input.extend_from_slice(bytes);
        if self.preface_left > 0 && !self.take_preface() {
            return Ok(());
        }
        self.take_frames()
    }

    /// Moves bytes ready for the server into `into`; returns how many.
    pub fn drain_into(&mut self, into: &mut [u8]) -> usize {
        let n = into.len().min(self.output.len());
        for (slot, byte) in into.iter_mut().zip(self.output.drain(..n)) {
            *slot = byte;
        }
        n
    }

    /// Whether bytes are ready for the server.
    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
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

    fn take_frames(&mut self) -> Result<(), AuthorityFixError> {
        while self.input.len() >= FRAME_HEADER {
            let length = usize::from(self.input[0]) << 16
                | usize::from(self.input[1]) << 8
                | usize::from(self.input[2]);
            if length > MAX_HEADER_BLOCK {
                return Err(AuthorityFixError::HeaderBlockTooLarge);
            }
            if self.input.len() < FRAME_HEADER + length {
                return Ok(());
            }
            let frame: Vec<u8> = self.input.drain(..FRAME_HEADER + length).collect();
            self.take_frame(&frame)?;
        }
        Ok(())
    }

    fn take_frame(&mut self, frame: &[u8]) -> Result<(), AuthorityFixError> {
        let (kind, flags) = (frame[3], frame[4]);
        let stream_id: [u8; 4] = [frame[5], frame[6], frame[7], frame[8]];
        let payload = &frame[FRAME_HEADER..];
        match kind {
            HEADERS => {
                let fragment = header_fragment(flags, payload)?;
                self.pending = Some(PendingBlock {
                    stream_id,
                    end_stream: flags & END_STREAM != 0,
                    fragment: fragment.to_vec(),
                });
            }
            CONTINUATION if self.pending.is_some() => {
                if let Some(pending) = &mut self.pending {
                    pending.fragment.extend_from_slice(payload);
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

    /// Re-encodes a whole header block and writes it as HEADERS (and
    /// CONTINUATION) frames.
    fn emit(&mut self, block: PendingBlock) -> Result<(), AuthorityFixError> {
        let mut headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                headers.push((name.into_owned(), value.into_owned()))
            })
            .map_err(AuthorityFixError::Hpack)?;
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority" && !is_valid_authority(value) {
                *value = LOCAL_AUTHORITY.to_vec();
            }
        }
        let encoded = self.encoder.encode(
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
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend(stream.to_be_bytes());
        out.extend(payload);
        out
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

    type HeaderList = Vec<(Vec<u8>, Vec<u8>)>;

    /// What the server side would decode from `bytes` (after the preface):
    /// the header lists and each frame's (type, flags).
    fn server_view(bytes: &[u8]) -> (Vec<HeaderList>, Vec<(u8, u8)>) {
        assert!(bytes.starts_with(PREFACE));
        let mut rest = &bytes[PREFACE.len()..];
        let mut decoder = Decoder::new();
        let (mut blocks, mut frames, mut block) = (Vec::new(), Vec::new(), Vec::new());
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
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

    #[test]
    fn valid_authorities_padding_priority_and_continuations() {
        let mut client = Encoder::new();
        let block = client.encode(request(b"localhost").iter().map(|(n, v)| (&n[..], &v[..])));
        let (head, tail) = block.split_at(10);
        // PADDED + PRIORITY HEADERS carrying the first part, then a CONTINUATION.
        let mut payload = vec![3u8];
        payload.extend([0, 0, 0, 0, 16]);
        payload.extend(head);
        payload.extend([0, 0, 0]);
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(HEADERS, PADDED | PRIORITY, 1, &payload));
        wire.extend(frame(CONTINUATION, END_HEADERS, 1, tail));
        let mut fix = AuthorityFix::default();
        fix.feed(&wire).unwrap();
        let mut out = vec![0u8; 4096];
        let n = fix.drain_into(&mut out);
        let (blocks, frames) = server_view(&out[..n]);
        assert_eq!(blocks, [request(b"localhost")]);
        assert_eq!(frames, [(HEADERS, END_HEADERS)]);
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
