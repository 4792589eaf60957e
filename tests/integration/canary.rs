//! Two versions of a cell on one host, splitting its messages by share:
//! on the in-process bus and across hosts on a real nats-server, the
//! share measured over 10,000 requests is the one asked for (within ±2
//! points), a promoted canary takes every message, and a dropped one none.

use std::sync::Arc;
use std::time::Duration;

use cbs_host::bus::local::LocalBus;
use cbs_host::bus::BodyBus;
use cbs_tests::nats::NatsServer;
use cbs_tests::process::{cbs, HostProcess};
use cbs_tests::{call_json, eventually, greet, CellToml, TestHost};
use serde_json::json;

const CELL: &str = "logic.greet";
const MESSAGES: usize = 10_000;
/// Requests in flight at once.
const AT_ONCE: usize = 32;
const GRACE: Duration = Duration::from_secs(5);

/// Serves version 0.2.0 of logic.greet next to 0.1.0 on `host`, taking
/// `share` of every 10,000 messages.
async fn canary(host: &TestHost, share: u32) -> tempfile::TempDir {
    let next = CellToml::from_dir(&greet()).version("0.2.0").write();
    let cell = host.body().load(next.path()).await.unwrap();
    host.body().split(cell, share, GRACE).await.unwrap();
    next
}

/// Sends `n` greetings over `bus`, `AT_ONCE` at a time; each must succeed.
async fn load(bus: &dyn BodyBus, n: usize) {
    let mut left = n;
    while left > 0 {
        let now = left.min(AT_ONCE);
        left -= now;
        let calls =
            (0..now).map(|_| call_json(bus, CELL, json!({"name": "Ada"}), Duration::from_secs(10)));
        for reply in futures_util::future::join_all(calls).await {
            reply.expect("every request is answered");
        }
    }
}

/// Requests each version of the cell handled on these hosts: (stable, canary).
fn handled(hosts: &[&TestHost]) -> (u64, u64) {
    let mut counts = (0, 0);
    for host in hosts {
        let versions = host.body().versions(CELL);
        counts.0 += versions[0].stats.requests();
        counts.1 += versions.get(1).map_or(0, |c| c.stats.requests());
    }
    counts
}

