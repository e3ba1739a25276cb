//! The VMBus control channel, sans-IO: guest messages come in from HvPostMessage, replies go
//! out as [`Output::Send`] for the VMM to post through SynIC SINT 2 (guest-protocol §5).

pub mod messages;
pub mod server;

pub use server::{Output, SendKind, ServerConfig, ServerEvent, VmbusServer};
