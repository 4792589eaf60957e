//! The console in a real headless Chromium, against real hosts on a real
//! nats-server (`cbs console`) and one host on the in-process bus
//! (`cbs-host run --console`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cbs_host::bus::local::LocalBus;
use cbs_host::manifest::DurableSpec;
use fantoccini::Locator;
use serde_json::json;

use cbs_host::deploy::placer::DEAD_AFTER;
use cbs_tests::browser::Browser;
use cbs_tests::bundles::UPPER;
use cbs_tests::curl::curl;
use cbs_tests::nats::NatsServer;
use cbs_tests::process::{cbs, Console, HostProcess};
use cbs_tests::{envelope_to, eventually, faulty, greet, request_envelope, CellToml, TestHost};

/// Generous: the page shows hosts as soon as the console sees them.
const SHOWN: Duration = Duration::from_secs(20);

/// A console with actions, for one user: the token `s3cret` ("token 1").
fn acting_console(url: &str) -> (tempfile::NamedTempFile, Console) {
    let tokens = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tokens.path(), "# who may act\ns3cret\n").unwrap();
    let token_file = tokens.path().to_str().unwrap();
    let console = Console::with(url, &["--allow-actions", "--token-file", token_file]);
    (tokens, console)
}

/// `test.caller`, whose breaker on `test.target` opens at the first
/// failure and half-opens after 1 ms, and `test.target`.
fn tripping_pair() -> (tempfile::TempDir, tempfile::TempDir) {
    let caller = CellToml::faulty("test.caller")
        .calls(&["test.target"])
        .policy("test.target", |p| {
            p.breaker.failures = 1;
            p.breaker.cooldown_ms = 1;
        })
        .write();
    (caller, CellToml::faulty("test.target").write())
}

/// No page asks anything of another origin: every URL the browser
/// requested starts with the console's own.
async fn assert_same_origin(browser: &Browser, base: &str) {
    let urls = browser.requested_urls().await;
    assert!(
        urls.len() > 2,
        "the page, its script and its stream: {urls:?}"
    );
    for url in urls {
        assert!(url.starts_with(base), "{url} is outside {base}");
    }
}

/// A number the page shows in `css` (p50/p99 in ms, counts), if it
/// shows one.
async fn number(browser: &Browser, css: &str) -> Option<f64> {
    browser.text(css).await?.trim().parse().ok()
}

