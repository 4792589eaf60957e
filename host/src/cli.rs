//! Command-line pieces shared by `cbs-host` and `cbs`.

use std::path::PathBuf;

use clap::Args;

use crate::bus::nats::NatsOptions;

/// How to reach NATS.
#[derive(Args, Debug, Clone)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated, e.g. nats://127.0.0.1:4222.
    #[arg(long = "nats", env = "CBS_NATS_URL", value_name = "URL")]
    pub url: Option<String>,
    /// User for user/password authentication.
    #[arg(long = "nats-user", env = "CBS_NATS_USER", requires = "password")]
    pub user: Option<String>,
    /// Password for user/password authentication.
    #[arg(long = "nats-password", env = "CBS_NATS_PASSWORD", requires = "user")]
    pub password: Option<String>,
    /// Token authentication.
    #[arg(long = "nats-token", env = "CBS_NATS_TOKEN")]
    pub token: Option<String>,
    /// NKey seed (SU...) authentication.
    #[arg(long = "nats-nkey", env = "CBS_NATS_NKEY", value_name = "SEED")]
    pub nkey: Option<String>,
    /// Credentials file (.creds: JWT + nkey seed).
    #[arg(long = "nats-creds", env = "CBS_NATS_CREDS", value_name = "FILE")]
    pub creds: Option<PathBuf>,
    /// CA certificate (PEM) that signed the server's certificate.
    #[arg(long = "nats-tls-ca", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long = "nats-tls-cert", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long = "nats-tls-key", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Refuse to connect without TLS.
    #[arg(long = "nats-tls-required")]
    pub tls_required: bool,
}

impl NatsArgs {
    /// Connection options, named `name`; `None` when no URL was given.
    pub fn options(&self, name: &str) -> Option<NatsOptions> {
        let urls = self.url.clone()?;
        Some(NatsOptions {
            urls,
            name: name.to_owned(),
            user: self.user.clone(),
            password: self.password.clone(),
            token: self.token.clone(),
            nkey_seed: self.nkey.clone(),
            creds: self.creds.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_required: self.tls_required,
        })
    }
}

/// `<hostname>-<pid>`: unique per host process, readable in tools.
pub fn default_host_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    format!("{host}-{}", std::process::id())
}
