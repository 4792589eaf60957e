//! A host's recent hops: two rings bounded in count and bytes (all hops,
//! and failed ones apart), what a cell records into them, and the answer
//! to a question from them.

use super::*;

/// A hop in a ring, with the order it was recorded in.
pub(super) struct Kept {
    pub(super) seq: u64,
    pub(super) hop: Hop,
}

/// The newest hops, within a count and a byte bound.
pub(super) struct Ring {
    pub(super) hops: VecDeque<Kept>,
    pub(super) bytes: usize,
    pub(super) max_hops: usize,
    pub(super) max_bytes: usize,
}

impl Ring {
    fn new(max_hops: usize, max_bytes: usize) -> Self {
        Self {
            hops: VecDeque::new(),
            bytes: 0,
            max_hops,
            max_bytes,
        }
    }

    /// Adds `hop`, dropping the oldest to stay within both bounds.
    fn push(&mut self, seq: u64, hop: Hop) {
        let size = hop.size();
        while !self.hops.is_empty()
            && (self.hops.len() >= self.max_hops || self.bytes + size > self.max_bytes)
        {
            if let Some(old) = self.hops.pop_front() {
                self.bytes -= old.hop.size();
            }
        }
        if size <= self.max_bytes {
            self.bytes += size;
            self.hops.push_back(Kept { seq, hop });
        }
    }
}

pub(super) struct Rings {
    pub(super) next: u64,
    pub(super) all: Ring,
    pub(super) failed: Ring,
}

/// A host's recent hops.
pub struct Flows {
    host: Arc<str>,
    rings: Mutex<Rings>,
}

impl Flows {
    pub fn new(host: &str) -> Self {
        Self::bounded(host, (MAX_HOPS, MAX_BYTES), (MAX_FAILED, MAX_FAILED_BYTES))
    }

