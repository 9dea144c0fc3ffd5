//! The server's opening frames, sent with its first answer.
//!
//! An HTTP/2 server writes three times before a new connection's first
//! response: its SETTINGS (the server preface) at once, then its SETTINGS
//! ack and connection WINDOW_UPDATE once it has read the client's, then the
//! response. Each write wakes the client. A client that sent its whole
//! first request up front (tonic, grpc-go and gRPC-core clients do: HTTP/2
//! lets a client send requests before it sees the server's preface) needs
//! none of those frames before its answer, so it would wake twice for
//! nothing while the server attests it, each time paying a system call on
//! the server's side and, if the client's CPU went idle meanwhile, a slow
//! wake-up on its own.
//!
//! So once the client's first request is there whole (its headers ended
//! and its stream ended, so it needs no window from the server to finish
//! it) when the server writes, the server's SETTINGS, PING and
//! WINDOW_UPDATE frames are held. They go out, in the order written and in
//! the same write, with the first frame of any other kind (the response, a
//! reset, a GOAWAY), or at shutdown. The wire's content and order are
//! unchanged; only the first answer's frames travel together. A client that
//! waits for the server's preface before sending its request has sent no
//! request when the server first writes, and gets every frame at once.
//!
//! The request is looked for at each write until the server first writes
//! something other than those control frames: in what the server has read
//! of the client and, before it has read anything, in what waits unread (a
//! peek). While the client is still sending its request it is awake, and
//! frames written then go out at once. At most [`MAX_HELD`] bytes are held,
//! once per connection: beyond that the frames go out as they come.
//!
//! Held frames wait as long as the first answer takes: milliseconds, longer
//! only when the request waits its turn to be attested under load. HTTP/2
//! lets a client close a connection whose SETTINGS stay unacknowledged
//! beyond "a reasonable time" (RFC 9113, section 6.5.3); no client tested
//! keeps such a timer by default. No timer bounds the wait here: a timer
//! per connection is what the first-request deadline was made lazy to
//! avoid.

use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use nix::sys::socket::{MsgFlags, recv};
use tokio::io::AsyncWrite;
use tokio::net::UnixStream;

use super::h2_wire::{
    CONTINUATION, DATA, END_HEADERS, END_STREAM, FRAME_HEADER, FrameHeader, HEADERS, PING, PREFACE, SETTINGS,
    WINDOW_UPDATE,
};

/// The most bytes of opening frames held for the first answer. The server's
/// SETTINGS, its ack, a WINDOW_UPDATE and a PING ack take under 100.
const MAX_HELD: usize = 512;

/// Room made for held frames at once: the usual opening frames fit, so
/// holding them costs one allocation.
const HELD_USUALLY: usize = 128;

/// How much of the client's first flight is looked at: the preface and a
/// Workload API request's frames take about 200 bytes.
const PEEK: usize = 2048;

/// The most slices written at once when the held frames go out: the held
/// bytes and what the server writes with them.
const MAX_SLICES: usize = 16;

/// Where a connection is in sending its opening frames.
#[derive(Debug)]
pub(super) enum OpeningFlight {
    /// The client's first request is not known whole yet, and the server
    /// has written only control frames: what is written goes out at once.
    Undecided {
        client: RequestScan,
        server: FrameFollower,
    },
    /// The client's first request is in: control frames wait for the
    /// first answer.
    Holding { held: Vec<u8>, frames: FrameFollower },
    /// Held frames go out ahead of anything else.
    Releasing(Vec<u8>),
    /// Writes go straight to the socket.
    Sent,
}

impl Default for OpeningFlight {
    fn default() -> Self {
        Self::Undecided {
            client: RequestScan::default(),
            server: FrameFollower::default(),
        }
    }
}

