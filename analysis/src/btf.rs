//! The kernel's BTF (BPF Type Format: the vmlinux type information, `CONFIG_DEBUG_INFO_BTF`),
//! read from guest memory between `__start_BTF` and `__stop_BTF`, for the layout of the few
//! structures the analysis walks (`task_struct`, `module`, ...) without the debug vmlinux.
//!
//! Followed: `include/uapi/linux/btf.h` (the header, `struct btf_type`, each `BTF_KIND_*` and
//! the data that trails it) and `kernel/bpf/btf.c` (`btf_type_size`, member offsets with
//! `kind_flag`), Linux v6.1. Type ids start at 1 (0 is `void`), in the order of the type
//! section. Every length is checked and capped, and every walk through the types is
//! depth-limited: the blob is guest memory.

use std::collections::HashMap;

use kdump::PhysMem;

use crate::kallsyms::Kallsyms;
use crate::{AnalysisError, KernelMem};

/// `BTF_MAGIC`.
pub const BTF_MAGIC: u16 = 0xeb9f;
/// The largest BTF read (vmlinux's is about 5 MiB in 6.1).
pub const MAX_BTF: u64 = 64 << 20;
/// The most types parsed (vmlinux has about 130k in 6.1).
pub const MAX_TYPES: usize = 2_000_000;
/// The deepest chain of typedefs, modifiers, arrays or anonymous members followed.
pub const MAX_DEPTH: usize = 32;
/// Reads of the blob, in pieces of this many bytes.
const CHUNK: usize = 1 << 20;
/// `sizeof(struct btf_header)` in v6.1 (`hdr_len` may be larger, for newer fields).
const HDR_MIN: usize = 24;
/// `sizeof(struct btf_type)`.
const TYPE_LEN: usize = 12;

/// `BTF_KIND_*` (`include/uapi/linux/btf.h`).
pub mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

/// The bytes that trail a `struct btf_type` of `kind` with `vlen` entries, as
/// `btf_type_size` (`kernel/bpf/btf.c`) counts them; `None` for an unknown kind.
fn trailing(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        // Its encoding (`__u32`), `struct btf_var` (`linkage`), `struct btf_decl_tag`.
        kind::INT | kind::VAR | kind::DECL_TAG => 4,
        // `struct btf_array`: type, index_type, nelems.
        kind::ARRAY => 12,
        // `struct btf_member`: name_off, type, offset; `struct btf_var_secinfo`: type,
        // offset, size; `struct btf_enum64`: name_off, val_lo32, val_hi32.
        kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => vlen * 12,
        // `struct btf_enum`: name_off, val; `struct btf_param`: name_off, type.
        kind::ENUM | kind::FUNC_PROTO => vlen * 8,
        0 | kind::PTR | kind::FWD | kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::FUNC => 0,
        kind::FLOAT | kind::TYPE_TAG => 0,
        _ => return None,
    })
}

fn le32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off.checked_add(4)?)?.try_into().ok()?))
}

fn implausible(what: impl Into<String>) -> AnalysisError {
    AnalysisError::Implausible(what.into())
}

/// One type: its `struct btf_type` and the data after it.
#[derive(Debug, Clone, Copy)]
pub struct Type<'a> {
    pub id: u32,
    pub name_off: u32,
    pub kind: u32,
    pub vlen: usize,
    pub kind_flag: bool,
    /// `size` or `type`, by kind.
    pub size_or_type: u32,
    data: &'a [u8],
}

/// A member found by [`Btf::member`]: where it is and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Bytes from the start of the outer structure.
    pub offset: u64,
    /// Its type id (as declared: may be a typedef or a modifier).
    pub type_id: u32,
    /// Its size in bytes.
    pub size: u64,
}

/// The parsed BTF: the type and string sections, and where each type starts.
#[derive(Debug, Clone, Default)]
pub struct Btf {
    types: Vec<u8>,
    strings: Vec<u8>,
    /// `starts[id - 1]`: the offset of type `id` in `types`.
    starts: Vec<u32>,
    /// Named structs and unions: the first definition of each name.
    structs: HashMap<Vec<u8>, u32>,
}

impl Btf {
    /// The vmlinux BTF, found through kallsyms' `__start_BTF` and `__stop_BTF`.
    pub fn read<M: PhysMem + ?Sized>(kmem: &KernelMem<'_, M>, syms: &Kallsyms) -> Result<Self, AnalysisError> {
        let start = syms.lookup("__start_BTF").ok_or_else(|| AnalysisError::NoSymbol("__start_BTF".into()))?;
        let stop = syms.lookup("__stop_BTF").ok_or_else(|| AnalysisError::NoSymbol("__stop_BTF".into()))?;
        Self::read_at(kmem, start, stop)
    }

