//! Against a real crash: `KDUMP_TEST_ELF` (crashvmm's unfiltered host-side ELF vmcore) and,
//! for the crash check, `KDUMP_TEST_VMLINUX` (the guest kernel's -dbg vmlinux). Skipped, with
//! a message, when `KDUMP_TEST_ELF` is not set.
//!
//! - our level-31 kdump file keeps exactly the PFNs `makedumpfile -d 31` keeps from the same ELF
//!   (bitmap1 and bitmap2 compared), and is no larger than `makedumpfile -c -d 31`'s;
//! - `makedumpfile --dump-dmesg` of our file prints the panic;
//! - `crash VMLINUX OURS` runs `bt` on the panicking task.
//!
//! `KDUMP_TEST_MAKEDUMPFILE` and `KDUMP_TEST_CRASH` name the reference tools (default: from
//! PATH). The comparison needs a makedumpfile that knows the guest kernel: Debian bookworm's
//! 1.7.2 predates the fixes for 6.10 (1.7.6: slab is a page type) and 6.12 (1.7.7: page types are
//! whole values), so on a 6.12 guest it drops slab pages as user pages; build 1.7.7 or later
//! (github.com/makedumpfile/makedumpfile). Bookworm's crash 8.0.2 cannot open 6.12 dumps at all
//! (module_memory, the task list), ours or makedumpfile's or the ELF.

use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use kdump::elf::ElfVmcore;
use kdump::{classify, write_kdump, ClassifyOptions, Compression, KdumpFile, KdumpOptions, NoteSet, RamRange};

/// The ELF's memory, RAM ranges and notes.
fn open_elf(path: &Path) -> (ElfVmcore, Vec<RamRange>, Vec<u8>) {
    let elf = ElfVmcore::open(path).unwrap();
    let (ram, notes) = (elf.ram(), elf.notes.clone());
    (elf, ram, notes)
}

