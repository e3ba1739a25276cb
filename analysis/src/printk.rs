//! The kernel log from guest memory, read as makedumpfile 1.7.2 reads it for `--dump-dmesg`
//! (its printk.c `dump_lockless_dmesg`/`dump_record`, and makedumpfile.c `dump_dmesg`/
//! `dump_log_entry` for the older `log_buf`), with the layouts of Linux's
//! kernel/printk/printk_ringbuffer.{c,h} (5.10+) and kernel/printk/printk.c (`struct printk_log`,
//! 3.5 to 5.9).
//!
//! Everything comes from guest memory and the guest's VMCOREINFO, both hostile: every size is
//! capped ([`MAX_RECORDS`], [`MAX_DATA_RING`]), every walk counted, every slice checked. The
//! descriptor, info and data arrays are read whole (in pieces of at most [`MAX_READ`]), once.

use kdump::{PhysMem, VmcoreInfo};

use crate::kmem::MAX_READ;
use crate::{AnalysisError, KernelMem};

/// The most descriptors (lockless ring buffer: `1 << count_bits`) or records (`log_buf`) read.
pub const MAX_RECORDS: u64 = 1 << 20;
/// The largest data ring (`1 << size_bits`) or `log_buf_len` read.
pub const MAX_DATA_RING: u64 = 1 << 28;
/// The largest descriptor or info array read (`SIZE(prb_desc)` or `SIZE(printk_info)` times the
/// descriptor count).
pub const MAX_ARRAY: u64 = 1 << 28;
/// The largest `SIZE(...)` of one descriptor, info or `printk_log` header believed.
const MAX_STRUCT: u64 = 4096;

/// One log record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub ts_nsec: u64,
    /// `caller_id`: a task's PID, or `0x80000000 | cpu` in an interrupt context.
    pub caller_id: u32,
    pub level: u8,
    pub facility: u8,
    /// The text, raw bytes (one record may hold several lines).
    pub text: Vec<u8>,
}

impl Record {
    /// The time of the record, seconds since boot.
    pub fn time_s(&self) -> f64 {
        self.ts_nsec as f64 / 1e9
    }

    /// The text, lossy UTF-8.
    pub fn text_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.text)
    }
}

/// The kernel log, oldest record first: the lockless ring buffer where VMCOREINFO has
/// `SYMBOL(prb)` (Linux 5.10+), else the `log_buf` of `struct printk_log` records (3.5 to 5.9),
/// as makedumpfile 1.7.2's `dump_dmesg` chooses. The plain-text `log_buf` of kernels before 3.5
/// is not read (an error saying so).
pub fn read_log<M: PhysMem + ?Sized>(kmem: &KernelMem<'_, M>, info: &VmcoreInfo) -> Result<Vec<Record>, AnalysisError> {
    if info.symbol("prb").is_some() {
        return read_lockless(kmem, info);
    }
    read_log_buf(kmem, info)
}

fn missing(what: &str) -> AnalysisError {
    AnalysisError::Missing(what.to_string())
}

fn implausible(what: impl Into<String>) -> AnalysisError {
    AnalysisError::Implausible(what.into())
}

fn need_off(info: &VmcoreInfo, name: &str) -> Result<u64, AnalysisError> {
    let v = info.offset(name).ok_or_else(|| missing(&format!("OFFSET({name})")))?;
    if v > MAX_STRUCT {
        return Err(implausible(format!("OFFSET({name})={v}")));
    }
    Ok(v)
}

fn need_size(info: &VmcoreInfo, name: &str) -> Result<u64, AnalysisError> {
    let v = info.size(name).ok_or_else(|| missing(&format!("SIZE({name})")))?;
    if v == 0 || v > MAX_STRUCT {
        return Err(implausible(format!("SIZE({name})={v}")));
    }
    Ok(v)
}

fn opt_off(info: &VmcoreInfo, name: &str) -> Option<u64> {
    info.offset(name).filter(|&v| v <= MAX_STRUCT)
}

/// Little-endian fields of a byte slice; `None` past its end.
fn le<const N: usize>(buf: &[u8], off: u64) -> Option<[u8; N]> {
    let off = usize::try_from(off).ok()?;
    buf.get(off..off.checked_add(N)?)?.try_into().ok()
}

