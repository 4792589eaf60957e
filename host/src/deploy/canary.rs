//! A canary rollout (`cbs deploy --canary`): the new release serves next
//! to the current one at each step's share of the messages (ADR 0024);
//! after each interval its error ratio and p99 are compared with the
//! current release's over the same interval, and past the limits the
//! rollout reverts by itself; after the last step it is promoted. Each end
//! is written in the desired state (`cbs ls`) and the audit trail.

use std::time::{Duration, Instant};

use anyhow::bail;

use super::rollout::{self, Consent};
use super::{CanaryNote, Release, State, Store};
use crate::bundle::Bundle;
use crate::discovery;
use crate::stats::LatencyCounts;
use crate::unix_time::now_ms;

/// The steps and the limits (Flagger's defaults: at most 1 % errors, a p99
/// of at most 500 ms).
#[derive(Debug, Clone)]
pub struct Plan {
    /// Shares in percent, rising; the last is 100 (promotion).
    pub steps: Vec<u32>,
    pub interval: Duration,
    /// The canary's error ratio may exceed the current release's by this
    /// much (0.01: one point).
    pub max_error_ratio: f64,
    pub max_p99: Duration,
    /// Revert at once after this many errors of the canary in a step.
    pub max_errors: Option<u64>,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            steps: vec![10, 25, 50, 100],
            interval: Duration::from_secs(60),
            max_error_ratio: 0.01,
            max_p99: Duration::from_millis(500),
            max_errors: None,
        }
    }
}

/// How a canary ended.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    Promoted,
    /// At this share (percent), for this reason.
    Reverted {
        share: u32,
        reason: String,
    },
}

/// How long hosts may take to serve a step.
const SERVE_WAIT: Duration = Duration::from_secs(30);
/// How often a step looks at the counters.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Runs a canary of `bundle` for its deployed cell through `plan`,
/// saying each step to `progress`; the contract and consumers' gates come
/// first, as for a deploy.
pub async fn run(
    client: &async_nats::Client,
    store: &Store,
    bundle: &Bundle,
    bytes: &[u8],
    plan: &Plan,
    consent: Consent<'_>,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<(Release, End)> {
    let cell = bundle.manifest.cell.clone();
    let (_, release, notes) =
        rollout::stage_beside(store, bundle, bytes, consent, "canary").await?;
    for note in notes {
        progress(&format!("warning: {note}"));
    }
    for &step in &plan.steps {
        if step >= 100 {
            rollout::end_canary(store, &cell, true).await?;
            note(store, &cell, &release, "promoted", 10_000, None).await?;
            if let Some(warning) =
                rollout::remember_expectations(store, &bundle.cell_manifest()?).await
            {
                progress(&format!("warning: {warning}"));
            }
            progress(&format!("{cell} {} promoted", release.version));
            return Ok((release, End::Promoted));
        }
        progress(&format!(
            "{cell} {}: {step} % of the messages for {} s",
            release.version,
            plan.interval.as_secs()
        ));
        let outcome = step_through(client, store, &cell, &release, step, plan).await;
        if let Err(reason) = outcome {
            rollout::end_canary(store, &cell, false).await?;
            note(
                store,
                &cell,
                &release,
                "reverted",
                step * 100,
                Some(&reason),
            )
            .await?;
            progress(&format!(
                "{cell} {} reverted at {step} %: {reason}",
                release.version
            ));
            return Ok((
                release,
                End::Reverted {
                    share: step,
                    reason,
                },
            ));
        }
    }
    bail!("the steps must end at 100 (promotion)")
}

/// One step: the canary served at `percent` by every host serving the
/// cell, then watched for an interval; `Err` with why it must revert.
async fn step_through(
    client: &async_nats::Client,
    store: &Store,
    cell: &str,
    release: &Release,
    percent: u32,
    plan: &Plan,
) -> Result<(), String> {
    let fail = |e: anyhow::Error| format!("{e:#}");
    rollout::set_canary(store, cell, release.clone(), percent * 100)
        .await
        .map_err(fail)?;
    serving(store, cell, release).await?;
    let start = totals(client, cell, &release.version).await.map_err(fail)?;
    let began = Instant::now();
    loop {
        tokio::time::sleep(LOOK_EVERY).await;
        let now = totals(client, cell, &release.version).await.map_err(fail)?;
        let (stable, canary) = (now.0.since(&start.0), now.1.since(&start.1));
        if let Some(max) = plan.max_errors {
            if canary.errors > max {
                return Err(format!(
                    "{} errors in the step, past --max-errors {max}",
                    canary.errors
                ));
            }
        }
        if began.elapsed() >= plan.interval {
            return judge(&stable, &canary, plan);
        }
    }
}