    /// The BTF in `[start, stop)` of kernel virtual memory.
    pub fn read_at<M: PhysMem + ?Sized>(kmem: &KernelMem<'_, M>, start: u64, stop: u64) -> Result<Self, AnalysisError> {
        let len = stop.checked_sub(start).ok_or_else(|| implausible(format!("BTF at {start:#x}..{stop:#x}")))?;
        if len > MAX_BTF {
            return Err(implausible(format!("BTF of {len} bytes")));
        }
        // Only what the header says is used, so read it first.
        let head = kmem.bytes(start, HDR_MIN.min(len as usize))?;
        let (_, end) = header(&head, len as usize)?;
        let mut blob = Vec::with_capacity(end);
        while blob.len() < end {
            let n = CHUNK.min(end - blob.len());
            blob.extend_from_slice(&kmem.bytes(start + blob.len() as u64, n)?);
        }
        Self::parse(&blob)
    }

    /// Parses a BTF blob (the header, the type section, the string section).
    pub fn parse(blob: &[u8]) -> Result<Self, AnalysisError> {
        if blob.len() as u64 > MAX_BTF {
            return Err(implausible(format!("BTF of {} bytes", blob.len())));
        }
        let (h, _) = header(blob, blob.len())?;
        let types = blob.get(h.types.clone()).ok_or_else(|| implausible("BTF type section"))?.to_vec();
        let strings = blob.get(h.strings.clone()).ok_or_else(|| implausible("BTF string section"))?.to_vec();
        if strings.first().is_some_and(|&c| c != 0) {
            return Err(implausible("BTF string section (not starting with an empty string)"));
        }
        let mut starts = Vec::new();
        let mut off = 0usize;
        while off < types.len() {
            if starts.len() >= MAX_TYPES {
                return Err(implausible(format!("BTF with over {MAX_TYPES} types")));
            }
            let info = le32(&types, off + 4).ok_or_else(|| implausible(format!("BTF type at {off:#x} (truncated)")))?;
            let (k, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            let extra = trailing(k, vlen).ok_or_else(|| implausible(format!("BTF kind {k} at {off:#x}")))?;
            let next = off + TYPE_LEN + extra;
            if next > types.len() {
                return Err(implausible(format!("BTF type at {off:#x} (runs past the section)")));
            }
            starts.push(off as u32);
            off = next;
        }
        let mut btf = Self { types, strings, starts, structs: HashMap::new() };
        for id in 1..=btf.starts.len() as u32 {
            if let Some(t) = btf.ty(id).filter(|t| matches!(t.kind, kind::STRUCT | kind::UNION) && t.name_off != 0) {
                let name = btf.name(t.name_off).to_vec();
                if !name.is_empty() {
                    btf.structs.entry(name).or_insert(id);
                }
            }
        }
        Ok(btf)
    }

    /// How many types there are (the largest id).
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Type `id` (1-based; 0 is `void`, which has no entry).
    pub fn ty(&self, id: u32) -> Option<Type<'_>> {
        let start = *self.starts.get((id as usize).checked_sub(1)?)? as usize;
        let name_off = le32(&self.types, start)?;
        let info = le32(&self.types, start + 4)?;
        let size_or_type = le32(&self.types, start + 8)?;
        let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
        let data = self.types.get(start + TYPE_LEN..start + TYPE_LEN + trailing(kind, vlen)?)?;
        Some(Type { id, name_off, kind, vlen, kind_flag: info >> 31 != 0, size_or_type, data })
    }

    /// The string at `off` of the string section (empty where it is out of range).
    pub fn name(&self, off: u32) -> &[u8] {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        &s[..s.iter().position(|&c| c == 0).unwrap_or(s.len())]
    }

    /// The id of the struct or union named `name` (its definition, not a forward declaration).
    pub fn find_struct(&self, name: &str) -> Option<u32> {
        self.structs.get(name.as_bytes()).copied()
    }

    /// `id` with its typedefs and `const`/`volatile`/`restrict`/type tags taken off.
    pub fn resolve(&self, mut id: u32) -> Result<u32, AnalysisError> {
        for _ in 0..MAX_DEPTH {
            if id == 0 {
                return Ok(0);
            }
            let t = self.ty(id).ok_or_else(|| implausible(format!("BTF type id {id}")))?;
            match t.kind {
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => id = t.size_or_type,
                _ => return Ok(id),
            }
        }
        Err(implausible(format!("BTF type chain at {id} (too deep)")))
    }

