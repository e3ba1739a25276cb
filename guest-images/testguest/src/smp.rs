//! Starting the application processors (the counter scenario's APs): the BSP copies a
//! real-mode trampoline to [`TRAMPOLINE_GPA`] and sends each AP INIT, then STARTUP, and a
//! second STARTUP where the AP has not started 1 ms later (the SDM's INIT-SIPI-SIPI), through
//! its xAPIC (MMIO, the MADT's local APIC address). Under KVM with the in-kernel LAPIC the
//! vCPUs other than the BSP wait for exactly that. The waits use time.rs (the TSC, whose
//! frequency is a 1 GHz guess without Hyper-V).
//!
//! The trampoline runs 16-bit real mode (CS = vector << 8, IP 0) -> 32-bit protected mode
//! (its own GDT: 64-bit code 0x08 and data 0x10 as in boot.rs, 32-bit code 0x18) -> PAE, the
//! BSP's CR3, EFER.LME, paging -> 64-bit long mode, takes the stack and argument the BSP left
//! in its parameter block, counts itself in `started` and calls the entry: `entry(arg)`,
//! which never returns. One AP at a time: the BSP waits for `started` before it reuses the
//! block for the next. The APs keep the trampoline's GDT (its page stays as it is).

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::boot::{CR0_PE, CR0_PG, CR4_PAE, EFER_LME, KERNEL_CS, KERNEL_DS, MSR_EFER};
use crate::start_info::StartInfo;
use crate::time::{wait_ms, wait_until, MAX_POLLS};

/// Where the trampoline runs: 4 KiB-aligned low RAM (below 1 MiB, for the STARTUP vector)
/// that crashvmm's PVH boot leaves unused (between its page tables and the command line).
pub const TRAMPOLINE_GPA: u64 = 0x1_0000;
/// The STARTUP IPI's vector: the trampoline's page number.
pub const SIPI_VECTOR: u32 = (TRAMPOLINE_GPA >> 12) as u32;
/// The architectural xAPIC base, where the MADT names none.
pub const DEFAULT_LAPIC_BASE: u64 = 0xfee0_0000;
/// Where boot.rs's identity map turns uncached (the MMIO GiB up to 4 GiB).
const UNCACHED_START: u64 = 0xc000_0000;
/// The trampoline's 32-bit code selector (0x08 and 0x10 are boot.rs's).
const CODE32_CS: u16 = 0x18;

/// xAPIC registers: ID, ICR low and high.
const APIC_ID: u64 = 0x20;
const APIC_ICR_LOW: u64 = 0x300;
const APIC_ICR_HIGH: u64 = 0x310;
/// ICR: delivery status (send pending), level assert, INIT and STARTUP delivery modes.
const ICR_SEND_PENDING: u32 = 1 << 12;
const ICR_ASSERT: u32 = 1 << 14;
const ICR_INIT: u32 = 0x5 << 8;
const ICR_STARTUP: u32 = 0x6 << 8;
/// The waits of the MP start-up protocol (Intel SDM vol. 3, 8.4.4.1), rounded up to whole
/// milliseconds, and how long an AP may take from the second STARTUP to `started`.
const INIT_WAIT_MS: u64 = 10;
const SIPI_WAIT_MS: u64 = 1;
const START_TIMEOUT_MS: u64 = 2000;

global_asm!(
    r#"
    .pushsection .text.tg_ap_trampoline, "ax", @progbits
    .balign 16
    .globl tg_ap_trampoline
tg_ap_trampoline:
    .code16
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    lgdtl (tg_ap_gdt_ptr - tg_ap_trampoline)
    mov %cr0, %eax
    or ${cr0_pe}, %eax
    mov %eax, %cr0
    ljmpl ${code32_cs}, ${tramp} + (tg_ap_32 - tg_ap_trampoline)

    .code32
tg_ap_32:
    mov ${kernel_ds}, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    mov %cr4, %eax
    or ${cr4_pae}, %eax
    mov %eax, %cr4
    mov ({tramp} + (tg_ap_cr3 - tg_ap_trampoline)), %eax
    mov %eax, %cr3
    mov ${msr_efer}, %ecx
    rdmsr
    or ${efer_lme}, %eax
    wrmsr
    mov %cr0, %eax
    or ${cr0_pe_pg}, %eax
    mov %eax, %cr0
    ljmpl ${kernel_cs}, ${tramp} + (tg_ap_64 - tg_ap_trampoline)

    .code64
tg_ap_64:
    mov tg_ap_stack(%rip), %rsp
    mov tg_ap_arg(%rip), %rdi
    lock incl tg_ap_started(%rip)
    call *tg_ap_entry(%rip)
1:  cli
    hlt
    jmp 1b

    // The parameter block (struct Params), then the GDT.
    .balign 8
    .globl tg_ap_params
tg_ap_params:
tg_ap_cr3:
    .quad 0
tg_ap_entry:
    .quad 0
tg_ap_stack:
    .quad 0
tg_ap_arg:
    .quad 0
tg_ap_started:
    .long 0
    .long 0
tg_ap_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00cf9a000000ffff
tg_ap_gdt_end:
tg_ap_gdt_ptr:
    .word tg_ap_gdt_end - tg_ap_gdt - 1
    .long {tramp} + (tg_ap_gdt - tg_ap_trampoline)
    .globl tg_ap_trampoline_end
tg_ap_trampoline_end:
    .popsection
    "#,
    tramp = const TRAMPOLINE_GPA,
    code32_cs = const CODE32_CS,
    kernel_cs = const KERNEL_CS,
    kernel_ds = const KERNEL_DS,
    cr0_pe = const CR0_PE,
    cr0_pe_pg = const CR0_PE | CR0_PG,
    cr4_pae = const CR4_PAE,
    msr_efer = const MSR_EFER,
    efer_lme = const EFER_LME,
    options(att_syntax)
);

