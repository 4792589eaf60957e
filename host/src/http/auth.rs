//! Bearer authentication for routes with `auth = "bearer"`: a token is
//! accepted when it is one of the server's static tokens
//! (`--http-token-file`, compared in constant time) or a JWT signed by a key
//! of its JWKS file (`--http-jwks`), unexpired, already valid (`nbf`), and
//! naming the configured audience and issuer — a configured claim the
//! token lacks refuses it. Clocks may differ by the configured leeway
//! (`--http-jwt-leeway-secs`), not the library's minute. With neither
//! configured, such routes refuse every request: a route that asks for
//! authentication never runs without it.
//!
//! With single sign-on (`super::oidc`), a token of the configured issuer
//! is accepted too, for what its claims' roles allow; static tokens and
//! JWK-set JWTs keep every role, as before.

use std::path::Path;

use anyhow::Context as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};

/// The longest `Authorization` header looked at.
const MAX_HEADER: usize = 8 * 1024;
/// Seconds a JWT's `exp` and `nbf` may be off by, by default: clock skew
/// between the issuer and this server, not a grace period.
pub const DEFAULT_LEEWAY_SECS: u64 = 5;
/// The most `--http-jwt-leeway-secs` may be.
pub const MAX_LEEWAY_SECS: u64 = 300;

/// What a JWT's claims must say, besides an `exp` in the future.
#[derive(Debug, Clone)]
pub struct JwtRules {
    /// The `aud` it must name (then it must have one).
    pub audience: Option<String>,
    /// The `iss` it must name (then it must have one).
    pub issuer: Option<String>,
    /// Seconds `exp` and `nbf` may be off by.
    pub leeway_secs: u64,
}

impl Default for JwtRules {
    fn default() -> Self {
        Self {
            audience: None,
            issuer: None,
            leeway_secs: DEFAULT_LEEWAY_SECS,
        }
    }
}

#[derive(Default)]
pub struct Authenticator {
    tokens: Vec<String>,
    jwks: Option<JwkSet>,
    rules: JwtRules,
    oidc: Option<std::sync::Arc<super::oidc::Oidc>>,
}

impl Authenticator {
    /// Static tokens from `token_file` (one per line; blank lines and `#`
    /// comments skipped) and keys from `jwks_file`, whose JWTs must follow
    /// `rules`.
    pub fn load(
        token_file: Option<&Path>,
        jwks_file: Option<&Path>,
        rules: JwtRules,
    ) -> anyhow::Result<Self> {
        let tokens = match token_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the token file {}", path.display()))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .collect(),
            None => Vec::new(),
        };
        let jwks = jwks_file
            .map(|path| {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the JWK set {}", path.display()))?;
                serde_json::from_str::<JwkSet>(&text)
                    .with_context(|| format!("{} is not a JWK set", path.display()))
            })
            .transpose()?;
        Self::new(tokens, jwks, rules)
    }

    /// Accepts `tokens` and JWTs signed by a key of `jwks` following
    /// `rules` (what [`Self::load`] reads from its files).
    pub fn new(tokens: Vec<String>, jwks: Option<JwkSet>, rules: JwtRules) -> anyhow::Result<Self> {
        if rules.leeway_secs > MAX_LEEWAY_SECS {
            anyhow::bail!(
                "--http-jwt-leeway-secs {} is more than {MAX_LEEWAY_SECS}",
                rules.leeway_secs
            );
        }
        Ok(Self {
            tokens,
            jwks,
            rules,
            oidc: None,
        })
    }

    /// Also accepts tokens of an OpenID Connect issuer, by role.
    pub fn with_oidc(mut self, oidc: std::sync::Arc<super::oidc::Oidc>) -> Self {
        self.oidc = Some(oidc);
        self
    }

    /// Whether any token could be accepted.
    pub fn is_configured(&self) -> bool {
        !self.tokens.is_empty() || self.jwks.is_some() || self.oidc.is_some()
    }

    /// Who an `Authorization` header value names, when that one may act as
    /// `role`: a static token or a JWK-set JWT (every role), or a token of
    /// the single sign-on issuer whose claims give `role`; or why not.
    pub async fn authorize(
        &self,
        authorization: Option<&str>,
        role: super::oidc::Role,
    ) -> Result<String, String> {
        let Some(oidc) = &self.oidc else {
            return self.identify(authorization);
        };
        let token = bearer(authorization)?;
        if let Ok(who) = self.identify(authorization) {
            return Ok(who);
        }
        let user = oidc.verify(token).await?;
        if !user.roles.contains(&role) {
            return Err(format!("{} is signed in, but not as a {role}", user.name));
        }
        Ok(format!("{} (single sign-on)", user.name))
    }

    /// Accepts an `Authorization` header value, or says why not.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), String> {
        self.identify(authorization).map(|_| ())
    }

    /// Who an accepted `Authorization` header value names: `token N` for
    /// the Nth static token, a JWT's `sub` (or `a JWT without sub`); or
    /// why it is not accepted.
    pub fn identify(&self, authorization: Option<&str>) -> Result<String, String> {
        let token = bearer(authorization)?;
        if self.tokens.is_empty() && self.jwks.is_none() && self.oidc.is_some() {
            return Err("the token is not accepted".into());
        }
        if !self.is_configured() {
            return Err(
                "this server accepts no token (start it with --http-token-file or --http-jwks)"
                    .into(),
            );
        }
        // Every static token is compared, so the time says nothing of which.
        let matched = self.tokens.iter().enumerate().fold(None, |found, (i, t)| {
            found.or(constant_time_eq(t.as_bytes(), token.as_bytes()).then_some(i))
        });
        if let Some(i) = matched {
            return Ok(format!("token {}", i + 1));
        }
        match &self.jwks {
            Some(jwks) => self.check_jwt(jwks, token),
            None => Err("the token is not accepted".into()),
        }
    }

    /// The JWT's subject once it verifies.
    fn check_jwt(&self, jwks: &JwkSet, token: &str) -> Result<String, String> {
        let header = decode_header(token).map_err(|e| format!("the token is not a JWT: {e}"))?;
        let jwk = match &header.kid {
            Some(kid) => jwks.find(kid),
            None if jwks.keys.len() == 1 => jwks.keys.first(),
            None => None,
        }
        .ok_or("the JWT names no key of this server's JWK set")?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable key: {e}"))?;
        let claims = decode::<serde_json::Value>(token, &key, &self.validation(header.alg))
            .map_err(|e| format!("the JWT is not accepted: {e}"))?
            .claims;
        Ok(match claims.get("sub").and_then(|s| s.as_str()) {
            Some(sub) => format!("JWT subject {}", sub.chars().take(128).collect::<String>()),
            None => "a JWT without sub".to_owned(),
        })
    }

    /// The checks of a JWT signed with `alg`: `exp` always, `aud` and
    /// `iss` when configured — each then required, not only compared when
    /// present — and `nbf` when present.
    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.leeway = self.rules.leeway_secs;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        match &self.rules.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.rules.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        validation
    }
}

