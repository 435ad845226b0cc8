//! A borrowed view of one event's JSON: what the interpreter reads.
//!
//! Parsing into `serde_json::Value` (with `preserve_order`) builds an `IndexMap` hashed
//! with SipHash for every object and allocates every string; that was about 45% of the
//! relay's instructions. A [`Val`] borrows its strings from the input text (only strings
//! with escapes are copied) and keeps an object as a small vector of members, which is
//! what an event's objects are (a handful of keys each, read a few times).
//!
//! Semantics are those of `serde_json::Value`: when an object repeats a key, the later
//! value replaces the earlier one at the earlier key's position; numbers are
//! `serde_json::Number`s; printing gives the same JSON text. The few readers that need a
//! `Value` (JSONPath queries) get one built on demand by [`Doc::json`].

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};
use std::borrow::Cow;
use std::cell::OnceCell;
use std::fmt;

/// One JSON value, strings borrowed from the text it was parsed from where possible.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Val<'a> {
    #[default]
    Null,
    Bool(bool),
    Num(Number),
    Str(Cow<'a, str>),
    Arr(Vec<Val<'a>>),
    Obj(Obj<'a>),
}

/// A JSON object: members in input order, each key once.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Obj<'a>(Vec<(Cow<'a, str>, Val<'a>)>);

/// Objects up to this size find a repeated key with a Bloom filter and a scan; larger ones
/// use an index while they are parsed.
const SCAN_MAX: usize = 64;

impl<'a> Obj<'a> {
    pub fn new() -> Self {
        Obj(Vec::new())
    }

    pub fn get(&self, key: &str) -> Option<&Val<'a>> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Take a member out (the others keep their order).
    pub fn remove(&mut self, key: &str) -> Option<Val<'a>> {
        let i = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(i).1)
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Val<'a>)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The members, in order.
    pub fn into_members(self) -> Vec<(Cow<'a, str>, Val<'a>)> {
        self.0
    }

    /// Add a member; a key already present keeps its place and takes the new value
    /// (as `serde_json::Map::insert` does).
    pub fn insert(&mut self, key: Cow<'a, str>, v: Val<'a>) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = v,
            None => self.0.push((key, v)),
        }
    }
}

impl<'a> Val<'a> {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Val::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_obj(&self) -> Option<&Obj<'a>> {
        match self {
            Val::Obj(o) => Some(o),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Val::Null)
    }

    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Val<'a>> {
        self.as_obj()?.get(key)
    }

    /// A borrowed view of a `Value` (no strings copied).
    pub fn from_value(v: &'a Value) -> Val<'a> {
        match v {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(n) => Val::Num(n.clone()),
            Value::String(s) => Val::Str(Cow::Borrowed(s)),
            Value::Array(a) => Val::Arr(a.iter().map(Val::from_value).collect()),
            Value::Object(m) => Val::Obj(Obj(m
                .iter()
                .map(|(k, v)| (Cow::Borrowed(k.as_str()), Val::from_value(v)))
                .collect())),
        }
    }

    /// An owned `Value` with the same content.
    pub fn to_value(&self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(*b),
            Val::Num(n) => Value::Number(n.clone()),
            Val::Str(s) => Value::String(s.to_string()),
            Val::Arr(a) => Value::Array(a.iter().map(Val::to_value).collect()),
            Val::Obj(o) => {
                let mut m = Map::with_capacity(o.len());
                for (k, v) in o.iter() {
                    m.insert(k.to_string(), v.to_value());
                }
                Value::Object(m)
            }
        }
    }

    /// JSON equality with a `Value` (objects compare as maps, as `Value`'s own `==` does).
    pub fn eq_value(&self, other: &Value) -> bool {
        match (self, other) {
            (Val::Null, Value::Null) => true,
            (Val::Bool(a), Value::Bool(b)) => a == b,
            (Val::Num(a), Value::Number(b)) => a == b,
            (Val::Str(a), Value::String(b)) => a == b,
            (Val::Arr(a), Value::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.eq_value(y))
            }
            (Val::Obj(a), Value::Object(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .all(|(k, v)| b.get(k).is_some_and(|bv| v.eq_value(bv)))
            }
            _ => false,
        }
    }

    /// "a string", "an object", ... for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Val::Null => "null",
            Val::Bool(_) => "a boolean",
            Val::Num(_) => "a number",
            Val::Str(_) => "a string",
            Val::Arr(_) => "an array",
            Val::Obj(_) => "an object",
        }
    }
}

