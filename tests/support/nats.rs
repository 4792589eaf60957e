//! A real `nats-server` per test: random port (read back from its log), a
//! temporary JetStream store, stopped when dropped. No shared server, no
//! fixed port.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cbs_host::bus::nats::{NatsBus, NatsOptions};

pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    cluster_port: Option<u16>,
    args: Vec<String>,
    jetstream: bool,
    store: tempfile::TempDir,
}

impl NatsServer {
    /// A plain server with JetStream.
    pub fn start() -> Self {
        Self::with_args(&[])
    }

    /// A server with extra command-line arguments (auth, cluster, ...).
    pub fn with_args(extra: &[&str]) -> Self {
        let store = tempfile::tempdir().unwrap();
        let mut server = Self {
            child: None,
            port: 0,
            cluster_port: None,
            args: extra.iter().map(|s| s.to_string()).collect(),
            jetstream: true,
            store,
        };
        server.spawn("-1");
        server
    }

    /// A server started from a configuration file with `config` in it
    /// (TLS, nkeys, operator mode, accounts), without JetStream.
    pub fn with_config(config: &str) -> Self {
        Self::configured(config, false)
    }

    /// A server with JetStream started from a configuration file with
    /// `config` in it (e.g. a small `max_payload`).
    pub fn with_jetstream_config(config: &str) -> Self {
        Self::configured(config, true)
    }

    fn configured(config: &str, jetstream: bool) -> Self {
        let store = tempfile::tempdir().unwrap();
        let file = store.path().join("nats.conf");
        std::fs::write(&file, config).unwrap();
        let mut server = Self {
            child: None,
            port: 0,
            cluster_port: None,
            args: vec!["-c".into(), file.display().to_string()],
            jetstream,
            store,
        };
        server.spawn("-1");
        server
    }

    /// A second server routed to `seed`'s cluster port: one cluster of two.
    pub fn clustered() -> (Self, Self) {
        let a = Self::with_args(&["--cluster_name", "cbs", "--cluster", "nats://127.0.0.1:-1"]);
        let route = format!("nats://127.0.0.1:{}", a.cluster_port.expect("cluster port"));
        let b = Self::with_args(&[
            "--cluster_name",
            "cbs",
            "--cluster",
            "nats://127.0.0.1:-1",
            "--routes",
            &route,
        ]);
        (a, b)
    }

    fn clustered_args(&self) -> bool {
        self.args.iter().any(|a| a == "--cluster")
    }

    fn spawn(&mut self, port: &str) {
        let mut command = Command::new("nats-server");
        command.args(["-a", "127.0.0.1", "-p", port]);
        // JetStream in a two-node cluster waits for a quorum it cannot
        // have; the cluster tests do not need it.
        if self.jetstream && !self.clustered_args() {
            command.arg("-js").arg("-sd").arg(self.store.path());
        }
        let mut child = command
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server is not installed: run `make setup` (apt-get install nats-server)");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Read the ports from the log, then keep draining it.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let port = |marker: &str| {
                    line.split(marker)
                        .nth(1)
                        .and_then(|rest| rest.rsplit(':').next()?.trim().parse::<u16>().ok())
                };
                if let Some(p) = port("Listening for client connections on") {
                    let _ = tx.send(("client", p));
                }
                if let Some(p) = port("Listening for route connections on") {
                    let _ = tx.send(("route", p));
                }
                if line.contains("Server is ready") {
                    let _ = tx.send(("ready", 0));
                }
            }
        });
        let mut ready = false;
        while !(ready && (self.cluster_port.is_some() || !self.clustered_args())) {
            match rx.recv_timeout(Duration::from_secs(15)) {
                Ok(("client", p)) => self.port = p,
                Ok(("route", p)) => self.cluster_port = Some(p),
                Ok(_) => ready = true,
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "nats-server did not become ready within 15 s (args {:?})",
                        self.args
                    );
                }
            }
        }
        self.child = Some(child);
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (clients see the connection drop).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it as an operator would (SIGTERM: JetStream writes its store
    /// out) and starts it again on the same port and store. [`restart`]
    /// kills it instead, which may lose what JetStream had not yet written.
    ///
    /// [`restart`]: NatsServer::restart
    pub fn restart_gracefully(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        let port = self.port.to_string();
        self.spawn(&port);
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port.to_string();
        self.spawn(&port);
    }

    /// A bus connected to this server.
    pub async fn bus(&self) -> NatsBus {
        connect(&self.url()).await
    }

    /// A dead letter on `cbs-dlq.<cell>`, in the stream `CBS_DLQ` (made
    /// here with the server's defaults when missing).
    pub async fn dead_letter(&self, cell: &str) {
        let bus = self.bus().await;
        let js = async_nats::jetstream::new(bus.client().clone());
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "CBS_DLQ".into(),
            subjects: vec!["cbs-dlq.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        let ack = js.publish(format!("cbs-dlq.{cell}"), "a letter".into());
        ack.await.unwrap().await.unwrap();
    }
}

/// A bus connected to `urls` (comma-separated: any server of a cluster).
pub async fn connect(urls: &str) -> NatsBus {
    NatsBus::connect(&NatsOptions {
        urls: urls.to_owned(),
        name: "cbs-test".into(),
        ..NatsOptions::default()
    })
    .await
    .expect("connect to the test nats-server")
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
