//! The lattice policy against real hosts over a real nats-server: refused
//! by `cbs deploy` and again by a host handed the release directly (the
//! desired state written past the deployer), passed only by a second
//! signature, ignored by hosts when a key they do not trust signed it,
//! and every refusal in the audit trail.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cbs_host::audit::{Action, Audit, Filter};
use cbs_host::bundle::Bundle;
use cbs_host::deploy::rollout::{self, Scale};
use cbs_host::deploy::{Desired, State, Store};
use cbs_tests::bundles::{assert_ok, cbs_in, edit, prebuilt_greet};
use cbs_tests::eventually;
use cbs_tests::nats::NatsServer;
use cbs_tests::process::{cbs, cbs_said as run, HostProcess};
use cbs_tests::process_bundles::{bundled_sidecar, copy_dir};

const GREET: &str = "logic.greet";

/// Keys and bundles of one test, in a temp folder.
struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Self {
        let lab = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        for key in ["platform", "author", "second", "stranger"] {
            assert_ok("cbs keygen", &cbs(&["keygen", &lab.path(key)]));
        }
        lab
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }

    /// `cbs build` of the cell folder `cell`, signed by `key` if given,
    /// for hosts that grant up to 4 GiB.
    fn build(&self, cell: &Path, name: &str, key: Option<&str>) -> PathBuf {
        let out = self.dir.path().join(format!("{name}.cbs"));
        let mut args = vec![
            "build",
            cell.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--max-memory-mb",
            "4096",
        ];
        let key = key.map(|k| self.path(k));
        if let Some(key) = &key {
            args.extend(["--sign", key]);
        }
        assert_ok("cbs build", &cbs_in(cell, &args));
        out
    }

    fn greet(&self, key: Option<&str>) -> PathBuf {
        let cell = self.dir.path().join("greet");
        if !cell.exists() {
            prebuilt_greet(&cell);
        }
        self.build(&cell, &format!("greet-{}", key.unwrap_or("unsigned")), key)
    }

    /// The test component with its contract, as cell `id`, `edits` applied
    /// to its cell.toml (or its schemas removed with `no_contract`).
    fn faulty(&self, id: &str, edits: &[(&str, &str)], no_contract: bool) -> PathBuf {
        self.faulty_signed(id, edits, no_contract, Some("author"))
    }

    fn faulty_signed(
        &self,
        id: &str,
        edits: &[(&str, &str)],
        no_contract: bool,
        key: Option<&str>,
    ) -> PathBuf {
        let cell = self.dir.path().join(id);
        copy_dir(&cbs_tests::faulty().join("schemas"), &cell.join("schemas"));
        std::fs::copy(
            cbs_tests::faulty().join("test_faulty.wasm"),
            cell.join("test_faulty.wasm"),
        )
        .unwrap();
        let toml = std::fs::read_to_string(cbs_tests::faulty().join("cell.toml")).unwrap();
        let mut toml = toml.replace("id = \"test.faulty\"", &format!("id = \"{id}\""));
        if no_contract {
            let start = toml.find("[input]").unwrap();
            let end = toml.find("[capabilities]").unwrap();
            toml.replace_range(start..end, "");
        }
        std::fs::write(cell.join("cell.toml"), toml).unwrap();
        for (from, to) in edits {
            edit(&cell.join("cell.toml"), from, to);
        }
        self.build(&cell, id, key)
    }

    fn policy(&self, name: &str, text: &str) -> String {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `cbs policy set` of `text` (as file `name`), signed by `key`.
    fn set_policy(&self, url: &str, name: &str, text: &str, key: &str) -> (bool, String) {
        let file = self.policy(name, text);
        let key = self.path(key);
        run(&["policy", "set", &file, "--key", &key, "--nats", url])
    }

    fn key_hex(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.pub")))
            .unwrap()
            .trim()
            .to_owned()
    }
}

/// `cbs deploy BUNDLE` with `extra` to the lattice at `url`.
fn deploy(url: &str, bundle: &Path, extra: &[&str]) -> (bool, String) {
    let bundle = bundle.to_str().unwrap();
    run(&[&["deploy", bundle, "--nats", url][..], extra].concat())
}

/// A nats-server, its URL, the keys, and a watching host that enforces
/// policies signed by the platform key.
fn policed(host_id: &str) -> (NatsServer, String, Lab, HostProcess) {
    let server = NatsServer::start();
    let url = server.url();
    let lab = Lab::new();
    let platform_pub = lab.path("platform.pub");
    let host = HostProcess::serve(
        &url,
        host_id,
        &[],
        &["--watch", "--policy-key", &platform_pub],
    );
    (server, url, lab, host)
}

