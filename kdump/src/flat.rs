//! Reading a dump that a crash kernel wrote with `makedumpfile -F` (the "flattened" format,
//! meant for streams; crashvmm's guest writes it to the crash disk) and rearranging it into the
//! regular kdump-compressed file that `crash` and `makedumpfile` read: from any [`Read`] to a
//! [`WriteAt`].
//!
//! ```text
//! 4096-byte header: "makedumpfile" (16 bytes, NUL padded), type 1, version 1 (big-endian i64)
//! records:          offset (i64 BE), size (i64 BE), then `size` bytes for `offset` in the file
//! end:              offset = size = -1
//! ```

use std::io::{self, Read};

use thiserror::Error;

use crate::WriteAt;

pub const MAKEDUMPFILE_SIGNATURE: &[u8] = b"makedumpfile";
pub const MAX_SIZE_MDF_HEADER: usize = 4096;
pub const TYPE_FLAT_HEADER: i64 = 1;
pub const VERSION_FLAT_HEADER: i64 = 1;
pub const END_FLAG_FLAT_HEADER: i64 = -1;
/// The largest record we accept (makedumpfile writes at most a few pages per record).
pub const MAX_RECORD: i64 = 64 << 20;

#[derive(Debug, Error)]
pub enum FlatError {
    #[error("no makedumpfile flattened dump on the crash disk (signature {0:?})")]
    NoDump(String),
    #[error("unsupported flattened format type {typ} version {version}")]
    Unsupported { typ: i64, version: i64 },
    #[error("corrupt flattened dump: record {index} has offset {offset} and size {size}")]
    BadRecord { index: u64, offset: i64, size: i64 },
    #[error("the dump is larger than the {0} bytes allowed")]
    TooLarge(u64),
    #[error("the flattened dump ends without its end marker after {0} records (was the crash kernel stopped?)")]
    Truncated(u64),
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn read_i64(r: &mut impl Read) -> io::Result<i64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(i64::from_be_bytes(b))
}

