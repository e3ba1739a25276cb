//! The seed corpora of `fuzz/seeds/<target>/`, as structured values: real protocol sequences
//! (Linux's VMBus connect, crash, UNLOAD and kdump reconnect; its crash MSR report) and the
//! hostile inputs the unit tests name. `cargo +nightly test --lib` (in `fuzz/`) checks that the
//! committed files are these; `UPDATE_SEEDS=1` rewrites them.

use devices::hyperv::tlfs::*;
use devices::vmbus::messages::*;

use crate::{
    descriptor, guest_message, Call, Handler, HypercallInput, MemImage, Msg, MsrOp, NetInput, NetOp, PartitionInput,
    ServerInput, ServerOp, NET_RINGS,
};

/// One seed file: `fuzz/seeds/<target>/<name>`.
pub struct Seed {
    pub target: &'static str,
    pub name: &'static str,
    pub bytes: Vec<u8>,
}

/// Linux 6.1's `HV_X64_MSR_GUEST_OS_ID`.
const LINUX_GUEST_OS_ID: u64 = 0x8100_0006_01c0_0000;
/// Where the guest keeps its monitor pages in these seeds.
const MONITOR_PAGE: u64 = 0x1_0201_d000;

/// INITIATE_CONTACT as Linux sends it: `msg_sint` (5.0+) or the interrupt page, the monitor pages.
fn contact_msg(version: u32, target_vcpu: u32) -> Msg {
    let interrupt_page_or_sint =
        if version >= VERSION_WIN10_V5 { VMBUS_MESSAGE_SINT as u64 } else { MONITOR_PAGE - 0x1000 };
    Msg::InitiateContact {
        version,
        target_vcpu,
        interrupt_page_or_sint,
        monitor_page1: MONITOR_PAGE,
        monitor_page2: MONITOR_PAGE + 0x1000,
        trailing: 0,
    }
}

fn contact(version: u32, target_vcpu: u32) -> GuestMessage {
    let Msg::InitiateContact { version, target_vcpu, interrupt_page_or_sint, monitor_page1, monitor_page2, .. } =
        contact_msg(version, target_vcpu)
    else {
        unreachable!()
    };
    GuestMessage::InitiateContact { version, target_vcpu, interrupt_page_or_sint, monitor_page1, monitor_page2 }
}

fn post(vp: u8, connection_id: u32, msg: Msg) -> ServerOp {
    ServerOp::Post { vp, connection_id, msg }
}

fn vmbus_messages() -> Vec<(&'static str, Vec<u8>)> {
    let mut truncated = guest_message(&contact(VERSION_WIN10, 0));
    truncated.pop();
    let mut trailing = guest_message(&contact(VERSION_WIN10_V5_3, 0));
    trailing.extend_from_slice(&[0; 8]);
    vec![
        ("initiate_contact_5_3", guest_message(&contact(VERSION_WIN10_V5_3, 0))),
        ("initiate_contact_4_0", guest_message(&contact(VERSION_WIN10, 1))),
        ("initiate_contact_3_0", guest_message(&contact(VERSION_WIN8_1, 0))),
        ("initiate_contact_trailing", trailing),
        ("initiate_contact_truncated", truncated),
        ("requestoffers", guest_message(&GuestMessage::RequestOffers)),
        ("unload", guest_message(&GuestMessage::Unload)),
        ("openchannel_unsupported", guest_message(&GuestMessage::Unsupported { msgtype: 5 })),
        ("version_response", version_response(true, VMBUS_MESSAGE_CONNECTION_ID)),
        ("unknown_type", guest_message(&GuestMessage::Unsupported { msgtype: CHANNELMSG_COUNT })),
        ("oversized", vec![0; MAX_MESSAGE_SIZE + 1]),
    ]
}

