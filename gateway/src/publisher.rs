//! The purchase publisher: one task that gathers the purchases accepted at about the same
//! moment and hands them to the queue together with `Queue::publish_each`. Each purchase
//! still gets its own confirm or error, but the queue sees one submission (one record, one
//! fsync round; over TCP, one write of pipelined frames) per batch instead of one per
//! purchase, which is most of the cost of a purchase under load.
//!
//! Batches form by themselves: once a purchase arrives, the task gives the runtime
//! [`PUBLISH_GATHER_YIELDS`] turns (the request tasks already runnable reach their publish
//! too), then takes everything waiting (up to [`PUBLISH_BATCH_MAX`]), and keeps up to
//! [`PUBLISH_BATCHES_IN_FLIGHT_MAX`] batches in flight, so a batch waiting for its fsync
//! never holds up the next one. Nothing waits on a timer: on an idle runtime the turns
//! take microseconds and a lone purchase is published at once.
//!
//! Bounded: at most [`PUBLISH_QUEUE_MAX`] purchases wait for the task; beyond that
//! [`Publisher::publish`] fails at once with [`queue::Error::Full`] (the gateway answers
//! 503 and releases the unit).

use std::sync::Arc;

use queue::{Confirm, Message, Queue};
use tokio::sync::{mpsc, oneshot};

/// Purchases waiting for the publisher task at most.
pub const PUBLISH_QUEUE_MAX: usize = 8192;
/// Messages per `publish_each` call at most.
pub const PUBLISH_BATCH_MAX: usize = 256;
/// Batches in flight (waiting for their confirms) at most.
pub const PUBLISH_BATCHES_IN_FLIGHT_MAX: usize = 8;
/// Times the task yields to the runtime after the first purchase of a batch arrives and
/// before it takes the rest: no timer, only a turn for the tasks already runnable.
pub const PUBLISH_GATHER_YIELDS: usize = 2;

struct Pending {
    message: Message,
    reply: oneshot::Sender<queue::Result<Confirm>>,
}

/// Handle to the publisher task of one topic. Cloning shares the task; the task ends once
/// every handle is dropped and the batches in flight are answered.
#[derive(Debug, Clone)]
pub struct Publisher {
    tx: mpsc::Sender<Pending>,
    topic: Arc<str>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl Publisher {
    /// Starts the publisher task for `topic` on the current Tokio runtime.
    ///
    /// # Panics
    /// Outside a Tokio runtime (use [`Publisher::spawn_on`]).
    pub fn spawn(queue: Arc<dyn Queue>, topic: &str) -> Publisher {
        Publisher::spawn_on(&tokio::runtime::Handle::current(), queue, topic)
    }

    /// Starts the publisher task for `topic` on `runtime`.
    pub fn spawn_on(
        runtime: &tokio::runtime::Handle,
        queue: Arc<dyn Queue>,
        topic: &str,
    ) -> Publisher {
        let (tx, rx) = mpsc::channel(PUBLISH_QUEUE_MAX);
        let topic: Arc<str> = Arc::from(topic);
        runtime.spawn(run(rx, queue, topic.clone()));
        Publisher { tx, topic }
    }

    /// The topic this publisher writes to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Publishes `message` with the next batch; returns its own confirm or error.
    ///
    /// # Errors
    /// [`queue::Error::Full`] at once when [`PUBLISH_QUEUE_MAX`] purchases are already
    /// waiting (nothing was sent); [`queue::Error::Connection`] if the publisher task went
    /// away after taking the message (it may or may not be stored: retry with the same
    /// id); otherwise the queue's own answer for this message.
    pub async fn publish(&self, message: Message) -> queue::Result<Confirm> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .try_send(Pending { message, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => queue::Error::Full {
                    topic: self.topic.to_string(),
                    what: "publisher queue",
                    limit: PUBLISH_QUEUE_MAX as u64,
                },
                mpsc::error::TrySendError::Closed(_) => queue::Error::Closed,
            })?;
        answer.await.unwrap_or_else(|_| {
            Err(queue::Error::Connection(
                "the publisher stopped before answering".into(),
            ))
        })
    }
}

