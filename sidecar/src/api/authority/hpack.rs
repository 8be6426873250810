//! The HPACK decoder (RFC 7541) that mirrors an app client's encoder, and the one encoding the
//! rewrite emits: literals without indexing. Decoding is as strict as h2's (a dynamic table
//! size update only at the start of a block and at most the table size h2 uses; integers of at
//! most 5 octets; Huffman padding of at most 7 one-bits; no EOS inside a string), so whatever
//! this accepts h2 accepts too. Errors never panic; memory is bounded by the table size and the
//! block the caller hands in.

use std::collections::VecDeque;
use std::sync::OnceLock;

/// Why a header block does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    /// The block ends inside a field.
    #[error("truncated field")]
    Truncated,
    /// An integer longer than 5 octets.
    #[error("integer too large")]
    IntegerOverflow,
    /// An index that is 0 or past the end of the tables.
    #[error("index {0} is not in the table")]
    BadIndex(usize),
    /// Bad Huffman coding: EOS inside the string, or bad padding.
    #[error("invalid Huffman-coded string")]
    Huffman,
    /// A table size update above the allowed size, or after the first field of a block.
    #[error("invalid dynamic table size update to {0}")]
    SizeUpdate(usize),
}

/// RFC 7541's accounting overhead of a table entry, also used for header list sizes.
pub const ENTRY_OVERHEAD: usize = 32;

/// A decoder's dynamic table and settings; one per connection.
pub struct Decoder {
    table: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max_size: usize,
    /// The largest size update accepted (the SETTINGS_HEADER_TABLE_SIZE the server uses).
    allowed: usize,
}

impl Decoder {
    /// A decoder whose table holds at most `allowed` bytes (its initial size too).
    pub fn new(allowed: usize) -> Self {
        Self { table: VecDeque::new(), size: 0, max_size: allowed, allowed }
    }

    /// Decodes one complete header block, calling `field(name, value)` for each field in
    /// order; decoding stops early (with `Ok`) when `field` returns false.
    pub fn decode(&mut self, block: &[u8], mut field: impl FnMut(&[u8], &[u8]) -> bool) -> Result<(), HpackError> {
        let mut rest = block;
        let mut first = true;
        while let Some(&b) = rest.first() {
            if b & 0x80 != 0 {
                let index = int(&mut rest, 7)?;
                let (name, value) = self.get(index)?;
                if !field(name, value) {
                    return Ok(());
                }
            } else if b & 0xe0 == 0x20 {
                let size = int(&mut rest, 5)?;
                if !first || size > self.allowed {
                    return Err(HpackError::SizeUpdate(size));
                }
                self.max_size = size;
                self.evict(0);
                continue;
            } else {
                // Literal: with incremental indexing (01), without (0000) or never indexed (0001).
                let indexing = b & 0x40 != 0;
                let index = int(&mut rest, if indexing { 6 } else { 4 })?;
                let name = if index == 0 { string(&mut rest)? } else { self.get(index)?.0.to_vec() };
                let value = string(&mut rest)?;
                let more = field(&name, &value);
                if indexing {
                    self.insert(name, value);
                }
                if !more {
                    return Ok(());
                }
            }
            first = false;
        }
        Ok(())
    }

    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        match index {
            1..=61 => {
                let (n, v) = STATIC_TABLE[index - 1];
                Ok((n.as_bytes(), v.as_bytes()))
            }
            _ => index
                .checked_sub(62)
                .and_then(|i| self.table.get(i))
                .map(|(n, v)| (&n[..], &v[..]))
                .ok_or(HpackError::BadIndex(index)),
        }
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        // An entry larger than the table empties it and is not added (RFC 7541 section 4.4).
        self.evict(size.min(self.max_size + 1));
        if size <= self.max_size {
            self.size += size;
            self.table.push_front((name, value));
        }
    }

    /// Evicts the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            let Some((n, v)) = self.table.pop_back() else {
                self.size = 0;
                return;
            };
            self.size -= n.len() + v.len() + ENTRY_OVERHEAD;
        }
    }
}