    /// The size in bytes of type `id`, as `btf_type_id_size` resolves it.
    pub fn type_size(&self, id: u32) -> Result<u64, AnalysisError> {
        self.size_at(id, 0)
    }

    fn size_at(&self, id: u32, depth: usize) -> Result<u64, AnalysisError> {
        if depth > MAX_DEPTH {
            return Err(implausible(format!("BTF type {id} (nested too deep)")));
        }
        let id = self.resolve(id)?;
        let t = self.ty(id).ok_or_else(|| implausible(format!("BTF type id {id}")))?;
        match t.kind {
            kind::INT | kind::ENUM | kind::ENUM64 | kind::STRUCT | kind::UNION | kind::FLOAT | kind::DATASEC => {
                Ok(u64::from(t.size_or_type))
            }
            kind::PTR => Ok(8),
            kind::ARRAY => {
                let (elem, n) = self.array(id)?;
                self.size_at(elem, depth + 1)?
                    .checked_mul(u64::from(n))
                    .ok_or_else(|| implausible(format!("BTF array {id} size")))
            }
            k => Err(implausible(format!("BTF type {id} of kind {k} (no size)"))),
        }
    }

    /// An array's element type and element count.
    pub fn array(&self, id: u32) -> Result<(u32, u32), AnalysisError> {
        let t = self.ty(id).filter(|t| t.kind == kind::ARRAY);
        let t = t.ok_or_else(|| implausible(format!("BTF type {id} (not an array)")))?;
        Ok((le32(t.data, 0).unwrap_or(0), le32(t.data, 8).unwrap_or(0)))
    }

    /// The size of the struct or union named `name`.
    pub fn size_of(&self, name: &str) -> Result<u64, AnalysisError> {
        let id = self.find_struct(name).ok_or_else(|| AnalysisError::Missing(format!("BTF struct {name}")))?;
        self.type_size(id)
    }

    /// The member at `path` of the struct or union named `name`: `a.b.c` steps into nested
    /// structures, `a[3]` into an array's element; members of anonymous structs and unions are
    /// found as the C compiler finds them.
    pub fn member(&self, name: &str, path: &str) -> Result<Member, AnalysisError> {
        let id = self.find_struct(name).ok_or_else(|| AnalysisError::Missing(format!("BTF struct {name}")))?;
        self.member_of(id, path).map_err(|e| match e {
            AnalysisError::Missing(_) => AnalysisError::Missing(format!("BTF member {name}.{path}")),
            e => e,
        })
    }

    /// The byte offset of `name.path` (see [`member`](Self::member)).
    pub fn offset(&self, name: &str, path: &str) -> Result<u64, AnalysisError> {
        Ok(self.member(name, path)?.offset)
    }

    /// The member at `path` in struct or union type `id`.
    pub fn member_of(&self, id: u32, path: &str) -> Result<Member, AnalysisError> {
        let mut cur = id;
        let mut offset = 0u64;
        let mut type_id = id;
        for step in path.split('.') {
            let (field, index) = match step.split_once('[') {
                Some((f, rest)) => {
                    let n = rest.strip_suffix(']').and_then(|n| n.parse::<u64>().ok());
                    (f, Some(n.ok_or_else(|| AnalysisError::Missing(format!("member path {path}")))?))
                }
                None => (step, None),
            };
            let (off, tid) = self
                .find_member(self.resolve(cur)?, field.as_bytes(), 0)?
                .ok_or_else(|| AnalysisError::Missing(format!("member {field}")))?;
            offset = offset.checked_add(off).ok_or_else(|| implausible("BTF member offset"))?;
            type_id = tid;
            if let Some(i) = index {
                let (elem, n) = self.array(self.resolve(tid)?)?;
                if i >= u64::from(n) {
                    return Err(AnalysisError::Missing(format!("{field}[{i}] (the array has {n})")));
                }
                let at = self.type_size(elem)?.checked_mul(i).ok_or_else(|| implausible("BTF array index"))?;
                offset = offset.checked_add(at).ok_or_else(|| implausible("BTF member offset"))?;
                type_id = elem;
            }
            cur = type_id;
        }
        Ok(Member { offset, type_id, size: self.type_size(type_id)? })
    }

