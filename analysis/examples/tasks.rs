//! Checks the BTF, task and module readers on a vmcore with addresses from the debug
//! vmlinux's symbol table (kallsyms not needed):
//! `cargo run -p crash-analysis --example tasks -- VMCORE VMLINUX`.
//! Prints the blocked tasks (the first frame: the saved `ret_addr`), each CPU's current task,
//! and the modules with a few of their symbols symbolized.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;

use crash_analysis::btf::Btf;
use crash_analysis::modules::Modules;
use crash_analysis::tasks::{self, TaskLayout};
use crash_analysis::{Frame, KernelMem};
use kdump::{KdumpFile, OutOfRange, PhysMem, VmcoreInfo};

struct KdumpMem {
    k: KdumpFile,
    f: RefCell<File>,
}

impl PhysMem for KdumpMem {
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        let err = OutOfRange { paddr, len: buf.len() };
        let mut done = 0;
        while done < buf.len() {
            let pa = paddr + done as u64;
            let pfn = pa / 4096;
            let off = (pa % 4096) as usize;
            let n = (4096 - off).min(buf.len() - done);
            let page = self.k.read_page(&mut *self.f.borrow_mut(), pfn).map_err(|_| err)?.ok_or(err)?;
            buf[done..done + n].copy_from_slice(&page[off..off + n]);
            done += n;
        }
        Ok(())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = std::path::Path::new(&args[1]);
    let mut magic = [0u8; 4];
    std::io::Read::read_exact(&mut File::open(path).unwrap(), &mut magic).unwrap();
    let (mem, info): (Box<dyn PhysMem>, VmcoreInfo) = if &magic == b"\x7fELF" {
        let e = kdump::elf::ElfVmcore::open(path).unwrap();
        let info = e.vmcoreinfo().expect("VMCOREINFO");
        (Box::new(e), info)
    } else {
        let mut f = File::open(path).unwrap();
        let k = KdumpFile::parse(&mut f).unwrap();
        let info = VmcoreInfo::parse(k.vmcoreinfo.as_deref().expect("VMCOREINFO"));
        (Box::new(KdumpMem { k, f: RefCell::new(f) }), info)
    };
    let koff = info.kernel_offset().unwrap_or(0);
    let nm = std::process::Command::new("nm").arg(&args[2]).output().expect("nm");
    let mut syms = HashMap::new();
    let mut text = Vec::new();
    for line in String::from_utf8_lossy(&nm.stdout).lines() {
        let mut w = line.split_whitespace();
        let (Some(a), Some(t), Some(n)) = (w.next(), w.next(), w.next()) else { continue };
        let Ok(a) = u64::from_str_radix(a, 16) else { continue };
        // Per-CPU symbols (small, absolute) are not relocated.
        let a = if a >= 0xffff_ffff_8000_0000 { a + koff } else { a };
        syms.insert(n.to_string(), a);
        if matches!(t, "t" | "T") {
            text.push((a, n.to_string()));
        }
    }
    text.sort();
    let sym = |a: u64| -> String {
        let i = text.partition_point(|t| t.0 <= a);
        match i.checked_sub(1).and_then(|i| text.get(i)) {
            Some((s, n)) => format!("{n}+{:#x}", a - s),
            None => "?".into(),
        }
    };
    let kmem = KernelMem::from_vmcoreinfo(&*mem, &info).unwrap();
    let t = std::time::Instant::now();
    let btf = Btf::read_at(&kmem, syms["__start_BTF"], syms["__stop_BTF"]).unwrap();
    println!("BTF: {} types, read in {:?}", btf.len(), t.elapsed());
    for (s, p) in [
        ("task_struct", "__state"),
        ("task_struct", "tasks"),
        ("task_struct", "pid"),
        ("task_struct", "comm"),
        ("task_struct", "thread.sp"),
        ("task_struct", "stack"),
        ("task_struct", "signal"),
        ("task_struct", "thread_node"),
        ("task_struct", "thread_group"),
        ("signal_struct", "thread_head"),
        ("inactive_task_frame", "bp"),
        ("inactive_task_frame", "ret_addr"),
        ("module", "list"),
        ("module", "name"),
        ("module", "core_layout.base"),
        ("module", "core_layout.size"),
        ("module", "kallsyms"),
        ("mod_kallsyms", "symtab"),
        ("mod_kallsyms", "num_symtab"),
        ("mod_kallsyms", "strtab"),
    ] {
        println!("  {s}.{p}: {:?}", btf.member(s, p));
    }
    for s in ["task_struct", "inactive_task_frame", "module", "signal_struct"] {
        println!("  sizeof({s}) = {:?}", btf.size_of(s));
    }
    let t = std::time::Instant::now();
    let l = TaskLayout::new(&btf).unwrap();
    println!("{l:?} in {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let all = tasks::task_addrs(&kmem, &l, syms["init_task"]).unwrap();
    println!("{} tasks walked in {:?}", all.len(), t.elapsed());
    if std::env::var_os("ALL").is_some() {
        for &a in &all {
            let (pid, comm) = tasks::pid_comm(&kmem, &l, a).unwrap_or_default();
            println!("task {a:#x} {pid} {comm} {:#x}", tasks::state(&kmem, &l, a).unwrap_or(0));
        }
    }
    let blocked = tasks::blocked_from(&kmem, &l, syms["init_task"], &mut |r| {
        vec![Frame { address: format!("{:#x}", r.rip), symbol: Some(sym(r.rip)), ..Default::default() }]
    })
    .unwrap();
    for b in &blocked {
        let f = b.frames.first();
        println!(
            "blocked {} {} {} {:?} {:?}",
            b.pid,
            b.comm,
            b.state,
            f.map(|f| f.address.clone()),
            f.and_then(|f| f.symbol.clone())
        );
    }
    for cpu in 0..8 {
        if let Some(c) = tasks::current_at(&kmem, &l, syms["current_task"], syms["__per_cpu_offset"], cpu) {
            println!("cpu {cpu}: current {c:?}");
        }
    }
    let m = Modules::read_at(&kmem, &btf, syms["modules"]).unwrap();
    for md in &m.modules {
        println!(
            "module {} at {:#x}: core {:#x} size {:#x} text {:#x}, init {:#x}+{:#x}, {} symbols",
            md.name,
            md.address,
            md.core.base,
            md.core.size,
            md.core.text_size,
            md.init.base,
            md.init.size,
            md.symbols.len()
        );
        for s in md.symbols.iter().take(3) {
            println!("  {:#x} {} -> {:?}", s.value, s.name, m.symbolize(s.value + 1).map(|s| s.display()));
        }
    }
    for a in args.iter().skip(3) {
        let a = u64::from_str_radix(a.trim_start_matches("0x"), 16).unwrap();
        println!("sym {a:#x}: {:?}", m.symbolize(a));
    }
}
