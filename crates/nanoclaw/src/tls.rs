//! HTTP clients: reqwest with rustls on the ring provider (installed once), so https
//! works without OpenSSL and without a C toolchain beyond what SQLite needs.

/// A client builder with TLS ready.
pub fn client() -> reqwest::ClientBuilder {
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
}
