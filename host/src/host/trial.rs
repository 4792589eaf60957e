//! A bundle tried before it goes out: served by a host of its own, in
//! this process, on a bus nothing else reaches, and sent each deployed
//! consumer's example requests ([`crate::contract::expectations`]).

use async_trait::async_trait;

use super::scratch::Scratch;
use crate::bundle::Bundle;
use crate::contract::expectations::{self, Broken};
use crate::contract::testing::Target;
use crate::deploy::rollout::Trial;
use crate::deploy::Expectations;

/// Tries bundles in this process (wasm bundles: a process bundle would
/// start its program on the deployer's machine, and is not tried).
pub struct InProcess;

#[async_trait]
impl Trial for InProcess {
    async fn expectations(
        &self,
        bundle: &Bundle,
        consumers: &[Expectations],
    ) -> anyhow::Result<Vec<Broken>> {
        let scratch = Scratch::start("trial").await?;
        let host = &scratch.host;
        let outcome = async {
            let cell = host.body().load_bundle(bundle).await?;
            host.body().serve(cell).await?;
            let target = Target {
                bus: host.body().bus().as_ref(),
                cell: &bundle.manifest.cell,
                timeout: expectations::TIMEOUT,
                trial: false,
            };
            let mut broken = Vec::new();
            for consumer in consumers {
                let Some(list) = consumer.expects.get(&bundle.manifest.cell) else {
                    continue;
                };
                broken.extend(expectations::check(&target, &consumer.consumer, list).await);
            }
            anyhow::Ok(broken)
        }
        .await;
        scratch.end().await;
        outcome
    }
}
