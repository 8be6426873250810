use super::*;
use loona_hpack::decoder::Decoder as Oracle;
use loona_hpack::encoder::encode_integer_into;
use loona_hpack::Encoder;
use proptest::prelude::*;

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

const DATA: u8 = 0x0;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const SOCKET_PATH: &str = "/run/ordo/ordo.sock";
/// What grpcio 1.57+ sends for `unix:///tmp/x/ordo.sock`.
const ESCAPED_PATH: &str = "tmp%2Fx%2Fordo.sock";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// How a header block is framed by the client.
#[derive(Debug, Clone, Copy, Default)]
struct Framing {
    end_stream: bool,
    pad: Option<u8>,
    priority: Option<[u8; 5]>,
    /// Number of frames (HEADERS + CONTINUATIONs), at least 1.
    pieces: usize,
}

fn header_frames(stream: u32, block: &[u8], f: Framing) -> Vec<u8> {
    let pieces = f.pieces.max(1);
    let step = block.len().div_ceil(pieces).max(1);
    let mut parts: Vec<&[u8]> = block.chunks(step).collect();
    parts.resize(pieces, &[]);
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let last = if i + 1 == pieces { END_HEADERS } else { 0 };
        if i > 0 {
            out.extend(frame(CONTINUATION, last, stream, part));
            continue;
        }
        let mut payload = Vec::new();
        let mut flags = last | if f.end_stream { END_STREAM } else { 0 };
        if let Some(pad) = f.pad {
            flags |= PADDED;
            payload.push(pad);
        }
        if let Some(p) = f.priority {
            flags |= PRIORITY;
            payload.extend_from_slice(&p);
        }
        payload.extend_from_slice(part);
        payload.resize(payload.len() + usize::from(f.pad.unwrap_or(0)), 0);
        out.extend(frame(HEADERS, flags, stream, &payload));
    }
    out
}

/// A header block of literals without indexing (leaves the dynamic table alone).
fn literal_block(fields: &Fields) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in fields {
        hpack::encode_literal(&mut b, n, v);
    }
    b
}

fn request(authority: &str, path: &str) -> Fields {
    [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("user-agent", "grpc-python/1.85.1 grpc-c/58.0.0 (linux; chttp2)"),
    ]
    .iter()
    .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
    .collect()
}

/// What the server should decode from a request the client sent.
fn fixed(fields: &Fields) -> Fields {
    fields
        .iter()
        .map(|(n, v)| {
            let bad = n == b":authority" && Authority::try_from(&v[..]).is_err();
            (n.clone(), if bad { REPLACEMENT_AUTHORITY.as_bytes().to_vec() } else { v.clone() })
        })
        .collect()
}

fn encode(enc: &mut Encoder<'_>, fields: &Fields) -> Vec<u8> {
    enc.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])))
}

/// Feeds `input` in chunks of the given sizes (cycled), then ends the input.
fn run(input: &[u8], chunks: &[usize]) -> Result<Vec<u8>, FrameError> {
    run_with(input, chunks, false)
}

/// Like [`run`]; with `in_place`, each chunk goes through [`Rewriter::scan_in_place`] whenever
/// [`Rewriter::in_place`] allows, as [`AuthorityFix`] does with a roomy read buffer.
fn run_with(input: &[u8], chunks: &[usize], in_place: bool) -> Result<Vec<u8>, FrameError> {
    let mut rw = Rewriter::new();
    let mut out = Vec::new();
    let mut rest = input;
    for size in chunks.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let n = (*size).clamp(1, rest.len());
        let chunk = &rest[..n];
        rest = &rest[n..];
        if in_place && rw.in_place() {
            let (keep, consumed) = rw.scan_in_place(chunk)?;
            out.extend_from_slice(&chunk[..keep]);
            out.extend_from_slice(rw.output());
            rw.output().clear();
            rw.feed(&chunk[keep + consumed..])?;
        } else {
            rw.feed(chunk)?;
        }
        out.extend_from_slice(rw.output());
        rw.output().clear();
    }
    rw.finish();
    out.extend_from_slice(rw.output());
    Ok(out)
}

