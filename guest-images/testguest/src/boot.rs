//! The way in: the PVH entry note, the 32-bit entry stub (identity page tables for the first
//! 4 GiB, GDT, PAE + LME + paging, far jump to 64-bit code), the relocator, and the entry of
//! the copied "crash kernel" stage.
//!
//! The image is linked at [`LINK_BASE`] as a static PIE (see linker.ld). The 32-bit stub and
//! everything it touches live in `.text.boot`, so it reaches them as `LINK_BASE + (symbol -
//! boot_start)`, a constant the assembler computes: no relocation, no stack (PVH gives none).
//! In 64-bit mode all code is RIP-relative; [`tg_relocate`] applies `.rela.dyn` for the few
//! absolute pointers in data (`delta` 0 when running where linked).
//!
//! PVH ABI (xen/include/public/arch-x86/hvm/start_info.h): 32-bit protected mode, paging off,
//! flat CS (code) and DS/ES/SS (data), EBX = physical address of `struct hvm_start_info`.
//!
//! The entry's first three instructions write [`FIRST_BYTE`] to COM1, before anything else
//! (they clobber only EAX and EDX): `make bench` times a VMM's start to the first guest
//! instruction as its start to the first serial byte. A newline leaves the `TG: ` lines as
//! they are (an empty line before them) and flushes a line-buffered console at once.

use core::arch::global_asm;

/// Where the image is linked and where a PVH loader puts it (linker.ld says the same).
pub const LINK_BASE: u64 = 0x10_0000;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the PVH entry point note type.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// GDT selectors of the boot GDT.
pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
/// `R_X86_64_RELATIVE`.
pub const R_X86_64_RELATIVE: u32 = 8;
/// What the PVH entry writes to COM1 first.
pub const FIRST_BYTE: u8 = b'\n';

pub const CR0_PE: u32 = 1 << 0;
pub const CR0_PG: u32 = 1 << 31;
pub const CR4_PAE: u32 = 1 << 5;
pub const MSR_EFER: u32 = 0xc000_0080;
pub const EFER_LME: u32 = 1 << 8;
/// Page directory entry: present, writable, 2 MiB page.
const PDE_LARGE: u64 = 0x83;
/// Page directory entry for the MMIO GiB (3-4 GiB): also PWT and PCD (uncached).
const PDE_LARGE_UC: u64 = PDE_LARGE | 0x18;
/// Page table (PML4 / PDPT) entry: present, writable.
const PTE_TABLE: u64 = 0x3;

