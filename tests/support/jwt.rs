//! A JWT issuer for the tests of bearer routes: an Ed25519 key, its JWK set
//! in a file (what `--http-jwks` reads), and tokens signed with it.

use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

pub struct Issuer {
    key: EncodingKey,
    jwks: tempfile::NamedTempFile,
}

impl Issuer {
    pub fn new() -> Self {
        let signing = SigningKey::from_bytes(&[7u8; 32]);
        let der = signing.to_pkcs8_der().expect("a PKCS#8 key");
        let x = data_encoding::BASE64URL_NOPAD.encode(signing.verifying_key().as_bytes());
        let jwks = tempfile::NamedTempFile::new().unwrap();
        let set = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "test", "alg": "EdDSA", "use": "sig"}]});
        std::fs::write(jwks.path(), set.to_string()).unwrap();
        Self {
            key: EncodingKey::from_ed_der(der.as_bytes()),
            jwks,
        }
    }

    /// The JWK set's file.
    pub fn jwks_file(&self) -> &str {
        self.jwks.path().to_str().unwrap()
    }

    /// A token for `audience` that expires `expires_in` seconds from now
    /// (negative: already expired).
    pub fn token(&self, audience: &str, expires_in: i64) -> String {
        self.sign(&json!({"sub": "tester", "aud": audience, "exp": now() + expires_in}))
    }

    /// A token with exactly these claims.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("test".into());
        encode(&header, claims, &self.key).expect("a signed token")
    }
}

impl Default for Issuer {
    fn default() -> Self {
        Self::new()
    }
}

/// Seconds since the Unix epoch, as JWT times are.
pub fn now() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(since.as_secs()).unwrap()
}