/// A frame as the server sees it: header blocks reassembled and decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Block { stream: u32, end_stream: bool, priority: Option<[u8; 5]>, fields: Fields },
    Other(Vec<u8>),
}

/// Parses what the server reads, decoding header blocks with a fresh decoder as h2 would, and
/// checks that no frame exceeds 16,384 bytes of payload.
fn server_view(bytes: &[u8]) -> Vec<Seen> {
    assert!(bytes.starts_with(PREFACE), "preface forwarded first");
    let mut rest = &bytes[PREFACE.len()..];
    // The server's decoder: another implementation than the rewriter's.
    let mut dec = Oracle::new();
    dec.set_max_allowed_table_size(HEADER_TABLE_SIZE);
    let mut seen = Vec::new();
    // A block being received: the server's view of it so far, and its fragments.
    let mut open: Option<(Seen, Vec<u8>)> = None;
    while !rest.is_empty() {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let (kind, flags) = (rest[3], rest[4]);
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
        let payload = &rest[9..9 + len];
        let whole = &rest[..9 + len];
        rest = &rest[9 + len..];
        match kind {
            HEADERS => {
                assert!(open.is_none());
                let mut p = payload;
                if flags & PADDED != 0 {
                    p = &p[1..p.len() - usize::from(payload[0])];
                }
                let mut prio = None;
                if flags & PRIORITY != 0 {
                    prio = Some([p[0], p[1], p[2], p[3], p[4]]);
                    p = &p[5..];
                }
                let view =
                    Seen::Block { stream, end_stream: flags & END_STREAM != 0, priority: prio, fields: Vec::new() };
                open = Some((view, p.to_vec()));
            }
            CONTINUATION => open.as_mut().expect("continuation after headers").1.extend_from_slice(payload),
            _ => {
                assert!(open.is_none());
                seen.push(Seen::Other(whole.to_vec()));
                continue;
            }
        }
        if flags & END_HEADERS != 0 {
            let (mut view, block) = open.take().unwrap();
            if let Seen::Block { fields, .. } = &mut view {
                *fields = dec.decode(&block).expect("the server decodes every block");
            }
            seen.push(view);
        }
    }
    assert!(open.is_none(), "no header block left open");
    seen
}

fn preface_and_settings() -> Vec<u8> {
    let mut v = PREFACE.to_vec();
    v.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
    v
}

#[test]
fn valid_authorities_pass_byte_for_byte() {
    let mut enc = Encoder::new();
    let mut input = preface_and_settings();
    for (i, stream) in [1u32, 3, 5].into_iter().enumerate() {
        let block = encode(&mut enc, &request("localhost", &format!("/ordo.v1.Sequencer/Next{i}")));
        input.extend(header_frames(stream, &block, Framing::default()));
        input.extend(frame(DATA, END_STREAM, stream, b"\0\0\0\0\x05hello"));
    }
    for chunks in [&[1usize][..], &[3, 7], &[100_000]] {
        assert_eq!(run(&input, chunks).unwrap(), input);
    }
}

#[test]
fn socket_path_authority_becomes_localhost_and_the_table_stays_consistent() {
    // grpcio indexes :authority and the other fields, then refers to them by index.
    let mut enc = Encoder::new();
    let mut input = preface_and_settings();
    let mut expected = vec![Seen::Other(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]))];
    for (i, authority) in [SOCKET_PATH, SOCKET_PATH, ESCAPED_PATH, "localhost", SOCKET_PATH].iter().enumerate() {
        let stream = 2 * i as u32 + 1;
        let fields = request(authority, "/ordo.v1.Sequencer/Next");
        input.extend(header_frames(stream, &encode(&mut enc, &fields), Framing::default()));
        let data = frame(DATA, END_STREAM, stream, &[0, 0, 0, 0, 2, 8, 1]);
        input.extend(&data);
        expected.push(Seen::Block { stream, end_stream: false, priority: None, fields: fixed(&fields) });
        expected.push(Seen::Other(data));
    }
    for chunks in [&[1usize][..], &[2, 9, 1], &[100_000]] {
        let out = run(&input, chunks).unwrap();
        assert_eq!(server_view(&out), expected);
    }
}

