//! The OCI distribution API over HTTP: the few calls CBS makes, each reply
//! read with a bound (a registry is outside input: an endless body or a
//! giant manifest is an error, never an allocation), each blob checked
//! against its digest. Authentication as registries ask for it: basic, or
//! a bearer token from the realm the `WWW-Authenticate` challenge names.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context as _};
use data_encoding::BASE64;
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;

use super::credentials::Credentials;
use super::oci::{self, Descriptor};

/// The largest manifest or index read (what registries accept: 4 MiB).
pub const MAX_MANIFEST: u64 = 4 << 20;
/// The largest page of a catalog or tag list.
const MAX_LIST: u64 = 4 << 20;
/// The most pages of a catalog or tag list followed.
const MAX_PAGES: usize = 100;
/// The largest token reply, and error body read.
const MAX_SMALL: u64 = 64 << 10;
/// No byte for this long ends a request.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Plain HTTP (a local registry); else HTTPS with the system's roots
    /// (`SSL_CERT_FILE` names others).
    pub insecure: bool,
}

/// A manifest as fetched: its bytes, their digest and its media type.
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub digest: String,
    pub media_type: String,
}

/// One registry, with its credentials and the tokens it handed out.
pub struct Client {
    http: reqwest::Client,
    base: String,
    registry: String,
    credentials: Credentials,
    /// Authorization header per scope, as last granted.
    granted: Mutex<HashMap<String, String>>,
}

impl Client {
    /// A client for `registry` with the credentials the docker config
    /// gives for it.
    pub async fn connect(registry: &str, options: &Options) -> anyhow::Result<Self> {
        let credentials = super::credentials::for_registry(registry).await?;
        Self::new(registry, credentials, options)
    }