fn vmbus_server() -> Vec<(&'static str, ServerInput)> {
    let base = ServerInput { vcpus: 2, unload_response: true, unload_delay: false, offers: 0, ops: vec![] };
    let connect = || {
        vec![
            post(0, VMBUS_MESSAGE_CONNECTION_ID_4, contact_msg(VERSION_WIN10_V5_3, 0)),
            post(0, VMBUS_MESSAGE_CONNECTION_ID, Msg::RequestOffers),
        ]
    };
    vec![
        ("linux_connect", ServerInput { ops: connect(), ..base.clone() }),
        ("offers", ServerInput { offers: 2, ops: connect(), ..base.clone() }),
        (
            "linux_crash_kdump",
            ServerInput {
                ops: [
                    connect(),
                    vec![
                        post(1, VMBUS_MESSAGE_CONNECTION_ID, Msg::Unload),
                        ServerOp::UnloadResponsePosted,
                        // The crash kernel runs on the crashing VP and connects again.
                        post(1, VMBUS_MESSAGE_CONNECTION_ID_4, contact_msg(VERSION_WIN10_V5_3, 1)),
                        post(1, VMBUS_MESSAGE_CONNECTION_ID, Msg::RequestOffers),
                    ],
                ]
                .concat(),
                ..base.clone()
            },
        ),
        (
            "unload_delay_race",
            ServerInput {
                unload_delay: true,
                ops: [
                    connect(),
                    vec![
                        post(0, VMBUS_MESSAGE_CONNECTION_ID, Msg::Unload),
                        post(1, VMBUS_MESSAGE_CONNECTION_ID_4, contact_msg(VERSION_WIN10_V5_3, 1)),
                        post(1, VMBUS_MESSAGE_CONNECTION_ID, Msg::Unload),
                        ServerOp::UnloadResponsePosted,
                        post(1, VMBUS_MESSAGE_CONNECTION_ID, Msg::RequestOffers),
                    ],
                ]
                .concat(),
                ..base.clone()
            },
        ),
        (
            "no_unload_response",
            ServerInput {
                unload_response: false,
                ops: [
                    connect(),
                    vec![
                        post(0, VMBUS_MESSAGE_CONNECTION_ID, Msg::Unload),
                        post(0, VMBUS_MESSAGE_CONNECTION_ID_4, contact_msg(VERSION_WIN10_V5_3, 0)),
                    ],
                ]
                .concat(),
                ..base.clone()
            },
        ),
        (
            "version_fallback",
            ServerInput {
                vcpus: 4,
                ops: vec![
                    post(0, VMBUS_MESSAGE_CONNECTION_ID_4, contact_msg(0x0005_0004, 0)),
                    post(0, 2, contact_msg(VERSION_WIN10_V5_3, 0)),
                    post(0, VMBUS_MESSAGE_CONNECTION_ID_4, contact_msg(VERSION_WIN10_V5_2, 9)),
                    post(0, VMBUS_MESSAGE_CONNECTION_ID, contact_msg(VERSION_WIN8, 0)),
                    post(0, VMBUS_MESSAGE_CONNECTION_ID, contact_msg(VERSION_WIN10_V4_1, 3)),
                    post(2, VMBUS_MESSAGE_CONNECTION_ID, Msg::RequestOffers),
                ],
                ..base.clone()
            },
        ),
        (
            "garbage",
            ServerInput {
                vcpus: 1,
                ops: vec![
                    post(0, VMBUS_MESSAGE_CONNECTION_ID, Msg::RequestOffers),
                    post(0, VMBUS_MESSAGE_CONNECTION_ID_4, Msg::Unload),
                    post(0, VMBUS_MESSAGE_CONNECTION_ID, Msg::Raw(vec![])),
                    post(0, VMBUS_MESSAGE_CONNECTION_ID, Msg::Raw(b"\x0e\x00\x00\x00garbage".to_vec())),
                    post(0, VMBUS_MESSAGE_CONNECTION_ID, Msg::Header { msgtype: CHANNELMSG_INITIATE_CONTACT, len: 20 }),
                    post(0, VMBUS_MESSAGE_CONNECTION_ID, Msg::Header { msgtype: 99, len: 8 }),
                    post(0, VMBUS_MESSAGE_CONNECTION_ID, Msg::Header { msgtype: 0, len: 8 }),
                    post(0, VMBUS_MESSAGE_CONNECTION_ID, Msg::Raw(vec![0xa5; MAX_MESSAGE_SIZE + 1])),
                    ServerOp::UnloadResponsePosted,
                    post(0, VMBUS_MESSAGE_CONNECTION_ID, Msg::Unload),
                    post(0, VMBUS_MESSAGE_CONNECTION_ID, Msg::Unload),
                ],
                ..base
            },
        ),
    ]
}

