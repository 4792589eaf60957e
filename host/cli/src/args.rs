//! Flags shared by subcommands of `cbs-host` and `cbs`: how to reach NATS,
//! how to log, and how to run the wasm engine.

use std::path::PathBuf;
use std::sync::Arc;

use cbs_host::body::Sources;
use cbs_host::bundle::{Bundle, PublicKey, Trust};
use cbs_host::bus::nats::{NatsBus, NatsOptions};
use cbs_host::deploy::Store;
use cbs_host::runtime::wasm::{ComponentCache, EngineOptions, WasmRuntime};
use cbs_host::telemetry::{self, LogFormat};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;

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

impl NatsArgs {
    /// Connects as a client (`cbs` commands): to `nats://127.0.0.1:4222`
    /// when no URL is given.
    pub async fn connect_client(&self) -> anyhow::Result<NatsBus> {
        let mut nats = self.clone();
        let url = nats
            .url
            .get_or_insert_with(|| "nats://127.0.0.1:4222".to_owned())
            .clone();
        let options = NatsOptions {
            urls: url,
            ..nats
                .options(&format!("cbs-cli-{}", std::process::id()))
                .unwrap_or_default()
        };
        Ok(NatsBus::connect(&options).await?)
    }

    /// Connects as a client and opens the deployment buckets.
    pub async fn open_store(&self) -> anyhow::Result<(NatsBus, Store)> {
        let bus = self.connect_client().await?;
        let store = Store::open(bus.client()).await?;
        Ok((bus, store))
    }
}

/// How to log (stderr).
#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// Log format on stderr.
    #[arg(
        long,
        value_parser = names_of::<LogFormat>(),
        default_value_t,
        global = true,
        env = "CBS_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// Log filter: a level (error, warn, info, debug, trace) or tracing
    /// directives such as `cbs_host=debug`; RUST_LOG overrides it
    /// [default: info for cbs-host, warn for cbs].
    #[arg(long, global = true, env = "CBS_LOG")]
    pub log_level: Option<String>,
}

impl LogArgs {
    /// Logs to stderr at `--log-level`, else at `default`, and exports spans
    /// to `otlp` when given.
    pub fn init(
        &self,
        default: &str,
        otlp: Option<String>,
    ) -> anyhow::Result<telemetry::Telemetry> {
        let level = self.log_level.as_deref().unwrap_or(default);
        telemetry::init_with_otlp(self.log_format, level, otlp)
    }
}

/// How to run the wasm engine.
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Folder of precompiled components [default: $CBS_CACHE_DIR, else
    /// ~/.cache/cbs/components].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Compile every component at load; write no cache.
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_cache: bool,
    /// Cell instances alive at once across all cells (sizes the pool).
    #[arg(long, default_value_t = EngineOptions::default().max_instances)]
    pub max_instances: u32,
    /// Largest memory a cell may be granted, in MiB.
    #[arg(long, default_value_t = EngineOptions::default().max_memory_mb)]
    pub max_memory_mb: u32,
}

impl EngineArgs {
    /// Trust for bundles, and where they unpack: next to the component cache.
    pub fn sources(&self, trust: &[String], process_bundles: bool) -> anyhow::Result<Sources> {
        let keys = trust
            .iter()
            .map(|t| PublicKey::parse_arg(t))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let unpack_dir = match (&self.cache_dir, self.no_cache) {
            (Some(dir), _) => dir.join("bundles"),
            (None, true) => {
                std::env::temp_dir().join(format!("cbs-bundles-{}", std::process::id()))
            }
            (None, false) => Bundle::default_unpack_dir(),
        };
        Ok(Sources {
            trust: Trust::new(keys),
            unpack_dir,
            process_bundles,
        })
    }

    pub fn runtime(&self) -> anyhow::Result<Arc<WasmRuntime>> {
        let options = EngineOptions {
            max_instances: self.max_instances,
            max_memory_mb: self.max_memory_mb,
        };
        let cache = if self.no_cache {
            None
        } else {
            self.cache_dir.clone().or_else(ComponentCache::default_dir)
        };
        Ok(Arc::new(WasmRuntime::new(&options, cache)?))
    }
}

/// A flag's parser for an enum of the library: one of its snake_case names.
pub fn names_of<T>() -> impl TypedValueParser<Value = T>
where
    T: std::str::FromStr + strum::VariantNames + Clone + Send + Sync + 'static,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    PossibleValuesParser::new(T::VARIANTS).try_map(|name| name.parse::<T>())
}