    pub fn new(
        registry: &str,
        credentials: Credentials,
        options: &Options,
    ) -> anyhow::Result<Self> {
        crate::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .user_agent(concat!("cbs/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(READ_TIMEOUT)
            .build()
            .context("cannot make an HTTP client")?;
        let scheme = if options.insecure { "http" } else { "https" };
        Ok(Self {
            http,
            base: format!("{scheme}://{registry}"),
            registry: registry.to_owned(),
            credentials,
            granted: Mutex::new(HashMap::new()),
        })
    }

    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// A manifest by tag or digest; `None` when the registry has none.
    pub async fn manifest(&self, repo: &str, reference: &str) -> anyhow::Result<Option<Fetched>> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let accept = [oci::MANIFEST, oci::INDEX, oci::DOCKER_MANIFEST].join(", ");
        let res = self
            .send(&pull_scope(repo), |c| c.get(&url).header(ACCEPT, &accept))
            .await?;
        if res.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let res = ok(res, &format!("manifest {repo}:{reference}")).await?;
        let media_type = header(res.headers(), CONTENT_TYPE).unwrap_or_default();
        let bytes =
            read_bounded(res, MAX_MANIFEST, &format!("manifest {repo}:{reference}")).await?;
        let digest = oci::digest_of(&bytes);
        if reference.starts_with("sha256:") && reference != digest {
            bail!("the registry answered manifest {repo}@{reference} with other bytes ({digest})");
        }
        Ok(Some(Fetched {
            bytes,
            digest,
            media_type,
        }))
    }

    /// A blob, exactly the bytes its descriptor gives (size and digest).
    pub async fn blob(&self, repo: &str, descriptor: &Descriptor) -> anyhow::Result<Vec<u8>> {
        let digest = super::reference::check_digest(&descriptor.digest)?;
        let what = format!(
            "layer {} of {repo}",
            descriptor.title().unwrap_or(&descriptor.digest)
        );
        let url = format!("{}/v2/{repo}/blobs/{digest}", self.base);
        let res = self.send(&pull_scope(repo), |c| c.get(&url)).await?;
        let res = ok(res, &what).await?;
        let bytes = read_bounded(res, descriptor.size, &what).await?;
        let actual = oci::digest_of(&bytes);
        if bytes.len() as u64 != descriptor.size || actual != descriptor.digest {
            bail!(
                "{what} is not what its manifest says: {} bytes with digest {actual}, expected {} \
                 bytes with {} (the registry's copy is damaged or was tampered with)",
                bytes.len(),
                descriptor.size,
                descriptor.digest
            );
        }
        Ok(bytes)
    }

    /// Uploads a blob unless the registry has it (one monolithic upload).
    pub async fn push_blob(
        &self,
        repo: &str,
        descriptor: &Descriptor,
        bytes: &[u8],
    ) -> anyhow::Result<()> {
        let scope = push_scope(repo);
        let head = format!("{}/v2/{repo}/blobs/{}", self.base, descriptor.digest);
        let res = self.send(&scope, |c| c.head(&head)).await?;
        if res.status().is_success() {
            return Ok(());
        }
        let start = format!("{}/v2/{repo}/blobs/uploads/", self.base);
        let res = self.send(&scope, |c| c.post(&start)).await?;
        let res = ok(res, &format!("starting an upload to {repo}")).await?;
        let location = header(res.headers(), LOCATION)
            .context("the registry started an upload without a Location")?;
        let url = reqwest::Url::parse(&self.base)?
            .join(&location)
            .context("the registry's upload Location is not a URL")?;
        let mut url = url;
        url.query_pairs_mut()
            .append_pair("digest", &descriptor.digest);
        // Cheap to clone for a second attempt after a challenge.
        let body = bytes::Bytes::copy_from_slice(bytes);
        let res = self
            .send(&scope, |c| {
                c.put(url.clone())
                    .header(CONTENT_TYPE, oci::OCTET_STREAM)
                    .body(body.clone())
            })
            .await?;
        ok(res, &format!("uploading {} to {repo}", descriptor.digest)).await?;
        Ok(())
    }

    /// Puts a manifest under a tag or its digest; true when the registry
    /// indexed its subject itself (it answered `OCI-Subject`).
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> anyhow::Result<bool> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base);
        let body = bytes::Bytes::copy_from_slice(bytes);
        let res = self
            .send(&push_scope(repo), |c| {
                c.put(&url)
                    .header(CONTENT_TYPE, media_type)
                    .body(body.clone())
            })
            .await?;
        let res = ok(res, &format!("putting manifest {repo}:{reference}")).await?;
        Ok(res.headers().contains_key("oci-subject"))
    }

    /// The manifests that refer to `digest` (OCI 1.1 referrers API, or its
    /// fallback tag on registries without it).
    pub async fn referrers(&self, repo: &str, digest: &str) -> anyhow::Result<Vec<Descriptor>> {
        let url = format!("{}/v2/{repo}/referrers/{digest}", self.base);
        let res = self
            .send(&pull_scope(repo), |c| {
                c.get(&url).header(ACCEPT, oci::INDEX)
            })
            .await?;
        if res.status().is_success() {
            let bytes = read_bounded(res, MAX_MANIFEST, "a referrers list").await?;
            return Ok(parse_index(&bytes)?.manifests);
        }
        match self.manifest(repo, &oci::referrers_tag(digest)).await? {
            Some(fetched) => Ok(parse_index(&fetched.bytes)?.manifests),
            None => Ok(Vec::new()),
        }
    }

    /// The registry's repositories (its catalog, page by page), up to
    /// `limit` (pages stop once that many are read).
    pub async fn catalog(&self, limit: usize) -> anyhow::Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Catalog {
            #[serde(default)]
            repositories: Vec<String>,
        }
        let first = format!("{}/v2/_catalog?n=1000", self.base);
        let mut out = Vec::new();
        let take = |page: &[u8]| {
            let c: Catalog = serde_json::from_slice(page).context("the catalog is not JSON")?;
            out.extend(c.repositories);
            Ok(out.len() < limit)
        };
        self.pages(first, "registry:catalog:*", "the catalog", take)
            .await?;
        out.truncate(limit);
        Ok(out)
    }

    /// A repository's tags; none when it does not exist.
    pub async fn tags(&self, repo: &str) -> anyhow::Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Tags {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let first = format!("{}/v2/{repo}/tags/list?n=1000", self.base);
        let mut out = Vec::new();
        let take = |page: &[u8]| {
            let t: Tags = serde_json::from_slice(page).context("a tag list is not JSON")?;
            out.extend(t.tags.unwrap_or_default());
            Ok(true)
        };
        let what = format!("the tags of {repo}");
        self.pages(first, &pull_scope(repo), &what, take).await?;
        Ok(out)
    }

    /// Each body of a paginated list to `take` (which says whether to go
    /// on), following `Link: <..>; rel="next"`.
    async fn pages(
        &self,
        first: String,
        scope: &str,
        what: &str,
        mut take: impl FnMut(&[u8]) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let mut url = Some(first);
        let mut pages = 0;
        while let Some(next) = url.take() {
            if pages == MAX_PAGES {
                bail!("{what} has more than {MAX_PAGES} pages");
            }
            pages += 1;
            let res = self.send(scope, |c| c.get(&next)).await?;
            // No such repository (or no catalog): nothing more to list.
            if res.status() == StatusCode::NOT_FOUND {
                break;
            }
            let res = ok(res, what).await?;
            url = next_link(res.headers())
                .map(|link| reqwest::Url::parse(&self.base).and_then(|b| b.join(&link)))
                .transpose()?
                .map(String::from);
            if !take(&read_bounded(res, MAX_LIST, what).await?)? {
                break;
            }
        }
        Ok(())
    }

    /// Sends a request with what the registry granted for `scope`; on a
    /// challenge, answers it once and sends again.
    async fn send(
        &self,
        scope: &str,
        make: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> anyhow::Result<Response> {
        let granted = self.granted(scope);
        let mut request = make(&self.http);
        if let Some(auth) = &granted {
            request = request.header(AUTHORIZATION, auth);
        }
        let res = request.send().await.map_err(|e| self.unreachable(e))?;
        if res.status() != StatusCode::UNAUTHORIZED {
            return Ok(res);
        }
        let challenge = header(res.headers(), WWW_AUTHENTICATE).unwrap_or_default();
        let auth = self.answer(&challenge, scope).await?;
        self.grant(scope, &auth);
        let res = make(&self.http)
            .header(AUTHORIZATION, &auth)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if res.status() == StatusCode::UNAUTHORIZED {
            bail!(
                "{} refused the credentials for {scope} (401): log in with `docker login {}` \
                 or name a config file with REGISTRY_AUTH_FILE",
                self.registry,
                self.registry
            );
        }
        Ok(res)
    }

    fn granted(&self, scope: &str) -> Option<String> {
        let granted = self.granted.lock().unwrap_or_else(|e| e.into_inner());
        granted.get(scope).cloned()
    }

    fn grant(&self, scope: &str, auth: &str) {
        let mut granted = self.granted.lock().unwrap_or_else(|e| e.into_inner());
        granted.insert(scope.to_owned(), auth.to_owned());
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        let hint = if self.base.starts_with("https") {
            " (a local registry over plain HTTP needs --insecure)"
        } else {
            ""
        };
        anyhow::anyhow!("cannot reach registry {}{hint}: {e:#}", self.registry)
    }

    /// The Authorization header that answers `challenge`.
    async fn answer(&self, challenge: &str, scope: &str) -> anyhow::Result<String> {
        let (scheme, params) = parse_challenge(challenge);
        match (scheme.to_ascii_lowercase().as_str(), &self.credentials) {
            ("basic", Credentials::Basic { username, password }) => Ok(basic(username, password)),
            ("basic", _) => bail!(
                "{} asks for a user name and password: log in with `docker login {}` or name a \
                 config file with REGISTRY_AUTH_FILE",
                self.registry,
                self.registry
            ),
            ("bearer", _) => {
                let token = self.token(&params, scope).await?;
                Ok(format!("Bearer {token}"))
            }
            _ => bail!(
                "{} asks for authentication CBS does not speak ({challenge:?})",
                self.registry
            ),
        }
    }

    /// A token from the challenge's realm for its scope (or ours).
    async fn token(&self, params: &HashMap<String, String>, scope: &str) -> anyhow::Result<String> {
        let realm = params
            .get("realm")
            .context("the registry's bearer challenge names no realm")?;
        let scope = params.get("scope").map_or(scope, String::as_str);
        let service = params.get("service").cloned().unwrap_or_default();
        let request = match &self.credentials {
            Credentials::IdentityToken(refresh) => self.http.post(realm).form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.as_str()),
                ("service", service.as_str()),
                ("scope", scope),
                ("client_id", "cbs"),
            ]),
            Credentials::Basic { username, password } => self
                .http
                .get(realm)
                .query(&[("service", service.as_str()), ("scope", scope)])
                .header(AUTHORIZATION, basic(username, password)),
            Credentials::Anonymous => self
                .http
                .get(realm)
                .query(&[("service", service.as_str()), ("scope", scope)]),
        };
        let res = request
            .send()
            .await
            .with_context(|| format!("cannot reach the token service {realm}"))?;
        let res = ok(res, &format!("a token from {realm}")).await?;
        let bytes = read_bounded(res, MAX_SMALL, "a token reply").await?;
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Token = serde_json::from_slice(&bytes).context("the token reply is not JSON")?;
        t.token
            .or(t.access_token)
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
            .context("the token reply holds no usable token")
    }
}

