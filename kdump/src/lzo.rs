//! An LZO1X compressor for single pages: the codec of `makedumpfile -l`
//! (`DUMP_DH_COMPRESSED_LZO`), which Debian's makedumpfile 1.7.2 and crash 8.0.2 decode with
//! liblzo2's `lzo1x_decompress_safe`.
//!
//! Written from the stream format as Linux documents it (`Documentation/staging/lzo.rst`), not
//! from LZO's code: a greedy LZ77 pass with a 4-byte hash (as LZ4's fast mode), emitting only
//! three of the format's instructions, which suffice for inputs up to 16 KiB:
//!
//! ```text
//! first literal run     17 + n (n = 1..3), or the long form below (state 0 at the start)
//! long literal run      0000LLLL [ext]           n = 3 + (L ?: 15 + 255 * zeros + byte), n >= 4
//! M2 match              1LLDDDSS HHHHHHHH        len 5..8, dist (H << 3) + D + 1 <= 2048
//!                       01LDDDSS HHHHHHHH        len 3..4
//! M3 match              001LLLLL [ext] DDDDDDSS DDDDDDDD (LE16: (dist - 1) << 2 | S)
//!                                                len = 2 + (L ?: 31 + 255 * zeros + byte)
//! end of stream         0x11 0x00 0x00           (an M4 of distance 16384)
//! ```
//!
//! `S` of a match is the number (1..3) of literals after it; a run of 4 or more follows a match
//! with `S` = 0 as a long literal run. Every match is at least 4 bytes and at least 32 as an
//! instruction byte, so the two-byte M1 forms are never needed. Crates that implement LZO1X-1
//! itself are GPL-2.0 (crashvmm is Apache-2.0) and the MIT `lzokay` is an LZO1X-999-grade
//! compressor (23 MB/s here); this one runs at memory speed on pattern-filled pages.

/// Longest input: M3 distances reach 16 KiB (a page is 4 KiB).
pub const MAX_INPUT: usize = 16 << 10;
const HASH_BITS: u32 = 12;
const MIN_MATCH: usize = 4;
const M2_MAX_LEN: usize = 8;
const M2_MAX_OFFSET: usize = 0x0800;
const M3_MAX_LEN: usize = 33;
const M2_MARKER: u8 = 64;
const M3_MARKER: u8 = 32;
const EOS: [u8; 3] = [0x11, 0, 0];
/// The long literal run's and M3's length fields are 4 and 5 bits.
const LIT_MAX_SHORT: usize = 18;

/// The compressor's hash table, reused across pages (positions + 1; 0 is empty).
pub struct Lzo1x {
    table: Box<[u16; 1 << HASH_BITS]>,
}

impl Default for Lzo1x {
    fn default() -> Self {
        Self { table: Box::new([0; 1 << HASH_BITS]) }
    }
}

fn read32(s: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]])
}

fn hash(v: u32) -> usize {
    (v.wrapping_mul(2_654_435_761) >> (32 - HASH_BITS)) as usize
}

/// `255 * zeros + byte` for a length above a field's maximum (`rest` >= 1).
fn put_ext(out: &mut Vec<u8>, mut rest: usize) {
    while rest > 255 {
        out.push(0);
        rest -= 255;
    }
    out.push(rest as u8);
}