/// Rearrange the flattened dump read from `input` into `out`; at most `max_len` bytes of
/// output. Returns the dump's length.
pub fn rearrange(mut input: impl Read, mut out: impl WriteAt, max_len: u64) -> Result<u64, FlatError> {
    let mut header = vec![0u8; MAX_SIZE_MDF_HEADER];
    input.read_exact(&mut header).map_err(|_| FlatError::NoDump("short header".into()))?;
    let sig_end = header[..16].iter().position(|&b| b == 0).unwrap_or(16);
    if &header[..sig_end] != MAKEDUMPFILE_SIGNATURE {
        return Err(FlatError::NoDump(String::from_utf8_lossy(&header[..sig_end]).into_owned()));
    }
    let typ = i64::from_be_bytes(header[16..24].try_into().unwrap_or_default());
    let version = i64::from_be_bytes(header[24..32].try_into().unwrap_or_default());
    if typ != TYPE_FLAT_HEADER || version != VERSION_FLAT_HEADER {
        return Err(FlatError::Unsupported { typ, version });
    }
    let mut len = 0u64;
    let mut buf = Vec::new();
    for index in 0.. {
        let (offset, size) = match (read_i64(&mut input), read_i64(&mut input)) {
            (Ok(o), Ok(s)) => (o, s),
            _ => return Err(FlatError::Truncated(index)),
        };
        if offset == END_FLAG_FLAT_HEADER && size == END_FLAG_FLAT_HEADER {
            out.set_len(len)?;
            return Ok(len);
        }
        if offset < 0 || !(0..=MAX_RECORD).contains(&size) {
            return Err(FlatError::BadRecord { index, offset, size });
        }
        let end = offset.checked_add(size).ok_or(FlatError::BadRecord { index, offset, size })? as u64;
        if end > max_len {
            return Err(FlatError::TooLarge(max_len));
        }
        buf.resize(size as usize, 0);
        input.read_exact(&mut buf).map_err(|_| FlatError::Truncated(index))?;
        out.write_all_at(&buf, offset as u64)?;
        len = len.max(end);
    }
    unreachable!("the record loop only ends by returning")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(records: &[(i64, &[u8])], end: bool) -> Vec<u8> {
        let mut v = vec![0u8; MAX_SIZE_MDF_HEADER];
        v[..12].copy_from_slice(MAKEDUMPFILE_SIGNATURE);
        v[16..24].copy_from_slice(&TYPE_FLAT_HEADER.to_be_bytes());
        v[24..32].copy_from_slice(&VERSION_FLAT_HEADER.to_be_bytes());
        for (off, data) in records {
            v.extend_from_slice(&off.to_be_bytes());
            v.extend_from_slice(&(data.len() as i64).to_be_bytes());
            v.extend_from_slice(data);
        }
        if end {
            v.extend_from_slice(&(-1i64).to_be_bytes());
            v.extend_from_slice(&(-1i64).to_be_bytes());
        }
        v
    }

    #[test]
    fn rearranges_records_at_their_offsets() {
        let input = flat(&[(10, b"world"), (0, b"hello"), (4096, b"!"), (8000, b"")], true);
        // Trailing garbage after the end marker (the rest of the disk) is ignored.
        let input = [input, vec![0xee; 100]].concat();
        let mut got = Vec::new();
        assert_eq!(rearrange(&input[..], &mut got, 1 << 20).unwrap(), 8000);
        assert_eq!(got.len(), 8000, "the length is the end of the last record, even an empty one");
        assert_eq!(&got[..5], b"hello");
        assert_eq!(&got[10..15], b"world");
        assert_eq!(got[4096], b'!');
        assert!(got[4097..].iter().all(|&b| b == 0));
        // A file, written at offsets.
        let file = tempfile::tempfile().unwrap();
        assert_eq!(rearrange(&input[..], &file, 1 << 20).unwrap(), 8000);
        let mut from_file = vec![0u8; 8000];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut from_file, 0).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 8000);
        assert!(from_file == got);
    }

    #[test]
    fn rejects_what_is_not_a_complete_dump() {
        let mut out = Vec::new();
        assert!(matches!(rearrange(&vec![0u8; 8192][..], &mut out, 1 << 20), Err(FlatError::NoDump(_))));
        assert!(matches!(rearrange(&[0u8; 10][..], &mut out, 1 << 20), Err(FlatError::NoDump(_))));
        assert!(matches!(rearrange(&flat(&[(0, b"x")], false)[..], &mut out, 1 << 20), Err(FlatError::Truncated(1))));
        assert!(matches!(
            rearrange(&flat(&[(-5, b"x")], true)[..], &mut out, 1 << 20),
            Err(FlatError::BadRecord { .. })
        ));
        assert!(matches!(
            rearrange(&flat(&[(1 << 30, b"x")], true)[..], &mut out, 1 << 20),
            Err(FlatError::TooLarge(_))
        ));
        let mut bad = flat(&[], true);
        bad[16..24].copy_from_slice(&2i64.to_be_bytes());
        assert!(matches!(rearrange(&bad[..], &mut out, 1 << 20), Err(FlatError::Unsupported { .. })));
        // A record claiming more data than there is.
        let mut short = flat(&[], false);
        short.extend_from_slice(&0i64.to_be_bytes());
        short.extend_from_slice(&100i64.to_be_bytes());
        short.extend_from_slice(b"abc");
        assert!(matches!(rearrange(&short[..], &mut out, 1 << 20), Err(FlatError::Truncated(0))));
        // Overflowing offset + size.
        let mut ovf = flat(&[], false);
        ovf.extend_from_slice(&i64::MAX.to_be_bytes());
        ovf.extend_from_slice(&10i64.to_be_bytes());
        assert!(matches!(rearrange(&ovf[..], &mut out, u64::MAX), Err(FlatError::BadRecord { .. })));
    }
}
