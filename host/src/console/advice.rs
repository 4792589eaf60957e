//! Advice: what an operator should change, computed from what the lattice
//! measured. The console samples the lattice on a task of its own (a
//! bounded history), and each piece of advice names its evidence and the
//! command that applies it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;

use super::view::Lattice;
use super::Source;

/// Samples kept: with the default window, one hour.
const MAX_SAMPLES: usize = 360;
/// Samples taken per window.
const SAMPLES_PER_WINDOW: u32 = 30;
/// A cell is idle after this many windows without a request.
const IDLE_WINDOWS: usize = 6;
/// Messages waiting before a growing lag is advice.
const LAG_FLOOR: u64 = 100;
/// Latency after a deploy counts as risen past this factor and margin.
const SLOWER_FACTOR: f64 = 1.5;
const SLOWER_MARGIN_US: u64 = 5_000;
/// A breaker that opened more often than this within [`BREAKER_WINDOW`]
/// is advice.
pub const BREAKER_OPENINGS: u64 = 3;
/// How far back breaker openings are counted: one hour whatever the
/// advice window (at most the history there is: an hour with the default
/// window).
pub const BREAKER_WINDOW: Duration = Duration::from_secs(3600);

/// How far back advice looks: refusals within it, lag growth over it,
/// idleness over [`IDLE_WINDOWS`] of it.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);

/// One piece of advice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Advice {
    /// `capacity`, `idle`, `falling_behind`, `slower_after_deploy` or
    /// `breaker_opening`.
    pub kind: &'static str,
    pub cell: String,
    pub title: String,
    /// What was measured, in words.
    pub evidence: String,
    /// What applies it.
    pub command: String,
}

/// The advice view.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AdviceView {
    pub at_ms: u64,
    /// The window advice looks back over, seconds.
    pub window_secs: u64,
    /// How much history there is, seconds.
    pub history_secs: u64,
    pub advice: Vec<Advice>,
}

/// One cell across its hosts at one sample.
#[derive(Debug, Clone, Default, PartialEq)]
struct Point {
    requests: u64,
    capacity: u64,
    latency_us: u64,
    lag: Option<u64>,
    versions: BTreeSet<String>,
    hosts: usize,
    desired: Option<String>,
    replicas: Option<u32>,
    /// Breaker openings so far by (host, call target).
    breakers: BTreeMap<(String, String), u64>,
}

#[derive(Debug, Clone)]
struct Sample {
    at_ms: u64,
    cells: BTreeMap<String, Point>,
}

impl Sample {
    fn of(lattice: &Lattice) -> Self {
        let mut cells: BTreeMap<String, Point> = BTreeMap::new();
        for host in &lattice.hosts {
            for served in &host.cells {
                let point = cells.entry(served.cell.clone()).or_default();
                point.requests += served.requests;
                point.capacity += served.errors_by_code.get("capacity").copied().unwrap_or(0);
                point.latency_us = point.latency_us.max(served.latency_us);
                if let Some(durable) = served.durable {
                    point.lag = Some(point.lag.unwrap_or(0).max(durable.lag));
                }
                point.versions.insert(served.version.clone());
                point.hosts += 1;
                for (target, breaker) in &served.breakers {
                    let key = (host.id.clone(), target.clone());
                    point.breakers.insert(key, breaker.opened);
                }
            }
        }
        for cell in &lattice.cells {
            if let Some(point) = cells.get_mut(&cell.id) {
                point.desired.clone_from(&cell.desired);
                point.replicas = cell.replicas;
            }
        }
        Self {
            at_ms: lattice.at_ms,
            cells,
        }
    }
}

/// The lattice's recent history and the advice drawn from it.
pub struct Advisor {
    window: Duration,
    samples: Mutex<VecDeque<Sample>>,
}

impl Advisor {
    pub fn new(window: Duration) -> Self {
        Self {
            window: window.max(Duration::from_millis(100)),
            samples: Mutex::default(),
        }
    }

    /// How often the lattice is sampled.
    pub fn every(&self) -> Duration {
        self.window / SAMPLES_PER_WINDOW
    }