/// Bytes in common at `a` and `b` (`a` < `b`), up to the end of `s`.
fn common(s: &[u8], a: usize, b: usize) -> usize {
    let mut n = 0;
    let max = s.len() - b;
    while n + 8 <= max {
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&s[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let (x, y) = (word(a + n), word(b + n));
        let diff = x ^ y;
        if diff != 0 {
            return n + (diff.trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
    while n < max && s[a + n] == s[b + n] {
        n += 1;
    }
    n
}

impl Lzo1x {
    /// Appends the LZO1X stream of `src` (at most [`MAX_INPUT`] bytes) to `out`.
    pub fn compress(&mut self, src: &[u8], out: &mut Vec<u8>) {
        assert!(src.len() <= MAX_INPUT, "LZO1X input of {} bytes", src.len());
        self.table.fill(0);
        // Where the last match's S bits are (None before the first match).
        let mut s_at: Option<usize> = None;
        let mut lit = 0; // start of the pending literal run
        let mut i = 0;
        let mut misses = 0usize;
        while i + MIN_MATCH <= src.len() {
            let v = read32(src, i);
            let h = hash(v);
            let cand = usize::from(self.table[h]);
            self.table[h] = (i + 1) as u16;
            if cand == 0 || read32(src, cand - 1) != v {
                // No match: step faster through data that does not compress (LZ4's heuristic).
                misses += 1;
                i += 1 + (misses >> 5);
                continue;
            }
            misses = 0;
            let m = cand - 1;
            let len = MIN_MATCH + common(src, m + MIN_MATCH, i + MIN_MATCH);
            Self::literals(&src[lit..i], s_at, out);
            s_at = Some(Self::put_match(out, i - m, len));
            i += len;
            lit = i;
            // Index a position inside the match, so the next one can reach back into it.
            if i + MIN_MATCH <= src.len() {
                let p = i - 2;
                self.table[hash(read32(src, p))] = (p + 1) as u16;
            }
        }
        Self::literals(&src[lit..], s_at, out);
        out.extend_from_slice(&EOS);
    }

    /// A literal run: in the S bits of the match before it (1..3 bytes), as the first byte of
    /// the stream (1..3), or as a long literal run (4 or more).
    fn literals(lits: &[u8], s_at: Option<usize>, out: &mut Vec<u8>) {
        let n = lits.len();
        if n == 0 {
            return;
        }
        match s_at {
            Some(at) if n <= 3 => out[at] |= n as u8,
            None if n <= 3 => out.push(17 + n as u8),
            _ => {
                if n <= LIT_MAX_SHORT {
                    out.push((n - 3) as u8);
                } else {
                    out.push(0);
                    put_ext(out, n - LIT_MAX_SHORT);
                }
            }
        }
        out.extend_from_slice(lits);
    }

    /// A match of `len` (>= 4) bytes `dist` back; returns where its S bits are.
    fn put_match(out: &mut Vec<u8>, dist: usize, len: usize) -> usize {
        let d = dist - 1;
        if len <= M2_MAX_LEN && dist <= M2_MAX_OFFSET {
            let (base, l) = if len <= 4 { (M2_MARKER, len - 3) } else { (128, len - 5) };
            out.push(base | ((l as u8) << 5) | (((d & 7) as u8) << 2));
            out.push((d >> 3) as u8);
            out.len() - 2
        } else {
            if len <= M3_MAX_LEN {
                out.push(M3_MARKER | (len - 2) as u8);
            } else {
                out.push(M3_MARKER);
                put_ext(out, len - M3_MAX_LEN);
            }
            let at = out.len();
            out.extend_from_slice(&((d << 2) as u16).to_le_bytes());
            at
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(src: &[u8]) -> usize {
        let mut out = Vec::new();
        Lzo1x::default().compress(src, &mut out);
        // An independent LZO1X decoder (lzokay's, from the same format).
        let back = lzokay_native::decompress_all(&out, Some(src.len())).expect("a valid LZO1X stream");
        assert_eq!(back, src, "round trip of {} bytes", src.len());
        out.len()
    }

    fn xorshift(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn pages_of_every_kind_round_trip() {
        let mut seed = 0x1234_5678_9abc_def1u64;
        let zero = vec![0u8; 4096];
        assert!(roundtrip(&zero) < 40, "a zero page is a few bytes");
        let pattern: Vec<u8> = (0..4096).map(|i| (0xdead_beef_u64 >> ((i % 8) * 8)) as u8).collect();
        assert!(roundtrip(&pattern) < 40);
        let random: Vec<u8> = (0..4096).map(|_| xorshift(&mut seed) as u8).collect();
        let n = roundtrip(&random);
        assert!(n > 4096 && n < 4096 + 40, "random data: {n} bytes");
        // Text-like: short repeats at every distance, literal runs of every length.
        let words = [&b"the "[..], b"quick ", b"brown fox ", b"jumps\n", b"x", b"yz", b"over the lazy dog. "];
        let mut text = Vec::new();
        while text.len() < 4096 {
            let w = words[(xorshift(&mut seed) % words.len() as u64) as usize];
            text.extend_from_slice(w);
            for _ in 0..(xorshift(&mut seed) % 5) {
                text.push(xorshift(&mut seed) as u8);
            }
        }
        text.truncate(4096);
        assert!(roundtrip(&text) < 4096);
        // A struct-page-like layout: 64-byte records with a few fields changing.
        let mut recs = vec![0u8; 4096];
        for (k, r) in recs.chunks_mut(64).enumerate() {
            r[0..8].copy_from_slice(&(0x17ffffc0000000u64 | k as u64).to_le_bytes());
            r[24..32].copy_from_slice(&(0xffff888000000000u64 + (k as u64) * 4096).to_le_bytes());
        }
        assert!(roundtrip(&recs) < 1500);
    }

    #[test]
    fn edge_lengths_round_trip() {
        let mut seed = 7u64;
        for len in [0usize, 1, 2, 3, 4, 5, 7, 8, 18, 19, 20, 33, 34, 35, 273, 274, 275, 300, 4095, 4096, 16384] {
            let src: Vec<u8> = (0..len).map(|_| xorshift(&mut seed) as u8).collect();
            roundtrip(&src);
            // Random literals, then a match of every length at every kind of distance.
            for (dist, mlen) in [(1, 4), (8, 8), (2048, 8), (2049, 5), (100, 33), (100, 34), (3000, 289), (5, 600)] {
                if dist > len {
                    continue;
                }
                let mut s = src.clone();
                for k in 0..mlen {
                    let b = s[s.len() - dist];
                    s.push(b);
                    let _ = k;
                }
                for tail in 0..5 {
                    let mut t = s.clone();
                    t.extend((0..tail).map(|_| xorshift(&mut seed) as u8));
                    if t.len() <= MAX_INPUT {
                        roundtrip(&t);
                    }
                }
            }
        }
    }

    #[test]
    fn random_mixtures_round_trip() {
        let mut seed = 99u64;
        for _ in 0..2000 {
            let mut page = Vec::with_capacity(4096);
            while page.len() < 4096 {
                let kind = xorshift(&mut seed) % 3;
                let n = (xorshift(&mut seed) % 300) as usize + 1;
                for _ in 0..n {
                    let b = match kind {
                        0 => xorshift(&mut seed) as u8,
                        1 => 0,
                        _ if page.len() >= 8 => page[page.len() - 8],
                        _ => 1,
                    };
                    page.push(b);
                }
            }
            page.truncate(4096);
            roundtrip(&page);
        }
    }
}