/// The rules of the tests' policy, version `version`.
fn rules(lab: &Lab, version: u32) -> String {
    format!(
        "version = {version}\nruntimes = [\"wasm\"]\n\n[[signers]]\ncells = \"\"\nkeys = [\"{}\"]\n\n[limits]\nmemory_mb = 256\n\n[force]\nsigners = [\"{}\"]\n",
        lab.key_hex("author"),
        lab.key_hex("second")
    )
}

/// Writes `bundle` as its cell's desired release straight into the
/// lattice (what a deployer with bucket rights could do past `cbs
/// deploy`), and returns the host's report on it.
async fn hand_to_host(
    server: &NatsServer,
    bundle: &Path,
    waiver: Option<cbs_host::policy::Waiver>,
) -> (State, String) {
    let bus = server.bus().await;
    let store = Store::open(bus.client()).await.unwrap();
    let bytes = std::fs::read(bundle).unwrap();
    let parsed = Bundle::from_bytes(&bytes).unwrap();
    let cell = parsed.manifest.cell.clone();
    let mut release = rollout::stage(&store, &parsed, &bytes, Scale::default())
        .await
        .unwrap();
    release.waiver = waiver;
    let id = release.id.clone();
    let previous = store.desired(&cell).await.unwrap();
    store
        .set_desired(&Desired::advance(previous, &cell, release))
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "the host's report", || async {
        let statuses = store.statuses().await.map_err(|e| e.to_string())?;
        statuses
            .into_iter()
            .find(|s| s.release == id)
            .map(|s| (s.state, s.error.unwrap_or_default()))
            .ok_or_else(|| "no report yet".to_owned())
    })
    .await
}

