//! `[bundle]`: extra files a bundle carries, and the platform its native
//! code is built for (docs/adr/0017-bundles-for-every-runtime.md).

use std::path::PathBuf;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::bounds::{self, within};

/// `[bundle]` of `cell.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BundleSpec {
    /// Files or folders (relative to the cell folder) the bundle holds as
    /// well, e.g. a sidecar's script or data.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<PathBuf>,
    /// `<os>-<arch>` (e.g. `linux-x86_64`) or `any`. Default: for a sidecar
    /// whose program is in the bundle, the platform `cbs build` runs on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

impl BundleSpec {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.platform.is_none()
    }

    pub(super) fn validate(&self) -> anyhow::Result<()> {
        within(
            "[bundle] files",
            self.files.len() as u64,
            bounds::BUNDLE_FILES as u64,
        )?;
        if let Some(platform) = &self.platform {
            crate::platform::check(platform).context("in [bundle] platform")?;
        }
        Ok(())
    }
}