/// The lattice shows each host with its uptime, the NATS server it is on,
/// and its load; a slow cell's page shows its percentiles and busy slots
/// under load; a killed host leaves the lattice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lattice_lists_two_hosts_and_their_cells_and_a_killed_host_leaves_it() {
    let server = NatsServer::with_args(&["--server_name", "nats-console"]);
    let url = server.url();
    let mut a = HostProcess::serve(&url, "host-console-a", &[greet()], &[]);
    let _b = HostProcess::serve(&url, "host-console-b", &[greet(), faulty()], &[]);
    let console = Console::start(&url);
    let browser = Browser::start().await;
    browser.goto(console.base()).await;
    browser
        .wait_for_text(SHOWN, "both hosts and their cells", |page| {
            [
                "host-console-a",
                "host-console-b",
                "logic.greet",
                "test.faulty",
            ]
            .iter()
            .all(|text| page.contains(text))
        })
        .await;
    let faulty_on = browser.text("tr[data-cell='test.faulty']").await.unwrap();
    assert!(faulty_on.contains("host-console-b"), "{faulty_on}");
    assert!(!faulty_on.contains("host-console-a"), "{faulty_on}");
    let version = server.bus().await.client().server_info().version;
    let on_nats = format!("nats-console v{version}");
    for host in ["host-console-a", "host-console-b"] {
        eventually(SHOWN, "each host's NATS server and uptime", || async {
            let nats = browser.text(&format!("td[data-nats='{host}']")).await;
            // Started seconds ago.
            let up = browser.text(&format!("td[data-uptime='{host}']")).await;
            let seconds = up
                .as_deref()
                .and_then(|u| u.strip_suffix(" s")?.parse::<u64>().ok());
            match (nats, seconds) {
                (Some(nats), Some(0..120)) if nats == on_nats => Ok(()),
                (nats, _) => Err(format!("{host}: server {nats:?}, up {up:?}")),
            }
        })
        .await;
    }

    // Four slow requests at a time to test.faulty (4 running slots) on b.
    let bus = server.bus().await;
    let load = tokio::spawn(async move {
        loop {
            let sleep = json!({"action": "sleep", "ms": 150});
            let calls = (0..4).map(|_| request_envelope(&bus, "test.faulty", sleep.clone()));
            for reply in futures_util::future::join_all(calls).await {
                assert!(reply.error.is_none(), "{reply:?}");
            }
        }
    });
    eventually(SHOWN, "host b's busy slots on the lattice", || async {
        let slots = browser.text("td[data-slots='host-console-b']").await;
        let busy = slots
            .as_deref()
            .and_then(|s| s.split(" / ").next()?.parse::<u32>().ok());
        match busy {
            // greet's 16 slots and faulty's 4.
            Some(1..) if slots.as_deref().is_some_and(|s| s.ends_with(" / 20")) => Ok(()),
            _ => Err(format!("{slots:?}")),
        }
    })
    .await;
    browser.screenshot("lattice").await;

    browser
        .goto(&format!("{}/cells/test.faulty", console.base()))
        .await;
    let host = "host-console-b";
    eventually(
        SHOWN,
        "p50, p99 and busy slots of the slow cell",
        || async {
            let p50 = number(&browser, &format!("td[data-p50='{host}']")).await;
            let p99 = number(&browser, &format!("td[data-p99='{host}']")).await;
            let busy = number(&browser, &format!("td[data-busy='{host}']")).await;
            let slots = number(&browser, &format!("td[data-slots='{host}']")).await;
            // 150 ms each: the median in the bucket from 100 to 200 ms, the
            // 99th percentile there or (a slow one) in the next.
            let within = |p: Option<f64>, max: f64| p.is_some_and(|ms| (100.0..=max).contains(&ms));
            match (within(p50, 200.0) && within(p99, 500.0), busy, slots) {
                (true, Some(b), Some(4.0)) if b >= 1.0 => Ok(()),
                _ => Err(format!(
                    "p50 {p50:?} p99 {p99:?} busy {busy:?} of {slots:?}"
                )),
            }
        },
    )
    .await;
    load.abort();

    browser.goto(console.base()).await;
    browser
        .wait_for_text(SHOWN, "the lattice again", |page| {
            page.contains("host-console-a")
        })
        .await;
    a.kill();
    // The heartbeat bound, plus a tick of the page and one of discovery.
    let bound = DEAD_AFTER + Duration::from_secs(3);
    let gone = browser
        .wait_for_text(SHOWN, "the killed host to leave the page", |page| {
            !page.contains("host-console-a") && page.contains("host-console-b")
        })
        .await;
    assert!(
        gone <= bound,
        "the killed host stayed {gone:?}, over {bound:?}"
    );
    assert_same_origin(&browser, console.base()).await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cells_request_count_rises_on_its_page_while_requests_run() {
    let host = HostProcess::local(
        &[greet()],
        &["--http", "127.0.0.1:0", "--console", "127.0.0.1:0"],
    );
    let base = format!("http://{}", host.console_addr());
    let http = host.http_addr();
    let browser = Browser::start().await;
    browser.goto(&format!("{base}/cells/logic.greet")).await;
    browser
        .wait_for_text(SHOWN, "the cell's page with its contract", |page| {
            page.contains("logic.greet")
                && page.contains("Contract: input")
                && page.contains("name")
        })
        .await;
    let requests = || async {
        browser
            .text("td[data-requests]")
            .await
            .and_then(|t| t.parse::<u64>().ok())
    };
    let before = requests().await.expect("a request count");
    let load = std::thread::spawn(move || {
        for _ in 0..20 {
            let reply = curl(&["-d", r#"{"name":"Ada"}"#, &format!("http://{http}/greet")]);
            assert_eq!(reply.status, 200, "{}", reply.body);
        }
    });
    eventually(SHOWN, "the request count to rise on the page", || async {
        match requests().await.unwrap_or(before) {
            now if now >= before + 20 => Ok(()),
            now => Err(format!("the page shows {now} requests (from {before})")),
        }
    })
    .await;
    load.join().expect("every request answered");
    // The requests were within the last 10 s: their percentiles show (in
    // ms), and the cell's 16 running slots.
    eventually(SHOWN, "p50, p99 and the running slots", || async {
        let p50 = number(&browser, "td[data-p50]").await;
        let p99 = number(&browser, "td[data-p99]").await;
        let slots = number(&browser, "td[data-slots]").await;
        match (p50, p99, slots) {
            (Some(p50), Some(p99), Some(16.0)) if p50 > 0.0 && p99 >= p50 => Ok(()),
            other => Err(format!("p50, p99, slots: {other:?}")),
        }
    })
    .await;
    assert_percentiles_are_computed_right(&browser).await;
    assert_no_stray_text(&browser).await;
    browser.screenshot("cell").await;
    assert_same_origin(&browser, &base).await;
    browser.close().await;
}

/// The view holds elements only: no stray text (an absent part drawn as
/// the text "null").
async fn assert_no_stray_text(browser: &Browser) {
    let script = "return [...document.getElementById('view').childNodes]\
        .filter((n) => n.nodeType === Node.TEXT_NODE).map((n) => n.textContent)";
    let stray = browser.client().execute(script, vec![]).await.unwrap();
    assert_eq!(stray, json!([]), "text directly in the view");
}

/// The page's percentile arithmetic, on histograms whose answers are
/// known (bounds 10, 20 and 50 µs, then the bucket past them).
async fn assert_percentiles_are_computed_right(browser: &Browser) {
    let script = r#"
        const b = [10, 20, 50];
        return [
            percentile(b, [0, 0, 0, 0], [2, 2, 0, 0], 0.5),
            percentile(b, [0, 0, 0, 0], [2, 2, 0, 0], 0.99),
            percentile(b, [1, 1, 0, 0], [1, 1, 4, 0], 0.5),
            percentile(b, [0, 0, 0, 0], [0, 0, 0, 5], 0.5),
            percentile(b, [5, 0, 0, 0], [1, 0, 0, 0], 0.5),
            percentile(b, [3, 0, 0, 0], [3, 0, 0, 0], 0.5),
            percentile(b, [0, 0, 0], [1, 0, 0], 0.5),
        ].map((p) => p && { us: Math.round(p.us * 100) / 100, over: p.over });"#;
    let answers = browser.client().execute(script, vec![]).await.unwrap();
    assert_eq!(
        answers,
        json!([
            {"us": 10, "over": false},
            {"us": 19.8, "over": false},
            {"us": 35, "over": false},
            {"us": 50, "over": true},
            null,
            null,
            null,
        ]),
        "the median of 2 at ≤10 µs and 2 at ≤20 µs interpolates to 10 µs, the \
         99th to 19.8; only what came between two readings counts; past the \
         last bound is 'over' it; counters that went down (a new version), no \
         message, or a histogram of another shape have none"
    );
}

/// A breaker that keeps opening: each opening is counted on its host,
/// arrives in discovery and on the cell's page over NATS, and past three
/// openings the console advises looking at the target's failed flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_openings_arrive_in_discovery_and_become_advice() {
    let server = NatsServer::start();
    let url = server.url();
    let (caller, target) = tripping_pair();
    let cells = [caller.path().to_path_buf(), target.path().to_path_buf()];
    let _host = HostProcess::serve(&url, "host-breaker", &cells, &[]);
    let bus = server.bus().await;
    // A first sample before any opening: openings are counted from it.
    let console = Console::with(&url, &["--advice-window-secs", "3"]);
    eventually(SHOWN, "the console to see the caller", || async {
        let cell = curl(&[&format!("{}/api/cells/test.caller", console.base())]);
        match cell.status {
            200 => Ok(()),
            status => Err(format!("{status}: {}", cell.body)),
        }
    })
    .await;
    // Each call that reaches the target traps it: the breaker opens at
    // once (failures = 1), and after 1 ms lets a probe through, which
    // fails and opens it again.
    let panic = json!({"action": "call", "cell": "test.target", "payload": {"action": "panic"}});
    let opened = eventually(SHOWN, "five openings in discovery", || async {
        request_envelope(&bus, "test.caller", panic.clone()).await;
        let hosts = cbs_host::discovery::list(
            bus.client(),
            Duration::from_millis(100),
            Duration::from_secs(2),
        )
        .await
        .map_err(|e| e.to_string())?;
        let breaker = hosts
            .iter()
            .flat_map(|h| &h.cells)
            .find(|c| c.id == "test.caller")
            .and_then(|c| c.breakers.get("test.target").copied());
        match breaker {
            Some(b) if b.opened >= 5 => Ok(b.opened),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    eventually(SHOWN, "the openings on the cell's page", || async {
        let cell = curl(&[&format!("{}/api/cells/test.caller", console.base())]).json();
        let shown = cell["hosts"][0]["breakers"]["test.target"]["opened"].as_u64();
        match shown {
            Some(n) if n >= opened => Ok(()),
            _ => Err(format!("{cell}")),
        }
    })
    .await;
    eventually(SHOWN, "the advice", || async {
        let advice = curl(&[&format!("{}/api/advice", console.base())]).json();
        let found = advice["advice"].as_array().and_then(|all| {
            all.iter()
                .find(|a| a["kind"] == "breaker_opening" && a["cell"] == "test.caller")
        });
        match found {
            Some(a) if a["command"] == "cbs flows --cell test.target --failed" => Ok(()),
            _ => Err(format!("{advice}")),
        }
    })
    .await;
}

/// Views visited one after another in one tab each show at once: a page
/// the browser keeps for "back" closes its stream when left (a browser
/// opens six connections to one origin, and the seventh view would wait
/// for one of them to time out), and follows again when shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_visited_in_one_tab_each_show_at_once() {
    let host = HostProcess::local(&[greet()], &["--console", "127.0.0.1:0"]);
    let base = format!("http://{}", host.console_addr());
    let browser = Browser::start().await;
    let pages = ["/", "/cells/logic.greet", "/flows", "/advice", "/releases"];
    // Ten visits: past the six connections, then back to a kept page.
    for path in pages.iter().chain(&pages) {
        let started = Instant::now();
        // (Loading waits for a connection too.)
        browser.goto(&format!("{base}{path}")).await;
        eventually(SHOWN, &format!("{path} drawn"), || async {
            match browser.text("#updated").await {
                Some(updated) if updated.starts_with("updated ") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "{path} took {took:?} to show"
        );
    }
    browser.client().back().await.unwrap();
    let updated = || async { browser.text("#updated").await.unwrap_or_default() };
    let before = updated().await;
    eventually(
        Duration::from_secs(5),
        "the page shown again to follow its stream",
        || async {
            match updated().await {
                now if now.starts_with("updated ") && now != before => Ok(()),
                now => Err(now),
            }
        },
    )
    .await;
    browser.close().await;
}

/// The live redraws keep a keyboard user's place: the link that had the
/// focus has it again after each redraw; and the status line, a live
/// region a screen reader reads out, stays quiet while nothing changes
/// (the time of the last update is beside it, outside the region).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_updates_keep_the_keyboard_focus_and_a_quiet_status_line() {
    let host = HostProcess::local(&[greet()], &["--console", "127.0.0.1:0"]);
    let base = format!("http://{}", host.console_addr());
    let browser = Browser::start().await;
    browser.goto(&base).await;
    browser
        .wait_for_text(SHOWN, "the cell's link", |page| {
            page.contains("logic.greet")
        })
        .await;
    // Focus the link as Tab would, then count what changes in two redraws.
    let script = r#"
        const done = arguments[0];
        document.querySelector("tr[data-cell='logic.greet'] a").focus();
        let said = 0;
        new MutationObserver(() => said++).observe(document.getElementById("status"),
            { childList: true, characterData: true, subtree: true });
        let redraws = 0;
        const observer = new MutationObserver(() => {
            if (++redraws < 2) return;
            observer.disconnect();
            const active = document.activeElement;
            done({ focused: active.getAttribute("href"), said, status: document.getElementById("status").textContent });
        });
        observer.observe(document.getElementById("view"), { childList: true });
    "#;
    let seen = browser
        .client()
        .execute_async(script, vec![])
        .await
        .unwrap();
    assert_eq!(
        seen,
        json!({"focused": "/cells/logic.greet", "said": 0, "status": "live"}),
        "after two redraws"
    );
    browser.close().await;
}

/// The console's URLs are outside input: what cannot be a cell id is
/// refused before any lookup, a cell nothing serves is a 404 problem, and
/// every answer carries the policy that keeps the browser on this origin.
#[test]
fn the_console_answers_bad_paths_with_problems_and_its_policy_on_everything() {
    let host = HostProcess::local(&[greet()], &["--console", "127.0.0.1:0"]);
    let base = format!("http://{}", host.console_addr());
    let long = "a".repeat(300);
    for (path, status) in [
        ("/api/cells/logic.greet", 200),
        ("/api/cells/no.such_cell", 404),
        ("/api/cells/..%2F..%2Fetc", 404),
        ("/api/cells/%00", 404),
        (&format!("/api/cells/{long}") as &str, 404),
        ("/events/cells/not%20a%20cell", 404),
        ("/nowhere", 404),
        ("/", 200),
    ] {
        let reply = curl(&[&format!("{base}{path}")]);
        assert_eq!(reply.status, status, "{path}: {}", reply.body);
        let policy = reply.header("content-security-policy").unwrap_or_default();
        assert!(policy.starts_with("default-src 'self'"), "{path}: {policy}");
        if status == 404 {
            assert_eq!(
                reply.header("content-type"),
                Some("application/problem+json"),
                "{path}"
            );
        }
    }
    let cell = curl(&[&format!("{base}/api/cells/logic.greet")]).json();
    assert_eq!(cell["input"]["required"][0], "name", "{cell}");
}

/// A durable cell's dead letter shows on its page with its error, and
/// "inspect" shows the message it kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_shows_with_its_error_and_its_message_on_inspection() {
    const CELL: &str = "test.durable";
    let cell = CellToml::faulty(CELL)
        .durable(DurableSpec {
            max_deliver: 2,
            backoff_ms: vec![10],
            ..DurableSpec::default()
        })
        .write();
    let builder = cbs_tests::builder(Arc::new(LocalBus::new()))
        .console("127.0.0.1:0".parse().unwrap(), Default::default());
    let host = TestHost::start(builder, &[cell.path().to_path_buf()]).await;
    let base = format!("http://{}", host.host.console_addr().unwrap());
    let poison = envelope_to(CELL, &json!({"action": "fail", "message": "never works"}));
    let log = host.body().durable().clone();
    log.publish(
        "cbs-durable.test.durable",
        &poison.id,
        poison.to_vec().into(),
    )
    .await
    .unwrap();

    let browser = Browser::start().await;
    browser
        .goto(&format!("{base}/cells/{CELL}/dead-letters"))
        .await;
    browser
        .wait_for_text(SHOWN, "the dead letter and its error", |page| {
            page.contains("invalid_input")
                && page.contains("never works")
                && page.contains(&poison.id)
        })
        .await;
    let inspect = browser
        .client()
        .find(Locator::Css("button.inspect"))
        .await
        .expect("an inspect button");
    inspect.click().await.expect("a click");
    let shown = browser.text("#letter").await.unwrap_or_default();
    assert!(shown.contains("\"action\": \"fail\""), "{shown}");
    assert_no_stray_text(&browser).await;
    browser.screenshot("dead-letters").await;
    assert_same_origin(&browser, &base).await;
    browser.close().await;
}

/// On one host in process (`cbs-host run --console`), a signed-in user
/// replays a dead letter from the page once the cell it called serves: the
/// message goes back into the embedded store and is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_replayed_from_the_page_in_process() {
    const CELL: &str = "test.durable";
    let cell = CellToml::faulty(CELL)
        .durable(DurableSpec {
            max_deliver: 1,
            ..DurableSpec::default()
        })
        .calls(&["logic.greet"])
        .write();
    let users = cbs_host::http::auth::Authenticator::new(
        vec!["s3cret".into()],
        None,
        cbs_host::http::auth::JwtRules::default(),
    )
    .unwrap();
    let actions = cbs_host::console::actions::Actions::new(users).unwrap();
    let options = cbs_host::console::Options {
        actions: Some(Arc::new(actions)),
        ..Default::default()
    };
    let builder = cbs_tests::builder(Arc::new(LocalBus::new()))
        .console("127.0.0.1:0".parse().unwrap(), options);
    let host = TestHost::start(builder, &[cell.path().to_path_buf()]).await;
    let base = format!("http://{}", host.host.console_addr().unwrap());
    let call = json!({"action": "call", "cell": "logic.greet", "payload": {"name": "Ada"}});
    let message = envelope_to(CELL, &call);
    let log = host.body().durable().clone();
    log.publish(
        "cbs-durable.test.durable",
        &message.id,
        message.to_vec().into(),
    )
    .await
    .unwrap();
    eventually(SHOWN, "the dead letter", || async {
        match log
            .dead_letters(CELL)
            .await
            .map_err(|e| e.to_string())?
            .len()
        {
            1 => Ok(()),
            n => Err(format!("{n} dead letters")),
        }
    })
    .await;
    // The fix: the cell it calls is served now.
    let greet = host.body().load(&greet()).await.unwrap();
    host.body().serve(greet).await.unwrap();

    let browser = Browser::start().await;
    browser
        .goto(&format!("{base}/cells/{CELL}/dead-letters"))
        .await;
    browser
        .wait_for_text(SHOWN, "the dead letter", |page| page.contains(&message.id))
        .await;
    browser.sign_in("s3cret").await;
    browser.click("button.replay", SHOWN).await;
    browser
        .wait_for_text(SHOWN, "no dead letter left", |page| {
            page.contains("No dead letters.")
        })
        .await;
    let handled = host.cell(CELL);
    eventually(SHOWN, "the replayed message handled", || async {
        match handled.stats.requests() - handled.stats.errors() {
            0 => Err(format!("{}", handled.stats.to_json())),
            _ => Ok(()),
        }
    })
    .await;
    assert_same_origin(&browser, &base).await;
    browser.close().await;
}

/// The releases view lists the audit trail: a watching host's trust
/// record, checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_releases_view_lists_the_audit_trail() {
    let server = NatsServer::start();
    let url = server.url();
    let _host = HostProcess::serve(&url, "host-console-w", &[], &["--watch"]);
    let console = Console::start(&url);
    let browser = Browser::start().await;
    browser.goto(&format!("{}/releases", console.base())).await;
    browser
        .wait_for_text(SHOWN, "the host's trust record", |page| {
            page.contains("trust") && page.contains("host host-console-w: no --trust")
        })
        .await;
    let check = browser.text("tr[data-check]").await.unwrap_or_default();
    assert!(
        check.contains("claimed"),
        "an anonymous writer's event: {check}"
    );
    browser.screenshot("releases").await;
    assert_same_origin(&browser, console.base()).await;
    browser.close().await;
}

/// A flow that fails at its second hop, on another host, is listed among
/// the failed flows, and its page shows every hop in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_flow_appears_with_every_hop_in_its_timeline() {
    let server = NatsServer::start();
    let url = server.url();
    let _a = HostProcess::serve(&url, "host-flow-a", &[faulty()], &[]);
    let _b = HostProcess::serve(&url, "host-flow-b", &[greet()], &[]);
    let call = json!({"action": "call", "cell": "logic.greet", "payload": {"name": 5}});
    let reply = request_envelope(&server.bus().await, "test.faulty", call).await;
    assert!(reply.error.is_some(), "the flow fails: {reply:?}");
    let flow = reply.correlation_id;

    let console = Console::start(&url);
    let browser = Browser::start().await;
    browser.goto(&format!("{}/flows", console.base())).await;
    browser
        .wait_for_text(SHOWN, "the failed flow", |page| page.contains(&flow))
        .await;
    browser.screenshot("flows").await;
    let link = browser
        .client()
        .find(Locator::Css(&format!(
            "tr[data-flow='{flow}'] a[href^='/flows/']"
        )))
        .await
        .expect("a link to the flow");
    link.click().await.expect("a click");
    browser
        .wait_for_text(SHOWN, "the flow's two hops", |page| {
            page.contains("2 hop(s)")
                && page.contains("host-flow-a")
                && page.contains("host-flow-b")
        })
        .await;
    let hops = browser.texts("tr[data-hop]").await;
    assert_eq!(hops.len(), 2, "{hops:?}");
    assert!(
        hops[0].contains("host-flow-a") && hops[0].contains("test.faulty"),
        "{hops:?}"
    );
    assert!(
        hops[1].contains("host-flow-b") && hops[1].contains("logic.greet"),
        "{hops:?}"
    );
    assert!(
        hops.iter().all(|h| h.contains("contract_violation")),
        "{hops:?}"
    );
    browser.screenshot("flow").await;
    assert_same_origin(&browser, console.base()).await;
    browser.close().await;
}

