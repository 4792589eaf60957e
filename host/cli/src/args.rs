//! Flags shared by subcommands of `cbs-host` and `cbs`: how to reach NATS,
//! how to log, and how to run the wasm engine.

use std::path::PathBuf;
use std::sync::Arc;

use cbs_host::body::{Sources, DEFAULT_UNPACK_MAX_BYTES};
use cbs_host::bundle::{PublicKey, Trust};
use cbs_host::bus::nats::{NatsBus, NatsOptions};
use cbs_host::deploy::Store;
use cbs_host::http::oidc::{Oidc, OidcConfig, RoleRule, RoleRules};
use cbs_host::http::{auth, listen};
use cbs_host::runtime::python::venvs::{self, VenvCache};
use cbs_host::runtime::wasm::{Compiler, ComponentCache, EngineOptions, WasmRuntime};
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

/// A second NATS identity for what cells do (`cbs-host run`): their calls
/// over the bus and their publishes. Give it a user whose permissions deny
/// `$JS.>`, `$KV.>`, `$O.>`, `$SYS.>` and the host's internal subjects
/// (docs/security.md, role "cell traffic"): the server then refuses a
/// cell what the host's own grants check would refuse too.
#[derive(Args, Debug, Clone, Default)]
pub struct CellNatsArgs {
    /// User for cell traffic (password authentication), on the --nats
    /// servers with the same TLS settings.
    #[arg(
        id = "cell_user",
        long = "cell-nats-user",
        value_name = "USER",
        env = "CBS_CELL_NATS_USER",
        requires = "cell_password"
    )]
    pub user: Option<String>,
    /// Password of --cell-nats-user.
    #[arg(
        id = "cell_password",
        long = "cell-nats-password",
        value_name = "PASSWORD",
        env = "CBS_CELL_NATS_PASSWORD",
        requires = "cell_user"
    )]
    pub password: Option<String>,
    /// NKey seed (SU...) for cell traffic.
    #[arg(
        id = "cell_nkey",
        long = "cell-nats-nkey",
        env = "CBS_CELL_NATS_NKEY",
        value_name = "SEED"
    )]
    pub nkey: Option<String>,
    /// Credentials file (.creds) for cell traffic.
    #[arg(
        id = "cell_creds",
        long = "cell-nats-creds",
        env = "CBS_CELL_NATS_CREDS",
        value_name = "FILE"
    )]
    pub creds: Option<PathBuf>,
}

impl CellNatsArgs {
    /// Whether a cell identity is given at all.
    pub fn is_set(&self) -> bool {
        self.user.is_some() || self.nkey.is_some() || self.creds.is_some()
    }

    /// The host's connection options with the cell identity instead of
    /// the host's; `None` when no cell identity is given.
    pub fn options(&self, host: &NatsOptions) -> Option<NatsOptions> {
        if !self.is_set() {
            return None;
        }
        Some(NatsOptions {
            name: format!("{}-cells", host.name),
            user: self.user.clone(),
            password: self.password.clone(),
            token: None,
            nkey_seed: self.nkey.clone(),
            creds: self.creds.clone(),
            ..host.clone()
        })
    }
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
    /// [default: info for cbs-host and cbs gateway, warn for cbs].
    #[arg(long, global = true, env = "CBS_LOG")]
    pub log_level: Option<String>,
}

