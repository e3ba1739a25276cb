//! Text from a hostile guest: nothing panics, everything returns quickly and bounded.

use std::time::{Duration, Instant};

use signature::{from_text, Signature, MAX_FRAMES, MAX_TITLE_LEN};

fn quick<T>(f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());
    r
}

fn sane(s: &Signature) {
    assert!(s.title.len() <= MAX_TITLE_LEN);
    assert!(s.title.bytes().all(|b| (0x20..0x7f).contains(&b)));
    assert!(s.frames.len() <= MAX_FRAMES);
    assert!(s.frames.iter().all(|f| f.len() <= 128));
    assert_eq!(s.id.len(), 16);
}

#[test]
fn text_without_a_report_gives_none() {
    assert_eq!(from_text(""), None);
    assert_eq!(from_text("\n\n\n"), None);
    assert_eq!(from_text("[    0.000000] Linux version 6.1.0\nRun /init as init process\n"), None);
    assert_eq!(Signature::from_hyperv_message(b""), Err(signature::SignatureError::Empty));
}

#[test]
fn a_report_with_no_trace_still_has_a_title() {
    let s = from_text("[   1.0] general protection fault, probably for non-canonical address 0xdead: 0000 [#1]\n")
        .expect("signature");
    assert_eq!(s.title, "general protection fault in corrupted");
    assert!(s.frames.is_empty());
    sane(&s);
    let s = from_text("Kernel panic - not syncing: ").expect("signature");
    assert_eq!(s.title, "kernel panic:");
}

#[test]
fn huge_lines_and_huge_logs_are_bounded() {
    let long_func = "a".repeat(1 << 20);
    let text = format!(
        "BUG: unable to handle page fault for address: {}\nCall Trace:\n {long_func}+0x1/0x2\n{}\n",
        "f".repeat(1 << 20),
        " foo+0x1/0x2\n".repeat(100_000)
    );
    let s = quick(|| from_text(&text)).expect("signature");
    sane(&s);
    assert_eq!(s.title, "BUG: unable to handle kernel paging request in foo");

    let panic_msg = format!("Kernel panic - not syncing: {}", "x ".repeat(1 << 20));
    let s = quick(|| from_text(&panic_msg)).expect("signature");
    sane(&s);

    // Many report starts, each with no trace.
    let many = "WARNING: CPU: 0 PID: 1 at a.c:1 f+0x1/0x2\n".repeat(200_000);
    let s = quick(|| from_text(&many)).expect("signature");
    sane(&s);
    assert_eq!(s.title, "WARNING in f");
}

#[test]
fn binary_junk_is_survived() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut junk = Vec::with_capacity(4 << 20);
    while junk.len() < 4 << 20 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        junk.extend_from_slice(&seed.to_le_bytes());
    }
    // Sprinkle report starts and frame-like bits into the junk.
    for (i, chunk) in junk.chunks_mut(4096).enumerate() {
        let pieces: [&[u8]; 5] = [
            b"\nkernel BUG at mm/x.c:1!\n",
            b"\n ? +0x/0x\n",
            b"\nRIP: 0010:[<\n",
            b"\n[ T\n<9999>[ 1.2",
            b"\nINFO: rcu_sched detected stalls\n apic_timer_interrupt\n",
        ];
        let p = pieces[i % pieces.len()];
        if chunk.len() > p.len() {
            chunk[..p.len()].copy_from_slice(p);
        }
    }
    let text = String::from_utf8_lossy(&junk);
    if let Some(s) = quick(|| from_text(&text)) {
        sane(&s);
    }
    if let Ok(s) = quick(|| Signature::from_hyperv_message(&junk)) {
        sane(&s);
    }
    for cut in 0..200 {
        let t = "[  1.0] kernel BUG at mm/x.c:1!\ninvalid opcode: 0000 [#1]\nRIP: 0010:f+0x1/0x2\nCall Trace:\n g+0x1/0x2\n";
        if let Some(s) = from_text(&t[..cut.min(t.len())]) {
            sane(&s);
        }
    }
}

#[test]
fn multibyte_text_at_every_cut_is_survived() {
    let text =
        "BUG: KASAN: ü-after-free in f\u{1F600}+0x1/0x2\nRead of size 8\nCall Trace:\n \u{e9}+0x1/0x2\n ok+0x1/0x2\n";
    for cut in (0..=text.len()).filter(|&c| text.is_char_boundary(c)) {
        if let Some(s) = from_text(&text[..cut]) {
            sane(&s);
        }
    }
    let s = from_text(text).expect("signature");
    assert_eq!(s.title, "KASAN: -after-free Read in ok");
}