    /// Samples `source` every [`Advisor::every`] until dropped or stopped.
    pub async fn sample(self: Arc<Self>, source: Arc<dyn Source>) {
        let mut tick = tokio::time::interval(self.every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match source.lattice().await {
                Ok(lattice) => self.record(&lattice),
                Err(e) => tracing::debug!(error = %e, "cannot sample the lattice for advice"),
            }
        }
    }

    fn record(&self, lattice: &Lattice) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        if samples.len() == MAX_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(Sample::of(lattice));
    }

    /// The advice now.
    pub fn view(&self) -> AdviceView {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let window_ms = self.window.as_millis() as u64;
        let (Some(newest), Some(oldest)) = (samples.back(), samples.front()) else {
            return AdviceView {
                window_secs: self.window.as_secs(),
                ..AdviceView::default()
            };
        };
        let mut advice = Vec::new();
        for (cell, now) in &newest.cells {
            let history: Vec<(u64, &Point)> = samples
                .iter()
                .filter_map(|s| s.cells.get(cell).map(|p| (s.at_ms, p)))
                .collect();
            let back = |ms: u64| at_or_before(&history, newest.at_ms.saturating_sub(ms));
            advice.extend(capacity(cell, now, back(window_ms), self.window));
            advice.extend(idle(cell, now, &history, newest.at_ms, window_ms));
            advice.extend(falling_behind(cell, now, back(window_ms), self.window));
            advice.extend(slower_after_deploy(cell, &history));
            advice.extend(breaker_opening(cell, &history));
        }
        AdviceView {
            at_ms: newest.at_ms,
            window_secs: self.window.as_secs(),
            history_secs: newest.at_ms.saturating_sub(oldest.at_ms) / 1000,
            advice,
        }
    }
}

/// The newest point at or before `at_ms`, or the oldest there is.
fn at_or_before<'a>(history: &[(u64, &'a Point)], at_ms: u64) -> Option<&'a Point> {
    history
        .iter()
        .rev()
        .find(|(ms, _)| *ms <= at_ms)
        .or(history.first())
        .map(|(_, p)| *p)
}

/// `90 s`, `5 min`, `1 h 30 min`.
fn seconds(window: Duration) -> String {
    let secs = window.as_secs().max(1);
    match (secs / 3600, secs % 3600 / 60, secs % 60) {
        (0, 0, s) => format!("{s} s"),
        (0, m, 0) => format!("{m} min"),
        (0, m, s) => format!("{m} min {s} s"),
        (h, 0, _) => format!("{h} h"),
        (h, m, _) => format!("{h} h {m} min"),
    }
}

/// The command that deploys `cell` again with `flags`.
fn redeploy(cell: &str, flags: &str) -> String {
    format!("cbs deploy <the bundle of {cell}> {flags}")
}

/// Requests refused for capacity within the window.
fn capacity(cell: &str, now: &Point, then: Option<&Point>, window: Duration) -> Option<Advice> {
    let refused = now.capacity.saturating_sub(then?.capacity);
    if refused == 0 {
        return None;
    }
    let command = match (&now.desired, now.replicas) {
        (Some(_), Some(replicas)) => redeploy(cell, &format!("--replicas {}", replicas + 1)),
        (Some(_), None) => format!("start one more host with `cbs-host run --watch` (every watching host serves {cell})"),
        (None, _) => format!("raise [limits] concurrency (or queue) in {cell}'s cell.toml and load it again, or serve it on one more host"),
    };
    Some(Advice {
        kind: "capacity",
        cell: cell.to_owned(),
        title: format!("{cell} is past its capacity"),
        evidence: format!(
            "{refused} request(s) answered \"capacity\" in the last {} on {} host(s)",
            seconds(window),
            now.hosts
        ),
        command,
    })
}