/// Waits until every host serving the cell serves `release` (a canary, or
/// a switch to it); `Err` when one could not.
pub(super) async fn serving(store: &Store, cell: &str, release: &Release) -> Result<(), String> {
    let deadline = Instant::now() + SERVE_WAIT;
    loop {
        let statuses = store.statuses().await.map_err(|e| format!("{e:#}"))?;
        let mine: Vec<_> = statuses.iter().filter(|s| s.cell == cell).collect();
        if let Some(failed) = mine
            .iter()
            .find(|s| s.release == release.id && s.state == State::Failed)
        {
            return Err(format!(
                "{} could not serve it: {}",
                failed.host,
                failed.error.as_deref().unwrap_or("")
            ));
        }
        if !mine.is_empty()
            && mine
                .iter()
                .all(|s| s.release == release.id && s.state == State::Serving)
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let waiting: Vec<&str> = mine
                .iter()
                .filter(|s| s.release != release.id)
                .map(|s| s.host.as_str())
                .collect();
            let who = match waiting.is_empty() {
                true => "no host serving the cell".to_owned(),
                false => waiting.join(", "),
            };
            return Err(format!(
                "{who} did not report serving {} within {} s (see `cbs ls` and the hosts' logs)",
                release.version,
                SERVE_WAIT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One version's counters summed over the hosts.
#[derive(Debug, Clone, Default)]
struct Counts {
    requests: u64,
    errors: u64,
    latency: Option<LatencyCounts>,
}

impl Counts {
    fn add(&mut self, requests: u64, errors: u64, latency: Option<&LatencyCounts>) {
        self.requests += requests;
        self.errors += errors;
        self.latency = match (self.latency.take(), latency) {
            (None, l) => l.cloned(),
            (Some(mine), Some(l)) => mine.plus(l).or(Some(mine)),
            (mine, None) => mine,
        };
    }

    fn since(&self, before: &Self) -> Self {
        Self {
            requests: self.requests.saturating_sub(before.requests),
            errors: self.errors.saturating_sub(before.errors),
            latency: match (&self.latency, &before.latency) {
                (Some(now), Some(then)) => now.since(then),
                (now, _) => now.clone(),
            },
        }
    }

    fn error_ratio(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    fn p99(&self) -> Option<Duration> {
        self.latency
            .as_ref()
            .and_then(|l| l.quantile_us(0.99))
            .map(Duration::from_micros)
    }
}

/// The stable and canary versions' counters over every host of the cell.
async fn totals(
    client: &async_nats::Client,
    cell: &str,
    canary_version: &str,
) -> anyhow::Result<(Counts, Counts)> {
    let quiet = Duration::from_millis(150);
    let hosts = discovery::list(client, quiet, Duration::from_secs(2)).await?;
    let (mut stable, mut canary) = (Counts::default(), Counts::default());
    for view in hosts
        .iter()
        .flat_map(|h| h.cells.iter().filter(|c| c.id == cell))
    {
        stable.add(view.requests, view.errors, view.latency.as_ref());
        if let Some(c) = view.canary.as_ref().filter(|c| c.version == canary_version) {
            canary.add(c.requests, c.errors, c.latency.as_ref());
        }
    }
    Ok((stable, canary))
}

/// Whether the canary stays within the limits against the stable version.
fn judge(stable: &Counts, canary: &Counts, plan: &Plan) -> Result<(), String> {
    let (theirs, mine) = (stable.error_ratio(), canary.error_ratio());
    if mine > theirs + plan.max_error_ratio {
        return Err(format!(
            "error ratio {:.1} % against {:.1} % for the current release (limit +{:.1} points), {} of {} requests",
            mine * 100.0,
            theirs * 100.0,
            plan.max_error_ratio * 100.0,
            canary.errors,
            canary.requests
        ));
    }
    if let Some(p99) = canary.p99().filter(|p| *p > plan.max_p99) {
        let current = stable
            .p99()
            .map_or("–".to_owned(), |p| format!("{} ms", p.as_millis()));
        return Err(format!(
            "p99 {} ms against {current} for the current release (limit {} ms)",
            p99.as_millis(),
            plan.max_p99.as_millis()
        ));
    }
    Ok(())
}

/// Writes how the canary stands in the desired state, and audits an end.
pub(super) async fn note(
    store: &Store,
    cell: &str,
    release: &Release,
    state: &str,
    share: u32,
    reason: Option<&str>,
) -> anyhow::Result<()> {
    let Some(mut desired) = store.desired(cell).await? else {
        return Ok(());
    };
    desired.last_canary = Some(CanaryNote {
        version: release.version.clone(),
        state: state.to_owned(),
        share,
        reason: reason.map(str::to_owned),
        at_ms: now_ms(),
    });
    store.set_desired(&desired).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(requests: u64, errors: u64) -> Counts {
        Counts {
            requests,
            errors,
            latency: None,
        }
    }

    #[test]
    fn a_canary_failing_a_fifth_of_its_requests_is_past_the_default_limit() {
        let plan = Plan::default();
        let reason = judge(&counts(900, 0), &counts(100, 20), &plan).unwrap_err();
        assert!(reason.contains("error ratio 20.0 %"), "{reason}");
        assert!(
            judge(&counts(900, 9), &counts(100, 1), &plan).is_ok(),
            "as the current one"
        );
        assert!(
            judge(&counts(900, 0), &counts(0, 0), &plan).is_ok(),
            "nothing yet"
        );
    }

    #[test]
    fn a_slow_canary_is_past_the_p99_limit() {
        let slow = LatencyCounts {
            bounds_us: vec![1_000, 100_000, 1_000_000],
            counts: vec![0, 0, 100, 0],
        };
        let canary = Counts {
            requests: 100,
            errors: 0,
            latency: Some(slow),
        };
        let reason = judge(&counts(100, 0), &canary, &Plan::default()).unwrap_err();
        assert!(reason.contains("p99 1000 ms"), "{reason}");
    }
}
