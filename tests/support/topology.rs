//! Several `nats-server` processes wired together from generated
//! configuration files, on free loopback ports: a cluster (routes), a
//! supercluster (two clusters joined by gateways) and a hub with a leaf
//! node. Each server has its own folder (config, JetStream store) and is
//! stopped when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// One server of a topology.
pub struct Server {
    pub name: String,
    pub port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts `nats-server -c` on `config` (with `{store}` replaced by the
    /// server's JetStream folder) and waits until it is ready.
    fn start(name: &str, port: u16, config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nats.conf");
        let store = dir.path().join("js");
        std::fs::write(
            &file,
            config.replace("{store}", &store.display().to_string()),
        )
        .unwrap();
        let mut child = Command::new("nats-server")
            .arg("-c")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server is not installed: run `make setup` (apt-get install nats-server)");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Server is ready") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(15)).is_err() {
            let _ = child.kill();
            panic!("nats-server {name} did not become ready within 15 s:\n{config}");
        }
        Self {
            name: name.to_owned(),
            port,
            child: Some(child),
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server: its clients see the connection drop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The URLs of `servers`, comma-separated (one connection option).
pub fn urls(servers: &[&Server]) -> String {
    servers
        .iter()
        .map(|s| s.url())
        .collect::<Vec<_>>()
        .join(",")
}

struct Plan {
    name: String,
    port: u16,
    cluster: Option<(String, u16)>,
    gateway: Option<u16>,
}

fn jetstream_block(on: bool) -> &'static str {
    if on {
        "jetstream { store_dir: \"{store}\" }\n"
    } else {
        ""
    }
}

/// `n` servers in one cluster `name`, all routed to each other.
pub fn cluster(name: &str, n: usize, jetstream: bool) -> Vec<Server> {
    let plans = plan_cluster(name, n);
    let routes = routes(&plans);
    plans
        .iter()
        .map(|p| {
            let config = format!(
                "server_name: {}\nlisten: 127.0.0.1:{}\n{}{}",
                p.name,
                p.port,
                jetstream_block(jetstream),
                cluster_block(p, &routes)
            );
            Server::start(&p.name, p.port, &config)
        })
        .collect()
}

fn plan_cluster(name: &str, n: usize) -> Vec<Plan> {
    (0..n)
        .map(|i| Plan {
            name: format!("{name}-{i}"),
            port: free_port(),
            cluster: Some((name.to_owned(), free_port())),
            gateway: None,
        })
        .collect()
}

fn routes(plans: &[Plan]) -> Vec<String> {
    plans
        .iter()
        .filter_map(|p| {
            p.cluster
                .as_ref()
                .map(|(_, port)| format!("nats://127.0.0.1:{port}"))
        })
        .collect()
}

fn cluster_block(plan: &Plan, routes: &[String]) -> String {
    let Some((name, port)) = &plan.cluster else {
        return String::new();
    };
    let others: Vec<String> = routes
        .iter()
        .filter(|r| !r.ends_with(&format!(":{port}")))
        .map(|r| format!("\"{r}\""))
        .collect();
    format!(
        "cluster {{ name: {name}, listen: 127.0.0.1:{port}, routes: [{}] }}\n",
        others.join(", ")
    )
}

/// Two clusters, `east` and `west`, of `per_cluster` servers each, joined
/// by gateways (a supercluster); with `jetstream`, on every server (a
/// clustered JetStream needs routes: two servers per cluster at least).
pub fn supercluster(per_cluster: usize, jetstream: bool) -> (Vec<Server>, Vec<Server>) {
    let mut east = plan_cluster("east", per_cluster);
    let mut west = plan_cluster("west", per_cluster);
    for p in east.iter_mut().chain(west.iter_mut()) {
        p.gateway = Some(free_port());
    }
    let gateway_urls = |plans: &[Plan]| -> String {
        plans
            .iter()
            .map(|p| format!("\"nats://127.0.0.1:{}\"", p.gateway.unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let gateways = format!(
        "gateways: [ {{ name: east, urls: [{}] }}, {{ name: west, urls: [{}] }} ]",
        gateway_urls(&east),
        gateway_urls(&west)
    );
    let start = |plans: &[Plan], cluster: &str| -> Vec<Server> {
        let routes = routes(plans);
        plans
            .iter()
            .map(|p| {
                let config = format!(
                    "server_name: {}\nlisten: 127.0.0.1:{}\n{}{}gateway {{ name: {cluster}, listen: 127.0.0.1:{}, {gateways} }}\n",
                    p.name,
                    p.port,
                    jetstream_block(jetstream),
                    cluster_block(p, &routes),
                    p.gateway.unwrap_or_default(),
                );
                Server::start(&p.name, p.port, &config)
            })
            .collect()
    };
    (start(&east, "east"), start(&west, "west"))
}

/// A hub server and a leaf node connected to it; JetStream on the hub.
pub fn hub_and_leaf() -> (Server, Server) {
    let (hub_port, leaf_listen) = (free_port(), free_port());
    let hub = Server::start(
        "hub",
        hub_port,
        &format!(
            "server_name: hub\nlisten: 127.0.0.1:{hub_port}\n{}leafnodes {{ listen: 127.0.0.1:{leaf_listen} }}\n",
            jetstream_block(true)
        ),
    );
    let leaf_port = free_port();
    let leaf = Server::start(
        "leaf",
        leaf_port,
        &format!(
            "server_name: leaf\nlisten: 127.0.0.1:{leaf_port}\nleafnodes {{ remotes: [ {{ url: \"nats://127.0.0.1:{leaf_listen}\" }} ] }}\n"
        ),
    );
    (hub, leaf)
}