fn assert_share(counts: (u64, u64), share: u32) {
    let measured = counts.1 as f64 * 100.0 / (counts.0 + counts.1) as f64;
    let asked = f64::from(share) / 100.0;
    eprintln!(
        "canary share asked {asked:.1} %, measured {measured:.2} % of {} messages",
        counts.0 + counts.1
    );
    assert!(
        (measured - asked).abs() <= 2.0,
        "asked {asked} %, measured {measured} % ({counts:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_share_holds_over_ten_thousand_requests_in_process() {
    let host = TestHost::start(cbs_tests::builder(Arc::new(LocalBus::new())), &[greet()]).await;
    let _next = canary(&host, 1_000).await;
    load(host.body().bus().as_ref(), MESSAGES).await;
    assert_share(handled(&[&host]), 1_000);

    // Moved to 50 %: the next messages split half and half.
    host.body().set_share(CELL, 5_000).unwrap();
    let before = handled(&[&host]);
    load(host.body().bus().as_ref(), MESSAGES).await;
    let after = handled(&[&host]);
    assert_share((after.0 - before.0, after.1 - before.1), 5_000);

    // Promoted: the canary takes everything, and is the only version.
    host.body().end_canary(CELL, true, GRACE).await.unwrap();
    let versions = host.body().versions(CELL);
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].manifest.version, "0.2.0");
    let promoted = versions[0].stats.requests();
    load(host.body().bus().as_ref(), 320).await;
    assert_eq!(
        host.body().versions(CELL)[0].stats.requests(),
        promoted + 320
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_share_holds_across_hosts_on_nats_and_a_dropped_canary_takes_nothing() {
    let server = NatsServer::start();
    let a = TestHost::start(cbs_tests::builder(Arc::new(server.bus().await)), &[greet()]).await;
    let b = TestHost::start(cbs_tests::builder(Arc::new(server.bus().await)), &[greet()]).await;
    let (_na, _nb) = (canary(&a, 2_500).await, canary(&b, 2_500).await);
    let client = server.bus().await;
    load(&client, MESSAGES).await;
    assert_share(handled(&[&a, &b]), 2_500);

    for host in [&a, &b] {
        host.body().end_canary(CELL, false, GRACE).await.unwrap();
        assert_eq!(host.body().versions(CELL).len(), 1, "the canary is gone");
        assert_eq!(host.body().versions(CELL)[0].manifest.version, "0.1.0");
    }
    let before = handled(&[&a, &b]).0;
    load(&client, 320).await;
    assert_eq!(
        handled(&[&a, &b]).0,
        before + 320,
        "the stable version takes all"
    );
}

/// A canary in the desired state is served by every watching host next to
/// the current release, at its share across the lattice; promoted, it
/// takes every message and is the release served, without a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_hosts_serve_a_desired_canary_at_its_share_and_promote_it() {
    use cbs_host::deploy::rollout;
    use cbs_tests::bundles::{releases, UPPER};
    let releases = releases();
    let server = NatsServer::start();
    let url = server.url();
    let watch = ["--watch", "--drain-timeout-ms", "5000"];
    let _a = HostProcess::serve(&url, "canary-a", &[], &watch);
    let _b = HostProcess::serve(&url, "canary-b", &[], &watch);
    let out = cbs(&["deploy", releases.v1.to_str().unwrap(), "--nats", &url]);
    assert!(out.status.success(), "{out:?}");

    let client = server.bus().await;
    let store = cbs_host::deploy::Store::open(client.client())
        .await
        .unwrap();
    let bytes = std::fs::read(&releases.v2).unwrap();
    let bundle = cbs_host::bundle::Bundle::from_bytes(&bytes).unwrap();
    let release = rollout::stage(&store, &bundle, &bytes, Default::default())
        .await
        .unwrap();
    rollout::set_canary(&store, UPPER, release.clone(), 2_500)
        .await
        .unwrap();
    let serving = |release: String| {
        let store = &store;
        async move {
            let statuses = store.statuses().await.map_err(|e| e.to_string())?;
            let n = statuses
                .iter()
                .filter(|s| s.release == release && s.state == cbs_host::deploy::State::Serving)
                .count();
            if n == 2 {
                Ok(())
            } else {
                Err(format!("{statuses:?}"))
            }
        }
    };
    eventually(
        Duration::from_secs(30),
        "both hosts serving the canary",
        || serving(release.id.clone()),
    )
    .await;

    let replies = upper_replies(&client, MESSAGES).await;
    let canary = replies.iter().filter(|r| *r == "HI!").count() as u64;
    assert_share((MESSAGES as u64 - canary, canary), 2_500);

    rollout::end_canary(&store, UPPER, true).await.unwrap();
    eventually(
        Duration::from_secs(30),
        "the canary promoted on both hosts",
        || async {
            let replies = upper_replies(&client, 64).await;
            match replies.iter().all(|r| r == "HI!") {
                true => Ok(()),
                false => Err(format!("{replies:?}")),
            }
        },
    )
    .await;
    let desired = store.desired(UPPER).await.unwrap().unwrap();
    assert_eq!(desired.current.version, "0.2.0");
    assert!(desired.canary.is_none());
}

/// `n` replies of text.upper to "hi", `AT_ONCE` at a time.
async fn upper_replies(bus: &dyn BodyBus, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let now = left.min(AT_ONCE);
        left -= now;
        let calls = (0..now).map(|_| {
            call_json(
                bus,
                "text.upper",
                json!({"text": "hi"}),
                Duration::from_secs(10),
            )
        });
        for reply in futures_util::future::join_all(calls).await {
            let reply = reply.expect("every request is answered");
            out.push(reply["text"].as_str().unwrap_or_default().to_owned());
        }
    }
    out
}