    /// `(byte offset, type)` of member `field` in struct/union `id`, looking into anonymous
    /// members (their name is empty).
    fn find_member(&self, id: u32, field: &[u8], depth: usize) -> Result<Option<(u64, u32)>, AnalysisError> {
        if depth > MAX_DEPTH {
            return Err(implausible(format!("BTF anonymous members at {id} (nested too deep)")));
        }
        let t = self.ty(id).ok_or_else(|| implausible(format!("BTF type id {id}")))?;
        if !matches!(t.kind, kind::STRUCT | kind::UNION) {
            return Err(implausible(format!("BTF type {id} (not a struct or union)")));
        }
        for i in 0..t.vlen {
            let m = |k: usize| le32(t.data, i * 12 + k).unwrap_or(0);
            let (name_off, mtype, moff) = (m(0), m(4), m(8));
            // `kind_flag`: bits 0-23 the bit offset, 24-31 a bitfield's size (`BTF_MEMBER_BIT_OFFSET`).
            let bits = if t.kind_flag { moff & 0x00ff_ffff } else { moff };
            let name = self.name(name_off);
            if name == field {
                if bits % 8 != 0 {
                    return Err(implausible(format!("BTF member {} (a bitfield)", String::from_utf8_lossy(field))));
                }
                return Ok(Some((u64::from(bits / 8), mtype)));
            }
            if name.is_empty() && bits % 8 == 0 {
                let inner = self.resolve(mtype)?;
                if self.ty(inner).is_some_and(|t| matches!(t.kind, kind::STRUCT | kind::UNION)) {
                    if let Some((off, tid)) = self.find_member(inner, field, depth + 1)? {
                        return Ok(Some((u64::from(bits / 8) + off, tid)));
                    }
                }
            }
        }
        Ok(None)
    }
}

/// Where the sections are.
struct Header {
    types: std::ops::Range<usize>,
    strings: std::ops::Range<usize>,
}

