//! The OCI image-spec documents CBS writes and reads: descriptors, image
//! manifests and indexes, and the media types and annotations it uses.
//! Unknown fields are kept out, not refused: registries add their own.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The CNCF TAG-Runtime Wasm artifact: this config and one wasm layer.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
pub const WASM_LAYER: &str = "application/wasm";
/// The rest of a CBS bundle, as its own artifact (a referrer of the Wasm
/// artifact, or the whole cell for runtimes that have no component).
pub const CBS_BUNDLE: &str = "application/vnd.cbs.bundle.v1";
pub const CBS_BUNDLE_MANIFEST: &str = "application/vnd.cbs.bundle.manifest.v1+json";
pub const CBS_SIGNATURE: &str = "application/vnd.cbs.bundle.signature.v1+json";
pub const TOML: &str = "application/toml";
pub const JSON_SCHEMA: &str = "application/schema+json";
pub const OCTET_STREAM: &str = "application/octet-stream";
/// OCI 1.1's empty config for artifacts that need none.
pub const EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const EMPTY_BYTES: &[u8] = b"{}";

pub const TITLE: &str = "org.opencontainers.image.title";
pub const VERSION: &str = "org.opencontainers.image.version";
pub const CREATED: &str = "org.opencontainers.image.created";
pub const SOURCE: &str = "org.opencontainers.image.source";
pub const DESCRIPTION: &str = "org.opencontainers.image.description";
pub const CELL: &str = "dev.cbs.cell";
pub const RUNTIME: &str = "dev.cbs.runtime";
pub const BUNDLE_DIGEST: &str = "dev.cbs.bundle.digest";
pub const SIGNER: &str = "dev.cbs.signer";
pub const CONTRACT_INPUT: &str = "dev.cbs.contract.input";
pub const CONTRACT_OUTPUT: &str = "dev.cbs.contract.output";
/// The cells it calls, with their version ranges: `id@range,id,...`.
pub const CALLS: &str = "dev.cbs.calls";

/// A pointer to content: what it is, its digest and size.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub fn of(media_type: &str, bytes: &[u8]) -> Self {
        Self {
            media_type: media_type.to_owned(),
            digest: digest_of(bytes),
            size: bytes.len() as u64,
            artifact_type: None,
            annotations: BTreeMap::new(),
        }
    }

    pub fn title(&self) -> Option<&str> {
        self.annotations.get(TITLE).map(String::as_str)
    }
}

/// An image manifest (also what an artifact is).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl ImageManifest {
    pub fn new(config: Descriptor, layers: Vec<Descriptor>) -> Self {
        Self {
            schema_version: 2,
            media_type: Some(MANIFEST.to_owned()),
            artifact_type: None,
            config,
            layers,
            subject: None,
            annotations: BTreeMap::new(),
        }
    }

    /// What kind of artifact this is: its `artifactType`, else its
    /// config's media type.
    pub fn kind(&self) -> &str {
        self.artifact_type
            .as_deref()
            .unwrap_or(&self.config.media_type)
    }
}

/// An image index: here, the referrers of a manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

impl Index {
    pub fn empty() -> Self {
        Self {
            schema_version: 2,
            media_type: Some(INDEX.to_owned()),
            manifests: Vec::new(),
        }
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", crate::bundle::sha256_hex(bytes))
}

/// The tag that holds a manifest's referrers where the registry has no
/// referrers API (the OCI 1.1 fallback: `sha256-<hex>`).
pub fn referrers_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}
