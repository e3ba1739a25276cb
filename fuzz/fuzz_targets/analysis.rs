//! The analysis of a crashed guest's memory (`crash-analysis`) against hostile memory: the
//! printk ring buffer, the kallsyms and ORC tables, the crash notes, the BTF, the task list and
//! the stacks all come from the fuzzer's bytes, laid out where a VMCOREINFO (Debian 6.1's
//! layout, its symbols placed by the input's first bytes) says they are. Checked: it ends (the
//! run's timeout), never panics, and what it returns is bounded.

#![no_main]

use crash_analysis::{analyze_kernel, KernelMem, Regs, VcpuRegs};
use kdump::{SliceMem, VmcoreInfo};
use libfuzzer_sys::fuzz_target;

/// Kernel address of the memory's first byte.
const BASE: u64 = 0xffff_ffff_8000_0000;
/// The input's head: 16 little-endian u32 offsets into the memory.
const HEAD: usize = 64;

/// Debian 6.1's VMCOREINFO offsets and sizes (the symbols are the input's).
const LAYOUT: &str = "OSRELEASE=6.1.0-fuzz
PAGESIZE=4096
OFFSET(uts_namespace.name)=0
SIZE(printk_ringbuffer)=88
OFFSET(printk_ringbuffer.desc_ring)=0
OFFSET(printk_ringbuffer.text_data_ring)=48
OFFSET(printk_ringbuffer.fail)=80
SIZE(prb_desc_ring)=48
OFFSET(prb_desc_ring.count_bits)=0
OFFSET(prb_desc_ring.descs)=8
OFFSET(prb_desc_ring.infos)=16
OFFSET(prb_desc_ring.head_id)=24
OFFSET(prb_desc_ring.tail_id)=32
SIZE(prb_desc)=24
OFFSET(prb_desc.state_var)=0
OFFSET(prb_desc.text_blk_lpos)=8
SIZE(prb_data_blk_lpos)=16
OFFSET(prb_data_blk_lpos.begin)=0
OFFSET(prb_data_blk_lpos.next)=8
SIZE(printk_info)=88
OFFSET(printk_info.seq)=0
OFFSET(printk_info.ts_nsec)=8
OFFSET(printk_info.text_len)=16
OFFSET(printk_info.caller_id)=20
OFFSET(printk_info.dev_info)=24
SIZE(dev_printk_info)=64
OFFSET(dev_printk_info.subsystem)=0
LENGTH(printk_info_subsystem)=16
OFFSET(dev_printk_info.device)=16
LENGTH(printk_info_device)=48
SIZE(prb_data_ring)=32
OFFSET(prb_data_ring.size_bits)=0
OFFSET(prb_data_ring.data)=8
OFFSET(prb_data_ring.head_lpos)=16
OFFSET(prb_data_ring.tail_lpos)=24
SIZE(atomic_long_t)=8
OFFSET(atomic_long_t.counter)=0
SIZE(latched_seq)=24
OFFSET(latched_seq.val)=8
NUMBER(phys_base)=0
NUMBER(pgtable_l5_enabled)=0
KERNELOFFSET=0
";

/// The symbols the input places.
const SYMBOLS: [&str; 10] = [
    "prb",
    "init_uts_ns",
    "kallsyms_names",
    "kallsyms_num_syms",
    "kallsyms_token_table",
    "kallsyms_token_index",
    "kallsyms_offsets",
    "kallsyms_relative_base",
    "_stext",
    "init_top_pgt",
];

fuzz_target!(|data: &[u8]| {
    if data.len() < HEAD + 8 {
        return;
    }
    let (head, mem) = data.split_at(HEAD);
    let at = |i: usize| -> u64 {
        let b = head.get(i * 4..i * 4 + 4).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]);
        BASE + u64::from(u32::from_le_bytes(b)) % mem.len() as u64
    };
    let mut text = LAYOUT.to_string();
    for (i, name) in SYMBOLS.iter().enumerate() {
        text.push_str(&format!("SYMBOL({name})={:x}\n", at(i)));
    }
    let info = VmcoreInfo::parse(&text);
    let ram = SliceMem::new(vec![(0, mem)]);
    let kmem = KernelMem::linear(&ram, BASE);
    let regs = |n: usize| Regs { rip: at(n), rsp: at(n + 1), rbp: at(n + 2), ..Default::default() };
    let vcpus = [
        VcpuRegs { cpu: 0, regs: regs(10), cs: 0x10, gs_base: at(13), source: "vcpu" },
        VcpuRegs { cpu: 1, regs: regs(13), cs: 0x10, gs_base: at(15), source: "vcpu" },
    ];
    let out = analyze_kernel(&kmem, &info, &vcpus, 2);
    let _ = out.dmesg();
    let a = &out.analysis;
    assert!(a.cpus.len() <= 2);
    assert!(a.cpus.iter().all(|c| c.frames.len() <= 256));
    assert!(out.log.len() <= 1 << 20);
});