fn pull_scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

fn push_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

fn basic(username: &str, password: &str) -> String {
    format!(
        "Basic {}",
        BASE64.encode(format!("{username}:{password}").as_bytes())
    )
}

fn header(headers: &HeaderMap, name: reqwest::header::HeaderName) -> Option<String> {
    headers.get(name)?.to_str().ok().map(str::to_owned)
}

/// `Bearer realm="..",service="..",scope=".."` into its scheme and
/// parameters (values may be quoted and hold commas).
fn parse_challenge(challenge: &str) -> (String, HashMap<String, String>) {
    let challenge = challenge.trim();
    let (scheme, rest) = challenge.split_once(' ').unwrap_or((challenge, ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => match quoted.split_once('"') {
                Some((v, n)) => (v, n),
                None => (quoted, ""),
            },
            None => after.split_once(',').unwrap_or((after, "")),
        };
        params.insert(key, value.to_owned());
        rest = next.trim_start().trim_start_matches(',');
    }
    (scheme.to_owned(), params)
}

/// The `next` target of a `Link` header.
fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = header(headers, reqwest::header::LINK)?;
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params.contains("rel=\"next\"").then(|| {
            target
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        })
    })
}

/// The response if it succeeded, else an error naming what the registry said.
async fn ok(res: Response, what: &str) -> anyhow::Result<Response> {
    let status = res.status();
    if status.is_success() {
        return Ok(res);
    }
    let body = read_bounded(res, MAX_SMALL, what).await.unwrap_or_default();
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<OciError>,
    }
    #[derive(Deserialize)]
    struct OciError {
        code: String,
        #[serde(default)]
        message: String,
    }
    let said = serde_json::from_slice::<Errors>(&body)
        .ok()
        .and_then(|e| e.errors.into_iter().next())
        .map(|e| format!(": {} {}", e.code, e.message.escape_debug()))
        .unwrap_or_default();
    bail!("the registry answered {what} with {status}{said}")
}

