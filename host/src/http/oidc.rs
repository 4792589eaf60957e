//! Single sign-on: tokens from an OpenID Connect issuer, named by its
//! discovery URL (`<issuer>/.well-known/openid-configuration`). Its keys
//! come from its `jwks_uri`, are kept, and are fetched again when a token
//! names a key not held (the issuer rotated) — at most once per
//! [`REFETCH_AFTER`] — and when older than [`KEYS_KEPT`]. Every reply is
//! bounded. A token's claims map to CBS roles by configured rules
//! ([`RoleRules`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::Mutex;

/// The largest discovery document or JWK set read.
const MAX_DOCUMENT: usize = 256 * 1024;
/// The most keys of a JWK set kept.
const MAX_KEYS: usize = 64;
/// Keys are fetched again after this long.
pub const KEYS_KEPT: Duration = Duration::from_secs(300);
/// A token naming an unknown key fetches the keys at most this often.
pub const REFETCH_AFTER: Duration = Duration::from_secs(5);
const TIMEOUT: Duration = Duration::from_secs(10);

/// What a signed-in user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, strum::Display, strum::EnumString)]
#[strum(serialize_all = "snake_case")]
pub enum Role {
    /// Call cells through the gateway.
    Caller,
    /// Read what the lattice serves.
    Observer,
    /// Deploy, roll back, undeploy, replay (the console's actions).
    Deployer,
}

/// One rule: a token whose `claim` is `value` (or, for a list, holds it)
/// has `role`. Written `ROLE=CLAIM:VALUE`, e.g. `deployer=groups:platform`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleRule {
    pub role: Role,
    pub claim: String,
    pub value: String,
}

impl std::str::FromStr for RoleRule {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        let (role, rest) = text
            .split_once('=')
            .context("a role rule is ROLE=CLAIM:VALUE, e.g. deployer=groups:platform")?;
        let (claim, value) = rest
            .split_once(':')
            .context("a role rule is ROLE=CLAIM:VALUE, e.g. deployer=groups:platform")?;
        let role = role
            .parse()
            .map_err(|_| anyhow::anyhow!("{role:?} is not a role: caller, observer or deployer"))?;
        if claim.is_empty() || value.is_empty() {
            bail!("{text:?}: name a claim and a value");
        }
        Ok(Self {
            role,
            claim: claim.to_owned(),
            value: value.to_owned(),
        })
    }
}

/// The rules; with none, every accepted token is a caller.
#[derive(Debug, Clone, Default)]
pub struct RoleRules(pub Vec<RoleRule>);

impl RoleRules {
    /// The roles `claims` give.
    pub fn roles(&self, claims: &serde_json::Value) -> BTreeSet<Role> {
        if self.0.is_empty() {
            return BTreeSet::from([Role::Caller]);
        }
        self.0
            .iter()
            .filter(|rule| match claims.get(&rule.claim) {
                Some(serde_json::Value::String(s)) => *s == rule.value,
                Some(serde_json::Value::Array(items)) => items
                    .iter()
                    .any(|i| i.as_str() == Some(rule.value.as_str())),
                _ => false,
            })
            .map(|rule| rule.role)
            .collect()
    }
}

/// What to accept from an issuer.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The issuer's URL, exactly as its tokens' `iss`.
    pub issuer: String,
    /// The `aud` tokens must name (the client id registered for CBS).
    pub audience: String,
    pub roles: RoleRules,
    /// Seconds `exp` and `nbf` may be off by.
    pub leeway_secs: u64,
}

/// A signed-in user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `sub` (or `email`), for logs and the audit trail.
    pub name: String,
    pub roles: BTreeSet<Role>,
}

/// The endpoints an issuer's discovery document names.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub token_endpoint: Option<String>,
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
}

struct Keys {
    set: JwkSet,
    fetched: Instant,
}

/// An issuer whose tokens are accepted.
pub struct Oidc {
    config: OidcConfig,
    jwks_uri: String,
    http: reqwest::Client,
    keys: std::sync::RwLock<Arc<Keys>>,
    /// One fetch at a time; when the last one was tried.
    fetching: Mutex<Instant>,
}

/// A bounded GET of a JSON document.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
) -> anyhow::Result<T> {
    let response = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    if !response.status().is_success() {
        bail!("{url} answered {}", response.status());
    }
    read_json(response, url).await
}