impl LogArgs {
    /// Logs to stderr at `--log-level`, else at `default`, and exports spans
    /// to `otlp` when given.
    /// Logs at `default` unless told otherwise; exports spans as
    /// `exporter` says.
    pub fn init(
        &self,
        default: &str,
        exporter: telemetry::Exporter,
    ) -> anyhow::Result<telemetry::Telemetry> {
        let level = self.log_level.as_deref().unwrap_or(default);
        telemetry::init_with_otlp(self.log_format, level, exporter)
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
    /// How a component missing from the cache is compiled: `tiered` serves
    /// at once with Winch's code and switches to Cranelift's when it is
    /// compiled in the background; `optimized` compiles with Cranelift
    /// before serving.
    #[arg(long, value_parser = names_of::<Compiler>(), default_value_t, env = "CBS_COMPILER")]
    pub compiler: Compiler,
    /// Largest the component cache grows, in MiB; past it, the least
    /// recently used entries are removed.
    #[arg(long, env = "CBS_CACHE_MAX_MB", value_name = "MIB", default_value_t = EngineOptions::default().cache_max_mb)]
    pub cache_max_mb: u64,
    /// Largest the venvs built for bundled Python cells grow, in MiB; past
    /// it, the least recently used that no running cell holds are removed.
    #[arg(long, env = "CBS_VENV_CACHE_MAX_MB", value_name = "MIB", default_value_t = VENV_CACHE_MAX_MB)]
    pub venv_cache_max_mb: u64,
    /// Largest the unpacked bundles grow, in MiB; past it, the least
    /// recently used that no loaded cell runs from are removed.
    #[arg(long, env = "CBS_BUNDLE_CACHE_MAX_MB", value_name = "MIB", default_value_t = BUNDLE_CACHE_MAX_MB)]
    pub bundle_cache_max_mb: u64,
}

const VENV_CACHE_MAX_MB: u64 = venvs::DEFAULT_MAX_BYTES >> 20;
const BUNDLE_CACHE_MAX_MB: u64 = DEFAULT_UNPACK_MAX_BYTES >> 20;

impl EngineArgs {
    /// Trust for bundles, and where they unpack: next to the component cache.
    pub fn sources(&self, trust: &[String], process_bundles: bool) -> anyhow::Result<Sources> {
        let keys = trust
            .iter()
            .map(|t| PublicKey::parse_arg(t))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let trust = Trust::new(keys);
        let mut sources = match (&self.cache_dir, self.no_cache) {
            (Some(dir), _) => Sources::in_dir(dir, trust, process_bundles),
            (None, true) => Sources::in_dir(
                &std::env::temp_dir().join(format!("cbs-{}", std::process::id())),
                trust,
                process_bundles,
            ),
            (None, false) => Sources {
                trust,
                process_bundles,
                ..Sources::default()
            },
        };
        let venvs = VenvCache::new(sources.venvs.root().to_path_buf())
            .with_max_bytes(self.venv_cache_max_mb.saturating_mul(1 << 20));
        sources.venvs = Arc::new(venvs);
        sources.unpack_max_bytes = self.bundle_cache_max_mb.saturating_mul(1 << 20);
        Ok(sources)
    }

    pub fn runtime(&self) -> anyhow::Result<Arc<WasmRuntime>> {
        let options = EngineOptions {
            max_instances: self.max_instances,
            max_memory_mb: self.max_memory_mb,
            cache_max_mb: self.cache_max_mb,
            compiler: self.compiler,
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

/// How an HTTP server (`cbs-host run --http`, `cbs gateway`) treats
/// requests: body size, CORS, the tokens routes with `auth = "bearer"`
/// accept, and how many connections it holds for how long.
#[derive(Args, Debug, Clone)]
pub struct HttpArgs {
    /// Largest request body accepted, in KiB; larger ones get 413.
    #[arg(long, default_value_t = 1024, value_name = "KIB")]
    pub http_body_limit_kb: usize,
    /// An origin browsers may call from (CORS), e.g. https://app.example;
    /// `*` for any; repeatable. None: no CORS headers.
    #[arg(long, value_name = "ORIGIN")]
    pub http_cors_origin: Vec<String>,
    /// Static bearer tokens accepted by `auth = "bearer"` routes: a file
    /// with one per line (`#` comments allowed).
    #[arg(long, value_name = "FILE")]
    pub http_token_file: Option<PathBuf>,
    /// A JWK set (JSON file): JWTs signed by one of its keys are accepted
    /// by `auth = "bearer"` routes when unexpired.
    #[arg(long, value_name = "FILE")]
    pub http_jwks: Option<PathBuf>,
    /// The audience (`aud`) JWTs must name.
    #[arg(long, value_name = "AUD", requires = "http_jwks")]
    pub http_jwt_audience: Option<String>,
    /// The issuer (`iss`) JWTs must name.
    #[arg(long, value_name = "ISS", requires = "http_jwks")]
    pub http_jwt_issuer: Option<String>,
    /// Seconds a JWT's `exp` and `nbf` may be off by (clock skew between
    /// its issuer and this server), at most 300.
    #[arg(long, env = "CBS_HTTP_JWT_LEEWAY_SECS", value_name = "SECONDS",
          default_value_t = auth::DEFAULT_LEEWAY_SECS,
          value_parser = clap::value_parser!(u64).range(0..=auth::MAX_LEEWAY_SECS))]
    pub http_jwt_leeway_secs: u64,
    /// Single sign-on: also accept tokens of this OpenID Connect issuer
    /// (its URL, as its tokens' `iss`): the discovery document is read
    /// from URL/.well-known/openid-configuration, the keys from its
    /// jwks_uri and fetched again when it rotates them.
    #[arg(long, value_name = "URL", requires = "http_oidc_audience")]
    pub http_oidc_issuer: Option<String>,
    /// The audience (`aud`) the issuer's tokens must name: the client id
    /// CBS is registered under.
    #[arg(long, value_name = "AUD", requires = "http_oidc_issuer")]
    pub http_oidc_audience: Option<String>,
    /// A claim that gives a role: ROLE=CLAIM:VALUE (roles: caller,
    /// observer, deployer), e.g. caller=groups:shop; repeatable. A route
    /// with `auth = "bearer"` needs caller. None: every token of the
    /// issuer is a caller.
    #[arg(long, value_name = "ROLE=CLAIM:VALUE", requires = "http_oidc_issuer")]
    pub http_oidc_role: Vec<RoleRule>,
    /// Seconds a connection may go without a request in progress: a
    /// request head must arrive whole within it, and an idle (keep-alive
    /// or HTTP/2) connection is closed after it. 1 to 3600.
    #[arg(long, env = "CBS_HTTP_HEADER_TIMEOUT_SECS", value_name = "SECONDS",
          default_value_t = listen::DEFAULT_IDLE_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_header_timeout_secs: u64,
    /// Connections open at once; past it new ones are not accepted but
    /// wait (in the listen backlog) until one closes. 1 to 65536.
    #[arg(long, env = "CBS_HTTP_MAX_CONNECTIONS", value_name = "N",
          default_value_t = listen::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65536))]
    pub http_max_connections: usize,
}