    /// With other bounds (count, bytes) for all hops and failed ones.
    pub(super) fn bounded(host: &str, all: (usize, usize), failed: (usize, usize)) -> Self {
        Self {
            host: host.into(),
            rings: Mutex::new(Rings {
                next: 0,
                all: Ring::new(all.0, all.1),
                failed: Ring::new(failed.0, failed.1),
            }),
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// What a cell version records its hops with.
    pub fn recorder(self: &Arc<Self>, cell: &str, version: &str) -> Recorder {
        Recorder {
            flows: self.clone(),
            cell: cell.into(),
            version: version.into(),
        }
    }

    pub(super) fn rings(&self) -> MutexGuard<'_, Rings> {
        // Nothing panics while holding it; a poisoned ring is still sound.
        self.rings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `hop`: one short lock (a failed hop is copied before it).
    pub fn record(&self, hop: Hop) {
        let failed = hop.failed().then(|| hop.clone());
        let mut rings = self.rings();
        let seq = rings.next;
        rings.next += 1;
        if let Some(failed) = failed {
            rings.failed.push(seq, failed);
        }
        rings.all.push(seq, hop);
    }

    /// How many hops it keeps now: all of them, and the failed ones.
    pub fn counts(&self) -> (usize, usize) {
        let rings = self.rings();
        (rings.all.hops.len(), rings.failed.hops.len())
    }

    /// The newest hops that match, up to the query's limit, in the order
    /// they were recorded (as each ended), from both lists: the ring holds every hop since its oldest, the
    /// failed list may hold older failures, and the ring older failures
    /// than the failed list's oldest.
    pub fn select(&self, query: &Query) -> Vec<Hop> {
        let rings = self.rings();
        let (all, failed) = (&rings.all.hops, &rings.failed.hops);
        let oldest = |hops: &VecDeque<Kept>| hops.front().map_or(u64::MAX, |k| k.seq);
        let mut found = if query.failed {
            let older = all.iter().rev().filter(|k| k.seq < oldest(failed));
            matching(failed.iter().rev().chain(older), query)
        } else {
            let older = failed.iter().rev().filter(|k| k.seq < oldest(all));
            matching(all.iter().rev().chain(older), query)
        };
        drop(rings);
        found.reverse();
        found
    }

    /// The answer to `question` (a [`Query`] as JSON; empty asks for the
    /// latest hops), as JSON within `max_bytes`.
    pub fn answer(&self, question: &[u8], max_bytes: usize) -> Vec<u8> {
        let answer = match parse(question) {
            Ok(query) => self.fit(self.select(&query), max_bytes),
            Err(error) => Answer {
                host: self.host.to_string(),
                hops: Vec::new(),
                truncated: false,
                error: Some(error),
            },
        };
        serde_json::to_vec(&answer).expect("an answer always serializes")
    }

    /// The newest of `hops` (oldest first) that fit in `max_bytes` with the
    /// rest of the answer.
    fn fit(&self, mut hops: Vec<Hop>, max_bytes: usize) -> Answer {
        // The answer around the hops: host, field names, brackets.
        let host = serde_json::to_string(&*self.host).expect("text serializes");
        let mut used = host.len() + 64;
        let mut kept = 0;
        for hop in hops.iter().rev() {
            used += json_len(hop) + 1;
            if used > max_bytes {
                break;
            }
            kept += 1;
        }
        let truncated = kept < hops.len();
        let hops = hops.split_off(hops.len() - kept);
        Answer {
            host: self.host.to_string(),
            hops,
            truncated,
            error: None,
        }
    }
}

/// The first `query.limit()` of `newest_first` that match, copied.
fn matching<'a>(newest_first: impl Iterator<Item = &'a Kept>, query: &Query) -> Vec<Hop> {
    newest_first
        .map(|k| &k.hop)
        .filter(|hop| query.matches(hop))
        .take(query.limit())
        .cloned()
        .collect()
}

fn parse(question: &[u8]) -> Result<Query, BusError> {
    if question.trim_ascii().is_empty() {
        return Ok(Query::default());
    }
    serde_json::from_slice(question).map_err(|e| {
        BusError::new(
            ErrorCode::InvalidInput,
            format!(
                "not a flows query ({e}); send a JSON object with any of correlation_id \
                 (text), failed (true or false), cell (text) and limit (a count)"
            ),
        )
    })
}

/// The length of `hop` as JSON, without writing it anywhere.
fn json_len(hop: &Hop) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, hop).expect("a hop always serializes");
    count.0
}

/// The longest start of `text` within `max` bytes, at a character boundary.
pub(super) fn cut(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `message` within [`MAX_ERROR_BYTES`], ending in `…` when cut.
pub(super) fn bounded_error(message: &str) -> String {
    if message.len() <= MAX_ERROR_BYTES {
        return message.to_owned();
    }
    let mut kept = cut(message, MAX_ERROR_BYTES - '…'.len_utf8()).to_owned();
    kept.push('…');
    kept
}

/// What one cell version records its hops with: its host's [`Flows`], and
/// the names every hop of it shares.
pub struct Recorder {
    flows: Arc<Flows>,
    cell: Arc<str>,
    version: Arc<str>,
}

impl Recorder {
    /// Records the hop of `envelope`, which took `elapsed` from its arrival
    /// and failed with `error`, if it did. Copies the ids and the error
    /// message (bounded), never the payload.
    pub fn record(&self, envelope: &Envelope, elapsed: Duration, error: Option<&BusError>) {
        let started_ms = SystemTime::now()
            .checked_sub(elapsed)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64);
        self.flows.record(Hop {
            correlation_id: cut(&envelope.correlation_id, MAX_ID_BYTES).to_owned(),
            message_id: cut(&envelope.id, MAX_ID_BYTES).to_owned(),
            cell: self.cell.clone(),
            version: self.version.clone(),
            host: self.flows.host.clone(),
            started_ms,
            duration_us: elapsed.as_micros().try_into().unwrap_or(u64::MAX),
            outcome: error.map_or(Outcome::Ok, |e| Outcome::Failed(e.code)),
            error: error.map(|e| bounded_error(&e.message)),
        });
    }
}
