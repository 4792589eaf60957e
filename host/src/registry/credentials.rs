//! Registry credentials as other tools keep them: a docker `config.json`
//! (`$REGISTRY_AUTH_FILE`, `$DOCKER_CONFIG/config.json`,
//! `~/.docker/config.json`, podman's `$XDG_RUNTIME_DIR/containers/auth.json`),
//! its `auths` entries and its credential helpers (`credHelpers`,
//! `credsStore`: `docker-credential-NAME get`). The files and a helper's
//! answer are read bounded: they are input like any other.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{bail, Context as _};
use data_encoding::BASE64;
use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The most bytes read of a config file or a helper's answer.
const MAX_BYTES: u64 = 1 << 20;

/// What the client presents when a registry asks.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken`), exchanged at the
    /// registry's token endpoint.
    IdentityToken(String),
}

impl std::fmt::Debug for Credentials {
    // Never print a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Self::IdentityToken(_) => f.write_str("IdentityToken(***)"),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperAnswer {
    username: String,
    secret: String,
}

/// The credentials the first config file that exists gives for `registry`
/// (anonymous when none does, or it names none for the registry).
pub async fn for_registry(registry: &str) -> anyhow::Result<Credentials> {
    let Some(path) = config_paths().into_iter().find(|p| p.is_file()) else {
        return Ok(Credentials::Anonymous);
    };
    let config = read_config(&path)?;
    lookup(&config, registry)
        .await
        .with_context(|| format!("in {}", path.display()))
}

fn config_paths() -> Vec<PathBuf> {
    let env = |name: &str| std::env::var_os(name).map(PathBuf::from);
    let mut paths = Vec::new();
    paths.extend(env("REGISTRY_AUTH_FILE"));
    paths.extend(env("DOCKER_CONFIG").map(|d| d.join("config.json")));
    paths.extend(env("HOME").map(|h| h.join(".docker/config.json")));
    paths.extend(env("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")));
    paths
}

fn read_config(path: &std::path::Path) -> anyhow::Result<ConfigFile> {
    let size = std::fs::metadata(path)?.len();
    if size > MAX_BYTES {
        bail!(
            "{} is {size} bytes, more than the {MAX_BYTES} read",
            path.display()
        );
    }
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a docker config.json", path.display()))
}

async fn lookup(config: &ConfigFile, registry: &str) -> anyhow::Result<Credentials> {
    if let Some(helper) = config.cred_helpers.get(registry) {
        return helper_get(helper, registry).await;
    }
    let keys = [
        registry.to_owned(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        format!("https://{registry}/v1/"),
    ];
    if let Some(entry) = keys.iter().find_map(|k| config.auths.get(k)) {
        return from_entry(entry);
    }
    match &config.creds_store {
        Some(store) => helper_get(store, registry).await,
        None => Ok(Credentials::Anonymous),
    }
}

fn from_entry(entry: &AuthEntry) -> anyhow::Result<Credentials> {
    if let Some(token) = entry.identitytoken.as_ref().filter(|t| !t.is_empty()) {
        return Ok(Credentials::IdentityToken(token.clone()));
    }
    if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
        return Ok(Credentials::Basic {
            username: username.clone(),
            password: password.clone(),
        });
    }
    let Some(auth) = entry.auth.as_ref().filter(|a| !a.is_empty()) else {
        return Ok(Credentials::Anonymous);
    };
    let decoded = BASE64
        .decode(auth.as_bytes())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .context("an `auth` entry is not base64 of USER:PASSWORD")?;
    let (username, password) = decoded
        .split_once(':')
        .context("an `auth` entry is not base64 of USER:PASSWORD")?;
    Ok(Credentials::Basic {
        username: username.to_owned(),
        password: password.to_owned(),
    })
}

/// `docker-credential-NAME get`, the registry on stdin, JSON on stdout.
async fn helper_get(name: &str, registry: &str) -> anyhow::Result<Credentials> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!("credential helper {name:?} is not a helper name");
    }
    let program = format!("docker-credential-{name}");
    let mut child = tokio::process::Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {program} (named by the config file)"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(registry.as_bytes()).await?;
    }
    let mut out = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        stdout.take(MAX_BYTES).read_to_end(&mut out).await?;
    }
    let status = child.wait().await?;
    if !status.success() {
        // Helpers answer "credentials not found" with a failure.
        return Ok(Credentials::Anonymous);
    }
    let answer: HelperAnswer = serde_json::from_slice(&out)
        .with_context(|| format!("{program} answered no credentials"))?;
    Ok(if answer.username == "<token>" {
        Credentials::IdentityToken(answer.secret)
    } else {
        Credentials::Basic {
            username: answer.username,
            password: answer.secret,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> ConfigFile {
        serde_json::from_str(json).unwrap()
    }

    #[tokio::test]
    async fn auth_entries_give_basic_credentials_under_any_usual_key() {
        let auth = BASE64.encode(b"alice:s3cret:with-colon");
        for key in ["reg.example:5000", "https://reg.example:5000"] {
            let c = config(&format!(r#"{{"auths":{{"{key}":{{"auth":"{auth}"}}}}}}"#));
            assert_eq!(
                lookup(&c, "reg.example:5000").await.unwrap(),
                Credentials::Basic {
                    username: "alice".into(),
                    password: "s3cret:with-colon".into()
                }
            );
        }
        let c = config(r#"{"auths":{"other":{"identitytoken":"tok"}}}"#);
        assert_eq!(
            lookup(&c, "reg.example").await.unwrap(),
            Credentials::Anonymous
        );
        assert_eq!(
            lookup(&c, "other").await.unwrap(),
            Credentials::IdentityToken("tok".into())
        );
    }

    #[tokio::test]
    async fn a_bad_entry_or_helper_name_is_an_error_not_a_panic() {
        let c = config(r#"{"auths":{"r":{"auth":"!!!"}}}"#);
        assert!(lookup(&c, "r").await.is_err());
        let c = config(r#"{"credHelpers":{"r":"../../bin/sh"}}"#);
        assert!(lookup(&c, "r").await.is_err());
        assert!(!format!("{:?}", Credentials::IdentityToken("t0k".into())).contains("t0k"));
    }
}
