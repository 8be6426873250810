//! Lets stock gRPC clients that send the socket path as `:authority` use the app socket.
//!
//! grpcio (the core under Python, C++, Ruby and PHP) and grpc-java send the Unix socket's path,
//! raw or percent-encoded, as the HTTP/2 `:authority`; grpc-go, grpc-js and tonic send
//! `localhost` or a host name. The h2 server under tonic refuses an `:authority` that is not a
//! valid URI authority and resets the stream with `PROTOCOL_ERROR`; its maintainers kept that
//! check (hyperium/h2#487 was never merged). So Ordo fixes such requests before h2 reads them:
//! [`AuthorityFix`] wraps the read side of an accepted connection in a [`Rewriter`] that parses
//! the client's HTTP/2 frames and replaces an invalid `:authority` with `localhost`. The write
//! side is untouched.
//!
//! # What it guarantees
//! - **Every other byte untouched.** Only header blocks (a HEADERS frame and its CONTINUATION
//!   frames) can change. The connection preface and every other frame (DATA, SETTINGS, PING,
//!   WINDOW_UPDATE, RST_STREAM, PRIORITY, GOAWAY, unknown types) reach the server byte for byte
//!   and in order; their payloads are streamed, never buffered whole. A connection that does
//!   not start with the HTTP/2 preface is passed through unparsed.
//! - **Nothing changes for clients that send a valid authority**: until the first header block
//!   with an invalid `:authority`, every block is forwarded byte for byte (the transform only
//!   decodes it, to keep its HPACK state in step with the client's encoder).
//! - **HPACK state stays consistent.** From the first invalid authority on, every header block of
//!   the connection is decoded with the stateful decoder that mirrors the client's encoder and
//!   re-encoded with literals that neither reference nor insert into the dynamic table, so the
//!   server's decoder never needs a table entry it was not given. Field names, values and order
//!   are kept; only an invalid `:authority` becomes `localhost`. Never-indexed literals become
//!   literals without indexing: no table on the way holds them either, which is what the
//!   never-indexed form protects.
//! - **Frame boundaries.** A re-encoded block keeps its stream, END_STREAM and priority fields;
//!   its padding is dropped; it is split into a HEADERS frame and CONTINUATION frames of at most
//!   16,384 bytes (the frame size every HTTP/2 server accepts), END_HEADERS on the last.
//! - **Bounded memory.** A header block larger than [`MAX_HEADER_BLOCK`] compressed or
//!   [`MAX_HEADER_LIST`] decoded (counted as RFC 7540's SETTINGS_MAX_HEADER_LIST_SIZE counts)
//!   is a connection error; the HPACK decoder ([`hpack`], as strict as h2's) holds at most the
//!   4,096-byte table h2 uses.
//! - **Malformed input is a connection error, never a panic**: a CONTINUATION without an open
//!   block, another frame inside a header block, padding longer than the frame, an HPACK error.
//!   The read fails with `InvalidData` and the server closes the connection, as h2 does with a
//!   connection error of its own for the same input.
//! - At end of input, whatever is still held (an incomplete frame or header block) is forwarded
//!   as received, so the server sees the same truncated stream it would have seen.
//!
//! Cost: while nothing needs rewriting, reads land straight in the server's buffer and the
//! frames are checked there ([`Rewriter::scan_in_place`]); only an incomplete header block (or
//! frame header) at the end of a read, and every block once rewriting started, go through the
//! rewriter's own buffers. The tests check that both paths forward the same bytes.
//!
//! Tested below: unit tests (RFC 7541 vectors, CONTINUATION, padding and priority flags, huge
//! and garbage frames) and property tests (random request mixes fed in random fragments);
//! end to end by `e2e/tests/foreign_clients.rs` with stock grpcio and grpc-js clients.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codegen::http::uri::Authority;
use tonic::transport::server::Connected;

use hpack::{encode_literal, Decoder, HpackError};

pub mod hpack;

