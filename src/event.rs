//! Segment events: reading NDJSON lines into events.

use crate::source::Origin;
use crate::view::Val;
use serde_json::Value;

/// One input line, parsed: one event, a batch envelope's events, or an error.
pub enum Line {
    /// Nothing but whitespace: not an event.
    Blank,
    Events(Vec<Value>),
    Invalid(String),
}

/// Parse one NDJSON line (`line_no` is 0-based; messages say the 1-based line).
pub fn parse_line(text: &str, line_no: u64) -> Line {
    parse_line_at(text, &Origin::line_index(line_no)).0
}

/// [`parse_line`], also telling whether the line was a `{"batch":[...]}` envelope (when
/// it was not, the line's text is the text of its one event).
pub fn parse_line_envelope(text: &str, line_no: u64) -> (Line, bool) {
    parse_line_at(text, &Origin::line_index(line_no))
}

/// [`parse_line_envelope`] for a record from anywhere: messages start with `at`.
pub fn parse_line_at(text: &str, at: &Origin) -> (Line, bool) {
    let t = text.trim();
    if t.is_empty() {
        return (Line::Blank, false);
    }
    let line = match serde_json::from_str::<Value>(t) {
        Ok(Value::Object(mut obj)) => {
            if !obj.contains_key("type") && obj.contains_key("batch") {
                return (
                    match obj.remove("batch") {
                        Some(Value::Array(batch)) => Line::Events(batch),
                        _ => Line::Invalid(bad_batch(at)),
                    },
                    true,
                );
            }
            Line::Events(vec![Value::Object(obj)])
        }
        Ok(other) => Line::Invalid(not_an_object(at, Val::from_value(&other).type_name())),
        Err(e) => Line::Invalid(invalid_json(at, &e)),
    };
    (line, false)
}

/// One input line read into borrowed views (see [`crate::view`]): the interpreter's fast
/// path. Same outcomes and messages as [`parse_line`].
pub enum LineView<'a> {
    Blank,
    Events(Vec<Val<'a>>),
    Invalid(String),
}

/// [`parse_line_envelope`] into views borrowing from `text`.
pub fn parse_line_view(text: &str, line_no: u64) -> (LineView<'_>, bool) {
    parse_view_at(text, &Origin::line_index(line_no))
}

/// [`parse_line_view`] for a record from anywhere: messages start with `at`.
pub fn parse_view_at<'a>(text: &'a str, at: &Origin) -> (LineView<'a>, bool) {
    let t = text.trim();
    if t.is_empty() {
        return (LineView::Blank, false);
    }
    let line = match serde_json::from_str::<Val>(t) {
        Ok(Val::Obj(mut obj)) => {
            if !obj.contains_key("type") && obj.contains_key("batch") {
                return (
                    match obj.remove("batch") {
                        Some(Val::Arr(batch)) => LineView::Events(batch),
                        _ => LineView::Invalid(bad_batch(at)),
                    },
                    true,
                );
            }
            LineView::Events(vec![Val::Obj(obj)])
        }
        Ok(other) => LineView::Invalid(not_an_object(at, other.type_name())),
        Err(e) => LineView::Invalid(invalid_json(at, &e)),
    };
    (line, false)
}

fn bad_batch(at: &Origin) -> String {
    format!("{at}: \"batch\" must be an array of events")
}

fn not_an_object(at: &Origin, found: &str) -> String {
    format!("{at}: expected a JSON object (an event or {{\"batch\":[...]}}), found {found}")
}

fn invalid_json(at: &Origin, e: &serde_json::Error) -> String {
    format!("{at}: invalid JSON: {e}")
}

/// The reason a record that is not UTF-8 text is rejected.
pub fn not_utf8_reason(at: &Origin, e: std::str::Utf8Error) -> String {
    format!("{at}: not UTF-8 text: {e}")
}

/// A string field of an event, if present and a string.
pub fn str_field<'a>(event: &'a Value, key: &str) -> Option<&'a str> {
    event.get(key).and_then(Value::as_str)
}

