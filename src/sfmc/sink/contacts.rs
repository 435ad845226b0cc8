//! The contact cache: Contact Keys already created, so each is created once.

use std::collections::{HashSet, VecDeque};

/// Contact Keys already created (or being created), bounded, oldest forgotten first.
pub(super) struct ContactCache {
    cap: usize,
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl ContactCache {
    pub(super) fn new(cap: usize) -> Self {
        ContactCache {
            cap,
            set: HashSet::new(),
            order: VecDeque::new(),
        }
    }
}

impl ContactCache {
    /// True when `key` was not known (the caller must create it).
    pub(super) fn claim(&mut self, key: &str) -> bool {
        if self.cap == 0 {
            return true;
        }
        if self.set.contains(key) {
            return false;
        }
        if self.set.len() >= self.cap
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(key.to_string());
        self.order.push_back(key.to_string());
        true
    }
    pub(super) fn forget(&mut self, key: &str) {
        self.set.remove(key);
    }
}
