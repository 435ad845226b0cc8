//! The one NDJSON line reader: stdin or a file, lines of at most
//! [`MAX_LINE_BYTES`](crate::event::MAX_LINE_BYTES) held in memory, 1-based line numbers.
//! `run`, `replay`, `transform`, `explain`, `test` and `produce` all read through it.

use super::Origin;
use crate::event::{
    MAX_LINE_BYTES, ReadLine, not_utf8_reason, preview, read_line_limited, too_long_reason_at,
};
use std::io::{BufReader, Read};
use std::path::Path;

/// Open `path`, or stdin when `None` or `-`; the error names the file.
pub fn open_input(path: Option<&Path>) -> std::io::Result<Box<dyn Read + Send>> {
    Ok(match path {
        // `-` is stdin, as for most command-line tools.
        Some(p) if p.as_os_str() == "-" => Box::new(std::io::stdin()),
        Some(p) => Box::new(std::fs::File::open(p).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot open {}: {e}", p.display()))
        })?),
        None => Box::new(std::io::stdin()),
    })
}

/// One line read by [`LineReader::next_line`], borrowed from the reader's buffer.
#[derive(Debug)]
pub struct RawLine<'a> {
    /// The 1-based line number.
    pub number: u64,
    /// The line's bytes, with its `\n` if it had one; for a line over the limit, its start.
    pub bytes: &'a [u8],
    /// `Some(full length)` for a line over the limit.
    pub too_long: Option<u64>,
}

impl RawLine<'_> {
    pub fn origin(&self) -> Origin {
        Origin::Line(self.number)
    }

    /// The line as text, or why it cannot be read as an event (too long, not UTF-8).
    pub fn text(&self) -> Result<&str, Rejected> {
        if let Some(len) = self.too_long {
            return Err(Rejected {
                reason: too_long_reason_at(&self.origin(), len),
                raw: preview(self.bytes),
            });
        }
        std::str::from_utf8(self.bytes).map_err(|e| Rejected {
            reason: not_utf8_reason(&self.origin(), e),
            raw: String::from_utf8_lossy(self.bytes).trim_end().to_string(),
        })
    }
}

/// A line that is not text: why, and what of it to keep in a dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub reason: String,
    pub raw: String,
}

/// Reads NDJSON lines (see the module docs).
pub struct LineReader<R> {
    input: BufReader<R>,
    buf: Vec<u8>,
    lines: u64,
}

/// The read buffer: large enough that a file is read in few system calls.
const READ_BUFFER: usize = 256 * 1024;

impl<R: Read> LineReader<R> {
    pub fn new(input: R) -> Self {
        LineReader {
            input: BufReader::with_capacity(READ_BUFFER, input),
            buf: Vec::with_capacity(64 * 1024),
            lines: 0,
        }
    }

    /// The next line, or `None` at the end of the input.
    pub fn next_line(&mut self) -> std::io::Result<Option<RawLine<'_>>> {
        let read = read_line_limited(&mut self.input, &mut self.buf, MAX_LINE_BYTES)?;
        let too_long = match read {
            ReadLine::Eof => return Ok(None),
            ReadLine::Line => None,
            ReadLine::TooLong { len } => Some(len),
        };
        self.lines += 1;
        Ok(Some(RawLine {
            number: self.lines,
            bytes: &self.buf,
            too_long,
        }))
    }

    /// Lines read so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// True when no more input is buffered: the next read may block (time to flush output
    /// or hand over a partial chunk, so `tail -f | sfmc-relay ...` shows each result).
    pub fn caught_up(&self) -> bool {
        self.input.buffer().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_numbered_from_one_and_bad_lines_say_where() {
        let mut input = b"{\"a\":1}\n\xff\xfe\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES + 5));
        input.extend_from_slice(b"\nlast");
        let mut r = LineReader::new(&input[..]);
        let l = r.next_line().unwrap().unwrap();
        assert_eq!((l.number, l.text().unwrap()), (1, "{\"a\":1}\n"));
        let l = r.next_line().unwrap().unwrap();
        assert!(
            l.text()
                .unwrap_err()
                .reason
                .starts_with("line 2: not UTF-8")
        );
        let l = r.next_line().unwrap().unwrap();
        let e = l.text().unwrap_err();
        assert!(
            e.reason.starts_with("line 3: 1048581 bytes long"),
            "{}",
            e.reason
        );
        assert!(e.raw.len() < 2000);
        let l = r.next_line().unwrap().unwrap();
        assert_eq!((l.number, l.text().unwrap()), (4, "last"));
        assert!(r.next_line().unwrap().is_none());
        assert_eq!(r.lines(), 4);
    }
}
