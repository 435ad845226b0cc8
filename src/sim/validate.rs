//! Data extension schemas and row validation, the way SFMC checks rowset uploads.
//!
//! Everything here is pure (no locks, no IO) so it runs before the state lock is taken.

use serde_json::Value;

use super::config::{ColumnType, DataExtensionConfig};
use super::rows::{Cols, NO_SLOT, RowIn, ValIn, clear_slots, put_col};

/// A declared data extension, compiled for fast case-insensitive lookups.
#[derive(Debug)]
pub(crate) struct DeSchema {
    /// The external key as declared.
    pub key: String,
    /// A stable GUID derived from the key (used in 10006 messages and for `/{id}/rowset`).
    pub guid: String,
    /// Columns as declared (name, type).
    pub columns: Vec<(String, ColumnType)>,
    /// Lower-cased column name -> index into `columns`.
    pub by_lower: foldhash::HashMap<String, usize>,
    /// Declared column name -> index (fast path without lower-casing).
    pub by_name: foldhash::HashMap<String, usize>,
    /// Indexes of primary-key columns, in declared order.
    pub pks: Vec<usize>,
}

impl DeSchema {
    pub fn compile(key: &str, config: &DataExtensionConfig) -> DeSchema {
        let columns: Vec<(String, ColumnType)> = config
            .columns
            .iter()
            .map(|(name, ty)| (name.clone(), *ty))
            .collect();
        let by_lower: foldhash::HashMap<String, usize> = columns
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (name.to_lowercase(), i))
            .collect();
        let by_name: foldhash::HashMap<String, usize> = columns
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (name.clone(), i))
            .collect();
        let pks = config
            .primary_keys
            .iter()
            .filter_map(|pk| by_lower.get(&pk.to_lowercase()).copied())
            .collect();
        DeSchema {
            key: key.to_string(),
            guid: guid_for(key),
            columns,
            by_lower,
            by_name,
            pks,
        }
    }

    /// Column index for a name, case-insensitively.
    pub fn lookup(&self, name: &str) -> Option<usize> {
        match self.by_name.get(name) {
            Some(&i) => Some(i),
            None => self.by_lower.get(&name.to_lowercase()).copied(),
        }
    }

    fn is_pk(&self, idx: usize) -> bool {
        self.pks.contains(&idx)
    }
}

/// A stable, GUID-shaped id for a data extension key (FNV-1a over the lower-cased key).
pub(crate) fn guid_for(key: &str) -> String {
    let lower = key.to_lowercase();
    let mut a: u64 = 0xcbf2_9ce4_8422_2325;
    let mut b: u64 = 0x8422_2325_cbf2_9ce4;
    for byte in lower.bytes() {
        a ^= u64::from(byte);
        a = a.wrapping_mul(0x0000_0100_0000_01b3);
        b ^= u64::from(byte).rotate_left(3);
        b = b.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format_uuid(((u128::from(a)) << 64) | u128::from(b))
}

/// Format 128 bits as a version-4 style UUID string.
pub(crate) fn format_uuid(bits: u128) -> String {
    let mut bytes = bits.to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// SFMC's message for a row whose values hold no column of the data extension.
pub(crate) const NO_EXISTING_FIELD: &str =
    "At least one existing field is required in the values property";

/// Why a row was refused.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RowError {
    /// A declared primary key is absent from `keys` (400 errorcode 10000).
    MissingPrimaryKey(String),
    /// Column-level errors (aggregate 400 errorcode 10006 with `additionalErrors`).
    Invalid(Vec<String>),
    /// No existing column among the values (keys do not count, as in SFMC).
    NoExistingField,
    /// The row is not `{"keys":{...},"values":{...}}`.
    Malformed(String),
}

/// A validated row, ready to be stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PreparedRow<'a> {
    /// Identity used for upsert matching; `None` = always insert (no primary key).
    pub identity: Option<String>,
    pub cols: PreparedCols<'a>,
}

