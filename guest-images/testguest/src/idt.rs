//! Exceptions: an IDT for vectors 0-31. A #GP on RDMSR/WRMSR that a caller expects (see
//! [`rdmsr_checked`]) is recorded and the instruction skipped; any other exception ends the
//! scenario with a FAIL line naming it.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::boot::KERNEL_CS;
use crate::check;
use crate::global::Global;
use crate::serial::line;

/// Vectors with a handler.
pub const EXCEPTION_VECTORS: usize = 32;
/// `#GP`.
pub const GP_VECTOR: u64 = 13;
/// Each stub is padded to this size, so stub `v` is at `tg_exception_stubs + v * STUB_SIZE`.
const STUB_SIZE: u64 = 16;
/// 64-bit interrupt gate, present, DPL 0.
const GATE_INTERRUPT: u16 = 0x8e00;
/// Vectors for which the CPU pushes an error code.
const HAS_ERROR_CODE: u32 = (1 << 8)
    | (1 << 10)
    | (1 << 11)
    | (1 << 12)
    | (1 << 13)
    | (1 << 14)
    | (1 << 17)
    | (1 << 21)
    | (1 << 29)
    | (1 << 30);

// Stub v pushes a zero error code where the CPU pushes none, then its vector, and jumps to the
// common part, which saves the caller-saved registers and calls tg_exception(&mut Frame).
// The CPU aligns RSP to 16 before pushing its 5-word frame; with error code, vector and 9
// registers (16 words in all) the call happens on a 16-byte aligned stack.
global_asm!(
    r#"
    .pushsection .text.tg_exceptions, "ax", @progbits
    .balign 16
    .globl tg_exception_stubs
tg_exception_stubs:
    .set tg_vec, 0
    .rept {vectors}
    .balign {stub_size}
    .if ({has_error_code} >> tg_vec) & 1
    .else
    pushq $0
    .endif
    pushq $tg_vec
    jmp tg_exception_common
    .set tg_vec, tg_vec + 1
    .endr

tg_exception_common:
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    mov %rsp, %rdi
    cld
    call tg_exception
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    add $16, %rsp
    iretq
    .popsection
    "#,
    vectors = const EXCEPTION_VECTORS,
    stub_size = const STUB_SIZE,
    has_error_code = const HAS_ERROR_CODE,
    options(att_syntax)
);

extern "C" {
    fn tg_exception_stubs();
}

/// What the common stub saved, lowest address first.
#[repr(C)]
pub struct Frame {
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rdi: u64,
    rsi: u64,
    rdx: u64,
    rcx: u64,
    rax: u64,
    vector: u64,
    error_code: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

#[repr(C, align(16))]
struct Idt([u64; EXCEPTION_VECTORS * 2]);

static IDT: Global<Idt> = Global::new(Idt([0; EXCEPTION_VECTORS * 2]));

static EXPECT_MSR_FAULT: AtomicBool = AtomicBool::new(false);
static MSR_FAULTS: AtomicU32 = AtomicU32::new(0);

/// `lidt` operand.
#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

/// Fill the IDT with this image's stubs and load it.
pub fn init() {
    let stubs = tg_exception_stubs as *const () as u64;
    // SAFETY: the BSP, before any AP runs, interrupts off: nothing else touches IDT while it
    // is written.
    let idt = unsafe { &mut *IDT.get() };
    for v in 0..EXCEPTION_VECTORS {
        let handler = stubs + v as u64 * STUB_SIZE;
        idt.0[2 * v] = (handler & 0xffff)
            | (KERNEL_CS as u64) << 16
            | (GATE_INTERRUPT as u64) << 32
            | ((handler >> 16) & 0xffff) << 48;
        idt.0[2 * v + 1] = handler >> 32;
    }
    load(idt.0.as_ptr() as u64, (EXCEPTION_VECTORS * 16 - 1) as u16);
}

/// Load the IDT [`init`] filled, unchanged: for an AP, once the BSP ran `init`.
pub fn load_filled() {
    load(IDT.get() as u64, (EXCEPTION_VECTORS * 16 - 1) as u16);
}

/// Load an IDT (an empty one, limit 0, makes the next exception a triple fault).
pub fn load(base: u64, limit: u16) {
    let p = DescriptorPointer { limit, base };
    // SAFETY: LIDT reads the 10-byte operand; the table it names is `init`'s (static) or
    // deliberately empty.
    unsafe { asm!("lidt [{}]", in(reg) &p, options(readonly, nostack, preserves_flags)) }
}

/// RDMSR that may #GP: `None` when it faulted.
pub fn rdmsr_checked(msr: u32) -> Option<u64> {
    let before = MSR_FAULTS.load(Ordering::SeqCst);
    EXPECT_MSR_FAULT.store(true, Ordering::SeqCst);
    let v = crate::cpu::rdmsr(msr);
    EXPECT_MSR_FAULT.store(false, Ordering::SeqCst);
    (MSR_FAULTS.load(Ordering::SeqCst) == before).then_some(v)
}

/// WRMSR that may #GP: false when it faulted.
pub fn wrmsr_checked(msr: u32, value: u64) -> bool {
    let before = MSR_FAULTS.load(Ordering::SeqCst);
    EXPECT_MSR_FAULT.store(true, Ordering::SeqCst);
    crate::cpu::wrmsr(msr, value);
    EXPECT_MSR_FAULT.store(false, Ordering::SeqCst);
    MSR_FAULTS.load(Ordering::SeqCst) == before
}

/// RDMSR `0f 32`, WRMSR `0f 30`.
fn is_msr_instruction(rip: u64) -> bool {
    // SAFETY: RIP points at the faulting instruction in this image's code.
    let op = unsafe { core::ptr::read_volatile(rip as *const [u8; 2]) };
    op[0] == 0x0f && (op[1] == 0x30 || op[1] == 0x32)
}

#[no_mangle]
extern "C" fn tg_exception(frame: &mut Frame) {
    if frame.vector == GP_VECTOR && EXPECT_MSR_FAULT.load(Ordering::SeqCst) && is_msr_instruction(frame.rip) {
        MSR_FAULTS.fetch_add(1, Ordering::SeqCst);
        frame.rip += 2;
        return;
    }
    line()
        .s("exception ")
        .dec(frame.vector)
        .s(" error code ")
        .hex(frame.error_code)
        .s(" at rip ")
        .hex(frame.rip)
        .s(" rsp ")
        .hex(frame.rsp)
        .s(" rax ")
        .hex(frame.rax)
        .s(" rcx ")
        .hex(frame.rcx)
        .end();
    check::abort("unexpected exception")
}