impl HttpArgs {
    pub async fn config(&self, title: &str) -> anyhow::Result<cbs_host::http::HttpConfig> {
        let rules = auth::JwtRules {
            audience: self.http_jwt_audience.clone(),
            issuer: self.http_jwt_issuer.clone(),
            leeway_secs: self.http_jwt_leeway_secs,
        };
        let auth = auth::Authenticator::load(
            self.http_token_file.as_deref(),
            self.http_jwks.as_deref(),
            rules,
        )
        .map_err(|e| e.context("--http-token-file / --http-jwks"))?;
        let auth = match (&self.http_oidc_issuer, &self.http_oidc_audience) {
            (Some(issuer), Some(audience)) => {
                let config = OidcConfig {
                    issuer: issuer.clone(),
                    audience: audience.clone(),
                    roles: RoleRules(self.http_oidc_role.clone()),
                    leeway_secs: self.http_jwt_leeway_secs,
                };
                auth.with_oidc(
                    Oidc::discover(config)
                        .await
                        .map_err(|e| e.context("--http-oidc-issuer"))?,
                )
            }
            _ => auth,
        };
        Ok(cbs_host::http::HttpConfig {
            body_limit: self.http_body_limit_kb.saturating_mul(1024),
            cors_origins: self.http_cors_origin.clone(),
            auth,
            title: title.to_owned(),
            connections: listen::Limits {
                max_connections: self.http_max_connections,
                idle_timeout: std::time::Duration::from_secs(self.http_header_timeout_secs),
            },
        })
    }
}

/// `k=v`, as `cbs deploy --label` and `cbs-host run --label` take it.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!(
            "{text:?} is not a label: give KEY=VALUE, e.g. region=eu"
        )),
    }
}

/// How the command line reaches OCI registries (`cbs push`, `pull`,
/// `search`, `show`, `deploy REF`). Credentials come from a docker
/// `config.json` (`docker login`, or REGISTRY_AUTH_FILE).
#[derive(Args, Clone)]
pub struct RegistryArgs {
    /// Talk plain HTTP to the registry (a local registry without TLS).
    #[arg(long)]
    pub insecure: bool,
}

impl RegistryArgs {
    pub async fn client(&self, registry: &str) -> anyhow::Result<cbs_host::registry::Client> {
        let options = cbs_host::registry::Options {
            insecure: self.insecure,
        };
        cbs_host::registry::Client::connect(registry, &options).await
    }
}

/// Keys a pulled bundle must be signed by (`--trust`, as for hosts).
pub fn trust_of(keys: &[String]) -> anyhow::Result<Trust> {
    let keys = keys
        .iter()
        .map(|t| PublicKey::parse_arg(t))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Trust::new(keys))
}
