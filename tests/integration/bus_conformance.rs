//! The conformance suite every `BodyBus` must pass, here run against the
//! in-process bus (and, with the NATS bus, against a real server).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cbs_host::bus::local::LocalBus;
use cbs_host::bus::{BodyBus, Message};
use cbs_host::envelope::ErrorCode;
use cbs_tests::wait_until;

/// Answers every request on `subject` with "<payload>!" and the header
/// `served-by: <name>`, counting what it served.
async fn responder(
    bus: Arc<dyn BodyBus>,
    subject: &str,
    queue: Option<&str>,
    name: &'static str,
) -> Arc<Mutex<Vec<Bytes>>> {
    let mut sub = bus.subscribe(subject, queue).await.unwrap();
    bus.flush().await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            log.lock().unwrap().push(msg.payload.clone());
            if let Some(to) = msg.reply {
                let mut body = msg.payload.to_vec();
                body.push(b'!');
                let headers = vec![("served-by".to_owned(), name.to_owned())];
                bus.reply(&to, headers, body.into()).await.unwrap();
            }
        }
    });
    seen
}

pub async fn request_reply(bus: Arc<dyn BodyBus>) {
    responder(bus.clone(), "svc.echo", None, "a").await;
    let request = Message::new("svc.echo", "hi").with_headers(vec![("x-test".into(), "1".into())]);
    let reply = bus.request(request, Duration::from_secs(5)).await.unwrap();
    assert_eq!(&reply.payload[..], b"hi!");
    assert_eq!(reply.header("served-by"), Some("a"));
}

pub async fn headers_reach_the_subscriber(bus: Arc<dyn BodyBus>) {
    let mut sub = bus.subscribe("svc.headers", None).await.unwrap();
    bus.flush().await.unwrap();
    let message = Message::new("svc.headers", "x")
        .with_headers(vec![("cbs-correlation-id".into(), "c-1".into())]);
    bus.publish(message).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.header("cbs-correlation-id"), Some("c-1"));
    assert_eq!(got.subject, "svc.headers");
}

pub async fn queue_group_spreads_and_delivers_once(bus: Arc<dyn BodyBus>) {
    const N: usize = 300;
    let members = [
        responder(bus.clone(), "work.q", Some("workers"), "m1").await,
        responder(bus.clone(), "work.q", Some("workers"), "m2").await,
        responder(bus.clone(), "work.q", Some("workers"), "m3").await,
    ];
    let watcher = responder(bus.clone(), "work.q", None, "watcher").await;
    for i in 0..N {
        bus.publish(Message::new("work.q", i.to_string()))
            .await
            .unwrap();
    }
    bus.flush().await.unwrap();
    let total = || {
        members
            .iter()
            .map(|m| m.lock().unwrap().len())
            .sum::<usize>()
    };
    wait_until(
        Duration::from_secs(10),
        "every message to reach the group",
        || total() >= N && watcher.lock().unwrap().len() >= N,
    )
    .await;
    let mut seen = HashSet::new();
    for member in &members {
        let got = member.lock().unwrap();
        assert!(!got.is_empty(), "every member of the group gets a share");
        for payload in got.iter() {
            assert!(
                seen.insert(payload.clone()),
                "message {payload:?} delivered twice in one group"
            );
        }
    }
    assert_eq!(seen.len(), N);
    assert_eq!(
        watcher.lock().unwrap().len(),
        N,
        "a plain subscriber sees every message"
    );
}

