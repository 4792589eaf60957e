//! Recent flows from the hosts' memory (`cbs_host::flows`, `cbs flows`): a
//! flow that crosses two hosts on a real nats-server and fails at its
//! second hop, found by its correlation id and among the failed hops, by
//! the library and by the command line; hostile questions; and the same
//! question on the in-process bus.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cbs_host::bus::local::LocalBus;
use cbs_host::bus::{BodyBus, Message};
use cbs_host::envelope::ErrorCode;
use cbs_host::flows::{self, Answer, Hop, Query};
use cbs_tests::nats::NatsServer;
use cbs_tests::process::cbs;
use cbs_tests::{builder, faulty, greet, request_envelope, TestHost};
use futures_util::FutureExt;
use serde_json::json;

/// How long gathering waits for one more answer, and for all of them.
const QUIET: Duration = Duration::from_millis(300);
const WITHIN: Duration = Duration::from_secs(5);

/// Host `flows-a` serves test.faulty, host `flows-b` logic.greet: a call
/// from one to the other crosses the bus.
async fn two_hosts(server: &NatsServer) -> (TestHost, TestHost) {
    let on = |id: &str, bus| builder(Arc::new(bus)).id(id);
    let a = TestHost::start(on("flows-a", server.bus().await), &[faulty()]).await;
    let b = TestHost::start(on("flows-b", server.bus().await), &[greet()]).await;
    (a, b)
}

/// test.faulty calls logic.greet with a name that breaks logic.greet's
/// input contract: the flow fails at its second hop. Returns its
/// correlation id.
async fn fail_a_flow(bus: &dyn BodyBus) -> String {
    let call = json!({"action": "call", "cell": "logic.greet", "payload": {"name": 5}});
    let reply = request_envelope(bus, "test.faulty", call).await;
    assert!(reply.error.is_some(), "the flow fails: {reply:?}");
    reply.correlation_id
}

/// A flow that succeeds, to be left out of what is asked.
async fn greet_ok(bus: &dyn BodyBus) -> String {
    let reply = request_envelope(bus, "logic.greet", json!({"name": "Ada"})).await;
    assert!(reply.error.is_none(), "{reply:?}");
    reply.correlation_id
}

/// Each hop as (host, cell, outcome).
fn summary(hops: &[Hop]) -> Vec<(String, String, String)> {
    hops.iter()
        .map(|h| {
            (
                h.host.to_string(),
                h.cell.to_string(),
                h.outcome.to_string(),
            )
        })
        .collect()
}

fn hop(host: &str, cell: &str, outcome: &str) -> (String, String, String) {
    (host.into(), cell.into(), outcome.into())
}