impl OpeningFlight {
    /// Writes `bufs` to `stream`, or holds them (see the module's docs).
    pub fn poll_write_vectored(
        &mut self,
        stream: &mut UnixStream,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self {
                Self::Undecided { client, server } => {
                    if client.whole() || (client.is_fresh() && first_request_waits(stream)) {
                        *self = Self::Holding {
                            held: Vec::with_capacity(HELD_USUALLY),
                            frames: std::mem::take(server),
                        };
                        continue;
                    }
                    let written = ready!(Pin::new(stream).poll_write_vectored(cx, bufs))?;
                    if !may_wait(server, written_part(bufs, written)) {
                        *self = Self::Sent;
                    }
                    return Poll::Ready(Ok(written));
                }
                Self::Holding { held, frames } => {
                    let total: usize = bufs.iter().map(|buf| buf.len()).sum();
                    if held.len() + total <= MAX_HELD && may_wait(frames, bufs.iter().map(|buf| &buf[..])) {
                        bufs.iter().for_each(|buf| held.extend_from_slice(buf));
                        return Poll::Ready(Ok(total));
                    }
                    *self = Self::Releasing(std::mem::take(held));
                }
                Self::Releasing(held) => {
                    let written = ready!(write_after(stream, cx, held, bufs))?;
                    if written < held.len() {
                        held.drain(..written);
                        continue;
                    }
                    let of_bufs = written - held.len();
                    *self = Self::Sent;
                    if of_bufs > 0 || bufs.iter().all(|buf| buf.is_empty()) {
                        return Poll::Ready(Ok(of_bufs));
                    }
                }
                Self::Sent => return Pin::new(stream).poll_write_vectored(cx, bufs),
            }
        }
    }

    /// Flushes what was written. Held frames stay held: that they wait for
    /// the answer is the point.
    pub fn poll_flush(&mut self, stream: &mut UnixStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Self::Releasing(_) = self {
            ready!(self.poll_write_vectored(stream, cx, &[]))?;
        }
        Pin::new(stream).poll_flush(cx)
    }

    /// Sends any held frames, then shuts the write side down.
    pub fn poll_shutdown(&mut self, stream: &mut UnixStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Self::Holding { held, .. } = self {
            *self = Self::Releasing(std::mem::take(held));
        }
        ready!(self.poll_flush(stream, cx))?;
        Pin::new(stream).poll_shutdown(cx)
    }

    /// Notes bytes the connection read from the client, until the first
    /// request is known whole.
    pub fn client_sent(&mut self, bytes: &[u8]) {
        if let Self::Undecided { client, .. } = self {
            client.feed(bytes);
        }
    }
}

/// Whether the client's whole first request waits unread: the peek at the
/// server's first write, before anything was read.
fn first_request_waits(stream: &UnixStream) -> bool {
    // A peek changes nothing the runtime knows of the socket: what it sees
    // stays there for the server to read.
    let mut first_flight = [0u8; PEEK];
    let peeked = recv(
        stream.as_raw_fd(),
        &mut first_flight,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    );
    let mut client = RequestScan::default();
    peeked.is_ok_and(|n| {
        client.feed(&first_flight[..n]);
        client.whole()
    })
}

/// Writes `held`, then as much of `bufs` as goes in the same write.
fn write_after(
    stream: &mut UnixStream,
    cx: &mut Context<'_>,
    held: &[u8],
    bufs: &[IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    let mut slices = [IoSlice::new(&[]); MAX_SLICES];
    slices[0] = IoSlice::new(held);
    let count = 1 + bufs.len().min(MAX_SLICES - 1);
    slices[1..count].copy_from_slice(&bufs[..count - 1]);
    Pin::new(stream).poll_write_vectored(cx, &slices[..count])
}

/// Whether every frame the server starts in `bytes` is one the client does
/// not need before its answer: SETTINGS (the preface and acks), PING and
/// WINDOW_UPDATE.
fn may_wait<'a>(frames: &mut FrameFollower, pieces: impl IntoIterator<Item = &'a [u8]>) -> bool {
    pieces.into_iter().all(|mut bytes| {
        while let Some(header) = frames.next_header(&mut bytes) {
            if !matches!(header.kind, SETTINGS | PING | WINDOW_UPDATE) {
                return false;
            }
        }
        true
    })
}

