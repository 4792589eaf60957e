//! An OpenID Connect issuer for the single sign-on tests, served on
//! loopback from a thread of its own: a discovery document, a JWK set whose
//! key can be rotated, and the device flow (approved at the second poll).
//! Tokens are Ed25519-signed JWTs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

struct Key {
    kid: &'static str,
    encoding: EncodingKey,
    jwk: Value,
}

fn key(kid: &'static str, seed: u8) -> Key {
    let signing = SigningKey::from_bytes(&[seed; 32]);
    let der = signing.to_pkcs8_der().expect("a PKCS#8 key");
    let x = data_encoding::BASE64URL_NOPAD.encode(signing.verifying_key().as_bytes());
    Key {
        kid,
        encoding: EncodingKey::from_ed_der(der.as_bytes()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}),
    }
}

struct Shared {
    base: String,
    /// The keys the JWK set publishes.
    published: Mutex<Vec<&'static str>>,
    keys: Vec<Key>,
    jwks_fetches: AtomicUsize,
    token_polls: AtomicUsize,
    /// Claims of the token the device flow grants.
    granted: Mutex<Value>,
}

pub struct OidcIssuer {
    shared: Arc<Shared>,
    _thread: std::thread::JoinHandle<()>,
}

impl OidcIssuer {
    /// Publishes key `k1`; `k2` is held back until [`Self::rotate`].
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let base = format!("http://{addr}");
        let shared = Arc::new(Shared {
            granted: Mutex::new(
                json!({"sub": "ada", "aud": "cbs", "iss": base, "groups": ["shop"]}),
            ),
            base,
            published: Mutex::new(vec!["k1"]),
            keys: vec![key("k1", 11), key("k2", 12)],
            jwks_fetches: AtomicUsize::new(0),
            token_polls: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/device", post(device))
            .route("/token", post(token))
            .with_state(shared.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        Self {
            shared,
            _thread: thread,
        }
    }

    /// The issuer's URL, as its tokens' `iss`.
    pub fn url(&self) -> &str {
        &self.shared.base
    }

    /// A token signed with key `kid` carrying `claims`.
    pub fn sign(&self, kid: &str, claims: &Value) -> String {
        let key = self
            .shared
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .expect("a key of the issuer");
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.into());
        encode(&header, claims, &key.encoding).expect("a signed token")
    }

    /// Claims for audience `cbs` from this issuer, valid for ten minutes,
    /// with `extra` merged in.
    pub fn claims(&self, extra: Value) -> Value {
        let mut claims =
            json!({"sub": "ada", "aud": "cbs", "iss": self.url(), "exp": crate::jwt::now() + 600});
        if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
            claims.extend(extra.clone());
        }
        claims
    }

    /// Publishes `k2` instead of `k1`.
    pub fn rotate(&self) {
        *self.shared.published.lock().unwrap() = vec!["k2"];
    }

    /// How often the JWK set was fetched.
    pub fn jwks_fetches(&self) -> usize {
        self.shared.jwks_fetches.load(Ordering::SeqCst)
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn discovery(State(s): State<Arc<Shared>>) -> Response {
    let base = &s.base;
    reply(
        StatusCode::OK,
        json!({
            "issuer": base,
            "jwks_uri": format!("{base}/jwks"),
            "token_endpoint": format!("{base}/token"),
            "device_authorization_endpoint": format!("{base}/device"),
        }),
    )
}

async fn jwks(State(s): State<Arc<Shared>>) -> Response {
    s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let published = s.published.lock().unwrap().clone();
    let keys: Vec<&Value> = s
        .keys
        .iter()
        .filter(|k| published.contains(&k.kid))
        .map(|k| &k.jwk)
        .collect();
    reply(StatusCode::OK, json!({"keys": keys}))
}

async fn device(State(s): State<Arc<Shared>>) -> Response {
    reply(
        StatusCode::OK,
        json!({
            "device_code": "device-1",
            "user_code": "WDJB-MJHT",
            "verification_uri": format!("{}/verify", s.base),
            "expires_in": 60,
            "interval": 1,
        }),
    )
}

/// Pending at the first poll, then the token.
async fn token(State(s): State<Arc<Shared>>) -> Response {
    if s.token_polls.fetch_add(1, Ordering::SeqCst) == 0 {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": "authorization_pending"}),
        );
    }
    let mut claims = s.granted.lock().unwrap().clone();
    claims["exp"] = json!(crate::jwt::now() + 600);
    let key = &s.keys[0];
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(key.kid.into());
    let id_token = encode(&header, &claims, &key.encoding).unwrap();
    reply(
        StatusCode::OK,
        json!({"id_token": id_token, "access_token": "opaque", "expires_in": 600}),
    )
}
