//! A host of its own in this process, on its in-process bus (nothing else
//! reaches it) and in a data folder of its own (it keeps no state, durable
//! or other): where a bundle is tried before it goes out.

use std::path::PathBuf;
use std::time::Duration;

use super::Host;

pub(super) struct Scratch {
    pub host: Host,
    data: PathBuf,
}

impl Scratch {
    /// Starts one; `what` names its data folder.
    pub async fn start(what: &str) -> anyhow::Result<Self> {
        let data = std::env::temp_dir().join(format!(
            "cbs-{what}-{}-{}",
            std::process::id(),
            crate::envelope::new_id()
        ));
        let host = Host::builder().data_dir(&data).start().await?;
        Ok(Self { host, data })
    }

    /// Stops it and removes its data folder.
    pub async fn end(self) {
        self.host.shutdown(Duration::from_secs(1)).await;
        if let Err(e) = std::fs::remove_dir_all(&self.data) {
            tracing::debug!(error = %e, "cannot remove a scratch host's data folder");
        }
    }
}