async fn run(mut rx: mpsc::Receiver<Pending>, queue: Arc<dyn Queue>, topic: Arc<str>) {
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        while in_flight.try_join_next().is_some() {}
        if in_flight.len() >= PUBLISH_BATCHES_IN_FLIGHT_MAX {
            in_flight.join_next().await;
            continue;
        }
        let Some(first) = rx.recv().await else { break };
        // Let the purchases already on their way join this batch: each yield lets the
        // runtime run the request tasks that are ready and read the sockets that are (issue
        // 19: batches of ~2 became batches of many, with fewer writer jobs and wake-ups).
        for _ in 0..PUBLISH_GATHER_YIELDS {
            tokio::task::yield_now().await;
        }
        let mut batch = Vec::with_capacity(PUBLISH_BATCH_MAX.min(rx.len() + 1));
        batch.push(first);
        while batch.len() < PUBLISH_BATCH_MAX {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let queue = queue.clone();
        let topic = topic.clone();
        in_flight.spawn(async move {
            let (messages, replies): (Vec<Message>, Vec<_>) =
                batch.into_iter().map(|p| (p.message, p.reply)).unzip();
            match queue.publish_each(&topic, messages).await {
                Ok(results) => {
                    let mut results = results.into_iter();
                    for reply in replies {
                        let r = results.next().unwrap_or_else(|| {
                            Err(queue::Error::Connection(
                                "no answer for this message".into(),
                            ))
                        });
                        let _ = reply.send(r);
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(copy_error(&e)));
                    }
                }
            }
        });
    }
    while in_flight.join_next().await.is_some() {}
}

/// The same error for another message of a failed batch (`queue::Error` is not `Clone`).
/// Errors without a per-message meaning become [`queue::Error::Failed`], which the
/// gateway treats as "may or may not be stored".
fn copy_error(e: &queue::Error) -> queue::Error {
    use queue::Error as E;
    match e {
        E::Full { topic, what, limit } => E::Full {
            topic: topic.clone(),
            what,
            limit: *limit,
        },
        E::Invalid(s) => E::Invalid(s.clone()),
        E::Limit { what, limit } => E::Limit {
            what,
            limit: *limit,
        },
        E::NoSuchTopic(s) => E::NoSuchTopic(s.clone()),
        E::Closed => E::Closed,
        E::Connection(s) => E::Connection(s.clone()),
        E::NotSent(s) => E::NotSent(s.clone()),
        E::Remote { code, message } => E::Remote {
            code: *code,
            message: message.clone(),
        },
        other => E::Failed(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_message_gets_its_own_confirm_and_is_stored_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine =
            Arc::new(queue::Engine::open(dir.path(), queue::Config::default()).expect("open"));
        let publisher = Publisher::spawn(engine.clone(), "orders");
        let tasks: Vec<_> = (0..500u128)
            .map(|i| {
                let p = publisher.clone();
                tokio::spawn(async move {
                    p.publish(Message::new(format!("m{i}").into_bytes()).with_id(i + 1))
                        .await
                })
            })
            .collect();
        let mut offsets = std::collections::HashSet::new();
        for t in tasks {
            let c = t.await.expect("join").expect("confirm");
            assert!(!c.duplicate);
            assert!(offsets.insert(c.offset), "offset {} twice", c.offset);
        }
        assert_eq!(offsets.len(), 500);
        let stats = engine.stats("orders").await.expect("stats");
        assert_eq!(stats.next_offset - stats.log_start, 500);
        // A repeat of an id is a duplicate at the first copy's offset, not a new message.
        let again = publisher
            .publish(Message::new(b"m0".to_vec()).with_id(1))
            .await
            .expect("confirm");
        assert!(again.duplicate);
    }

    #[tokio::test]
    async fn an_invalid_message_is_refused_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine =
            Arc::new(queue::Engine::open(dir.path(), queue::Config::default()).expect("open"));
        let publisher = Publisher::spawn(engine.clone(), "orders");
        let big = vec![0u8; queue::limits::PAYLOAD_BYTES_MAX + 1];
        let (bad, good) = tokio::join!(
            publisher.publish(Message::new(big)),
            publisher.publish(Message::new(b"ok".to_vec())),
        );
        assert!(matches!(bad, Err(queue::Error::Invalid(_))), "{bad:?}");
        assert!(good.is_ok(), "{good:?}");
    }
}