async fn refusals(server: &NatsServer, cell: &str) -> Vec<String> {
    let bus = server.bus().await;
    let audit = Audit::open(bus.client()).await.unwrap();
    let filter = Filter {
        action: Some(Action::Refuse),
        cell: Some(cell.to_owned()),
    };
    let events = audit.list(&filter).await.unwrap();
    events
        .into_iter()
        .map(|e| e.event.detail.unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_refuses_at_deploy_and_again_at_a_host_handed_the_release() {
    let server = NatsServer::start();
    let url = server.url();
    let lab = Lab::new();
    let platform_pub = lab.path("platform.pub");
    let _host = HostProcess::serve(
        &url,
        "host-gov",
        &[],
        &[
            "--watch",
            "--policy-key",
            &platform_pub,
            "--allow-process-bundles",
            "--max-memory-mb",
            "4096",
        ],
    );
    let (ok, out) = lab.set_policy(&url, "policy.toml", &rules(&lab, 1), "platform");
    assert!(ok, "{out}");
    assert!(out.contains("1 of 1 live host(s) hold it"), "{out}");

    let compliant = lab.greet(Some("author"));
    let (ok, out) = run(&[
        "policy",
        "test",
        compliant.to_str().unwrap(),
        "--nats",
        &url,
    ]);
    assert!(ok && out.contains("a deploy would pass"), "{out}");
    let (ok, out) = deploy(&url, &compliant, &[]);
    assert!(ok, "a compliant release deploys: {out}");

    let sidecar = lab.build(
        &bundled_sidecar(lab.dir.path(), 1, None),
        "sidecar",
        Some("author"),
    );
    let refused = [
        // (Not an unsigned copy of the greet deployed above: a host
        // already serving a bundle's digest does not load it again.)
        (
            lab.faulty_signed("gov.unsigned", &[], false, None),
            "signers",
        ),
        (lab.faulty("gov.no_contract", &[], true), "contracts"),
        (
            lab.faulty(
                "gov.greedy",
                &[("memory_mb = 32", "memory_mb = 2048")],
                false,
            ),
            "limits.memory_mb: the cell asks 2048 MiB, the policy allows at most 256",
        ),
        (sidecar, "runtimes: runtime sidecar; allowed: wasm"),
    ];
    for (bundle, rule) in &refused {
        let name = bundle.file_name().unwrap().to_string_lossy().into_owned();
        let (ok, out) = run(&["policy", "test", bundle.to_str().unwrap(), "--nats", &url]);
        assert!(!ok && out.contains(rule), "policy test of {name}: {out}");
        let (ok, out) = deploy(&url, bundle, &[]);
        assert!(!ok, "{name} deployed: {out}");
        assert!(
            out.contains("refused by the lattice policy v1") && out.contains(rule),
            "{name}: {out}"
        );

        let (state, error) = hand_to_host(&server, bundle, None).await;
        assert_eq!(state, State::Failed, "{name}: the host served it");
        assert!(
            error.contains("refused by the lattice policy v1") && error.contains(rule),
            "{name}: {error}"
        );
        let cell = Bundle::from_bytes(&std::fs::read(bundle).unwrap())
            .unwrap()
            .manifest
            .cell;
        let audited = refusals(&server, &cell).await;
        assert!(
            audited.iter().any(|d| d.starts_with("cbs deploy:")),
            "{name}: {audited:?}"
        );
        assert!(
            audited
                .iter()
                .any(|d| d.starts_with("host host-gov:") && d.contains(rule)),
            "{name}: {audited:?}"
        );
    }
    // Whatever was refused, the compliant cell kept serving.
    let bus = server.bus().await;
    let reply = cbs_tests::call_json(
        &bus,
        GREET,
        serde_json::json!({"name": "Ada"}),
        Duration::from_secs(5),
    )
    .await;
    assert!(reply.is_ok(), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_passes_the_policy_only_with_a_second_trusted_signature() {
    let (server, url, lab, _host) = policed("host-force");
    assert!(
        lab.set_policy(&url, "policy.toml", &rules(&lab, 1), "platform")
            .0
    );
    let unsigned = lab.greet(None);
    let unsigned = unsigned.to_str().unwrap();

    let (ok, out) = run(&["deploy", unsigned, "--force", "--nats", &url]);
    assert!(
        !ok && out.contains("--force needs a second signature"),
        "{out}"
    );
    let (ok, out) = run(&[
        "deploy",
        unsigned,
        "--force",
        "--force-key",
        &lab.path("stranger"),
        "--nats",
        &url,
    ]);
    assert!(
        !ok && out.contains("the --force signature is refused"),
        "{out}"
    );

    // A waiver from a key the policy does not name: the host refuses too.
    let digest = Bundle::from_bytes(&std::fs::read(unsigned).unwrap())
        .unwrap()
        .digest();
    let stranger = cbs_host::bundle::KeyPair::read(Path::new(&lab.path("stranger"))).unwrap();
    let forged = cbs_host::policy::Waiver::sign(&stranger, GREET, &digest);
    let (state, error) = hand_to_host(&server, Path::new(unsigned), Some(forged)).await;
    assert_eq!(state, State::Failed);
    assert!(
        error.contains("the --force signature is refused"),
        "{error}"
    );

    let (ok, out) = run(&[
        "deploy",
        unsigned,
        "--force",
        "--force-key",
        &lab.path("second"),
        "--nats",
        &url,
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("passes policy v1 only by the --force signature"),
        "{out}"
    );
    let bus = server.bus().await;
    let audit = Audit::open(bus.client()).await.unwrap();
    let forced = audit
        .list(&Filter {
            action: Some(Action::Force),
            cell: Some(GREET.into()),
        })
        .await
        .unwrap();
    let second = lab.key_hex("second");
    assert!(
        forced
            .iter()
            .any(|e| e.event.detail.as_deref().unwrap_or("").contains(&second)),
        "{forced:?}"
    );
    assert!(
        forced.iter().any(|e| e
            .event
            .detail
            .as_deref()
            .unwrap_or("")
            .starts_with("host host-force:")),
        "the host audits what it let pass: {forced:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_signed_by_an_untrusted_key_is_ignored_by_hosts() {
    let (server, url, lab, host) = policed("host-wary");
    assert!(
        lab.set_policy(&url, "v1.toml", "version = 1\n", "platform")
            .0
    );

    // A stranger's policy forbidding every unsigned cell.
    let (ok, out) = lab.set_policy(&url, "v2.toml", &rules(&lab, 2), "stranger");
    assert!(ok, "{out}");
    assert!(
        out.contains("0 of 1 live host(s) hold it") && out.contains("host-wary holds v1"),
        "{out}"
    );
    host.wait_for_log("lattice policy ignored", Duration::from_secs(10));

    let (state, error) = hand_to_host(&server, &lab.greet(None), None).await;
    assert_eq!(
        state,
        State::Serving,
        "the host enforced a policy it does not trust: {error}"
    );
    let (ok, out) = run(&["policy", "show", "--nats", &url]);
    assert!(
        ok && out.contains("policy v2") && out.contains("host-wary  v1"),
        "{out}"
    );
}

/// `cbs compliance --json` with `extra`: success, and each check's id
/// with whether it passed and its findings.
fn compliance(url: &str, extra: &[&str]) -> (bool, Vec<(String, bool, String)>) {
    let out = cbs(&[&["compliance", "--json", "--nats", url][..], extra].concat());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let checks = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_owned(),
                c["passed"].as_bool().unwrap(),
                c["findings"].to_string(),
            )
        })
        .collect();
    assert_eq!(report["passed"].as_bool(), Some(out.status.success()));
    (out.status.success(), checks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compliance_finds_each_seeded_violation() {
    let server = NatsServer::start();
    let url = server.url();
    let lab = Lab::new();
    let bus = server.bus().await;
    // An audit stream someone made editable and short-lived, and a dead
    // letter: both before anything else writes to them.
    let js = async_nats::jetstream::new(bus.client().clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "CBS_AUDIT".into(),
        subjects: vec!["cbs-audit.>".into()],
        max_age: Duration::from_secs(30 * 86_400),
        ..Default::default()
    })
    .await
    .unwrap();
    server.dead_letter("orders").await;

    let (author_pub, platform_pub) = (lab.path("author.pub"), lab.path("platform.pub"));
    let _strict = HostProcess::serve(
        &url,
        "host-strict",
        &[],
        &[
            "--watch",
            "--trust",
            &author_pub,
            "--policy-key",
            &platform_pub,
        ],
    );
    let _lax = HostProcess::serve(&url, "host-lax", &[], &["--watch"]);
    assert!(
        lab.set_policy(&url, "policy.toml", &rules(&lab, 1), "platform")
            .0
    );
    // Unsigned, no contract, no memory limit: the lax host serves it, the
    // strict one refuses it.
    let cell = cbs_tests::bundles::faulty_as(lab.dir.path(), "gov.sloppy", "");
    let sloppy = lab.build(&cell, "sloppy", None);
    hand_to_host(&server, &sloppy, None).await;

    let trusted = ["--trust", &author_pub, "--trust", &platform_pub];
    let html = lab.path("report.html");
    let seeded = [
        &trusted[..],
        &[
            "--stale-days",
            "0",
            "--dead-letter-days",
            "0",
            "--html",
            &html,
        ],
    ]
    .concat();
    let (ok, checks) = eventually(Duration::from_secs(20), "both hosts' reports", || async {
        let (ok, checks) = compliance(&url, &seeded);
        match checks
            .iter()
            .any(|(id, _, f)| id == "releases.current" && f.contains("host-strict"))
        {
            true => Ok((ok, checks)),
            false => Err(format!("{checks:?}")),
        }
    })
    .await;
    assert!(!ok, "{checks:?}");
    let expect = [
        ("policy.signed", true, ""),
        ("hosts.policy", false, "host host-lax enforces no policy"),
        (
            "hosts.trust",
            false,
            "host host-lax runs any deployer's bundle",
        ),
        (
            "hosts.tls",
            false,
            "host host-strict connects to NATS without TLS",
        ),
        ("releases.signed", false, "gov.sloppy 0.1.0 is not signed"),
        (
            "releases.current",
            false,
            "host host-strict serves nothing of gov.sloppy",
        ),
        (
            "releases.age",
            false,
            "gov.sloppy 0.1.0 was deployed 0 days ago",
        ),
        (
            "cells.contracts",
            false,
            "gov.sloppy 0.1.0 has no input or no output schema",
        ),
        (
            "cells.limits",
            false,
            "gov.sloppy 0.1.0 sets no [limits] memory_mb",
        ),
        ("cells.policy", false, "gov.sloppy 0.1.0 breaks policy v1"),
        ("tenants.quota", true, ""),
        ("audit.stream", false, "messages can be deleted or purged"),
        ("dead_letters.age", false, "1 dead letter(s) kept"),
    ];
    assert_eq!(checks.len(), expect.len(), "{checks:?}");
    for ((id, passed, findings), (want_id, want_passed, says)) in checks.iter().zip(expect) {
        assert_eq!((id.as_str(), *passed), (want_id, want_passed), "{findings}");
        assert!(findings.contains(says), "{id}: {findings}");
    }
    assert!(checks
        .iter()
        .any(|(id, _, f)| id == "audit.stream" && f.contains("keeps events 30 days")));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("not compliant") && page.contains("gov.sloppy 0.1.0 is not signed"),
        "{page}"
    );

    // A key the lattice's policy is not signed by.
    let (ok, checks) = compliance(&url, &["--trust", &lab.path("stranger.pub")]);
    assert!(!ok);
    let (_, passed, findings) = &checks[0];
    assert!(
        !passed && findings.contains("not one this host trusts"),
        "{findings}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compliance_is_clean_on_a_compliant_lattice() {
    let pki = cbs_tests::nats_auth::Pki::new();
    let server = NatsServer::with_jetstream_config(&pki.server_tls(false));
    let url = server.url();
    let ca = pki.path("ca.pem");
    let lab = Lab::new();
    let (author_pub, platform_pub) = (lab.path("author.pub"), lab.path("platform.pub"));
    let tls = ["--nats-tls-ca", ca.as_str()];
    let flags = [
        &[
            "--watch",
            "--trust",
            &author_pub,
            "--policy-key",
            &platform_pub,
        ][..],
        &tls,
    ]
    .concat();
    let _hosts: Vec<HostProcess> = ["host-a", "host-b"]
        .into_iter()
        .map(|id| HostProcess::serve(&url, id, &[], &flags))
        .collect();
    let policy = lab.policy("policy.toml", &rules(&lab, 1));
    let platform = lab.path("platform");
    let set = [
        &["policy", "set", &policy, "--key", &platform, "--nats", &url][..],
        &tls,
    ]
    .concat();
    let (ok, out) = run(&set);
    assert!(ok && out.contains("2 of 2 live host(s) hold it"), "{out}");
    let greet = lab.greet(Some("author"));
    let deploy = [
        &["deploy", greet.to_str().unwrap(), "--nats", &url][..],
        &tls,
    ]
    .concat();
    let (ok, out) = run(&deploy);
    assert!(ok, "{out}");
    let trusted = [
        &["--trust", &author_pub, "--trust", &platform_pub][..],
        &tls,
    ]
    .concat();
    let (ok, checks) = compliance(&url, &trusted);
    assert!(ok, "{checks:?}");
    assert_eq!(checks.len(), 13);
}

/// A policy with contracts off (the test component has none) and `tenants`.
fn tenants_policy(version: u32, tenants: &str) -> String {
    format!("version = {version}\ncontracts = false\n{tenants}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_past_its_quota_is_refused_at_deploy_and_by_the_host() {
    let (server, url, lab, _host) = policed("host-quota");
    let shop = "[tenants.shop]\ncells = \"shop.\"\nmax_cells = 1\nmax_memory_mb = 64\n";
    let (ok, out) = lab.set_policy(&url, "policy.toml", &tenants_policy(1, shop), "platform");
    assert!(ok, "{out}");
    let first = lab.faulty_signed("shop.cart", &[], true, None);
    let (ok, out) = deploy(&url, &first, &["--replicas", "1"]);
    assert!(ok, "{out}");
    let second = lab.faulty_signed("shop.pay", &[], true, None);
    let (ok, out) = deploy(&url, &second, &["--replicas", "1"]);
    assert!(
        !ok && out.contains("tenants.shop.max_cells: 2, the quota is 1"),
        "{out}"
    );
    let (state, error) = hand_to_host(&server, &second, None).await;
    assert_eq!(state, State::Failed);
    assert!(
        error.contains("tenants.shop.max_cells: 2, the quota is 1"),
        "{error}"
    );
    let (ok, out) = run(&["quota", "show", "--nats", &url]);
    assert!(ok, "{out}");
    // shop.pay is desired now (written past cbs deploy): the tenant is over.
    let row = out
        .lines()
        .find(|l| l.trim_start().starts_with("shop"))
        .unwrap_or_default();
    assert!(row.contains("2/1") && row.contains("OVER"), "{out}");
    let (_, checks) = compliance(&url, &[]);
    let quota = checks
        .iter()
        .find(|(id, _, _)| id == "tenants.quota")
        .unwrap();
    assert!(
        !quota.1 && quota.2.contains("tenants.shop.max_cells: 2"),
        "{quota:?}"
    );
}

/// The p99 of `n` calls of logic.greet, one at a time.
async fn greet_p99(bus: &dyn cbs_host::bus::BodyBus, n: usize) -> Duration {
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let started = std::time::Instant::now();
        let reply = cbs_tests::call_json(
            bus,
            GREET,
            serde_json::json!({"name": "Ada"}),
            Duration::from_secs(5),
        )
        .await;
        took.push(started.elapsed());
        assert!(reply.is_ok(), "{reply:?}");
    }
    took.sort();
    took[(n * 99).div_ceil(100) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_flooding_past_its_rate_gets_capacity_and_spares_another_tenant() {
    let (server, url, lab, _host) = policed("host-rate");
    let tenants =
        "[tenants.shop]\ncells = \"shop.\"\nrate = 20\n\n[tenants.web]\ncells = \"logic.\"\n";
    assert!(
        lab.set_policy(&url, "policy.toml", &tenants_policy(1, tenants), "platform")
            .0
    );
    let shop = lab.faulty_signed("shop.cart", &[], true, None);
    for bundle in [shop, lab.greet(None)] {
        let (ok, out) = deploy(&url, &bundle, &[]);
        assert!(ok, "{out}");
    }
    let bus = std::sync::Arc::new(server.bus().await);
    greet_p99(bus.as_ref(), 50).await; // warm
                                       // A p99 of 300 calls is their third slowest: on a shared machine one
                                       // round can be unlucky, so up to three rounds, each measured unloaded
                                       // and then loaded; every round is reported.
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let unloaded = greet_p99(bus.as_ref(), 300).await;
        let (loaded, outcomes) = while_shop_floods(&bus, || greet_p99(bus.as_ref(), 300)).await;
        check_refusals(&outcomes);
        rounds.push((unloaded, loaded));
        if loaded <= unloaded * 2 {
            break;
        }
    }
    eprintln!("greet p99 (unloaded, with shop at 10x its rate): {rounds:?}");
    assert!(
        rounds
            .iter()
            .any(|(unloaded, loaded)| *loaded <= *unloaded * 2),
        "greet's p99 more than doubled while shop flooded, in every round: {rounds:?}"
    );
}

type Outcome = Result<serde_json::Value, cbs_host::envelope::BusError>;

/// Runs `measure` while tenant shop is sent 200 requests a second, 10× its
/// rate: what `measure` returned and how each flood request ended.
async fn while_shop_floods<F, Fut>(
    bus: &std::sync::Arc<cbs_host::bus::nats::NatsBus>,
    measure: F,
) -> (Duration, Vec<Outcome>)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Duration>,
{
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (flood_bus, flood_stop, flood_refused) = (bus.clone(), stop.clone(), refused.clone());
    let flood = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        let mut calls = Vec::new();
        while !flood_stop.load(std::sync::atomic::Ordering::Relaxed) {
            tick.tick().await;
            let (bus, refused) = (flood_bus.clone(), flood_refused.clone());
            calls.push(tokio::spawn(async move {
                let payload = serde_json::json!({"action": "echo", "value": 1});
                let outcome = cbs_tests::call_json(
                    bus.as_ref(),
                    "shop.cart",
                    payload,
                    Duration::from_secs(5),
                )
                .await;
                if outcome.is_err() {
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                outcome
            }));
        }
        let mut outcomes = Vec::new();
        for call in calls {
            outcomes.push(call.await.unwrap());
        }
        outcomes
    });
    // Measured once the flood is past the rate: its refusals have begun.
    eventually(
        Duration::from_secs(10),
        "the flood's first refusal",
        || async {
            match refused.load(std::sync::atomic::Ordering::Relaxed) {
                0 => Err("none yet".to_owned()),
                _ => Ok(()),
            }
        },
    )
    .await;
    let measured = measure().await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    (measured, flood.await.unwrap())
}

/// Most of the flood refused, each as `capacity` for shop's rate with a
/// wait to retry after.
fn check_refusals(outcomes: &[Outcome]) {
    let refused: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    let served = outcomes.len() - refused.len();
    let sent = outcomes.len();
    assert!(
        !refused.is_empty() && refused.len() > served,
        "{sent} sent, {served} served"
    );
    for error in &refused {
        assert_eq!(
            error.code,
            cbs_host::envelope::ErrorCode::Capacity,
            "{error}"
        );
        assert!(
            error.message.contains("tenant shop is over its rate of 20"),
            "{error}"
        );
        let wait = error
            .details
            .as_ref()
            .and_then(|d| d["retry_after_ms"].as_u64());
        assert!(
            wait.is_some_and(|ms| (1..=1000).contains(&ms)),
            "{:?}",
            error.details
        );
    }
}