/// The columns of a [`PreparedRow`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PreparedCols<'a> {
    /// A declared data extension: (column index in the schema, value), one entry per
    /// column, in first-seen order.
    Declared {
        keys: Vec<(u32, ValIn<'a>)>,
        values: Vec<(u32, ValIn<'a>)>,
    },
    /// An undeclared one: names as sent, canonicalised later under the state lock.
    Undeclared { keys: Cols<'a>, values: Cols<'a> },
}

/// The string form of a key value used for identity matching.
pub(crate) fn key_string(v: &ValIn<'_>, case_insensitive: bool) -> String {
    let s = match v {
        ValIn::Str(s) => s.to_string(),
        ValIn::Null => String::new(),
        other => other.to_string(),
    };
    if case_insensitive {
        s.to_lowercase()
    } else {
        s
    }
}

/// Append `s.to_lowercase()` (without the intermediate `String` for ASCII text).
fn push_lower(out: &mut String, s: &str) {
    if s.is_ascii() {
        out.extend(s.bytes().map(|b| char::from(b.to_ascii_lowercase())));
    } else {
        out.push_str(&s.to_lowercase());
    }
}

/// Append [`key_string`]`(v, case_insensitive)`.
fn push_key_string(out: &mut String, v: &ValIn<'_>, case_insensitive: bool) {
    match v {
        ValIn::Str(s) if case_insensitive => push_lower(out, s),
        ValIn::Str(s) => out.push_str(s),
        ValIn::Null => {}
        other => out.push_str(&key_string(other, case_insensitive)),
    }
}

fn split_row(row: RowIn<'_>) -> Result<(Cols<'_>, Cols<'_>), RowError> {
    match row {
        RowIn::Malformed(m) => Err(RowError::Malformed(m.to_string())),
        RowIn::Row { keys, values } => Ok((keys.unwrap_or_default(), values.unwrap_or_default())),
    }
}

/// Scratch space for [`prepare_declared`], reused across the rows of a request.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// Position of each column in the row being built ([`NO_SLOT`] between rows).
    slots: Vec<u32>,
    /// Column index (`usize::MAX` = unknown) of each position of the previous row's
    /// `keys` and `values`: rows of one request usually repeat the same names.
    memo: [Vec<usize>; 2],
}

/// `schema.lookup(name)` for the name at `pos` of `keys` (`part` 0) or `values` (1).
fn lookup_at(
    schema: &DeSchema,
    memo: &mut [Vec<usize>; 2],
    part: usize,
    pos: usize,
    name: &str,
) -> Option<usize> {
    let memo = &mut memo[part];
    if let Some(&idx) = memo.get(pos)
        && idx != usize::MAX
        && schema.columns[idx].0 == name
    {
        return Some(idx);
    }
    let found = schema.lookup(name);
    let idx = found.unwrap_or(usize::MAX);
    if pos < memo.len() {
        memo[pos] = idx;
    } else {
        memo.push(idx);
    }
    found
}

/// Validate a row against a declared data extension.
pub(crate) fn prepare_declared<'a>(
    schema: &DeSchema,
    row: RowIn<'a>,
    case_insensitive_values: bool,
    scratch: &mut Scratch,
) -> Result<PreparedRow<'a>, RowError> {
    let (keys, values) = split_row(row)?;
    let Scratch { slots, memo } = scratch;

    // Which entry of `keys` holds each primary key (a later one for the same column wins).
    let mut pk_at: Vec<usize> = vec![usize::MAX; schema.pks.len()];
    for (i, (name, _)) in keys.iter().enumerate() {
        if let Some(idx) = lookup_at(schema, memo, 0, i, name)
            && let Some(pos) = schema.pks.iter().position(|p| *p == idx)
        {
            pk_at[pos] = i;
        }
    }
    if let Some(pos) = pk_at.iter().position(|&i| i == usize::MAX) {
        let name = &schema.columns[schema.pks[pos]].0;
        return Err(RowError::MissingPrimaryKey(name.clone()));
    }
    let identity = if schema.pks.is_empty() {
        None
    } else {
        let mut id = String::new();
        for &i in &pk_at {
            push_key_string(&mut id, &keys[i].1, case_insensitive_values);
            id.push('\u{1f}');
        }
        Some(id)
    };

    if slots.len() != schema.columns.len() {
        slots.clear();
        slots.resize(schema.columns.len(), NO_SLOT);
    }
    let mut errors = Vec::new();
    let mut existing = 0usize;
    let mut out_keys = Vec::with_capacity(schema.pks.len());
    let mut out_values = Vec::with_capacity(keys.len() + values.len());
    for (i, (raw, v)) in keys.into_iter().enumerate() {
        let Some(idx) = lookup_at(schema, memo, 0, i, &raw) else {
            continue;
        };
        let (name, ty) = &schema.columns[idx];
        let is_pk = schema.is_pk(idx);
        if let Err(e) = check_val(name, *ty, &v, is_pk) {
            errors.push(e);
        }
        if is_pk {
            put_col(&mut out_keys, slots, idx as u32, v);
        } else {
            put_col(&mut out_values, slots, idx as u32, v);
        }
    }
    for (i, (raw, v)) in values.into_iter().enumerate() {
        let Some(idx) = lookup_at(schema, memo, 1, i, &raw) else {
            continue;
        };
        existing += 1;
        let (name, ty) = &schema.columns[idx];
        let is_pk = schema.is_pk(idx);
        if let Err(e) = check_val(name, *ty, &v, is_pk) {
            errors.push(e);
        }
        // A primary-key column repeated in `values` never changes the row's identity.
        if !is_pk {
            put_col(&mut out_values, slots, idx as u32, v);
        }
    }
    clear_slots(&out_keys, slots);
    clear_slots(&out_values, slots);
    if !errors.is_empty() {
        return Err(RowError::Invalid(errors));
    }
    if existing == 0 {
        return Err(RowError::NoExistingField);
    }
    Ok(PreparedRow {
        identity,
        cols: PreparedCols::Declared {
            keys: out_keys,
            values: out_values,
        },
    })
}