/// No request over [`IDLE_WINDOWS`] windows, with that much history.
fn idle(
    cell: &str,
    now: &Point,
    history: &[(u64, &Point)],
    now_ms: u64,
    window_ms: u64,
) -> Option<Advice> {
    let span = window_ms * IDLE_WINDOWS as u64;
    let (first_ms, _) = history.first()?;
    if now_ms.saturating_sub(*first_ms) < span {
        return None;
    }
    let then = at_or_before(history, now_ms - span)?;
    if now.requests != then.requests || now.hosts == 0 {
        return None;
    }
    Some(Advice {
        kind: "idle",
        cell: cell.to_owned(),
        title: format!("{cell} is idle"),
        evidence: format!(
            "no request in the last {} on {} host(s)",
            seconds(Duration::from_millis(span)),
            now.hosts
        ),
        command: format!("cbs undeploy {cell}"),
    })
}

/// A durable consumer's lag past [`LAG_FLOOR`] and half again what it was
/// a window ago.
fn falling_behind(
    cell: &str,
    now: &Point,
    then: Option<&Point>,
    window: Duration,
) -> Option<Advice> {
    let (lag, before) = (now.lag?, then?.lag.unwrap_or(0));
    if lag <= LAG_FLOOR || lag * 2 <= before * 3 {
        return None;
    }
    let replicas = now.replicas.unwrap_or(now.hosts as u32).max(1);
    Some(Advice {
        kind: "falling_behind",
        cell: cell.to_owned(),
        title: format!("{cell}'s durable consumer is falling behind"),
        evidence: format!(
            "{lag} messages waiting, {before} a {} before",
            seconds(window)
        ),
        command: redeploy(
            cell,
            &format!(
                "--min-replicas {replicas} --max-replicas {} --target-lag {LAG_FLOOR}",
                replicas * 2
            ),
        ),
    })
}

/// Latency well above what it was before the newest version appeared.
fn slower_after_deploy(cell: &str, history: &[(u64, &Point)]) -> Option<Advice> {
    let (_, newest) = history.last()?;
    let changed = history
        .iter()
        .rposition(|(_, p)| p.versions != newest.versions)?;
    let before = history[..=changed].iter().map(|(_, p)| p.latency_us);
    let after = history[changed + 1..].iter().map(|(_, p)| p.latency_us);
    let (before, after) = (mean(before)?, mean(after)?);
    if (after as f64) < before as f64 * SLOWER_FACTOR || after < before + SLOWER_MARGIN_US {
        return None;
    }
    let new: Vec<&str> = newest.versions.iter().map(String::as_str).collect();
    Some(Advice {
        kind: "slower_after_deploy",
        cell: cell.to_owned(),
        title: format!("{cell} is slower since version {}", new.join(", ")),
        evidence: format!(
            "recent latency {:.1} ms since the deploy of {}, {:.1} ms before",
            after as f64 / 1000.0,
            new.join(", "),
            before as f64 / 1000.0
        ),
        command: format!("cbs rollback {cell}"),
    })
}

/// A call target whose breaker opened more than [`BREAKER_OPENINGS`]
/// times within [`BREAKER_WINDOW`], across the cell's hosts.
fn breaker_opening(cell: &str, history: &[(u64, &Point)]) -> Vec<Advice> {
    let Some((now_ms, _)) = history.last() else {
        return Vec::new();
    };
    let since = now_ms.saturating_sub(BREAKER_WINDOW.as_millis() as u64);
    // From the newest point at or before the window's start.
    let start = history
        .iter()
        .rposition(|(ms, _)| *ms <= since)
        .unwrap_or(0);
    let window = &history[start..];
    let span = Duration::from_millis(now_ms - window[0].0);
    // target → (openings, hosts where it opened)
    let mut opened: BTreeMap<&str, (u64, usize)> = BTreeMap::new();
    let keys: BTreeSet<&(String, String)> =
        window.iter().flat_map(|(_, p)| p.breakers.keys()).collect();
    for key in keys {
        let n = increase(
            window
                .iter()
                .filter_map(|(_, p)| p.breakers.get(key).copied()),
        );
        if n > 0 {
            let row = opened.entry(key.1.as_str()).or_default();
            row.0 += n;
            row.1 += 1;
        }
    }
    opened
        .into_iter()
        .filter(|(_, (n, _))| *n > BREAKER_OPENINGS)
        .map(|(target, (n, hosts))| Advice {
            kind: "breaker_opening",
            cell: cell.to_owned(),
            title: format!("{cell}'s calls to {target} keep opening its circuit breaker"),
            evidence: format!(
                "the breaker of {cell}'s calls to {target} opened {n} times in the last {} on {hosts} host(s)",
                seconds(span)
            ),
            command: format!("cbs flows --cell {target} --failed"),
        })
        .collect()
}

