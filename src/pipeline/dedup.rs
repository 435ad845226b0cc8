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

    fn hash(id: &str) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        id.hash(&mut h);
        h.finish()
    }

    /// True when `id` was not among the last `cap` ids (it is remembered now).
    pub fn first_time(&mut self, id: &str) -> bool {
        if self.cap == 0 {
            return true;
        }
        let h = Self::hash(id);
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

    /// Forget `id` again (what it belonged to was not kept: a later copy is new).
    pub fn forget(&mut self, id: &str) {
        let h = Self::hash(id);
        if self.set.remove(&h)
            && let Some(i) = self.order.iter().rposition(|k| *k == h)
        {
            self.order.remove(i);
        }
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}
