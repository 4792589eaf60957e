//! Cell state in process: one redb file per cell in the host's data folder
//! (`<data>/state/<cell-id>.redb`), so state survives a restart. Writes
//! are group-committed: whatever writes arrive while one commit is on its
//! way to disk go together in the next transaction, one fsync for all of
//! them (a lone write commits at once, as before). Each write still keeps
//! the cell's byte count in the same transaction, in order, so
//! `max_bytes` holds exactly; an increment reads and writes in that
//! transaction, so two at once never lose one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition};
use tokio::sync::oneshot;

use super::{Bucket, StateBackend, KEYS_PAGE};
use crate::envelope::BusError;
use crate::manifest::StateGrant;

const VALUES: TableDefinition<&str, &[u8]> = TableDefinition::new("values");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Bytes of keys and values together, in `META`.
const BYTES: &str = "bytes";

/// Buckets in a data folder. A cell's file stays open for the life of the
/// host: a new version of the cell shares it (redb allows one opener).
pub struct EmbeddedState {
    dir: PathBuf,
    open: Mutex<HashMap<String, Arc<Store>>>,
}

/// One cell's file and the writes waiting for its next commit.
struct Store {
    db: Database,
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    /// A blocking task is committing; it takes what is pending next.
    flushing: bool,
}

/// A write and who waits for its outcome (the counter's new value for an
/// increment).
struct Pending {
    op: Op,
    grant: StateGrant,
    done: oneshot::Sender<Result<u64, BusError>>,
}

enum Op {
    /// Sets a key (`None`: deletes it).
    Put(String, Option<Vec<u8>>),
    /// Adds to a counter.
    Add(String, u64),
}

impl EmbeddedState {
    /// Buckets under `data_dir/state`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("state"),
            open: Mutex::default(),
        }
    }

    fn store(&self, cell_id: &str) -> Result<Arc<Store>, BusError> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(store) = open.get(cell_id) {
            return Ok(store.clone());
        }
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| super::unavailable(cell_id, format!("{}: {e}", self.dir.display())))?;
        // Cell ids are dotted lowercase tokens (checked by the manifest), so
        // the file name cannot leave the folder.
        let path = self.dir.join(format!("{cell_id}.redb"));
        let db = Database::create(&path).map_err(|e| {
            super::unavailable(
                cell_id,
                format!(
                    "{}: {e} (is another host using this data folder? give each --data-dir)",
                    path.display()
                ),
            )
        })?;
        let store = Arc::new(Store {
            db,
            queue: Mutex::default(),
        });
        open.insert(cell_id.to_owned(), store.clone());
        Ok(store)
    }
}

#[async_trait]
impl StateBackend for EmbeddedState {
    async fn open(&self, cell_id: &str, grant: StateGrant) -> Result<Arc<dyn Bucket>, BusError> {
        // A cell's id, or `~<name>` for the host's own (the saga journal):
        // never a path of its own.
        let name = cell_id.strip_prefix('~').unwrap_or(cell_id);
        crate::manifest::check_cell_id(name)
            .map_err(|e| super::unavailable(cell_id, format!("{e:#}")))?;
        let store = self.store(cell_id)?;
        Ok(Arc::new(EmbeddedBucket {
            cell_id: cell_id.to_owned(),
            grant,
            store,
        }))
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}

struct EmbeddedBucket {
    cell_id: String,
    grant: StateGrant,
    store: Arc<Store>,
}

impl EmbeddedBucket {
    /// Runs the read `op` on a blocking thread: redb reads the file.
    async fn run<T, F>(&self, op: F) -> Result<T, BusError>
    where
        T: Send + 'static,
        F: FnOnce(&Database, &str) -> Result<T, BusError> + Send + 'static,
    {
        let store = self.store.clone();
        let cell = self.cell_id.clone();
        tokio::task::spawn_blocking(move || op(&store.db, &cell))
            .await
            .map_err(|e| super::unavailable(&self.cell_id, e))?
    }

    /// Queues `op` for the next commit, starting a committer if none runs,
    /// and waits for its outcome.
    async fn write(&self, op: Op) -> Result<u64, BusError> {
        let (done, outcome) = oneshot::channel();
        let start = {
            let mut queue = self
                .store
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            queue.pending.push(Pending {
                op,
                grant: self.grant,
                done,
            });
            !std::mem::replace(&mut queue.flushing, true)
        };
        if start {
            let store = self.store.clone();
            let cell = self.cell_id.clone();
            tokio::task::spawn_blocking(move || flush(store, &cell));
        }
        outcome
            .await
            .map_err(|_| super::unavailable(&self.cell_id, "the state writer stopped"))?
    }