global_asm!(
    // The PVH entry note. Its descriptor is the 32-bit physical entry; linker.ld asserts that
    // pvh_start32 is the first byte of the image, at LINK_BASE.
    r#"
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 4
    .long {note_type}
    .asciz "Xen"
    .balign 4
    .long {link_base}
    .balign 4
    .popsection

    .pushsection .text.boot, "awx", @progbits
    .code32
    .globl pvh_start32
boot_start:
pvh_start32:
    mov ${com1}, %dx
    mov ${first_byte}, %al
    out %al, %dx
    cli
    cld
    mov %ebx, %esi
    lgdtl ({link_base} + (boot_gdt_ptr32 - boot_start))
    mov %cr4, %eax
    or ${cr4_pae}, %eax
    mov %eax, %cr4
    mov ${link_base} + (boot_pml4 - boot_start), %eax
    mov %eax, %cr3
    mov ${msr_efer}, %ecx
    rdmsr
    or ${efer_lme}, %eax
    wrmsr
    mov %cr0, %eax
    or ${cr0_pe_pg}, %eax
    mov %eax, %cr0
    ljmpl ${kernel_cs}, ${link_base} + (boot_start64 - boot_start)

    .code64
boot_start64:
    mov ${kernel_ds}, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    lea __stack_top(%rip), %rsp
    mov %esi, %r12d
    xor %edi, %edi
    call tg_relocate
    mov %eax, %r13d
    call tg_zero_bss
    mov %r12, %rdi
    mov %r13, %rsi
    call tg_main
1:  cli
    hlt
    jmp 1b

    // The copied image's entry (the kdump scenario's "crash kernel"): RDI = hvm_start_info,
    // RSI = base of the image that jumped here, RDX = its failed checks. Runs with that
    // image's page tables and GDT, moves to its own right away.
    .globl tg_stage2_entry
tg_stage2_entry:
    cli
    cld
    lea __stack_top(%rip), %rsp
    mov %rdi, %r12
    mov %rsi, %r13
    mov %edx, %ebx
    lea __image_start(%rip), %rdi
    sub ${link_base}, %rdi
    mov %rdi, %r14
    call tg_relocate
    mov %eax, %r15d
    // The page tables hold physical addresses of the linked image: move them by delta.
    lea boot_pml4(%rip), %rax
    add %r14, (%rax)
    lea boot_pdpt(%rip), %rax
    add %r14, (%rax)
    add %r14, 8(%rax)
    add %r14, 16(%rax)
    add %r14, 24(%rax)
    lea boot_pml4(%rip), %rax
    mov %rax, %cr3
    sub $16, %rsp
    movw $(boot_gdt_end - boot_gdt - 1), (%rsp)
    lea boot_gdt(%rip), %rax
    mov %rax, 2(%rsp)
    lgdt (%rsp)
    add $16, %rsp
    pushq ${kernel_cs}
    lea 2f(%rip), %rax
    push %rax
    lretq
2:  mov ${kernel_ds}, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    call tg_zero_bss
    mov %r12, %rdi
    mov %r13, %rsi
    mov %r15, %rdx
    mov %rbx, %rcx
    call tg_stage2_main
3:  cli
    hlt
    jmp 3b

    // tg_relocate(delta: RDI) -> EAX = relocations of a type other than R_X86_64_RELATIVE
    // (skipped). For each entry: *(r_offset + delta) = r_addend + delta.
tg_relocate:
    lea __rela_start(%rip), %rsi
    lea __rela_end(%rip), %rcx
    xor %eax, %eax
4:  cmp %rcx, %rsi
    jae 6f
    cmpl ${r_relative}, 8(%rsi)
    jne 5f
    mov (%rsi), %rdx
    add %rdi, %rdx
    mov 16(%rsi), %r8
    add %rdi, %r8
    mov %r8, (%rdx)
    add $24, %rsi
    jmp 4b
5:  inc %eax
    add $24, %rsi
    jmp 4b
6:  ret

    // Zero .bss (8-byte aligned at both ends, linker.ld).
tg_zero_bss:
    lea __bss_start(%rip), %rdi
    lea __bss_end(%rip), %rcx
    sub %rdi, %rcx
    shr $3, %rcx
    xor %eax, %eax
    rep stosq
    ret

    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
boot_gdt_end:
boot_gdt_ptr32:
    .word boot_gdt_end - boot_gdt - 1
    .long {link_base} + (boot_gdt - boot_start)

    // Identity map of the first 4 GiB with 2 MiB pages, built by the assembler.
    .balign 4096
boot_pml4:
    .quad {link_base} + (boot_pdpt - boot_start) + {pte_table}
    .fill 511, 8, 0
boot_pdpt:
    .quad {link_base} + (boot_pd - boot_start) + {pte_table}
    .quad {link_base} + (boot_pd - boot_start) + 0x1000 + {pte_table}
    .quad {link_base} + (boot_pd - boot_start) + 0x2000 + {pte_table}
    .quad {link_base} + (boot_pd - boot_start) + 0x3000 + {pte_table}
    .fill 508, 8, 0
boot_pd:
    .set tg_pde, 0
    .rept 1536
    .quad (tg_pde << 21) + {pde_large}
    .set tg_pde, tg_pde + 1
    .endr
    .rept 512
    .quad (tg_pde << 21) + {pde_large_uc}
    .set tg_pde, tg_pde + 1
    .endr
    .popsection
    "#,
    note_type = const XEN_ELFNOTE_PHYS32_ENTRY,
    com1 = const crate::serial::COM1,
    first_byte = const FIRST_BYTE,
    link_base = const LINK_BASE,
    cr4_pae = const CR4_PAE,
    msr_efer = const MSR_EFER,
    efer_lme = const EFER_LME,
    cr0_pe_pg = const CR0_PE | CR0_PG,
    kernel_cs = const KERNEL_CS,
    kernel_ds = const KERNEL_DS,
    r_relative = const R_X86_64_RELATIVE,
    pte_table = const PTE_TABLE,
    pde_large = const PDE_LARGE,
    pde_large_uc = const PDE_LARGE_UC,
    options(att_syntax)
);

extern "C" {
    static __image_start: u8;
    static __text_end: u8;
    static __bss_start: u8;
    static __image_end: u8;
    fn tg_stage2_entry();
}

/// The loaded part of this image (code, data, relocations): what a copy must carry.
pub fn image_range() -> (u64, u64) {
    (&raw const __image_start as u64, &raw const __bss_start as u64)
}

/// The whole image in memory: code, data, .bss and the stack.
pub fn image_extent() -> (u64, u64) {
    (&raw const __image_start as u64, &raw const __image_end as u64)
}

/// This image's code (`.text.boot` and `.text`).
pub fn text_range() -> (u64, u64) {
    (&raw const __image_start as u64, &raw const __text_end as u64)
}

/// Offset of the copied image's entry from the image start.
pub fn stage2_entry_offset() -> u64 {
    tg_stage2_entry as *const () as u64 - image_range().0
}
