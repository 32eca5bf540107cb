//! The WhatsApp channel (SPEC §13.4, issue 13): the assistant as a linked device on the
//! user's own WhatsApp, over whatsapp-rust (pinned, tokio transport).
//!
//! Built so far: [`store`], whatsapp-rust's key store on our own SQLite under
//! `store/auth/`; [`adapter`], the small interface to a WhatsApp client (events in, sends
//! out) with a fake; and [`channel`], the channel's rules over it. Not yet: the adapter
//! over whatsapp-rust, the host's wiring, `nanoclaw whatsapp link|status|unlink`, and
//! the wire test (docs/decisions.md §60).

pub mod adapter;
pub mod channel;
pub mod store;