/// `struct hv_input_post_message` at the start of `buf[at..]`.
fn post_input(buf: &mut Vec<u8>, at: usize, connection_id: u32, message_type: u32, payload: &[u8]) {
    let mut b = Vec::new();
    for w in [connection_id, 0, message_type, payload.len() as u32] {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b.extend_from_slice(payload);
    if buf.len() < at + b.len() {
        buf.resize(at + b.len(), 0);
    }
    buf[at..at + b.len()].copy_from_slice(&b);
}

fn call(control: u64, param1: u64) -> Call {
    Call { vp: 0, control, param1, param2: 0, reply: 0 }
}

fn hypercall() -> Vec<(&'static str, HypercallInput)> {
    let post_message = u64::from(HVCALL_POST_MESSAGE);
    let signal_event = u64::from(HVCALL_SIGNAL_EVENT);
    let mut vmbus = Vec::new();
    post_input(&mut vmbus, 0, VMBUS_MESSAGE_CONNECTION_ID_4, 1, &guest_message(&contact(VERSION_WIN10_V5_3, 0)));
    post_input(&mut vmbus, 0x100, VMBUS_MESSAGE_CONNECTION_ID, 1, &guest_message(&GuestMessage::RequestOffers));
    post_input(&mut vmbus, 0x200, VMBUS_MESSAGE_CONNECTION_ID, 1, &guest_message(&GuestMessage::Unload));
    let mut hostile = Vec::new();
    post_input(&mut hostile, 0, 4, 1, &[0; 241]);
    post_input(&mut hostile, 0x200, 4, 0, &[0]);
    post_input(&mut hostile, 0x300, 4, 0x8000_0001, &[0]);
    // The header ends the memory, its payload would not.
    post_input(&mut hostile, 0xff0, 4, 1, &[]);
    hostile[0xffc..0x1000].copy_from_slice(&240u32.to_le_bytes());
    let mut signal = Vec::new();
    signal.extend_from_slice(&((2u64 << 32) | 0x19).to_le_bytes());
    vec![
        (
            "vmbus_connect_and_unload",
            HypercallInput {
                handler: Handler::Vmbus { vcpus: 2 },
                mem: MemImage { size: 0x1000, init: vmbus.clone() },
                calls: vec![call(post_message, 0), call(post_message, 0x100), call(post_message, 0x200)],
            },
        ),
        (
            "no_connections",
            HypercallInput {
                handler: Handler::NoConnections,
                mem: MemImage { size: 0x1000, init: vmbus },
                calls: vec![call(post_message, 0), call(signal_event | HV_HYPERCALL_FAST_BIT, 1)],
            },
        ),
        (
            "signal_event",
            HypercallInput {
                handler: Handler::Recorder,
                mem: MemImage { size: 0x1000, init: signal },
                calls: vec![
                    call(signal_event | HV_HYPERCALL_FAST_BIT, (7 << 32) | 0x18),
                    call(signal_event, 0),
                    call(signal_event, 1),
                    call(signal_event, 0x2000),
                ],
            },
        ),
        (
            "hostile_inputs",
            HypercallInput {
                handler: Handler::Recorder,
                mem: MemImage { size: 0x1000, init: hostile },
                calls: vec![
                    call(post_message, 0),
                    call(post_message, 0x200),
                    call(post_message, 0x300),
                    call(post_message, 0xff0),
                    call(post_message, 0x204),
                    call(post_message, 0x1_0000_0000),
                    call(post_message, !7),
                    call(post_message | HV_HYPERCALL_FAST_BIT, 0),
                    call(post_message | 1 << HV_HYPERCALL_REP_COMP_OFFSET, 0),
                    call(post_message | 5 << HV_HYPERCALL_VARHEAD_OFFSET, 0),
                    call(0x46, 0),
                    call(0xffff, 0),
                ],
            },
        ),
    ]
}

fn msr(n: u32) -> u16 {
    (n - HV_SYNTHETIC_MSR_BASE) as u16
}

fn wr(n: u32, value: u64) -> MsrOp {
    MsrOp::Write { vp: 0, msr: msr(n), value }
}

fn crash(params: [u64; 5], ctl: u64) -> Vec<MsrOp> {
    let mut ops: Vec<MsrOp> = (0..5).map(|i| wr(HV_X64_MSR_CRASH_P0 + i as u32, params[i])).collect();
    ops.push(wr(HV_X64_MSR_CRASH_CTL, ctl));
    ops
}

fn crash_message() -> Vec<(&'static str, PartitionInput)> {
    let notify = HV_CRASH_CTL_CRASH_NOTIFY;
    let notify_msg = HV_CRASH_CTL_CRASH_NOTIFY | HV_CRASH_CTL_CRASH_NOTIFY_MSG;
    let text = b"[   12.3] sysrq: Trigger a crash\n[   12.4] Kernel panic - not syncing: sysrq triggered crash\n";
    let boot = vec![
        MsrOp::Read { vp: 0, msr: msr(HV_X64_MSR_CRASH_CTL) },
        wr(HV_X64_MSR_GUEST_OS_ID, LINUX_GUEST_OS_ID),
        wr(HV_X64_MSR_HYPERCALL, 0x1001),
    ];
    let message = [
        boot.clone(),
        vec![MsrOp::GuestWrite { gpa: 0x2000, bytes: text.to_vec() }],
        crash([0, 0, 0, 0x2000, text.len() as u64], notify_msg),
        // hyperv_cleanup() before kexec, then the crash kernel.
        vec![
            wr(HV_X64_MSR_GUEST_OS_ID, 0),
            wr(HV_X64_MSR_HYPERCALL, 0x1000),
            wr(HV_X64_MSR_GUEST_OS_ID, LINUX_GUEST_OS_ID),
            wr(HV_X64_MSR_HYPERCALL, 0x3001),
            MsrOp::Read { vp: 0, msr: msr(HV_X64_MSR_HYPERCALL) },
        ],
    ]
    .concat();
    // hyperv_report_panic(): error code, guest id, RIP, RAX, RSP.
    let registers =
        [boot, crash([0xdead, LINUX_GUEST_OS_ID, 0xffff_ffff_8100_1234, 0x63, 0xffff_c900_0001_7e58], notify)].concat();
    let hostile = [
        crash([0, 0, 0, 0x1_0000_0000, 100], notify_msg),
        crash([0, 0, 0, 0x1000, u64::MAX], notify_msg),
        crash([0, 0, 0, 0x3f00, 0x200], notify_msg),
        crash([0, 0, 0, u64::MAX - 0x10, 0x100], notify_msg),
        crash([0, 0, 0, 0x1000, HV_CRASH_MSG_MAX + 1], notify_msg),
        crash([0, 0, 0, 0x4000, 0], notify_msg),
        crash([0, 0, 0, 0x1000, 16], HV_CRASH_CTL_CRASH_NOTIFY_MSG),
    ]
    .concat();
    let slot = 0x1000 + VMBUS_MESSAGE_SINT as u16 * HV_MESSAGE_SIZE as u16;
    let synic = vec![
        wr(HV_X64_MSR_SIMP, 0x1001),
        wr(HV_X64_MSR_SIEFP, 0x2001),
        wr(HV_X64_MSR_SINT0 + VMBUS_MESSAGE_SINT as u32, 0xf3),
        wr(HV_X64_MSR_SCONTROL, 1),
        MsrOp::Post { vp: 0, sint: VMBUS_MESSAGE_SINT as u8, len: 16, message_type: 1 },
        MsrOp::Post { vp: 0, sint: VMBUS_MESSAGE_SINT as u8, len: 8, message_type: 1 },
        MsrOp::Deliver { vp: 0 },
        MsrOp::Deliver { vp: 0 },
        MsrOp::GuestWrite { gpa: slot, bytes: vec![0; 4] },
        wr(HV_X64_MSR_EOM, 0),
        MsrOp::Deliver { vp: 0 },
        MsrOp::Post { vp: 1, sint: VMBUS_MESSAGE_SINT as u8, len: 240, message_type: 1 },
        MsrOp::Deliver { vp: 1 },
        MsrOp::ClearQueues,
        wr(HV_X64_MSR_SIMP, 0x7fff_f001),
        MsrOp::Post { vp: 0, sint: VMBUS_MESSAGE_SINT as u8, len: 1, message_type: 1 },
        MsrOp::Deliver { vp: 0 },
    ];
    let mut sweep = Vec::new();
    for n in [
        HV_X64_MSR_GUEST_OS_ID,
        HV_X64_MSR_HYPERCALL,
        HV_X64_MSR_VP_INDEX,
        HV_X64_MSR_RESET,
        HV_X64_MSR_REFERENCE_TSC,
        HV_X64_MSR_TSC_FREQUENCY,
        HV_X64_MSR_APIC_FREQUENCY,
        HV_X64_MSR_VP_ASSIST_PAGE,
        HV_X64_MSR_SCONTROL,
        HV_X64_MSR_SVERSION,
        HV_X64_MSR_SIEFP,
        HV_X64_MSR_SIMP,
        HV_X64_MSR_EOM,
        HV_X64_MSR_SINT0,
        HV_X64_MSR_SINT15,
        HV_X64_MSR_CRASH_P0,
        HV_X64_MSR_CRASH_CTL,
        HV_X64_MSR_TSC_INVARIANT_CONTROL,
        HV_SYNTHETIC_MSR_BASE + HV_SYNTHETIC_MSR_COUNT - 1,
    ] {
        sweep.push(MsrOp::Read { vp: 1, msr: msr(n) });
        sweep.push(MsrOp::Write { vp: 1, msr: msr(n), value: 1 });
        // VP 2 does not exist.
        sweep.push(MsrOp::Read { vp: 2, msr: msr(n) });
    }
    sweep.push(wr(HV_X64_MSR_SINT0, 1 << 40));
    vec![
        ("linux_panic_with_message", PartitionInput { vcpus: 2, crash_message: true, mem: mem(), ops: message }),
        ("linux_panic_registers_only", PartitionInput { vcpus: 2, crash_message: false, mem: mem(), ops: registers }),
        ("hostile_crash_messages", PartitionInput { vcpus: 1, crash_message: true, mem: mem(), ops: hostile }),
        ("synic_delivery", PartitionInput { vcpus: 2, crash_message: true, mem: mem(), ops: synic }),
        ("msr_sweep", PartitionInput { vcpus: 2, crash_message: true, mem: mem(), ops: sweep }),
    ]
}

/// 16 KiB of zeroed guest memory.
fn mem() -> MemImage {
    MemImage { size: 0x4000, init: vec![] }
}

/// virtio-net: Linux's bring-up (VERSION_1, MAC, STATUS, MRG_RXBUF), receive buffers, a frame
/// each way; the same without mergeable buffers and a frame too big for one; hostile chains (a
/// loop, device-writable transmit buffers, buffers outside guest memory).
fn virtio_net() -> Vec<(&'static str, NetInput)> {
    const VRING_DESC_F_NEXT: u16 = 1;
    const VRING_DESC_F_WRITE: u16 = 2;
    const ALL: u64 = 1 << 32 | 1 << 5 | 1 << 16 | 1 << 15;
    let (rx, tx) = (NET_RINGS[0].0, NET_RINGS[1].0);
    let mut frame = vec![0u8; 12];
    frame.extend((0..60).map(|i| i as u8));
    let rx_buffers = |n: u16, len: u32| {
        (0..n).flat_map(move |i| {
            [
                NetOp::Mem {
                    gpa: (rx + 16 * u64::from(i)) as u16,
                    bytes: descriptor(0x8000 + 0x800 * u64::from(i), len, VRING_DESC_F_WRITE, 0),
                },
                NetOp::Publish { queue: 0, head: i },
            ]
        })
    };
    let send = |head: u16, desc: Vec<u8>| {
        vec![
            NetOp::Mem { gpa: 0x7000, bytes: frame.clone() },
            NetOp::Mem { gpa: (tx + 16 * u64::from(head)) as u16, bytes: desc },
            NetOp::Publish { queue: 1, head },
            NetOp::Notify { queue: 1 },
        ]
    };
    let linux = |wanted: u64| -> Vec<NetOp> {
        let mut ops = vec![NetOp::Setup { wanted, size: 256 }];
        ops.extend(rx_buffers(4, 0x800));
        ops.push(NetOp::Notify { queue: 0 });
        ops.push(NetOp::Receive { frame: frame.clone() });
        ops.extend(send(0, descriptor(0x7000, 72, 0, 0)));
        ops
    };
    let mut merged = linux(ALL);
    merged.push(NetOp::BigFrame { len: 3000 });
    let mut single = linux(ALL & !(1 << 15));
    single.push(NetOp::BigFrame { len: 3000 });
    let mut hostile = vec![NetOp::Setup { wanted: ALL, size: 256 }];
    hostile.extend(send(1, descriptor(0x7000, 72, VRING_DESC_F_NEXT, 1)));
    hostile.extend(send(2, descriptor(0x7000, 72, VRING_DESC_F_WRITE, 0)));
    hostile.extend(send(3, descriptor(0xfff0, 72, 0, 0)));
    hostile.push(NetOp::Mem { gpa: rx as u16, bytes: descriptor(0x8000, 0x800, 0, 0) });
    hostile.push(NetOp::Publish { queue: 0, head: 0 });
    hostile.push(NetOp::Receive { frame: frame.clone() });
    hostile.push(NetOp::BackendFails { fail: true });
    hostile.extend(send(4, descriptor(0x7000, 72, 0, 0)));
    hostile.push(NetOp::Link { up: false });
    // virtio-pci: the function masked (MSI-X control 0xc000, two bytes) while frames arrive and
    // leave, then unmasked (0x8000): the pending vectors' messages.
    const MSIX_CONTROL: u8 = 0x86;
    const TWO_BYTES: u32 = 1 << 30;
    let mut masked = linux(ALL);
    masked.insert(1, NetOp::Config { offset: MSIX_CONTROL, value: TWO_BYTES | 0xc000 });
    masked.push(NetOp::Config { offset: MSIX_CONTROL, value: TWO_BYTES | 0x8000 });
    vec![
        ("linux_mergeable", NetInput { ops: merged }),
        ("linux_single_buffers", NetInput { ops: single }),
        ("hostile_chains", NetInput { ops: hostile }),
        ("msix_masked_then_unmasked", NetInput { ops: masked }),
    ]
}

/// Every seed of every target.
pub fn seeds() -> Vec<Seed> {
    let mut out = Vec::new();
    for (name, bytes) in vmbus_messages() {
        out.push(Seed { target: "vmbus_messages", name, bytes });
    }
    for (name, input) in vmbus_server() {
        out.push(Seed { target: "vmbus_server", name, bytes: input.to_bytes() });
    }
    for (name, input) in hypercall() {
        out.push(Seed { target: "hypercall", name, bytes: input.to_bytes() });
    }
    for (name, input) in crash_message() {
        out.push(Seed { target: "crash_message", name, bytes: input.to_bytes() });
    }
    for (name, input) in virtio_net() {
        out.push(Seed { target: "virtio_net", name, bytes: input.to_bytes() });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use arbitrary::{Arbitrary, Unstructured};

    use super::*;

    fn decodes_to<'a, T: Arbitrary<'a> + PartialEq + std::fmt::Debug>(bytes: &'a [u8], want: &T) {
        assert_eq!(&T::arbitrary_take_rest(Unstructured::new(bytes)).unwrap(), want);
    }

    #[test]
    fn seeds_decode_to_what_they_say() {
        for (_, input) in vmbus_server() {
            decodes_to(&input.to_bytes(), &input);
        }
        for (_, input) in hypercall() {
            decodes_to(&input.to_bytes(), &input);
        }
        for (_, input) in crash_message() {
            decodes_to(&input.to_bytes(), &input);
        }
        for (_, input) in virtio_net() {
            decodes_to(&input.to_bytes(), &input);
        }
    }

    /// The committed seed files are these (`UPDATE_SEEDS=1` writes them).
    #[test]
    fn seed_files_are_current() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
        let update = std::env::var_os("UPDATE_SEEDS").is_some();
        for s in seeds() {
            let path = dir.join(s.target).join(s.name);
            if update {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &s.bytes).unwrap();
            } else {
                let on_disk = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert_eq!(on_disk, s.bytes, "{} is stale: run with UPDATE_SEEDS=1", path.display());
            }
        }
    }
}
