use super::ask::Gathered;
use super::ring::bounded_error;
use super::*;
use serde_json::value::RawValue;

fn envelope(correlation_id: &str) -> Envelope {
    let payload = RawValue::from_string(r#"{"secret":"hunter2"}"#.to_owned()).unwrap();
    let mut envelope = Envelope::new("cbs.logic.greet", payload);
    envelope.correlation_id = correlation_id.to_owned();
    envelope
}

fn record(recorder: &Recorder, flow: &str, error: Option<&BusError>) {
    recorder.record(&envelope(flow), Duration::from_micros(250), error);
}

fn failure(message: &str) -> BusError {
    BusError::new(ErrorCode::ContractViolation, message)
}

#[test]
fn a_hop_holds_ids_cell_host_timing_and_outcome_never_the_payload() {
    let flows = Arc::new(Flows::new("host-a"));
    let greet = flows.recorder("logic.greet", "1.2.0");
    record(&greet, "flow-1", Some(&failure("name is not a string")));
    let hops = flows.select(&Query::flow("flow-1"));
    assert_eq!(hops.len(), 1);
    let hop = &hops[0];
    assert_eq!(
        (&*hop.cell, &*hop.version, &*hop.host),
        ("logic.greet", "1.2.0", "host-a")
    );
    assert_eq!(hop.outcome, Outcome::Failed(ErrorCode::ContractViolation));
    assert_eq!(hop.error.as_deref(), Some("name is not a string"));
    assert_eq!(hop.duration_us, 250);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(hop.started_ms <= now_ms && hop.started_ms + 60_000 > now_ms);
    let json = serde_json::to_string(hop).unwrap();
    assert!(!json.contains("hunter2"), "{json}");
    assert!(json.contains(r#""outcome":"contract_violation""#), "{json}");
    assert_eq!(serde_json::from_str::<Hop>(&json).unwrap(), *hop);
}

#[test]
fn outcomes_are_ok_or_an_error_code_by_name() {
    for outcome in [Outcome::Ok, Outcome::Failed(ErrorCode::Timeout)] {
        let json = serde_json::to_string(&outcome).unwrap();
        assert_eq!(json, format!("\"{outcome}\""));
        assert_eq!(serde_json::from_str::<Outcome>(&json).unwrap(), outcome);
    }
    assert!(serde_json::from_str::<Outcome>("\"exploded\"").is_err());
}

#[test]
fn the_ring_keeps_the_newest_hops_up_to_its_count() {
    let flows = Arc::new(Flows::new("h"));
    let cell = flows.recorder("a.b", "1");
    for i in 0..=MAX_HOPS {
        record(&cell, &i.to_string(), None);
    }
    assert_eq!(flows.counts(), (MAX_HOPS, 0));
    assert!(
        flows.select(&Query::flow("0")).is_empty(),
        "the oldest went"
    );
    assert_eq!(flows.select(&Query::flow("1")).len(), 1);
    assert_eq!(flows.select(&Query::flow(MAX_HOPS.to_string())).len(), 1);
}

#[test]
fn the_ring_keeps_within_its_bytes_with_the_largest_hops() {
    let flows = Arc::new(Flows::new("h"));
    let cell = flows.recorder("a.b", "1");
    let long_error = failure(&"e".repeat(4 * MAX_ERROR_BYTES));
    let long_id = "i".repeat(4 * MAX_ID_BYTES);
    for _ in 0..MAX_HOPS {
        cell.record(&envelope(&long_id), Duration::ZERO, Some(&long_error));
    }
    let rings = flows.rings();
    for (ring, max_hops, max_bytes) in [
        (&rings.all, MAX_HOPS, MAX_BYTES),
        (&rings.failed, MAX_FAILED, MAX_FAILED_BYTES),
    ] {
        let bytes: usize = ring.hops.iter().map(|k| k.hop.size()).sum();
        assert_eq!(bytes, ring.bytes, "counted as kept");
        assert!(bytes <= max_bytes && ring.hops.len() <= max_hops);
    }
    // The largest hops fill the ring's bytes before its count.
    let hop = &rings.all.hops[0].hop;
    assert!(rings.all.hops.len() < MAX_HOPS);
    assert!(rings.all.bytes + hop.size() > MAX_BYTES);
    assert_eq!(hop.correlation_id.len(), MAX_ID_BYTES);
    assert!(hop.error.as_ref().unwrap().len() <= MAX_ERROR_BYTES);
}

#[test]
fn a_small_ring_drops_by_count_and_by_bytes() {
    let flows = Flows::bounded("h", (3, 10_000), (1, 10_000));
    let flows = Arc::new(flows);
    let cell = flows.recorder("a.b", "1");
    for i in 0..5 {
        record(&cell, &i.to_string(), None);
    }
    let ids = |q: &Query| -> Vec<String> {
        flows
            .select(q)
            .into_iter()
            .map(|h| h.correlation_id)
            .collect()
    };
    assert_eq!(ids(&Query::default()), ["2", "3", "4"]);
    let one = std::mem::size_of::<Kept>() + 1 + 36;
    let flows = Arc::new(Flows::bounded("h", (100, 2 * one), (1, one)));
    let cell = flows.recorder("a.b", "1");
    for i in 0..5 {
        record(&cell, &i.to_string(), None);
    }
    assert_eq!(flows.counts(), (2, 0), "two hops of {one} bytes fit");
}

#[test]
fn failures_outlive_a_run_of_successes_within_their_own_bound() {
    let flows = Arc::new(Flows::new("h"));
    let cell = flows.recorder("a.b", "1");
    for i in 0..MAX_FAILED + 5 {
        record(&cell, &format!("bad-{i}"), Some(&failure("no")));
    }
    for i in 0..2 * MAX_HOPS {
        record(&cell, &format!("ok-{i}"), None);
    }
    assert_eq!(flows.counts(), (MAX_HOPS, MAX_FAILED));
    let failed = flows.select(&Query::failed());
    assert_eq!(failed.len(), MAX_FAILED);
    assert_eq!(failed[0].correlation_id, "bad-5", "oldest kept first");
    assert_eq!(
        failed[MAX_FAILED - 1].correlation_id,
        format!("bad-{}", MAX_FAILED + 4)
    );
    assert!(flows.select(&Query::flow("bad-4")).is_empty());
    assert_eq!(flows.select(&Query::flow("bad-5")).len(), 1);
}

#[test]
fn failed_hops_older_than_the_failed_list_are_still_found_in_the_ring() {
    let flows = Arc::new(Flows::bounded("h", (100, 1 << 20), (2, 1 << 20)));
    let cell = flows.recorder("a.b", "1");
    for i in 0..5 {
        record(&cell, &format!("bad-{i}"), Some(&failure("no")));
        record(&cell, &format!("ok-{i}"), None);
    }
    let ids: Vec<String> = flows
        .select(&Query::failed())
        .into_iter()
        .map(|h| h.correlation_id)
        .collect();
    assert_eq!(ids, ["bad-0", "bad-1", "bad-2", "bad-3", "bad-4"]);
    let newest = Query {
        limit: Some(2),
        ..Query::failed()
    };
    let ids: Vec<String> = flows
        .select(&newest)
        .into_iter()
        .map(|h| h.correlation_id)
        .collect();
    assert_eq!(ids, ["bad-3", "bad-4"]);
}

#[test]
fn error_messages_are_cut_at_a_character_boundary() {
    let flows = Arc::new(Flows::new("h"));
    let cell = flows.recorder("a.b", "1");
    let message = "é".repeat(MAX_ERROR_BYTES);
    record(&cell, "f", Some(&failure(&message)));
    let error = flows.select(&Query::flow("f"))[0].error.clone().unwrap();
    assert!(error.len() <= MAX_ERROR_BYTES, "{}", error.len());
    assert!(error.ends_with('…'));
    assert!(error.trim_end_matches('…').chars().all(|c| c == 'é'));
    assert_eq!(bounded_error("short"), "short");
}

#[test]
fn a_long_correlation_id_finds_its_hops_though_kept_cut() {
    let flows = Arc::new(Flows::new("h"));
    let cell = flows.recorder("a.b", "1");
    let id = format!("{}ü-tail", "x".repeat(MAX_ID_BYTES - 1));
    record(&cell, &id, None);
    let hops = flows.select(&Query::flow(id.clone()));
    assert_eq!(hops.len(), 1);
    assert_eq!(hops[0].correlation_id, "x".repeat(MAX_ID_BYTES - 1));
}

#[test]
fn queries_narrow_by_cell_and_failure() {
    let flows = Arc::new(Flows::new("h"));
    let (a, b) = (flows.recorder("a.a", "1"), flows.recorder("b.b", "1"));
    record(&a, "f", None);
    record(&b, "f", Some(&failure("no")));
    record(&a, "g", Some(&failure("no")));
    let cells = |q: Query| -> Vec<String> {
        flows
            .select(&q)
            .iter()
            .map(|h| format!("{}:{}", h.cell, h.correlation_id))
            .collect()
    };
    assert_eq!(cells(Query::flow("f")), ["a.a:f", "b.b:f"]);
    let failed_a = Query {
        cell: Some("a.a".into()),
        ..Query::failed()
    };
    assert_eq!(cells(failed_a), ["a.a:g"]);
    assert_eq!(cells(Query::default()).len(), 3);
}

fn answer(flows: &Flows, question: &[u8], max_bytes: usize) -> Answer {
    serde_json::from_slice(&flows.answer(question, max_bytes)).unwrap()
}

#[test]
fn a_malformed_question_gets_invalid_input() {
    let flows = Flows::new("h");
    for question in [
        &b"\xff\xfe garbage"[..],
        b"[1,2]",
        br#"{"limit":-1}"#,
        br#"{"limit":1e300}"#,
        br#"{"correlation_id":7}"#,
        br#"{"payload":true}"#,
    ] {
        let answer = answer(&flows, question, MAX_ANSWER_BYTES);
        let error = answer.error.expect("an error");
        assert_eq!(error.code, ErrorCode::InvalidInput, "{error}");
        assert!(answer.hops.is_empty());
        assert_eq!(answer.host, "h");
    }
    assert!(answer(&flows, b" ", MAX_ANSWER_BYTES).error.is_none());
}

#[test]
fn an_answer_keeps_within_its_hop_and_byte_bounds() {
    let flows = Arc::new(Flows::new("h"));
    let cell = flows.recorder("a.b", "1");
    let long = failure(&"e".repeat(MAX_ERROR_BYTES));
    for i in 0..MAX_HOPS {
        record(&cell, &i.to_string(), Some(&long));
    }
    let huge = format!(r#"{{"limit":{}}}"#, u64::MAX);
    let bytes = flows.answer(huge.as_bytes(), MAX_ANSWER_BYTES);
    assert!(bytes.len() <= MAX_ANSWER_BYTES, "{}", bytes.len());
    let long_hops: Answer = serde_json::from_slice(&bytes).unwrap();
    assert!(long_hops.truncated);
    assert!(!long_hops.hops.is_empty() && long_hops.hops.len() < MAX_ANSWER_HOPS);
    let newest = long_hops.hops.last().unwrap();
    assert_eq!(
        newest.correlation_id,
        (MAX_HOPS - 1).to_string(),
        "newest kept"
    );
    // Small hops: the count bound holds first.
    let flows = Arc::new(Flows::new("h"));
    let cell = flows.recorder("a.b", "1");
    for i in 0..MAX_HOPS {
        record(&cell, &i.to_string(), None);
    }
    let short_hops = answer(&flows, huge.as_bytes(), MAX_ANSWER_BYTES);
    assert_eq!(short_hops.hops.len(), MAX_ANSWER_HOPS);
    assert!(!short_hops.truncated);
}

#[test]
fn gathering_keeps_what_was_asked_and_the_newest() {
    let hop = |host: &str, flow: &str, started_ms, duration_us| Hop {
        correlation_id: flow.into(),
        message_id: format!("{host}-{started_ms}"),
        cell: "a.b".into(),
        version: "1".into(),
        host: host.into(),
        started_ms,
        duration_us,
        outcome: Outcome::Ok,
        error: None,
    };
    let reply = |host: &str, hops: Vec<Hop>| {
        serde_json::to_vec(&Answer {
            host: host.into(),
            hops,
            truncated: false,
            error: None,
        })
        .unwrap()
    };
    let query = Query {
        limit: Some(3),
        ..Query::flow("f")
    };
    let mut gathered = Gathered::new(&query);
    gathered.take(&reply(
        "b",
        vec![hop("b", "f", 10, 5), hop("b", "other", 11, 1)],
    ));
    gathered.take(b"not json");
    gathered.take(&reply(
        "a",
        vec![hop("a", "f", 10, 50), hop("a", "f", 9, 1)],
    ));
    gathered.take(&reply("c", vec![hop("c", "f", 12, 1)]));
    let hops = gathered.finish().unwrap();
    let order: Vec<&str> = hops.iter().map(|h| h.message_id.as_str()).collect();
    // The caller (longer) before its callee in the same millisecond;
    // the oldest (a-9) left out by the limit; b's other flow dropped.
    assert_eq!(order, ["a-10", "b-10", "c-12"]);

    let mut refused = Gathered::new(&query);
    let error = serde_json::json!({"host": "a", "error": failure("no")}).to_string();
    refused.take(error.as_bytes());
    assert_eq!(
        refused.finish().unwrap_err().code,
        ErrorCode::ContractViolation
    );
}
