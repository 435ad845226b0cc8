//! De-duplication of Journey Builder API events (not idempotent) by `messageId`, for
//! sources that may deliver a message twice (Kafka after a rebalance).

use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};

/// A bounded window of recently seen message ids (dropping duplicate Journey Builder API
/// events on redelivery). Keeps 64-bit hashes, not the ids: 16 bytes per id; two ids
/// collide with a probability of about n²/2⁶⁵ (3·10⁻¹⁰ for 100,000).
#[derive(Debug)]
pub struct SeenIds {
    cap: usize,
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

impl SeenIds {
    /// Remember at most `cap` ids (0: remember none, every id is new).
    pub fn new(cap: usize) -> Self {
        SeenIds {
            cap,
            set: HashSet::with_capacity(cap.min(1 << 20)),
            order: VecDeque::with_capacity(cap.min(1 << 20)),
        }
    }

    /// True when `id` was not among the last `cap` ids (it is remembered now).
    pub fn first_time(&mut self, id: &str) -> bool {
        if self.cap == 0 {
            return true;
        }
        let mut h = std::hash::DefaultHasher::new();
        id.hash(&mut h);
        let h = h.finish();
        if !self.set.insert(h) {
            return false;
        }
        self.order.push_back(h);
        if self.order.len() > self.cap
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}
