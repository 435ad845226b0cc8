//! Kafka as a source (`consume`): a consumer-group member reading one topic. Each message
//! is a [`Record`] whose ack completes its offset in the [`Tracker`]; offsets are committed
//! only up to messages whose events all ended (at-least-once). Back-pressure pauses every
//! assigned partition at `max_in_flight` messages not yet acknowledged (resume at half);
//! the consumer is polled while paused, so rebalances and the group session are served.

use super::kafka::{
    ConsumeStats, ConsumerCtx, DeadLetterTopic, Flow, PartitionId, Tracker, dead_letters_flushed,
    offsets_list,
};
use super::{Ack, Origin, Record};
use crate::pipeline::{Feeder, RunError};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Messages gathered into one chunk for the interpreter pool when they are already there.
const CHUNK_MESSAGES: usize = 256;

/// A subscribed consumer and what its loop needs.
pub struct KafkaSource {
    consumer: StreamConsumer<ConsumerCtx>,
    tracker: Arc<Tracker>,
    stats: Arc<ConsumeStats>,
    flow: Flow,
    dead_topic: Option<Arc<DeadLetterTopic>>,
    commit_interval: Duration,
    topic: Arc<str>,
}

/// Settings the relay's guarantees depend on (not overridable).
pub const FORCED: &[(&str, &str)] = &[
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
];

impl KafkaSource {
    /// Create the consumer and subscribe to `topic`.
    pub fn subscribe(
        config: &ClientConfig,
        topic: &str,
        max_in_flight: usize,
        commit_interval: Duration,
        flush_timeout: Duration,
        stats: Arc<ConsumeStats>,
        dead_topic: Option<Arc<DeadLetterTopic>>,
    ) -> Result<KafkaSource, RunError> {
        let mut config = config.clone();
        for (k, v) in FORCED {
            config.set(*k, *v);
        }
        let tracker = Arc::new(Tracker::default());
        let consumer: StreamConsumer<ConsumerCtx> = config
            .create_with_context(ConsumerCtx {
                tracker: tracker.clone(),
                flush_timeout,
                stats: stats.clone(),
                dead_topic: dead_topic.clone(),
            })
            .map_err(|e| RunError::Config(format!("Kafka consumer: {e}")))?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| RunError::Config(format!("subscribing to {topic}: {e}")))?;
        Ok(KafkaSource {
            consumer,
            tracker,
            stats,
            flow: Flow::new(max_in_flight),
            dead_topic,
            commit_interval,
            topic: Arc::from(topic),
        })
    }

    /// The back-pressure marks (for the summary).
    pub fn flow(&self) -> &Flow {
        &self.flow
    }

    /// One message as a record; its ack completes the offset and the in-flight count.
    fn record(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
        let id: PartitionId = (m.topic().to_string(), m.partition());
        let offset = m.offset();
        let generation = self.tracker.lock().begin(&id, offset, 1);
        self.stats.event_started();
        let (tracker, stats, low) = (self.tracker.clone(), self.stats.clone(), self.flow.low);
        let topic = if *self.topic == *m.topic() {
            self.topic.clone()
        } else {
            Arc::from(m.topic())
        };
        Record {
            origin: Origin::Kafka {
                topic,
                partition: m.partition(),
                offset,
            },
            data: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            too_long: None,
            rejected: m
                .payload()
                .is_none()
                .then(|| "empty message (no payload)".to_string()),
            ack: Ack::new(move || {
                tracker.complete(&id, generation, offset);
                stats.event_ended(low);
            }),
        }
    }

    /// Read messages into the pipeline until `stop` resolves (or the pipeline stops).
    /// Completed offsets are committed every `commit_interval`. Returns the source, for
    /// [`KafkaSource::close`] once the pipeline has drained.
    pub async fn read_into(
        self,
        feeder: Feeder,
        stop: impl std::future::Future<Output = ()> + Send,
    ) -> KafkaSource {
        let mut stop = std::pin::pin!(stop);
        let mut tick = tokio::time::interval(self.commit_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.flow.update(&self.consumer, &self.stats);
            let paused = self.stats.paused.load(Ordering::Acquire);
            let msg = tokio::select! {
                biased;
                _ = &mut stop => break,
                _ = tick.tick() => {
                    self.commit(CommitMode::Async);
                    continue;
                }
                _ = self.stats.drained.notified(), if paused => continue,
                // Polled while paused too: rebalances and the group session are served here.
                msg = self.consumer.recv() => msg,
            };
            let first = match msg {
                Err(e) => {
                    tracing::warn!("kafka: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Ok(m) => self.record(&m),
            };
            let mut chunk = vec![first];
            // Take what is already there (no waiting), up to the back-pressure mark.
            while chunk.len() < CHUNK_MESSAGES && self.stats.in_flight() < self.flow.high {
                match tokio::time::timeout(Duration::ZERO, self.consumer.recv()).await {
                    Ok(Ok(m)) => chunk.push(self.record(&m)),
                    _ => break,
                }
            }
            let n = chunk.len() as u64;
            if feeder.push(chunk).await.is_err() {
                break;
            }
            // Counted once handed to the pipeline (which delivers what it holds on stop).
            self.stats.messages.fetch_add(n, Ordering::Relaxed);
            if feeder.is_stopped() {
                break;
            }
        }
        self
    }

    /// Commit the completed offsets. With a dead-letter topic, its records are flushed
    /// first: an offset is committed only once the dead letters of the messages before it
    /// were acknowledged (or failed after librdkafka's retries; the file has them anyway).
    fn commit(&self, mode: CommitMode) {
        let commits = self.tracker.lock().take_commits(None);
        if commits.is_empty() {
            return;
        }
        if !dead_letters_flushed(self.dead_topic.as_deref()) {
            let mut g = self.tracker.lock();
            for (id, _) in &commits {
                g.commit_failed(id);
            }
            return;
        }
        tracing::debug!("kafka: committing {commits:?}");
        if let Err(e) = self.consumer.commit(&offsets_list(&commits), mode) {
            tracing::warn!("kafka: offset commit failed (retried): {e}");
            let mut g = self.tracker.lock();
            for (id, _) in &commits {
                g.commit_failed(id);
            }
        }
    }

    /// After the pipeline drained: commit what completed and leave the group now (not at
    /// the end of the process), so the others take over at once.
    pub fn close(self) {
        self.commit(CommitMode::Sync);
        self.consumer.unsubscribe();
    }
}
