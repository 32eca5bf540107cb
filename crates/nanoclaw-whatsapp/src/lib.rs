//! The WhatsApp channel (SPEC §13.4, issue 13): the assistant as a linked device on the
//! user's own WhatsApp, over whatsapp-rust (pinned, tokio transport).
//!
//! Built so far: [`store`], whatsapp-rust's key store on our own SQLite under
//! `store/auth/`. Not yet: the client adapter, the channel, `nanoclaw whatsapp
//! link|status|unlink`, and their tests (see docs/decisions.md §60).

pub mod store;
