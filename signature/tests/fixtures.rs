//! Every fixture under tests/fixtures/ (real oops texts: our guests' console logs and syzbot
//! reports) gives its expected title and kind; the same bug from two boots gives one id.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use signature::{from_text, Kind, Signature};

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read(path: &Path) -> String {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    String::from_utf8_lossy(&bytes).into_owned()
}

fn kind_name(kind: Kind) -> String {
    serde_json::to_value(kind).expect("kind serializes").as_str().expect("kind is a string").to_string()
}

fn signature_of(name: &str) -> Signature {
    let text = read(&fixtures_dir().join(name));
    from_text(&text).unwrap_or_else(|| panic!("{name}: no signature"))
}

#[test]
fn every_fixture_gives_its_expected_title_and_kind() {
    let mut entries: Vec<PathBuf> = fs::read_dir(fixtures_dir())
        .expect("fixtures dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    entries.sort();
    let mut kinds = BTreeSet::new();
    let mut failures = Vec::new();
    for txt in &entries {
        let expected = read(&txt.with_extension("expected"));
        let field = |key: &str| {
            expected
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("{}: no {key}", txt.display()))
                .trim()
                .to_string()
        };
        let (title, kind) = (field("title:"), field("kind:"));
        let text = read(txt);
        assert!(text.starts_with("# source: "), "{}: first line must name the source", txt.display());
        match from_text(&text) {
            Some(sig) => {
                if sig.title != title || kind_name(sig.kind) != kind {
                    failures.push(format!(
                        "{}: want {title:?} ({kind}), got {:?} ({})",
                        txt.display(),
                        sig.title,
                        kind_name(sig.kind)
                    ));
                }
                assert_eq!(sig.id.len(), 16);
                assert!(sig.frames.len() <= signature::MAX_FRAMES);
            }
            None => failures.push(format!("{}: want {title:?}, got nothing", txt.display())),
        }
        kinds.insert(kind);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(entries.len() >= 20, "only {} fixtures", entries.len());
    assert!(kinds.len() >= 6, "only kinds {kinds:?}");
}

#[test]
fn the_sysrq_panic_of_two_boots_has_one_id() {
    let a = signature_of("debian61-sysrq-panic-boot1.txt");
    let b = signature_of("debian61-sysrq-panic-boot2.txt");
    // Two real boots: other KASLR offset, PID, CPU and timestamps.
    let ta = read(&fixtures_dir().join("debian61-sysrq-panic-boot1.txt"));
    let tb = read(&fixtures_dir().join("debian61-sysrq-panic-boot2.txt"));
    assert!(ta.contains("Kernel Offset: 0xa200000") && tb.contains("Kernel Offset: 0x1d600000"));
    assert!(ta.contains("PID: 94 Comm: sh") && tb.contains("PID: 93 Comm: sh"));
    assert_eq!(a, b);
    assert_eq!(a.title, "kernel panic: sysrq triggered crash");
    assert_eq!(
        a.frames,
        ["sysrq_handle_crash", "__handle_sysrq", "write_sysrq_trigger", "proc_reg_write", "vfs_write"]
    );
    let json = serde_json::to_value(&a).expect("serializes");
    assert_eq!(json["kind"], "panic");
    assert_eq!(json["id"], a.id.as_str());
}

/// Rewrites what differs between boots: every hex number (addresses, KASLR offsets, register
/// values, code bytes), every decimal number outside names (timestamps, PIDs, CPUs, taint
/// counts), and the kernel build string.
fn other_boot(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut prev_word = false;
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if !prev_word && c == b'0' && b.get(i + 1) == Some(&b'x') {
            let mut j = i + 2;
            while j < b.len() && b[j].is_ascii_hexdigit() {
                j += 1;
            }
            // Offsets inside frames (`+0x1a/0x30`) change between builds too.
            out.push_str("0x");
            for &h in &b[i + 2..j] {
                out.push(if h == b'f' { 'e' } else { 'f' });
            }
            i = j;
            prev_word = false;
            continue;
        }
        if !prev_word && c.is_ascii_digit() {
            let mut j = i;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            for &d in &b[i..j] {
                out.push(char::from(b'0' + (d - b'0' + 3) % 10));
            }
            i = j;
            prev_word = false;
            continue;
        }
        out.push(char::from(c));
        prev_word = c.is_ascii_alphanumeric() || c == b'_' || c == b'.';
        i += 1;
    }
    out
}