/// Decodes an integer with an `prefix`-bit prefix from the front of `rest`.
fn int(rest: &mut &[u8], prefix: u8) -> Result<usize, HpackError> {
    let (&first, mut tail) = rest.split_first().ok_or(HpackError::Truncated)?;
    let mask = (1usize << prefix) - 1;
    let mut value = usize::from(first) & mask;
    if value == mask {
        let mut shift = 0;
        loop {
            let (&b, t) = tail.split_first().ok_or(HpackError::Truncated)?;
            tail = t;
            value += usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
            if shift >= 28 {
                return Err(HpackError::IntegerOverflow);
            }
        }
    }
    *rest = tail;
    Ok(value)
}

/// Decodes a string literal from the front of `rest`.
fn string(rest: &mut &[u8]) -> Result<Vec<u8>, HpackError> {
    let huffman = rest.first().is_some_and(|b| b & 0x80 != 0);
    let len = int(rest, 7)?;
    let raw = rest.get(..len).ok_or(HpackError::Truncated)?;
    *rest = &rest[len..];
    if huffman {
        huffman_decode(raw)
    } else {
        Ok(raw.to_vec())
    }
}

/// Appends an integer with a `prefix`-bit prefix whose other bits are `flags`.
pub fn encode_int(out: &mut Vec<u8>, value: usize, prefix: u8, flags: u8) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// Appends a literal header field without indexing, with a literal name and no Huffman coding.
pub fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    for s in [name, value] {
        encode_int(out, s.len(), 7, 0);
        out.extend_from_slice(s);
    }
}

/// Marks a leaf in [`huffman_tree`]: the rest of the word is the symbol.
const LEAF: u32 = 1 << 31;
const EOS: u32 = 256;

/// The Huffman code as a binary tree: node `i` has children `[bit 0, bit 1]`, each a node
/// index or `LEAF | symbol`. The code is complete, so every child is set.
fn huffman_tree() -> &'static [[u32; 2]] {
    static TREE: OnceLock<Vec<[u32; 2]>> = OnceLock::new();
    TREE.get_or_init(|| {
        let mut tree = vec![[0u32; 2]];
        for (symbol, &(code, len)) in HUFFMAN_CODES.iter().enumerate() {
            let mut node = 0;
            for i in (0..len).rev() {
                let bit = ((code >> i) & 1) as usize;
                if i == 0 {
                    tree[node][bit] = LEAF | symbol as u32;
                } else {
                    if tree[node][bit] == 0 {
                        tree.push([0; 2]);
                        tree[node][bit] = (tree.len() - 1) as u32;
                    }
                    node = tree[node][bit] as usize;
                }
            }
        }
        tree
    })
}

/// Decodes a Huffman-coded string (RFC 7541 section 5.2).
pub fn huffman_decode(raw: &[u8]) -> Result<Vec<u8>, HpackError> {
    let tree = huffman_tree();
    let mut out = Vec::with_capacity(raw.len() * 8 / 5);
    let (mut node, mut depth, mut ones) = (0usize, 0u32, true);
    for &byte in raw {
        for shift in (0..8).rev() {
            let bit = (byte >> shift) & 1;
            let next = tree[node][usize::from(bit)];
            if next & LEAF != 0 {
                let symbol = next & !LEAF;
                if symbol == EOS {
                    return Err(HpackError::Huffman);
                }
                out.push(symbol as u8);
                (node, depth, ones) = (0, 0, true);
            } else {
                node = next as usize;
                depth += 1;
                ones &= bit == 1;
            }
        }
    }
    // Padding: at most 7 bits, all ones (a prefix of EOS).
    if depth > 7 || !ones {
        return Err(HpackError::Huffman);
    }
    Ok(out)
}