/// What an invalid `:authority` becomes.
pub const REPLACEMENT_AUTHORITY: &str = "localhost";
/// Largest compressed header block (all its frames' fragments) accepted.
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// Largest decoded header list accepted (names + values + 32 bytes per field).
pub const MAX_HEADER_LIST: usize = 256 * 1024;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
/// The initial SETTINGS_MAX_FRAME_SIZE: every HTTP/2 server accepts frames this large.
const OUT_FRAME_MAX: usize = 16_384;
/// h2's HPACK table size (it never advertises another): the largest size update accepted.
const HEADER_TABLE_SIZE: usize = 4_096;
const READ_CHUNK: usize = 16 * 1024;
/// Room in the server's buffer below which reads go through the rewriter's own buffer.
const MIN_IN_PLACE: usize = 1024;

const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// Why the client's byte stream cannot be forwarded (a connection error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A header block over [`MAX_HEADER_BLOCK`].
    #[error("header block of stream {stream} is over {MAX_HEADER_BLOCK} bytes ({size} so far)")]
    BlockTooLarge {
        /// Stream of the block.
        stream: u32,
        /// Bytes of the block seen when the limit was crossed.
        size: usize,
    },
    /// A decoded header list over [`MAX_HEADER_LIST`].
    #[error("decoded header list of stream {0} is over {MAX_HEADER_LIST} bytes")]
    ListTooLarge(u32),
    /// CONTINUATION with no HEADERS before it.
    #[error("CONTINUATION frame on stream {0} without an open header block")]
    UnexpectedContinuation(u32),
    /// A frame other than CONTINUATION of the same stream inside a header block.
    #[error("frame of type {kind:#x} on stream {stream} inside the header block of stream {open}")]
    Interleaved {
        /// Type of the offending frame.
        kind: u8,
        /// Its stream.
        stream: u32,
        /// Stream whose header block is open.
        open: u32,
    },
    /// Padding and priority fields longer than the HEADERS frame.
    #[error("HEADERS frame on stream {0} has more padding than payload")]
    BadPadding(u32),
    /// The header block does not decode.
    #[error("header block of stream {stream} does not decode: {error}")]
    Hpack {
        /// Stream of the block.
        stream: u32,
        /// The decoder's error.
        error: HpackError,
    },
}

enum Phase {
    /// Matching the connection preface; the number of bytes matched so far.
    Preface(usize),
    /// At a frame boundary.
    Frames,
    /// Inside a pass-through frame's payload; bytes left.
    Payload(usize),
    /// Not HTTP/2: everything passes through.
    Opaque,
    /// A connection error happened; nothing more is forwarded.
    Failed(FrameError),
}

/// A header block being received.
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    /// The frames as received.
    raw: BytesMut,
    /// The HPACK fragments, concatenated.
    fragment: Vec<u8>,
}

/// The transform of one connection's client-to-server bytes, without I/O: [`Rewriter::feed`]
/// what the client sent, take what the server may read from [`Rewriter::output`].
pub struct Rewriter {
    phase: Phase,
    input: BytesMut,
    output: BytesMut,
    decoder: Decoder,
    block: Option<Block>,
    /// Sticky: once a block was re-encoded, every later block is.
    rewriting: bool,
    /// Decoded fields of the current block: ranges into `scratch`.
    fields: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
    scratch: Vec<u8>,
    encoded: Vec<u8>,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Rewriter {
    /// A transform at the start of a connection.
    pub fn new() -> Self {
        Self {
            phase: Phase::Preface(0),
            input: BytesMut::new(),
            output: BytesMut::new(),
            decoder: Decoder::new(HEADER_TABLE_SIZE),
            block: None,
            rewriting: false,
            fields: Vec::new(),
            scratch: Vec::new(),
            encoded: Vec::new(),
        }
    }

    /// Takes bytes the client sent; whatever can be forwarded is appended to the output.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), FrameError> {
        if let Phase::Failed(e) = &self.phase {
            return Err(e.clone());
        }
        self.input.extend_from_slice(data);
        self.process().inspect_err(|e| self.phase = Phase::Failed(e.clone()))
    }

    /// The client closed its side: forwards whatever is still held, as received.
    pub fn finish(&mut self) {
        if let Phase::Failed(_) = self.phase {
            return;
        }
        if let Some(b) = self.block.take() {
            self.output.extend_from_slice(&b.raw);
        }
        self.output.extend_from_slice(&self.input);
        self.input.clear();
    }

