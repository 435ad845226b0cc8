//! The one outcome handler's counters: every event ends delivered, skipped (with a
//! reason) or dead-lettered, counted per event type; skip reasons are counted in a bounded
//! table (the most frequent reasons, the rest as "other").

use crate::source::metrics::PerType;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinct skip reasons counted by name; rarer ones are summed as "other".
pub const SKIP_REASONS_KEPT: usize = 32;

/// Skip reasons with counts, bounded: at most [`SKIP_REASONS_KEPT`] reasons by name. When
/// a new reason arrives and the table is full, the least frequent reason is folded into
/// `other` (space-saving: frequent reasons stay named, and no count is ever lost:
/// named + other = every skipped event).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkipReasons {
    named: Vec<(String, u64)>,
    other: u64,
    /// Distinct reasons folded into `other` (approximate: a reason can be folded twice).
    other_reasons: u64,
}

impl SkipReasons {
    pub fn add(&mut self, reason: &str, n: u64) {
        if let Some(e) = self.named.iter_mut().find(|(r, _)| r == reason) {
            e.1 += n;
            return;
        }
        if self.named.len() >= SKIP_REASONS_KEPT {
            let (i, _) = self
                .named
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, c))| *c)
                .expect("the table is full, so not empty");
            let (_, c) = self.named.swap_remove(i);
            self.other += c;
            self.other_reasons += 1;
        }
        self.named.push((reason.to_string(), n));
    }

    /// Named reasons, most frequent first (ties by name).
    pub fn top(&self) -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = self.named.iter().map(|(r, n)| (r.as_str(), *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v
    }

    /// The count of a named reason (0 when not named).
    pub fn get(&self, reason: &str) -> u64 {
        self.named
            .iter()
            .find(|(r, _)| r == reason)
            .map_or(0, |(_, n)| *n)
    }

    /// Events skipped for reasons not kept by name.
    pub fn other(&self) -> u64 {
        self.other
    }

    pub fn total(&self) -> u64 {
        self.other + self.named.iter().map(|(_, n)| n).sum::<u64>()
    }

    pub fn is_empty(&self) -> bool {
        self.named.is_empty() && self.other == 0
    }

    /// Named reasons plus those folded into "other".
    pub fn distinct(&self) -> u64 {
        self.named.len() as u64 + self.other_reasons
    }
}

/// Outcome counters, shared with the sink's completions and read by `/metrics`.
#[derive(Default)]
pub struct Outcomes {
    pub delivered: PerType,
    pub skipped: PerType,
    pub dead_lettered: PerType,
    /// Journey API events dropped as duplicates (messageId within the dedup window).
    pub duplicates_dropped: AtomicU64,
    skip_reasons: Mutex<SkipReasons>,
}

impl Outcomes {
    pub fn skip(&self, ty: usize, reason: &str) {
        self.skipped.add(ty, 1);
        self.skip_reasons
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(reason, 1);
    }

    pub fn skip_reasons(&self) -> SkipReasons {
        self.skip_reasons
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates_dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_reasons_stay_bounded_and_keep_every_count() {
        let mut s = SkipReasons::default();
        for i in 0..10_000u64 {
            s.add("frequent", 1);
            s.add(&format!("rare {i}"), 1);
        }
        assert!(s.top().len() <= SKIP_REASONS_KEPT);
        assert_eq!(s.total(), 20_000);
        assert_eq!(s.top()[0], ("frequent", 10_000));
        assert!(s.other() > 0);
        assert!(s.distinct() > SKIP_REASONS_KEPT as u64);
    }

    #[test]
    fn few_reasons_are_all_named() {
        let mut s = SkipReasons::default();
        s.add("b", 1);
        s.add("a", 2);
        s.add("b", 2);
        assert_eq!(s.top(), vec![("b", 3), ("a", 2)]);
        assert_eq!((s.other(), s.get("a")), (0, 2));
    }
}