/// The JSON text, as `Value`'s `Display` writes it.
impl fmt::Display for Val<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_string(self).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

impl Serialize for Val<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Val::Null => s.serialize_unit(),
            Val::Bool(b) => s.serialize_bool(*b),
            Val::Num(n) => n.serialize(s),
            Val::Str(v) => s.serialize_str(v),
            Val::Arr(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Val::Obj(o) => {
                let mut map = s.serialize_map(Some(o.len()))?;
                for (k, v) in o.iter() {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Val<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValVisitor(std::marker::PhantomData))
    }
}

struct ValVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for ValVisitor<'a> {
    type Value = Val<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Val<'a>, E> {
        Ok(Val::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Val<'a>, E> {
        Ok(Val::Num(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Val<'a>, E> {
        Ok(Val::Num(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Val<'a>, E> {
        // As serde_json's own `Value` does: a non-finite float is null.
        Ok(Number::from_f64(v).map_or(Val::Null, Val::Num))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Val<'a>, E> {
        Ok(Val::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Val<'a>, E> {
        Ok(Val::Str(Cow::Owned(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Val<'a>, E> {
        Ok(Val::Str(Cow::Owned(v)))
    }
    fn visit_none<E>(self) -> Result<Val<'a>, E> {
        Ok(Val::Null)
    }
    fn visit_unit<E>(self) -> Result<Val<'a>, E> {
        Ok(Val::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Val<'a>, D::Error> {
        Val::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Val<'a>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(v) = seq.next_element()? {
            out.push(v);
        }
        Ok(Val::Arr(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Val<'a>, A::Error> {
        let mut members: Vec<(Cow<'a, str>, Val<'a>)> = Vec::with_capacity(8);
        // Keys seen so far, as a 128-bit Bloom filter: only a key that may repeat one costs
        // a scan. Past SCAN_MAX members an index keeps large objects linear.
        let mut seen = 0u128;
        let mut index: Option<foldhash::HashMap<Cow<'a, str>, usize>> = None;
        while let Some(key) = map.next_key_seed(KeySeed(std::marker::PhantomData))? {
            let v: Val<'a> = map.next_value()?;
            if index.is_none() && members.len() < SCAN_MAX {
                let bit = bloom_bit(&key);
                if seen & bit != 0
                    && let Some(slot) = members.iter_mut().find(|(k, _)| *k == key)
                {
                    slot.1 = v;
                } else {
                    seen |= bit;
                    members.push((key, v));
                }
                continue;
            }
            let idx = index.get_or_insert_with(|| {
                members
                    .iter()
                    .enumerate()
                    .map(|(i, (k, _))| (k.clone(), i))
                    .collect()
            });
            match idx.get(&key) {
                Some(&i) => members[i].1 = v,
                None => {
                    idx.insert(key.clone(), members.len());
                    members.push((key, v));
                }
            }
        }
        Ok(Val::Obj(Obj(members)))
    }
}

/// One of 128 bits for a key, from its length and three of its bytes.
fn bloom_bit(key: &str) -> u128 {
    let b = key.as_bytes();
    let h = (b.len() as u64)
        | u64::from(b.first().copied().unwrap_or(0)) << 16
        | u64::from(b.last().copied().unwrap_or(0)) << 24
        | u64::from(b.get(b.len() / 2).copied().unwrap_or(0)) << 32;
    1u128 << (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 57)
}

/// Object keys, borrowed when they have no escapes.
struct KeySeed<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> DeserializeSeed<'de> for KeySeed<'a> {
    type Value = Cow<'a, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'a, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for KeySeed<'a> {
    type Value = Cow<'a, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Cow<'a, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cow<'a, str>, E> {
        Ok(Cow::Owned(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Cow<'a, str>, E> {
        Ok(Cow::Owned(v))
    }
}

/// One event as the interpreter sees it: the view, and (only when a JSONPath query asks
/// for it) the same event as a `Value`.
pub struct Doc<'a> {
    root: &'a Val<'a>,
    given: Option<&'a Value>,
    built: OnceCell<Value>,
}

impl<'a> Doc<'a> {
    pub fn new(root: &'a Val<'a>) -> Self {
        Doc {
            root,
            given: None,
            built: OnceCell::new(),
        }
    }

    /// A document whose `Value` form is already at hand.
    pub fn with_value(root: &'a Val<'a>, value: &'a Value) -> Self {
        Doc {
            root,
            given: Some(value),
            built: OnceCell::new(),
        }
    }

    pub fn root(&self) -> &'a Val<'a> {
        self.root
    }

    /// The event as a `Value` (built on first use).
    pub fn json(&self) -> &Value {
        match self.given {
            Some(v) => v,
            None => self.built.get_or_init(|| self.root.to_value()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(s: &str) -> Val<'_> {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn same_content_and_text_as_value() {
        let texts = [
            r#"{"a":1,"b":[true,null,2.5,-3],"c":{"d":"e\"\u00e9","f":{}},"g":"plain"}"#,
            r#"[1,18446744073709551615,-9223372036854775808,1e300,0.1]"#,
            r#""x\ny""#,
            "null",
        ];
        for t in texts {
            let v: Value = serde_json::from_str(t).unwrap();
            let view = parse(t);
            assert_eq!(view.to_value(), v, "{t}");
            assert!(view.eq_value(&v), "{t}");
            assert_eq!(view.to_string(), v.to_string(), "{t}");
            assert_eq!(Val::from_value(&v), view, "{t}");
        }
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let view = parse(r#"{"plain":"abc","esc":"a\tb"}"#);
        let o = view.as_obj().unwrap();
        assert!(matches!(
            o.get("plain"),
            Some(Val::Str(Cow::Borrowed("abc")))
        ));
        assert!(matches!(o.get("esc"), Some(Val::Str(Cow::Owned(s))) if s == "a\tb"));
    }

    #[test]
    fn a_repeated_key_keeps_its_place_and_takes_the_later_value() {
        // Small objects (scanned) and large ones (indexed) alike, as serde_json does.
        for n in [3, 40, 100] {
            let mut text = String::from("{");
            for i in 0..n {
                text.push_str(&format!("\"k{i}\":{i},"));
            }
            text.push_str("\"k1\":\"later\",\"z\":null,\"k0\":{\"x\":1}}");
            let v: Value = serde_json::from_str(&text).unwrap();
            let view = parse(&text);
            assert_eq!(view.to_value(), v);
            let keys: Vec<&str> = view.as_obj().unwrap().iter().map(|(k, _)| k).collect();
            let want: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(keys, want);
            assert_eq!(view.get("k1"), Some(&Val::Str("later".into())));
        }
    }

    #[test]
    fn equality_with_values_is_by_content() {
        let view = parse(r#"{"a":{"x":1,"y":[1,2]},"b":"s"}"#);
        assert!(view.eq_value(&json!({"b":"s","a":{"y":[1,2],"x":1}})));
        assert!(!view.eq_value(&json!({"b":"s","a":{"y":[1,2],"x":2}})));
        assert!(!view.eq_value(&json!({"b":"s"})));
        assert!(!parse("1").eq_value(&json!(1.0)));
    }

    #[test]
    fn doc_builds_the_value_once() {
        let view = parse(r#"{"a":[1,2]}"#);
        let doc = Doc::new(&view);
        let first: *const Value = doc.json();
        assert_eq!(doc.json(), &json!({"a":[1,2]}));
        assert!(std::ptr::eq(first, doc.json()));
        let given = json!({"b":1});
        assert_eq!(Doc::with_value(&view, &given).json(), &given);
    }
}
