//! Rowset rows as received, and as stored.
//!
//! A rowset body is parsed in one of two ways, and both give the same [`RowIn`]s:
//!
//! - the fast path ([`FastRows`]): a typed parse that borrows column names and string
//!   values from the body (no `serde_json::Value`, no `IndexMap`, no SipHash). It only
//!   handles the common shape: an array of objects whose `keys` / `values` are objects of
//!   scalars (or `null`), with any other row fields scalars too. Anything else (an
//!   array or object anywhere below that, a row or `keys` / `values` that is not an
//!   object, serde_json's private magic keys, a syntax error) makes it give up;
//! - the general path: `serde_json::from_slice::<Value>` as before, then
//!   [`RowIn::from_value`] over each row. It is the reference: it runs whenever the fast
//!   path gave up, so error bodies (syntax errors, the recursion limit, wrong shapes) are
//!   serde_json's own, word for word.
//!
//! Within one JSON object a repeated key keeps its first position and takes the later
//! value (what `serde_json::Map` with `preserve_order` does); the fast path does the same.
//!
//! Stored rows hold [`Val`]s (a compact copy of a scalar, or a boxed `Value` for the rare
//! nested value an undeclared data extension accepts) keyed by a per-data-extension column
//! id; `serde_json::Value`s are built only when somebody looks at them.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde_json::{Map, Number, Value};

/// A column value as received.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ValIn<'a> {
    Null,
    Bool(bool),
    Num(Number),
    Str(Cow<'a, str>),
    /// An array or an object (general path only).
    Nested(&'a Value),
}

/// The columns of `keys` or `values` in first-seen order, one entry per distinct name.
pub(crate) type Cols<'a> = Vec<(Cow<'a, str>, ValIn<'a>)>;

/// One element of a rowset body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RowIn<'a> {
    /// An object; `keys` / `values` are `None` when absent or `null`.
    Row {
        keys: Option<Cols<'a>>,
        values: Option<Cols<'a>>,
    },
    /// Not of the form `{"keys":{...},"values":{...}}`: the error message.
    Malformed(&'static str),
}

pub(crate) const ROW_NOT_OBJECT: &str =
    "Each row must be an object of the form {\"keys\":{...},\"values\":{...}}.";
const KEYS_NOT_OBJECT: &str = "The 'keys' property of a row must be an object.";
const VALUES_NOT_OBJECT: &str = "The 'values' property of a row must be an object.";

impl<'a> ValIn<'a> {
    /// Borrow a `serde_json::Value` (strings are not copied).
    pub fn from_value(v: &'a Value) -> Self {
        match v {
            Value::Null => ValIn::Null,
            Value::Bool(b) => ValIn::Bool(*b),
            Value::Number(n) => ValIn::Num(n.clone()),
            Value::String(s) => ValIn::Str(Cow::Borrowed(s)),
            Value::Array(_) | Value::Object(_) => ValIn::Nested(v),
        }
    }

    /// The compact JSON text of a value that is not a string (`Value`'s `Display`).
    pub fn json_text(&self) -> String {
        match self {
            ValIn::Null => Value::Null.to_string(),
            ValIn::Bool(b) => Value::Bool(*b).to_string(),
            ValIn::Num(n) => Value::Number(n.clone()).to_string(),
            ValIn::Str(s) => Value::String(s.to_string()).to_string(),
            ValIn::Nested(v) => v.to_string(),
        }
    }
}

impl<'a> RowIn<'a> {
    /// The general path: one row of a parsed body.
    pub fn from_value(row: &'a Value) -> Self {
        let Value::Object(obj) = row else {
            return RowIn::Malformed(ROW_NOT_OBJECT);
        };
        let field = |name: &str, err: &'static str| match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(cols_from_map(m))),
            Some(_) => Err(err),
        };
        let keys = match field("keys", KEYS_NOT_OBJECT) {
            Ok(k) => k,
            Err(m) => return RowIn::Malformed(m),
        };
        let values = match field("values", VALUES_NOT_OBJECT) {
            Ok(v) => v,
            Err(m) => return RowIn::Malformed(m),
        };
        RowIn::Row { keys, values }
    }
}