/// The body, refused past `max` bytes (announced or sent).
async fn read_bounded(mut res: Response, max: u64, what: &str) -> anyhow::Result<Vec<u8>> {
    if let Some(announced) = res.content_length().filter(|n| *n > max) {
        bail!("{what}: the registry announces {announced} bytes, more than the {max} expected");
    }
    let mut out = Vec::with_capacity(res.content_length().unwrap_or(0).min(1 << 20) as usize);
    while let Some(chunk) = res
        .chunk()
        .await
        .with_context(|| format!("{what}: the registry's reply broke off"))?
    {
        if (out.len() + chunk.len()) as u64 > max {
            bail!("{what}: the registry sent more than the {max} bytes expected");
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn parse_index(bytes: &[u8]) -> anyhow::Result<oci::Index> {
    serde_json::from_slice(bytes).context("a referrers index is not an OCI image index")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_with_quoted_commas() {
        let (scheme, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        assert_eq!(parse_challenge("Basic realm=x").1["realm"], "x");
        // Garbage is no panic.
        for junk in ["", "=", "Bearer \"", "Bearer a=\"b", ",,,=,"] {
            let _ = parse_challenge(junk);
        }
    }

    #[test]
    fn the_next_page_comes_from_the_link_header() {
        let mut h = HeaderMap::new();
        h.insert(
            reqwest::header::LINK,
            "</v2/_catalog?last=b&n=2>; rel=\"next\"".parse().unwrap(),
        );
        assert_eq!(next_link(&h).as_deref(), Some("/v2/_catalog?last=b&n=2"));
    }
}