fn le_u64(buf: &[u8], off: u64) -> Option<u64> {
    le::<8>(buf, off).map(u64::from_le_bytes)
}

fn le_u32(buf: &[u8], off: u64) -> Option<u32> {
    le::<4>(buf, off).map(u32::from_le_bytes)
}

fn le_u16(buf: &[u8], off: u64) -> Option<u16> {
    le::<2>(buf, off).map(u16::from_le_bytes)
}

fn le_u8(buf: &[u8], off: u64) -> Option<u8> {
    le::<1>(buf, off).map(|b| b[0])
}

/// `len` bytes of kernel memory from `va`, read in pieces of at most [`MAX_READ`].
fn read_big<M: PhysMem + ?Sized>(
    kmem: &KernelMem<'_, M>,
    va: u64,
    len: u64,
    what: &str,
) -> Result<Vec<u8>, AnalysisError> {
    if len > MAX_DATA_RING.max(MAX_ARRAY) {
        return Err(implausible(format!("{what} of {len} bytes")));
    }
    let len = len as usize;
    let mut out = Vec::new();
    while out.len() < len {
        let n = (len - out.len()).min(MAX_READ);
        let at = va.wrapping_add(out.len() as u64);
        let start = out.len();
        out.resize(start + n, 0);
        kmem.read(at, &mut out[start..])?;
    }
    Ok(out)
}

/// The descriptor state (kernel/printk/printk_ringbuffer.h `enum desc_state`): the top two
/// bits of `state_var` (an `atomic_long_t`), the rest the descriptor's ID.
const DESC_FLAGS_SHIFT: u32 = 62;
const DESC_ID_MASK: u64 = !(3u64 << DESC_FLAGS_SHIFT);
const DESC_COMMITTED: u64 = 1;
const DESC_FINALIZED: u64 = 2;

/// Where the fields of the lockless ring buffer are (VMCOREINFO's `OFFSET`s and `SIZE`s).
struct PrbLayout {
    desc_size: u64,
    state_var: u64,
    lpos_begin: u64,
    lpos_next: u64,
    info_size: u64,
    seq: Option<u64>,
    ts_nsec: u64,
    text_len: u64,
    caller_id: Option<u64>,
    facility: Option<u64>,
    level: Option<u64>,
}

