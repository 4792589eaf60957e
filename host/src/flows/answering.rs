//! Taking questions about a host's hops on [`SUBJECT`] and answering.

use super::*;

/// A host answering questions about its hops on [`SUBJECT`], on a task of
/// its own; stops when dropped.
pub struct Answering {
    task: tokio::task::JoinHandle<()>,
}

impl Answering {
    /// Subscribes to [`SUBJECT`] on `bus` and answers from `flows`.
    pub async fn start(bus: Arc<dyn BodyBus>, flows: Arc<Flows>) -> Result<Self, BusError> {
        let questions = bus.subscribe(SUBJECT, None).await?;
        Ok(Self {
            task: tokio::spawn(answer_each(bus, flows, questions)),
        })
    }

    /// Stops answering: once it returns, the host no longer subscribes.
    pub async fn stop(mut self) {
        self.task.abort();
        // Ends at once (aborted), dropping the subscription.
        let _ = (&mut self.task).await;
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer_each(bus: Arc<dyn BodyBus>, flows: Arc<Flows>, mut questions: Subscription) {
    // Headroom under the bus's own bound for the protocol's framing.
    let max_bytes = bus
        .max_payload()
        .map_or(MAX_ANSWER_BYTES, |max| max.saturating_sub(1024))
        .min(MAX_ANSWER_BYTES);
    while let Some(question) = questions.next().await {
        // Only inboxes get answers: the host answers with its own rights.
        let Some(to) = question.reply.as_deref().filter(|to| is_inbox(to)) else {
            tracing::debug!("a flows query without an inbox to answer to");
            continue;
        };
        let answer = flows.answer(&question.payload, max_bytes);
        if let Err(e) = bus.reply(to, Headers::new(), answer.into()).await {
            tracing::warn!(error = %e, "cannot answer a flows query");
        }
    }
}
