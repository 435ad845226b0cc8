//! Segment events: reading NDJSON lines into events.

use serde_json::Value;

/// One input line, parsed: one event, a batch envelope's events, or an error.
pub enum Line {
    /// Nothing but whitespace: not an event.
    Blank,
    Events(Vec<Value>),
    Invalid(String),
}

/// Parse one NDJSON line (`line_no` is 0-based, for messages).
pub fn parse_line(text: &str, line_no: u64) -> Line {
    let t = text.trim();
    if t.is_empty() {
        return Line::Blank;
    }
    match serde_json::from_str::<Value>(t) {
        Ok(Value::Object(mut obj)) => {
            if !obj.contains_key("type") && obj.contains_key("batch") {
                return match obj.remove("batch") {
                    Some(Value::Array(batch)) => Line::Events(batch),
                    _ => Line::Invalid(format!(
                        "line {}: \"batch\" must be an array of events",
                        line_no + 1
                    )),
                };
            }
            Line::Events(vec![Value::Object(obj)])
        }
        Ok(other) => Line::Invalid(format!(
            "line {}: expected a JSON object (an event or {{\"batch\":[...]}}), found {}",
            line_no + 1,
            match other {
                Value::Array(_) => "an array",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                _ => "null",
            }
        )),
        Err(e) => Line::Invalid(format!("line {}: invalid JSON: {e}", line_no + 1)),
    }
}

/// A string field of an event, if present and a string.
pub fn str_field<'a>(event: &'a Value, key: &str) -> Option<&'a str> {
    event.get(key).and_then(Value::as_str)
}