/// How much a counter rose over its readings, a reading lower than the
/// one before counting from zero (a new cell version's counters start
/// again). Its first reading is the base: what it counted before is not
/// in the window.
fn increase(readings: impl Iterator<Item = u64>) -> u64 {
    let mut readings = readings;
    let Some(mut last) = readings.next() else {
        return 0;
    };
    let mut total = 0u64;
    for now in readings {
        total = total.saturating_add(if now >= last { now - last } else { now });
        last = now;
    }
    total
}

fn mean(values: impl Iterator<Item = u64>) -> Option<u64> {
    let (sum, n) = values.fold((0u64, 0u64), |(s, n), v| (s.saturating_add(v), n + 1));
    sum.checked_div(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::view::{Cell, Host, Served};
    use crate::resilience::{BreakerReport, BreakerState};
    use crate::stats::DurableCounts;

    const WINDOW: Duration = Duration::from_secs(60);

    /// One host serving `cell` with these counters, at `at_s` seconds.
    fn lattice(at_s: u64, served: Served, desired: Option<(&str, u32)>) -> Lattice {
        Lattice {
            at_ms: at_s * 1000,
            source: "nats",
            cells: vec![Cell {
                id: served.cell.clone(),
                desired: desired.map(|(v, _)| v.to_owned()),
                replicas: desired.map(|(_, r)| r),
                ..Cell::default()
            }],
            hosts: vec![Host {
                id: "h".into(),
                cells: vec![served],
                ..Host::default()
            }],
        }
    }

    fn served(requests: u64, capacity: u64) -> Served {
        Served {
            cell: "c".into(),
            version: "1.0.0".into(),
            requests,
            errors_by_code: BTreeMap::from([("capacity".to_owned(), capacity)]),
            ..Served::default()
        }
    }

    fn kinds(advisor: &Advisor) -> Vec<&'static str> {
        advisor.view().advice.iter().map(|a| a.kind).collect()
    }

    #[test]
    fn capacity_refusals_within_the_window_are_advice_until_they_stop() {
        let advisor = Advisor::new(WINDOW);
        advisor.record(&lattice(0, served(10, 0), Some(("1.0.0", 2))));
        advisor.record(&lattice(30, served(50, 7), Some(("1.0.0", 2))));
        let view = advisor.view();
        assert_eq!(view.advice.len(), 1, "{view:?}");
        let advice = &view.advice[0];
        assert_eq!((advice.kind, advice.cell.as_str()), ("capacity", "c"));
        assert!(advice.evidence.starts_with("7 request(s)"), "{advice:?}");
        assert_eq!(advice.command, "cbs deploy <the bundle of c> --replicas 3");
        // A window later with no new refusal, it is gone.
        advisor.record(&lattice(100, served(90, 7), Some(("1.0.0", 3))));
        assert_eq!(kinds(&advisor), Vec::<&str>::new());
    }

    #[test]
    fn a_cell_without_requests_for_six_windows_is_idle() {
        let advisor = Advisor::new(WINDOW);
        advisor.record(&lattice(0, served(5, 0), None));
        advisor.record(&lattice(300, served(5, 0), None));
        assert_eq!(kinds(&advisor), Vec::<&str>::new(), "not enough history");
        advisor.record(&lattice(360, served(5, 0), None));
        assert_eq!(kinds(&advisor), ["idle"]);
        advisor.record(&lattice(370, served(6, 0), None));
        assert_eq!(kinds(&advisor), Vec::<&str>::new(), "a request came");
    }

    #[test]
    fn a_growing_durable_lag_is_advice() {
        let advisor = Advisor::new(WINDOW);
        let durable = |lag| Served {
            durable: Some(DurableCounts {
                lag,
                ..DurableCounts::default()
            }),
            ..served(0, 0)
        };
        advisor.record(&lattice(0, durable(90), Some(("1.0.0", 1))));
        advisor.record(&lattice(60, durable(120), Some(("1.0.0", 1))));
        assert_eq!(
            kinds(&advisor),
            Vec::<&str>::new(),
            "120 is not half again 90"
        );
        advisor.record(&lattice(120, durable(400), Some(("1.0.0", 1))));
        let view = advisor.view();
        assert_eq!(view.advice[0].kind, "falling_behind", "{view:?}");
        assert!(view.advice[0]
            .command
            .ends_with("--min-replicas 1 --max-replicas 2 --target-lag 100"));
    }

    #[test]
    fn latency_that_rose_after_a_deploy_names_the_version() {
        let advisor = Advisor::new(WINDOW);
        let at = |version: &str, latency_us| Served {
            version: version.into(),
            latency_us,
            ..served(0, 0)
        };
        advisor.record(&lattice(0, at("1.0.0", 2_000), None));
        advisor.record(&lattice(10, at("1.0.0", 2_400), None));
        advisor.record(&lattice(20, at("1.1.0", 3_000), None));
        assert_eq!(kinds(&advisor), Vec::<&str>::new(), "within the margin");
        advisor.record(&lattice(30, at("1.1.0", 20_000), None));
        let view = advisor.view();
        assert_eq!(view.advice[0].kind, "slower_after_deploy", "{view:?}");
        assert!(view.advice[0].title.contains("1.1.0"));
        assert_eq!(view.advice[0].command, "cbs rollback c");
    }

    #[test]
    fn a_breaker_that_opened_more_than_three_times_in_an_hour_is_advice() {
        let advisor = Advisor::new(WINDOW);
        let opened = |version: &str, n| Served {
            version: version.into(),
            breakers: BTreeMap::from([(
                "logic.greet".to_owned(),
                BreakerReport {
                    state: BreakerState::Closed,
                    opened: n,
                },
            )]),
            ..served(0, 0)
        };
        // (The cell gets no request: it is idle too; only breakers here.)
        let breaker_advice = || -> Vec<Advice> {
            let view = advisor.view();
            view.advice
                .into_iter()
                .filter(|a| a.kind == "breaker_opening")
                .collect()
        };
        // Ten openings before the first sample are not in the window.
        advisor.record(&lattice(0, opened("1.0.0", 10), None));
        advisor.record(&lattice(600, opened("1.0.0", 13), None));
        assert_eq!(breaker_advice(), [], "3 is not more than 3");
        // A new version's breaker counts from zero again: 13 → 1 is one.
        advisor.record(&lattice(1200, opened("1.1.0", 1), None));
        let advice = breaker_advice();
        assert_eq!(advice.len(), 1, "{advice:?}");
        assert_eq!(advice[0].cell, "c");
        assert_eq!(
            advice[0].evidence,
            "the breaker of c's calls to logic.greet opened 4 times in the last 20 min on 1 host(s)"
        );
        assert_eq!(advice[0].command, "cbs flows --cell logic.greet --failed");
        // An hour after the last opening, the openings are out of the window.
        advisor.record(&lattice(4900, opened("1.1.0", 1), None));
        assert_eq!(breaker_advice(), []);
    }

    #[test]
    fn a_counter_rises_by_its_steps_and_counts_again_from_zero_after_a_reset() {
        assert_eq!(increase([].into_iter()), 0);
        assert_eq!(increase([5].into_iter()), 0, "the base only");
        assert_eq!(increase([5, 7, 7, 9].into_iter()), 4);
        assert_eq!(increase([5, 7, 2, 3].into_iter()), 2 + 2 + 1);
    }

    #[test]
    fn the_history_is_bounded() {
        let advisor = Advisor::new(WINDOW);
        for i in 0..(MAX_SAMPLES as u64 + 50) {
            advisor.record(&lattice(i, served(i, 0), None));
        }
        let samples = advisor.samples.lock().unwrap();
        assert_eq!(samples.len(), MAX_SAMPLES);
        assert_eq!(samples.front().unwrap().at_ms, 50_000);
    }
}