/// The lockless ring buffer (Linux 5.10+), as makedumpfile 1.7.2's printk.c
/// `dump_lockless_dmesg` walks it: every descriptor ID from `tail_id` to `head_id` inclusive;
/// `dump_record` keeps those committed or finalized with a data block.
fn read_lockless<M: PhysMem + ?Sized>(
    kmem: &KernelMem<'_, M>,
    info: &VmcoreInfo,
) -> Result<Vec<Record>, AnalysisError> {
    let prb_sym = info.symbol("prb").ok_or_else(|| missing("SYMBOL(prb)"))?;
    let counter = opt_off(info, "atomic_long_t.counter").unwrap_or(0);
    let text_blk = need_off(info, "prb_desc.text_blk_lpos")?;
    let l = PrbLayout {
        desc_size: need_size(info, "prb_desc")?,
        state_var: need_off(info, "prb_desc.state_var")? + counter,
        lpos_begin: text_blk + need_off(info, "prb_data_blk_lpos.begin")?,
        lpos_next: text_blk + need_off(info, "prb_data_blk_lpos.next")?,
        info_size: need_size(info, "printk_info")?,
        seq: opt_off(info, "printk_info.seq"),
        ts_nsec: need_off(info, "printk_info.ts_nsec")?,
        text_len: need_off(info, "printk_info.text_len")?,
        caller_id: opt_off(info, "printk_info.caller_id"),
        facility: opt_off(info, "printk_info.facility"),
        level: opt_off(info, "printk_info.level"),
    };

    let prb = kmem.u64(prb_sym)?;
    let desc_ring = prb.wrapping_add(need_off(info, "printk_ringbuffer.desc_ring")?);
    let count_bits = kmem.u32(desc_ring.wrapping_add(need_off(info, "prb_desc_ring.count_bits")?))?;
    if count_bits > MAX_RECORDS.trailing_zeros() {
        return Err(implausible(format!("prb_desc_ring.count_bits={count_bits}")));
    }
    let count = 1u64 << count_bits;
    let descs_va = kmem.u64(desc_ring.wrapping_add(need_off(info, "prb_desc_ring.descs")?))?;
    let infos_va = kmem.u64(desc_ring.wrapping_add(need_off(info, "prb_desc_ring.infos")?))?;
    let tail_id = kmem.u64(desc_ring.wrapping_add(need_off(info, "prb_desc_ring.tail_id")? + counter))?;
    let head_id = kmem.u64(desc_ring.wrapping_add(need_off(info, "prb_desc_ring.head_id")? + counter))?;

    let data_ring = prb.wrapping_add(need_off(info, "printk_ringbuffer.text_data_ring")?);
    let size_bits = kmem.u32(data_ring.wrapping_add(need_off(info, "prb_data_ring.size_bits")?))?;
    if size_bits > MAX_DATA_RING.trailing_zeros() {
        return Err(implausible(format!("prb_data_ring.size_bits={size_bits}")));
    }
    let ring_size = 1u64 << size_bits;
    let data_va = kmem.u64(data_ring.wrapping_add(need_off(info, "prb_data_ring.data")?))?;

    let descs = read_big(kmem, descs_va, l.desc_size * count, "prb.desc_ring.descs")?;
    let infos = read_big(kmem, infos_va, l.info_size * count, "prb.desc_ring.infos")?;
    let data = read_big(kmem, data_va, ring_size, "prb.text_data_ring.data")?;

    // In a sound ring head_id - tail_id < count; more would print descriptors twice (and IDs
    // that never meet would walk forever): start no earlier than count - 1 before the head.
    let head_id = head_id & DESC_ID_MASK;
    let mut id = tail_id & DESC_ID_MASK;
    let span = head_id.wrapping_sub(id) & DESC_ID_MASK;
    if span >= count {
        id = head_id.wrapping_sub(count - 1) & DESC_ID_MASK;
    }
    let mut out = Vec::new();
    for _ in 0..count {
        if let Some(r) = lockless_record(&l, &descs, &infos, &data, ring_size, count, id) {
            out.push(r);
        }
        if id == head_id {
            break;
        }
        id = id.wrapping_add(1) & DESC_ID_MASK;
    }
    Ok(out)
}

/// One descriptor, as makedumpfile 1.7.2's printk.c `dump_record` reads it: `None` where it
/// prints nothing (not committed or finalized, or a data-less block).
fn lockless_record(
    l: &PrbLayout,
    descs: &[u8],
    infos: &[u8],
    data: &[u8],
    ring_size: u64,
    count: u64,
    id: u64,
) -> Option<Record> {
    let idx = id % count;
    let desc = descs.get((idx * l.desc_size) as usize..)?;
    let state_var = le_u64(desc, l.state_var)?;
    // get_desc_state(): an ID mismatch is desc_miss.
    if state_var & DESC_ID_MASK != id {
        return None;
    }
    let state = state_var >> DESC_FLAGS_SHIFT;
    if state != DESC_COMMITTED && state != DESC_FINALIZED {
        return None;
    }
    let mut begin = le_u64(desc, l.lpos_begin)? % ring_size;
    let next = le_u64(desc, l.lpos_next)? % ring_size;
    // Data-less blocks (FAILED_LPOS, NO_LPOS) have begin == next.
    if begin == next {
        return None;
    }
    let inf = infos.get((idx * l.info_size) as usize..)?;
    let mut text_len = u64::from(le_u16(inf, l.text_len)?);
    // A wrapping data block keeps its data at the start of the ring.
    if begin > next {
        begin = 0;
    }
    // Skip the block's descriptor ID (an unsigned long).
    begin += 8;
    // A truncated message (unsigned arithmetic, as makedumpfile's).
    let avail = next.wrapping_sub(begin);
    if avail < text_len {
        text_len = avail;
    }
    // makedumpfile reads past its buffer where the block is corrupt; stop at the ring's end.
    let start = (begin as usize).min(data.len());
    let end = start.saturating_add(text_len as usize).min(data.len());
    let text = data.get(start..end).unwrap_or_default().to_vec();
    Some(Record {
        seq: l.seq.and_then(|o| le_u64(inf, o)).unwrap_or(0),
        ts_nsec: le_u64(inf, l.ts_nsec).unwrap_or(0),
        caller_id: l.caller_id.and_then(|o| le_u32(inf, o)).unwrap_or(0),
        level: l.level.and_then(|o| le_u8(inf, o)).map(|b| b & 7).unwrap_or(0),
        facility: l.facility.and_then(|o| le_u8(inf, o)).unwrap_or(0),
        text,
    })
}