/// Advice appears for a cell run past its capacity, naming the refusals
/// and the change to make, and goes once the change is applied (a version
/// that runs more at once serves) while the load goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advice_appears_for_a_cell_past_its_capacity_and_goes_once_applied() {
    let narrow = CellToml::from_dir(&greet())
        .limits(|l| {
            l.concurrency = 1;
            l.queue = 0;
        })
        .write();
    let options = cbs_host::console::Options {
        advice_window: Duration::from_secs(3),
        actions: None,
    };
    let builder = cbs_tests::builder(Arc::new(LocalBus::new()))
        .console("127.0.0.1:0".parse().unwrap(), options);
    let host = Arc::new(TestHost::start(builder, &[narrow.path().to_path_buf()]).await);
    let base = format!("http://{}", host.host.console_addr().unwrap());
    let load = {
        let host = host.clone();
        tokio::spawn(async move {
            loop {
                let calls = (0..16).map(|_| host.call("logic.greet", json!({"name": "Ada"})));
                futures_util::future::join_all(calls).await;
                // Other tasks (the console's sampling) get their turn.
                tokio::task::yield_now().await;
            }
        })
    };
    let browser = Browser::start().await;
    browser.goto(&format!("{base}/advice")).await;
    browser
        .wait_for_text(SHOWN, "capacity advice", |page| {
            page.contains("logic.greet is past its capacity")
                && page.contains("answered \"capacity\"")
                && page.contains("raise [limits] concurrency")
        })
        .await;
    browser.screenshot("advice").await;

    let wide = CellToml::from_dir(&greet())
        .limits(|l| l.concurrency = 64)
        .write();
    let next = host.body().load(wide.path()).await.unwrap();
    host.body().replace(next).await.unwrap();
    browser
        .wait_for_text(SHOWN, "the advice to go", |page| {
            page.contains("No advice") && !page.contains("past its capacity")
        })
        .await;
    load.abort();
    let refused = host.cell("logic.greet").stats.to_json()["errors_by_code"]["capacity"].clone();
    assert!(refused.is_null(), "the new version refused none: {refused}");
    assert_same_origin(&browser, &base).await;
    browser.close().await;
}

