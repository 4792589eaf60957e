//! Asking every host about its hops and gathering the answers.

use super::*;

/// Asks every host on `bus` and gathers their matching hops until `quiet`
/// passes without an answer (or `limit` in all, or [`MAX_REPLIES`]
/// answers): the newest `query.limit()` of them, sorted by start (a hop
/// before the hops it called, which start in the same millisecond or
/// later and end sooner). Fails when the bus does, or when every host that
/// answered refused the query.
pub async fn query(
    bus: &dyn BodyBus,
    query: &Query,
    quiet: Duration,
    limit: Duration,
) -> Result<Vec<Hop>, BusError> {
    let inbox = format!("{INBOX_PREFIX}flows.{}", crate::envelope::new_id());
    let mut answers = bus.subscribe(&inbox, None).await?;
    let mut question = Message::new(
        SUBJECT,
        serde_json::to_vec(query).expect("a query serializes"),
    );
    question.reply = Some(inbox);
    bus.publish(question).await?;
    bus.flush().await?;
    let end = Instant::now() + limit;
    let mut gathered = Gathered::new(query);
    for _ in 0..MAX_REPLIES {
        let wait = quiet.min(end.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, answers.next()).await {
            Ok(Some(answer)) => gathered.take(&answer.payload),
            _ => return gathered.finish(),
        }
    }
    tracing::warn!("more than {MAX_REPLIES} hosts answered; the rest are left out");
    gathered.finish()
}

/// Answers gathered so far: at most twice the hops wanted are held.
pub(super) struct Gathered<'q> {
    query: &'q Query,
    hops: Vec<Hop>,
    answered: usize,
    refused: Option<BusError>,
}

impl<'q> Gathered<'q> {
    pub(super) fn new(query: &'q Query) -> Self {
        Self {
            query,
            hops: Vec::new(),
            answered: 0,
            refused: None,
        }
    }

    pub(super) fn take(&mut self, payload: &[u8]) {
        let answer: Answer = match serde_json::from_slice(payload) {
            Ok(answer) => answer,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a malformed flows answer");
                return;
            }
        };
        if let Some(error) = answer.error {
            tracing::warn!(host = %answer.host, %error, "a host refused the flows query");
            self.refused.get_or_insert(error);
            return;
        }
        self.answered += 1;
        if answer.truncated {
            tracing::warn!(host = %answer.host, "a host left out older hops to keep its answer within {MAX_ANSWER_BYTES} bytes");
        }
        // An answer is outside input: only what was asked for is kept.
        let query = self.query;
        self.hops
            .extend(answer.hops.into_iter().filter(|hop| query.matches(hop)));
        if self.hops.len() > 2 * query.limit() {
            self.keep_newest();
        }
    }

    fn keep_newest(&mut self) {
        self.hops.sort_by(|a, b| {
            (a.started_ms, Reverse(a.duration_us), &a.host, &a.message_id).cmp(&(
                b.started_ms,
                Reverse(b.duration_us),
                &b.host,
                &b.message_id,
            ))
        });
        let extra = self.hops.len().saturating_sub(self.query.limit());
        self.hops.drain(..extra);
    }

    pub(super) fn finish(mut self) -> Result<Vec<Hop>, BusError> {
        if let (0, Some(error)) = (self.answered, self.refused.take()) {
            return Err(error);
        }
        self.keep_newest();
        Ok(self.hops)
    }
}