fn cols_from_map(m: &Map<String, Value>) -> Cols<'_> {
    m.iter()
        .map(|(k, v)| (Cow::Borrowed(k.as_str()), ValIn::from_value(v)))
        .collect()
}

// ----- the fast path ------------------------------------------------------------------

/// The fast path (see the module docs): a scanner for the common shape of a rowset body
/// that gives up (`None`) on anything else, leaving it to the general path. It only
/// accepts text serde_json accepts, and then yields what [`RowIn::from_value`] yields from
/// serde_json's `Value`: escaped strings and numbers are decoded by serde_json itself.
pub(crate) struct FastRows;

/// serde_json gives keys with this prefix a special meaning when building a `Value`
/// (`$serde_json::private::RawValue`); leave them to the general path.
fn is_private_key(k: &str) -> bool {
    k.starts_with("$serde_json::private::")
}

impl FastRows {
    pub fn parse(body: &[u8]) -> Option<Vec<RowIn<'_>>> {
        let text = std::str::from_utf8(body).ok()?;
        let mut p = Scan {
            s: text,
            b: body,
            i: 0,
        };
        p.ws();
        p.eat(b'[')?;
        let mut rows = Vec::new();
        p.ws();
        if p.peek()? == b']' {
            p.i += 1;
        } else {
            loop {
                rows.push(p.row()?);
                p.ws();
                match p.next()? {
                    b',' => p.ws(),
                    b']' => break,
                    _ => return None,
                }
            }
        }
        p.ws();
        (p.i == body.len()).then_some(rows)
    }
}

struct Scan<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    /// JSON whitespace, as serde_json skips it.
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    /// `{` pairs `}` of one row; `keys` / `values` must be `null` or objects of scalars,
    /// any other field a scalar.
    fn row(&mut self) -> Option<RowIn<'a>> {
        self.eat(b'{')?;
        let mut keys = None;
        let mut values = None;
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(RowIn::Row { keys, values });
        }
        loop {
            let k = self.string()?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            match &*k {
                // A repeated field: the later one wins, as in a `Map`.
                "keys" => keys = self.cols(4)?,
                "values" => values = self.cols(32)?,
                k if is_private_key(k) => return None,
                _ => {
                    self.scalar()?;
                }
            }
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                b'}' => break,
                _ => return None,
            }
        }
        Some(RowIn::Row { keys, values })
    }

    /// `null` (`Some(None)`) or an object of scalars.
    fn cols(&mut self, cap: usize) -> Option<Option<Cols<'a>>> {
        if self.b[self.i..].starts_with(b"null") {
            self.i += 4;
            return Some(None);
        }
        self.eat(b'{')?;
        let mut cols = Vec::with_capacity(cap);
        let mut seen = 0u128;
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(Some(cols));
        }
        loop {
            let k = self.string()?;
            if is_private_key(&k) {
                return None;
            }
            self.ws();
            self.eat(b':')?;
            self.ws();
            let v = self.scalar()?;
            insert_col(&mut cols, &mut seen, k, v);
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                b'}' => break,
                _ => return None,
            }
        }
        Some(Some(cols))
    }

    /// A string literal: borrowed when it holds no escape, else decoded by serde_json.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.i + 1;
        let end = start + special_byte(&self.b[start..])?;
        match self.b[end] {
            b'"' => {
                self.i = end + 1;
                return Some(Cow::Borrowed(&self.s[start..end]));
            }
            // serde_json refuses raw control characters in strings.
            b'\\' => {}
            _ => return None,
        }
        // Find the closing quote (a backslash always escapes the next byte) and let
        // serde_json decode the literal.
        let mut j = end;
        loop {
            j += memchr::memchr2(b'"', b'\\', self.b.get(j..)?)?;
            if self.b[j] == b'"' {
                break;
            }
            j += 2;
        }
        let decoded: String = serde_json::from_str(self.s.get(self.i..=j)?).ok()?;
        self.i = j + 1;
        Some(Cow::Owned(decoded))
    }

    fn literal(&mut self, word: &[u8], v: ValIn<'a>) -> Option<ValIn<'a>> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Some(v)
        } else {
            None
        }
    }

    /// A string, number, `true`, `false` or `null`. Whatever follows is checked by the
    /// caller (it must be whitespace, `,`, `}` or `]`).
    fn scalar(&mut self) -> Option<ValIn<'a>> {
        match self.peek()? {
            b'"' => Some(ValIn::Str(self.string()?)),
            b't' => self.literal(b"true", ValIn::Bool(true)),
            b'f' => self.literal(b"false", ValIn::Bool(false)),
            b'n' => self.literal(b"null", ValIn::Null),
            b'-' | b'0'..=b'9' => {
                let start = self.i;
                let len = self.b[start..]
                    .iter()
                    .position(|c| !matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                    .unwrap_or(self.b.len() - start);
                self.i = start + len;
                let token = &self.b[start..self.i];
                // Plain small non-negative integers (no leading zero) are what
                // serde_json reads as a u64; leave everything else to serde_json.
                if len <= 18
                    && token.iter().all(u8::is_ascii_digit)
                    && (len == 1 || token[0] != b'0')
                {
                    let n = token
                        .iter()
                        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
                    return Some(ValIn::Num(n.into()));
                }
                serde_json::from_str::<ValIn>(&self.s[start..self.i]).ok()
            }
            _ => None,
        }
    }
}