/// A durable cell's message that failed while the cell it calls was not
/// served is replayed from the page by a signed-in user once that cell
/// serves, and handled; the audit trail names who replayed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_replayed_from_the_page_and_handled() {
    const CELL: &str = "test.durable";
    let server = NatsServer::start();
    let url = server.url();
    let cell = CellToml::faulty(CELL)
        .durable(DurableSpec {
            max_deliver: 1,
            ..DurableSpec::default()
        })
        .calls(&["logic.greet"])
        .write();
    let _a = HostProcess::serve(&url, "host-replay-a", &[cell.path().to_path_buf()], &[]);
    let bus = server.bus().await;
    let js = async_nats::jetstream::new(bus.client().clone());
    let call = json!({"action": "call", "cell": "logic.greet", "payload": {"name": "Ada"}});
    let message = envelope_to(CELL, &call);
    cbs_host::durable::publish(&js, "cbs-durable.test.durable", &message)
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "the dead letter", || async {
        match cbs_host::durable::dead_letters(&js, CELL)
            .await
            .unwrap()
            .len()
        {
            1 => Ok(()),
            n => Err(format!("{n} dead letters")),
        }
    })
    .await;
    // The fix: the cell it calls is served now.
    let _b = HostProcess::serve(&url, "host-replay-b", &[greet()], &[]);
    let (_tokens, console) = acting_console(&url);

    let browser = Browser::start().await;
    browser
        .goto(&format!("{}/cells/{CELL}/dead-letters", console.base()))
        .await;
    browser
        .wait_for_text(SHOWN, "the dead letter", |page| page.contains(&message.id))
        .await;
    browser.sign_in("s3cret").await;
    browser
        .wait_for_text(SHOWN, "the replay button", |page| {
            page.contains("replay all")
        })
        .await;
    let replay = browser
        .client()
        .find(Locator::Css("button.replay"))
        .await
        .expect("a replay button");
    replay.click().await.unwrap();
    browser
        .wait_for_text(SHOWN, "no dead letter left, and who replayed it", |page| {
            page.contains("No dead letters.")
                && page.contains("done")
                && page.contains("by token 1")
        })
        .await;
    // Handled: the flow's hop on the durable cell succeeded.
    let query = cbs_host::flows::Query {
        correlation_id: Some(message.correlation_id.clone()),
        ..Default::default()
    };
    eventually(SHOWN, "the replayed message handled", || async {
        let hops = cbs_host::flows::query(&bus, &query, Duration::from_millis(300), SHOWN)
            .await
            .map_err(|e| e.to_string())?;
        match hops
            .iter()
            .any(|h| &*h.cell == CELL && h.outcome.to_string() == "ok")
        {
            true => Ok(()),
            false => Err(format!("{hops:?}")),
        }
    })
    .await;
    browser.goto(&format!("{}/releases", console.base())).await;
    browser
        .wait_for_text(SHOWN, "the replay in the audit trail", |page| {
            page.contains("replay")
                && page.contains("token 1 in the console replayed dead letter(s)")
        })
        .await;
    assert_same_origin(&browser, console.base()).await;
    browser.close().await;
}