/// The token of an `Authorization: Bearer` header value.
fn bearer(authorization: Option<&str>) -> Result<&str, String> {
    let value = authorization.ok_or("an Authorization: Bearer token is required")?;
    if value.len() > MAX_HEADER {
        return Err("the Authorization header is too long".into());
    }
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or_else(|| "the Authorization header is not a Bearer token".into())
}

/// Equal bytes, taking the same time wherever they first differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_tokens(tokens: &[&str]) -> Authenticator {
        Authenticator {
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn static_tokens_are_accepted_and_others_refused() {
        let auth = with_tokens(&["s3cret"]);
        assert!(auth.check(Some("Bearer s3cret")).is_ok());
        for bad in [
            None,
            Some("Bearer nope"),
            Some("Basic s3cret"),
            Some("s3cret"),
            Some("Bearer "),
        ] {
            assert!(auth.check(bad).is_err(), "{bad:?}");
        }
        let long = format!("Bearer {}", "x".repeat(MAX_HEADER));
        assert!(auth.check(Some(&long)).is_err());
    }

    #[test]
    fn a_leeway_over_the_bound_is_refused_at_load() {
        let rules = JwtRules {
            leeway_secs: MAX_LEEWAY_SECS + 1,
            ..Default::default()
        };
        let err = Authenticator::load(None, None, rules).err().unwrap();
        assert!(err.to_string().contains("--http-jwt-leeway-secs"), "{err}");
    }

    #[test]
    fn nothing_configured_refuses_everything() {
        let auth = Authenticator::default();
        let err = auth.check(Some("Bearer anything")).unwrap_err();
        assert!(err.contains("--http-token-file"), "{err}");
    }

    #[test]
    fn a_malformed_jwt_is_refused_not_a_panic() {
        let auth = Authenticator {
            jwks: Some(JwkSet { keys: Vec::new() }),
            ..Default::default()
        };
        for token in ["a.b.c", "eyJhbGciOiJub25lIn0.e30.", "...", "\u{0}"] {
            assert!(
                auth.check(Some(&format!("Bearer {token}"))).is_err(),
                "{token}"
            );
        }
    }
}