/// A reply's JSON body, read up to [`MAX_DOCUMENT`] bytes.
async fn read_json<T: serde::de::DeserializeOwned>(
    mut response: reqwest::Response,
    url: &str,
) -> anyhow::Result<T> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .with_context(|| format!("reading {url}"))?
    {
        if body.len() + chunk.len() > MAX_DOCUMENT {
            bail!("{url} sent more than {MAX_DOCUMENT} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).with_context(|| format!("{url} sent no valid document"))
}

/// The discovery document of `issuer`, which must name itself as `issuer`.
pub async fn discover(http: &reqwest::Client, issuer: &str) -> anyhow::Result<Discovery> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let found: Discovery = get_json(http, &url).await?;
    if found.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
        bail!("{url} names issuer {:?}, not {issuer:?}", found.issuer);
    }
    Ok(found)
}

/// An HTTP client for issuers: bounded time, no redirects to elsewhere.
pub fn client() -> anyhow::Result<reqwest::Client> {
    crate::tls::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("cannot make an HTTP client")
}

impl Oidc {
    /// Reads the issuer's discovery document and keys.
    pub async fn discover(config: OidcConfig) -> anyhow::Result<Arc<Self>> {
        let http = client()?;
        let found = discover(&http, &config.issuer).await?;
        let set = fetch_keys(&http, &found.jwks_uri).await?;
        Ok(Arc::new(Self {
            config,
            jwks_uri: found.jwks_uri,
            http,
            keys: std::sync::RwLock::new(Arc::new(Keys {
                set,
                fetched: Instant::now(),
            })),
            fetching: Mutex::new(Instant::now()),
        }))
    }

    /// The user a token names, once it verifies.
    pub async fn verify(&self, token: &str) -> Result<Principal, String> {
        let header = decode_header(token).map_err(|e| format!("the token is not a JWT: {e}"))?;
        let kid = header.kid.clone().ok_or("the token names no key (kid)")?;
        let mut keys = self.current();
        if keys.fetched.elapsed() >= KEYS_KEPT || keys.set.find(&kid).is_none() {
            keys = self.refetch(keys.fetched).await;
        }
        let jwk = keys.set.find(&kid).ok_or_else(|| {
            format!("the token names key {kid:?}, which the issuer does not publish")
        })?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable key: {e}"))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.config.leeway_secs;
        validation.validate_nbf = true;
        validation.set_audience(&[&self.config.audience]);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        let claims = decode::<serde_json::Value>(token, &key, &validation)
            .map_err(|e| format!("the token is not accepted: {e}"))?
            .claims;
        let name = ["sub", "email"]
            .iter()
            .find_map(|c| claims.get(*c).and_then(|v| v.as_str()))
            .unwrap_or("someone")
            .chars()
            .take(128)
            .collect();
        Ok(Principal {
            name,
            roles: self.config.roles.roles(&claims),
        })
    }

    fn current(&self) -> Arc<Keys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The keys fetched again, unless another request just did (or tried):
    /// a stream of tokens with made-up key ids cannot make this server
    /// hammer the issuer.
    async fn refetch(&self, seen: Instant) -> Arc<Keys> {
        let mut last = self.fetching.lock().await;
        let now = self.current();
        if now.fetched > seen || last.elapsed() < REFETCH_AFTER && now.fetched.elapsed() < KEYS_KEPT
        {
            return now;
        }
        *last = Instant::now();
        match fetch_keys(&self.http, &self.jwks_uri).await {
            Ok(set) => {
                let keys = Arc::new(Keys {
                    set,
                    fetched: Instant::now(),
                });
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys.clone();
                keys
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot fetch the issuer's keys; keeping those held");
                now
            }
        }
    }
}

/// Signing in from a terminal (OAuth 2.0 device authorization, RFC 8628).
pub mod device {
    use super::*;

    /// What the user is asked to do.
    #[derive(Debug, Clone, Deserialize)]
    pub struct Prompt {
        pub user_code: String,
        pub verification_uri: String,
        #[serde(default)]
        pub verification_uri_complete: Option<String>,
        device_code: String,
        expires_in: u64,
        #[serde(default)]
        interval: Option<u64>,
    }