/// The failed flow's two hops, in order: test.faulty on flows-a failing
/// because logic.greet on flows-b refused its input (the guest SDK passes
/// the callee's error on, code and all).
fn assert_the_failed_flow(hops: &[Hop], correlation_id: &str) {
    assert_eq!(
        summary(hops),
        [
            hop("flows-a", "test.faulty", "contract_violation"),
            hop("flows-b", "logic.greet", "contract_violation"),
        ],
        "{hops:#?}"
    );
    let (caller, callee) = (&hops[0], &hops[1]);
    assert!(hops.iter().all(|h| h.correlation_id == correlation_id));
    assert_ne!(caller.message_id, callee.message_id);
    assert!(caller.started_ms <= callee.started_ms);
    assert!(caller.duration_us >= callee.duration_us, "{hops:#?}");
    let error = callee.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("breaks contract logic.greet/request@1"),
        "{error}"
    );
    assert_eq!(&*callee.version, "0.1.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flow_across_two_hosts_is_found_by_its_correlation_id() {
    let server = NatsServer::start();
    let (_a, _b) = two_hosts(&server).await;
    let client = server.bus().await;
    greet_ok(&client).await;
    let failed = fail_a_flow(&client).await;
    greet_ok(&client).await;

    // Each hop is recorded before its reply is sent: no waiting needed.
    let hops = flows::query(&client, &Query::flow(&failed), QUIET, WITHIN)
        .await
        .unwrap();
    assert_the_failed_flow(&hops, &failed);
    // Narrowed to one cell, only that host's hop.
    let greet_only = Query {
        cell: Some("logic.greet".into()),
        ..Query::flow(&failed)
    };
    let hops = flows::query(&client, &greet_only, QUIET, WITHIN)
        .await
        .unwrap();
    assert_eq!(
        summary(&hops),
        [hop("flows-b", "logic.greet", "contract_violation")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_hops_are_listed_and_cbs_flows_prints_them() {
    let server = NatsServer::start();
    let (_a, _b) = two_hosts(&server).await;
    let client = server.bus().await;
    let ok = greet_ok(&client).await;
    let failed = fail_a_flow(&client).await;

    let listed = flows::query(&client, &Query::failed(), QUIET, WITHIN)
        .await
        .unwrap();
    assert_the_failed_flow(&listed, &failed);
    assert!(listed.iter().all(|h| h.correlation_id != ok));

    let url = server.url();
    let out = cbs(&["flows", "--failed", "--nats", &url]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let row = stdout
        .lines()
        .find(|l| l.contains("flows-b"))
        .unwrap_or_else(|| panic!("no row of host flows-b:\n{stdout}"));
    for column in [
        "logic.greet",
        &failed,
        "contract_violation",
        "breaks contract",
    ] {
        assert!(row.contains(column), "{column} missing from {row}");
    }
    assert!(!stdout.contains(&ok), "{stdout}");

    let out = cbs(&["flows", &failed, "--nats", &url]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.starts_with(&format!("flow {failed}: 2 hop(s), 2 failed, from ")),
        "{stdout}"
    );
    let rows: Vec<&str> = stdout.lines().skip(2).collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(rows[0].trim_start().starts_with("+0 ms") && rows[0].contains("test.faulty"));
    assert!(rows[1].contains("flows-b") && rows[1].contains("contract_violation"));

    let out = cbs(&["flows", &failed, "--json", "--nats", &url]);
    let printed: Vec<Hop> = serde_json::from_slice(&out.stdout).expect("JSON hops");
    let asked = flows::query(&client, &Query::flow(&failed), QUIET, WITHIN)
        .await
        .unwrap();
    assert_eq!(printed, asked);

    let out = cbs(&["flows", "no-such-flow", "--nats", &url]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no host remembers flow no-such-flow"),
        "{stderr}"
    );
}

/// A question asked with one request: the first host's answer.
async fn ask(bus: &dyn BodyBus, question: &'static [u8]) -> (Answer, usize) {
    let message = Message::new(flows::SUBJECT, Bytes::from_static(question));
    let reply = bus.request(message, WITHIN).await.expect("an answer");
    let answer = serde_json::from_slice(&reply.payload).expect("an answer is JSON");
    (answer, reply.payload.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hostile_query_gets_an_error_or_a_bounded_answer_and_the_hosts_keep_serving() {
    let server = NatsServer::start();
    let (_a, _b) = two_hosts(&server).await;
    let client = server.bus().await;
    let failed = fail_a_flow(&client).await;

    for garbage in [
        &b"\x00\xff\xfe not json"[..],
        br#"{"limit": 1e300}"#,
        br#"{"limit": -1}"#,
        br#"{"correlation_id": {"$gt": ""}}"#,
        br#"{"payload": true}"#,
    ] {
        let (answer, _) = ask(&client, garbage).await;
        let error = answer.error.expect("refused");
        assert_eq!(error.code, ErrorCode::InvalidInput, "{error}");
        assert!(answer.hops.is_empty());
    }
    let (answer, bytes) = ask(&client, br#"{"limit": 18446744073709551615}"#).await;
    assert!(answer.error.is_none(), "{answer:?}");
    assert!(!answer.hops.is_empty() && answer.hops.len() <= flows::MAX_ANSWER_HOPS);
    assert!(bytes <= flows::MAX_ANSWER_BYTES, "{bytes}");

    // A question whose reply subject is not an inbox gets no answer (the
    // host would publish there with its own rights). Each host answers in
    // order, so once both answered a later question, an answer to the
    // first would have arrived.
    let mut stolen = client.subscribe("stolen.answers", None).await.unwrap();
    let mut question = Message::new(flows::SUBJECT, "{}");
    question.reply = Some("stolen.answers".into());
    client.publish(question).await.unwrap();
    let inbox = format!("_INBOX.flows-test.{}", cbs_host::envelope::new_id());
    let mut answers = client.subscribe(&inbox, None).await.unwrap();
    let mut question = Message::new(flows::SUBJECT, "{}");
    question.reply = Some(inbox);
    client.publish(question).await.unwrap();
    for _ in 0..2 {
        tokio::time::timeout(WITHIN, answers.next())
            .await
            .expect("both hosts answer")
            .expect("an answer");
    }
    assert!(
        stolen.next().now_or_never().is_none(),
        "answered outside an inbox"
    );

    // Both hosts still serve cells and answer.
    greet_ok(&client).await;
    let hops = flows::query(&client, &Query::flow(&failed), QUIET, WITHIN)
        .await
        .unwrap();
    assert_the_failed_flow(&hops, &failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_query_finds_a_flow_on_the_in_process_bus() {
    let host = TestHost::start(
        builder(Arc::new(LocalBus::new())).id("local-host"),
        &[faulty(), greet()],
    )
    .await;
    let bus = host.bus().clone();
    let failed = fail_a_flow(bus.as_ref()).await;
    greet_ok(bus.as_ref()).await;

    let hops = flows::query(bus.as_ref(), &Query::flow(&failed), QUIET, WITHIN)
        .await
        .unwrap();
    assert_eq!(
        summary(&hops),
        [
            hop("local-host", "test.faulty", "contract_violation"),
            hop("local-host", "logic.greet", "contract_violation"),
        ]
    );
    // The body's own list holds the same hops, in the order they ended.
    let mut kept = host.body().flows().select(&Query::flow(&failed));
    kept.reverse();
    assert_eq!(hops, kept);

    // A host that shut down no longer answers.
    host.host.shutdown(Duration::from_secs(5)).await;
    let question = Message::new(flows::SUBJECT, "{}");
    let error = bus.request(question, WITHIN).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::NotFound, "{error}");
}
