//! Runs the analysis on a vmcore file (ELF, or kdump-compressed) and prints it:
//! `cargo run -p crash-analysis --example analyze -- VMCORE [--dmesg]`.
//! The registers are the vmcore's NT_PRSTATUS notes, in order (CPU 0, 1, ...).

use std::cell::RefCell;
use std::fs::File;

use crash_analysis::{analyze, crashnotes, Input, VcpuRegs};
use kdump::vmcoreinfo::iter_notes;
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
    let dmesg = args.iter().any(|a| a == "--dmesg");
    let mut magic = [0u8; 4];
    std::io::Read::read_exact(&mut File::open(path).unwrap(), &mut magic).unwrap();
    let (mem, notes, info): (Box<dyn PhysMem>, Vec<u8>, VmcoreInfo) = if &magic == b"\x7fELF" {
        let e = kdump::elf::ElfVmcore::open(path).unwrap();
        let info = e.vmcoreinfo().expect("VMCOREINFO");
        let notes = e.notes.clone();
        (Box::new(e), notes, info)
    } else {
        let mut f = File::open(path).unwrap();
        let k = KdumpFile::parse(&mut f).unwrap();
        let info = VmcoreInfo::parse(k.vmcoreinfo.as_deref().expect("VMCOREINFO"));
        let notes = k.notes.clone();
        (Box::new(KdumpMem { k, f: RefCell::new(f) }), notes, info)
    };
    let vcpus: Vec<VcpuRegs> = iter_notes(&notes)
        .filter(|n| n.n_type == crashnotes::NT_PRSTATUS)
        .filter_map(|n| crashnotes::prstatus_regs(n.desc))
        .enumerate()
        .map(|(i, (_, mut r))| {
            r.cpu = i as u32;
            r
        })
        .collect();
    let t = std::time::Instant::now();
    let out = analyze(&Input { mem: &*mem, vmcoreinfo: &info, vcpus: &vcpus, ncpus: vcpus.len() as u32 });
    let took = t.elapsed();
    if dmesg {
        print!("{}", out.dmesg());
    } else if args.iter().any(|a| a == "--brief") {
        let a = &out.analysis;
        println!("identity {:?}", a.identity);
        println!("panic {:?}", a.panic);
        for c in &a.cpus {
            println!(
                "CPU {} ({}, {}) running {:?} pid {:?} {:?} {:?}",
                c.cpu, c.registers, c.unwinder, c.running, c.pid, c.comm, c.note
            );
            for f in &c.frames {
                let m = f.module.as_deref().map(|m| format!(" [{m}]")).unwrap_or_default();
                println!(
                    "   {}{}{m} ({}) {}",
                    if f.reliable { "" } else { "? " },
                    f.symbol.as_deref().unwrap_or(&f.address),
                    f.stack.as_deref().unwrap_or("-"),
                    f.slot.as_deref().unwrap_or("")
                );
            }
        }
        for t in &a.blocked_tasks {
            println!(
                "blocked {} {} {}: {:?}",
                t.pid,
                t.comm,
                t.state,
                t.frames.iter().filter_map(|f| f.function.as_deref()).collect::<Vec<_>>()
            );
        }
        for u in &a.unread {
            println!("unread {}: {}", u.what, u.why);
        }
        eprintln!("analysis took {took:?} ({} log records)", out.log.len());
    } else {
        println!("{:#?}", out.analysis);
        eprintln!("analysis took {took:?} ({} log records)", out.log.len());
    }
}