    fn read(db: &Database, cell: &str, key: &str) -> Result<Option<Vec<u8>>, BusError> {
        let fail = |e: &dyn std::fmt::Display| super::unavailable(cell, e);
        let tx = db.begin_read().map_err(|e| fail(&e))?;
        let values = match tx.open_table(VALUES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(fail(&e)),
        };
        let value = values.get(key).map_err(|e| fail(&e))?;
        Ok(value.map(|v| v.value().to_vec()))
    }
}

/// Commits what is pending, batch after batch, until nothing is. The
/// last batch is answered only once this task let go of the store, so a
/// caller that closes and reopens the file at once finds it free.
fn flush(store: Arc<Store>, cell: &str) {
    // After a panic here, a later write starts a committer again.
    struct Idle(std::sync::Weak<Store>);
    impl Drop for Idle {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                return;
            }
            if let Some(store) = self.0.upgrade() {
                let mut queue = store.queue.lock().unwrap_or_else(PoisonError::into_inner);
                queue.flushing = false;
            }
        }
    }
    let _idle = Idle(Arc::downgrade(&store));
    let Some(mut batch) = next_batch(&store) else {
        return;
    };
    loop {
        let outcomes = commit(&store.db, cell, &batch);
        let next = next_batch(&store);
        if next.is_none() {
            drop(store);
            answer(batch, outcomes);
            return;
        }
        answer(batch, outcomes);
        batch = next.unwrap_or_default();
    }
}

/// What is pending, or `None` (and no committer runs any more).
fn next_batch(store: &Store) -> Option<Vec<Pending>> {
    let mut queue = store.queue.lock().unwrap_or_else(PoisonError::into_inner);
    if queue.pending.is_empty() {
        queue.flushing = false;
        return None;
    }
    Some(std::mem::take(&mut queue.pending))
}

fn answer(batch: Vec<Pending>, outcomes: Result<Vec<Result<u64, BusError>>, BusError>) {
    match outcomes {
        Ok(outcomes) => {
            for (pending, outcome) in batch.into_iter().zip(outcomes) {
                let _ = pending.done.send(outcome);
            }
        }
        Err(e) => {
            for pending in batch {
                let _ = pending.done.send(Err(e.clone()));
            }
        }
    }
}

/// One transaction for the whole batch, each write in order with its own
/// outcome (a write past `max_bytes` fails alone); a storage failure fails
/// them all and changes nothing.
fn commit(
    db: &Database,
    cell: &str,
    batch: &[Pending],
) -> Result<Vec<Result<u64, BusError>>, BusError> {
    let fail = |e: &dyn std::fmt::Display| super::unavailable(cell, e);
    let tx = db.begin_write().map_err(|e| fail(&e))?;
    let mut outcomes = Vec::with_capacity(batch.len());
    {
        let mut values = tx.open_table(VALUES).map_err(|e| fail(&e))?;
        let mut meta = tx.open_table(META).map_err(|e| fail(&e))?;
        let mut total = meta
            .get(BYTES)
            .map_err(|e| fail(&e))?
            .map_or(0, |v| v.value());
        for pending in batch {
            outcomes.push(apply(&mut values, &mut total, cell, pending)?);
        }
        meta.insert(BYTES, total).map_err(|e| fail(&e))?;
    }
    tx.commit().map_err(|e| fail(&e))?;
    Ok(outcomes)
}

/// One write: its own outcome, or a storage failure (`Err`) that fails
/// the batch.
fn apply(
    values: &mut Table<&str, &[u8]>,
    total: &mut u64,
    cell: &str,
    pending: &Pending,
) -> Result<Result<u64, BusError>, BusError> {
    let fail = |e: &dyn std::fmt::Display| super::unavailable(cell, e);
    let stored = |values: &Table<&str, &[u8]>, key: &str| {
        values
            .get(key)
            .map(|v| v.map(|v| v.value().to_vec()))
            .map_err(|e| fail(&e))
    };
    let (key, value, result) = match &pending.op {
        Op::Put(key, value) => (key, value.clone(), 0),
        Op::Add(key, delta) => {
            let now = stored(values, key)?;
            let sum = match super::parse_counter(key, now.as_deref())
                .and_then(|now| super::add(key, now, *delta))
            {
                Ok(sum) => sum,
                Err(e) => return Ok(Err(e)),
            };
            (key, Some(sum.to_string().into_bytes()), sum)
        }
    };
    let old = stored(values, key)?.map_or(0, |v| (key.len() + v.len()) as u64);
    let new = value.as_ref().map_or(0, |v| (key.len() + v.len()) as u64);
    let after = total.saturating_sub(old) + new;
    if new > old && after > pending.grant.max_bytes {
        return Ok(Err(super::full(cell, pending.grant)));
    }
    match value {
        Some(v) => values.insert(key.as_str(), v.as_slice()).map(drop),
        None => values.remove(key.as_str()).map(drop),
    }
    .map_err(|e| fail(&e))?;
    *total = after;
    Ok(Ok(result))
}

#[async_trait]
impl Bucket for EmbeddedBucket {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BusError> {
        let key = key.to_owned();
        self.run(move |db, cell| Self::read(db, cell, &key)).await
    }

