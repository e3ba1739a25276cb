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
    use std::time::{Duration, Instant};

    const BASE: u64 = 0xffff_ffff_8000_0000;

    /// Debian 6.1's VMCOREINFO for the ring buffer (x86_64).
    const PRB_INFO: &str = "OFFSET(atomic_long_t.counter)=0
OFFSET(prb_data_blk_lpos.begin)=0
OFFSET(prb_data_blk_lpos.next)=8
OFFSET(prb_data_ring.data)=8
OFFSET(prb_data_ring.size_bits)=0
OFFSET(prb_desc.state_var)=0
OFFSET(prb_desc.text_blk_lpos)=8
OFFSET(prb_desc_ring.count_bits)=0
OFFSET(prb_desc_ring.descs)=8
OFFSET(prb_desc_ring.head_id)=24
OFFSET(prb_desc_ring.infos)=16
OFFSET(prb_desc_ring.tail_id)=32
OFFSET(printk_info.caller_id)=20
OFFSET(printk_info.seq)=0
OFFSET(printk_info.text_len)=16
OFFSET(printk_info.ts_nsec)=8
OFFSET(printk_ringbuffer.desc_ring)=0
OFFSET(printk_ringbuffer.text_data_ring)=48
SIZE(prb_desc)=24
SIZE(printk_info)=88
SIZE(printk_ringbuffer)=88
";

    // Physical layout of the synthetic guest.
    const PRB_VAR: usize = 0x100;
    const PRB: usize = 0x200;
    const DESCS: usize = 0x1000;
    const INFOS: usize = 0x2000;
    const DATA: usize = 0x4000;

    fn put(mem: &mut [u8], at: usize, bytes: &[u8]) {
        mem[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// A lockless ring buffer written as kernel/printk/printk_ringbuffer.c's writer does
    /// (data_alloc/get_next_lpos: a block that would cross the end starts the next wrap).
    struct Ring {
        mem: Vec<u8>,
        count_bits: u32,
        size_bits: u32,
        head_lpos: u64,
        first_id: u64,
        next_id: u64,
        seq: u64,
    }

    impl Ring {
        fn new(count_bits: u32, size_bits: u32, first_id: u64) -> Self {
            let mut mem = vec![0u8; 0x8000];
            put(&mut mem, PRB_VAR, &(BASE + PRB as u64).to_le_bytes());
            put(&mut mem, PRB, &count_bits.to_le_bytes());
            put(&mut mem, PRB + 8, &(BASE + DESCS as u64).to_le_bytes());
            put(&mut mem, PRB + 16, &(BASE + INFOS as u64).to_le_bytes());
            put(&mut mem, PRB + 48, &size_bits.to_le_bytes());
            put(&mut mem, PRB + 56, &(BASE + DATA as u64).to_le_bytes());
            Ring { mem, count_bits, size_bits, head_lpos: 0, first_id, next_id: first_id, seq: 0 }
        }

        fn desc(&mut self, id: u64, state: u64, begin: u64, next: u64) {
            let d = DESCS + (id % (1 << self.count_bits)) as usize * 24;
            put(&mut self.mem, d, &(id | state << 62).to_le_bytes());
            put(&mut self.mem, d + 8, &begin.to_le_bytes());
            put(&mut self.mem, d + 16, &next.to_le_bytes());
        }

        fn info(&mut self, id: u64, text_len: u16, ts: u64, caller: u32) {
            let i = INFOS + (id % (1 << self.count_bits)) as usize * 88;
            put(&mut self.mem, i, &self.seq.to_le_bytes());
            put(&mut self.mem, i + 8, &ts.to_le_bytes());
            put(&mut self.mem, i + 16, &text_len.to_le_bytes());
            put(&mut self.mem, i + 20, &caller.to_le_bytes());
        }

        /// A record in `state` (2: finalized), its text in the data ring.
        fn push(&mut self, text: &[u8], state: u64) -> u64 {
            let id = self.next_id;
            self.next_id = (id + 1) & DESC_ID_MASK;
            let ring = 1u64 << self.size_bits;
            let size = (8 + text.len() as u64).next_multiple_of(8);
            let begin = self.head_lpos;
            let mut next = begin + size;
            if begin / ring != next / ring {
                next = (next / ring) * ring + size;
            }
            let at = (next - size) % ring;
            put(&mut self.mem, DATA + at as usize, &id.to_le_bytes());
            put(&mut self.mem, DATA + at as usize + 8, text);
            self.head_lpos = next;
            self.desc(id, state, begin, next);
            self.info(id, text.len() as u16, 1_000_000 * (self.seq + 1), 0x8000_0001);
            self.seq += 1;
            id
        }

        /// A data-less record (printk_ringbuffer.c FAILED_LPOS).
        fn push_dataless(&mut self) -> u64 {
            let id = self.next_id;
            self.next_id = (id + 1) & DESC_ID_MASK;
            self.desc(id, DESC_FINALIZED, 1, 1);
            self.info(id, 0, 0, 0);
            self.seq += 1;
            id
        }

        fn ids(&mut self, tail: u64, head: u64) {
            put(&mut self.mem, PRB + 24, &head.to_le_bytes());
            put(&mut self.mem, PRB + 32, &tail.to_le_bytes());
        }

        /// Tail and head as the kernel keeps them: at most `count` descriptors.
        fn finish(&mut self) {
            let head = self.next_id.wrapping_sub(1) & DESC_ID_MASK;
            let span = self.next_id.wrapping_sub(self.first_id) & DESC_ID_MASK;
            let keep = span.min(1 << self.count_bits);
            let tail = head.wrapping_sub(keep - 1) & DESC_ID_MASK;
            self.ids(tail, head);
        }

        fn read(&self, extra: &str) -> Result<Vec<Record>, AnalysisError> {
            let info = VmcoreInfo::parse(&format!("{PRB_INFO}{extra}SYMBOL(prb)={:x}\n", BASE + PRB_VAR as u64));
            let sm = SliceMem::new(vec![(0, &self.mem)]);
            read_log(&KernelMem::linear(&sm, BASE), &info)
        }
    }

    fn texts(r: &[Record]) -> Vec<String> {
        r.iter().map(|r| r.text_lossy().into_owned()).collect()
    }

    #[test]
    fn lockless_ring_with_wraparound() {
        // 8 descriptors, 512 data bytes; IDs that cross DESC_ID_MASK.
        let mut ring = Ring::new(3, 9, DESC_ID_MASK - 4);
        for i in 0..13u32 {
            ring.push(format!("message number {i:02}, some padding").as_bytes(), DESC_FINALIZED);
        }
        ring.push_dataless();
        ring.push(b"committed, not yet finalized", DESC_COMMITTED);
        ring.push(b"reserved: being written", 0);
        ring.finish();
        let recs = ring.read("").unwrap();
        let mut want: Vec<String> = (8..13).map(|i| format!("message number {i:02}, some padding")).collect();
        want.push("committed, not yet finalized".into());
        assert_eq!(texts(&recs), want);
        assert_eq!(recs[0].seq, 8);
        assert_eq!(recs[0].ts_nsec, 9_000_000);
        assert_eq!(recs[0].caller_id, 0x8000_0001);
        assert_eq!(format_dmesg(&recs[..1]), "[    0.009000] message number 08, some padding\n");
    }

    #[test]
    fn lockless_wrapped_block() {
        // A block that would cross the end of a 64-byte ring is written at its start (over the
        // first record, which the writer made reusable).
        let mut ring = Ring::new(2, 6, 0);
        let old = ring.push(b"0123456789abcdef", DESC_FINALIZED); // 24 bytes at 0
        ring.push(b"0123456789abcdef01234567", DESC_FINALIZED); // 32 bytes at 24
        let id = ring.push(b"wrapped text", DESC_FINALIZED); // 24 bytes: 56 wraps to 0
        ring.desc(old, 3, 0, 24);
        ring.finish();
        let d = DESCS + id as usize * 24;
        assert_eq!(le_u64(&ring.mem, (d + 8) as u64), Some(56));
        assert_eq!(le_u64(&ring.mem, (d + 16) as u64), Some(64 + 24));
        assert_eq!(texts(&ring.read("").unwrap()), ["0123456789abcdef01234567", "wrapped text"]);
    }

    #[test]
    fn lockless_level_and_facility_where_vmcoreinfo_has_them() {
        let mut ring = Ring::new(2, 8, 0);
        let id = ring.push(b"x", DESC_FINALIZED);
        put(&mut ring.mem, INFOS + id as usize * 88 + 18, &[3, 6]);
        ring.finish();
        let r = ring.read("OFFSET(printk_info.facility)=18\nOFFSET(printk_info.level)=19\n").unwrap();
        assert_eq!((r[0].facility, r[0].level), (3, 6));
        let r = ring.read("").unwrap();
        assert_eq!((r[0].facility, r[0].level), (0, 0));
    }

    fn quick<T>(f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let v = f();
        assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
        v
    }

    #[test]
    fn lockless_hostile() {
        let mut ring = Ring::new(3, 8, 0);
        for i in 0..4 {
            ring.push(format!("record {i}").as_bytes(), DESC_FINALIZED);
        }
        ring.finish();
        assert_eq!(ring.read("").unwrap().len(), 4);

        // text_len beyond the block: truncated to it (makedumpfile's "truncated messages").
        let mut r = Ring { mem: ring.mem.clone(), ..Ring::new(3, 8, 0) };
        put(&mut r.mem, INFOS + 16, &u16::MAX.to_le_bytes());
        let recs = quick(|| r.read("")).unwrap();
        assert_eq!(recs[0].text.len(), 16 - 8);
        assert!(recs[0].text.starts_with(b"record 0"));

        // A block whose next is below its begin and below the ID: no panic, bounded text.
        put(&mut r.mem, DESCS + 8, &200u64.to_le_bytes());
        put(&mut r.mem, DESCS + 16, &4u64.to_le_bytes());
        let recs = quick(|| r.read("")).unwrap();
        assert!(recs[0].text.len() <= 256);

        // Huge count_bits, size_bits: refused without reading.
        let mut r = Ring { mem: ring.mem.clone(), ..Ring::new(3, 8, 0) };
        put(&mut r.mem, PRB, &63u32.to_le_bytes());
        assert!(matches!(quick(|| r.read("")), Err(AnalysisError::Implausible(_))));
        put(&mut r.mem, PRB, &20u32.to_le_bytes());
        assert!(matches!(quick(|| r.read("")), Err(AnalysisError::Memory(_))));
        let mut r = Ring { mem: ring.mem.clone(), ..Ring::new(3, 8, 0) };
        put(&mut r.mem, PRB + 48, &40u32.to_le_bytes());
        assert!(matches!(quick(|| r.read("")), Err(AnalysisError::Implausible(_))));

        // IDs that never meet (tail after head, flag bits set): at most one pass of the ring.
        for (tail, head) in [(5u64, 3u64), (0, 1 << 61), (u64::MAX, 7), (3 | 1 << 63, 3)] {
            let mut r = Ring { mem: ring.mem.clone(), ..Ring::new(3, 8, 0) };
            r.ids(tail, head);
            let recs = quick(|| r.read("")).unwrap();
            assert!(recs.len() <= 8, "{tail:#x}..{head:#x}: {}", recs.len());
        }

        // Absurd SIZE/OFFSET in VMCOREINFO, a prb that points nowhere.
        assert!(ring.read("SIZE(prb_desc)=0\n").is_ok(), "the first of duplicate keys wins");
        let mut r = Ring { mem: ring.mem.clone(), ..Ring::new(3, 8, 0) };
        put(&mut r.mem, PRB_VAR, &0xdead_0000_0000u64.to_le_bytes());
        assert!(matches!(quick(|| r.read("")), Err(AnalysisError::Memory(_))));
        let info = VmcoreInfo::parse(&format!(
            "{}SIZE(prb_desc)=99999999\nSYMBOL(prb)={:x}\n",
            PRB_INFO.replace("SIZE(prb_desc)=24\n", ""),
            BASE + PRB_VAR as u64
        ));
        let sm = SliceMem::new(vec![(0, &ring.mem)]);
        assert!(matches!(read_log(&KernelMem::linear(&sm, BASE), &info), Err(AnalysisError::Implausible(_))));
    }

    const LOG_INFO: &str = "SIZE(printk_log)=16
OFFSET(printk_log.ts_nsec)=0
OFFSET(printk_log.len)=8
OFFSET(printk_log.text_len)=10
OFFSET(printk_log.dict_len)=12
";
    const LOG_BUF_VAR: usize = 0x100;
    const LOG_BUF_LEN: usize = 0x108;
    const FIRST: usize = 0x110;
    const NEXT: usize = 0x118;
    const LOG_BUF: usize = 0x1000;

    /// A `struct printk_log` record at `at` in the buffer: header, text, dictionary, aligned to 8.
    fn log_rec(mem: &mut [u8], at: usize, ts: u64, text: &[u8], dict: &[u8]) -> usize {
        let len = (16 + text.len() + dict.len()).next_multiple_of(8);
        let a = LOG_BUF + at;
        put(mem, a, &ts.to_le_bytes());
        put(mem, a + 8, &(len as u16).to_le_bytes());
        put(mem, a + 10, &(text.len() as u16).to_le_bytes());
        put(mem, a + 12, &(dict.len() as u16).to_le_bytes());
        put(mem, a + 16, text);
        put(mem, a + 16 + text.len(), dict);
        at + len
    }

    fn read_log_buf_mem(mem: &[u8], first: u32, next: u32, len: i32) -> Result<Vec<Record>, AnalysisError> {
        let mut mem = mem.to_vec();
        put(&mut mem, LOG_BUF_VAR, &(BASE + LOG_BUF as u64).to_le_bytes());
        put(&mut mem, LOG_BUF_LEN, &len.to_le_bytes());
        put(&mut mem, FIRST, &first.to_le_bytes());
        put(&mut mem, NEXT, &next.to_le_bytes());
        let info = VmcoreInfo::parse(&format!(
            "{LOG_INFO}SYMBOL(log_buf)={:x}\nSYMBOL(log_buf_len)={:x}\nSYMBOL(log_first_idx)={:x}\nSYMBOL(log_next_idx)={:x}\n",
            BASE + LOG_BUF_VAR as u64,
            BASE + LOG_BUF_LEN as u64,
            BASE + FIRST as u64,
            BASE + NEXT as u64
        ));
        let sm = SliceMem::new(vec![(0, &mem)]);
        quick(|| read_log(&KernelMem::linear(&sm, BASE), &info))
    }

    #[test]
    fn log_buf_with_wraparound() {
        let mut mem = vec![0u8; 0x2000];
        // 128 bytes: A at 48, the end-of-buffer marker (len 0) at 96, then B at 0.
        let end = log_rec(&mut mem, 48, 1_500_000_000, b"first\nsecond line", b"SUBSYSTEM=pci");
        assert_eq!(end, 96);
        let next = log_rec(&mut mem, 0, 2_000_001_000, b"after the wrap", b"");
        let recs = read_log_buf_mem(&mem, 48, next as u32, 128).unwrap();
        assert_eq!(texts(&recs), ["first\nsecond line", "after the wrap"]);
        assert_eq!(
            format_dmesg(&recs),
            "[    1.500000] first\n               second line\n[    2.000001] after the wrap\n"
        );
        // Empty: first == next.
        assert!(read_log_buf_mem(&mem, 48, 48, 128).unwrap().is_empty());
    }

    #[test]
    fn log_buf_hostile() {
        let mut mem = vec![0u8; 0x2000];
        let end = log_rec(&mut mem, 0, 1, b"one", b"");
        // A zero-length record: read the one at the start again and go after it, forever.
        put(&mut mem, LOG_BUF + end + 8, &0u16.to_le_bytes());
        let recs = read_log_buf_mem(&mem, 0, 100, 128).unwrap();
        assert!(recs.len() <= 2);
        // text_len beyond the buffer.
        put(&mut mem, LOG_BUF + 10, &u16::MAX.to_le_bytes());
        let recs = read_log_buf_mem(&mem, 0, 100, 128).unwrap();
        assert_eq!(recs[0].text.len(), 128 - 16);
        // log_buf_len and first index out of range.
        assert!(matches!(read_log_buf_mem(&mem, 0, 8, -1), Err(AnalysisError::Implausible(_))));
        assert!(matches!(read_log_buf_mem(&mem, 0, 8, i32::MAX), Err(AnalysisError::Implausible(_))));
        assert!(matches!(read_log_buf_mem(&mem, 120, 8, 128), Err(AnalysisError::Implausible(_))));
        // A buffer past the memory.
        assert!(matches!(read_log_buf_mem(&mem, 0, 8, 1 << 20), Err(AnalysisError::Memory(_))));
    }

    #[test]
    fn plain_text_log_buf_is_not_read() {
        let info = VmcoreInfo::parse("SYMBOL(log_buf)=1000\nSYMBOL(log_buf_len)=1008\nSYMBOL(log_end)=1010\n");
        let mem = vec![0u8; 16];
        let sm = SliceMem::new(vec![(0, &mem)]);
        assert!(matches!(read_log(&KernelMem::linear(&sm, 0), &info), Err(AnalysisError::Missing(_))));
        assert!(matches!(read_log(&KernelMem::linear(&sm, 0), &VmcoreInfo::parse("")), Err(AnalysisError::Missing(_))));
    }

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