/// The longest input line accepted (1 MiB). Segment's own API refuses events over 32 KB
/// and batches over 500 KB, so a longer line is a mistake or an attack: it is rejected
/// with a reason (never held in memory whole) and the stream goes on.
///
/// The HTTP ingest (`serve`) should use the same limit for one request body.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// One line read by [`read_line_limited`].
#[derive(Debug, PartialEq, Eq)]
pub enum ReadLine {
    /// End of input: nothing was read.
    Eof,
    /// A line (in the buffer, with its `\n` if it had one).
    Line,
    /// A line longer than the limit: the buffer holds its first `limit` bytes, the rest
    /// was read and dropped. `len` is its full length in bytes (without the `\n`).
    TooLong { len: u64 },
}

/// Read one `\n`-terminated line into `buf` (cleared first), holding at most `limit`
/// bytes of it in memory: the rest of a longer line is read and discarded.
pub fn read_line_limited<R: std::io::BufRead + ?Sized>(
    input: &mut R,
    buf: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<ReadLine> {
    buf.clear();
    let mut len: u64 = 0;
    let mut any = false;
    loop {
        let available = match input.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            break;
        }
        any = true;
        let (chunk, done) = match memchr::memchr(b'\n', available) {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        let content = if done {
            &chunk[..chunk.len() - 1]
        } else {
            chunk
        };
        len += content.len() as u64;
        let room = (limit + usize::from(done)).saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = chunk.len();
        input.consume(used);
        if done {
            break;
        }
    }
    if !any {
        return Ok(ReadLine::Eof);
    }
    if len > limit as u64 {
        buf.truncate(limit);
        return Ok(ReadLine::TooLong { len });
    }
    Ok(ReadLine::Line)
}

/// The reason a too-long line is rejected (`line_no` 0-based).
pub fn too_long_reason(line_no: u64, len: u64) -> String {
    too_long_reason_at(&Origin::line_index(line_no), len)
}

/// The reason a too-long record is rejected.
pub fn too_long_reason_at(at: &Origin, len: u64) -> String {
    format!("{at}: {len} bytes long; the limit is {MAX_LINE_BYTES} bytes (1 MiB) per line")
}

/// The start of a too-long line, for a dead letter (the whole line is not kept).
pub fn preview(bytes: &[u8]) -> String {
    const KEEP: usize = 1024;
    let cut = &bytes[..bytes.len().min(KEEP)];
    let mut s = String::from_utf8_lossy(cut).into_owned();
    s.push_str("…(truncated)");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    fn lines(input: &[u8], limit: usize, cap: usize) -> Vec<(ReadLine, Vec<u8>)> {
        let mut r = BufReader::with_capacity(cap, input);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            match read_line_limited(&mut r, &mut buf, limit).unwrap() {
                ReadLine::Eof => return out,
                other => out.push((other, buf.clone())),
            }
        }
    }

    #[test]
    fn lines_within_the_limit_are_kept_whole() {
        for cap in [1, 2, 3, 64] {
            let got = lines(b"ab\ncdef\n\nxyz", 4, cap);
            assert_eq!(
                got,
                vec![
                    (ReadLine::Line, b"ab\n".to_vec()),
                    (ReadLine::Line, b"cdef\n".to_vec()),
                    (ReadLine::Line, b"\n".to_vec()),
                    (ReadLine::Line, b"xyz".to_vec()),
                ],
                "{cap}"
            );
        }
    }

    #[test]
    fn longer_lines_are_cut_and_the_stream_goes_on() {
        for cap in [1, 3, 64] {
            let got = lines(b"abcdefgh\nok\nabcde", 4, cap);
            assert_eq!(
                got,
                vec![
                    (ReadLine::TooLong { len: 8 }, b"abcd".to_vec()),
                    (ReadLine::Line, b"ok\n".to_vec()),
                    (ReadLine::TooLong { len: 5 }, b"abcd".to_vec()),
                ],
                "{cap}"
            );
        }
    }
}
