//! Two majors of one cell served side by side on real hosts over a real
//! nats-server (docs/adr/0031-majors-side-by-side.md): a caller's declared
//! range reaches its major, in process and over the bus, under load, and
//! never gets the other major's reply shape; the receiver refuses a
//! request outside its version; the last major a caller needs is only
//! undeployed with --force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cbs_host::bundle::Bundle;
use cbs_host::bus::BodyBus;
use cbs_host::envelope::{Envelope, ErrorCode};
use cbs_tests::bundles::{build_bundle, faulty_bundle, releases, renamed, UPPER};
use cbs_tests::nats::NatsServer;
use cbs_tests::process::{cbs, HostProcess};
use serde_json::{json, Value};

fn run(url: &str, args: &[&str]) -> (bool, String) {
    let out = cbs(&[args, &["--nats", url]].concat());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `bundle` as `version`: its files unchanged but for cell.toml's version.
fn as_version(bundle: &Path, version: &str, dir: &Path) -> PathBuf {
    let read = Bundle::read(bundle).unwrap();
    let folder = dir.join(format!("upper-{version}"));
    for (path, bytes) in read.files() {
        let file = folder.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, bytes).unwrap();
    }
    let toml = folder.join("cell.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    let text = text.replace(
        &format!("version = \"{}\"", read.manifest.version),
        &format!("version = \"{version}\""),
    );
    std::fs::write(&toml, text).unwrap();
    build_bundle(&folder, &dir.join(format!("upper-{version}.cbs")))
}

/// What `caller` got from text.upper for "hi".
async fn through(bus: &dyn BodyBus, caller: &str) -> Result<Value, String> {
    let payload = json!({"action": "call", "cell": UPPER, "payload": {"text": "hi"}});
    cbs_tests::call_json(bus, caller, payload, Duration::from_secs(10))
        .await
        .map(|v| v["value"].clone())
        .map_err(|e| format!("{}: {}", e.code, e.message))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_caller_reaches_the_major_its_range_names_and_never_the_others_shape() {
    let tmp = tempfile::tempdir().unwrap();
    // 1.0.0 answers {text: "HI", length}; 2.0.0 {text: "HI!", size}.
    let one = as_version(&releases().v1, "1.0.0", tmp.path());
    let two = as_version(renamed(), "2.0.0", tmp.path());
    let caller = |id: &str, range: &str| {
        let dir = tmp.path().join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let tables = format!("[capabilities]\ncalls = [\"{UPPER}@{range}\"]\n");
        faulty_bundle(&dir, id, "1.0.0", &tables)
    };
    let (old, new) = (caller("app.old", "^1"), caller("app.new", "^2"));
    let server = NatsServer::start();
    let url = server.url();
    // One host calls in process, the other over the bus.
    let _a = HostProcess::serve(&url, "host-a", &[], &["--watch"]);
    let _b = HostProcess::serve(&url, "host-b", &[], &["--watch", "--calls-via-bus"]);
    for bundle in [&one, &old] {
        let (ok, said) = run(
            &url,
            &["deploy", bundle.to_str().unwrap(), "--wait-ms", "30000"],
        );
        assert!(ok, "{said}");
    }
    // A new major while app.old needs ^1: 1.0.0 is kept beside it.
    let (ok, said) = run(
        &url,
        &["deploy", two.to_str().unwrap(), "--wait-ms", "30000"],
    );
    assert!(ok, "{said}");
    assert!(said.contains("1.0.0 keeps serving beside 2.0.0"), "{said}");
    let (ok, said) = run(
        &url,
        &["deploy", new.to_str().unwrap(), "--wait-ms", "30000"],
    );
    assert!(ok, "{said}");
    let (ok, listed) = run(&url, &["ls"]);
    assert!(ok && listed.contains("beside it: 1.0.0"), "{listed}");
    let (ok, tree) = run(&url, &["deps", "app.old"]);
    assert!(
        ok && tree.contains(&format!("{UPPER} 1.0.0 (wants ^1)")),
        "{tree}"
    );

    let bus: Arc<dyn BodyBus> = Arc::new(server.bus().await);
    // The kept major starts on its hosts as they see the desired state.
    cbs_tests::eventually(Duration::from_secs(20), "app.old reaches 1.0.0", || {
        let bus = bus.clone();
        async move { through(bus.as_ref(), "app.old").await.map(|_| ()) }
    })
    .await;
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let bus = bus.clone();
        let caller = if worker % 2 == 0 {
            "app.old"
        } else {
            "app.new"
        };
        tasks.push(tokio::spawn(async move {
            let mut replies = Vec::new();
            for _ in 0..50 {
                replies.push(through(bus.as_ref(), caller).await);
            }
            (caller, replies)
        }));
    }
    let (mut seen_old, mut seen_new) = (0, 0);
    for task in tasks {
        let (caller, replies) = task.await.unwrap();
        for reply in replies {
            let value = reply.unwrap_or_else(|e| panic!("{caller}: {e}"));
            match caller {
                "app.old" => {
                    assert_eq!(
                        value,
                        json!({"text": "HI", "length": 2}),
                        "app.old got {value}"
                    );
                    seen_old += 1;
                }
                _ => {
                    assert_eq!(
                        value,
                        json!({"text": "HI!", "size": 2}),
                        "app.new got {value}"
                    );
                    seen_new += 1;
                }
            }
        }
    }
    assert_eq!((seen_old, seen_new), (400, 400));

    // The receiver checks the range a request carries, whatever subject it
    // came on: the current major refuses a ^1 request.
    let mut envelope = Envelope::new(
        cbs_host::subjects::subject_of(UPPER),
        serde_json::value::RawValue::from_string(r#"{"text":"hi"}"#.into()).unwrap(),
    );
    envelope.schema = Some(format!("{UPPER}@^1"));
    let reply = cbs_host::call::request(bus.as_ref(), &envelope, Duration::from_secs(5))
        .await
        .unwrap();
    let error = reply.error.expect("a ^1 request to 2.0.0 is refused");
    assert_eq!(
        error.code,
        ErrorCode::ContractViolation,
        "{}",
        error.message
    );

    // The last major app.old can use is not undeployed without --force...
    let (ok, said) = run(&url, &["undeploy", UPPER, "--major", "1"]);
    assert!(!ok && said.contains("app.old"), "{said}");
    let (ok, said) = run(&url, &["undeploy", UPPER, "--major", "1", "--force"]);
    assert!(ok, "{said}");
    // ...and once it is gone, app.old gets errors, never 2.0.0's shape.
    cbs_tests::eventually(Duration::from_secs(20), "major 1 stops", || {
        let bus = bus.clone();
        async move {
            match through(bus.as_ref(), "app.old").await {
                Err(e) => Ok(e),
                Ok(v) => Err(format!("app.old still got {v}")),
            }
        }
    })
    .await;
    for _ in 0..20 {
        assert!(through(bus.as_ref(), "app.old").await.is_err());
    }
    assert_eq!(
        through(bus.as_ref(), "app.new").await.unwrap(),
        json!({"text": "HI!", "size": 2})
    );
}