pub async fn wildcards(bus: Arc<dyn BodyBus>) {
    let star = responder(bus.clone(), "wild.*", None, "star").await;
    let tail = responder(bus.clone(), "wild.>", None, "tail").await;
    for subject in ["wild.a", "wild.a.b", "other.a"] {
        bus.publish(Message::new(subject, subject)).await.unwrap();
    }
    bus.flush().await.unwrap();
    wait_until(Duration::from_secs(5), "wildcard deliveries", || {
        tail.lock().unwrap().len() >= 2
    })
    .await;
    // Everything published has been routed by now; `*` got exactly one.
    wait_until(Duration::from_secs(5), "the * delivery", || {
        !star.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(star.lock().unwrap().as_slice(), &[Bytes::from("wild.a")]);
    assert_eq!(
        tail.lock().unwrap().as_slice(),
        &[Bytes::from("wild.a"), Bytes::from("wild.a.b")]
    );
}

pub async fn request_times_out(bus: Arc<dyn BodyBus>) {
    let _silent = bus.subscribe("svc.silent", None).await.unwrap();
    bus.flush().await.unwrap();
    let err = bus
        .request(Message::new("svc.silent", "?"), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Timeout, "{err}");
    assert!(err.message.contains("svc.silent"), "{err}");
}

pub async fn no_responders_is_not_found(bus: Arc<dyn BodyBus>) {
    // A long timeout: the answer must come from "no responders", not a timeout.
    let err = bus
        .request(Message::new("svc.nobody", "?"), Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "{err}");
    assert!(err.message.contains("svc.nobody"), "{err}");
}

pub async fn dropping_a_subscription_unsubscribes(bus: Arc<dyn BodyBus>) {
    let sub = bus.subscribe("svc.gone", None).await.unwrap();
    bus.flush().await.unwrap();
    drop(sub);
    // Unsubscribing may take a round trip on a networked bus: retry until
    // the subject has no responders, within a deadline.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let outcome = bus
            .request(Message::new("svc.gone", "?"), Duration::from_millis(500))
            .await;
        match outcome {
            Err(e) if e.code == ErrorCode::NotFound => break,
            other => assert!(
                Instant::now() < deadline,
                "still subscribed after drop: {other:?}"
            ),
        }
        tokio::time::sleep(cbs_tests::POLL).await;
    }
}

/// What undeploy and shutdown rely on to lose nothing: unsubscribing stops
/// new messages, yet those the client already received still come, then
/// the end. (Messages still on the wire are not covered: async-nats 0.51's
/// drain does not wait for the server's reply to its UNSUB.)
pub async fn unsubscribing_yields_what_was_delivered(bus: Arc<dyn BodyBus>) {
    let mut sub = bus.subscribe("svc.drain", None).await.unwrap();
    let mut marker = bus.subscribe("svc.marker", None).await.unwrap();
    bus.flush().await.unwrap();
    for i in 0..3 {
        bus.publish(Message::new("svc.drain", i.to_string()))
            .await
            .unwrap();
    }
    // One connection delivers in order: once the marker is here, so are
    // the three messages before it.
    bus.publish(Message::new("svc.marker", "after"))
        .await
        .unwrap();
    let deadline = Duration::from_secs(5);
    tokio::time::timeout(deadline, marker.next())
        .await
        .expect("the marker arrives")
        .unwrap();
    sub.unsubscribe().await;
    let mut seen = Vec::new();
    while let Some(message) = tokio::time::timeout(deadline, sub.next())
        .await
        .expect("the stream ends after what was delivered")
    {
        seen.push(String::from_utf8_lossy(&message.payload).into_owned());
    }
    assert_eq!(seen, ["0", "1", "2"]);
}

pub async fn invalid_subjects_are_rejected(bus: Arc<dyn BodyBus>) {
    for subject in ["", "a..b", "a b"] {
        let err = bus.publish(Message::new(subject, "x")).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidInput, "{subject:?}: {err}");
    }
    let err = bus.publish(Message::new("a.*", "x")).await.unwrap_err();
    assert_eq!(
        err.code,
        ErrorCode::InvalidInput,
        "publishing to a wildcard: {err}"
    );
}

/// Generates one `#[tokio::test]` per conformance case for a bus factory.
#[macro_export]
macro_rules! conformance_suite {
    ($bus:ident, $make:expr) => {
        mod $bus {
            use super::*;
            $crate::conformance_suite!(@case $make; request_reply, headers_reach_the_subscriber,
                queue_group_spreads_and_delivers_once, wildcards, request_times_out,
                no_responders_is_not_found, dropping_a_subscription_unsubscribes,
                unsubscribing_yields_what_was_delivered, invalid_subjects_are_rejected);
        }
    };
    (@case $make:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                // The guard (e.g. a nats-server) lives as long as the case.
                let (_guard, bus): (_, Arc<dyn BodyBus>) = $make;
                super::$case(bus).await;
            }
        )*
    };
}

conformance_suite!(local, ((), Arc::new(LocalBus::new())));
conformance_suite!(nats, {
    let server = cbs_tests::nats::NatsServer::start();
    let bus = Arc::new(server.bus().await);
    (server, bus)
});
