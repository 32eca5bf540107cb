//! HTTP clients with TLS ready (rustls on the ring provider): the channel contract's,
//! so every part of nanoclaw builds them the same way.

pub use nanoclaw_channel::http::client;
