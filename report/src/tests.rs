use super::*;

use std::path::PathBuf;

/// A complete report with every part there is.
fn full() -> Report {
    let hex = |v: u64| format!("{v:#x}");
    Report {
        schema: SCHEMA_VERSION,
        crashvmm_version: Some("0.1.0".into()),
        kind: Some(Kind::Crash),
        state: Some(State::Complete),
        crash_number: Some(1),
        trigger: Some(Trigger::Pvpanic),
        detected_at: Some("2026-11-25T13:01:05.000001Z".into()),
        finished_at: Some("2026-11-25T13:01:06.000001Z".into()),
        outcome: Some("host-side vmcore written".into()),
        policy: Some(Policy {
            on_panic: Some(OnPanic::Auto),
            after_crash: Some(AfterCrash::Exit),
            kdump_timeout: Some(600.0),
            host_dump: Some(HostDump::Fallback),
            max_crashes: Some(0),
            hyperv: Some(true),
            on_hang: Some("host-dump,nmi".into()),
        }),
        guest: Some(Guest {
            machine: Machine {
                kernel: Some("/k".into()),
                cmdline: Some("console=ttyS0".into()),
                memory_bytes: Some(1 << 30),
                vcpus: Some(2),
            },
            kernel_release: Some("6.1.0-56-cloud-amd64".into()),
        }),
        signals: vec![
            TimedSignal { at: "t0".into(), signal: Signal::Pvpanic { vcpu: 1, bits: 1 } },
            TimedSignal { at: "t1".into(), signal: Signal::HvCrash { vcpu: 1, params: vec![hex(0); 5] } },
            TimedSignal { at: "t2".into(), signal: Signal::UnloadRequested { vcpu: 0, answered: true } },
            TimedSignal { at: "t3".into(), signal: Signal::NmiInjected },
        ],
        signals_dropped: 3,
        pvpanic: Some(Pvpanic {
            vcpu: Some(1),
            bits: Some(1),
            panicked: Some(true),
            crash_loaded: Some(false),
            shutdown: Some(false),
            at: Some("t0".into()),
        }),
        hyperv_crash: Some(HypervCrash {
            vcpu: Some(1),
            params: Some(vec![hex(0x1000); 5]),
            message: Some("Kernel panic".into()),
            at: Some("t1".into()),
        }),
        vmbus: Some(Vmbus {
            unload_requested_at: Some("t2".into()),
            answered: Some(true),
            unload_completed_at: None,
            unload_latency_us: None,
        }),
        vcpu_registers: vec![VcpuRegisters {
            id: 0,
            rip: hex(0xfff0),
            registers_reset: Some(true),
            note: Some("reset".into()),
            ..Default::default()
        }],
        vmcore: Some(Vmcore {
            path: Some("vmcore".into()),
            format: Some(VmcoreFormat::KdumpCompressed),
            dump_level: Some(31),
            compression: Some(Compression::Lzo),
            filter: Some(VmcoreFilter {
                total_pages: Some(200),
                data_pages: Some(20),
                kept_pages: None,
                other: [("classification".to_string(), serde_json::json!({"kept_pages": 30}))].into_iter().collect(),
            }),
            bytes: Some(10),
            allocated_bytes: Some(4),
            sha256: None,
            source: Some(VmcoreSource::Host),
            duration_ms: Some(3),
            reason: Some("Hyper-V crash report".into()),
        }),
        vmcore_error: None,
        analysis: None,
        signature: Some(Signature {
            title: Some("kernel panic: sysrq triggered crash".into()),
            frames: Some(vec!["sysrq_handle_crash".into()]),
            id: Some("0123456789abcdef".into()),
            kind: Some("panic".into()),
        }),
        vmcore_pending: None,
        reset_wait: None,
        vmcore_count: None,
        duplicate_of: None,
    }
}

#[test]
fn a_full_report_round_trips_with_sorted_keys_and_its_nulls() {
    let r = full();
    let text = to_vec_pretty(&r).unwrap();
    let back: Report = from_slice(&text).unwrap();
    assert_eq!(back, r);
    let v: Value = serde_json::from_slice(&text).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(keys, sorted);
    // The words and shapes readers know.
    assert_eq!(v["schema"], 1);
    assert_eq!(v["kind"], "crash");
    assert_eq!(v["trigger"], "pvpanic");
    assert_eq!(v["policy"]["on_panic"], "auto");
    assert_eq!(v["policy"]["host_dump"], "fallback");
    assert_eq!(v["vmcore"]["format"], "kdump-compressed");
    assert_eq!(v["vmcore"]["compression"], "lzo");
    assert_eq!(v["vmcore"]["filter"]["classification"]["kept_pages"], 30);
    assert_eq!(
        v["signals"][1],
        serde_json::json!({"at": "t1", "signal": "hv_crash", "vcpu": 1,
                                                     "params": ["0x0", "0x0", "0x0", "0x0", "0x0"]})
    );
    assert_eq!(v["signals"][2]["signal"], "vmbus_unload_requested");
    assert_eq!(v["signals"][3], serde_json::json!({"at": "t3", "signal": "nmi_injected"}));
    // A `null` is written, not left out; what does not apply is.
    assert_eq!(v.get("vmcore_error"), Some(&Value::Null));
    assert_eq!(v["vmbus"].get("unload_latency_us"), Some(&Value::Null));
    assert_eq!(v["vmcore"].get("sha256"), Some(&Value::Null));
    assert!(v.get("vmcore_pending").is_none());
    assert!(v["vmcore"]["filter"].get("kept_pages").is_none());
    assert!(v["vcpu_registers"][0].get("note").is_some());
}