/// The first `written` bytes of `bufs`, piece by piece (an empty piece
/// does not end them).
fn written_part<'a>(bufs: &'a [IoSlice<'a>], written: usize) -> impl Iterator<Item = &'a [u8]> {
    bufs.iter().scan(written, |left, buf| {
        if *left == 0 {
            return None;
        }
        let part = &buf[..(*left).min(buf.len())];
        *left -= part.len();
        Some(part)
    })
}

/// Follows the client's first flight, across reads, until its first
/// request is whole: its header block ended and its stream ended.
#[derive(Debug, Clone, Default)]
pub(super) struct RequestScan {
    /// Bytes of the client preface passed.
    preface_seen: usize,
    /// The client's first bytes are not the HTTP/2 preface: its requests
    /// are not looked for.
    foreign: bool,
    frames: FrameFollower,
    /// The stream of the first HEADERS frame.
    first: Option<u32>,
    headers_ended: bool,
    stream_ended: bool,
}

impl RequestScan {
    fn feed(&mut self, mut bytes: &[u8]) {
        let preface = (PREFACE.len() - self.preface_seen).min(bytes.len());
        self.foreign |= bytes[..preface] != PREFACE[self.preface_seen..self.preface_seen + preface];
        self.preface_seen += preface;
        bytes = &bytes[preface..];
        while !self.foreign
            && !self.whole()
            && let Some(header) = self.frames.next_header(&mut bytes)
        {
            if header.kind == HEADERS && self.first.is_none() {
                self.first = Some(header.stream);
            }
            if self.first != Some(header.stream) {
                continue;
            }
            if matches!(header.kind, HEADERS | CONTINUATION) {
                self.headers_ended |= header.flags & END_HEADERS != 0;
            }
            if matches!(header.kind, HEADERS | DATA) {
                self.stream_ended |= header.flags & END_STREAM != 0;
            }
        }
    }

    fn whole(&self) -> bool {
        !self.foreign && self.headers_ended && self.stream_ended
    }

    /// Whether nothing has been read from the client yet.
    fn is_fresh(&self) -> bool {
        self.preface_seen == 0
    }
}

/// Finds frame headers in a byte stream given in pieces: a header may be
/// split across pieces, and payloads are passed over.
#[derive(Debug, Clone, Default)]
pub(super) struct FrameFollower {
    /// The frame header being read, and how much of it has been.
    header: [u8; FRAME_HEADER],
    header_read: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: usize,
}

impl FrameFollower {
    /// The next frame header completed in `bytes`, which is advanced past
    /// it; `None` once `bytes` is used up.
    fn next_header(&mut self, bytes: &mut &[u8]) -> Option<FrameHeader> {
        loop {
            let passed = self.payload_left.min(bytes.len());
            self.payload_left -= passed;
            *bytes = &bytes[passed..];
            if bytes.is_empty() {
                return None;
            }
            let taken = (FRAME_HEADER - self.header_read).min(bytes.len());
            self.header[self.header_read..self.header_read + taken].copy_from_slice(&bytes[..taken]);
            self.header_read += taken;
            *bytes = &bytes[taken..];
            if self.header_read == FRAME_HEADER {
                self.header_read = 0;
                let header = FrameHeader::parse(&self.header);
                self.payload_left = header.length;
                return Some(header);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream as StdUnixStream;

    use super::*;
    use crate::workload_api::h2_wire::frame;

    fn settings() -> Vec<u8> {
        frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 16])
    }

    fn settings_ack() -> Vec<u8> {
        frame(SETTINGS, 0x1, 0, &[])
    }

    fn window_update() -> Vec<u8> {
        frame(WINDOW_UPDATE, 0, 0, &[0, 0x0f, 0, 1])
    }

    fn response() -> Vec<u8> {
        let mut out = frame(HEADERS, END_HEADERS, 1, &[0x88]);
        out.extend(frame(DATA, 0, 1, &[0; 40]));
        out
    }

    /// What a client sends first: the preface, its SETTINGS, then `request`.
    fn client_flight(request: &[Vec<u8>]) -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        request.iter().for_each(|frame| out.extend(frame));
        out
    }

    fn whole_request() -> Vec<Vec<u8>> {
        vec![
            frame(HEADERS, END_HEADERS, 1, &[0x83, 0x86]),
            frame(DATA, END_STREAM, 1, &[0; 5]),
        ]
    }

    async fn write(flight: &mut OpeningFlight, server: &mut UnixStream, bytes: &[u8]) -> usize {
        poll_fn(|cx| flight.poll_write_vectored(server, cx, &[IoSlice::new(bytes)]))
            .await
            .unwrap()
    }

    async fn flush(flight: &mut OpeningFlight, server: &mut UnixStream) {
        poll_fn(|cx| flight.poll_flush(server, cx)).await.unwrap();
    }

    /// Everything the client can read now, without waiting.
    fn readable(mut client: &StdUnixStream) -> Vec<u8> {
        let mut got = vec![0; 64 * 1024];
        match client.read(&mut got) {
            Ok(n) => got.truncate(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => got.clear(),
            Err(e) => panic!("{e}"),
        }
        got
    }

    /// A connection whose client has sent `flight`.
    async fn pair_with_client_flight(flight: &[u8]) -> (StdUnixStream, UnixStream) {
        let (mut client, server) = StdUnixStream::pair().unwrap();
        client.write_all(flight).unwrap();
        client.set_nonblocking(true).unwrap();
        server.set_nonblocking(true).unwrap();
        (client, UnixStream::from_std(server).unwrap())
    }

    #[tokio::test]
    async fn opening_frames_wait_for_the_first_answer_and_go_out_with_it_in_order() {
        let (client, mut server) = pair_with_client_flight(&client_flight(&whole_request())).await;
        let mut flight = OpeningFlight::default();

        assert_eq!(
            write(&mut flight, &mut server, &settings()).await,
            settings().len()
        );
        flush(&mut flight, &mut server).await;
        let ack_and_window = [settings_ack(), window_update()].concat();
        write(&mut flight, &mut server, &ack_and_window).await;
        flush(&mut flight, &mut server).await;
        assert!(
            readable(&client).is_empty(),
            "nothing reaches the client before its answer"
        );

        write(&mut flight, &mut server, &response()).await;
        let expected = [settings(), ack_and_window, response()].concat();
        assert_eq!(readable(&client), expected, "one write, in the order written");
        assert!(matches!(flight, OpeningFlight::Sent));
    }

    #[tokio::test]
    async fn a_client_still_sending_its_request_gets_every_frame_at_once() {
        let cases = [
            // Only the preface and SETTINGS: a client waiting for the
            // server's preface before it sends a request.
            client_flight(&[]),
            // Headers without the end of the stream: a body is to come,
            // and may need the server's window.
            client_flight(&[frame(HEADERS, END_HEADERS, 1, &[0x83])]),
            // A header block continued in a frame not yet sent.
            client_flight(&[frame(HEADERS, END_STREAM, 1, &[0x83])]),
            // Half a frame.
            client_flight(&whole_request())[..PREFACE.len() + 20].to_vec(),
            // Not HTTP/2, though frames follow.
            [
                b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n".to_vec(),
                whole_request().concat(),
            ]
            .concat(),
        ];
        for case in cases {
            let (client, mut server) = pair_with_client_flight(&case).await;
            let mut flight = OpeningFlight::default();
            write(&mut flight, &mut server, &settings()).await;
            assert_eq!(readable(&client), settings());
        }
    }

    #[tokio::test]
    async fn a_request_whose_headers_end_in_a_continuation_is_whole() {
        let request = vec![
            frame(HEADERS, END_STREAM, 1, &[0x83]),
            frame(CONTINUATION, END_HEADERS, 1, &[0x86]),
        ];
        let (client, mut server) = pair_with_client_flight(&client_flight(&request)).await;
        let mut flight = OpeningFlight::default();
        write(&mut flight, &mut server, &settings()).await;
        assert!(readable(&client).is_empty());
    }

    #[tokio::test]
    async fn more_than_the_bound_goes_out_as_it_comes() {
        let (client, mut server) = pair_with_client_flight(&client_flight(&whole_request())).await;
        let mut flight = OpeningFlight::default();
        write(&mut flight, &mut server, &settings()).await;
        let pings: Vec<u8> = (0..MAX_HELD / 17 + 1)
            .flat_map(|_| frame(PING, 0x1, 0, &[0; 8]))
            .collect();
        write(&mut flight, &mut server, &pings).await;
        assert_eq!(readable(&client), [settings(), pings].concat());
    }

    #[tokio::test]
    async fn shutdown_sends_what_was_held() {
        let (client, mut server) = pair_with_client_flight(&client_flight(&whole_request())).await;
        let mut flight = OpeningFlight::default();
        write(&mut flight, &mut server, &settings()).await;
        poll_fn(|cx| flight.poll_shutdown(&mut server, cx)).await.unwrap();
        assert_eq!(readable(&client), settings());
    }

    #[tokio::test]
    async fn a_request_completed_after_the_first_write_holds_the_acks() {
        let request = whole_request();
        let (mut client, mut server) = pair_with_client_flight(&client_flight(&request[..1])).await;
        let mut flight = OpeningFlight::default();
        write(&mut flight, &mut server, &settings()).await;
        assert_eq!(readable(&client), settings(), "the request was not whole yet");

        client.write_all(&request[1]).unwrap();
        flight.client_sent(&client_flight(&request));
        write(&mut flight, &mut server, &settings_ack()).await;
        assert!(readable(&client).is_empty());
        write(&mut flight, &mut server, &response()).await;
        assert_eq!(readable(&client), [settings_ack(), response()].concat());
    }

    #[tokio::test]
    async fn nothing_is_held_once_the_server_has_answered() {
        let (client, mut server) = pair_with_client_flight(&client_flight(&[])).await;
        let mut flight = OpeningFlight::default();
        write(&mut flight, &mut server, &settings()).await;
        write(&mut flight, &mut server, &response()).await;
        flight.client_sent(&client_flight(&whole_request()));
        write(&mut flight, &mut server, &window_update()).await;
        assert_eq!(
            readable(&client),
            [settings(), response(), window_update()].concat()
        );
        assert!(matches!(flight, OpeningFlight::Sent));
    }

    #[test]
    fn frames_are_followed_across_pieces() {
        let mut frames = FrameFollower::default();
        let bytes = [settings(), window_update()].concat();
        assert!(may_wait(&mut frames, bytes.chunks(4)));
        let headers = frame(HEADERS, END_HEADERS, 1, &[0x88]);
        assert!(
            may_wait(&mut frames, [&headers[..5]]),
            "judged once its header is whole"
        );
        assert!(!may_wait(&mut frames, [&headers[5..]]));

        let bufs = [IoSlice::new(b"abc"), IoSlice::new(b"defg")];
        assert_eq!(written_part(&bufs, 5).collect::<Vec<_>>(), [&b"abc"[..], b"de"]);
        let with_empty = [IoSlice::new(b""), IoSlice::new(b"abc"), IoSlice::new(b"d")];
        assert_eq!(
            written_part(&with_empty, 3).collect::<Vec<_>>(),
            [&b""[..], b"abc"],
            "an empty slice before written bytes does not hide them"
        );

        let flight = client_flight(&whole_request());
        let (before_the_end, end) = flight.split_at(flight.len() - 6);
        let mut request = RequestScan::default();
        for piece in before_the_end.chunks(7) {
            request.feed(piece);
        }
        assert!(!request.whole(), "the stream's end is in the last frame's header");
        request.feed(end);
        assert!(request.whole());
    }
}