/// The tool named by the environment variable `var`, else `default` from PATH.
fn tool(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

/// (major, minor, patch) of the first "N.N.N" in `tool -v`'s or `tool --version`'s output.
fn tool_version(tool: &str, arg: &str) -> Option<(u32, u32, u32)> {
    let out = Command::new(tool).arg(arg).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.split(|c: char| !(c.is_ascii_digit() || c == '.')).find_map(|w| {
        let mut it = w.split('.').map(|n| n.parse::<u32>().ok());
        match (it.next()??, it.next()??, it.next()??) {
            v if it.next().is_none() => Some(v),
            _ => None,
        }
    })
}

/// The oldest makedumpfile whose `-d 31` is right for a kernel (major, minor): its fixes for
/// 6.2 (1.7.3), 6.3 (1.7.3), 6.6 (1.7.4), 6.9 and 6.10 (1.7.6), 6.12 (1.7.7).
fn makedumpfile_needed(kernel: (u32, u32)) -> (u32, u32, u32) {
    match kernel {
        k if k >= (6, 12) => (1, 7, 7),
        k if k >= (6, 9) => (1, 7, 6),
        k if k >= (6, 6) => (1, 7, 4),
        k if k >= (6, 2) => (1, 7, 3),
        _ => (1, 7, 0),
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success())
}

#[test]
fn real_vmcore_matches_makedumpfile_and_opens_in_crash() {
    let Some(elf) = std::env::var_os("KDUMP_TEST_ELF") else {
        println!("skipped: set KDUMP_TEST_ELF (and KDUMP_TEST_VMLINUX) to an unfiltered ELF vmcore");
        return;
    };
    let elf = Path::new(&elf);
    let mdf = tool("KDUMP_TEST_MAKEDUMPFILE", "makedumpfile");
    assert!(have(&mdf), "KDUMP_TEST_ELF is set but {mdf} is not installed");
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.kdump");

    let t = Instant::now();
    let (mem, ram, notes) = open_elf(elf);
    let info = kdump::vmcoreinfo::find_vmcoreinfo_note(&notes).map(kdump::VmcoreInfo::parse_bytes);
    let info = info.expect("the ELF has a VMCOREINFO note");
    if let (Some((maj, min, _)), Some(v)) = (info.kernel_version(), tool_version(&mdf, "-v")) {
        let need = makedumpfile_needed((maj, min));
        assert!(
            v >= need,
            "{mdf} is {}.{}.{}, older than {}.{}.{} which Linux {maj}.{min} needs for -d 31: its bitmap \
             would be wrong, not ours (set KDUMP_TEST_MAKEDUMPFILE to a newer build)",
            v.0,
            v.1,
            v.2,
            need.0,
            need.1,
            need.2
        );
    }
    let cls = classify(&mem, &ram, Some(&info), 31, &ClassifyOptions::default()).unwrap();
    for n in &cls.report.notes {
        println!("note: {n}");
    }
    let mut out = std::io::BufWriter::new(File::create(&ours).unwrap());
    let opts =
        KdumpOptions { compression: Compression::Zlib { level: 6 }, threads: 0, on_progress: None, holds_data: None };
    let summary = write_kdump(&mut out, &mem, &cls, Some(&info), &NoteSet::new(&notes, None), &opts).unwrap();
    drop(out);
    let ours_time = t.elapsed();
    println!("ours: {}", serde_json::to_string(&summary).unwrap());

    let mut theirs = Vec::new();
    for (flag, name) in [("-c", "mdf-zlib.kdump"), ("-l", "mdf-lzo.kdump")] {
        let path = dir.path().join(name);
        let t = Instant::now();
        let st = Command::new(&mdf).args([flag, "-d", "31"]).arg(elf).arg(&path).output().unwrap();
        assert!(st.status.success(), "makedumpfile {flag}: {}", String::from_utf8_lossy(&st.stderr));
        theirs.push((flag, path, t.elapsed()));
    }
    let ours_len = std::fs::metadata(&ours).unwrap().len();
    println!("ours (zlib 6): {ours_len} bytes in {:.2} s", ours_time.as_secs_f64());
    for (flag, path, time) in &theirs {
        println!(
            "makedumpfile {flag} -d 31: {} bytes in {:.2} s",
            std::fs::metadata(path).unwrap().len(),
            time.as_secs_f64()
        );
    }

    let mut f = File::open(&ours).unwrap();
    let k_ours = KdumpFile::parse(&mut f).unwrap();
    let mut g = File::open(&theirs[0].1).unwrap();
    let k_mdf = KdumpFile::parse(&mut g).unwrap();
    assert_eq!(k_ours.max_mapnr, k_mdf.max_mapnr);
    assert!(k_ours.valid == k_mdf.valid, "bitmap1 differs");
    let only_ours: Vec<u64> = k_ours.dumpable.iter_ones().filter(|&p| !k_mdf.dumpable.get(p)).collect();
    let only_mdf: Vec<u64> = k_mdf.dumpable.iter_ones().filter(|&p| !k_ours.dumpable.get(p)).collect();
    assert!(
        only_ours.is_empty() && only_mdf.is_empty(),
        "bitmap2 differs: {} PFNs only in ours (first {:x?}), {} only in makedumpfile's (first {:x?})",
        only_ours.len(),
        &only_ours[..only_ours.len().min(16)],
        only_mdf.len(),
        &only_mdf[..only_mdf.len().min(16)]
    );
    println!("bitmap2: {} PFNs, equal to makedumpfile -d 31's", k_ours.dumpable.count());
    let mdf_zlib = std::fs::metadata(&theirs[0].1).unwrap().len();
    assert!(ours_len <= mdf_zlib, "ours {ours_len} bytes > makedumpfile -c {mdf_zlib}");
    // Same page contents as makedumpfile's file, for a sample.
    for pfn in k_ours.dumpable.iter_ones().step_by(97) {
        assert_eq!(k_ours.read_page(&mut f, pfn).unwrap(), k_mdf.read_page(&mut g, pfn).unwrap(), "pfn {pfn:#x}");
    }

    let dmesg = dir.path().join("dmesg.txt");
    let st = Command::new(&mdf).arg("--dump-dmesg").arg(&ours).arg(&dmesg).output().unwrap();
    assert!(st.status.success(), "--dump-dmesg: {}", String::from_utf8_lossy(&st.stderr));
    let log = std::fs::read_to_string(&dmesg).unwrap();
    assert!(log.contains("Kernel panic - not syncing"), "no panic in the dmesg of our file");

    let Some(vmlinux) = std::env::var_os("KDUMP_TEST_VMLINUX") else {
        println!("crash check skipped: KDUMP_TEST_VMLINUX not set");
        return;
    };
    let crash = tool("KDUMP_TEST_CRASH", "crash");
    assert!(have(&crash), "KDUMP_TEST_VMLINUX is set but {crash} is not installed");
    let cmds = dir.path().join("cmds");
    std::fs::write(&cmds, "bt\nsys\nquit\n").unwrap();
    let out = Command::new(&crash).arg("-s").arg(&vmlinux).arg(&ours).arg("-i").arg(&cmds).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    println!("{text}");
    assert!(
        out.status.success(),
        "{crash} ({:?}) failed on Linux {:?}: if it fails on the unfiltered ELF too, it is too old for this kernel",
        tool_version(&crash, "--version"),
        info.osrelease()
    );
    assert!(text.contains("PID:") && text.contains("#0 ["), "no backtrace");
    assert!(text.contains(" panic at ") || text.contains("crash_kexec"), "bt does not show the panicking task");
    assert!(text.contains("PANIC: \"Kernel panic"), "crash does not see the panic");
}