/// Prepare a row for an undeclared data extension (accept mode): any columns, the primary
/// keys are whatever `keys` the row sends. Column names are canonicalised later, under
/// the state lock, to the first casing seen.
pub(crate) fn prepare_undeclared(
    row: RowIn<'_>,
    case_insensitive_values: bool,
) -> Result<PreparedRow<'_>, RowError> {
    let (keys, values) = split_row(row)?;
    // Every column of an undeclared data extension exists, but keys do not count.
    if values.is_empty() {
        return Err(RowError::NoExistingField);
    }
    let identity = if keys.is_empty() {
        None
    } else if let [(k, v)] = keys.as_slice() {
        // One key (the usual case): nothing to sort.
        let mut id = String::with_capacity(k.len() + 32);
        push_lower(&mut id, k);
        id.push('\u{1e}');
        push_key_string(&mut id, v, case_insensitive_values);
        id.push('\u{1f}');
        Some(id)
    } else {
        let mut parts: Vec<(String, String)> = keys
            .iter()
            .map(|(k, v)| (k.to_lowercase(), key_string(v, case_insensitive_values)))
            .collect();
        parts.sort();
        let mut id = String::new();
        for (k, v) in parts {
            id.push_str(&k);
            id.push('\u{1e}');
            id.push_str(&v);
            id.push('\u{1f}');
        }
        Some(id)
    };
    Ok(PreparedRow {
        identity,
        cols: PreparedCols::Undeclared { keys, values },
    })
}

fn msg(col: &str, what: &str) -> String {
    format!("{col}: The value for column [{col}] {what}")
}

/// Check one value against its column type. `Err` holds the SFMC-style message.
pub(crate) fn check_value(col: &str, ty: ColumnType, v: &Value, is_pk: bool) -> Result<(), String> {
    check_val(col, ty, &ValIn::from_value(v), is_pk)
}

/// [`check_value`] on a value as received.
pub(crate) fn check_val(
    col: &str,
    ty: ColumnType,
    v: &ValIn<'_>,
    is_pk: bool,
) -> Result<(), String> {
    match v {
        ValIn::Null => return Err(msg(col, "cannot be null.")),
        ValIn::Arr(_) | ValIn::Obj(_) => return Err(msg(col, "is not valid.")),
        ValIn::Str(s) if s.is_empty() => {
            if is_pk {
                return Err(msg(col, "is required: a primary key cannot be empty."));
            }
            // An empty string is stored as an empty/NULL value for every type.
            return Ok(());
        }
        _ => {}
    }
    match ty {
        ColumnType::Text(max) => {
            let len = match v {
                ValIn::Str(s) => s.chars().count(),
                other => other.to_string().chars().count(),
            };
            if len > max {
                return Err(msg(col, "exceeds the column's maximum length."));
            }
        }
        ColumnType::Number => {
            let ok = match v {
                ValIn::Num(n) => n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()),
                ValIn::Str(s) => parse_int(s.trim()).is_some_and(|i| i32::try_from(i).is_ok()),
                _ => false,
            };
            if !ok {
                return Err(msg(col, "is not a valid number."));
            }
        }
        ColumnType::Decimal { precision, scale } => {
            let int_digits = match v {
                ValIn::Num(n) => n
                    .as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| integer_digits(&format!("{}", f.abs().trunc()))),
                ValIn::Str(s) => decimal_int_digits(s.trim()),
                _ => None,
            };
            match int_digits {
                None => return Err(msg(col, "is not a valid decimal.")),
                Some(d) if d > usize::from(precision - scale) => {
                    return Err(msg(col, "exceeds the column's maximum length."));
                }
                Some(_) => {}
            }
        }
        ColumnType::Boolean => {
            let ok = match v {
                ValIn::Bool(_) => true,
                ValIn::Num(n) => matches!(n.as_i64(), Some(0 | 1)),
                ValIn::Str(s) => matches!(
                    s.trim().to_ascii_lowercase().as_str(),
                    "true" | "false" | "1" | "0" | "y" | "n" | "yes" | "no"
                ),
                _ => false,
            };
            if !ok {
                return Err(msg(col, "is not a valid boolean."));
            }
        }
        ColumnType::Date => {
            let ok = matches!(v, ValIn::Str(s) if is_valid_date(s));
            if !ok {
                return Err(msg(col, "is not a valid date."));
            }
        }
        ColumnType::EmailAddress => {
            let ok = matches!(v, ValIn::Str(s) if is_valid_email(s));
            if !ok {
                return Err(msg(col, "is not a valid email address."));
            }
        }
        ColumnType::Phone => {
            let ok = match v {
                ValIn::Str(s) => is_valid_phone(s),
                ValIn::Num(n) => n.as_u64().is_some(),
                _ => false,
            };
            if !ok {
                return Err(msg(col, "is not a valid phone number."));
            }
        }
    }
    Ok(())
}

