//! Every NATS auth mode a host can use, against a real nats-server: TLS
//! (server-verified and mutual), nkeys, and decentralized JWT auth with a
//! `.creds` file (server in operator mode). Each mode lets the right
//! credentials in — one flow through NATS runs — and refuses others with
//! exit code 2 and a message that says what failed.

use std::process::Output;

use cbs_tests::nats::NatsServer;
use cbs_tests::nats_auth::{Operator, Pki};
use cbs_tests::process::greet_flow_via;

/// The flow ran through NATS: `--start` logs its reply.
fn assert_served(what: &str, out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.contains("flow finished") && stderr.contains("Hello, Ada!"),
        "{what}: exit {:?}\n{stderr}",
        out.status,
    );
}

fn assert_refused(what: &str, out: &Output, says: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
    assert!(
        says.iter().any(|s| stderr.contains(s)),
        "{what}: none of {says:?} in\n{stderr}"
    );
    stderr
}

#[test]
fn tls_connects_to_a_server_the_ca_vouches_for_and_to_no_other() {
    let pki = Pki::new();
    let server = NatsServer::with_config(&pki.server_tls(false));
    let ca = pki.path("ca.pem");
    assert_served(
        "with the CA",
        &greet_flow_via(&server.url(), &["--nats-tls-ca", &ca]),
    );
    // Without our CA the server's certificate is unknown: refused.
    let out = greet_flow_via(&server.url(), &[]);
    assert_refused("without the CA", &out, &["pass that CA with --nats-tls-ca"]);
}

#[test]
fn mutual_tls_admits_only_a_client_with_a_certificate_of_the_ca() {
    let pki = Pki::new();
    let server = NatsServer::with_config(&pki.server_tls(true));
    let ca = pki.path("ca.pem");
    // Trusting our CA, presenting the client certificate of `client`.
    let flags = |client: &Pki| {
        let (cert, key) = (client.path("client.pem"), client.path("client-key.pem"));
        [
            "--nats-tls-ca",
            &ca,
            "--nats-tls-cert",
            &cert,
            "--nats-tls-key",
            &key,
        ]
        .map(String::from)
    };
    let run = |flags: &[String]| {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        greet_flow_via(&server.url(), &flags)
    };
    assert_served("with a client certificate", &run(&flags(&pki)));
    let out = run(&flags(&pki)[..2]);
    assert_refused(
        "without a client certificate",
        &out,
        &["refused our TLS client certificate"],
    );
    // A certificate from another CA is no better.
    let out = run(&flags(&Pki::new()));
    assert_refused(
        "with another CA's certificate",
        &out,
        &["refused our TLS client certificate"],
    );
}

#[test]
fn nkey_auth_admits_the_seed_of_a_listed_key_only() {
    let user = nkeys::KeyPair::new_user();
    let config = format!(
        "authorization {{\n  users = [ {{ nkey: {:?} }} ]\n}}\n",
        user.public_key()
    );
    let server = NatsServer::with_config(&config);
    let seed = user.seed().unwrap();
    assert_served(
        "with the seed",
        &greet_flow_via(&server.url(), &["--nats-nkey", &seed]),
    );
    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    let out = greet_flow_via(&server.url(), &["--nats-nkey", &stranger]);
    assert_refused("with another seed", &out, &["refused the credentials"]);
    let out = greet_flow_via(&server.url(), &["--nats-nkey", "SUnot-a-seed"]);
    assert_refused("with a malformed seed", &out, &["nkey", "seed"]);
}

#[test]
fn jwt_auth_admits_a_user_of_a_known_account_from_its_creds_file() {
    let operator = Operator::new();
    let server = NatsServer::with_config(&operator.server_config());
    let tmp = tempfile::tempdir().unwrap();
    let creds = operator.user_creds(tmp.path(), "host");
    assert_served(
        "with the creds",
        &greet_flow_via(&server.url(), &["--nats-creds", creds.to_str().unwrap()]),
    );
    let stranger = Operator::stranger_creds(tmp.path(), "stranger");
    let out = greet_flow_via(&server.url(), &["--nats-creds", stranger.to_str().unwrap()]);
    assert_refused(
        "a user of an unknown account",
        &out,
        &["refused the credentials"],
    );
    let missing = tmp.path().join("missing.creds");
    let out = greet_flow_via(&server.url(), &["--nats-creds", missing.to_str().unwrap()]);
    assert_refused("a creds file that is not there", &out, &["missing.creds"]);
}
