//! Bearer authentication for routes with `auth = "bearer"`: a token is
//! accepted when it is one of the server's static tokens
//! (`--http-token-file`, compared in constant time) or a JWT signed by a key
//! of its JWKS file (`--http-jwks`), unexpired, and for the configured
//! audience and issuer. With neither configured, such routes refuse every
//! request: a route that asks for authentication never runs without it.

use std::path::Path;

use anyhow::Context as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, DecodingKey, Validation};

/// The longest `Authorization` header looked at.
const MAX_HEADER: usize = 8 * 1024;

#[derive(Default)]
pub struct Authenticator {
    tokens: Vec<String>,
    jwks: Option<JwkSet>,
    audience: Option<String>,
    issuer: Option<String>,
}

impl Authenticator {
    /// Static tokens from `token_file` (one per line; blank lines and `#`
    /// comments skipped) and keys from `jwks_file`.
    pub fn load(
        token_file: Option<&Path>,
        jwks_file: Option<&Path>,
        audience: Option<String>,
        issuer: Option<String>,
    ) -> anyhow::Result<Self> {
        let tokens = match token_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --http-token-file {}", path.display()))?
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
                    .with_context(|| format!("cannot read --http-jwks {}", path.display()))?;
                serde_json::from_str::<JwkSet>(&text)
                    .with_context(|| format!("--http-jwks {} is not a JWK set", path.display()))
            })
            .transpose()?;
        Ok(Self {
            tokens,
            jwks,
            audience,
            issuer,
        })
    }

    /// Whether any token could be accepted.
    pub fn is_configured(&self) -> bool {
        !self.tokens.is_empty() || self.jwks.is_some()
    }

    /// Accepts an `Authorization` header value, or says why not.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), String> {
        let value = authorization.ok_or("an Authorization: Bearer token is required")?;
        if value.len() > MAX_HEADER {
            return Err("the Authorization header is too long".into());
        }
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or("the Authorization header is not a Bearer token")?;
        if !self.is_configured() {
            return Err(
                "this server accepts no token (start it with --http-token-file or --http-jwks)"
                    .into(),
            );
        }
        if self
            .tokens
            .iter()
            .any(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
        {
            return Ok(());
        }
        match &self.jwks {
            Some(jwks) => self.check_jwt(jwks, token),
            None => Err("the token is not accepted".into()),
        }
    }

    fn check_jwt(&self, jwks: &JwkSet, token: &str) -> Result<(), String> {
        let header = decode_header(token).map_err(|e| format!("the token is not a JWT: {e}"))?;
        let jwk = match &header.kid {
            Some(kid) => jwks.find(kid),
            None if jwks.keys.len() == 1 => jwks.keys.first(),
            None => None,
        }
        .ok_or("the JWT names no key of this server's JWK set")?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable key: {e}"))?;
        let mut validation = Validation::new(header.alg);
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        decode::<serde_json::Value>(token, &key, &validation)
            .map(|_| ())
            .map_err(|e| format!("the JWT is not accepted: {e}"))
    }
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
