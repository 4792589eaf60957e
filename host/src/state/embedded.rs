//! Cell state in process: one redb file per cell in the host's data folder
//! (`<data>/state/<cell-id>.redb`), so state survives a restart. Every
//! write is one transaction that also keeps the cell's byte count, so
//! `max_bytes` holds exactly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

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
    open: Mutex<HashMap<String, Arc<Database>>>,
}

impl EmbeddedState {
    /// Buckets under `data_dir/state`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("state"),
            open: Mutex::default(),
        }
    }

    fn database(&self, cell_id: &str) -> Result<Arc<Database>, BusError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(db) = open.get(cell_id) {
            return Ok(db.clone());
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
        let db = Arc::new(db);
        open.insert(cell_id.to_owned(), db.clone());
        Ok(db)
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
        let db = self.database(cell_id)?;
        Ok(Arc::new(EmbeddedBucket {
            cell_id: cell_id.to_owned(),
            grant,
            db,
        }))
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}

struct EmbeddedBucket {
    cell_id: String,
    grant: StateGrant,
    db: Arc<Database>,
}

impl EmbeddedBucket {
    /// Runs `op` on a blocking thread: redb reads and writes the file.
    async fn run<T, F>(&self, op: F) -> Result<T, BusError>
    where
        T: Send + 'static,
        F: FnOnce(&Database, &str, StateGrant) -> Result<T, BusError> + Send + 'static,
    {
        let db = self.db.clone();
        let cell = self.cell_id.clone();
        let grant = self.grant;
        tokio::task::spawn_blocking(move || op(&db, &cell, grant))
            .await
            .map_err(|e| super::unavailable(&self.cell_id, e))?
    }

    /// Sets `key` to `value` (or deletes it) in one transaction that keeps
    /// the byte count, refusing a write past `max_bytes`.
    fn write(
        db: &Database,
        cell: &str,
        grant: StateGrant,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<(), BusError> {
        let fail = |e: &dyn std::fmt::Display| super::unavailable(cell, e);
        let tx = db.begin_write().map_err(|e| fail(&e))?;
        {
            let mut values = tx.open_table(VALUES).map_err(|e| fail(&e))?;
            let mut meta = tx.open_table(META).map_err(|e| fail(&e))?;
            let total = meta
                .get(BYTES)
                .map_err(|e| fail(&e))?
                .map_or(0, |v| v.value());
            let old = values
                .get(key)
                .map_err(|e| fail(&e))?
                .map_or(0, |v| (key.len() + v.value().len()) as u64);
            let new = value.map_or(0, |v| (key.len() + v.len()) as u64);
            let total = total.saturating_sub(old) + new;
            if new > old && total > grant.max_bytes {
                return Err(super::full(cell, grant));
            }
            match value {
                Some(v) => values.insert(key, v).map(drop),
                None => values.remove(key).map(drop),
            }
            .map_err(|e| fail(&e))?;
            meta.insert(BYTES, total).map_err(|e| fail(&e))?;
        }
        tx.commit().map_err(|e| fail(&e))
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

#[async_trait]
impl Bucket for EmbeddedBucket {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BusError> {
        let key = key.to_owned();
        self.run(move |db, cell, _| Self::read(db, cell, &key))
            .await
    }

    async fn set(&self, key: &str, value: Vec<u8>) -> Result<(), BusError> {
        let key = key.to_owned();
        self.run(move |db, cell, grant| Self::write(db, cell, grant, &key, Some(&value)))
            .await
    }

    async fn delete(&self, key: &str) -> Result<(), BusError> {
        let key = key.to_owned();
        self.run(move |db, cell, grant| Self::write(db, cell, grant, &key, None))
            .await
    }

    async fn keys(&self, cursor: u64) -> Result<(Vec<String>, Option<u64>), BusError> {
        self.run(move |db, cell, _| {
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
        let key = key.to_owned();
        // One writer at a time (redb), so read and write in one go are atomic.
        self.run(move |db, cell, grant| {
            let now = super::parse_counter(&key, Self::read(db, cell, &key)?.as_deref())?;
            let sum = super::add(&key, now, delta)?;
            Self::write(db, cell, grant, &key, Some(sum.to_string().as_bytes()))?;
            Ok(sum)
        })
        .await
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
}
