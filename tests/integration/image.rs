//! The cbs-host image, built by `scripts/build-image` (buildah from
//! scratch, no daemon) from this build's binaries, and run from its own
//! root filesystem: the archive's layers unpacked, the image's entrypoint,
//! environment and user taken from its config, under chroot (these
//! machines cannot run containers: "cgroups in hybrid mode not
//! supported"). It serves a wasm cell and a native Python cell deployed
//! through a real nats-server, as the image's non-root user.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cbs_tests::bundles::greet_bundle;
use cbs_tests::nats::NatsServer;
use cbs_tests::process::cbs;
use cbs_tests::{bin, call_json, repo};
use serde_json::{json, Value};

fn blob(dir: &Path, digest: &str) -> std::path::PathBuf {
    dir.join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn ok(what: &str, out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_images_root_filesystem_serves_cells_as_its_non_root_user() {
    if !is_root() {
        // chroot needs root; the image is still built and checked below
        // on machines where it can run.
        return cbs_tests::skips::skipped("running the image", "chroot needs root");
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("image");
    let bin_dir = bin("cbs-host").parent().unwrap().to_path_buf();
    let built = Command::new(repo().join("scripts/build-image"))
        .current_dir(repo())
        .args(["--bin-dir", bin_dir.to_str().unwrap()])
        .args([
            "--out",
            out.to_str().unwrap(),
            "--tag",
            "localhost/cbs-host:test",
        ])
        .output()
        .unwrap();
    let archive = ok("scripts/build-image", built).trim().to_owned();

    // The image as a registry or runtime sees it: index, manifest, config, layers.
    let oci = tmp.path().join("oci");
    std::fs::create_dir_all(&oci).unwrap();
    ok(
        "unpacking the archive",
        Command::new("tar")
            .args(["-xf", &archive, "-C"])
            .arg(&oci)
            .output()
            .unwrap(),
    );
    let index = read_json(&oci.join("index.json"));
    let manifest = read_json(&blob(
        &oci,
        index["manifests"][0]["digest"].as_str().unwrap(),
    ));
    let config =
        read_json(&blob(&oci, manifest["config"]["digest"].as_str().unwrap()))["config"].clone();
    let user = config["User"].as_str().unwrap().to_owned();
    assert!(
        !user.starts_with("0") && !user.is_empty(),
        "the image runs as root: {user:?}"
    );
    let root = tmp.path().join("rootfs");
    std::fs::create_dir_all(&root).unwrap();
    for layer in manifest["layers"].as_array().unwrap() {
        let file = blob(&oci, layer["digest"].as_str().unwrap());
        ok(
            "unpacking a layer",
            Command::new("tar")
                .arg("-xf")
                .arg(file)
                .arg("-C")
                .arg(&root)
                .output()
                .unwrap(),
        );
    }

    let server = NatsServer::start();
    let url = server.url();
    // As a container runtime would: /dev and /proc of its own (a mount
    // namespace), then the image's user in its root filesystem.
    let mut command = Command::new("/usr/bin/unshare");
    command.env_clear();
    for pair in config["Env"].as_array().unwrap() {
        let (k, v) = pair.as_str().unwrap().split_once('=').unwrap();
        command.env(k, v);
    }
    let mounts = "mount --rbind /dev \"$0/dev\" && mount -t proc proc \"$0/proc\" && \
                  exec /usr/sbin/chroot --userspec=\"$1\" \"$0\" \"${@:2}\"";
    command
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/bash",
            "-c",
            mounts,
        ])
        .arg(&root)
        .arg(&user)
        .args(
            config["Entrypoint"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap()),
        )
        .args([
            "run",
            "--watch",
            "--allow-process-bundles",
            "--host-id",
            "image-host",
        ])
        .args(["--nats", &url, "--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = Killed(command.spawn().expect("chroot runs"));
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = child.0.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log.lock().unwrap().contains("ready;") {
        assert!(
            Instant::now() < deadline && child.0.try_wait().unwrap().is_none(),
            "the image's host did not start: {}",
            log.lock().unwrap()
        );
        tokio::time::sleep(cbs_tests::POLL).await;
    }
    // unshare, bash and chroot exec in turn: this process is the host, as
    // the image's user.
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.0.id())).unwrap();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_owned();
    let wanted = user.split(':').next().unwrap();
    assert!(uid.split_whitespace().skip(1).all(|u| u == wanted), "{uid}");

    let python = tmp.path().join("py.cbs");
    let cell = repo().join("tests/cells/py-async");
    ok(
        "cbs build py-async",
        cbs(&[
            "build",
            cell.to_str().unwrap(),
            "-o",
            python.to_str().unwrap(),
        ]),
    );
    for bundle in [greet_bundle(tmp.path()), python] {
        let args = [
            "deploy",
            bundle.to_str().unwrap(),
            "--nats",
            &url,
            "--wait-ms",
            "60000",
        ];
        let said = ok("cbs deploy", cbs(&args));
        assert!(
            said.contains("serving on 1 host(s)"),
            "{said}\n{}",
            log.lock().unwrap()
        );
    }
    let bus = server.bus().await;
    let wait = Duration::from_secs(10);
    let reply = call_json(&bus, "logic.greet", json!({"name": "Ada"}), wait).await;
    assert_eq!(reply.unwrap()["greeting"], "Hello, Ada!");
    let payload = json!({"action": "greet", "name": "Ada"});
    let reply = call_json(&bus, "test.py_async", payload, wait).await;
    assert_eq!(
        reply.unwrap()["value"],
        "Hello, Ada!",
        "{}",
        log.lock().unwrap()
    );
}

/// A child killed when the test ends, passing or not (a host left running
/// would hold what the test run holds, e.g. its build lock).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
