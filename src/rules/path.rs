//! Paths into an event, compiled once at rule load.
//!
//! Plain dotted paths (`userId`, `context.traits.email`, `$.context.ip`) compile to a key
//! list and are looked up without any parsing (~20 ns). Anything else (`[?...]`, `..`,
//! `[*]`, quoted names) is a JSONPath compiled once with jsonpath-rust.

use jsonpath_rust::parser::model::JpQuery;
use jsonpath_rust::parser::parse_json_path;
use jsonpath_rust::query::js_path_process;
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct KeyPath {
    source: String,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Keys(Vec<String>),
    Json(Box<JpQuery>),
}

impl KeyPath {
    /// Compile `source`. Errors say what was expected.
    pub fn compile(source: &str) -> Result<KeyPath, String> {
        let s = source.trim();
        if s.is_empty() {
            return Err("empty path: expected e.g. `userId`, `traits.email` or a JSONPath like `$.context.traits.email`".into());
        }
        let dotted = s.strip_prefix("$.").unwrap_or(s);
        if (!s.starts_with('$') || s.starts_with("$."))
            && let Some(keys) = simple_keys(dotted)
        {
            return Ok(KeyPath {
                source: source.to_string(),
                kind: Kind::Keys(keys),
            });
        }
        let jp = if s.starts_with('$') {
            s.to_string()
        } else {
            format!("$.{s}")
        };
        match parse_json_path(&jp) {
            Ok(q) => Ok(KeyPath {
                source: source.to_string(),
                kind: Kind::Json(Box::new(q)),
            }),
            Err(e) => Err(format!(
                "invalid JSONPath {source:?}: {}",
                first_line(&e.to_string())
            )),
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The first value at this path, if any.
    pub fn get<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        match &self.kind {
            Kind::Keys(keys) => {
                let mut v = root;
                for k in keys {
                    v = v.as_object()?.get(k.as_str())?;
                }
                Some(v)
            }
            Kind::Json(q) => js_path_process(q, root)
                .ok()
                .and_then(|r| r.into_iter().next().map(|r| r.val)),
        }
    }

    /// Every value at this path (one at most for a plain dotted path).
    pub fn get_all<'a>(&self, root: &'a Value) -> Vec<&'a Value> {
        match &self.kind {
            Kind::Keys(_) => self.get(root).into_iter().collect(),
            Kind::Json(q) => js_path_process(q, root)
                .map(|r| r.into_iter().map(|r| r.val).collect())
                .unwrap_or_default(),
        }
    }
}

/// `a.b.c` where every segment is a plain identifier-like key.
fn simple_keys(s: &str) -> Option<Vec<String>> {
    let keys: Vec<String> = s.split('.').map(str::to_string).collect();
    let plain = |k: &String| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
    };
    keys.iter().all(plain).then_some(keys)
}

fn first_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev() -> Value {
        json!({"userId":"u1","context":{"traits":{"email":"a@b.c"},"library":{"name":"analytics.js"}},
               "properties":{"products":[{"sku":"a","price":5},{"sku":"b","price":50}]}})
    }

    #[test]
    fn dotted_paths_compile_to_keys() {
        let e = ev();
        for p in ["context.traits.email", "$.context.traits.email"] {
            let kp = KeyPath::compile(p).unwrap();
            assert!(matches!(kp.kind, Kind::Keys(ref k) if k.len() == 3), "{p}");
            assert_eq!(kp.get(&e), Some(&json!("a@b.c")));
        }
        assert_eq!(
            KeyPath::compile("userId").unwrap().get(&e),
            Some(&json!("u1"))
        );
        assert_eq!(KeyPath::compile("nope.x").unwrap().get(&e), None);
        assert_eq!(KeyPath::compile("userId.x").unwrap().get(&e), None);
    }

    #[test]
    fn jsonpath_filters_compile_once() {
        let e = ev();
        let kp = KeyPath::compile("$.properties.products[?@.price > 10].sku").unwrap();
        assert!(matches!(kp.kind, Kind::Json(_)));
        assert_eq!(kp.get_all(&e), vec![&json!("b")]);
        let kp = KeyPath::compile("$['context']['library']['name']").unwrap();
        assert_eq!(kp.get(&e), Some(&json!("analytics.js")));
    }

    #[test]
    fn bad_paths_are_errors() {
        let e = KeyPath::compile("$.a[?").unwrap_err();
        assert!(e.starts_with("invalid JSONPath"), "{e}");
        assert!(KeyPath::compile("  ").unwrap_err().contains("empty path"));
        assert!(KeyPath::compile("a..").is_err());
    }
}