/// RFC 7541 Appendix A: the static table (index 1 is the first entry).
pub const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// RFC 7541 Appendix B: the Huffman code of each symbol (256 is EOS): code, length in bits.
const HUFFMAN_CODES: [(u32, u8); 257] = [
    (0x1ff8, 13),
    (0x7fffd8, 23),
    (0xfffffe2, 28),
    (0xfffffe3, 28),
    (0xfffffe4, 28),
    (0xfffffe5, 28),
    (0xfffffe6, 28),
    (0xfffffe7, 28),
    (0xfffffe8, 28),
    (0xffffea, 24),
    (0x3ffffffc, 30),
    (0xfffffe9, 28),
    (0xfffffea, 28),
    (0x3ffffffd, 30),
    (0xfffffeb, 28),
    (0xfffffec, 28),
    (0xfffffed, 28),
    (0xfffffee, 28),
    (0xfffffef, 28),
    (0xffffff0, 28),
    (0xffffff1, 28),
    (0xffffff2, 28),
    (0x3ffffffe, 30),
    (0xffffff3, 28),
    (0xffffff4, 28),
    (0xffffff5, 28),
    (0xffffff6, 28),
    (0xffffff7, 28),
    (0xffffff8, 28),
    (0xffffff9, 28),
    (0xffffffa, 28),
    (0xffffffb, 28),
    (0x14, 6),
    (0x3f8, 10),
    (0x3f9, 10),
    (0xffa, 12),
    (0x1ff9, 13),
    (0x15, 6),
    (0xf8, 8),
    (0x7fa, 11),
    (0x3fa, 10),
    (0x3fb, 10),
    (0xf9, 8),
    (0x7fb, 11),
    (0xfa, 8),
    (0x16, 6),
    (0x17, 6),
    (0x18, 6),
    (0x0, 5),
    (0x1, 5),
    (0x2, 5),
    (0x19, 6),
    (0x1a, 6),
    (0x1b, 6),
    (0x1c, 6),
    (0x1d, 6),
    (0x1e, 6),
    (0x1f, 6),
    (0x5c, 7),
    (0xfb, 8),
    (0x7ffc, 15),
    (0x20, 6),
    (0xffb, 12),
    (0x3fc, 10),
    (0x1ffa, 13),
    (0x21, 6),
    (0x5d, 7),
    (0x5e, 7),
    (0x5f, 7),
    (0x60, 7),
    (0x61, 7),
    (0x62, 7),
    (0x63, 7),
    (0x64, 7),
    (0x65, 7),
    (0x66, 7),
    (0x67, 7),
    (0x68, 7),
    (0x69, 7),
    (0x6a, 7),
    (0x6b, 7),
    (0x6c, 7),
    (0x6d, 7),
    (0x6e, 7),
    (0x6f, 7),
    (0x70, 7),
    (0x71, 7),
    (0x72, 7),
    (0xfc, 8),
    (0x73, 7),
    (0xfd, 8),
    (0x1ffb, 13),
    (0x7fff0, 19),
    (0x1ffc, 13),
    (0x3ffc, 14),
    (0x22, 6),
    (0x7ffd, 15),
    (0x3, 5),
    (0x23, 6),
    (0x4, 5),
    (0x24, 6),
    (0x5, 5),
    (0x25, 6),
    (0x26, 6),
    (0x27, 6),
    (0x6, 5),
    (0x74, 7),
    (0x75, 7),
    (0x28, 6),
    (0x29, 6),
    (0x2a, 6),
    (0x7, 5),
    (0x2b, 6),
    (0x76, 7),
    (0x2c, 6),
    (0x8, 5),
    (0x9, 5),
    (0x2d, 6),
    (0x77, 7),
    (0x78, 7),
    (0x79, 7),
    (0x7a, 7),
    (0x7b, 7),
    (0x7ffe, 15),
    (0x7fc, 11),
    (0x3ffd, 14),
    (0x1ffd, 13),
    (0xffffffc, 28),
    (0xfffe6, 20),
    (0x3fffd2, 22),
    (0xfffe7, 20),
    (0xfffe8, 20),
    (0x3fffd3, 22),
    (0x3fffd4, 22),
    (0x3fffd5, 22),
    (0x7fffd9, 23),
    (0x3fffd6, 22),
    (0x7fffda, 23),
    (0x7fffdb, 23),
    (0x7fffdc, 23),
    (0x7fffdd, 23),
    (0x7fffde, 23),
    (0xffffeb, 24),
    (0x7fffdf, 23),
    (0xffffec, 24),
    (0xffffed, 24),
    (0x3fffd7, 22),
    (0x7fffe0, 23),
    (0xffffee, 24),
    (0x7fffe1, 23),
    (0x7fffe2, 23),
    (0x7fffe3, 23),
    (0x7fffe4, 23),
    (0x1fffdc, 21),
    (0x3fffd8, 22),
    (0x7fffe5, 23),
    (0x3fffd9, 22),
    (0x7fffe6, 23),
    (0x7fffe7, 23),
    (0xffffef, 24),
    (0x3fffda, 22),
    (0x1fffdd, 21),
    (0xfffe9, 20),
    (0x3fffdb, 22),
    (0x3fffdc, 22),
    (0x7fffe8, 23),
    (0x7fffe9, 23),
    (0x1fffde, 21),
    (0x7fffea, 23),
    (0x3fffdd, 22),
    (0x3fffde, 22),
    (0xfffff0, 24),
    (0x1fffdf, 21),
    (0x3fffdf, 22),
    (0x7fffeb, 23),
    (0x7fffec, 23),
    (0x1fffe0, 21),
    (0x1fffe1, 21),
    (0x3fffe0, 22),
    (0x1fffe2, 21),
    (0x7fffed, 23),
    (0x3fffe1, 22),
    (0x7fffee, 23),
    (0x7fffef, 23),
    (0xfffea, 20),
    (0x3fffe2, 22),
    (0x3fffe3, 22),
    (0x3fffe4, 22),
    (0x7ffff0, 23),
    (0x3fffe5, 22),
    (0x3fffe6, 22),
    (0x7ffff1, 23),
    (0x3ffffe0, 26),
    (0x3ffffe1, 26),
    (0xfffeb, 20),
    (0x7fff1, 19),
    (0x3fffe7, 22),
    (0x7ffff2, 23),
    (0x3fffe8, 22),
    (0x1ffffec, 25),
    (0x3ffffe2, 26),
    (0x3ffffe3, 26),
    (0x3ffffe4, 26),
    (0x7ffffde, 27),
    (0x7ffffdf, 27),
    (0x3ffffe5, 26),
    (0xfffff1, 24),
    (0x1ffffed, 25),
    (0x7fff2, 19),
    (0x1fffe3, 21),
    (0x3ffffe6, 26),
    (0x7ffffe0, 27),
    (0x7ffffe1, 27),
    (0x3ffffe7, 26),
    (0x7ffffe2, 27),
    (0xfffff2, 24),
    (0x1fffe4, 21),
    (0x1fffe5, 21),
    (0x3ffffe8, 26),
    (0x3ffffe9, 26),
    (0xffffffd, 28),
    (0x7ffffe3, 27),
    (0x7ffffe4, 27),
    (0x7ffffe5, 27),
    (0xfffec, 20),
    (0xfffff3, 24),
    (0xfffed, 20),
    (0x1fffe6, 21),
    (0x3fffe9, 22),
    (0x1fffe7, 21),
    (0x1fffe8, 21),
    (0x7ffff3, 23),
    (0x3fffea, 22),
    (0x3fffeb, 22),
    (0x1ffffee, 25),
    (0x1ffffef, 25),
    (0xfffff4, 24),
    (0xfffff5, 24),
    (0x3ffffea, 26),
    (0x7ffff4, 23),
    (0x3ffffeb, 26),
    (0x7ffffe6, 27),
    (0x3ffffec, 26),
    (0x3ffffed, 26),
    (0x7ffffe7, 27),
    (0x7ffffe8, 27),
    (0x7ffffe9, 27),
    (0x7ffffea, 27),
    (0x7ffffeb, 27),
    (0xffffffe, 28),
    (0x7ffffec, 27),
    (0x7ffffed, 27),
    (0x7ffffee, 27),
    (0x7ffffef, 27),
    (0x7fffff0, 27),
    (0x3ffffee, 26),
    (0x3fffffff, 30),
];