extern "C" {
    static tg_ap_trampoline: u8;
    static tg_ap_params: u8;
    static tg_ap_trampoline_end: u8;
}

/// The trampoline's parameter block (`tg_ap_params`), as the BSP writes it.
#[repr(C)]
struct Params {
    /// The page tables (below 4 GiB: the 32-bit code loads the low half).
    cr3: u64,
    entry: u64,
    stack: u64,
    arg: u64,
    /// APs that reached 64-bit mode and took their stack and argument.
    started: AtomicU32,
}

/// Whether [`install`] copied the trampoline.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// An AP's entry: called on its own stack with the argument [`start_ap`] was given.
pub type ApEntry = extern "C" fn(u64) -> !;

/// This CPU's local APIC, by its xAPIC base.
#[derive(Clone, Copy)]
pub struct Lapic(u64);

impl Lapic {
    /// The local APIC at `base` (the MADT's address), or at [`DEFAULT_LAPIC_BASE`] where
    /// `base` is not a page in the identity map's uncached GiB (3-4 GiB, boot.rs).
    pub fn new(base: u64) -> Self {
        let usable = (UNCACHED_START..1 << 32).contains(&base) && base & 0xfff == 0;
        Lapic(if usable { base } else { DEFAULT_LAPIC_BASE })
    }

    fn read(&self, reg: u64) -> u32 {
        // SAFETY: a 32-bit xAPIC register in the identity-mapped, uncached MMIO GiB.
        unsafe { core::ptr::read_volatile((self.0 + reg) as *const u32) }
    }

    fn write(&self, reg: u64, value: u32) {
        // SAFETY: as `read`; the registers written are the ICR's.
        unsafe { core::ptr::write_volatile((self.0 + reg) as *mut u32, value) }
    }

    /// This CPU's APIC id.
    pub fn id(&self) -> u8 {
        (self.read(APIC_ID) >> 24) as u8
    }

    /// Send an IPI to `apic_id` and wait (bounded) until the APIC has sent it.
    fn ipi(&self, apic_id: u8, low: u32) {
        self.write(APIC_ICR_HIGH, (apic_id as u32) << 24);
        self.write(APIC_ICR_LOW, low);
        for _ in 0..MAX_POLLS {
            if self.read(APIC_ICR_LOW) & ICR_SEND_PENDING == 0 {
                break;
            }
            crate::cpu::pause();
        }
    }
}

fn params() -> *mut Params {
    let offset = &raw const tg_ap_params as u64 - &raw const tg_ap_trampoline as u64;
    (TRAMPOLINE_GPA + offset) as *mut Params
}

fn started() -> u32 {
    // SAFETY: only called once `install` wrote the trampoline page (`start_ap` checks);
    // APs increment `started` with LOCK INCL, an atomic access.
    unsafe { (*params()).started.load(Ordering::SeqCst) }
}

/// Copy the trampoline to [`TRAMPOLINE_GPA`] with this CPU's page tables. Fails when that
/// page is not RAM or the page tables lie above 4 GiB.
pub fn install(si: &StartInfo) -> Result<(), &'static str> {
    if !si.is_ram(TRAMPOLINE_GPA, 0x1000) {
        return Err("the AP trampoline's page is not RAM");
    }
    let cr3: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags)) }
    if cr3 >= 1 << 32 {
        return Err("the page tables lie above 4 GiB");
    }
    let (start, end) = (&raw const tg_ap_trampoline as u64, &raw const tg_ap_trampoline_end as u64);
    // SAFETY: the trampoline page is RAM (checked) that nothing else uses; the source is this
    // image's code, a few hundred bytes that cannot overlap it.
    unsafe {
        core::ptr::copy_nonoverlapping(start as *const u8, TRAMPOLINE_GPA as *mut u8, (end - start) as usize);
        let p = params();
        core::ptr::write_volatile(&raw mut (*p).cr3, cr3);
        (*p).started.store(0, Ordering::SeqCst);
    }
    INSTALLED.store(true, Ordering::SeqCst);
    Ok(())
}

/// Start the AP with APIC id `apic_id` (INIT, STARTUP, STARTUP) on the installed trampoline,
/// to call `entry(arg)` with RSP = `stack_top` (16-byte aligned); true once it took them,
/// false when it did not in time or nothing is installed.
pub fn start_ap(lapic: &Lapic, apic_id: u8, entry: ApEntry, arg: u64, stack_top: u64) -> bool {
    if !INSTALLED.load(Ordering::SeqCst) {
        return false;
    }
    let before = started();
    let p = params();
    // SAFETY: the parameter block `install` wrote; no AP reads it until the STARTUP below, and
    // the previous AP is done with it (its `started` count came in).
    unsafe {
        core::ptr::write_volatile(&raw mut (*p).entry, entry as usize as u64);
        core::ptr::write_volatile(&raw mut (*p).stack, stack_top);
        core::ptr::write_volatile(&raw mut (*p).arg, arg);
    }
    core::sync::atomic::fence(Ordering::SeqCst);
    lapic.ipi(apic_id, ICR_INIT | ICR_ASSERT);
    wait_ms(INIT_WAIT_MS);
    for _ in 0..2 {
        lapic.ipi(apic_id, ICR_STARTUP | ICR_ASSERT | SIPI_VECTOR);
        wait_ms(SIPI_WAIT_MS);
        if started() != before {
            return true;
        }
    }
    wait_until(START_TIMEOUT_MS, || started() != before)
}
