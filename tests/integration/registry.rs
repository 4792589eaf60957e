//! Cells in a real OCI registry (Debian's `docker-registry`, the CNCF
//! distribution registry): push and pull of each runtime's bundle, the
//! standard Wasm layout as another tool reads it, tampering, TLS with
//! basic credentials, deploy by reference, search; and a hostile registry
//! (endless and giant replies) served by the test.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use cbs_host::bundle::{Bundle, KeyPair};
use cbs_tests::bundles::greet_bundle;
use cbs_tests::nats::NatsServer;
use cbs_tests::process::{cbs, HostProcess};
use cbs_tests::process_bundles::{bundled_sidecar, cbs_with_env, locked_python_cell, offline_pip};
use cbs_tests::registry::{auth_file, Registry, USER};
use serde_json::{json, Value};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(what: &str, out: Output) -> String {
    assert!(out.status.success(), "{what} failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A signed copy of `bundle` (key `dir/key`, made if missing).
fn signed(dir: &Path, bundle: &Path) -> PathBuf {
    let key = dir.join("key");
    if !key.exists() {
        ok("cbs keygen", cbs(&["keygen", key.to_str().unwrap()]));
    }
    let mut read = Bundle::read(bundle).unwrap();
    read.sign(&KeyPair::read(&key).unwrap());
    let out = dir.join(format!(
        "signed-{}",
        bundle.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&out, read.to_bytes().unwrap()).unwrap();
    out
}

/// `cbs build CELL -o OUT` with pip offline (the fixture wheels): OUT.
fn build(cell: &Path, out: &Path) -> PathBuf {
    let args = ["build", cell.to_str().unwrap(), "-o", out.to_str().unwrap()];
    ok("cbs build", cbs_with_env(cell, &args, offline_pip()));
    out.to_path_buf()
}

/// The manifest at `reference` as skopeo, another OCI client, reads it.
fn skopeo_manifest(reference: &str) -> Value {
    let raw = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .expect("skopeo is not installed: run `make setup` (apt-get install skopeo)");
    serde_json::from_str(&ok("skopeo inspect", raw)).unwrap()
}

fn push(bundle: &Path, reference: &str) -> String {
    let out = cbs(&["push", bundle.to_str().unwrap(), reference, "--insecure"]);
    ok("cbs push", out).trim().to_owned()
}

#[test]
fn each_runtime_round_trips_through_the_registry_byte_for_byte() {
    let registry = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let wasm = signed(tmp.path(), &greet_bundle(tmp.path()));
    let python = signed(
        tmp.path(),
        &build(
            &locked_python_cell(tmp.path(), "0.1.0"),
            &tmp.path().join("py.cbs"),
        ),
    );
    let sidecar = signed(
        tmp.path(),
        &build(
            &bundled_sidecar(tmp.path(), 1, None),
            &tmp.path().join("sidecar.cbs"),
        ),
    );
    for (name, bundle) in [("greet", &wasm), ("py", &python), ("sidecar", &sidecar)] {
        let pushed = push(bundle, &registry.reference(name));
        assert!(pushed.contains("@sha256:"), "{pushed}");
        let back = tmp.path().join(format!("{name}-back.cbs"));
        let key = format!("{}.pub", tmp.path().join("key").display());
        ok(
            "cbs pull",
            cbs(&[
                "pull",
                &registry.reference(name),
                "--insecure",
                "--trust",
                &key,
                "-o",
                back.to_str().unwrap(),
            ]),
        );
        assert!(
            std::fs::read(bundle).unwrap() == std::fs::read(&back).unwrap(),
            "{name}: the pulled bundle differs from the pushed one"
        );
        let (a, b) = (Bundle::read(bundle).unwrap(), Bundle::read(&back).unwrap());
        assert_eq!((a.signer(), a.signature()), (b.signer(), b.signature()));
        assert!(b.signature().is_some());
    }
}

#[test]
fn another_tool_reads_the_wasm_cell_as_a_standard_wasm_artifact() {
    let registry = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = greet_bundle(tmp.path());
    let reference = format!("{}:0.1.0", registry.reference("logic.greet"));
    push(&bundle, &reference);
    let manifest = skopeo_manifest(&reference);
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    assert_eq!(layers[0]["mediaType"], "application/wasm");
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.title"],
        "logic.greet"
    );
    assert_eq!(
        manifest["annotations"]["dev.cbs.contract.input"],
        "logic.greet/request@1"
    );
    // skopeo copies the artifact out: its one layer is the component.
    let out = tmp.path().join("copied");
    ok(
        "skopeo copy",
        std::process::Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .arg(format!("dir:{}", out.display()))
            .output()
            .unwrap(),
    );
    let digest = layers[0]["digest"].as_str().unwrap();
    let component = std::fs::read(out.join(digest.strip_prefix("sha256:").unwrap())).unwrap();
    assert!(
        component == std::fs::read(cbs_tests::greet().join("logic_greet.wasm")).unwrap(),
        "the Wasm layer is not the cell's component"
    );
}

#[test]
fn a_tampered_layer_is_refused_on_pull() {
    let registry = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = greet_bundle(tmp.path());
    let reference = format!("{}:0.1.0", registry.reference("logic.greet"));
    push(&bundle, &reference);
    let manifest = skopeo_manifest(&reference);
    let blob = registry.blob_file(manifest["layers"][0]["digest"].as_str().unwrap());
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let back = tmp.path().join("back.cbs");
    let out = cbs(&[
        "pull",
        &reference,
        "--insecure",
        "-o",
        back.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "a tampered pull succeeded");
    assert!(
        text(&out).contains("tampered with"),
        "the error does not say what is wrong: {}",
        text(&out)
    );
    assert!(!back.exists(), "a refused pull wrote a bundle");
}

#[test]
fn a_registry_over_tls_with_users_takes_credentials_from_a_docker_config() {
    let registry = Registry::with_tls_and_users();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = greet_bundle(tmp.path());
    let reference = registry.reference("logic.greet");
    let ca = registry.ca_file();
    let push_with = |auth: &Path| {
        let env = [
            ("SSL_CERT_FILE", Some(ca.as_str())),
            ("REGISTRY_AUTH_FILE", Some(auth.to_str().unwrap())),
        ];
        cbs_with_env(
            tmp.path(),
            &["push", bundle.to_str().unwrap(), &reference],
            &env,
        )
    };
    // No credentials for it: refused, and told how to log in.
    let stranger = auth_file(&tmp.path().join("x").tap_dir(), "elsewhere:1", USER);
    let out = push_with(&stranger);
    assert!(!out.status.success(), "an anonymous push succeeded");
    assert!(text(&out).contains("docker login"), "{}", text(&out));
    // A wrong password: refused.
    let wrong = auth_file(
        &tmp.path().join("w").tap_dir(),
        &registry.host(),
        (USER.0, "nope"),
    );
    assert!(
        !push_with(&wrong).status.success(),
        "a wrong password pushed"
    );
    // The user's credentials over TLS: pushed, and pulled back the same.
    let auth = auth_file(tmp.path(), &registry.host(), USER);
    ok("cbs push with credentials", push_with(&auth));
    let back = tmp.path().join("back.cbs");
    let env = [
        ("SSL_CERT_FILE", Some(ca.as_str())),
        ("REGISTRY_AUTH_FILE", Some(auth.to_str().unwrap())),
    ];
    ok(
        "cbs pull with credentials",
        cbs_with_env(
            tmp.path(),
            &["pull", &reference, "-o", back.to_str().unwrap()],
            &env,
        ),
    );
    assert!(std::fs::read(&bundle).unwrap() == std::fs::read(&back).unwrap());
}

trait TapDir {
    fn tap_dir(self) -> PathBuf;
}

impl TapDir for PathBuf {
    /// The folder, made.
    fn tap_dir(self) -> PathBuf {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_by_reference_serves_on_two_hosts_that_never_contact_the_registry() {
    let mut registry = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = signed(tmp.path(), &greet_bundle(tmp.path()));
    let reference = registry.reference("logic.greet");
    push(&bundle, &reference);
    let before = registry.log().lines().count();
    let server = NatsServer::start();
    let url = server.url();
    let key = format!("{}.pub", tmp.path().join("key").display());
    let watch = ["--watch", "--trust", key.as_str()];
    let a = HostProcess::serve(&url, "host-a", &[], &watch);
    let b = HostProcess::serve(&url, "host-b", &[], &watch);
    let out = cbs(&[
        "deploy",
        &reference,
        "--insecure",
        "--trust",
        &key,
        "--nats",
        &url,
        "--wait-ms",
        "30000",
    ]);
    let said = ok("cbs deploy REF", out);
    assert!(said.contains("serving on 2 host(s)"), "{said}");
    // What the registry served since the push: one pull by the command
    // line — the manifest, its referrers, and each layer once.
    let log = registry.log();
    let requests: Vec<Value> = log
        .lines()
        .skip(before)
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["http.request.uri"].is_string() && v["http.response.status"].is_number())
        .collect();
    let blob_gets = requests
        .iter()
        .filter(|r| {
            r["http.request.method"] == "GET"
                && r["http.request.uri"].as_str().unwrap().contains("/blobs/")
        })
        .count();
    let pulled = Bundle::read(&bundle).unwrap();
    // cell.toml, two schemas, MANIFEST.json, SIGNATURE.json, the component.
    assert_eq!(blob_gets, pulled.files().len() + 2, "{requests:#?}");
    // The registry stops: the hosts keep serving, and a host that joins
    // now gets the cell from the lattice alone.
    registry.stop();
    let bus = server.bus().await;
    let c = HostProcess::serve(&url, "host-c", &[], &watch);
    c.wait_for_log("deployed: serving", Duration::from_secs(30));
    drop((a, b));
    let reply = cbs_tests::call_json(
        &bus,
        "logic.greet",
        json!({"name": "Ada"}),
        Duration::from_secs(10),
    )
    .await
    .expect("host-c serves logic.greet without the registry");
    assert_eq!(reply["greeting"], "Hello, Ada!");
}

#[test]
fn search_finds_a_pushed_cell_by_name_and_by_contract_id() {
    let registry = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    push(
        &greet_bundle(tmp.path()),
        &registry.reference("logic.greet"),
    );
    let python = build(
        &locked_python_cell(tmp.path(), "0.2.0"),
        &tmp.path().join("py.cbs"),
    );
    push(&python, &registry.reference("test.py_locked"));
    let search = |term: &str| -> Vec<String> {
        let out = cbs(&[
            "search",
            term,
            "--registry",
            &registry.host(),
            "--insecure",
            "--json",
        ]);
        let found: Value = serde_json::from_str(&ok("cbs search", out)).unwrap();
        found
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                l["annotations"]["dev.cbs.cell"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(search("greet"), ["logic.greet"]);
    let contract = Bundle::read(&python)
        .unwrap()
        .cell_manifest()
        .unwrap()
        .input
        .unwrap()
        .id;
    assert_eq!(search(&contract), ["test.py_locked"]);
    assert_eq!(search("logic.greet/reply@1"), ["logic.greet"]);
    assert!(search("no-such-cell").is_empty());
    // `cbs show` summarizes the contract from the pushed schemas.
    let shown = ok(
        "cbs show",
        cbs(&["show", &registry.reference("logic.greet"), "--insecure"]),
    );
    assert!(
        shown.contains("logic.greet/request@1  {name: string}"),
        "{shown}"
    );
    assert!(shown.contains("versions  0.1.0"), "{shown}");
}

/// A registry that lies: endless and giant replies, an endless layer, and
/// a private repository behind a bearer-token realm.
mod hostile {
    use axum::body::Body;
    use axum::extract::State;
    use axum::http::{header, HeaderMap, StatusCode, Uri};
    use axum::response::Response;
    use axum::routing::get;
    use axum::Router;

    pub const TOKEN: &str = "tok-123";

    /// Serves until the test ends; its `HOST:PORT`.
    pub async fn start() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let app = Router::new()
            .route("/v2/", get(|| async { "{}" }))
            .route("/v2/{*rest}", get(route))
            .route("/token", get(token))
            .with_state(host.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        host
    }

    fn endless() -> Body {
        let chunk = bytes::Bytes::from(vec![b'{'; 64 << 10]);
        Body::from_stream(futures_util::stream::unfold((), move |()| {
            let chunk = chunk.clone();
            async move { Some((Ok::<_, std::io::Error>(chunk), ())) }
        }))
    }

    fn reply(status: StatusCode, headers: &[(header::HeaderName, String)], body: Body) -> Response {
        let mut r = Response::builder().status(status);
        for (k, v) in headers {
            r = r.header(k, v);
        }
        r.body(body).unwrap()
    }

    const LAYER: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    async fn route(State(host): State<String>, uri: Uri, headers: HeaderMap) -> Response {
        let manifest = (
            header::CONTENT_TYPE,
            "application/vnd.oci.image.manifest.v1+json".to_owned(),
        );
        match uri.path() {
            "/v2/endless/manifests/1.0.0" => reply(StatusCode::OK, &[manifest], endless()),
            "/v2/giant/manifests/1.0.0" => reply(
                StatusCode::OK,
                &[
                    manifest,
                    (header::CONTENT_LENGTH, (10u64 << 30).to_string()),
                ],
                endless(),
            ),
            "/v2/blobby/manifests/1.0.0" => {
                let doc = serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "artifactType": "application/vnd.cbs.bundle.v1",
                    "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                        "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},
                    "layers": [{"mediaType": "application/vnd.cbs.bundle.manifest.v1+json",
                        "digest": LAYER, "size": 100,
                        "annotations": {"org.opencontainers.image.title": "MANIFEST.json"}}]
                });
                reply(StatusCode::OK, &[manifest], Body::from(doc.to_string()))
            }
            p if p == format!("/v2/blobby/blobs/{LAYER}") => reply(StatusCode::OK, &[], endless()),
            "/v2/private/manifests/1.0.0" => {
                let bearer = format!("Bearer {TOKEN}");
                if headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    == Some(bearer.as_str())
                {
                    let body =
                        r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
                    return reply(StatusCode::NOT_FOUND, &[], Body::from(body));
                }
                let challenge = format!(
                    "Bearer realm=\"http://{host}/token\",service=\"hostile\",scope=\"repository:private:pull\""
                );
                reply(
                    StatusCode::UNAUTHORIZED,
                    &[(header::WWW_AUTHENTICATE, challenge)],
                    Body::empty(),
                )
            }
            _ => reply(StatusCode::NOT_FOUND, &[], Body::empty()),
        }
    }

    async fn token(uri: Uri, headers: HeaderMap) -> Response {
        let basic = format!(
            "Basic {}",
            data_encoding::BASE64.encode(format!("{}:{}", super::USER.0, super::USER.1).as_bytes())
        );
        let authorized = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            == Some(basic.as_str());
        // As reqwest encodes them.
        let query = uri.query().unwrap_or_default();
        let asked = query.split('&').any(|p| p == "service=hostile")
            && query
                .split('&')
                .any(|p| p == "scope=repository%3Aprivate%3Apull");
        if !(authorized && asked) {
            return reply(StatusCode::UNAUTHORIZED, &[], Body::empty());
        }
        reply(
            StatusCode::OK,
            &[],
            Body::from(format!("{{\"token\":\"{TOKEN}\"}}")),
        )
    }
}

/// `cbs ARGS` with `env`, failing the test if it runs past a minute.
async fn cbs_within_a_minute(args: Vec<String>, env: Vec<(String, String)>) -> Output {
    let dir = std::env::temp_dir();
    let run = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, Option<&str>)> = env
            .iter()
            .map(|(k, v)| (k.as_str(), Some(v.as_str())))
            .collect();
        cbs_with_env(&dir, &args, &env)
    });
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("cbs did not end: it kept reading an endless reply")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_and_giant_replies_get_a_clear_error_not_an_allocation() {
    let host = hostile::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let out_file = tmp.path().join("out.cbs").display().to_string();
    for (repo, expected) in [
        ("endless", "sent more than the 4194304 bytes expected"),
        (
            "giant",
            "announces 10737418240 bytes, more than the 4194304 expected",
        ),
        ("blobby", "sent more than the 100 bytes expected"),
    ] {
        let args = [
            "pull",
            &format!("{host}/{repo}:1.0.0"),
            "--insecure",
            "-o",
            &out_file,
        ];
        let out = cbs_within_a_minute(args.map(str::to_owned).to_vec(), vec![]).await;
        assert!(!out.status.success(), "{repo}: pulled");
        assert!(text(&out).contains(expected), "{repo}: {}", text(&out));
    }
    assert!(!Path::new(&out_file).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_challenge_is_answered_with_a_token_from_its_realm() {
    let host = hostile::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let args = || {
        vec![
            "pull".to_owned(),
            format!("{host}/private:1.0.0"),
            "--insecure".to_owned(),
        ]
    };
    // Without credentials the realm refuses: the command says to log in.
    let none = auth_file(tmp.path(), "elsewhere:1", USER);
    let env = |f: &Path| vec![("REGISTRY_AUTH_FILE".to_owned(), f.display().to_string())];
    let out = cbs_within_a_minute(args(), env(&none)).await;
    assert!(
        text(&out).contains(&format!("a token from http://{host}/token")),
        "{}",
        text(&out)
    );
    // With them, the token opens the repository (which then has no such tag).
    let dir = tmp.path().join("with").tap_dir();
    let auth = auth_file(&dir, &host, USER);
    let out = cbs_within_a_minute(args(), env(&auth)).await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("is not in the registry"),
        "{}",
        text(&out)
    );
}

/// `cbs ARGS --nats URL`: success, stdout and stderr.
fn cbs_on(url: &str, args: &[&str]) -> (bool, String) {
    let out = cbs(&[args, &["--nats", url]].concat());
    (out.status.success(), text(&out))
}

#[test]
fn a_range_the_lattice_cannot_satisfy_refuses_the_deploy_and_with_deps_satisfies_it() {
    let registry = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = |dir: &str, id: &str, version: &str, tables: &str| {
        let dir = tmp.path().join(dir).tap_dir();
        cbs_tests::bundles::faulty_bundle(&dir, id, version, tables)
    };
    for version in ["1.2.0", "1.1.0", "2.0.0"] {
        let b = bundle(&format!("callee-{version}"), "dep.callee", version, "");
        push(&b, &registry.reference("dep.callee"));
    }
    let front = bundle(
        "front",
        "app.front",
        "1.0.0",
        "[capabilities]\ncalls = [\"dep.callee@^1\"]\n",
    );
    push(&front, &registry.reference("app.front"));
    let server = NatsServer::start();
    let url = server.url();
    let _host = HostProcess::serve(&url, "host-a", &[], &["--watch"]);
    let front_ref = registry.reference("app.front");
    let deploy = |extra: &[&str]| {
        cbs_on(
            &url,
            &[
                &[
                    "deploy",
                    front_ref.as_str(),
                    "--insecure",
                    "--wait-ms",
                    "30000",
                ],
                extra,
            ]
            .concat(),
        )
    };
    let (ok, said) = deploy(&[]);
    assert!(!ok, "deployed without its dependency: {said}");
    assert!(
        said.contains("dep.callee@^1 (not deployed)") && said.contains("--with-deps"),
        "{said}"
    );
    let (ok, said) = deploy(&["--with-deps"]);
    assert!(ok, "--with-deps: {said}");
    // The highest version in the range, not the highest there is.
    let (ok, tree) = cbs_on(&url, &["deps", "app.front"]);
    assert!(ok, "{tree}");
    assert!(
        tree.contains("app.front 1.0.0\n  dep.callee 1.2.0 (wants ^1)\n"),
        "{tree}"
    );
    // A new major: 1.2.0 keeps serving beside it for app.front...
    let two = bundle("callee-2b", "dep.callee", "2.0.0", "");
    let (ok, said) = cbs_on(
        &url,
        &["deploy", two.to_str().unwrap(), "--wait-ms", "30000"],
    );
    assert!(ok, "{said}");
    assert!(
        said.contains("dep.callee 1.2.0 keeps serving beside 2.0.0"),
        "{said}"
    );
    let (ok, tree) = cbs_on(&url, &["deps", "app.front"]);
    assert!(ok && tree.contains("dep.callee 1.2.0 (wants ^1)"), "{tree}");
    // ...and so is undeploying it, unless forced.
    let (ok, said) = cbs_on(&url, &["undeploy", "dep.callee"]);
    assert!(
        !ok && said.contains("needed by deployed cells: app.front (dep.callee@^1)"),
        "{said}"
    );
    let (ok, said) = cbs_on(&url, &["undeploy", "dep.callee", "--force"]);
    assert!(ok, "{said}");
    let (ok, tree) = cbs_on(&url, &["deps", "app.front"]);
    assert!(
        !ok && tree.contains("dep.callee not deployed (wants ^1)  ✗ not compatible"),
        "{tree}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_spec_names_a_cell_by_its_registry_reference() {
    let registry = Registry::start();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = signed(tmp.path(), &greet_bundle(tmp.path()));
    let reference = format!("{}:0.1.0", registry.reference("logic.greet"));
    push(&bundle, &reference);
    let spec = tmp.path().join("domain.yaml");
    std::fs::write(
        &spec,
        format!("domain: shop\ncells:\n  - ref: {reference}\nexports: [logic.greet]\n"),
    )
    .unwrap();
    let server = NatsServer::start();
    let url = server.url();
    let _host = HostProcess::serve(&url, "host-a", &[], &["--watch"]);
    let key = format!("{}.pub", tmp.path().join("key").display());
    let apply = |trust: &str| {
        cbs_on(
            &url,
            &[
                "apply",
                spec.to_str().unwrap(),
                "--insecure",
                "--trust",
                trust,
            ],
        )
    };
    // Pulled and verified as `cbs deploy REF`: a key that did not sign it refuses.
    let stranger = tmp.path().join("stranger");
    ok("cbs keygen", cbs(&["keygen", stranger.to_str().unwrap()]));
    let (ok_, said) = apply(&format!("{}.pub", stranger.display()));
    assert!(!ok_ && said.contains("refused"), "{said}");
    let (ok_, said) = apply(&key);
    assert!(ok_, "{said}");
    let bus = server.bus().await;
    let reply = cbs_tests::call_json(
        &bus,
        "logic.greet",
        json!({"name": "Ada"}),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(reply["greeting"], "Hello, Ada!");
}