    /// The token the issuer granted: its ID token when it sent one (its
    /// audience is the client id, as gateways and consoles check), else
    /// its access token.
    #[derive(Debug, Clone)]
    pub struct Granted {
        pub token: String,
        pub expires_in: Option<u64>,
    }

    #[derive(Deserialize)]
    struct Reply {
        #[serde(default)]
        access_token: Option<String>,
        #[serde(default)]
        id_token: Option<String>,
        #[serde(default)]
        expires_in: Option<u64>,
        #[serde(default)]
        error: Option<String>,
    }

    /// The longest a sign-in may take, whatever the issuer says.
    const MAX_WAIT: Duration = Duration::from_secs(1800);

    /// Signs in at `issuer` as client `client_id`: `prompt` is told what
    /// to show the user, then the token endpoint is asked until the user
    /// approved, refused, or the code expired.
    pub async fn login(
        issuer: &str,
        client_id: &str,
        scope: &str,
        prompt: impl FnOnce(&Prompt),
    ) -> anyhow::Result<Granted> {
        let http = client()?;
        let found = discover(&http, issuer).await?;
        let (Some(start), Some(token_url)) = (
            found.device_authorization_endpoint.as_deref(),
            found.token_endpoint.as_deref(),
        ) else {
            bail!("{issuer} offers no device sign-in (no device_authorization_endpoint or token_endpoint)");
        };
        let asked = http
            .post(start)
            .form(&[("client_id", client_id), ("scope", scope)])
            .send()
            .await
            .with_context(|| format!("cannot reach {start}"))?;
        if !asked.status().is_success() {
            bail!(
                "{start} answered {}: is {client_id:?} a client allowed the device flow?",
                asked.status()
            );
        }
        let asked: Prompt = read_json(asked, start).await?;
        prompt(&asked);
        let deadline = Instant::now() + Duration::from_secs(asked.expires_in).min(MAX_WAIT);
        let mut every = Duration::from_secs(asked.interval.unwrap_or(5).clamp(1, 60));
        loop {
            if Instant::now() >= deadline {
                bail!("the sign-in code expired before it was approved: run cbs login again");
            }
            tokio::time::sleep(every).await;
            let form = [
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", asked.device_code.as_str()),
                ("client_id", client_id),
            ];
            let answer = http.post(token_url).form(&form).send().await;
            let answer = answer.with_context(|| format!("cannot reach {token_url}"))?;
            let reply: Reply = read_json(answer, token_url).await?;
            if let Some(token) = reply.id_token.or(reply.access_token) {
                return Ok(Granted {
                    token,
                    expires_in: reply.expires_in,
                });
            }
            match reply.error.as_deref() {
                Some("authorization_pending") => {}
                Some("slow_down") => every += Duration::from_secs(5),
                Some("access_denied") => bail!("the sign-in was refused"),
                Some("expired_token") => bail!("the sign-in code expired: run cbs login again"),
                other => bail!("{token_url} answered {other:?} and no token"),
            }
        }
    }
}

async fn fetch_keys(http: &reqwest::Client, url: &str) -> anyhow::Result<JwkSet> {
    let mut set: JwkSet = get_json(http, url).await?;
    set.keys.truncate(MAX_KEYS);
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claims_map_to_roles_by_rule() {
        let rules = RoleRules(vec![
            "deployer=groups:platform".parse().unwrap(),
            "observer=groups:platform".parse().unwrap(),
            "caller=email_verified_domain:example.com".parse().unwrap(),
        ]);
        let roles = rules.roles(&json!({"groups": ["dev", "platform"]}));
        assert_eq!(roles, BTreeSet::from([Role::Deployer, Role::Observer]));
        let roles = rules.roles(&json!({"email_verified_domain": "example.com", "groups": "dev"}));
        assert_eq!(roles, BTreeSet::from([Role::Caller]));
        assert!(rules
            .roles(&json!({"groups": [1, {"a": "platform"}]}))
            .is_empty());
        assert_eq!(
            RoleRules::default().roles(&json!({})),
            BTreeSet::from([Role::Caller])
        );
        for bad in [
            "deployer",
            "admin=groups:x",
            "deployer=groups",
            "deployer=:x",
        ] {
            assert!(bad.parse::<RoleRule>().is_err(), "{bad}");
        }
    }
}