/// The header of a blob of `len` bytes (only its first `HDR_MIN` are in `b`), and the end of
/// the last section.
fn header(b: &[u8], len: usize) -> Result<(Header, usize), AnalysisError> {
    let field = |off: usize| le32(b, off).ok_or_else(|| implausible(format!("BTF header ({len} bytes)")));
    let magic = u16::from_le_bytes([*b.first().unwrap_or(&0), *b.get(1).unwrap_or(&0)]);
    if magic != BTF_MAGIC {
        return Err(implausible(format!("BTF magic {magic:#06x}")));
    }
    let version = b.get(2).copied().unwrap_or(0);
    if version != 1 {
        return Err(implausible(format!("BTF version {version}")));
    }
    let hdr_len = field(4)? as usize;
    if !(HDR_MIN..=4096).contains(&hdr_len) {
        return Err(implausible(format!("BTF header length {hdr_len}")));
    }
    let sect = |off: usize, what: &str| -> Result<std::ops::Range<usize>, AnalysisError> {
        let start = hdr_len + field(off)? as usize;
        let end = start + field(off + 4)? as usize;
        if end > len {
            return Err(implausible(format!("BTF {what} section ends at {end}, past {len}")));
        }
        Ok(start..end)
    };
    let types = sect(8, "type")?;
    let strings = sect(16, "string")?;
    let end = types.end.max(strings.end);
    Ok((Header { types, strings }, end))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kdump::SliceMem;

    /// A tiny BTF encoder for tests.
    #[derive(Default)]
    pub(crate) struct Enc {
        types: Vec<u8>,
        strings: Vec<u8>,
        next: u32,
    }

    impl Enc {
        pub(crate) fn new() -> Self {
            Self { types: Vec::new(), strings: vec![0], next: 1 }
        }

        pub(crate) fn s(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn head(&mut self, name: &str, kind: u32, vlen: u32, flag: bool, st: u32) -> u32 {
            let n = self.s(name);
            self.types.extend_from_slice(&n.to_le_bytes());
            self.types.extend_from_slice(&(vlen | kind << 24 | u32::from(flag) << 31).to_le_bytes());
            self.types.extend_from_slice(&st.to_le_bytes());
            let id = self.next;
            self.next += 1;
            id
        }

        fn words(&mut self, w: &[u32]) {
            for x in w {
                self.types.extend_from_slice(&x.to_le_bytes());
            }
        }

        pub(crate) fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.head(name, kind::INT, 0, false, size);
            self.words(&[size * 8]);
            id
        }

        pub(crate) fn ptr(&mut self, to: u32) -> u32 {
            self.head("", kind::PTR, 0, false, to)
        }

        pub(crate) fn typedef(&mut self, name: &str, to: u32) -> u32 {
            self.head(name, kind::TYPEDEF, 0, false, to)
        }

        pub(crate) fn volatile(&mut self, to: u32) -> u32 {
            self.head("", kind::VOLATILE, 0, false, to)
        }

        pub(crate) fn array(&mut self, elem: u32, index: u32, n: u32) -> u32 {
            let id = self.head("", kind::ARRAY, 0, false, 0);
            self.words(&[elem, index, n]);
            id
        }

        /// A struct (or union) with `(name, type, byte offset)` members.
        pub(crate) fn record(&mut self, union: bool, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            let k = if union { kind::UNION } else { kind::STRUCT };
            let id = self.head(name, k, members.len() as u32, false, size);
            for (n, t, off) in members {
                let n = self.s(n);
                self.words(&[n, *t, off * 8]);
            }
            id
        }

        pub(crate) fn fwd(&mut self, name: &str) -> u32 {
            self.head(name, kind::FWD, 0, false, 0)
        }

        pub(crate) fn func_proto(&mut self, ret: u32, params: &[u32]) -> u32 {
            let id = self.head("", kind::FUNC_PROTO, params.len() as u32, false, ret);
            for p in params {
                self.words(&[0, *p]);
            }
            id
        }

        pub(crate) fn enumeration(&mut self, name: &str, values: &[(&str, u32)]) -> u32 {
            let id = self.head(name, kind::ENUM, values.len() as u32, false, 4);
            for (n, v) in values {
                let n = self.s(n);
                self.words(&[n, *v]);
            }
            id
        }

        pub(crate) fn blob(&self) -> Vec<u8> {
            let mut b = Vec::new();
            b.extend_from_slice(&BTF_MAGIC.to_le_bytes());
            b.extend_from_slice(&[1, 0]);
            b.extend_from_slice(&24u32.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&(self.types.len() as u32).to_le_bytes());
            b.extend_from_slice(&(self.types.len() as u32).to_le_bytes());
            b.extend_from_slice(&(self.strings.len() as u32).to_le_bytes());
            b.extend_from_slice(&self.types);
            b.extend_from_slice(&self.strings);
            b
        }
    }

    fn sample() -> Btf {
        let mut e = Enc::new();
        let int = e.int("int", 4);
        let ulong = e.int("long unsigned int", 8);
        let uint = e.int("unsigned int", 4);
        let pid_t = e.typedef("pid_t", int);
        let vstate = e.volatile(uint);
        let _fwd = e.fwd("task_struct");
        let char_t = e.int("char", 1);
        let comm = e.array(char_t, int, 16);
        let _proto = e.func_proto(int, &[int, ulong]);
        let _en = e.enumeration("e", &[("A", 1), ("B", 2)]);
        let list = e.record(false, "list_head", 16, &[("next", 0, 0), ("prev", 0, 8)]);
        let thread = e.record(false, "thread_struct", 64, &[("es", ulong, 0), ("sp", ulong, 24)]);
        let anon_s = e.record(false, "", 16, &[("pid", pid_t, 0), ("tgid", pid_t, 4)]);
        let anon_u = e.record(true, "", 16, &[("x", ulong, 0), ("", anon_s, 0)]);
        let task = e.record(
            false,
            "task_struct",
            512,
            &[
                ("__state", vstate, 16),
                ("tasks", list, 32),
                ("", anon_u, 64),
                ("comm", comm, 100),
                ("thread", thread, 192),
            ],
        );
        let ptr = e.ptr(task);
        let _arr = e.array(thread, int, 3);
        e.record(false, "holder", 200, &[("t", ptr, 0), ("threads", _arr, 8)]);
        Btf::parse(&e.blob()).unwrap()
    }

    #[test]
    fn members_and_sizes() {
        let b = sample();
        assert_eq!(b.offset("task_struct", "__state").unwrap(), 16);
        assert_eq!(b.member("task_struct", "__state").unwrap().size, 4);
        assert_eq!(b.offset("task_struct", "tasks").unwrap(), 32);
        let pid = b.member("task_struct", "pid").unwrap();
        assert_eq!((pid.offset, pid.size), (64, 4));
        assert_eq!(b.offset("task_struct", "tgid").unwrap(), 68);
        let comm = b.member("task_struct", "comm").unwrap();
        assert_eq!((comm.offset, comm.size), (100, 16));
        assert_eq!(b.offset("task_struct", "thread.sp").unwrap(), 192 + 24);
        assert_eq!(b.size_of("task_struct").unwrap(), 512);
        assert_eq!(b.size_of("list_head").unwrap(), 16);
        assert_eq!(b.member("holder", "t").unwrap().size, 8);
        assert_eq!(b.member("holder", "threads").unwrap().size, 192);
        assert_eq!(b.offset("holder", "threads[2].sp").unwrap(), 8 + 128 + 24);
        assert!(matches!(b.member("holder", "threads[3]"), Err(AnalysisError::Missing(_))));
        assert!(matches!(b.member("task_struct", "nope"), Err(AnalysisError::Missing(_))));
        assert!(matches!(b.member("nope", "x"), Err(AnalysisError::Missing(_))));
        // The forward declaration is not the struct.
        assert!(b.find_struct("task_struct").is_some_and(|id| b.ty(id).unwrap().kind == kind::STRUCT));
    }

    #[test]
    fn read_from_memory() {
        let blob = sample_blob();
        let base = 0xffff_ffff_8200_0000u64;
        let mem = SliceMem::new(vec![(0x1000, &blob[..])]);
        let kmem = KernelMem::linear(&mem, base - 0x1000);
        let b = Btf::read_at(&kmem, base, base + blob.len() as u64).unwrap();
        assert_eq!(b.offset("task_struct", "thread.sp").unwrap(), 216);
        // A stop before the start, a length over the cap, a blob past the memory.
        assert!(Btf::read_at(&kmem, base, base - 1).is_err());
        assert!(Btf::read_at(&kmem, base, base + MAX_BTF + 1).is_err());
        let mut big = blob.clone();
        big[12..16].copy_from_slice(&(60u32 << 20).to_le_bytes());
        let mem = SliceMem::new(vec![(0x1000, &big[..])]);
        let kmem = KernelMem::linear(&mem, base - 0x1000);
        assert!(Btf::read_at(&kmem, base, base + (62 << 20)).is_err());
    }

    fn sample_blob() -> Vec<u8> {
        let mut e = Enc::new();
        let ulong = e.int("long unsigned int", 8);
        let thread = e.record(false, "thread_struct", 64, &[("sp", ulong, 24)]);
        e.record(false, "task_struct", 512, &[("thread", thread, 192)]);
        e.blob()
    }

    #[test]
    fn hostile() {
        let good = sample_blob();
        // Bad magic, version, header length, section past the end, truncated types.
        for (at, val) in [(0usize, 0u8), (2, 2), (4, 200), (12, 0xff), (20, 0xff)] {
            let mut b = good.clone();
            b[at] = val;
            if at == 4 {
                b[5] = 0x10;
            }
            assert!(Btf::parse(&b).is_err(), "byte {at}");
        }
        assert!(Btf::parse(&good[..10]).is_err());
        assert!(Btf::parse(&[]).is_err());
        // A vlen that runs past the section.
        let mut b = good.clone();
        b[24 + 16 + 4] = 0xff;
        assert!(Btf::parse(&b).is_err());
        // An unknown kind.
        let mut b = good.clone();
        b[24 + 7] = 30;
        assert!(Btf::parse(&b).is_err());
        // A typedef loop and a self-containing anonymous member: bounded, no panic.
        let mut e = Enc::new();
        let t1 = e.typedef("a", 2);
        let _t2 = e.typedef("b", t1);
        let s = e.record(false, "loop", 8, &[("", 4, 0)]);
        let _anon = e.record(false, "", 8, &[("", 4, 0)]);
        let arr = e.array(t1, t1, u32::MAX);
        e.record(false, "huge", 8, &[("a", arr, 0)]);
        let b = Btf::parse(&e.blob()).unwrap();
        assert!(b.resolve(t1).is_err());
        assert!(b.type_size(t1).is_err());
        assert!(b.member_of(s, "x").is_err());
        assert!(b.member("huge", "a").is_err());
        // Random bytes after a valid header never panic.
        let mut seed = 0x1234_5678u32;
        for _ in 0..200 {
            let mut b = good.clone();
            for _ in 0..8 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let i = 24 + (seed as usize >> 8) % (b.len() - 24);
                b[i] = (seed >> 3) as u8;
            }
            if let Ok(btf) = Btf::parse(&b) {
                let _ = btf.member("task_struct", "thread.sp");
                let _ = btf.size_of("task_struct");
            }
        }
    }
}
