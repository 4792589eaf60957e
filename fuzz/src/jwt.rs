//! The bearer-token path of the HTTP gateway against a fixed JWK set.

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use cbs_host::http::auth::{Authenticator, JwtRules};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::Value;

/// The HMAC secret of key `hmac` (`k` below, base64url).
const SECRET: &[u8] = b"cbs fuzz secret, 32 bytes long!!";
const AUDIENCE: &str = "cbs";
const ISSUER: &str = "https://issuer.test";
const LEEWAY_SECS: u64 = 5;

/// An HMAC key, an EC P-256 and an RSA public key: tokens naming one may
/// claim any algorithm.
const JWKS: &str = r#"{"keys": [
  {"kty": "oct", "kid": "hmac", "alg": "HS256", "k": "Y2JzIGZ1enogc2VjcmV0LCAzMiBieXRlcyBsb25nISE"},
  {"kty": "EC", "kid": "ec", "crv": "P-256", "alg": "ES256",
   "x": "jTDUXg40KYDjctCZ5qIhyjnPh8Qj1HZc0KD9SpC8eiM", "y": "0zPHFUFKWMyhvFvBecCwAtWCsu-RFWHvE4BErR3oK4w"},
  {"kty": "RSA", "kid": "rsa", "alg": "RS256", "e": "AQAB",
   "n": "x6TocDZ-lWi_Gh9lrF9Vk5YW1XuLyqoR0XBDjLk3e-MmI3lht2LxbOKRPkOlgCECG6crKh5W_4BzfU0hAR-DEuxF3Roakqic2argR9fxO8RpqNlYF58GAb9DAa_Be_3wltVUCPh2lLvpwhHfqVug6yqvrAwneMjiXYAY2n5FjW9ioCe4m-Bqtk31GXq_T2mojDOSDYoC9s2kxocH4YPON392uXhZdqztxD-oRwgKeAC-ue5us1wP93G7r_CAuRme6x-8tTmuzrb6ODkrBKNVsENlCNkiMDpuR_JUAeH46W9pNwOVzqWsdM0ONBL5v8VHyuZx4Hg38m7BR-3E6s5NnQ"}
]}"#;

fn authenticator() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        let jwks: JwkSet = serde_json::from_str(JWKS).expect("the fixed JWK set parses");
        let rules = JwtRules {
            audience: Some(AUDIENCE.to_owned()),
            issuer: Some(ISSUER.to_owned()),
            leeway_secs: LEEWAY_SECS,
        };
        Authenticator::new(Vec::new(), Some(jwks), rules).expect("the fixed rules hold")
    })
}

/// A bearer token: the first byte's low bit says whether the rest is the
/// token itself (even) or a JWT header and claims (split at the first
/// NUL) that the target signs with the HMAC key, so that the fuzzer reaches
/// the claim checks. Never a panic; an accepted token carries `exp` (not
/// past), the audience and issuer, and any `nbf` not in the future.
pub fn jwt(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode & 1 == 0 {
        match std::str::from_utf8(rest) {
            Ok(token) => token.to_owned(),
            Err(_) => return,
        }
    } else {
        signed(rest)
    };
    if authenticator()
        .check(Some(&format!("Bearer {token}")))
        .is_ok()
    {
        assert_claims(token.trim());
    }
}

/// `header.claims.signature`, signed with the algorithm the header names
/// when it is an HMAC one (else HS256).
fn signed(data: &[u8]) -> String {
    let mut parts = data.splitn(2, |b| *b == 0);
    let header = parts.next().unwrap_or_default();
    let claims = parts.next().unwrap_or_default();
    let alg = serde_json::from_slice::<Value>(header)
        .ok()
        .and_then(|h| h.get("alg")?.as_str()?.parse::<Algorithm>().ok())
        .filter(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
        .unwrap_or(Algorithm::HS256);
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = EncodingKey::from_secret(SECRET);
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, alg).expect("HMAC signs anything");
    format!("{message}.{signature}")
}

fn assert_claims(token: &str) {
    let payload = token.split('.').nth(1).expect("an accepted JWT has claims");
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .expect("accepted claims are base64url");
    let claims: Value = serde_json::from_slice(&bytes).expect("accepted claims are JSON");
    let now = jsonwebtoken::get_current_timestamp() as f64;
    // A second of slack: the check and this read may straddle one.
    let leeway = LEEWAY_SECS as f64 + 1.0;
    let exp = claims["exp"]
        .as_f64()
        .expect("an accepted JWT has a numeric exp");
    assert!(exp >= now - leeway, "accepted an expired JWT: {claims}");
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_f64().expect("an accepted nbf is a number");
        assert!(
            nbf <= now + leeway,
            "accepted a JWT not yet valid: {claims}"
        );
    }
    assert!(names(&claims["aud"], AUDIENCE), "wrong aud: {claims}");
    assert!(names(&claims["iss"], ISSUER), "wrong iss: {claims}");
}

/// A string claim equal to `want`, or a list holding it.
fn names(claim: &Value, want: &str) -> bool {
    match claim {
        Value::String(s) => s == want,
        Value::Array(items) => items.iter().any(|i| i.as_str() == Some(want)),
        _ => false,
    }
}