/// Actions are refused on a read-only console, without a signed-in user,
/// and from another origin; each refusal is a problem saying what to do.
#[test]
fn actions_need_the_flag_a_user_and_the_consoles_own_origin() {
    let server = NatsServer::start();
    let url = server.url();
    let read_only = Console::start(&url);
    let (_tokens, acting) = acting_console(&url);
    let replay = |base: &str, headers: &[&str]| {
        let mut args = vec!["-X", "POST", "-d", r#"{"all":true}"#];
        for h in headers {
            args.extend(["-H", h]);
        }
        let url = format!("{base}/api/cells/test.durable/dead-letters/replay");
        args.push(&url);
        let reply = curl(&args.iter().map(|s| &**s).collect::<Vec<_>>());
        (reply.status, reply.body)
    };
    let origin = |base: &str| format!("Origin: {base}");
    let (status, body) = replay(
        read_only.base(),
        &[&origin(read_only.base()), "Authorization: Bearer s3cret"],
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--allow-actions"), "{body}");
    let (status, body) = replay(acting.base(), &[&origin(acting.base())]);
    assert_eq!(status, 401, "{body}");
    let (status, body) = replay(
        acting.base(),
        &[&origin(acting.base()), "Authorization: Bearer guess"],
    );
    assert_eq!(status, 401, "{body}");
    let (status, body) = replay(
        acting.base(),
        &[
            "Origin: http://evil.example",
            "Authorization: Bearer s3cret",
        ],
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = replay(
        acting.base(),
        &[&origin(acting.base()), "Authorization: Bearer s3cret"],
    );
    assert_eq!(status, 200, "a signed-in user from the page may: {body}");
}

/// The release actions take outside input too: a bundle upload over the
/// bound is refused before it is read, bytes that are not a bundle and a
/// cell that is not deployed are problems saying why, a path that cannot
/// be a cell id is a 404; the console goes on answering.
#[test]
fn release_actions_refuse_bad_uploads_and_cells_with_problems() {
    let server = NatsServer::start();
    let url = server.url();
    let (_tokens, console) = acting_console(&url);
    let base = console.base();
    let origin = format!("Origin: {base}");
    let post = |path: &str, body: &[&str]| {
        let target = format!("{base}{path}");
        let mut args = vec![
            "-X",
            "POST",
            "-H",
            &origin,
            "-H",
            "Authorization: Bearer s3cret",
        ];
        args.extend(body);
        args.push(&target);
        curl(&args)
    };
    let big = tempfile::NamedTempFile::new().unwrap();
    big.as_file()
        .set_len(cbs_host::console::deployer::MAX_UPLOAD as u64 + 1)
        .unwrap();
    let upload = format!("@{}", big.path().display());
    let reply = post("/api/deploy/preview", &["--data-binary", &upload]);
    assert_eq!(reply.status, 413, "{}", reply.body);
    let reply = post("/api/deploy", &["--data-binary", "not a bundle"]);
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert!(reply.body.contains("bundle"), "{}", reply.body);
    let reply = post("/api/cells/nowhere.cell/rollback", &[]);
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert!(reply.body.contains("not deployed"), "{}", reply.body);
    let reply = post("/api/cells/nowhere.cell/undeploy", &[]);
    assert_eq!(reply.status, 422, "{}", reply.body);
    let reply = post("/api/cells/..%2F..%2Fetc/rollback", &[]);
    assert_eq!(reply.status, 404, "{}", reply.body);
    let lattice = curl(&[&format!("{base}/api/lattice")]);
    assert_eq!(lattice.status, 200, "still answering: {}", lattice.body);
}

/// The version each host serves of `cell`, by host.
async fn served_versions(bus: &cbs_host::bus::nats::NatsBus, cell: &str) -> Vec<(String, String)> {
    let quiet = Duration::from_millis(300);
    let hosts = cbs_host::discovery::list(bus.client(), quiet, SHOWN)
        .await
        .unwrap_or_default();
    hosts
        .into_iter()
        .filter_map(|h| {
            let version = h.cells.iter().find(|c| c.id == cell)?.version.clone();
            Some((h.host, version))
        })
        .collect()
}

/// Waits until exactly `hosts` serve `cell`, each at `version`.
async fn wait_served(
    bus: &cbs_host::bus::nats::NatsBus,
    cell: &str,
    hosts: &[&str],
    version: &str,
) {
    let want: Vec<(String, String)> = hosts
        .iter()
        .map(|h| ((*h).to_owned(), version.to_owned()))
        .collect();
    eventually(SHOWN, &format!("{cell} {version} on {hosts:?}"), || async {
        let served = served_versions(bus, cell).await;
        if served == want {
            Ok(())
        } else {
            Err(format!("{served:?}"))
        }
    })
    .await;
}

const WATCH: &[&str] = &["--watch", "--drain-timeout-ms", "5000"];

/// A user signed in on a console with actions rolls a cell back from its
/// page: after a confirmation the previous version serves again on every
/// host, the page shows the outcome per host, and the audit trail names
/// the user. Before, the same rollback is refused on a read-only console
/// and without a signed-in user, and changes nothing. Undeploy, confirmed
/// the same way, stops the cell on every host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_clicked_in_the_page_brings_the_previous_version_back_on_every_host() {
    let releases = cbs_tests::bundles::releases();
    let server = NatsServer::start();
    let url = server.url();
    let _a = HostProcess::serve(&url, "host-a", &[], WATCH);
    let _b = HostProcess::serve(&url, "host-b", &[], WATCH);
    for bundle in [&releases.v1, &releases.v2] {
        let out = cbs(&["deploy", bundle.to_str().unwrap(), "--nats", &url]);
        assert!(out.status.success(), "{out:?}");
    }
    let bus = server.bus().await;
    wait_served(&bus, UPPER, &["host-a", "host-b"], "0.2.0").await;

    let read_only = Console::start(&url);
    let (_tokens, acting) = acting_console(&url);
    let rollback = |base: &str, token: Option<&str>| {
        let origin = format!("Origin: {base}");
        let bearer = token.map(|t| format!("Authorization: Bearer {t}"));
        let mut args = vec!["-X", "POST", "-H", origin.as_str()];
        if let Some(bearer) = &bearer {
            args.extend(["-H", bearer.as_str()]);
        }
        let target = format!("{base}/api/cells/{UPPER}/rollback");
        args.push(&target);
        let reply = curl(&args);
        (reply.status, reply.body)
    };
    let (status, body) = rollback(read_only.base(), Some("s3cret"));
    assert_eq!(status, 403, "a read-only console: {body}");
    assert!(body.contains("--allow-actions"), "{body}");
    let (status, body) = rollback(acting.base(), None);
    assert_eq!(status, 401, "nobody signed in: {body}");
    let browser = Browser::start().await;
    browser
        .goto(&format!("{}/cells/{UPPER}", read_only.base()))
        .await;
    browser
        .wait_for_text(SHOWN, "the read-only cell page", |page| {
            page.contains("0.1.0") && page.contains("read-only") && !page.contains("Roll back")
        })
        .await;
    // The refusals changed nothing.
    wait_served(&bus, UPPER, &["host-a", "host-b"], "0.2.0").await;

    browser
        .goto(&format!("{}/cells/{UPPER}", acting.base()))
        .await;
    browser
        .wait_for_text(SHOWN, "the versions", |page| page.contains("Versions"))
        .await;
    assert!(
        !browser.page_text().await.contains("Roll back"),
        "not signed in yet"
    );
    browser.sign_in("s3cret").await;
    browser.click("#rollback", SHOWN).await;
    browser.accept_confirm(SHOWN).await;
    browser
        .wait_for_text(SHOWN, "the outcome per host", |page| {
            page.contains("rollback text.upper 0.1.0: serving")
                && page.contains("host-a")
                && page.contains("host-b")
        })
        .await;
    let outcomes = browser.texts("#outcome tr[data-outcome='serving']").await;
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    wait_served(&bus, UPPER, &["host-a", "host-b"], "0.1.0").await;
    browser.screenshot("rollback").await;

    browser.click("#undeploy", SHOWN).await;
    browser.accept_confirm(SHOWN).await;
    browser
        .wait_for_text(SHOWN, "the undeploy's outcome", |page| {
            page.contains("undeploy text.upper 0.1.0: stopped")
        })
        .await;
    let stopped = browser.texts("#outcome tr[data-outcome='stopped']").await;
    assert_eq!(stopped.len(), 2, "{stopped:?}");
    wait_served(&bus, UPPER, &[], "").await;

    browser.goto(&format!("{}/releases", acting.base())).await;
    browser
        .wait_for_text(SHOWN, "both actions audited with the user", |page| {
            page.contains("token 1 in the console: serving on 2 host(s)")
                && page.contains("token 1 in the console: stopped on host-a, host-b")
        })
        .await;
    assert_same_origin(&browser, acting.base()).await;
    browser.close().await;
}

/// A bundle uploaded on the releases page shows the contract gate's
/// verdict before it goes out: a break within the major version is named
/// and not deployed unless forced; a compatible release deploys, and the
/// page shows it serving on each host, with its contract in the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_bundle_shows_the_contract_verdict_and_deploys_on_confirmation() {
    let releases = cbs_tests::bundles::releases();
    let tmp = tempfile::tempdir().unwrap();
    let breaking = cbs_tests::bundles::breaking_release(tmp.path(), "0.1.1");
    let server = NatsServer::start();
    let url = server.url();
    let _a = HostProcess::serve(&url, "host-a", &[], WATCH);
    let out = cbs(&["deploy", releases.v1.to_str().unwrap(), "--nats", &url]);
    assert!(out.status.success(), "{out:?}");
    let (_tokens, console) = acting_console(&url);
    let browser = Browser::start().await;
    browser.goto(&format!("{}/releases", console.base())).await;
    browser.sign_in("s3cret").await;
    let upload = |path: std::path::PathBuf| {
        let browser = &browser;
        async move {
            let input = browser
                .client()
                .wait()
                .at_most(SHOWN)
                .for_element(Locator::Id("bundle"))
                .await
                .expect("the bundle field");
            input.send_keys(path.to_str().unwrap()).await.unwrap();
            let form = browser
                .client()
                .form(Locator::Id("deploy-form"))
                .await
                .unwrap();
            form.submit().await.unwrap();
        }
    };
    upload(breaking).await;
    browser
        .wait_for_text(SHOWN, "the breaking verdict", |page| {
            page.contains("text.upper 0.1.1")
                && page.contains("Deployed now: 0.1.0")
                && page.contains("breaking")
                && page.contains("/lang")
        })
        .await;
    browser.click("#deploy", SHOWN).await;
    browser
        .wait_for_text(SHOWN, "the deploy held back", |page| {
            page.contains("bump the major version, or force it")
        })
        .await;
    let bus = server.bus().await;
    wait_served(&bus, UPPER, &["host-a"], "0.1.0").await;

    upload(releases.v2.clone()).await;
    browser
        .wait_for_text(SHOWN, "the compatible verdict", |page| {
            page.contains("text.upper 0.2.0") && page.contains("unchanged")
        })
        .await;
    browser.click("#deploy", SHOWN).await;
    browser.accept_confirm(SHOWN).await;
    browser
        .wait_for_text(SHOWN, "serving per host", |page| {
            page.contains("deploy text.upper 0.2.0: serving")
        })
        .await;
    assert_eq!(
        browser
            .texts("#outcome tr[data-outcome='serving']")
            .await
            .len(),
        1
    );
    wait_served(&bus, UPPER, &["host-a"], "0.2.0").await;
    browser
        .wait_for_text(SHOWN, "the deploy audited with its contract", |page| {
            page.contains("token 1 in the console: serving on 1 host(s)")
        })
        .await;
    browser.screenshot("releases-deploy").await;
    assert_same_origin(&browser, console.base()).await;
    browser.close().await;
}

/// Every view passes axe-core's WCAG 2 A and AA rules (2.0, 2.1 and 2.2),
/// each with data to draw: a lattice of two hosts, a cell whose calls
/// trip a breaker (its advice too), a dead letter, a failed flow, the
/// audit trail, and the sign-in form of a console with actions. Prints
/// what passed per view (`-- --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_view_passes_axe_cores_wcag_2_a_and_aa_rules() {
    let axe = cbs_tests::axe::script();
    let server = NatsServer::start();
    let url = server.url();
    let (caller, target) = tripping_pair();
    let durable = CellToml::faulty("test.durable")
        .durable(DurableSpec {
            max_deliver: 1,
            ..DurableSpec::default()
        })
        .write();
    let cells = [
        greet(),
        faulty(),
        caller.path().to_path_buf(),
        target.path().to_path_buf(),
        durable.path().to_path_buf(),
    ];
    let _a = HostProcess::serve(&url, "host-a11y-a", &cells, &[]);
    let _w = HostProcess::serve(&url, "host-a11y-w", &[], &["--watch"]);
    let tokens = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tokens.path(), "s3cret\n").unwrap();
    let console = Console::with(
        &url,
        &[
            "--advice-window-secs",
            "3",
            "--allow-actions",
            "--token-file",
            tokens.path().to_str().unwrap(),
        ],
    );
    let base = console.base().to_owned();
    eventually(SHOWN, "the console to see the caller", || async {
        match curl(&[&format!("{base}/api/cells/test.caller")]).status {
            200 => Ok(()),
            status => Err(status.to_string()),
        }
    })
    .await;

    let bus = server.bus().await;
    let call = json!({"action": "call", "cell": "logic.greet", "payload": {"name": 5}});
    let flow = request_envelope(&bus, "test.faulty", call)
        .await
        .correlation_id;
    let panic = json!({"action": "call", "cell": "test.target", "payload": {"action": "panic"}});
    // Advice counts openings between the console's samples: one opening
    // first, seen by the console, then more (an opening before the first
    // sample that shows the breaker is its baseline, not an increase).
    request_envelope(&bus, "test.caller", panic.clone()).await;
    eventually(SHOWN, "the console to see the breaker open", || async {
        let cell = curl(&[&format!("{base}/api/cells/test.caller")]).json();
        match cell["hosts"][0]["breakers"]["test.target"]["opened"].as_u64() {
            Some(n) if n >= 1 => Ok(()),
            _ => Err(format!("{cell}")),
        }
    })
    .await;
    for _ in 0..5 {
        request_envelope(&bus, "test.caller", panic.clone()).await;
    }
    let js = async_nats::jetstream::new(bus.client().clone());
    let poison = envelope_to(
        "test.durable",
        &json!({"action": "fail", "message": "never"}),
    );
    cbs_host::durable::publish(&js, "cbs-durable.test.durable", &poison)
        .await
        .unwrap();

    let views = [
        ("lattice", "/".to_owned(), "host-a11y-w"),
        ("cell", "/cells/test.caller".to_owned(), "Circuit breakers"),
        (
            "dead letters",
            "/cells/test.durable/dead-letters".to_owned(),
            "never",
        ),
        ("flows", "/flows".to_owned(), flow.as_str()),
        ("flow", format!("/flows/{flow}"), "hop(s)"),
        ("releases", "/releases".to_owned(), "host host-a11y-w"),
        (
            "advice",
            "/advice".to_owned(),
            "keep opening its circuit breaker",
        ),
    ];
    let browser = Browser::start().await;
    let mut failed = Vec::new();
    for (name, path, shows) in views {
        browser.goto(&format!("{base}{path}")).await;
        browser
            .wait_for_text(SHOWN, &format!("the {name} view with {shows:?}"), |page| {
                page.contains(shows)
            })
            .await;
        failed.extend(audit(&browser, &axe, name).await);
    }
    // Signed in, the dead letters have their replay buttons.
    browser
        .goto(&format!("{base}/cells/test.durable/dead-letters"))
        .await;
    browser.sign_in("s3cret").await;
    browser
        .wait_for_text(SHOWN, "the replay buttons", |page| {
            page.contains("replay all")
        })
        .await;
    failed.extend(audit(&browser, &axe, "dead letters (signed in)").await);
    // Signed in, the releases view has its deploy form.
    browser.goto(&format!("{base}/releases")).await;
    browser
        .wait_for_text(SHOWN, "the deploy form", |page| {
            page.contains("Deploy a bundle")
        })
        .await;
    failed.extend(audit(&browser, &axe, "releases (signed in)").await);
    assert!(
        failed.is_empty(),
        "accessibility violations:\n{}",
        failed.join("\n")
    );
    browser.close().await;
}

