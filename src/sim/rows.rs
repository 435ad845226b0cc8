//! Rowset rows as received, and as stored.
//!
//! A rowset body is read into the crate's borrowed JSON view ([`crate::view::Val`]):
//! column names and strings are borrowed from the body (no `serde_json::Value`, no
//! `IndexMap`, no SipHash), and an object that repeats a key keeps its first position and
//! takes the later value, as `serde_json::Map` with `preserve_order` does. Syntax errors
//! are serde_json's own, word for word (the same parser reads the body).
//!
//! Stored rows hold [`Val`]s (a compact copy of a scalar, or a boxed `Value` for the rare
//! nested value an undeclared data extension accepts) keyed by a per-data-extension column
//! id; `serde_json::Value`s are built only when somebody looks at them.

use std::borrow::Cow;

use serde_json::{Map, Number, Value};

/// A column value as received.
pub(crate) use crate::view::Val as ValIn;

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

impl<'a> RowIn<'a> {
    /// One row of a parsed body.
    pub fn from_view(row: ValIn<'a>) -> Self {
        let ValIn::Obj(mut obj) = row else {
            return RowIn::Malformed(ROW_NOT_OBJECT);
        };
        let mut field = |name: &str, err: &'static str| match obj.remove(name) {
            None | Some(ValIn::Null) => Ok(None),
            Some(ValIn::Obj(m)) => Ok(Some(m.into_members())),
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

    /// [`RowIn::from_view`] of a `Value` (strings borrowed).
    pub fn from_value(row: &'a Value) -> Self {
        RowIn::from_view(ValIn::from_value(row))
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
            v @ (ValIn::Arr(_) | ValIn::Obj(_)) => Val::Json(Box::new(v.to_value())),
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

    #[test]
    fn rows_take_keys_and_values_and_refuse_other_shapes() {
        let parse = |body: &'static str| -> Vec<RowIn<'static>> {
            match serde_json::from_str::<ValIn>(body).unwrap() {
                ValIn::Arr(rows) => rows.into_iter().map(RowIn::from_view).collect(),
                other => panic!("{other}"),
            }
        };
        let rows = parse(
            r#"[{"keys":{"k":1},"keys":{"k":2},"values":{"a":1,"b":2,"a":3}},{"keys":null},5,{"keys":[]},{"values":"x"}]"#,
        );
        assert_eq!(
            rows[0],
            RowIn::Row {
                keys: Some(vec![(Cow::Borrowed("k"), ValIn::Num(2.into()))]),
                values: Some(vec![
                    (Cow::Borrowed("a"), ValIn::Num(3.into())),
                    (Cow::Borrowed("b"), ValIn::Num(2.into())),
                ]),
            }
        );
        assert_eq!(
            rows[1],
            RowIn::Row {
                keys: None,
                values: None
            }
        );
        assert_eq!(rows[2], RowIn::Malformed(ROW_NOT_OBJECT));
        assert_eq!(rows[3], RowIn::Malformed(KEYS_NOT_OBJECT));
        assert_eq!(rows[4], RowIn::Malformed(VALUES_NOT_OBJECT));
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
            #![proptest_config(ProptestConfig::with_cases(1000))]
            /// Rows read through the borrowed view are the rows of serde_json's `Value`
            /// (repeated names, escapes, numbers, wrong shapes), and both refuse the same
            /// bodies.
            #[test]
            fn the_view_reads_rows_as_value_does(body in body()) {
                // serde_json's `Value` gives these keys a meaning of its own (`raw_value`);
                // the view reads them as plain keys, as SFMC would.
                prop_assume!(!body.contains("$serde_json::private::"));
                let view = serde_json::from_str::<ValIn>(&body);
                match serde_json::from_str::<Value>(&body) {
                    Ok(Value::Array(rows)) => {
                        let want: Vec<RowIn> = rows.iter().map(RowIn::from_value).collect();
                        let Ok(ValIn::Arr(got)) = view else { panic!("{body}") };
                        let got: Vec<RowIn> = got.into_iter().map(RowIn::from_view).collect();
                        prop_assert_eq!(got, want, "{}", body);
                    }
                    Ok(other) => prop_assert!(view.is_ok_and(|v| v.eq_value(&other))),
                    Err(e) => prop_assert_eq!(view.unwrap_err().to_string(), e.to_string()),
                }
            }
        }
    }
}
