//! Lattice scale (#33 item 6): small hosts (`cbs-host run --watch`, no
//! cells of their own) on one machine over a 3-server NATS cluster with
//! JetStream, joined 10, then 25, then 50. At each size: the control
//! traffic of the idle lattice (every message on the cluster — heartbeats,
//! load reports, discovery, key-value updates — counted by one `>`
//! subscriber for `TRAFFIC_WINDOW`: messages/s and bytes/s, per host). At
//! 50: `cbs deploy --replicas 50` of `logic.greet` until all 50 report
//! serving, `cbs ps`, and re-convergence of a 40-replica cell after one of
//! its hosts is SIGKILLed.

use std::path::Path;
use std::time::{Duration, Instant};

use cbs_tests::process::HostProcess;
use futures_util::StreamExt;
use serde::Serialize;

/// Lattice sizes measured, in hosts.
pub const SIZES: [usize; 3] = [10, 25, 50];
/// How long the idle traffic is counted at each size.
const TRAFFIC_WINDOW: Duration = Duration::from_secs(10);
/// Replicas of the re-convergence cell: fewer than hosts, so one can move.
const SPREAD: usize = 40;

#[derive(Serialize)]
pub struct Traffic {
    pub hosts: usize,
    pub msgs_per_s: f64,
    pub bytes_per_s: f64,
    pub msgs_per_s_per_host: f64,
    pub bytes_per_s_per_host: f64,
}

#[derive(Serialize)]
pub struct Lattice {
    pub traffic: Vec<Traffic>,
    /// `cbs deploy --replicas 50`: the command, then until all 50 serve.
    pub deploy_command_ms: f64,
    pub deploy_reached_all_ms: f64,
    /// `cbs ps` over 50 hosts, the whole command.
    pub ps_ms: Vec<f64>,
    /// From the SIGKILL until `SPREAD` replicas serve again.
    pub reconverge_ms: f64,
}

/// Waits until the cluster's JetStream takes the lattice's buckets (its
/// meta leader is elected).
async fn jetstream_ready(url: &str) {
    let client = async_nats::connect(url).await.unwrap();
    cbs_tests::eventually(
        Duration::from_secs(60),
        "JetStream in the cluster",
        || async {
            cbs_host::deploy::Store::open(&client)
                .await
                .map(|_| ())
                .map_err(|e| format!("{e:#}"))
        },
    )
    .await;
}

/// Every message on the cluster for `TRAFFIC_WINDOW`.
async fn traffic(url: &str, hosts: usize) -> Traffic {
    let client = async_nats::connect(url).await.unwrap();
    let mut all = client.subscribe(">").await.unwrap();
    client.flush().await.unwrap();
    let (mut msgs, mut bytes) = (0u64, 0u64);
    let until = tokio::time::Instant::now() + TRAFFIC_WINDOW;
    while let Ok(Some(msg)) = tokio::time::timeout_at(until, all.next()).await {
        msgs += 1;
        let headers: usize = msg.headers.as_ref().map_or(0, |h| {
            h.iter()
                .map(|(k, v)| {
                    k.to_string().len() + v.iter().map(|v| v.as_str().len()).sum::<usize>()
                })
                .sum()
        });
        bytes += (msg.subject.len() + msg.payload.len() + headers) as u64;
    }
    let secs = TRAFFIC_WINDOW.as_secs_f64();
    Traffic {
        hosts,
        msgs_per_s: msgs as f64 / secs,
        bytes_per_s: bytes as f64 / secs,
        msgs_per_s_per_host: msgs as f64 / secs / hosts as f64,
        bytes_per_s_per_host: bytes as f64 / secs / hosts as f64,
    }
}

/// Hosts that report serving `cell`, `dead` aside.
async fn serving(store: &cbs_host::deploy::Store, cell: &str, dead: &[String]) -> Vec<String> {
    let statuses = store.statuses().await.unwrap_or_default();
    statuses
        .into_iter()
        .filter(|s| s.cell == cell && s.state == cbs_host::deploy::State::Serving)
        .filter(|s| !dead.contains(&s.host))
        .map(|s| s.host)
        .collect()
}