#[test]
fn an_operator_dump_round_trips() {
    let d = DumpReport {
        schema: SCHEMA_VERSION,
        crashvmm_version: Some("0.1.0".into()),
        kind: Some(Kind::OperatorDump),
        state: Some(State::WritingVmcore),
        trigger: Some(Trigger::Operator),
        reason: Some("requested on the control socket".into()),
        requested_at: Some("t".into()),
        finished_at: None,
        live: Some(true),
        live_stats: Some(LiveStats {
            snapshot: "uffd".into(),
            pause_us: 5,
            copied_bytes: 4096,
            paused_for_rest: false,
        }),
        guest: Some(Machine {
            kernel: Some("/k".into()),
            cmdline: Some("c".into()),
            memory_bytes: Some(1),
            vcpus: Some(1),
        }),
        vmcore: None,
        vmcore_pending: Some(VmcorePending { file: "vmcore.partial".into(), reason: "r".into(), since: "t".into() }),
    };
    let text = to_vec_pretty(&d).unwrap();
    assert_eq!(from_slice::<DumpReport>(&text).unwrap(), d);
    let v: Value = serde_json::from_slice(&text).unwrap();
    assert_eq!((v["kind"].as_str(), v["trigger"].as_str()), (Some("operator_dump"), Some("operator")));
    assert_eq!(v.get("vmcore"), Some(&Value::Null));
    assert!(v["guest"].get("kernel_release").is_none());
    let head: ReportHead = from_slice(&text).unwrap();
    assert_eq!(
        (head.kind, head.state, head.started_at()),
        (Some(Kind::OperatorDump), Some(State::WritingVmcore), Some("t"))
    );
}

/// A report of a crashvmm before `schema` (and before `kind` and `state`), with few keys and
/// the ELF filter's `kept_pages`.
#[test]
fn an_old_minimal_report_reads_as_version_0() {
    let text = br#"{"crash_number": 2, "trigger": "hv_crash", "outcome": "x",
        "guest": {"vcpus": 2}, "vmcore": {"path": "vmcore", "dump_level": 1,
        "filter": {"total_pages": 10, "kept_pages": 4}}}"#;
    let r: Report = from_slice(text).unwrap();
    assert_eq!(r.schema, 0);
    assert_eq!((r.kind, r.state, r.crash_number, r.trigger), (None, None, Some(2), Some(Trigger::HvCrash)));
    assert_eq!(r.guest.as_ref().and_then(|g| g.machine.vcpus), Some(2));
    assert_eq!(r.guest.as_ref().and_then(|g| g.kernel_release.as_deref()), None);
    let filter = r.vmcore.as_ref().and_then(|v| v.filter.as_ref()).unwrap();
    assert_eq!((filter.total_pages, filter.written_pages()), (Some(10), Some(4)));
    assert!(r.signals.is_empty() && r.signature.is_none());
}

#[test]
fn unknown_keys_are_ignored_and_wrong_types_read_as_absent() {
    let text = br#"{"schema": 7, "future": {"a": 1}, "trigger": "new_trigger", "crash_number": "one",
        "signature": {"id": "ab", "title": 5, "extra": true}, "pvpanic": 1, "signals": "x",
        "guest": {"kernel_release": "6.1", "vcpus": -1}, "vmcore": {"bytes": 10, "format": "zip"}}"#;
    let r: Report = from_slice(text).unwrap();
    assert_eq!(r.schema, 7);
    assert_eq!((r.trigger, r.crash_number, r.pvpanic.as_ref()), (None, None, None));
    let sig = r.signature.unwrap();
    assert_eq!((sig.id.as_deref(), sig.title), (Some("ab"), None));
    let g = r.guest.unwrap();
    assert_eq!((g.kernel_release.as_deref(), g.machine.vcpus), (Some("6.1"), None));
    let v = r.vmcore.unwrap();
    assert_eq!((v.bytes, v.format), (Some(10), None));
    assert!(r.signals.is_empty());
    assert!(matches!(from_slice::<Report>(b"[1, 2]"), Err(ReportError::NotAnObject(_))));
    assert!(matches!(from_slice::<Report>(b"null"), Err(ReportError::NotAnObject(_))));
    assert!(matches!(from_slice::<Report>(b"{not json"), Err(ReportError::NotJson(_))));
    // Any object reads.
    assert_eq!(from_slice::<Report>(b"{}").unwrap().schema, 0);
    assert_eq!(from_slice::<ReportHead>(br#"{"kind": 3, "detected_at": "d"}"#).unwrap().started_at(), Some("d"));
}

const WRITE_SCHEMA_ENV: &str = "CRASHVMM_WRITE_SCHEMA";

/// docs/report.schema.json is the schema of these types.
#[test]
fn the_published_schema_is_current() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/report.schema.json");
    let schema = serde_json::to_string_pretty(&json_schema()).unwrap() + "\n";
    if std::env::var_os(WRITE_SCHEMA_ENV).is_some() {
        std::fs::write(&path, &schema).unwrap();
    }
    let published = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        published == schema,
        "docs/report.schema.json is not the schema of the report types: regenerate it with \
         `{WRITE_SCHEMA_ENV}=1 cargo test -p crash-report`"
    );
}