#[cfg(test)]
mod tests {
    use super::*;
    use loona_hpack::decoder::Decoder as Oracle;
    use proptest::prelude::*;

    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    fn decode_all(d: &mut Decoder, block: &[u8]) -> Result<Fields, HpackError> {
        let mut fields = Vec::new();
        d.decode(block, |n, v| {
            fields.push((n.to_vec(), v.to_vec()));
            true
        })?;
        Ok(fields)
    }

    fn pairs(p: &[(&str, &str)]) -> Fields {
        p.iter().map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
    }

    fn huffman_encode(s: &[u8]) -> Vec<u8> {
        let (mut out, mut acc, mut bits) = (Vec::new(), 0u64, 0u32);
        for &b in s {
            let (code, len) = HUFFMAN_CODES[usize::from(b)];
            acc = acc << len | u64::from(code);
            bits += u32::from(len);
            while bits >= 8 {
                out.push((acc >> (bits - 8)) as u8);
                bits -= 8;
            }
        }
        if bits > 0 {
            out.push(((acc << (8 - bits)) | ((1 << (8 - bits)) - 1)) as u8);
        }
        out
    }

    #[test]
    fn rfc7541_request_examples() {
        let first =
            pairs(&[(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")]);
        // C.3.1 (no Huffman) and C.4.1 (Huffman): the same request.
        let c31 = [
            0x82, 0x86, 0x84, 0x41, 0x0f, 0x77, 0x77, 0x77, 0x2e, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x63,
            0x6f, 0x6d,
        ];
        assert_eq!(decode_all(&mut Decoder::new(4096), &c31), Ok(first.clone()));
        let mut d = Decoder::new(4096);
        let c41 =
            [0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff];
        assert_eq!(decode_all(&mut d, &c41), Ok(first.clone()));
        // C.4.2 and C.4.3 refer to the entries the earlier blocks added.
        let mut second = first.clone();
        second.extend(pairs(&[("cache-control", "no-cache")]));
        let c42 = [0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf];
        assert_eq!(decode_all(&mut d, &c42), Ok(second));
        let c43 = [
            0x82, 0x87, 0x85, 0xbf, 0x40, 0x88, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f, 0x89, 0x25, 0xa8, 0x49,
            0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf,
        ];
        let third = pairs(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value"),
        ]);
        assert_eq!(decode_all(&mut d, &c43), Ok(third));
        assert_eq!(d.size, 164, "table size after C.4.3 (RFC 7541)");
    }

    #[test]
    fn malformed_blocks_are_errors() {
        let mut d = Decoder::new(4096);
        assert_eq!(decode_all(&mut d, &[0x80]), Err(HpackError::BadIndex(0)));
        assert_eq!(decode_all(&mut d, &[0xbe]), Err(HpackError::BadIndex(62)));
        assert_eq!(decode_all(&mut d, &[0x41, 0x05, b'a']), Err(HpackError::Truncated));
        assert_eq!(decode_all(&mut d, &[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]), Err(HpackError::IntegerOverflow));
        // A size update after a field, or above the allowed size.
        assert_eq!(decode_all(&mut d, &[0x82, 0x20]), Err(HpackError::SizeUpdate(0)));
        assert_eq!(decode_all(&mut d, &[0x3f, 0xe2, 0x1f]), Err(HpackError::SizeUpdate(4097)));
        // EOS inside a Huffman string, padding of 8 bits, padding that is not all ones.
        assert_eq!(decode_all(&mut d, &[0x00, 0x84, 0xff, 0xff, 0xff, 0xff, 0x00]), Err(HpackError::Huffman));
        assert_eq!(decode_all(&mut d, &[0x00, 0x81, 0xff, 0x00]), Err(HpackError::Huffman));
        assert_eq!(decode_all(&mut d, &[0x00, 0x81, 0x00, 0x00]), Err(HpackError::Huffman));
    }

    #[test]
    fn size_updates_evict() {
        let mut d = Decoder::new(4096);
        let mut block = Vec::new();
        encode_int(&mut block, 0, 6, 0x40);
        for s in [&b"k"[..], b"v"] {
            encode_int(&mut block, s.len(), 7, 0);
            block.extend_from_slice(s);
        }
        decode_all(&mut d, &block).unwrap();
        assert_eq!(decode_all(&mut d, &[0xbe]), Ok(pairs(&[("k", "v")])));
        // Size 0 empties the table; 4096 again leaves it empty.
        assert_eq!(decode_all(&mut d, &[0x20, 0x3f, 0xe1, 0x1f, 0x82]), Ok(pairs(&[(":method", "GET")])));
        assert_eq!(decode_all(&mut d, &[0xbe]), Err(HpackError::BadIndex(62)));
    }

    /// One field representation of a generated block.
    #[derive(Debug, Clone)]
    enum Rep {
        Indexed(usize),
        /// Kind: 0 incremental indexing, 1 without, 2 never indexed; name index (0: literal).
        Literal {
            kind: u8,
            name_index: usize,
            name: Vec<u8>,
            value: Vec<u8>,
            huffman: (bool, bool),
        },
    }

    fn encode_string(out: &mut Vec<u8>, s: &[u8], huffman: bool) {
        if huffman {
            let h = huffman_encode(s);
            encode_int(out, h.len(), 7, 0x80);
            out.extend_from_slice(&h);
        } else {
            encode_int(out, s.len(), 7, 0);
            out.extend_from_slice(s);
        }
    }

    fn encode_block(size_update: Option<usize>, reps: &[Rep]) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(size) = size_update {
            encode_int(&mut out, size, 5, 0x20);
        }
        for rep in reps {
            match rep {
                Rep::Indexed(i) => encode_int(&mut out, *i, 7, 0x80),
                Rep::Literal { kind, name_index, name, value, huffman } => {
                    let (prefix, flags) = [(6, 0x40), (4, 0x00), (4, 0x10)][usize::from(*kind)];
                    encode_int(&mut out, *name_index, prefix, flags);
                    if *name_index == 0 {
                        encode_string(&mut out, name, huffman.0);
                    }
                    encode_string(&mut out, value, huffman.1);
                }
            }
        }
        out
    }

    fn rep() -> impl Strategy<Value = Rep> {
        let bytes = prop::collection::vec(any::<u8>(), 0..40);
        prop_oneof![
            (1usize..75).prop_map(Rep::Indexed),
            (0u8..3, prop_oneof![Just(0usize), 1usize..70], bytes.clone(), bytes, any::<(bool, bool)>()).prop_map(
                |(kind, name_index, name, value, huffman)| Rep::Literal { kind, name_index, name, value, huffman }
            ),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Against another implementation: sequences of blocks with every representation,
        /// Huffman or not, table references and size updates decode alike (or fail alike).
        #[test]
        fn decodes_like_another_implementation(
            blocks in prop::collection::vec((prop::option::of(0usize..4200), prop::collection::vec(rep(), 1..12)), 1..10)
        ) {
            let (mut mine, mut oracle) = (Decoder::new(4096), Oracle::new());
            oracle.set_max_allowed_table_size(4096);
            for (size_update, reps) in blocks {
                let block = encode_block(size_update, &reps);
                let a = decode_all(&mut mine, &block);
                let b = oracle.decode(&block);
                prop_assert_eq!(a.is_ok(), b.is_ok(), "{:?} vs {:?}", a, b);
                match (a, b) {
                    (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                    _ => break,
                }
            }
        }

        #[test]
        fn huffman_round_trips(s in prop::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(huffman_decode(&huffman_encode(&s)), Ok(s));
        }

        #[test]
        fn garbage_never_panics(blocks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..100), 1..8)) {
            let mut d = Decoder::new(4096);
            for b in blocks {
                let _ = decode_all(&mut d, &b);
            }
        }
    }
}
