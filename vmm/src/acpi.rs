//! ACPI tables: RSDP, XSDT, FADT (hardware-reduced), MADT and an extensible DSDT, built with
//! the `acpi_tables` crate and written into the reserved area at [`ACPI_START`].
//!
//! The RSDP stays at a fixed address in e820-reserved memory, so a crash kernel started by
//! `kexec -p` (which gets `acpi_rsdp=` on its command line) finds the same tables.

use acpi_tables::aml::{Name, Package, Path as AmlPath};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use devices::acpi_pm::{
    ACPI_PM_BASE, RESET_OFFSET, RESET_VALUE, S5_SLP_TYP, SLEEP_CONTROL_OFFSET, SLEEP_STATUS_OFFSET,
};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use devices::pvpanic::{PVPANIC_ACPI_HID, PVPANIC_PORT};
use devices::rtc::{RTC_ACPI_HID, RTC_BASE, RTC_LEN};
use devices::virtio::{VIRTIO_MMIO_ACPI_HID, VIRTIO_MMIO_WINDOW};

use crate::layout::{ACPI_END, ACPI_START, COM1_BASE, COM1_GSI, COM1_LEN, IOAPIC_ADDR, LAPIC_ADDR};

const OEM_ID: [u8; 6] = *b"CRSVMM";
const OEM_REVISION: u32 = 1;
/// FADT IA-PC boot architecture flag: no VGA. (`NO_CMOS_RTC`, bit 5, stays clear: the CMOS RTC
/// at 0x70 is there, and with the bit set Linux would not register it.)
const IAPC_BOOT_ARCH_NO_VGA: u16 = 1 << 2;

#[derive(Debug, Error)]
pub enum AcpiError {
    #[error("ACPI tables need {needed} bytes, only {available} are reserved")]
    TooLarge { needed: u64, available: u64 },
    #[error("{0} vCPUs do not fit in the MADT's 8-bit APIC ids")]
    TooManyVcpus(u32),
    #[error("cannot write ACPI tables into guest memory")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// The DSDT under construction. Devices are added as AML objects (for instance an
/// `aml::Device` with `_HID` and `_CRS`); they are serialized when added.
#[derive(Default)]
pub struct Dsdt {
    body: Vec<u8>,
}

impl Dsdt {
    /// A DSDT with the objects every guest needs (`\_S5_` for soft-off).
    pub fn new() -> Self {
        let mut dsdt = Self::default();
        dsdt.add(&Name::new(AmlPath::new("_S5_"), &Package::new(vec![&S5_SLP_TYP, &S5_SLP_TYP])));
        dsdt
    }

    /// Append a top-level AML object (use full paths such as `\_SB_.PEVT` for devices).
    pub fn add(&mut self, object: &dyn Aml) -> &mut Self {
        object.to_aml_bytes(&mut self.body);
        self
    }

    fn into_sdt(self) -> Sdt {
        let mut sdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"CRSHDSDT", OEM_REVISION);
        sdt.append_slice(&self.body);
        sdt
    }
}

fn io_gas(port: u16) -> GAS {
    GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, port as u64)
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut b = FADTBuilder::new(OEM_ID, *b"CRSHFACP", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    b.iapc_boot_arch = IAPC_BOOT_ARCH_NO_VGA.into();
    b.reset_reg = io_gas(ACPI_PM_BASE + RESET_OFFSET);
    b.reset_value = RESET_VALUE;
    b.sleep_control_reg = io_gas(ACPI_PM_BASE + SLEEP_CONTROL_OFFSET);
    b.sleep_status_reg = io_gas(ACPI_PM_BASE + SLEEP_STATUS_OFFSET);
    // "KVMKVMKVM\0\0\0" would tell the guest which hypervisor it runs on; leave it empty so the
    // CPUID leaves alone decide (the Hyper-V issue hides KVM on purpose).
    let mut bytes = Vec::new();
    b.finalize().to_aml_bytes(&mut bytes);
    bytes
}

fn madt(vcpus: u32) -> Result<Vec<u8>, AcpiError> {
    if vcpus > 255 {
        return Err(AcpiError::TooManyVcpus(vcpus));
    }
    let mut madt = MADT::new(OEM_ID, *b"CRSHAPIC", OEM_REVISION, LocalInterruptController::Address(LAPIC_ADDR));
    for id in 0..vcpus as u8 {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    // IOAPIC id 0, as KVM's in-kernel IOAPIC reports after reset (APIC and IOAPIC ids are
    // separate name spaces on x86-64).
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR, 0));
    let mut bytes = Vec::new();
    madt.to_aml_bytes(&mut bytes);
    Ok(bytes)
}

