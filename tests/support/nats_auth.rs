//! Credentials for every NATS auth mode, made in the test: a certificate
//! authority with server and client certificates (rcgen), nkeys, and a
//! decentralized-auth chain (operator → account → user JWTs, signed with
//! nkeys as `nsc` would) for a server in operator mode.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use data_encoding::BASE64URL_NOPAD;
use nkeys::KeyPair as NKey;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use serde_json::{json, Value};

/// A CA and certificates signed by it, as PEM files in a folder.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    /// A CA, a server certificate for 127.0.0.1 and a client certificate.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        for (name, purpose) in [
            ("server", ExtendedKeyUsagePurpose::ServerAuth),
            ("client", ExtendedKeyUsagePurpose::ClientAuth),
        ] {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            params
                .subject_alt_names
                .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
            params.extended_key_usages = vec![purpose];
            let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(
                dir.path().join(format!("{name}-key.pem")),
                key.serialize_pem(),
            )
            .unwrap();
        }
        Self { dir }
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }

    /// The server's `tls {}` block; `verify` asks clients for a certificate
    /// signed by the CA (mutual TLS).
    pub fn server_tls(&self, verify: bool) -> String {
        format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: {verify}\n}}\n",
            self.path("server.pem"),
            self.path("server-key.pem"),
            self.path("ca.pem"),
        )
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// A signed NATS JWT: `header.claims.signature`, ed25519 over nkeys.
fn jwt(signer: &NKey, subject: &str, name: &str, nats: Value) -> String {
    let header = json!({"typ": "JWT", "alg": "ed25519-nkey"});
    let claims = json!({
        "jti": uuid_like(subject),
        "iat": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        "iss": signer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    let signed = format!(
        "{}.{}",
        BASE64URL_NOPAD.encode(header.to_string().as_bytes()),
        BASE64URL_NOPAD.encode(claims.to_string().as_bytes())
    );
    let signature = signer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", BASE64URL_NOPAD.encode(&signature))
}

fn uuid_like(seed: &str) -> String {
    format!("{seed}-{}", cbs_host::envelope::new_id())
}

/// An operator and one account, for a server in operator mode with the
/// account preloaded in a memory resolver.
pub struct Operator {
    operator: NKey,
    account: NKey,
}

impl Operator {
    pub fn new() -> Self {
        Self {
            operator: NKey::new_operator(),
            account: NKey::new_account(),
        }
    }

    /// The server configuration: trust this operator, know this account.
    pub fn server_config(&self) -> String {
        let operator = jwt(
            &self.operator,
            &self.operator.public_key(),
            "cbs-test",
            json!({"type": "operator", "version": 2}),
        );
        let account = jwt(
            &self.operator,
            &self.account.public_key(),
            "tenant-a",
            json!({
                "type": "account",
                "version": 2,
                "limits": {"subs": -1, "conn": -1, "leaf": -1, "imports": -1,
                           "exports": -1, "data": -1, "payload": -1, "wildcards": true},
                "default_permissions": {"pub": {}, "sub": {}},
            }),
        );
        format!(
            "operator: {operator:?}\nresolver: MEMORY\nresolver_preload: {{\n  {}: {account:?}\n}}\n",
            self.account.public_key()
        )
    }

    /// A `.creds` file for a new user of this account.
    pub fn user_creds(&self, dir: &Path, name: &str) -> PathBuf {
        creds(&self.account, dir, name)
    }

    /// A `.creds` file for a user signed by an account the server does
    /// not know.
    pub fn stranger_creds(dir: &Path, name: &str) -> PathBuf {
        creds(&NKey::new_account(), dir, name)
    }
}

impl Default for Operator {
    fn default() -> Self {
        Self::new()
    }
}

fn creds(account: &NKey, dir: &Path, name: &str) -> PathBuf {
    let user = NKey::new_user();
    let token = jwt(
        account,
        &user.public_key(),
        name,
        json!({"type": "user", "version": 2, "pub": {}, "sub": {},
               "subs": -1, "data": -1, "payload": -1}),
    );
    let text = format!(
        "-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        user.seed().unwrap()
    );
    let path = dir.join(format!("{name}.creds"));
    std::fs::write(&path, text).unwrap();
    path
}
