//! The in-process bus: NATS semantics inside one host, no server needed.
//!
//! It carries the same bytes and headers as the NATS bus so that a host
//! behaves the same in both modes (malformed input included). Like NATS, it
//! drops messages for a subscriber that has fallen too far behind, rather
//! than letting one slow cell grow memory without bound.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::Stream;
use tokio::sync::{mpsc, oneshot};

use super::subject::{self, Pattern};
use super::{no_responders, request_timeout, BodyBus, Message, Subscription, INBOX_PREFIX};
use crate::error::BusError;

/// Messages a subscriber may have pending before new ones are dropped.
const PENDING_LIMIT: usize = 65_536;

/// The in-process [`BodyBus`]. Cheap to clone; clones share one bus.
#[derive(Clone, Default)]
pub struct LocalBus {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    interests: RwLock<Vec<Interest>>,
    inboxes: Mutex<HashMap<String, oneshot::Sender<Message>>>,
    next_id: AtomicU64,
}

/// Subscribers of one subject pattern: a plain subscription is an interest
/// of its own; the members of a queue group share one.
struct Interest {
    pattern: Pattern,
    queue: Option<String>,
    members: Vec<Member>,
    next: AtomicUsize,
}

struct Member {
    id: u64,
    tx: mpsc::Sender<Message>,
}

impl LocalBus {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Inner {
    /// Delivers to every plain subscriber and to one member of each queue
    /// group; returns how many received it.
    fn route(&self, message: Message) -> usize {
        if message.subject.starts_with(INBOX_PREFIX) {
            let waiting = self.inboxes.lock().unwrap().remove(&message.subject);
            if let Some(tx) = waiting {
                return usize::from(tx.send(message).is_ok());
            }
        }
        let interests = self.interests.read().unwrap();
        let mut delivered = 0;
        for interest in interests
            .iter()
            .filter(|i| i.pattern.matches(&message.subject))
        {
            let n = interest.members.len();
            if interest.queue.is_none() {
                delivered += interest
                    .members
                    .iter()
                    .filter(|m| offer(m, &message))
                    .count();
                continue;
            }
            // Round-robin, skipping members that are full or gone.
            let start = interest.next.fetch_add(1, Ordering::Relaxed);
            if (0..n).any(|k| offer(&interest.members[(start + k) % n], &message)) {
                delivered += 1;
            }
        }
        delivered
    }

    fn unsubscribe(&self, id: u64) {
        let mut interests = self.interests.write().unwrap();
        for interest in interests.iter_mut() {
            interest.members.retain(|m| m.id != id);
        }
        interests.retain(|i| !i.members.is_empty());
    }
}

fn offer(member: &Member, message: &Message) -> bool {
    match member.tx.try_send(message.clone()) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::warn!(subject = %message.subject, "slow subscriber: message dropped");
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

#[async_trait]
impl BodyBus for LocalBus {
    async fn publish(&self, message: Message) -> Result<(), BusError> {
        subject::check(&message.subject, false)?;
        self.inner.route(message);
        Ok(())
    }

    async fn request(&self, mut message: Message, timeout: Duration) -> Result<Message, BusError> {
        subject::check(&message.subject, false)?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let inbox = format!("{INBOX_PREFIX}{id}");
        let (tx, rx) = oneshot::channel();
        self.inner.inboxes.lock().unwrap().insert(inbox.clone(), tx);
        message.reply = Some(inbox.clone());
        let subject = message.subject.clone();
        if self.inner.route(message) == 0 {
            self.inner.inboxes.lock().unwrap().remove(&inbox);
            return Err(no_responders(&subject));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(BusError::unavailable("the bus closed")),
            Err(_) => {
                self.inner.inboxes.lock().unwrap().remove(&inbox);
                Err(request_timeout(&subject, timeout))
            }
        }
    }

    async fn subscribe(
        &self,
        subject: &str,
        queue_group: Option<&str>,
    ) -> Result<Subscription, BusError> {
        let pattern = Pattern::parse(subject)?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(PENDING_LIMIT);
        let member = Member { id, tx };
        let mut interests = self.inner.interests.write().unwrap();
        let group = queue_group.and_then(|q| {
            interests
                .iter_mut()
                .find(|i| i.pattern == pattern && i.queue.as_deref() == Some(q))
        });
        match group {
            Some(interest) => interest.members.push(member),
            None => interests.push(Interest {
                pattern,
                queue: queue_group.map(str::to_owned),
                members: vec![member],
                next: AtomicUsize::new(0),
            }),
        }
        Ok(Subscription::new(LocalSubscription {
            rx,
            id,
            bus: Arc::downgrade(&self.inner),
        }))
    }

    fn kind(&self) -> &'static str {
        "local"
    }
}

struct LocalSubscription {
    rx: mpsc::Receiver<Message>,
    id: u64,
    bus: Weak<Inner>,
}

impl Stream for LocalSubscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

#[async_trait]
impl super::Source for LocalSubscription {
    async fn unsubscribe(&mut self) {
        if let Some(bus) = self.bus.upgrade() {
            bus.unsubscribe(self.id);
        }
    }
}

impl Drop for LocalSubscription {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.upgrade() {
            bus.unsubscribe(self.id);
        }
    }
}