#[test]
fn rfc7541_huffman_vectors_decode_the_same_after_rewriting_starts() {
    // RFC 7541 C.4: three requests with Huffman-coded strings and dynamic-table references.
    let c41 = [0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff];
    let c42 = [0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf];
    let c43 = [
        0x82, 0x87, 0x85, 0xbf, 0x40, 0x88, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f, 0x89, 0x25, 0xa8, 0x49,
        0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf,
    ];
    let f = |pairs: &[(&str, &str)]| -> Fields {
        pairs.iter().map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
    };
    let base = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")];
    let mut second = base.to_vec();
    second.push(("cache-control", "no-cache"));
    let third = [
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        (":authority", "www.example.com"),
        ("custom-key", "custom-value"),
    ];
    let bad = request(SOCKET_PATH, "/x");
    let mut input = PREFACE.to_vec();
    input.extend(header_frames(1, &c41, Framing::default()));
    input.extend(header_frames(3, &c42, Framing::default()));
    input.extend(header_frames(5, &literal_block(&bad), Framing::default()));
    input.extend(header_frames(7, &c43, Framing::default()));
    let block = |stream, fields| Seen::Block { stream, end_stream: false, priority: None, fields };
    let expected = vec![block(1, f(&base)), block(3, f(&second)), block(5, fixed(&bad)), block(7, f(&third))];
    let out = run(&input, &[5]).unwrap();
    assert_eq!(server_view(&out), expected);
    // The first two blocks went through untouched.
    let untouched = PREFACE.len() + 2 * FRAME_HEADER + c41.len() + c42.len();
    assert_eq!(out[..untouched], input[..untouched]);
}

#[test]
fn continuation_padding_priority_and_end_stream() {
    let fields = request(SOCKET_PATH, "/grpc.health.v1.Health/Check");
    let prio = [0x80, 0, 0, 1, 200];
    let framing = Framing { end_stream: true, pad: Some(17), priority: Some(prio), pieces: 4 };
    let mut input = PREFACE.to_vec();
    input.extend(header_frames(9, &literal_block(&fields), framing));
    let out = run(&input, &[3]).unwrap();
    assert_eq!(
        server_view(&out),
        vec![Seen::Block { stream: 9, end_stream: true, priority: Some(prio), fields: fixed(&fields) }]
    );
}

#[test]
fn large_blocks_are_split_into_continuation_frames() {
    let mut fields = request(SOCKET_PATH, "/x");
    fields.push((b"x-big".to_vec(), vec![b'v'; 40_000]));
    let mut input = PREFACE.to_vec();
    input.extend(header_frames(1, &literal_block(&fields), Framing { pieces: 5, ..Default::default() }));
    let out = run(&input, &[4096]).unwrap();
    let kinds: Vec<u8> = {
        let mut rest = &out[PREFACE.len()..];
        let mut kinds = Vec::new();
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            assert!(len <= OUT_FRAME_MAX);
            kinds.push(rest[3]);
            rest = &rest[9 + len..];
        }
        kinds
    };
    assert_eq!(kinds, [HEADERS, CONTINUATION, CONTINUATION]);
    assert_eq!(
        server_view(&out),
        vec![Seen::Block { stream: 1, end_stream: false, priority: None, fields: fixed(&fields) }]
    );
}

#[test]
fn huge_data_frames_stream_through_without_being_held() {
    let mut input = PREFACE.to_vec();
    input.extend(&frame(DATA, 0, 1, &[])[..]);
    // A maximal DATA frame: 16 MiB - 1 announced, fed 64 KiB at a time.
    let mut head = frame(DATA, 0, 1, &[]);
    head[..3].copy_from_slice(&[0xff, 0xff, 0xff]);
    input.extend(head);
    let mut rw = Rewriter::new();
    rw.feed(&input).unwrap();
    assert_eq!(&rw.output()[..], &input[..]);
    rw.output().clear();
    let chunk = vec![7u8; 64 * 1024];
    for _ in 0..16 {
        rw.feed(&chunk).unwrap();
        assert_eq!(rw.output().len(), chunk.len(), "payload forwarded as it arrives");
        rw.output().clear();
    }
}

