//! Sharing load between the hosts serving a cell: each publishes its
//! recent latency and free room for the cell on [`super::load_subject`]
//! every [`REPORT_EVERY`], and follows the others' reports there.
//!
//! Reports come from the bus, so from anyone allowed to publish there: they
//! are parsed without panicking, the table of peers is bounded, and a peer's
//! name must be one subject token. A forged report can only make a host
//! forward to a subject nobody serves, and then it handles the request
//! itself (see `body::forward`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{is_host_token, load_subject, CellRoutes, Router, FRESH_FOR, REPORT_EVERY};
use crate::bus::{BodyBus, Message, Subscription};
use crate::stats::CellLoad;

/// The most peers remembered per cell; reports from more are ignored
/// until some go stale.
pub const MAX_PEERS: usize = 256;

/// A report on the wire.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    host: String,
    latency_us: u64,
    room: u32,
}

/// Peers' last reports for one cell, by host, with when each arrived.
#[derive(Default)]
pub struct Peers {
    by_host: HashMap<String, (Instant, CellLoad)>,
}

impl Peers {
    /// Records a report; drops stale ones when full, and ignores a new host
    /// while still full.
    pub fn insert(&mut self, host: String, load: CellLoad, now: Instant) {
        if self.by_host.len() >= MAX_PEERS && !self.by_host.contains_key(&host) {
            self.by_host
                .retain(|_, (seen, _)| now.duration_since(*seen) < FRESH_FOR);
            if self.by_host.len() >= MAX_PEERS {
                return;
            }
        }
        self.by_host.insert(host, (now, load));
    }

    /// The reports recent enough to act on.
    pub fn fresh(&self, now: Instant) -> impl Iterator<Item = (&str, &CellLoad)> {
        self.by_host
            .iter()
            .filter(move |(_, (seen, _))| now.duration_since(*seen) < FRESH_FOR)
            .map(|(host, (_, load))| (host.as_str(), load))
    }
}

/// Publishes this host's load for `cell_id` and follows its peers' until
/// the task is dropped. `mine` reads the served version's load.
pub async fn share(
    bus: Arc<dyn BodyBus>,
    router: Arc<Router>,
    cell_id: String,
    mut reports: Subscription,
    mine: impl Fn() -> CellLoad + Send + 'static,
) {
    let routes = router.cell(&cell_id);
    let subject = load_subject(&cell_id);
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let load = mine();
                routes.observe(None, load);
                publish(&*bus, &subject, router.me(), load).await;
            }
            report = reports.next() => {
                let Some(report) = report else { break };
                take(&routes, router.me(), &report, mine());
            }
        }
    }
}

async fn publish(bus: &dyn BodyBus, subject: &str, me: &str, load: CellLoad) {
    let report = Report {
        host: me.to_owned(),
        latency_us: load.latency_us,
        room: load.room,
    };
    let Ok(bytes) = serde_json::to_vec(&report) else {
        return;
    };
    if let Err(e) = bus.publish(Message::new(subject, Bytes::from(bytes))).await {
        tracing::debug!(error = %e, %subject, "cannot share this host's load");
    }
}

/// Takes one message from the load subject: a peer's report, or noise.
#[doc(hidden)] // pub for the fuzz target
pub fn take(routes: &CellRoutes, me: &str, message: &Message, mine: CellLoad) {
    let report: Report = match serde_json::from_slice(&message.payload) {
        Ok(r) => r,
        Err(e) => {
            return tracing::debug!(error = %e, subject = %message.subject, "ignored a malformed load report");
        }
    };
    if report.host == me {
        return;
    }
    if !is_host_token(&report.host) {
        return tracing::debug!(host = %report.host.escape_debug(), "ignored a load report from an invalid host name");
    }
    let load = CellLoad {
        latency_us: report.latency_us,
        room: report.room,
        ..CellLoad::default()
    };
    routes.observe(Some((report.host, load)), mine);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_table_is_bounded() {
        let mut peers = Peers::default();
        let now = Instant::now();
        for i in 0..MAX_PEERS + 50 {
            peers.insert(format!("h{i}"), CellLoad::default(), now);
        }
        assert_eq!(peers.by_host.len(), MAX_PEERS);
        // A known host still updates.
        peers.insert(
            "h0".into(),
            CellLoad {
                latency_us: 7,
                room: 1,
                ..CellLoad::default()
            },
            now,
        );
        assert!(peers
            .fresh(now)
            .any(|(h, l)| h == "h0" && l.latency_us == 7));
    }

    #[test]
    fn stale_reports_make_room_and_are_not_acted_on() {
        let mut peers = Peers::default();
        let then = Instant::now();
        for i in 0..MAX_PEERS {
            peers.insert(format!("h{i}"), CellLoad::default(), then);
        }
        let later = then + FRESH_FOR;
        assert_eq!(peers.fresh(later).count(), 0);
        peers.insert("new".into(), CellLoad::default(), later);
        assert_eq!(
            peers.fresh(later).map(|(h, _)| h).collect::<Vec<_>>(),
            ["new"]
        );
    }

    #[test]
    fn hostile_reports_are_ignored() {
        let routes = CellRoutes::default();
        for payload in [
            &b"\xff\xfe"[..],
            b"{}",
            b"{\"host\":\"a.>\",\"latency_us\":1,\"room\":9}",
            b"{\"host\":\"b\",\"latency_us\":-1,\"room\":9}",
            b"{\"host\":\"b\",\"latency_us\":1,\"room\":99999999999}",
            b"{\"host\":\"b\",\"latency_us\":1,\"room\":1,\"extra\":0}",
            b"{\"host\":\"me\",\"latency_us\":1,\"room\":9}",
        ] {
            take(
                &routes,
                "me",
                &Message::new("cbs.~l.x", Bytes::from_static(payload)),
                CellLoad::default(),
            );
        }
        assert_eq!(
            routes.peers.lock().unwrap().fresh(Instant::now()).count(),
            0
        );
        let good = br#"{"host":"b","latency_us":1,"room":9}"#;
        take(
            &routes,
            "me",
            &Message::new("cbs.~l.x", Bytes::from_static(good)),
            CellLoad::default(),
        );
        assert_eq!(
            routes.peers.lock().unwrap().fresh(Instant::now()).count(),
            1
        );
    }
}