/// Lay the tables out from [`ACPI_START`], write them, and return the RSDP address.
pub fn write_acpi_tables(mem: &GuestMemoryMmap, vcpus: u32, dsdt: Dsdt) -> Result<u64, AcpiError> {
    let align = |x: u64| x.next_multiple_of(16);
    let rsdp_addr = ACPI_START;
    let dsdt_addr = align(rsdp_addr + Rsdp::len() as u64);
    let dsdt = dsdt.into_sdt();
    let fadt_addr = align(dsdt_addr + dsdt.len() as u64);
    let fadt = fadt(dsdt_addr);
    let madt_addr = align(fadt_addr + fadt.len() as u64);
    let madt = madt(vcpus)?;
    let xsdt_addr = align(madt_addr + madt.len() as u64);
    let mut xsdt = XSDT::new(OEM_ID, *b"CRSHXSDT", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);
    let end = xsdt_addr + xsdt_bytes.len() as u64;
    if end > ACPI_END {
        return Err(AcpiError::TooLarge { needed: end - ACPI_START, available: ACPI_END - ACPI_START });
    }
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp);
    for (addr, bytes) in [
        (rsdp_addr, rsdp.as_slice()),
        (dsdt_addr, dsdt.as_slice()),
        (fadt_addr, fadt.as_slice()),
        (madt_addr, madt.as_slice()),
        (xsdt_addr, xsdt_bytes.as_slice()),
    ] {
        mem.write_slice(bytes, GuestAddress(addr))?;
    }
    Ok(rsdp_addr)
}

// The DSDT's device nodes, one function per device crashvmm describes.

/// Describe COM1 in the DSDT. On a hardware-reduced ACPI platform Linux has no legacy PIC and
/// so no built-in ISA IRQ mappings: the serial port's IRQ 4 only gets an IOAPIC route through
/// this `_CRS` (without it, opening /dev/ttyS0 fails and user-space console output is lost).
pub fn add_com1(dsdt: &mut Dsdt) {
    use acpi_tables::aml::{Device, EISAName, Interrupt, Name, Path, ResourceTemplate, IO};
    dsdt.add(&Device::new(
        Path::new("_SB_.COM1"),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new("PNP0501")),
            &Name::new(Path::new("_UID"), &0u8),
            &Name::new(
                Path::new("_CRS"),
                &ResourceTemplate::new(vec![
                    &IO::new(COM1_BASE, COM1_BASE, 1, COM1_LEN as u8),
                    // Consumer, edge-triggered, active-high, exclusive: an ISA interrupt.
                    &Interrupt::new(true, true, false, false, COM1_GSI),
                ]),
            ),
        ],
    ));
}

/// Describe pvpanic as QEMU's ISA device: `QEMU0001` with one I/O port.
pub fn add_pvpanic(dsdt: &mut Dsdt) {
    use acpi_tables::aml::{Device, Name, Path, ResourceTemplate, IO};
    dsdt.add(&Device::new(
        Path::new("_SB_.PEVT"),
        vec![
            &Name::new(Path::new("_HID"), &PVPANIC_ACPI_HID),
            &Name::new(Path::new("_CRS"), &ResourceTemplate::new(vec![&IO::new(PVPANIC_PORT, PVPANIC_PORT, 1, 1)])),
        ],
    ));
}

/// Describe the CMOS RTC as `PNP0B00` with its two ports, so that Linux's `rtc_cmos` binds to
/// it through PnP ACPI (a hardware-reduced platform has no other way to announce it). No IRQ:
/// the device raises none, and `rtc_cmos` then runs without alarms.
pub fn add_rtc(dsdt: &mut Dsdt) {
    use acpi_tables::aml::{Device, EISAName, Name, Path, ResourceTemplate, IO};
    dsdt.add(&Device::new(
        Path::new("_SB_.RTC_"),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new(RTC_ACPI_HID)),
            &Name::new(Path::new("_CRS"), &ResourceTemplate::new(vec![&IO::new(RTC_BASE, RTC_BASE, 1, RTC_LEN as u8)])),
        ],
    ));
}