    /// Bytes ready for the server.
    pub fn output(&mut self) -> &mut BytesMut {
        &mut self.output
    }

    /// Whether header blocks are being re-encoded (an invalid authority was seen).
    pub fn rewriting(&self) -> bool {
        self.rewriting
    }

    fn forward(&mut self, n: usize) {
        self.output.extend_from_slice(&self.input[..n]);
        self.input.advance(n);
    }

    fn process(&mut self) -> Result<(), FrameError> {
        loop {
            match self.phase {
                Phase::Failed(ref e) => return Err(e.clone()),
                Phase::Opaque => {
                    let n = self.input.len();
                    self.forward(n);
                    return Ok(());
                }
                Phase::Preface(matched) => {
                    let n = (PREFACE.len() - matched).min(self.input.len());
                    if self.input[..n] != PREFACE[matched..matched + n] {
                        self.phase = Phase::Opaque;
                        continue;
                    }
                    self.forward(n);
                    if matched + n < PREFACE.len() {
                        self.phase = Phase::Preface(matched + n);
                        return Ok(());
                    }
                    self.phase = Phase::Frames;
                }
                Phase::Payload(left) => {
                    let n = left.min(self.input.len());
                    self.forward(n);
                    if n < left {
                        self.phase = Phase::Payload(left - n);
                        return Ok(());
                    }
                    self.phase = Phase::Frames;
                }
                Phase::Frames => {
                    let Some(head) = self.input.get(..FRAME_HEADER) else { return Ok(()) };
                    let (len, kind, flags, stream) = frame_header(head);
                    if kind == HEADERS || kind == CONTINUATION {
                        let held = self.block.as_ref().map_or(0, |b| b.fragment.len());
                        if held + len > MAX_HEADER_BLOCK {
                            return Err(FrameError::BlockTooLarge { stream, size: held + len });
                        }
                        if self.input.len() < FRAME_HEADER + len {
                            self.input.reserve(FRAME_HEADER + len - self.input.len());
                            return Ok(());
                        }
                        let frame = self.input.split_to(FRAME_HEADER + len);
                        self.header_frame(kind, flags, stream, frame)?;
                    } else {
                        if let Some(b) = &self.block {
                            return Err(FrameError::Interleaved { kind, stream, open: b.stream });
                        }
                        self.forward(FRAME_HEADER);
                        self.phase = Phase::Payload(len);
                    }
                }
            }
        }
    }

    fn header_frame(&mut self, kind: u8, flags: u8, stream: u32, frame: BytesMut) -> Result<(), FrameError> {
        let payload = &frame[FRAME_HEADER..];
        if kind == HEADERS {
            if let Some(b) = &self.block {
                return Err(FrameError::Interleaved { kind, stream, open: b.stream });
            }
            let (range, priority) = headers_fragment(flags, payload, stream)?;
            let fragment = payload[range].to_vec();
            self.block = Some(Block { stream, end_stream: flags & END_STREAM != 0, priority, raw: frame, fragment });
        } else {
            let b = self.block.as_mut().ok_or(FrameError::UnexpectedContinuation(stream))?;
            if stream != b.stream {
                return Err(FrameError::Interleaved { kind, stream, open: b.stream });
            }
            b.fragment.extend_from_slice(payload);
            b.raw.extend_from_slice(&frame);
        }
        if flags & END_HEADERS != 0 {
            if let Some(b) = self.block.take() {
                self.finish_block(b)?;
            }
        }
        Ok(())
    }

    /// Decodes a complete block; forwards it as received or re-encoded.
    fn finish_block(&mut self, b: Block) -> Result<(), FrameError> {
        if self.decode_block(b.stream, &b.fragment)? {
            self.emit_rewritten(b.stream, b.end_stream, b.priority);
        } else {
            self.output.extend_from_slice(&b.raw);
        }
        Ok(())
    }

