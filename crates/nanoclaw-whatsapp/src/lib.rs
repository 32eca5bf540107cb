//! The WhatsApp channel (SPEC §13.4, issue 13): the assistant as a linked device on the
//! user's own WhatsApp, over whatsapp-rust (pinned, tokio transport).
//!
//! - [`store`]: whatsapp-rust's key store on our own SQLite under `store/auth/`;
//! - [`adapter`]: the small interface to a WhatsApp client (events in, sends out), with
//!   a fake for tests;
//! - [`channel`]: the channel's rules over it;
//! - [`live`]: the interface over whatsapp-rust, the real connection;
//! - [`link`]: `nanoclaw whatsapp link|unlink`, with the QR code in the terminal.
//!
//! See docs/decisions.md §60.

pub mod adapter;
pub mod channel;
pub mod link;
pub mod live;
pub mod store;
