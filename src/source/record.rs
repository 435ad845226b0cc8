//! What every source hands the pipeline: a [`Record`] (the raw bytes of one input unit,
//! where it came from, and an acknowledgement handle).

use serde::Serialize;
use std::fmt;
use std::sync::Arc;

/// Where an input unit came from. It names the event in every message and in its
/// dead-letter record (see [`Origin::fields`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A line of an NDJSON file or stdin, **1-based** (as editors and `sed -n` count).
    Line(u64),
    /// A record of `serve`'s spool, by sequence number.
    Spool(u64),
    /// Event `index` of an HTTP batch request, refused by the ingest before the spool
    /// (Segment's per-event limits).
    Ingest { index: u64 },
    /// A Kafka message.
    Kafka {
        topic: Arc<str>,
        partition: i32,
        offset: i64,
    },
}

impl Origin {
    /// The 1-based line of a 0-based line index.
    pub fn line_index(index: u64) -> Origin {
        Origin::Line(index + 1)
    }

    /// The origin as dead-letter record fields: `{"line": 15}`, `{"spool_seq": 42}`,
    /// `{"batch_index": 3}` or
    /// `{"topic": "t", "partition": 3, "offset": 120}`.
    pub fn fields(&self) -> OriginFields<'_> {
        match self {
            Origin::Line(n) => OriginFields {
                line: Some(*n),
                ..OriginFields::default()
            },
            Origin::Spool(seq) => OriginFields {
                spool_seq: Some(*seq),
                ..OriginFields::default()
            },
            Origin::Ingest { index } => OriginFields {
                batch_index: Some(*index),
                ..OriginFields::default()
            },
            Origin::Kafka {
                topic,
                partition,
                offset,
            } => OriginFields {
                topic: Some(topic),
                partition: Some(*partition),
                offset: Some(*offset),
                ..OriginFields::default()
            },
        }
    }
}

/// The dead-letter fields of an [`Origin`] (flattened into the record).
#[derive(Debug, Default, Serialize)]
pub struct OriginFields<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
}

impl fmt::Display for Origin {
    /// `line 15`, `spool record 42`, `orders[3]@120`: the prefix of every message about it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Line(n) => write!(f, "line {n}"),
            Origin::Spool(seq) => write!(f, "spool record {seq}"),
            Origin::Ingest { index } => write!(f, "batch[{index}] of a request"),
            Origin::Kafka {
                topic,
                partition,
                offset,
            } => write!(f, "{topic}[{partition}]@{offset}"),
        }
    }
}

/// Completed by the pipeline exactly once, when the outcome of every event of its record
/// is final (delivered, skipped or dead-lettered): a no-op for stdin and files, the spool's
/// ack for `serve`, the partition offset tracker for `consume`. A record the relay stops
/// before finishing is never acknowledged, so a durable source delivers it again.
#[derive(Default)]
pub struct Ack(Option<Box<dyn FnOnce() + Send + Sync>>);

impl Ack {
    /// Nothing to acknowledge (stdin, files).
    pub fn none() -> Ack {
        Ack(None)
    }

    pub fn new(f: impl FnOnce() + Send + Sync + 'static) -> Ack {
        Ack(Some(Box::new(f)))
    }

    /// The record's outcome is final.
    pub fn complete(self) {
        if let Some(f) = self.0 {
            f()
        }
    }

    pub fn is_none(&self) -> bool {
        self.0.is_none()
    }
}

impl fmt::Debug for Ack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Ack(..)"
        } else {
            "Ack(none)"
        })
    }
}

/// One unit of input: an NDJSON line, a spooled event, a Kafka message.
#[derive(Debug)]
pub struct Record {
    pub origin: Origin,
    /// The bytes as read (for a line over the limit, only its start).
    pub data: Vec<u8>,
    /// `Some(full length)` when the input was longer than [`crate::event::MAX_LINE_BYTES`]
    /// and only its start is in `data`.
    pub too_long: Option<u64>,
    /// Set by a source that knows the record holds no event (an empty Kafka message): it is
    /// dead-lettered with this reason.
    pub rejected: Option<String>,
    pub ack: Ack,
}

/// How a source's records hold events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One event or a `{"batch":[...]}` envelope per record (NDJSON lines, Kafka messages).
    Ndjson,
    /// Exactly one event per record (the spool holds events one by one).
    Event,
    /// A dead-letter record per line (`replay`): its `"event"` is sent again; records
    /// with outcome `uncertain` (a Journey entry SFMC may have processed) only when
    /// `uncertain` is set (`replay --uncertain`), else they are skipped with a reason.
    DeadLetter { uncertain: bool },
}