/// Position of the first `"`, `\\` or control character (below 0x20), eight bytes at a
/// time.
fn special_byte(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Flags every byte of `x` that is zero, or any byte after a flagged one: the lowest
    // flag is exact.
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut i = 0;
    while let Some(chunk) = b.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().ok()?);
        let hits = zero(x ^ (ONES * u64::from(b'"')))
            | zero(x ^ (ONES * u64::from(b'\\')))
            | (x.wrapping_sub(ONES * 0x20) & !x & HIGH);
        if hits != 0 {
            return Some(i + (hits.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b[i..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|p| i + p)
}

/// Insert into an object's columns the way `Map::insert` does: a repeated name keeps its
/// first position and takes the new value. `seen` is a small Bloom filter of the names
/// so far, so that only a possible repeat costs a scan.
fn insert_col<'a>(cols: &mut Cols<'a>, seen: &mut u128, k: Cow<'a, str>, v: ValIn<'a>) {
    let key = k.as_bytes();
    let h = (key.len() as u64)
        | u64::from(key.first().copied().unwrap_or(0)) << 8
        | u64::from(key.last().copied().unwrap_or(0)) << 16
        | u64::from(key.get(key.len() / 2).copied().unwrap_or(0)) << 24;
    let bit = 1u128 << (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 57);
    if *seen & bit != 0
        && let Some((_, slot)) = cols.iter_mut().find(|(e, _)| e.as_bytes() == key)
    {
        *slot = v;
        return;
    }
    *seen |= bit;
    cols.push((k, v));
}

/// A scalar: the fast path reads number tokens with it. Numbers become exactly the
/// `Number` a `Value` would hold (including a non-finite float turning into `null`).
impl<'de> Deserialize<'de> for ValIn<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ValIn<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON scalar")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(ValIn::Null)
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
                Ok(ValIn::Bool(b))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                Ok(ValIn::Num(n.into()))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                Ok(ValIn::Num(n.into()))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
                Ok(Number::from_f64(n).map_or(ValIn::Null, ValIn::Num))
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(ValIn::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(ValIn::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(ValIn::Str(Cow::Owned(s)))
            }
        }
        d.deserialize_any(V)
    }
}

// ----- stored form --------------------------------------------------------------------

/// Longest string a [`Val`] holds without an allocation.
const SHORT: usize = 22;

/// A stored column value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Null,
    Bool(bool),
    Num(Number),
    /// A string of at most [`SHORT`] bytes: (length, bytes).
    Short(u8, [u8; SHORT]),
    Str(Box<str>),
    /// An array or object (undeclared data extensions accept them).
    Json(Box<Value>),
}

impl Val {
    fn string(s: &str) -> Val {
        if s.len() <= SHORT {
            let mut buf = [0u8; SHORT];
            buf[..s.len()].copy_from_slice(s.as_bytes());
            Val::Short(s.len() as u8, buf)
        } else {
            Val::Str(s.into())
        }
    }