/// A virtio-mmio device for Linux's `virtio_mmio` driver, which matches ACPI `LNRO0005` (the
/// Debian kernels lack `virtio_mmio.device=` on the command line): its register window and its
/// interrupt.
pub fn add_virtio_mmio(dsdt: &mut Dsdt, index: usize, base: u64, gsi: u32) {
    use acpi_tables::aml::{Device, Interrupt, Memory32Fixed, Name, Path, ResourceTemplate};
    dsdt.add(&Device::new(
        Path::new(&format!("_SB_.VR{index:02}")),
        vec![
            &Name::new(Path::new("_HID"), &VIRTIO_MMIO_ACPI_HID),
            &Name::new(Path::new("_UID"), &(index as u8)),
            &Name::new(
                Path::new("_CRS"),
                &ResourceTemplate::new(vec![
                    &Memory32Fixed::new(true, base as u32, VIRTIO_MMIO_WINDOW as u32),
                    &Interrupt::new(true, true, false, false, gsi),
                ]),
            ),
        ],
    ));
}

/// The VMBus root device `hv_vmbus` probes for (`_HID "VMBus"`); its `_CRS` must exist,
/// empty is fine on x86.
/// PCI bus 0's host bridge (`PNP0A03`): bus number 0, configuration mechanism #1's ports and
/// the memory window of `size` bytes from `start` its functions' BARs lie in. Conventional PCI,
/// so no `_OSC` and no MMCONFIG; functions signal MSI-X only, so no `_PRT`.
pub fn add_pci_root(dsdt: &mut Dsdt, start: u64, size: u64) {
    use acpi_tables::aml::{AddressSpace, AddressSpaceCacheable, Device, EISAName, Name, Path, ResourceTemplate, IO};
    use devices::pci::{PCI_CONFIG_IO_LEN, PCI_CONFIG_IO_PORT};
    dsdt.add(&Device::new(
        Path::new("_SB_.PCI0"),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new("PNP0A03")),
            &Name::new(Path::new("_ADR"), &0u8),
            &Name::new(Path::new("_SEG"), &0u8),
            &Name::new(Path::new("_UID"), &0u8),
            &Name::new(Path::new("_BBN"), &0u8),
            &Name::new(
                Path::new("_CRS"),
                &ResourceTemplate::new(vec![
                    &AddressSpace::new_bus_number(0u16, 0u16),
                    &IO::new(PCI_CONFIG_IO_PORT, PCI_CONFIG_IO_PORT, 1, PCI_CONFIG_IO_LEN as u8),
                    &AddressSpace::new_memory(
                        AddressSpaceCacheable::NotCacheable,
                        true,
                        start as u32,
                        (start + size - 1) as u32,
                        None,
                    ),
                ]),
            ),
        ],
    ));
}

