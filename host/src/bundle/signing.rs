//! ed25519 keys for bundles: `cbs keygen` writes a pair, `cbs build --sign`
//! signs the bundle digest, `cbs-host run --trust` names the public keys a
//! host accepts. Keys are hex in text files (`KEY` and `KEY.pub`).

use std::path::Path;

use anyhow::{bail, Context as _};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// A signing key and its public half.
pub struct KeyPair(SigningKey);

impl KeyPair {
    pub fn generate() -> anyhow::Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).context("no randomness from the OS")?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Hex signature of `message`.
    pub fn sign(&self, message: &[u8]) -> String {
        hex::encode(self.0.sign(message).to_bytes())
    }

    /// Writes `path` (secret, mode 0600) and `path.pub`.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
        writeln!(file, "{}", hex::encode(self.0.to_bytes()))?;
        let public = pub_path(path);
        std::fs::write(&public, format!("{}\n", self.public().to_hex()))
            .with_context(|| format!("cannot write {}", public.display()))?;
        Ok(())
    }

    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read signing key {}", path.display()))?;
        let seed: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .with_context(|| {
                format!(
                    "{} is not a CBS signing key (64 hex digits, as `cbs keygen` writes)",
                    path.display()
                )
            })?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }
}

/// `KEY.pub` next to `KEY`.
pub fn pub_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    name.into()
}

/// An ed25519 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    pub fn from_hex(text: &str) -> anyhow::Result<Self> {
        let bytes: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .context("a public key is 64 hex digits")?;
        Ok(Self(
            VerifyingKey::from_bytes(&bytes).context("not a valid ed25519 public key")?,
        ))
    }

    /// Checks that this key signed `message` as `signature` (hex).
    pub fn verify(&self, message: &[u8], signature: &str) -> anyhow::Result<()> {
        let signature: [u8; 64] = hex::decode(signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .context("a signature is 128 hex digits")?;
        self.0
            .verify(message, &Signature::from_bytes(&signature))
            .map_err(|_| anyhow::anyhow!("the signature does not match"))
    }

    /// A `--trust` value: a `.pub` file, or the key's hex itself.
    pub fn parse_arg(arg: &str) -> anyhow::Result<Self> {
        let path = Path::new(arg);
        if path.is_file() {
            let text = std::fs::read_to_string(path)?;
            return Self::from_hex(&text).with_context(|| format!("in {arg}"));
        }
        Self::from_hex(arg).with_context(|| {
            format!("--trust {arg:?} is neither a public key file nor a hex public key")
        })
    }
}

/// The public keys a host accepts bundles from; empty accepts unsigned ones.
#[derive(Debug, Clone, Default)]
pub struct Trust(Vec<PublicKey>);

impl Trust {
    pub fn new(keys: Vec<PublicKey>) -> Self {
        Self(keys)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The trusted keys, in hex.
    pub fn keys_hex(&self) -> Vec<String> {
        self.0.iter().map(PublicKey::to_hex).collect()
    }

    pub fn contains(&self, key: &PublicKey) -> bool {
        self.0.contains(key)
    }

    /// Checks that `key` is trusted and signed `message` as `signature`.
    pub fn verify(&self, key: &str, message: &[u8], signature: &str) -> anyhow::Result<()> {
        let signer = PublicKey::from_hex(key).context("its signature names an invalid key")?;
        if !self.0.contains(&signer) {
            bail!("it is signed by key {key}, which is not one this host trusts (--trust)");
        }
        let signature: [u8; 64] = hex::decode(signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .context("its signature is not 128 hex digits")?;
        signer
            .0
            .verify(message, &Signature::from_bytes(&signature))
            .map_err(|_| {
                anyhow::anyhow!(
                    "its signature does not match its digest: the bundle changed after it was signed"
                )
            })
    }
}