#[test]
fn malformed_input_is_a_connection_error() {
    let lit = literal_block(&request(SOCKET_PATH, "/x"));
    let cases: Vec<(Vec<u8>, FrameError)> = vec![
        (frame(CONTINUATION, END_HEADERS, 1, &lit), FrameError::UnexpectedContinuation(1)),
        (
            [frame(HEADERS, 0, 1, &lit), frame(DATA, 0, 1, b"x")].concat(),
            FrameError::Interleaved { kind: DATA, stream: 1, open: 1 },
        ),
        (
            [frame(HEADERS, 0, 1, &lit), frame(HEADERS, END_HEADERS, 3, &lit)].concat(),
            FrameError::Interleaved { kind: HEADERS, stream: 3, open: 1 },
        ),
        (
            [frame(HEADERS, 0, 1, &lit), frame(CONTINUATION, END_HEADERS, 3, &lit)].concat(),
            FrameError::Interleaved { kind: CONTINUATION, stream: 3, open: 1 },
        ),
        (frame(HEADERS, END_HEADERS | PADDED, 1, &[200, 1, 2]), FrameError::BadPadding(1)),
        (frame(HEADERS, END_HEADERS | PADDED, 1, &[]), FrameError::BadPadding(1)),
        (frame(HEADERS, END_HEADERS | PRIORITY, 1, &[0, 0, 0]), FrameError::BadPadding(1)),
        (frame(HEADERS, END_HEADERS | PADDED | PRIORITY, 1, &[2, 0, 0, 0, 0, 0, 9]), FrameError::BadPadding(1)),
        (
            // An index past the end of the (empty) dynamic table.
            frame(HEADERS, END_HEADERS, 1, &[0x80 | 100]),
            FrameError::Hpack { stream: 1, error: hpack::HpackError::BadIndex(100) },
        ),
        (
            // A dynamic table size update above h2's 4,096 bytes.
            frame(HEADERS, END_HEADERS, 1, &[0x3f, 0xe1, 0x3f, 0x82]),
            FrameError::Hpack { stream: 1, error: hpack::HpackError::SizeUpdate(8192) },
        ),
    ];
    for (body, want) in cases {
        let input = [PREFACE, &body[..]].concat();
        assert_eq!(run(&input, &[1]), Err(want.clone()), "{body:02x?}");
        assert_eq!(run_with(&input, &[PREFACE.len(), 1000], true), Err(want.clone()), "in place: {body:02x?}");
        // The error sticks: nothing more is forwarded.
        let mut rw = Rewriter::new();
        assert!(rw.feed(&input).is_err());
        assert_eq!(rw.feed(&frame(PING, 0, 0, &[0; 8])), Err(want));
    }
}

#[test]
fn oversized_header_blocks_are_refused_before_they_are_buffered() {
    // A HEADERS frame announcing 16 MiB is refused from its 9-byte header alone.
    let mut head = frame(HEADERS, 0, 1, &[]);
    head[..3].copy_from_slice(&[0xff, 0xff, 0xff]);
    let input = [PREFACE, &head[..]].concat();
    assert_eq!(run(&input, &[64]), Err(FrameError::BlockTooLarge { stream: 1, size: 0xff_ffff }));
    // A CONTINUATION flood crosses the limit a frame at a time.
    let mut input = PREFACE.to_vec();
    input.extend(frame(HEADERS, 0, 1, &[]));
    for _ in 0..MAX_HEADER_BLOCK / 16_000 + 1 {
        input.extend(frame(CONTINUATION, 0, 1, &[0; 16_000]));
    }
    assert!(matches!(run(&input, &[16_000]), Err(FrameError::BlockTooLarge { stream: 1, .. })));
    // A small block that decodes to a huge list: one 4,000-byte entry referenced 100 times.
    let mut block = vec![0x40];
    for s in [&b"x-big"[..], &[b'v'; 4000][..]] {
        encode_integer_into(s.len(), 7, 0, &mut block).unwrap();
        block.extend_from_slice(s);
    }
    block.extend([0x80 | 62; 100]);
    let input = [PREFACE, &frame(HEADERS, END_HEADERS, 1, &block)[..]].concat();
    assert_eq!(run(&input, &[1000]), Err(FrameError::ListTooLarge(1)));
}