#[test]
fn a_rewritten_second_boot_of_each_fixture_has_the_same_id() {
    for name in [
        "debian61-sysrq-panic-boot1.txt",
        "debian61-boot-warning.txt",
        "syzbot-14-general-protection-fault-in-ip-options-echo.txt",
        "syzbot-757-warning-in-fput.txt",
        "syzbot-247-null-deref-in-inet-sendmsg.txt",
        "syzbot-267-bug-soft-lockup-in-ipv6-rcv.txt",
    ] {
        let text = read(&fixtures_dir().join(name));
        assert!(text.is_ascii(), "{name}");
        let rewritten = other_boot(&text);
        assert_ne!(rewritten, text);
        let a = from_text(&text).expect("first boot");
        let b = from_text(&rewritten).expect("second boot");
        assert_eq!(a, b, "{name}");
    }
}

#[test]
fn different_bugs_have_different_ids() {
    let mut ids = BTreeSet::new();
    let mut n = 0;
    for e in fs::read_dir(fixtures_dir()).expect("fixtures dir") {
        let p = e.expect("entry").path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
        if !name.ends_with(".txt") || name.starts_with("debian61-sysrq-panic-boot2") || name.starts_with("debian612") {
            continue;
        }
        ids.insert(signature_of(&name).id);
        n += 1;
    }
    assert_eq!(ids.len(), n);
}

#[test]
fn the_non_text_crashes_have_fixed_signatures() {
    let h = Signature::hang();
    assert_eq!((h.kind, h.title.as_str(), h.frames.len()), (Kind::Hang, "hang", 0));
    let t = Signature::triple_fault();
    assert_eq!((t.kind, t.title.as_str()), (Kind::TripleFault, "triple fault"));
    assert_ne!(h.id, t.id);
    assert_eq!(h, Signature::hang());
}

#[test]
fn a_hyperv_crash_message_is_read_like_the_console() {
    // What hv_kmsg_dump puts in the crash message page: the kernel log, no levels, NUL padded.
    let console = read(&fixtures_dir().join("debian61-sysrq-panic-boot1.txt"));
    let start = console.find("[    5.387240] sysrq: Trigger a crash").expect("panic in fixture");
    let mut page = console.as_bytes()[start..].to_vec();
    page.resize(page.len() + 512, 0);
    let sig = Signature::from_hyperv_message(&page).expect("signature");
    assert_eq!(sig, signature_of("debian61-sysrq-panic-boot1.txt"));
    assert_eq!(Signature::from_hyperv_message(&[0; 4096]), Err(signature::SignatureError::Empty));
    assert!(matches!(
        Signature::from_hyperv_message(b"hello\nworld\n"),
        Err(signature::SignatureError::NoCrashReport(_))
    ));
}

/// A real Hyper-V crash message of a module's oops (Debian 6.1, the crash-injection suite's
/// `oops` case): its few KiB of kernel log begin after the `BUG:` line, so alone it names only
/// the consequence (`Fatal exception`); with the console, which has the whole report, the
/// oops is the title. A message that holds its own cause is taken as it is.
#[test]
fn a_crash_message_that_begins_after_its_oops_takes_the_oops_from_the_console() {
    let message = fs::read(fixtures_dir().join("debian61-oops-crash-message-tail.bin")).unwrap();
    let console = read(&fixtures_dir().join("debian61-oops-console.log"));
    let alone = Signature::from_hyperv_message(&message).unwrap();
    assert_eq!(alone.title, "kernel panic: Fatal exception");
    let both = signature::from_message_and_console(Some(&message), &console).unwrap();
    assert_eq!(both.title, "BUG: unable to handle kernel NULL pointer dereference in crashtest_init");
    assert_eq!(both.kind, Kind::NullDeref);
    assert_eq!(signature::from_message_and_console(None, &console).unwrap().title, both.title);
    // A console without the oops (a quiet console) leaves the message's own title.
    assert_eq!(signature::from_message_and_console(Some(&message), "").unwrap().title, alone.title);
    // The sysrq panic's message names no cause elsewhere: it wins over any console.
    let sysrq = read(&fixtures_dir().join("debian61-sysrq-panic-boot1.txt"));
    let title = signature::from_message_and_console(Some(sysrq.as_bytes()), &console).unwrap().title;
    assert_eq!(title, from_text(&sysrq).unwrap().title);
}
