//! Scenario `boot`: the Debian cloud kernel boots under crashvmm to its init, prints the marker
//! and powers off through ACPI; the event log records the start and the clean exit.

use integration::{run_scenario, RunOptions, Setup, BOOT_MARKER};

#[test]
fn boot_scenario_reaches_init_and_powers_off() {
    let out = tempfile::Builder::new()
        .prefix("crashvmm-boot-")
        .tempdir()
        .unwrap();
    let o = run_scenario(
        &Setup::from_env(),
        "boot",
        out.path(),
        &RunOptions::default(),
    )
    .unwrap_or_else(|e| panic!("scenario boot could not run: {e}"));
    let keep = out.keep();
    assert!(
        !o.timed_out,
        "scenario boot timed out ({}); outputs in {}",
        o.mode.as_str(),
        keep.display()
    );
    let console = o.console();
    assert!(
        console.lines().any(|l| l.trim_end() == BOOT_MARKER),
        "no marker in console.log (outputs in {}):\n{}",
        keep.display(),
        console
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        console.contains("Linux version 6.1"),
        "the console shows the guest kernel banner"
    );
    assert_eq!(
        o.exit_code,
        Some(0),
        "crashvmm exit code; outputs in {}",
        keep.display()
    );

    let events = o.events().unwrap();
    assert!(events.len() >= 2, "{events:?}");
    let first = &events[0];
    assert_eq!(first["event"], "vm_started");
    assert_eq!(first["vcpus"], 2);
    assert_eq!(first["memory_bytes"], 768u64 << 20);
    assert!(first["kernel"].as_str().unwrap().ends_with("vmlinuz"));
    let last = events.last().unwrap();
    assert_eq!(last["event"], "vm_exited");
    assert_eq!(last["exit_code"], 0);
    assert_eq!(last["reason"], "poweroff");
    for e in &events {
        let ts = e["ts"].as_str().expect("ts");
        assert!(
            ts.len() == 27 && ts.ends_with('Z'),
            "RFC 3339 UTC with microseconds: {ts}"
        );
    }
    std::fs::remove_dir_all(&keep).ok();
}