#[test]
fn other_protocols_and_truncated_streams_pass_through() {
    let http1 = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    assert_eq!(run(&http1, &[1]).unwrap(), http1);
    // Half a preface, then something else.
    let odd = [&PREFACE[..10], b"garbage garbage garbage"].concat();
    assert_eq!(run(&odd, &[3]).unwrap(), odd);
    // Input that ends inside a header block and inside a frame header: forwarded as received.
    let lit = literal_block(&request(SOCKET_PATH, "/x"));
    let cut = [PREFACE, &frame(HEADERS, 0, 1, &lit)[..], &[0, 0]].concat();
    assert_eq!(run(&cut, &[7]).unwrap(), cut);
}

/// One thing a client sends, for the property tests.
#[derive(Debug, Clone)]
enum Op {
    Request { authority: usize, path: String, extra: Vec<(String, String)>, framing: Framing },
    Data(Vec<u8>),
    Ping,
}

const AUTHORITIES: [&str; 6] = ["localhost", "ordo.sock", "127.0.0.1:7070", SOCKET_PATH, ESCAPED_PATH, ""];

fn op() -> impl Strategy<Value = Op> {
    let framing = (any::<bool>(), prop::option::of(0u8..40), prop::option::of(any::<[u8; 5]>()), 1usize..5)
        .prop_map(|(end_stream, pad, priority, pieces)| Framing { end_stream, pad, priority, pieces });
    prop_oneof![
        3 => (0..AUTHORITIES.len(), "/[a-z.]{1,20}/[A-Z][a-z]{0,8}", prop::collection::vec(("x-[a-z]{1,8}", "[ -~]{0,30}"), 0..4), framing)
            .prop_map(|(authority, path, extra, framing)| Op::Request { authority, path, extra, framing }),
        1 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Op::Data),
        1 => Just(Op::Ping),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Random mixes of requests (valid and invalid authorities, dynamic-table references,
    /// padding, priority, CONTINUATIONs) and other frames, fed in random fragments: the
    /// server decodes every block as sent with the authority fixed, and every other frame
    /// arrives unchanged and in order; without an invalid authority, output equals input.
    #[test]
    fn random_mixes_in_random_fragments(ops in prop::collection::vec(op(), 1..25), chunks in prop::collection::vec(1usize..200, 1..8)) {
        let mut enc = Encoder::new();
        let mut input = PREFACE.to_vec();
        let mut expected = Vec::new();
        let mut any_invalid = false;
        for (i, op) in ops.iter().enumerate() {
            let stream = 2 * i as u32 + 1;
            match op {
                Op::Request { authority, path, extra, framing } => {
                    let mut fields = request(AUTHORITIES[*authority], path);
                    fields.extend(extra.iter().map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())));
                    any_invalid |= Authority::try_from(AUTHORITIES[*authority]).is_err();
                    input.extend(header_frames(stream, &encode(&mut enc, &fields), *framing));
                    expected.push(Seen::Block { stream, end_stream: framing.end_stream, priority: framing.priority, fields: fixed(&fields) });
                }
                Op::Data(payload) => {
                    let f = frame(DATA, 0, stream, payload);
                    input.extend(&f);
                    expected.push(Seen::Other(f));
                }
                Op::Ping => {
                    let f = frame(PING, 0, 0, &[1, 2, 3, 4, 5, 6, 7, 8]);
                    input.extend(&f);
                    expected.push(Seen::Other(f));
                }
            }
        }
        let out = run(&input, &chunks).unwrap();
        prop_assert_eq!(&run_with(&input, &chunks, true).unwrap(), &out, "the in-place path forwards the same bytes");
        let whole = [PREFACE.len(), usize::MAX];
        prop_assert_eq!(&run_with(&input, &whole, true).unwrap(), &out, "in place, all frames in one read");
        prop_assert_eq!(server_view(&out), expected);
        if !any_invalid {
            prop_assert_eq!(out, input);
        }
    }

    /// Garbage after the preface, or instead of it, never panics.
    #[test]
    fn garbage_never_panics(preface in any::<bool>(), garbage in prop::collection::vec(any::<u8>(), 0..2000), chunks in prop::collection::vec(1usize..300, 1..5)) {
        let input = if preface { [PREFACE, &garbage[..]].concat() } else { garbage };
        let _ = run(&input, &chunks);
        let _ = run_with(&input, &chunks, true);
    }

    /// Well-formed frames with garbage header blocks never panic either.
    #[test]
    fn garbage_header_blocks_never_panic(blocks in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..200), any::<u8>()), 1..10)) {
        let mut input = PREFACE.to_vec();
        for (i, (block, flags)) in blocks.iter().enumerate() {
            input.extend(frame(if i % 3 == 2 { CONTINUATION } else { HEADERS }, *flags, 1, block));
        }
        let _ = run(&input, &[17]);
        let _ = run_with(&input, &[PREFACE.len(), 100], true);
    }
}