/// `struct printk_log`'s layout (`struct log` in 3.5 to 3.10, which VMCOREINFO names so).
struct LogLayout {
    size: u64,
    len: u64,
    text_len: u64,
    ts_nsec: u64,
    caller_id: Option<u64>,
    facility: Option<u64>,
    level: Option<u64>,
}

fn log_layout(info: &VmcoreInfo) -> Result<LogLayout, AnalysisError> {
    let name = if info.size("printk_log").is_some() { "printk_log" } else { "log" };
    if info.size(name).is_none() {
        return Err(missing("SIZE(printk_log)"));
    }
    Ok(LogLayout {
        size: need_size(info, name)?,
        len: need_off(info, &format!("{name}.len"))?,
        text_len: need_off(info, &format!("{name}.text_len"))?,
        ts_nsec: need_off(info, &format!("{name}.ts_nsec"))?,
        caller_id: opt_off(info, &format!("{name}.caller_id")),
        facility: opt_off(info, &format!("{name}.facility")),
        level: opt_off(info, &format!("{name}.level")),
    })
}

/// The `log_buf` of `struct printk_log` records (Linux 3.5 to 5.9), as makedumpfile 1.7.2's
/// makedumpfile.c `dump_dmesg` walks it: from `log_first_idx` to `log_next_idx`, a record of
/// `len` 0 meaning "wrap to the start" (`log_from_ptr`, `log_next`). Where makedumpfile stops
/// on a corrupt buffer (a cycle, an index outside the buffer) the records before it are kept.
fn read_log_buf<M: PhysMem + ?Sized>(kmem: &KernelMem<'_, M>, info: &VmcoreInfo) -> Result<Vec<Record>, AnalysisError> {
    let log_buf_sym = info.symbol("log_buf").ok_or_else(|| missing("SYMBOL(prb) or SYMBOL(log_buf)"))?;
    let log_buf_len_sym = info.symbol("log_buf_len").ok_or_else(|| missing("SYMBOL(log_buf_len)"))?;
    if info.symbol("log_end").is_some() {
        return Err(missing(
            "the variable-length record log (this kernel's log_buf is plain text, before 3.5: not read)",
        ));
    }
    let first_sym = info.symbol("log_first_idx").ok_or_else(|| missing("SYMBOL(log_first_idx)"))?;
    let next_sym = info.symbol("log_next_idx").ok_or_else(|| missing("SYMBOL(log_next_idx)"))?;
    let l = log_layout(info)?;
    let first_idx = u64::from(kmem.u32(first_sym)?);
    let next_idx = u64::from(kmem.u32(next_sym)?);
    let log_buf = kmem.u64(log_buf_sym)?;
    // `int log_buf_len`.
    let buf_len = kmem.u32(log_buf_len_sym)? as i32;
    if buf_len <= 0 || buf_len as u64 > MAX_DATA_RING || (buf_len as u64) < l.size {
        return Err(implausible(format!("log_buf_len={buf_len}")));
    }
    let buf_len = buf_len as u64;
    let buf = read_big(kmem, log_buf, buf_len, "log_buf")?;
    // The highest index a record header may start at (makedumpfile's "Index outside log_buf").
    let last = buf_len - l.size;
    if first_idx > last {
        return Err(implausible(format!("log_first_idx={first_idx} (log_buf_len {buf_len})")));
    }
    let rec_len = |at: u64| le_u16(&buf, at + l.len).map(u64::from).unwrap_or(0);
    // Every index visited: a repeat is makedumpfile's cycle (it prints up to it, once).
    let mut seen = vec![0u64; (buf_len as usize).div_ceil(64)];
    let mut out = Vec::new();
    let mut ptr = first_idx;
    let mut seq = 0u64;
    while ptr != next_idx && (out.len() as u64) < MAX_RECORDS {
        let word = (ptr / 64) as usize;
        let bit = 1u64 << (ptr % 64);
        match seen.get_mut(word) {
            Some(w) if *w & bit == 0 => *w |= bit,
            _ => break,
        }
        // log_from_ptr(): a zero-length record is the end-of-buffer marker.
        let rec = if rec_len(ptr) == 0 { 0 } else { ptr };
        out.push(log_record(&l, &buf, rec, seq));
        seq += 1;
        // log_next()
        let next = match rec_len(ptr) {
            0 => rec_len(0),
            n => ptr + n,
        };
        if next > last {
            break;
        }
        ptr = next;
    }
    Ok(out)
}