async fn until_serving(
    store: &cbs_host::deploy::Store,
    cell: &str,
    n: usize,
    dead: &[String],
) -> Vec<String> {
    cbs_tests::eventually(Duration::from_secs(120), "replicas serving", || async {
        let hosts = serving(store, cell, dead).await;
        if hosts.len() >= n {
            Ok(hosts)
        } else {
            Err(format!("{} of {n} serving {cell}", hosts.len()))
        }
    })
    .await
}

fn cbs_ok(args: &[&str]) {
    let out = cbs_tests::process::cbs(args);
    assert!(out.status.success(), "cbs {args:?}: {out:?}");
}

pub async fn lattice(root: &Path) -> Lattice {
    let servers = cbs_tests::topology::cluster("cbs", 3, true);
    let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
    jetstream_ready(&urls[0]).await;
    let mut hosts: Vec<(String, HostProcess)> = Vec::new();
    let mut measured = Vec::new();
    for size in SIZES {
        while hosts.len() < size {
            let id = format!("h{:02}", hosts.len());
            let url = &urls[hosts.len() % urls.len()];
            let args = [
                "--watch",
                "--max-instances",
                "20",
                "--drain-timeout-ms",
                "1000",
            ];
            hosts.push((id.clone(), HostProcess::spawn(url, &id, &[], &args)));
        }
        for (_, host) in &hosts {
            host.wait_for_log("ready;", Duration::from_secs(120));
        }
        eprintln!(" {size} hosts: counting the idle control traffic for {TRAFFIC_WINDOW:?}");
        let t = traffic(&urls[0], size).await;
        eprintln!(
            "  {:.0} msg/s, {:.0} B/s ({:.2} msg/s and {:.0} B/s per host)",
            t.msgs_per_s, t.bytes_per_s, t.msgs_per_s_per_host, t.bytes_per_s_per_host
        );
        measured.push(t);
    }

    let client = async_nats::connect(&urls[0]).await.unwrap();
    let store = cbs_host::deploy::Store::open(&client).await.unwrap();
    let bundle = cbs_tests::bundles::greet_bundle(&root.join("lattice"));
    let bundle = bundle.to_str().unwrap();
    let all = SIZES[SIZES.len() - 1].to_string();
    eprintln!(" cbs deploy --replicas {all}");
    let started = Instant::now();
    cbs_ok(&["deploy", bundle, "--replicas", &all, "--nats", &urls[0]]);
    let deploy_command_ms = started.elapsed().as_secs_f64() * 1e3;
    until_serving(&store, "logic.greet", hosts.len(), &[]).await;
    let deploy_reached_all_ms = started.elapsed().as_secs_f64() * 1e3;

    let ps_ms = (0..3)
        .map(|_| {
            let started = Instant::now();
            cbs_ok(&["ps", "--nats", &urls[1]]);
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();

    eprintln!(" re-convergence: {SPREAD} replicas, one host killed");
    let spread = SPREAD.to_string();
    cbs_ok(&["deploy", bundle, "--replicas", &spread, "--nats", &urls[0]]);
    let placed = cbs_tests::eventually(Duration::from_secs(120), "the spread settled", || async {
        let hosts = serving(&store, "logic.greet", &[]).await;
        if hosts.len() == SPREAD {
            Ok(hosts)
        } else {
            Err(format!("{} serving", hosts.len()))
        }
    })
    .await;
    let victim = placed[0].clone();
    let killed = Instant::now();
    if let Some((_, host)) = hosts.iter_mut().find(|(id, _)| *id == victim) {
        host.kill();
    }
    until_serving(&store, "logic.greet", SPREAD, std::slice::from_ref(&victim)).await;
    let reconverge_ms = killed.elapsed().as_secs_f64() * 1e3;
    drop(hosts);
    drop(servers);
    Lattice {
        traffic: measured,
        deploy_command_ms,
        deploy_reached_all_ms,
        ps_ms,
        reconverge_ms,
    }
}
