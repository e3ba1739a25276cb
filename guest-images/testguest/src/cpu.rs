//! The few privileged instructions the guest needs, each in one small function.

use core::arch::asm;

pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects; every port the guest writes is a device it means.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) }
}

pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as `outb`.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags)) }
    value
}

pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: a faulting RDMSR raises #GP, which idt.rs handles; no memory is touched.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nostack, preserves_flags)) }
    (hi as u64) << 32 | lo as u64
}

pub fn wrmsr(msr: u32, value: u64) {
    // SAFETY: as `rdmsr`. Not `nomem`: some MSRs make the hypervisor write guest memory
    // (the hypercall page), so the compiler must not keep memory values across it.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack, preserves_flags))
    }
}

/// CPUID leaf `leaf`, subleaf 0: (EAX, EBX, ECX, EDX).
pub fn cpuid(leaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, 0);
    [r.eax, r.ebx, r.ecx, r.edx]
}

pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

pub fn pause() {
    core::hint::spin_loop();
}

/// Stop this CPU for good: interrupts off, HLT forever.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: CLI; HLT stops the CPU; nothing after it depends on memory state.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

/// The current instruction pointer.
pub fn rip() -> u64 {
    let rip: u64;
    // SAFETY: LEA of the next instruction reads no memory.
    unsafe { asm!("lea {}, [rip]", out(reg) rip, options(nomem, nostack, preserves_flags)) }
    rip
}

/// Power off (ACPI S5, see acpi.rs); halts if the platform does not stop the VM.
pub fn power_off() -> ! {
    crate::acpi::power_off();
    // A platform may take a moment to act on it.
    crate::time::wait_ms(500);
    crate::serial::puts("TG: power-off did not stop the VM; halting\n");
    halt_forever()
}
