//! Single sign-on against an OpenID Connect issuer the test serves
//! (discovery document, JWK set, device flow): a gateway route accepts the
//! issuer's tokens for the role their claims give, follows a key rotation,
//! refuses expired, wrong-audience and unknown-key tokens; a console lets
//! only deployers act; `cbs login` gets a token by the device flow that the
//! gateway then accepts.

use cbs_host::manifest::http::{Auth, HttpRoute, Method};
use cbs_tests::cell_toml::CellToml;
use cbs_tests::curl::{curl, Response};
use cbs_tests::oidc::OidcIssuer;
use cbs_tests::process::HostProcess;
use serde_json::json;

/// A host whose `/private` route (auth = "bearer") takes the issuer's
/// tokens for audience `cbs` and gives callers by `groups: shop`: (host,
/// URL of the route, the cell's folder).
fn sso_host(issuer: &OidcIssuer) -> (HostProcess, String, tempfile::TempDir) {
    let cell = CellToml::faulty("test.sso")
        .http(HttpRoute {
            method: Method::Post,
            path: "/private".into(),
            auth: Auth::Bearer,
            summary: None,
        })
        .write();
    let args = [
        "--http",
        "127.0.0.1:0",
        "--http-oidc-issuer",
        issuer.url(),
        "--http-oidc-audience",
        "cbs",
        "--http-oidc-role",
        "caller=groups:shop",
    ];
    let host = HostProcess::local(&[cell.path().to_path_buf()], &args);
    let url = format!("http://{}/private", host.http_addr());
    (host, url, cell)
}

fn call(url: &str, token: &str) -> Response {
    let auth = format!("Authorization: Bearer {token}");
    curl(&[
        "-H",
        "Content-Type: application/json",
        "-H",
        &auth,
        "-d",
        r#"{"action": "echo", "value": 1}"#,
        url,
    ])
}

fn refused(r: &Response, why: &str) {
    assert_eq!(r.status, 401, "{r:?}");
    let detail = r.json()["detail"].as_str().unwrap_or_default().to_owned();
    assert!(detail.contains(why), "{why:?} not in {detail:?}");
}

#[test]
fn the_issuers_tokens_are_accepted_by_role_and_a_key_rotation_is_followed() {
    let issuer = OidcIssuer::start();
    let (_host, url, _cell) = sso_host(&issuer);
    let shop = issuer.claims(json!({"groups": ["shop"]}));
    assert_eq!(call(&url, &issuer.sign("k1", &shop)).status, 200);

    let other = issuer.claims(json!({"groups": ["warehouse"]}));
    refused(
        &call(&url, &issuer.sign("k1", &other)),
        "ada is signed in, but not as a caller",
    );
    let expired = issuer.claims(json!({"groups": ["shop"], "exp": cbs_tests::jwt::now() - 600}));
    refused(
        &call(&url, &issuer.sign("k1", &expired)),
        "ExpiredSignature",
    );
    let elsewhere = issuer.claims(json!({"groups": ["shop"], "aud": "another-app"}));
    refused(
        &call(&url, &issuer.sign("k1", &elsewhere)),
        "InvalidAudience",
    );
    let forged_iss = issuer.claims(json!({"groups": ["shop"], "iss": "https://evil.example"}));
    refused(
        &call(&url, &issuer.sign("k1", &forged_iss)),
        "InvalidIssuer",
    );
    refused(&call(&url, "not.a.jwt"), "not a JWT");

    // k2 is not published yet: refused, whatever it says.
    refused(
        &call(&url, &issuer.sign("k2", &shop)),
        "which the issuer does not publish",
    );
    let fetched = issuer.jwks_fetches();
    issuer.rotate();
    // The first token with the new key fetches the keys again (at most
    // once per few seconds): wait out that bound, then it is accepted.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while call(&url, &issuer.sign("k2", &shop)).status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "a token of the rotated key was never accepted"
        );
        std::thread::sleep(cbs_tests::POLL);
    }
    assert!(
        issuer.jwks_fetches() > fetched,
        "the rotation was read from the JWK set"
    );
    refused(
        &call(&url, &issuer.sign("k1", &shop)),
        "which the issuer does not publish",
    );
}

#[test]
fn cbs_login_gets_a_token_by_the_device_flow_that_the_gateway_accepts() {
    let issuer = OidcIssuer::start();
    let (_host, url, _cell) = sso_host(&issuer);
    let home = tempfile::tempdir().unwrap();
    let token_file = home.path().join("token");
    let token_file = token_file.to_str().unwrap();
    let env = [("CBS_TOKEN_FILE", Some(token_file))];
    let out = cbs_tests::process_bundles::cbs_with_env(
        home.path(),
        &["login", "--oidc", issuer.url(), "--client-id", "cbs"],
        &env,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("enter the code WDJB-MJHT"), "{stderr}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let out = cbs_tests::process_bundles::cbs_with_env(home.path(), &["login", "--print"], &env);
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(call(&url, &token).status, 200, "the token cbs login kept");
}

#[test]
fn a_console_lets_act_only_users_whose_claims_make_them_deployers() {
    let issuer = OidcIssuer::start();
    let server = cbs_tests::nats::NatsServer::start();
    let console = cbs_tests::process::Console::with(
        &server.url(),
        &[
            "--allow-actions",
            "--oidc-issuer",
            issuer.url(),
            "--oidc-audience",
            "cbs",
            "--oidc-role",
            "deployer=groups:platform",
        ],
    );
    let base = console.base();
    let replay = |token: &str| {
        let (origin, auth) = (
            format!("Origin: {base}"),
            format!("Authorization: Bearer {token}"),
        );
        let url = format!("{base}/api/cells/test.durable/dead-letters/replay");
        curl(&[
            "-X",
            "POST",
            "-d",
            r#"{"all":true}"#,
            "-H",
            &origin,
            "-H",
            &auth,
            &url,
        ])
    };
    let platform = issuer.sign("k1", &issuer.claims(json!({"groups": ["platform"]})));
    let reply = replay(&platform);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let shop = issuer.sign("k1", &issuer.claims(json!({"groups": ["shop"]})));
    let reply = replay(&shop);
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert!(reply.body.contains("not as a deployer"), "{}", reply.body);
}
