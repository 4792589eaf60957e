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

/// How far back advice looks: refusals within it, lag growth over it,
/// idleness over [`IDLE_WINDOWS`] of it.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);

/// One piece of advice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Advice {
    /// `capacity`, `idle`, `falling_behind` or `slower_after_deploy`.
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

fn mean(values: impl Iterator<Item = u64>) -> Option<u64> {
    let (sum, n) = values.fold((0u64, 0u64), |(s, n), v| (s.saturating_add(v), n + 1));
    sum.checked_div(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::view::{Cell, Host, Served};
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