    pub fn to_value(&self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(*b),
            Val::Num(n) => Value::Number(n.clone()),
            // Copied from a `str`, so always UTF-8.
            Val::Short(len, buf) => {
                Value::String(String::from_utf8_lossy(&buf[..usize::from(*len)]).into_owned())
            }
            Val::Str(s) => Value::String(s.to_string()),
            Val::Json(v) => (**v).clone(),
        }
    }
}

impl From<ValIn<'_>> for Val {
    fn from(v: ValIn<'_>) -> Val {
        match v {
            ValIn::Null => Val::Null,
            ValIn::Bool(b) => Val::Bool(b),
            ValIn::Num(n) => Val::Num(n),
            ValIn::Str(Cow::Borrowed(s)) => Val::string(s),
            ValIn::Str(Cow::Owned(s)) if s.len() > SHORT => Val::Str(s.into_boxed_str()),
            ValIn::Str(Cow::Owned(s)) => Val::string(&s),
            ValIn::Nested(v) => Val::Json(Box::new(v.clone())),
        }
    }
}

/// Stored columns: (column id, value), one entry per id, in first-insert order.
pub(crate) type StoredCols = Vec<(u32, Val)>;

/// Build the `Value` object of stored columns, naming ids through `names`.
pub(crate) fn cols_to_map(names: &[Box<str>], cols: &StoredCols) -> Map<String, Value> {
    let mut m = Map::with_capacity(cols.len());
    for (id, v) in cols {
        m.insert(String::from(&*names[*id as usize]), v.to_value());
    }
    m
}

/// "No position yet" in a column-id scratch table.
pub(crate) const NO_SLOT: u32 = u32::MAX;

/// Set column `id` in `out` the way `Map::insert` does (a repeated id keeps its first
/// position and takes the new value). `slots[id]` holds the position of `id` in `out` or
/// [`NO_SLOT`]; the caller resets the slots of `out`'s ids afterwards.
#[inline]
pub(crate) fn put_col<T>(out: &mut Vec<(u32, T)>, slots: &mut [u32], id: u32, v: T) {
    let slot = &mut slots[id as usize];
    if *slot == NO_SLOT {
        *slot = out.len() as u32;
        out.push((id, v));
    } else {
        out[*slot as usize].1 = v;
    }
}

/// Reset the scratch slots used while building `cols`.
pub(crate) fn clear_slots<T>(cols: &[(u32, T)], slots: &mut [u32]) {
    for (id, _) in cols {
        slots[*id as usize] = NO_SLOT;
    }
}

