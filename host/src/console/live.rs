//! Live views: one snapshot of each view per tick, taken when a viewer
//! asks and shared by every viewer of that view in the tick, and the
//! server-sent event stream that sends it every tick.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::{watch, Mutex};

use super::actions::Actions;
use super::advice::Advisor;
use super::Source;

/// How often a live view is sent.
pub const TICK: Duration = Duration::from_secs(1);
/// How often the dead letters and the releases are read again.
pub const SLOW_TICK: Duration = Duration::from_secs(5);
/// The most views kept between ticks: cell ids come from URLs.
const MAX_KEPT: usize = 1024;

/// A view: the lattice, or one cell.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Lattice,
    Cell(String),
    DeadLetters(String),
    /// The latest failed hops (`None`) or one flow.
    Flows(Option<String>),
    Releases,
    Advice,
}

impl Key {
    /// The view of cell `id`, or `None` when `id` cannot be a cell id.
    pub fn cell(id: &str) -> Option<Self> {
        valid(id).then(|| Self::Cell(id.to_owned()))
    }

    /// The dead letters of cell `id`, or `None` when `id` cannot be one.
    pub fn dead_letters(id: &str) -> Option<Self> {
        valid(id).then(|| Self::DeadLetters(id.to_owned()))
    }

    /// One flow's view, or `None` when `id` cannot be a correlation id:
    /// 1 to 128 visible ASCII characters.
    pub fn flow(id: &str) -> Option<Self> {
        let fits = (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic());
        fits.then(|| Self::Flows(Some(id.to_owned())))
    }

    /// How long a snapshot serves: reading dead letters and the audit
    /// trail costs a request per letter or a consumer, so they are taken
    /// less often than the views of counters.
    fn fresh_for(&self) -> Duration {
        match self {
            Self::Lattice | Self::Cell(_) | Self::Flows(_) | Self::Advice => TICK,
            Self::DeadLetters(_) | Self::Releases => SLOW_TICK,
        }
    }
}

fn valid(id: &str) -> bool {
    crate::manifest::check_cell_id(id).is_ok()
}

/// A view's data as JSON, or why there is none.
#[derive(Debug, Clone)]
pub enum Snapshot {
    Ready(Arc<str>),
    Missing,
    Failed(String),
}

pub struct Snapshots {
    source: Arc<dyn Source>,
    advisor: Arc<Advisor>,
    /// Who may act; `None`: read-only.
    actions: Option<Arc<Actions>>,
    taken: Mutex<HashMap<Key, (Instant, Snapshot)>>,
    stopped: watch::Receiver<bool>,
}

impl Snapshots {
    pub fn new(
        source: Arc<dyn Source>,
        advisor: Arc<Advisor>,
        stopped: watch::Receiver<bool>,
        actions: Option<Arc<Actions>>,
    ) -> Self {
        Self {
            source,
            advisor,
            actions,
            taken: Mutex::default(),
            stopped,
        }
    }

    pub fn source(&self) -> &Arc<dyn Source> {
        &self.source
    }

    pub fn actions(&self) -> Option<&Actions> {
        self.actions.as_deref()
    }

    /// The view's snapshot of this tick: taken now unless one is younger
    /// than a tick.
    pub async fn get(&self, key: Key) -> Snapshot {
        let mut taken = self.taken.lock().await;
        let now = Instant::now();
        if let Some((at, snapshot)) = taken.get(&key) {
            if now.duration_since(*at) < key.fresh_for() {
                return snapshot.clone();
            }
        }
        let snapshot = self.take(&key).await;
        if taken.len() >= MAX_KEPT {
            taken.retain(|key, (at, _)| now.duration_since(*at) < key.fresh_for());
        }
        if taken.len() < MAX_KEPT {
            taken.insert(key, (Instant::now(), snapshot.clone()));
        }
        snapshot
    }

    async fn take(&self, key: &Key) -> Snapshot {
        let json = match key {
            Key::Lattice => self
                .source
                .lattice()
                .await
                .map(|view| Some(serde_json::to_string(&view))),
            Key::Cell(id) => self
                .source
                .cell(id)
                .await
                .map(|view| view.map(|v| serde_json::to_string(&v))),
            Key::DeadLetters(id) => self
                .source
                .dead_letters(id)
                .await
                .map(|view| Some(serde_json::to_string(&view))),
            Key::Flows(id) => self
                .source
                .flows(id.as_deref())
                .await
                .map(|view| Some(serde_json::to_string(&view))),
            Key::Advice => Ok(Some(serde_json::to_string(&self.advisor.view()))),
            Key::Releases => self
                .source
                .releases()
                .await
                .map(|view| Some(serde_json::to_string(&view))),
        };
        match json {
            Ok(Some(Ok(text))) => Snapshot::Ready(text.into()),
            Ok(None) => Snapshot::Missing,
            Ok(Some(Err(e))) => Snapshot::Failed(format!("cannot write the view: {e}")),
            Err(e) => Snapshot::Failed(format!("{e:#}")),
        }
    }

    /// The view every tick (or slow tick) as server-sent events (`snapshot` with the
    /// JSON, or `missing` / `problem`), until the console stops.
    pub fn stream(
        self: &Arc<Self>,
        key: Key,
    ) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
        let state = (self.clone(), key, true);
        let events = futures_util::stream::unfold(state, |(snapshots, key, first)| async move {
            let mut stopped = snapshots.stopped.clone();
            if *stopped.borrow() {
                return None;
            }
            if !first {
                tokio::select! {
                    () = tokio::time::sleep(key.fresh_for()) => {}
                    _ = stopped.wait_for(|stop| *stop) => return None,
                }
            }
            let event = match snapshots.get(key.clone()).await {
                Snapshot::Ready(json) => Event::default().event("snapshot").data(&*json),
                Snapshot::Missing => Event::default().event("missing").data("{}"),
                Snapshot::Failed(why) => {
                    let detail = serde_json::json!({ "detail": why }).to_string();
                    Event::default().event("problem").data(detail)
                }
            };
            Some((Ok(event), (snapshots, key, false)))
        });
        Sse::new(events).keep_alive(KeepAlive::default())
    }
}
