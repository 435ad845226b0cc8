//! Kafka helpers shared by tests/kafka.rs (broker process) and tests/kafka_mock.rs.

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// Every message of `topic` (partitions `0..partitions`, from the beginning, until none
/// came for `idle`): (key, partition, payload).
pub fn read_topic(
    servers: &str,
    topic: &str,
    partitions: i32,
    idle: Duration,
) -> Vec<(Option<String>, i32, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", "sfmc-relay-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < idle {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            last = Instant::now();
            let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
            out.push((key, m.partition(), m.payload().unwrap_or_default().to_vec()));
        }
    }
    out
}
