//! Two versions of one cell sharing its messages: the stable one, and
//! during a canary a new one that takes a share of them. The share is kept
//! exactly, message by message: of every 10,000 messages a host takes for
//! the cell, `share` go to the canary, spread evenly (the n-th goes to the
//! canary when `n × share / 10,000` passes a whole number), so the split
//! holds on each host and so across hosts, without randomness to wait out.
//!
//! After a blue-green switch the version switched away from stays loaded,
//! warm but taking nothing ([`Versions::standby`]), so a switch back is a
//! swap of two pointers instead of a load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::cell::LoadedCell;

/// Where a served cell's versions sit: read once per message, so a hot
/// swap or a new share takes effect from the next message on.
pub(super) type Slot = Arc<RwLock<Versions>>;

/// Shares are in basis points: 10,000 is every message.
pub const ALL: u32 = 10_000;

/// The versions of one cell id on this host.
pub struct Versions {
    stable: Arc<LoadedCell>,
    canary: Option<Canary>,
    /// The version switched away from, kept warm (and its generation, so
    /// that the end of one warm window never drops a later standby).
    standby: Option<(Arc<LoadedCell>, u64)>,
    /// Messages taken since the split last changed.
    taken: AtomicU64,
}

struct Canary {
    cell: Arc<LoadedCell>,
    share: u32,
}

impl Versions {
    pub fn new(stable: Arc<LoadedCell>) -> Self {
        Self {
            stable,
            canary: None,
            standby: None,
            taken: AtomicU64::new(0),
        }
    }

    pub fn stable(&self) -> &Arc<LoadedCell> {
        &self.stable
    }

    /// The canary and its share (basis points), during a canary.
    pub fn canary(&self) -> Option<(&Arc<LoadedCell>, u32)> {
        self.canary.as_ref().map(|c| (&c.cell, c.share))
    }

    /// The version the next message goes to.
    pub fn next(&self) -> Arc<LoadedCell> {
        let Some(canary) = &self.canary else {
            return self.stable.clone();
        };
        let n = self.taken.fetch_add(1, Ordering::Relaxed);
        if takes_canary(n, canary.share) {
            canary.cell.clone()
        } else {
            self.stable.clone()
        }
    }

    /// Puts `stable` in place of the stable version; returns the one it
    /// replaced. A canary goes on.
    pub fn replace(&mut self, stable: Arc<LoadedCell>) -> Arc<LoadedCell> {
        std::mem::replace(&mut self.stable, stable)
    }

    /// Starts (or moves) the canary: `cell` takes `share` of the messages
    /// (at most [`ALL`]); returns a canary it replaced.
    pub fn split(&mut self, cell: Arc<LoadedCell>, share: u32) -> Option<Arc<LoadedCell>> {
        self.taken.store(0, Ordering::Relaxed);
        let new = Canary {
            cell,
            share: share.min(ALL),
        };
        self.canary.replace(new).map(|old| old.cell)
    }

    /// Changes the canary's share; false when there is no canary.
    pub fn set_share(&mut self, share: u32) -> bool {
        self.taken.store(0, Ordering::Relaxed);
        match &mut self.canary {
            Some(canary) => {
                canary.share = share.min(ALL);
                true
            }
            None => false,
        }
    }

    /// Ends the canary: the canary becomes stable (`promote`) or goes;
    /// returns the version no longer served, if any.
    pub fn end(&mut self, promote: bool) -> Option<Arc<LoadedCell>> {
        let canary = self.canary.take()?.cell;
        Some(if promote {
            std::mem::replace(&mut self.stable, canary)
        } else {
            canary
        })
    }

    /// The version kept warm after a switch, if any.
    pub fn standby(&self) -> Option<&Arc<LoadedCell>> {
        self.standby.as_ref().map(|(cell, _)| cell)
    }

    /// Switches all messages to the canary at once and keeps the version
    /// it replaces warm as the standby, marked `generation`; returns the
    /// standby this one replaced (to retire). False in `.0` when there is
    /// no canary.
    pub fn switch(&mut self, generation: u64) -> (bool, Option<Arc<LoadedCell>>) {
        let Some(canary) = self.canary.take() else {
            return (false, None);
        };
        let old = std::mem::replace(&mut self.stable, canary.cell);
        let replaced = self.standby.replace((old, generation));
        (true, replaced.map(|(cell, _)| cell))
    }

    /// Switches back: the standby serves everything again and the version
    /// it replaces becomes the standby (same warm window). False when
    /// there is none.
    pub fn swap_standby(&mut self) -> bool {
        let Some((standby, generation)) = self.standby.take() else {
            return false;
        };
        let was = std::mem::replace(&mut self.stable, standby);
        self.standby = Some((was, generation));
        true
    }

    /// Ends the warm window `generation`: the standby goes, unless a later
    /// switch made another one.
    pub fn drop_standby(&mut self, generation: u64) -> Option<Arc<LoadedCell>> {
        match &self.standby {
            Some((_, g)) if *g == generation => self.standby.take().map(|(cell, _)| cell),
            _ => None,
        }
    }

    /// Every version loaded with its role (`stable`, `canary`, `warm`) and
    /// its share of the messages (basis points).
    pub fn roles(&self) -> Vec<(Arc<LoadedCell>, &'static str, u32)> {
        let canary_share = self.canary.as_ref().map_or(0, |c| c.share);
        let mut out = vec![(self.stable.clone(), "stable", ALL - canary_share)];
        if let Some(c) = &self.canary {
            out.push((c.cell.clone(), "canary", c.share));
        }
        if let Some((cell, _)) = &self.standby {
            out.push((cell.clone(), "warm", 0));
        }
        out
    }

    /// Every version loaded: the stable one, the canary, the standby.
    pub fn all(&self) -> Vec<Arc<LoadedCell>> {
        std::iter::once(self.stable.clone())
            .chain(self.canary.as_ref().map(|c| c.cell.clone()))
            .chain(self.standby.as_ref().map(|(cell, _)| cell.clone()))
            .collect()
    }
}

/// Whether the `n`-th message (from 0) goes to a canary taking `share`.
fn takes_canary(n: u64, share: u32) -> bool {
    let (share, all) = (u64::from(share), u64::from(ALL));
    (n + 1) * share / all > n * share / all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picks(share: u32, n: u64) -> Vec<bool> {
        (0..n).map(|i| takes_canary(i, share)).collect()
    }

    #[test]
    fn a_share_is_kept_exactly_and_spread_evenly() {
        for share in [0, 1, 1_000, 2_500, 5_000, 9_999, ALL] {
            let p = picks(share, 10_000);
            assert_eq!(p.iter().filter(|c| **c).count() as u32, share);
        }
        // 10 %: one in ten, never two canaries in a row.
        let p = picks(1_000, 100);
        assert!(p.windows(2).all(|w| !(w[0] && w[1])));
        assert_eq!(p.iter().filter(|c| **c).count(), 10);
    }
}
