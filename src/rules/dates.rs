//! Date normalisation for columns declared as dates: common forms -> ISO-8601 UTC.

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use serde_json::Value;

/// What the error messages list as accepted.
pub const ACCEPTED: &str = "ISO-8601, YYYY-MM-DD HH:MM:SS, RFC 2822 or epoch milliseconds";

/// Normalise `v` to `YYYY-MM-DDTHH:MM:SS.sssZ` (UTC), the form JavaScript's
/// `toISOString()` writes and SFMC accepts. Epoch numbers are milliseconds.
/// SFMC stores dates as SQL Server `datetime`, so years outside 1753-9999 are refused.
pub fn normalize(v: &Value) -> Result<String, String> {
    let dt = match v {
        Value::Number(n) => {
            let ms = n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
                .ok_or_else(|| format!("{n} is not a date ({ACCEPTED})"))?;
            from_millis(ms).ok_or_else(|| format!("{n} is out of range as epoch milliseconds"))?
        }
        Value::String(s) => {
            parse_str(s.trim()).ok_or_else(|| format!("{s:?} is not a date ({ACCEPTED})"))?
        }
        other => return Err(format!("{other} is not a date ({ACCEPTED})")),
    };
    let year = chrono::Datelike::year(&dt);
    if !(1753..=9999).contains(&year) {
        return Err(format!(
            "{} is outside SFMC's date range (years 1753-9999)",
            v
        ));
    }
    Ok(dt.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn from_millis(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

fn parse_str(s: &str) -> Option<DateTime<Utc>> {
    if s.is_empty() {
        return None;
    }
    if s.bytes().all(|b| b.is_ascii_digit()) && s.len() >= 9 {
        return s.parse::<i64>().ok().and_then(from_millis);
    }
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Some(d.with_timezone(&Utc));
    }
    // ISO-8601 variants: space separator, no seconds fraction, offsets without colon.
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f%#z",
        "%Y-%m-%d %H:%M:%S%.f%#z",
        "%Y-%m-%dT%H:%M%#z",
    ] {
        if let Ok(d) = DateTime::parse_from_str(s, f) {
            return Some(d.with_timezone(&Utc));
        }
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(d) = NaiveDateTime::parse_from_str(s, f) {
            return Some(d.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return d.and_hms_opt(0, 0, 0).map(|d| d.and_utc());
    }
    if let Ok(d) = DateTime::parse_from_rfc2822(s) {
        return Some(d.with_timezone(&Utc));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepted_forms() {
        for (input, want) in [
            (json!("2013-05-23T14:32:00Z"), "2013-05-23T14:32:00.000Z"),
            (
                json!("2013-05-23T14:32:00.123Z"),
                "2013-05-23T14:32:00.123Z",
            ),
            (
                json!("2013-05-23T16:32:00+02:00"),
                "2013-05-23T14:32:00.000Z",
            ),
            (
                json!("2013-05-23T16:32:00+0200"),
                "2013-05-23T14:32:00.000Z",
            ),
            (json!("2013-05-23 14:32:00"), "2013-05-23T14:32:00.000Z"),
            (json!("2013-05-23T14:32:00"), "2013-05-23T14:32:00.000Z"),
            (json!("2013-05-23"), "2013-05-23T00:00:00.000Z"),
            (
                json!("Thu, 23 May 2013 16:32:00 +0200"),
                "2013-05-23T14:32:00.000Z",
            ),
            (json!(1369319520000i64), "2013-05-23T14:32:00.000Z"),
            (json!("1369319520000"), "2013-05-23T14:32:00.000Z"),
            (json!(1989), "1970-01-01T00:00:01.989Z"),
        ] {
            assert_eq!(normalize(&input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn rejected_forms() {
        for input in [
            json!("yesterday"),
            json!("2013-13-45"),
            json!(""),
            json!(true),
            json!("1700-01-01"),
            json!({"a":1}),
        ] {
            assert!(normalize(&input).is_err(), "{input}");
        }
        assert!(
            normalize(&json!("1700-01-01"))
                .unwrap_err()
                .contains("1753-9999")
        );
    }
}