/// Runs axe on the page and prints its result; the violations, each
/// named with `view`.
async fn audit(browser: &Browser, axe: &str, view: &str) -> Vec<String> {
    let audit = cbs_tests::axe::audit(browser, axe).await;
    eprintln!(
        "axe-core {} (WCAG 2 A/AA), {view}: {} rules passed, {} violated, {} to review by hand {:?}\n  passed: {}",
        audit.version,
        audit.passes.len(),
        audit.violations.len(),
        audit.incomplete.len(),
        audit.incomplete,
        audit.passes.join(" ")
    );
    audit
        .violations
        .iter()
        .map(|v| format!("{view}: {v}"))
        .collect()
}

/// A measurement, not a check (`make console-bench`): a lattice of 10 hosts
/// serving 50 cells on one machine; how long the lattice page takes to show
/// every cell, and the bytes it transferred to get there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: make console-bench"]
async fn measure_the_first_render_of_a_lattice_of_ten_hosts_and_fifty_cells() {
    let server = NatsServer::start();
    let url = server.url();
    let cells: Vec<tempfile::TempDir> = (0..50)
        .map(|i| CellToml::faulty(&format!("bench.cell{i:02}")).write())
        .collect();
    let hosts: Vec<HostProcess> = (0..10)
        .map(|h| {
            let mine: Vec<_> = cells[h * 5..h * 5 + 5]
                .iter()
                .map(|c| c.path().to_path_buf())
                .collect();
            HostProcess::serve(&url, &format!("bench-host-{h}"), &mine, &[])
        })
        .collect();
    let console = Console::start(&url);
    let browser = Browser::start().await;
    // The first visit: the console computes its first snapshot for it.
    let started = Instant::now();
    browser.goto(console.base()).await;
    let shown = browser
        .wait_for_text(SHOWN, "every cell", |page| page.contains("Cells (50)"))
        .await;
    let total = started.elapsed();
    let script = "return performance.getEntriesByType('navigation').concat(\
        performance.getEntriesByType('resource')).map(e => [e.name, e.transferSize, e.encodedBodySize])";
    let entries = browser.client().execute(script, vec![]).await.unwrap();
    let snapshot = cbs_tests::curl::curl(&[&format!("{}/api/lattice", console.base())]);
    eprintln!("10 hosts, 50 cells: every cell shown {total:?} after the first navigation began (the page polled every 100 ms; {shown:?} of it after the load)");
    eprintln!("resources: {entries}");
    eprintln!(
        "one lattice snapshot: {} bytes of JSON",
        snapshot.body.len()
    );
    drop(hosts);
    browser.close().await;
}
