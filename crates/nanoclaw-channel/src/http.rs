//! HTTP clients: reqwest with rustls on the ring provider (installed once), so https
//! works without OpenSSL and without a C toolchain beyond what SQLite needs.

/// Installs the ring provider as rustls's default (once), for every TLS user.
pub fn install_tls_provider() {
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client builder with TLS ready.
pub fn client() -> reqwest::ClientBuilder {
    install_tls_provider();
    reqwest::Client::builder()
}
