//! The process's TLS crypto provider. reqwest's rustls (the registry
//! client, the OTLP trace exporter) takes the process-level provider and
//! panics without one; CBS uses ring, as async-nats does, for all of them.

/// Installs ring as the process's provider (once; later calls do nothing).
pub fn install_crypto_provider() {
    // Err only when one is installed already: ours or a library user's.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
