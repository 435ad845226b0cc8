//! What a delivery command did, and its closing summary's wording.

use super::outcome::SkipReasons;
use crate::sfmc::ClientStats;
use std::path::PathBuf;

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Input units read: lines (`run`, `replay`), messages (`consume`), events (`serve`).
    pub lines: u64,
    pub events: u64,
    pub delivered: u64,
    pub skipped: u64,
    pub dead_lettered: u64,
    pub contacts_cached: u64,
    pub rows_coalesced: u64,
    pub splits: u64,
    pub client: ClientStats,
    pub rules_version: String,
    pub dead_letter_path: PathBuf,
    pub interrupted: bool,
    /// Why the run gave up waiting for SFMC (`delivery.give_up_after`, or a signal during
    /// an outage), if it did.
    pub gave_up: Option<String>,
    /// Events dead-lettered as `undelivered` (included in `dead_lettered`): not sent
    /// because the run stopped or gave up; `replay` sends them.
    pub undelivered: u64,
    /// Of those, events the source read but could not hand over (included above).
    pub unsent: u64,
    /// Why events were skipped, with counts (bounded: the most frequent by name).
    pub skip_reasons: SkipReasons,
    /// The simulator's "what landed" report, when the built-in simulator was used.
    pub simulator_report: Option<String>,
    /// Source-specific summary lines (e.g. `consume`'s pauses and dropped duplicates).
    pub notes: Vec<String>,
    /// What the input units are called in the summary (`lines`, `messages`, `events`).
    pub unit: &'static str,
}

impl RunSummary {
    /// SFMC calls, token requests excluded.
    pub fn calls(&self) -> u64 {
        self.client
            .requests_per_endpoint
            .iter()
            .filter(|(k, _)| k.as_str() != "token")
            .map(|(_, v)| v)
            .sum()
    }

    pub fn render(&self) -> String {
        let per: Vec<String> = self
            .client
            .requests_per_endpoint
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let unit = if self.unit.is_empty() {
            "lines"
        } else {
            self.unit
        };
        let mut s = format!(
            "{} events read ({} {unit}): {} delivered, {} skipped, {} dead-lettered{}\n",
            self.events,
            self.lines,
            self.delivered,
            self.skipped,
            self.dead_lettered,
            if self.dead_lettered > 0 {
                format!(" -> {}", self.dead_letter_path.display())
            } else {
                String::new()
            }
        );
        s.push_str(&format!(
            "SFMC calls: {} ({}), retries {}, token requests {}; rows coalesced {}, contact creations saved {}, batch splits {}\n",
            self.calls(),
            if per.is_empty() { "none".to_string() } else { per.join(", ") },
            self.client.retries,
            self.client.token_requests,
            self.rows_coalesced,
            self.contacts_cached,
            self.splits
        ));
        if !self.skip_reasons.is_empty() {
            // Every reason (up to SHOWN), one a line: what a newcomer needs to see.
            const SHOWN: usize = 10;
            let top = self.skip_reasons.top();
            let shown: Vec<String> = top
                .iter()
                .take(SHOWN)
                .map(|(r, n)| format!("{n} × {r}"))
                .collect();
            let more_named: u64 = top.iter().skip(SHOWN).map(|(_, n)| n).sum();
            let more = more_named + self.skip_reasons.other();
            let more_reasons = self.skip_reasons.distinct() - top.len().min(SHOWN) as u64;
            s.push_str(&format!(
                "skipped: {}{}\n",
                shown.join("\n         "),
                if more > 0 {
                    format!("\n         and {more} more for {more_reasons} other reason(s)")
                } else {
                    String::new()
                }
            ));
        }
        for note in &self.notes {
            s.push_str(note);
            s.push('\n');
        }
        if self.undelivered > 0 {
            s.push_str(&format!(
                "undelivered: {} events were not sent{}: they are in {} in input order with outcome \"undelivered\"; `sfmc-relay replay {}` sends them\n",
                self.undelivered,
                match &self.gave_up {
                    Some(why) => format!(" (gave up: {why})"),
                    None => " (stopped by signal)".to_string(),
                },
                self.dead_letter_path.display(),
                self.dead_letter_path.display(),
            ));
        }
        s.push_str(&format!("rules {}", self.rules_version));
        if self.gave_up.is_some() {
            s.push_str("; gave up waiting for SFMC");
        } else if self.interrupted {
            s.push_str("; stopped by signal (in-flight events were flushed)");
        }
        s
    }
}