pub fn add_vmbus(dsdt: &mut Dsdt) {
    use acpi_tables::aml::{Device, Name, Path, ResourceTemplate};
    dsdt.add(&Device::new(
        Path::new("_SB_.VMBS"),
        vec![
            &Name::new(Path::new("_HID"), &"VMBus"),
            &Name::new(Path::new("_UID"), &0u8),
            &Name::new(Path::new("_DDN"), &"VMBUS"),
            &Name::new(Path::new("_STA"), &0x0fu8),
            &Name::new(Path::new("_CRS"), &ResourceTemplate::new(vec![])),
        ],
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::ram_ranges;

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    /// Read a table at `addr` and check its signature, length and checksum.
    fn table(mem: &GuestMemoryMmap, addr: u64, sig: &[u8; 4]) -> Vec<u8> {
        let head = read(mem, addr, 8);
        assert_eq!(&head[..4], sig);
        let t = read(mem, addr, u32_at(&head, 4) as usize);
        assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0, "{sig:?} checksum");
        t
    }

    #[test]
    fn tables_chain_from_rsdp_with_valid_checksums() {
        let mem = GuestMemoryMmap::from_ranges(&ram_ranges(64 << 20)).unwrap();
        let rsdp_addr = write_acpi_tables(&mem, 4, Dsdt::new()).unwrap();
        let rsdp = read(&mem, rsdp_addr, 36);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(rsdp[..20].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(rsdp.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let xsdt = table(&mem, u64_at(&rsdp, 24), b"XSDT");
        assert_eq!(xsdt.len(), 36 + 16);
        let fadt = table(&mem, u64_at(&xsdt, 36), b"FACP");
        let madt = table(&mem, u64_at(&xsdt, 44), b"APIC");
        // FADT: HW_REDUCED_ACPI and RESET_REG_SUP, X_DSDT points at the DSDT.
        let flags = u32_at(&fadt, 112);
        assert_ne!(flags & (1 << 20), 0);
        assert_ne!(flags & (1 << 10), 0);
        let dsdt = table(&mem, u64_at(&fadt, 140), b"DSDT");
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
        // IAPC_BOOT_ARCH: no VGA, and a CMOS RTC (NO_CMOS_RTC, bit 5, clear).
        assert_eq!(u16::from_le_bytes([fadt[109], fadt[110]]), 1 << 2);
        // Reset register: system I/O at the PM block.
        assert_eq!(fadt[116], 1);
        assert_eq!(u64_at(&fadt, 120), (ACPI_PM_BASE + RESET_OFFSET) as u64);
        assert_eq!(fadt[128], RESET_VALUE);
        // MADT: one enabled local APIC per vCPU, then the IOAPIC.
        assert_eq!(u32_at(&madt, 36), LAPIC_ADDR);
        let mut off = 44;
        let mut lapics = vec![];
        while off < madt.len() {
            let (kind, len) = (madt[off], madt[off + 1] as usize);
            if kind == 0 {
                assert_eq!(u32_at(&madt, off + 4), 1, "enabled");
                lapics.push(madt[off + 3]);
            } else {
                assert_eq!(kind, 1);
                assert_eq!(u32_at(&madt, off + 4), IOAPIC_ADDR);
            }
            off += len;
        }
        assert_eq!(lapics, vec![0, 1, 2, 3]);
    }

    #[test]
    fn dsdt_takes_extra_devices() {
        use acpi_tables::aml::{Device, ResourceTemplate, IO};
        let mem = GuestMemoryMmap::from_ranges(&ram_ranges(64 << 20)).unwrap();
        let mut dsdt = Dsdt::new();
        dsdt.add(&Device::new(
            AmlPath::new("_SB_.PEVT"),
            vec![
                &Name::new(AmlPath::new("_HID"), &"QEMU0001"),
                &Name::new(AmlPath::new("_CRS"), &ResourceTemplate::new(vec![&IO::new(0x505, 0x505, 1, 1)])),
            ],
        ));
        let rsdp_addr = write_acpi_tables(&mem, 1, dsdt).unwrap();
        let rsdp = read(&mem, rsdp_addr, 36);
        let xsdt = table(&mem, u64_at(&rsdp, 24), b"XSDT");
        let fadt = table(&mem, u64_at(&xsdt, 36), b"FACP");
        let dsdt = table(&mem, u64_at(&fadt, 140), b"DSDT");
        assert!(dsdt.windows(8).any(|w| w == b"QEMU0001"));
    }

    #[test]
    fn too_many_vcpus_is_an_error() {
        let mem = GuestMemoryMmap::from_ranges(&ram_ranges(64 << 20)).unwrap();
        assert!(matches!(write_acpi_tables(&mem, 256, Dsdt::new()), Err(AcpiError::TooManyVcpus(256))));
    }

    #[test]
    fn dsdt_describes_the_rtc_with_its_ports_and_no_irq() {
        let mem = GuestMemoryMmap::from_ranges(&ram_ranges(64 << 20)).unwrap();
        let mut dsdt = Dsdt::new();
        add_rtc(&mut dsdt);
        write_acpi_tables(&mem, 1, dsdt).unwrap();
        let mut tables = vec![0; (ACPI_END - ACPI_START) as usize];
        mem.read_slice(&mut tables, GuestAddress(ACPI_START)).unwrap();
        let has = |bytes: &[u8]| tables.windows(bytes.len()).any(|w| w == bytes);
        // _HID: EISA id PNP0B00 as a DWord constant.
        assert!(has(&[0x0c, 0x41, 0xd0, 0x0b, 0x00]));
        // _CRS: IO (Decode16, 0x70, 0x70, 1, 2), then the end tag: no interrupt descriptor.
        assert!(has(&[0x47, 0x01, 0x70, 0x00, 0x70, 0x00, 0x01, 0x02, 0x79]));
    }
}