#[tokio::test]
async fn the_connection_wrapper_reads_through_the_rewriter() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut enc = Encoder::new();
    let mut input = PREFACE.to_vec();
    for stream in [1u32, 3] {
        input.extend(header_frames(stream, &encode(&mut enc, &request(SOCKET_PATH, "/a")), Framing::default()));
        input.extend(frame(DATA, END_STREAM, stream, b"payload"));
    }
    let (client, server) = tokio::io::duplex(64);
    let sent = input.clone();
    let writer = tokio::spawn(async move {
        let mut client = client;
        for piece in sent.chunks(5) {
            client.write_all(piece).await.unwrap();
        }
    });
    let mut fixed_conn = AuthorityFix::new(server);
    let mut got = Vec::new();
    let mut small = [0u8; 3];
    loop {
        let n = fixed_conn.read(&mut small).await.unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&small[..n]);
    }
    writer.await.unwrap();
    assert_eq!(got, run(&input, &[1]).unwrap());
    assert_eq!(server_view(&got).len(), 4);

    // With a roomy read buffer the wrapper reads in place: same bytes, valid authorities untouched.
    let mut enc = Encoder::new();
    let mut mixed = PREFACE.to_vec();
    for (stream, authority) in [(1u32, "localhost"), (3, SOCKET_PATH), (5, "localhost")] {
        mixed.extend(header_frames(stream, &encode(&mut enc, &request(authority, "/b")), Framing::default()));
        mixed.extend(frame(DATA, END_STREAM, stream, b"payload"));
    }
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let (mut conn, mut got, mut roomy) = (AuthorityFix::new(server), Vec::new(), vec![0u8; 1 << 16]);
    // The preface first, so that the frames arrive once the wrapper can read in place.
    client.write_all(PREFACE).await.unwrap();
    while got.len() < PREFACE.len() {
        let n = conn.read(&mut roomy).await.unwrap();
        got.extend_from_slice(&roomy[..n]);
    }
    client.write_all(&mixed[PREFACE.len()..]).await.unwrap();
    drop(client);
    loop {
        let n = conn.read(&mut roomy).await.unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&roomy[..n]);
    }
    assert_eq!(got, run(&mixed, &[1]).unwrap());
    assert_eq!(server_view(&got).len(), 6);

    // A connection error surfaces as InvalidData.
    let (mut client, server) = tokio::io::duplex(64);
    client.write_all(&[PREFACE, &frame(CONTINUATION, 0, 1, &[])[..]].concat()).await.unwrap();
    let mut conn = AuthorityFix::new(server);
    let mut buf = Vec::new();
    let err = conn.read_to_end(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}