    /// Decodes a complete block into `fields`; whether it must be re-encoded.
    fn decode_block(&mut self, stream: u32, fragment: &[u8]) -> Result<bool, FrameError> {
        let (fields, scratch) = (&mut self.fields, &mut self.scratch);
        fields.clear();
        scratch.clear();
        let (mut size, mut too_large, mut invalid) = (0usize, false, false);
        self.decoder
            .decode(fragment, |name, value| {
                size = size.saturating_add(name.len() + value.len() + hpack::ENTRY_OVERHEAD);
                if size > MAX_HEADER_LIST {
                    too_large = true;
                    return false;
                }
                let bad = name == b":authority" && Authority::try_from(value).is_err();
                invalid |= bad;
                let n = scratch.len();
                scratch.extend_from_slice(name);
                let v = scratch.len();
                scratch.extend_from_slice(if bad { REPLACEMENT_AUTHORITY.as_bytes() } else { value });
                fields.push((n..v, v..scratch.len()));
                true
            })
            .map_err(|error| FrameError::Hpack { stream, error })?;
        if too_large {
            return Err(FrameError::ListTooLarge(stream));
        }
        if invalid && !self.rewriting {
            tracing::debug!(stream, "client sent an invalid :authority; rewriting header blocks");
            self.rewriting = true;
        }
        Ok(self.rewriting)
    }

    /// Appends the decoded block, re-encoded, to the output.
    fn emit_rewritten(&mut self, stream: u32, end_stream: bool, priority: Option<[u8; 5]>) {
        self.encoded.clear();
        for (n, v) in self.fields.iter() {
            encode_literal(&mut self.encoded, &self.scratch[n.clone()], &self.scratch[v.clone()]);
        }
        write_block(&mut self.output, stream, end_stream, priority, &self.encoded);
    }

    /// Whether bytes can be read straight into the server's buffer and checked there
    /// ([`Rewriter::scan_in_place`]): nothing is held or waiting, and blocks are not re-encoded.
    pub fn in_place(&self) -> bool {
        !self.rewriting
            && self.block.is_none()
            && self.input.is_empty()
            && self.output.is_empty()
            && matches!(self.phase, Phase::Frames | Phase::Payload(_))
    }

    /// The fast path of [`Rewriter::feed`] for bytes already in the server's buffer (only when
    /// [`Rewriter::in_place`]): walks whole frames and single-frame header blocks, decoding the
    /// blocks as `feed` does. Returns `(keep, consumed)`: the first `keep` bytes stay as they are;
    /// the next `consumed` bytes are a block now re-encoded in the output; every byte after them
    /// must go through `feed` (an incomplete frame header or header block, a CONTINUATION).
    pub fn scan_in_place(&mut self, data: &[u8]) -> Result<(usize, usize), FrameError> {
        self.scan(data).inspect_err(|e| self.phase = Phase::Failed(e.clone()))
    }

    fn scan(&mut self, data: &[u8]) -> Result<(usize, usize), FrameError> {
        let mut at = 0;
        loop {
            match self.phase {
                Phase::Payload(left) => {
                    let n = left.min(data.len() - at);
                    at += n;
                    if n < left {
                        self.phase = Phase::Payload(left - n);
                        return Ok((at, 0));
                    }
                    self.phase = Phase::Frames;
                }
                Phase::Frames => {
                    let Some(head) = data.get(at..at + FRAME_HEADER) else { return Ok((at, 0)) };
                    let (len, kind, flags, stream) = frame_header(head);
                    if kind != HEADERS && kind != CONTINUATION {
                        at += FRAME_HEADER;
                        self.phase = Phase::Payload(len);
                        continue;
                    }
                    let whole = data.get(at..at + FRAME_HEADER + len);
                    let simple = kind == HEADERS && flags & END_HEADERS != 0 && len <= MAX_HEADER_BLOCK;
                    let Some(frame) = whole.filter(|_| simple) else {
                        return Ok((at, 0));
                    };
                    let payload = &frame[FRAME_HEADER..];
                    let (range, priority) = headers_fragment(flags, payload, stream)?;
                    if self.decode_block(stream, &payload[range])? {
                        self.emit_rewritten(stream, flags & END_STREAM != 0, priority);
                        return Ok((at, frame.len()));
                    }
                    at += frame.len();
                }
                _ => return Ok((at, 0)),
            }
        }
    }
}