/// One `struct printk_log` record, as makedumpfile 1.7.2's `dump_log_entry` reads it: the text
/// follows the header (a dictionary after the text is not printed).
fn log_record(l: &LogLayout, buf: &[u8], at: u64, seq: u64) -> Record {
    let text_len = le_u16(buf, at + l.text_len).unwrap_or(0) as usize;
    let start = ((at + l.size) as usize).min(buf.len());
    let end = start.saturating_add(text_len).min(buf.len());
    Record {
        seq,
        ts_nsec: le_u64(buf, at + l.ts_nsec).unwrap_or(0),
        caller_id: l.caller_id.and_then(|o| le_u32(buf, at + o)).unwrap_or(0),
        level: l.level.and_then(|o| le_u8(buf, at + o)).map(|b| b & 7).unwrap_or(0),
        facility: l.facility.and_then(|o| le_u8(buf, at + o)).unwrap_or(0),
        text: buf.get(start..end).unwrap_or_default().to_vec(),
    }
}

/// The log as `makedumpfile --dump-dmesg` (1.7.2) writes it: each record is
/// `[%5lld.%06ld] ` (seconds, microseconds) and its text; a newline inside the text is followed
/// by as many spaces as that prefix has characters; a byte neither `isprint` nor `isspace` in the
/// C locale is `\x%02x` of the C `char` (signed on x86: a byte from 0x80 prints as
/// `\xffffff80`); each record ends in a newline. The caller ID and dictionary are not printed
/// (1.7.2 prints neither). Always ASCII.
pub fn format_dmesg(records: &[Record]) -> String {
    let mut s = String::with_capacity(records.iter().map(|r| r.text.len() + 16).sum());
    for r in records {
        format_record(&mut s, r);
    }
    s
}

fn format_record(s: &mut String, r: &Record) {
    use std::fmt::Write;
    let start = s.len();
    let _ = write!(s, "[{:5}.{:06}] ", r.ts_nsec / 1_000_000_000, (r.ts_nsec % 1_000_000_000) / 1000);
    let indent = s.len() - start;
    for &b in &r.text {
        match b {
            b'\n' => {
                s.push('\n');
                s.extend(std::iter::repeat_n(' ', indent));
            }
            // isprint() || isspace() in the C locale.
            0x20..=0x7e | b'\t' | 0x0b | 0x0c | b'\r' => s.push(b as char),
            // sprintf("\\x%02x", *p) with a signed char.
            _ => {
                let _ = write!(s, "\\x{:02x}", b as i8 as i32 as u32);
            }
        }
    }
    s.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdump::SliceMem;

    #[test]
    fn formats_as_makedumpfile() {
        let recs = vec![
            Record { ts_nsec: 0, text: b"Linux version 6.1".to_vec(), ..Default::default() },
            Record {
                ts_nsec: 12_345_678_901,
                text: b"line one\nline two\x01\x7f\xc3\t!".to_vec(),
                ..Default::default()
            },
            Record { ts_nsec: 123_456_000_000_000, text: Vec::new(), ..Default::default() },
        ];
        assert_eq!(
            format_dmesg(&recs),
            "[    0.000000] Linux version 6.1\n\
             [   12.345678] line one\n               line two\\x01\\x7f\\xffffffc3\t!\n\
             [123456.000000] \n"
        );
    }
}