    async fn set(&self, key: &str, value: Vec<u8>) -> Result<(), BusError> {
        self.write(Op::Put(key.to_owned(), Some(value)))
            .await
            .map(drop)
    }

    async fn delete(&self, key: &str) -> Result<(), BusError> {
        self.write(Op::Put(key.to_owned(), None)).await.map(drop)
    }

    async fn keys(&self, cursor: u64) -> Result<(Vec<String>, Option<u64>), BusError> {
        self.run(move |db, cell| {
            let fail = |e: &dyn std::fmt::Display| super::unavailable(cell, e);
            let tx = db.begin_read().map_err(|e| fail(&e))?;
            let values = match tx.open_table(VALUES) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok((Vec::new(), None)),
                Err(e) => return Err(fail(&e)),
            };
            let skip = usize::try_from(cursor).unwrap_or(usize::MAX);
            let mut keys = Vec::with_capacity(KEYS_PAGE);
            let mut more = false;
            for entry in values.iter().map_err(|e| fail(&e))?.skip(skip) {
                if keys.len() == KEYS_PAGE {
                    more = true;
                    break;
                }
                let (key, _) = entry.map_err(|e| fail(&e))?;
                keys.push(key.value().to_owned());
            }
            let next = more.then(|| cursor + keys.len() as u64);
            Ok((keys, next))
        })
        .await
    }

    async fn increment(&self, key: &str, delta: u64) -> Result<u64, BusError> {
        self.write(Op::Add(key.to_owned(), delta)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::ErrorCode;

    fn grant(max_bytes: u64) -> StateGrant {
        StateGrant {
            max_value_bytes: 64,
            max_bytes,
        }
    }

    #[tokio::test]
    async fn values_persist_and_the_byte_count_holds_exactly() {
        let dir = tempfile::tempdir().unwrap();
        {
            let state = EmbeddedState::new(dir.path());
            let bucket = state.open("a.b", grant(10)).await.unwrap();
            bucket.set("k", b"12345".to_vec()).await.unwrap(); // 6 bytes
            let full = bucket.set("j", b"1234".to_vec()).await.unwrap_err(); // 11 > 10
            assert_eq!(full.code, ErrorCode::Capacity, "{full}");
            bucket.set("k", b"123456789".to_vec()).await.unwrap(); // replaces: 10
            bucket.delete("k").await.unwrap();
            bucket.set("j", b"1234".to_vec()).await.unwrap();
        }
        let state = EmbeddedState::new(dir.path());
        let bucket = state.open("a.b", grant(10)).await.unwrap();
        assert_eq!(
            bucket.get("j").await.unwrap().as_deref(),
            Some(&b"1234"[..])
        );
        assert_eq!(bucket.get("k").await.unwrap(), None);
    }

    #[tokio::test]
    async fn keys_come_in_pages() {
        let dir = tempfile::tempdir().unwrap();
        let state = EmbeddedState::new(dir.path());
        let bucket = state.open("a.b", grant(1 << 20)).await.unwrap();
        for i in 0..KEYS_PAGE + 3 {
            bucket.set(&format!("k{i:04}"), vec![1]).await.unwrap();
        }
        let (first, next) = bucket.keys(0).await.unwrap();
        assert_eq!(first.len(), KEYS_PAGE);
        let (rest, last) = bucket.keys(next.unwrap()).await.unwrap();
        assert_eq!((rest.len(), last), (3, None));
        assert_eq!(bucket.increment("n", 2).await.unwrap(), 2);
        assert_eq!(bucket.increment("n", 3).await.unwrap(), 5);
    }

    /// Writes at once go together (one commit) and each keeps its own
    /// outcome; increments at once never lose one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_at_once_share_commits_and_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state = EmbeddedState::new(dir.path());
        let bucket = state.open("a.b", grant(1 << 20)).await.unwrap();
        let writes = (0..200).map(|i| {
            let bucket = bucket.clone();
            async move {
                bucket.set(&format!("k{i}"), vec![b'x'; 8]).await.unwrap();
                bucket.increment("n", 1).await.unwrap()
            }
        });
        let mut sums = futures_util::future::join_all(writes).await;
        sums.sort_unstable();
        assert_eq!(
            sums,
            (1..=200).collect::<Vec<u64>>(),
            "each increment saw its own sum"
        );
        assert_eq!(
            bucket.keys(0).await.unwrap().0.len(),
            201,
            "200 keys and the counter"
        );
        // One write past the bound fails alone; the others of its batch land.
        let small = state.open("a.c", grant(20)).await.unwrap();
        let (a, b, c) = tokio::join!(
            small.set("a", vec![0; 8]),
            small.set("b", vec![0; 30]),
            small.set("c", vec![0; 8]),
        );
        assert!(a.is_ok() && c.is_ok(), "{a:?} {c:?}");
        assert_eq!(b.unwrap_err().code, ErrorCode::Capacity);
    }
}