fn parse_int(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn integer_digits(int_part: &str) -> usize {
    let trimmed = int_part.trim_start_matches('0');
    trimmed.bytes().filter(u8::is_ascii_digit).count()
}

/// `[+-]digits[.digits]` (or `.digits`); returns the count of significant integer digits.
fn decimal_int_digits(s: &str) -> Option<usize> {
    let body = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, f),
        None => (body, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(integer_digits(int))
}

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// ISO-8601 forms SFMC accepts: `2013-05-23`, `2013-05-23T14:32:00Z`,
/// `2013-05-23T14:32:00.000Z`, `2013-05-23 14:32:00`, with an optional `Z` or `±HH:MM`
/// offset after a time. Years 1753-9999 (SQL Server `datetime`).
pub(crate) fn is_valid_date(s: &str) -> bool {
    let s = s.trim();
    if s.len() < 10 || !s.is_char_boundary(10) {
        return false;
    }
    let (date, rest) = s.split_at(10);
    let b = date.as_bytes();
    if b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let (Some(y), Some(m), Some(d)) = (
        digits(&date[0..4]),
        digits(&date[5..7]),
        digits(&date[8..10]),
    ) else {
        return false;
    };
    if !(1753..=9999).contains(&y) {
        return false;
    }
    if chrono::NaiveDate::from_ymd_opt(y as i32, m, d).is_none() {
        return false;
    }
    if rest.is_empty() {
        return true;
    }
    let Some(time) = rest.strip_prefix(['T', ' ']) else {
        return false;
    };
    // Split off the offset.
    let (clock, offset) = if let Some(c) = time.strip_suffix(['Z', 'z']) {
        (c, None)
    } else if let Some(pos) = time.rfind(['+', '-']) {
        (&time[..pos], Some(&time[pos + 1..]))
    } else {
        (time, None)
    };
    if let Some(off) = offset {
        // ASCII only: the slicing below is by bytes (`+1é0` used to panic mid-character).
        let ok = off.is_ascii()
            && match off.len() {
                5 => {
                    off.as_bytes()[2] == b':'
                        && digits(&off[0..2]).is_some_and(|h| h <= 14)
                        && digits(&off[3..5]).is_some_and(|m| m < 60)
                }
                4 => {
                    digits(&off[0..2]).is_some_and(|h| h <= 14)
                        && digits(&off[2..4]).is_some_and(|m| m < 60)
                }
                2 => digits(off).is_some_and(|h| h <= 14),
                _ => false,
            };
        if !ok {
            return false;
        }
    }
    let (hms, frac) = match clock.split_once('.') {
        Some((h, f)) => (h, Some(f)),
        None => (clock, None),
    };
    if let Some(f) = frac
        && (f.is_empty() || f.len() > 7 || digits(f).is_none())
    {
        return false;
    }
    let parts: Vec<&str> = hms.split(':').collect();
    let valid_part = |p: &str, max: u32| p.len() == 2 && digits(p).is_some_and(|v| v <= max);
    match parts.as_slice() {
        [h, mi] if frac.is_none() => valid_part(h, 23) && valid_part(mi, 59),
        [h, mi, sec] => valid_part(h, 23) && valid_part(mi, 59) && valid_part(sec, 59),
        _ => false,
    }
}

pub(crate) fn is_valid_email(s: &str) -> bool {
    if s.len() > 254 || s.chars().any(char::is_whitespace) {
        return false;
    }
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    if local.is_empty() || local.len() > 64 || local.contains('@') {
        return false;
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return false;
    }
    let local_ok = local
        .chars()
        .all(|c| c.is_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
    if !local_ok {
        return false;
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return false;
    }
    let labels_ok = labels.iter().all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_alphanumeric() || c == '-')
    });
    let tld = labels[labels.len() - 1];
    labels_ok && tld.chars().count() >= 2 && !tld.chars().all(|c| c.is_ascii_digit())
}

