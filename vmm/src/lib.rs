//! crashvmm: a KVM virtual machine monitor built for the moment a guest kernel dies.
//!
//! This crate owns KVM, threads, files and policy. Device and protocol state machines live in
//! the `devices` crate. Start with `docs/DESIGN.md`.

pub mod acpi;
pub mod api;
pub mod boot;
pub mod builder;
pub mod config;
pub mod console;
pub mod control;
pub mod cpuid;
pub mod crash;
pub mod disk;
pub mod events;
pub mod exit;
pub mod files;
pub mod hyperv;
pub mod layout;
pub mod seccomp;
pub mod sync;
pub mod vcpu;
pub mod vm;
pub mod vmbus;
pub mod watchdog;
