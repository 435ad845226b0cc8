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

/// The end of a delivery command (`run`, `replay`, `serve`, `consume`): what the built-in
/// simulator received (when it was used), then the summary, its rules version followed
/// by the rule reloads when `live` reloaded any.
pub fn delivery(summary: &RunSummary, live: Option<&LiveRules>, unit: InputUnit) -> String {
    let reloads = live.map(|l| (l.version(), l.reloads(), l.failures()));
    delivery_text(summary, reloads, unit)
}

/// [`delivery`] with the rules' (current version, reloads, failed reloads).
fn delivery_text(
    summary: &RunSummary,
    reloads: Option<(String, u64, u64)>,
    unit: InputUnit,
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
    out.push_str(&rendered.replacen(" lines)", &format!(" {})", unit.name()), 1));
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
        let text = delivery_text(&s, Some(("r3-bbbb".into(), 2, 1)), InputUnit::Messages);
        assert!(
            text.starts_with("4 events read (3 messages): 4 delivered"),
            "{text}"
        );
        assert!(
            text.ends_with("rules r1-aaaa -> r3-bbbb (2 reload(s), 1 failed)"),
            "{text}"
        );
        let text = delivery_text(&s, Some(("r1-aaaa".into(), 0, 0)), InputUnit::Lines);
        assert!(text.starts_with("4 events read (3 lines)"), "{text}");
        assert!(text.ends_with("rules r1-aaaa"), "{text}");
        assert_eq!(text, delivery_text(&s, None, InputUnit::Lines));
    }

    #[test]
    fn delivery_shows_the_simulator_report_first() {
        let s = RunSummary {
            simulator_report: Some("simulator: 4 rows\n\n".into()),
            ..summary()
        };
        let text = delivery_text(&s, None, InputUnit::Lines);
        assert!(
            text.starts_with("simulator: 4 rows\n4 events read"),
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
