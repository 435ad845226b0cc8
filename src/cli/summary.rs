//! What the commands print on standard error when they end.

use crate::commands::run::RunSummary;
use crate::commands::transform::Counts;
use crate::rules::live::LiveRules;

/// What a delivery command's input is made of, as its summary names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputUnit {
    /// `run`, `replay`, `serve`: lines of NDJSON (a spooled event counts as a line).
    Lines,
    /// `consume`: Kafka messages.
    Messages,
}

impl InputUnit {
    fn name(self) -> &'static str {
        match self {
            InputUnit::Lines => "lines",
            InputUnit::Messages => "messages",
        }
    }
}

/// Why events were dead-lettered, with counts.
pub type DeadReasons = std::collections::BTreeMap<String, u64>;

/// The end of a delivery command (`run`, `replay`, `serve`, `consume`): what the built-in
/// simulator received (when it was used), then the summary with why events were
/// dead-lettered (`dead`), its rules version followed by the rule reloads when `live`
/// reloaded any; after a run on the built-in simulator, what to set for a real account.
pub fn delivery(
    summary: &RunSummary,
    live: Option<&LiveRules>,
    unit: InputUnit,
    dead: &DeadReasons,
) -> String {
    let reloads = live.map(|l| (l.version(), l.reloads(), l.failures()));
    delivery_text(summary, reloads, unit, dead)
}

/// The line after a run on the built-in simulator.
pub const REAL_ACCOUNT_HINT: &str = "(That was the built-in SFMC simulator. To deliver to your account, set SFMC_CLIENT_ID, SFMC_CLIENT_SECRET and SFMC_SUBDOMAIN: README, \"Your SFMC account\".)";

/// [`delivery`] with the rules' (current version, reloads, failed reloads).
fn delivery_text(
    summary: &RunSummary,
    reloads: Option<(String, u64, u64)>,
    unit: InputUnit,
    dead: &DeadReasons,
) -> String {
    let mut out = String::new();
    if let Some(report) = &summary.simulator_report {
        out.push_str(report.trim_end());
        out.push('\n');
    }
    let rendered = match reloads {
        Some((current, reloads, failures)) if reloads > 0 || failures > 0 => {
            let mut annotated = summary.clone();
            annotated.rules_version = format!(
                "{} -> {current} ({reloads} reload(s), {failures} failed)",
                summary.rules_version
            );
            annotated.render()
        }
        _ => summary.render(),
    };
    let rendered = rendered.replacen(" lines)", &format!(" {})", unit.name()), 1);
    // Why events were dead-lettered, before the last line (the rules).
    let (body, last) = rendered
        .rsplit_once('\n')
        .unwrap_or(("", rendered.as_str()));
    if !body.is_empty() {
        out.push_str(body);
        out.push('\n');
    }
    if !dead.is_empty() {
        let mut top: Vec<(&String, &u64)> = dead.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let shown: Vec<String> = top
            .iter()
            .take(10)
            .map(|(r, n)| format!("{n} × {r}"))
            .collect();
        out.push_str(&format!(
            "dead-lettered: {}\n",
            shown.join("\n               ")
        ));
    }
    out.push_str(last);
    if summary.simulator_report.is_some() {
        out.push('\n');
        out.push_str(REAL_ACCOUNT_HINT);
    }
    out
}

/// The end of `transform`: counts, and every rules version that processed a line.
pub fn transform(counts: &Counts, versions: &[String], live: &LiveRules) -> String {
    transform_text(counts, versions, live.reloads(), live.failures())
}

fn transform_text(c: &Counts, versions: &[String], reloads: u64, failures: u64) -> String {
    format!(
        "transform: {} events from {} lines: {} calls, {} skipped, {} rejected (rules {}; {} reload(s), {} failed)",
        c.events,
        c.lines,
        c.calls,
        c.skipped,
        c.rejected,
        versions.join(" -> "),
        reloads,
        failures
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> RunSummary {
        RunSummary {
            lines: 3,
            events: 4,
            delivered: 4,
            rules_version: "r1-aaaa".into(),
            ..Default::default()
        }
    }

    #[test]
    fn delivery_names_the_unit_and_the_reloads() {
        let s = summary();
        let text = delivery_text(
            &s,
            Some(("r3-bbbb".into(), 2, 1)),
            InputUnit::Messages,
            &DeadReasons::new(),
        );
        assert!(
            text.starts_with("4 events read (3 messages): 4 delivered"),
            "{text}"
        );
        assert!(
            text.ends_with("rules r1-aaaa -> r3-bbbb (2 reload(s), 1 failed)"),
            "{text}"
        );
        let text = delivery_text(
            &s,
            Some(("r1-aaaa".into(), 0, 0)),
            InputUnit::Lines,
            &DeadReasons::new(),
        );
        assert!(text.starts_with("4 events read (3 lines)"), "{text}");
        assert!(text.ends_with("rules r1-aaaa"), "{text}");
        assert_eq!(
            text,
            delivery_text(&s, None, InputUnit::Lines, &DeadReasons::new())
        );
    }

    #[test]
    fn delivery_shows_the_simulator_report_first() {
        let s = RunSummary {
            simulator_report: Some("simulator: 4 rows\n\n".into()),
            ..summary()
        };
        let text = delivery_text(&s, None, InputUnit::Lines, &DeadReasons::new());
        assert!(
            text.starts_with("simulator: 4 rows\n4 events read"),
            "{text}"
        );
        assert!(text.ends_with(REAL_ACCOUNT_HINT), "{text}");
    }

    #[test]
    fn delivery_says_why_events_were_dead_lettered_before_the_rules() {
        let s = RunSummary {
            dead_lettered: 3,
            ..summary()
        };
        let dead: DeadReasons = [("bad date".to_string(), 1), ("no key".to_string(), 2)].into();
        let text = delivery_text(&s, None, InputUnit::Lines, &dead);
        assert!(
            text.ends_with("dead-lettered: 2 × no key\n               1 × bad date\nrules r1-aaaa"),
            "{text}"
        );
    }

    #[test]
    fn transform_lists_the_versions() {
        let c = Counts {
            lines: 2,
            events: 2,
            calls: 3,
            skipped: 0,
            rejected: 1,
        };
        assert_eq!(
            transform_text(&c, &["r1-a".into(), "r2-b".into()], 1, 0),
            "transform: 2 events from 2 lines: 3 calls, 0 skipped, 1 rejected (rules r1-a -> r2-b; 1 reload(s), 0 failed)"
        );
    }
}