/// Length, type, flags and stream of a 9-byte frame header.
fn frame_header(head: &[u8]) -> (usize, u8, u8, u32) {
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    (len, head[3], head[4], u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff)
}

/// Where the header block fragment lies in a HEADERS payload, and its priority fields.
fn headers_fragment(
    flags: u8,
    payload: &[u8],
    stream: u32,
) -> Result<(std::ops::Range<usize>, Option<[u8; 5]>), FrameError> {
    let (mut start, mut end) = (0, payload.len());
    if flags & PADDED != 0 {
        let pad = usize::from(*payload.first().ok_or(FrameError::BadPadding(stream))?);
        start = 1;
        end = end.checked_sub(pad).ok_or(FrameError::BadPadding(stream))?;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let p = payload.get(start..start + 5).ok_or(FrameError::BadPadding(stream))?;
        priority = Some([p[0], p[1], p[2], p[3], p[4]]);
        start += 5;
    }
    if start > end {
        return Err(FrameError::BadPadding(stream));
    }
    Ok((start..end, priority))
}

/// Writes `block` as a HEADERS frame and as many CONTINUATION frames as it needs.
fn write_block(out: &mut BytesMut, stream: u32, end_stream: bool, priority: Option<[u8; 5]>, block: &[u8]) {
    let mut rest = block;
    let mut first = true;
    loop {
        let prio: &[u8] = match (&priority, first) {
            (Some(p), true) => p,
            _ => &[],
        };
        let n = rest.len().min(OUT_FRAME_MAX - prio.len());
        let last = n == rest.len();
        let (kind, mut flags) = if first {
            (HEADERS, if end_stream { END_STREAM } else { 0 } | if prio.is_empty() { 0 } else { PRIORITY })
        } else {
            (CONTINUATION, 0)
        };
        if last {
            flags |= END_HEADERS;
        }
        let len = (n + prio.len()) as u32;
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(prio);
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        first = false;
        if last {
            return;
        }
    }
}

/// An accepted connection whose client-to-server bytes go through a [`Rewriter`].
pub struct AuthorityFix<S> {
    inner: S,
    rewriter: Rewriter,
    chunk: Box<[u8]>,
    eof: bool,
}

impl<S> AuthorityFix<S> {
    /// Wraps a freshly accepted connection.
    pub fn new(inner: S) -> Self {
        Self { inner, rewriter: Rewriter::new(), chunk: vec![0; READ_CHUNK].into_boxed_slice(), eof: false }
    }
}

fn connection_error(e: FrameError) -> io::Error {
    tracing::debug!(error = %e, "closing an app connection");
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Wraps every connection of a listener's stream in [`AuthorityFix`].
pub fn fix_incoming<S, E>(
    incoming: impl Stream<Item = Result<S, E>>,
) -> impl Stream<Item = Result<AuthorityFix<S>, E>> {
    incoming.map(|conn| conn.map(AuthorityFix::new))
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.rewriter.in_place() && !this.eof && buf.remaining() >= MIN_IN_PLACE {
                // Fast path: read into the server's buffer and check the frames there.
                let start = buf.filled().len();
                ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                let read = &buf.filled()[start..];
                if read.is_empty() {
                    // Nothing is held in this state: the end of input is the server's too.
                    this.eof = true;
                    return Poll::Ready(Ok(()));
                }
                let (keep, consumed) = this.rewriter.scan_in_place(read).map_err(connection_error)?;
                if keep + consumed < read.len() {
                    let tail = read[keep + consumed..].to_vec();
                    this.rewriter.feed(&tail).map_err(connection_error)?;
                }
                buf.set_filled(start + keep);
                if keep > 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let out = this.rewriter.output();
            if !out.is_empty() || buf.remaining() == 0 {
                let n = out.len().min(buf.remaining());
                buf.put_slice(&out[..n]);
                out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = ReadBuf::new(&mut this.chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
            if chunk.filled().is_empty() {
                this.eof = true;
                this.rewriter.finish();
                continue;
            }
            this.rewriter.feed(chunk.filled()).map_err(connection_error)?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests;