fn is_valid_phone(s: &str) -> bool {
    s.chars().count() <= 50
        && s.chars().any(|c| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_digit() || " +-().".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dates() {
        for ok in [
            "2013-05-23T14:32:00Z",
            "2013-05-23T14:32:00.000Z",
            "2013-05-23",
            "2013-05-23 14:32:00",
            "2013-05-23T14:32:00+02:00",
            "2013-05-23T14:32",
            "1753-01-01",
            "9999-12-31T23:59:59.9999999",
        ] {
            assert!(is_valid_date(ok), "{ok}");
        }
        for bad in [
            "1752-12-31",
            "2013-02-30",
            "23/05/2013",
            "2013-05-23T25:00:00Z",
            "2013-05-23T14:32:00.Z",
            "yesterday",
            "2013-05-23X",
            "",
            "10000-01-01",
        ] {
            assert!(!is_valid_date(bad), "{bad}");
        }
    }

    #[test]
    fn offsets_with_multibyte_characters_are_invalid_not_a_panic() {
        for bad in [
            "2013-05-23T14:32:00+1é0",
            "2013-05-23T14:32:00+é00",
            "2013-05-23T14:32:00-0é",
            "2013-05-23T14:32:00+12:é",
            "2013-05-23T14:32:00.é",
        ] {
            assert!(!is_valid_date(bad), "{bad}");
        }
    }

    #[test]
    fn emails() {
        assert!(is_valid_email("a@example.com"));
        assert!(is_valid_email("first.last+tag@sub.example.co.uk"));
        for bad in [
            "a@b",
            "@example.com",
            "a@@example.com",
            "a b@example.com",
            "a@example..com",
            "a.@x.com",
            "nope",
        ] {
            assert!(!is_valid_email(bad), "{bad}");
        }
    }

    #[test]
    fn values() {
        let t = ColumnType::Text(3);
        assert!(check_value("c", t, &json!("abc"), false).is_ok());
        assert!(check_value("c", t, &json!("abcd"), false).is_err());
        assert!(check_value("c", t, &json!(123), false).is_ok());
        assert!(check_value("c", ColumnType::Number, &json!(5), false).is_ok());
        assert!(check_value("c", ColumnType::Number, &json!("5"), false).is_ok());
        assert!(check_value("c", ColumnType::Number, &json!(5.5), false).is_err());
        assert!(check_value("c", ColumnType::Number, &json!(3_000_000_000u64), false).is_err());
        let d = ColumnType::Decimal {
            precision: 5,
            scale: 2,
        };
        assert!(check_value("c", d, &json!(123.45), false).is_ok());
        assert!(check_value("c", d, &json!("1234.5"), false).is_err());
        assert!(check_value("c", d, &json!("abc"), false).is_err());
        assert!(check_value("c", ColumnType::Boolean, &json!(true), false).is_ok());
        assert!(check_value("c", ColumnType::Boolean, &json!("maybe"), false).is_err());
        assert!(check_value("c", ColumnType::Text(10), &Value::Null, false).is_err());
        assert!(check_value("c", ColumnType::Date, &json!(""), false).is_ok());
        assert!(check_value("c", ColumnType::Text(10), &json!(""), true).is_err());
        assert_eq!(
            check_value("Email", ColumnType::EmailAddress, &json!("x"), false).unwrap_err(),
            "Email: The value for column [Email] is not a valid email address."
        );
    }

    #[test]
    fn guids_are_stable() {
        assert_eq!(guid_for("Orders"), guid_for("orders"));
        assert_ne!(guid_for("orders"), guid_for("users"));
        assert_eq!(guid_for("orders").len(), 36);
    }
}