/// Merge `src` into `dst` (an upsert of `values`): existing ids are replaced in place,
/// new ones appended in `src` order.
pub(crate) fn merge_cols(dst: &mut StoredCols, src: StoredCols, slots: &mut [u32]) {
    for (pos, (id, _)) in dst.iter().enumerate() {
        slots[*id as usize] = pos as u32;
    }
    for (id, v) in src {
        put_col(dst, slots, id, v);
    }
    clear_slots(dst, slots);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both paths over one body: the fast one must either give up or agree exactly.
    fn both(body: &str) -> (Option<Vec<RowIn<'_>>>, Result<Value, String>) {
        let fast = FastRows::parse(body.as_bytes());
        let slow = serde_json::from_str::<Value>(body).map_err(|e| e.to_string());
        (fast, slow)
    }

    fn agree(body: &str) -> bool {
        let (fast, slow) = both(body);
        match (&fast, &slow) {
            (Some(fast), Ok(Value::Array(rows))) => {
                let slow: Vec<RowIn> = rows.iter().map(RowIn::from_value).collect();
                assert_eq!(fast, &slow, "{body}");
                true
            }
            (Some(_), _) => panic!("fast path accepted what the general path does not: {body}"),
            (None, _) => false,
        }
    }

    #[test]
    fn fast_path_matches_the_value_path() {
        let fast = [
            r#"[]"#,
            r#" [ {"keys":{"Id":"1"},"values":{"A":1,"B":-2,"C":1.5,"D":true,"E":null,"F":""}} ] "#,
            r#"[{"keys":null,"values":{"a":1,"a":2,"b":3,"a":4}}]"#,
            r#"[{"keys":{"k":1},"keys":{"k":2},"values":null,"values":{"v":1}}]"#,
            r#"[{"keys":{"k":1},"keys":null}]"#,
            r#"[{"values":{"e\u0301":"caf\u00e9 \"q\" \\ \n","tab\t":"x"}}]"#,
            r#"[{"values":{"big":18446744073709551615,"neg":-9223372036854775808,"f":1e2,"z":-0,"g":1.0e-7,"h":0.1}}]"#,
            r#"[{"values":{"x":1},"extra":5,"more":"s","nil":null}]"#,
            r#"[{}, {"keys":{}}]"#,
            r#"[{"values":{"key\u0073":1,"keys":2}}]"#,
            r#"[{"key\u0073":{"a":1},"\u0076alues":{"b":2}}]"#,
        ];
        for body in fast {
            assert!(agree(body), "fast path gave up on {body}");
        }
        let general = [
            r#"{"keys":{}}"#,
            r#"[5]"#,
            r#"["row"]"#,
            r#"[null]"#,
            r#"[[{"keys":{}}]]"#,
            r#"[{"keys":[1]}]"#,
            r#"[{"keys":"x"}]"#,
            r#"[{"values":{"a":[1,2]}}]"#,
            r#"[{"values":{"a":{"b":1}}}]"#,
            r#"[{"extra":{"b":1},"values":{"a":1}}]"#,
            r#"[{"values":{"$serde_json::private::RawValue":"[1]"}}]"#,
            r#"[{"$serde_json::private::RawValue":"{\"values\":{\"a\":1}}"}]"#,
            r#"[{"values":{"a":1}},]"#,
            r#"[{"values":{"a":1,}}]"#,
            r#"[{"values":{"a":1e400}}]"#,
            r#"[{"values":{"a":"\ud800"}}]"#,
            r#"[{"values":{"a":1}}] x"#,
            r#"[{"values":{"a":1}}"#,
            "",
        ];
        for body in general {
            assert!(
                !agree(body),
                "fast path should leave {body} to the general path"
            );
        }
    }

    #[test]
    fn special_bytes_are_found_exactly() {
        let specials = [b'"', b'\\', 0, 0x1f, b'\n'];
        for len in 0..40 {
            for at in 0..=len {
                for &sp in &specials {
                    let mut b: Vec<u8> = (0..len).map(|i| b"a \x7f\x80\xff!~0"[i % 8]).collect();
                    if at < len {
                        b[at] = sp;
                        // Bytes after the first special one do not matter.
                        for later in b.iter_mut().skip(at + 1).step_by(3) {
                            *later = b'"';
                        }
                    }
                    let want = (at < len).then_some(at);
                    assert_eq!(special_byte(&b), want, "{b:?}");
                }
            }
        }
    }

    #[test]
    fn repeated_names_keep_the_first_position_and_the_last_value() {
        let body = r#"[{"values":{"a":1,"b":2,"a":3}}]"#;
        let rows = FastRows::parse(body.as_bytes()).unwrap();
        let RowIn::Row {
            values: Some(values),
            ..
        } = &rows[0]
        else {
            panic!("{rows:?}")
        };
        assert_eq!(
            values,
            &vec![
                (Cow::Borrowed("a"), ValIn::Num(3.into())),
                (Cow::Borrowed("b"), ValIn::Num(2.into())),
            ]
        );
    }

    #[test]
    fn strings_round_trip_short_and_long() {
        assert!(std::mem::size_of::<Val>() <= 24);
        for s in [
            "",
            "a",
            "café ☕ 22 bytes long!",
            "exactly twenty-two b!!",
            "twenty-three bytes long",
        ] {
            for v in [
                ValIn::Str(Cow::Borrowed(s)),
                ValIn::Str(Cow::Owned(s.to_string())),
            ] {
                assert_eq!(Val::from(v).to_value(), Value::String(s.to_string()), "{s}");
            }
        }
    }

    #[test]
    fn merge_replaces_in_place_and_appends() {
        let mut slots = vec![NO_SLOT; 4];
        let mut dst: StoredCols = vec![(2, Val::Bool(true)), (0, Val::Null)];
        merge_cols(
            &mut dst,
            vec![(0, Val::string("x")), (3, Val::Bool(false))],
            &mut slots,
        );
        assert_eq!(
            dst,
            vec![
                (2, Val::Bool(true)),
                (0, Val::string("x")),
                (3, Val::Bool(false))
            ]
        );
        assert!(slots.iter().all(|s| *s == NO_SLOT));
    }

    mod generated {
        use super::*;
        use proptest::prelude::*;

        fn pick(options: &'static [&'static str]) -> impl Strategy<Value = String> {
            prop::sample::select(options).prop_map(String::from)
        }

        fn ws() -> impl Strategy<Value = String> {
            pick(&["", "", " ", "\n\t ", "\r"])
        }

        fn name() -> impl Strategy<Value = String> {
            prop_oneof![3 => pick(&[r#""a""#, r#""A""#, r#""b c""#, r#""é""#]), 1 => any_name()]
        }

        fn any_name() -> impl Strategy<Value = String> {
            pick(&[
                r#""a""#,
                r#""A""#,
                r#""\u0061""#,
                r#""b c""#,
                r#""keys""#,
                r#""values""#,
                r#""é""#,
                r#""\u00e9""#,
                r#""""#,
                r#""x\"y""#,
                r#""\\""#,
                r#""$serde_json::private::RawValue""#,
                "\"raw\ttab\"",
                r#""\q""#,
            ])
        }

        fn scalar() -> impl Strategy<Value = String> {
            prop_oneof![
                3 => pick(&[r#""s""#, r#""""#, "0", "17", "-3", "2.5", "true", "null", r#""a"b""#]),
                1 => any_scalar(),
            ]
        }

        fn any_scalar() -> impl Strategy<Value = String> {
            pick(&[
                r#""""#,
                r#""s""#,
                r#""a\"b\\c\/\n\t\u0000\ud83d\ude00""#,
                r#""\ud800""#,
                "\"tab\there\"",
                r#""long string value, over twenty-two bytes""#,
                r#""é☕""#,
                "0",
                "-0",
                "1",
                "01",
                "1.5",
                "-1.50",
                "1e2",
                "1E-2",
                "1e400",
                "-1e-400",
                "18446744073709551615",
                "18446744073709551616",
                "-9223372036854775808",
                "-9223372036854775809",
                "123456789012345678",
                "1234567890123456789",
                "1.",
                ".5",
                "-",
                "+1",
                "1e",
                "2.5e+3",
                "true",
                "false",
                "null",
                "nul",
                "truex",
                "[]",
                "[1,[2,{\"k\":3}]]",
                "{}",
                "{\"k\":1,\"k\":2}",
            ])
        }

        /// An object of `name: scalar` pairs (sometimes with a trailing comma).
        fn object() -> impl Strategy<Value = String> {
            (
                prop::collection::vec((name(), ws(), scalar(), ws()), 0..6),
                prop::bool::weighted(0.05),
            )
                .prop_map(|(pairs, trailing)| {
                    let body: Vec<String> = pairs
                        .into_iter()
                        .map(|(n, w1, v, w2)| format!("{n}{w1}:{w2}{v}"))
                        .collect();
                    let comma = if trailing { "," } else { "" };
                    format!("{{{}{comma}}}", body.join(","))
                })
        }

        fn row() -> impl Strategy<Value = String> {
            let field = (
                pick(&[
                    r#""keys""#,
                    r#""values""#,
                    r#""values""#,
                    r#""key\u0073""#,
                    r#""other""#,
                ]),
                prop_oneof![4 => object(), 1 => scalar()],
                ws(),
            );
            (
                prop::collection::vec(field, 0..4),
                prop::bool::weighted(0.05),
            )
                .prop_map(|(fields, not_object)| {
                    if not_object {
                        return "5".to_string();
                    }
                    let body: Vec<String> = fields
                        .into_iter()
                        .map(|(n, v, w)| format!("{w}{n}:{w}{v}{w}"))
                        .collect();
                    format!("{{{}}}", body.join(","))
                })
        }

        fn body() -> impl Strategy<Value = String> {
            (
                prop::collection::vec(row(), 0..4),
                ws(),
                ws(),
                pick(&["", "", "", " x", ","]),
            )
                .prop_map(|(rows, w1, w2, tail)| {
                    format!("{w1}[{w2}{}]{w1}{tail}", rows.join(&format!(",{w2}")))
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]
            #[test]
            fn fast_path_never_disagrees(body in body()) {
                // `agree` panics on any disagreement.
                agree(&body);
            }
        }
    }
}
