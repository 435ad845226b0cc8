//! Compiled conditions for filters and mapping `when:` clauses.

use super::path::KeyPath;
use crate::view::{Doc, Val};
use regex::Regex;
use serde_json::Value;

#[derive(Debug, Clone)]
pub enum Condition {
    Test { path: KeyPath, op: Op },
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
}

#[derive(Debug, Clone)]
pub enum Op {
    Equals(Value),
    NotEquals(Value),
    In(Vec<Value>),
    NotIn(Vec<Value>),
    Matches(Regex),
    Exists(bool),
}

impl Condition {
    pub fn eval(&self, event: &Doc) -> bool {
        match self {
            Condition::All(cs) => cs.iter().all(|c| c.eval(event)),
            Condition::Any(cs) => cs.iter().any(|c| c.eval(event)),
            Condition::Not(c) => !c.eval(event),
            Condition::Test { path, op } => {
                let found = path.get_all(event);
                match op {
                    Op::Exists(want) => found.iter().any(|v| !v.is_null()) == *want,
                    Op::Equals(x) => found.iter().any(|v| same(v, x)),
                    Op::NotEquals(x) => !found.iter().any(|v| same(v, x)),
                    Op::In(xs) => found.iter().any(|v| xs.iter().any(|x| same(v, x))),
                    Op::NotIn(xs) => !found.iter().any(|v| xs.iter().any(|x| same(v, x))),
                    Op::Matches(re) => found.iter().any(|v| match &**v {
                        Val::Str(s) => re.is_match(s),
                        Val::Num(n) => re.is_match(&n.to_string()),
                        Val::Bool(b) => re.is_match(if *b { "true" } else { "false" }),
                        _ => false,
                    }),
                }
            }
        }
    }

    /// A short human description, for `explain`.
    pub fn describe(&self) -> String {
        match self {
            Condition::All(cs) => format!(
                "all of ({})",
                cs.iter()
                    .map(|c| c.describe())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Condition::Any(cs) => format!(
                "any of ({})",
                cs.iter()
                    .map(|c| c.describe())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Condition::Not(c) => format!("not ({})", c.describe()),
            Condition::Test { path, op } => {
                let p = path.source();
                match op {
                    Op::Equals(v) => format!("{p} equals {v}"),
                    Op::NotEquals(v) => format!("{p} not_equals {v}"),
                    Op::In(v) => format!("{p} in {}", Value::Array(v.clone())),
                    Op::NotIn(v) => format!("{p} not_in {}", Value::Array(v.clone())),
                    Op::Matches(r) => format!("{p} matches /{}/", r.as_str()),
                    Op::Exists(true) => format!("{p} exists"),
                    Op::Exists(false) => format!("{p} does not exist"),
                }
            }
        }
    }
}

/// JSON equality where numbers compare by value (`1` equals `1.0`).
fn same(a: &Val, b: &Value) -> bool {
    match (a, b) {
        (Val::Num(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a.eq_value(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(path: &str, op: Op) -> Condition {
        Condition::Test {
            path: KeyPath::compile(path).unwrap(),
            op,
        }
    }

    #[test]
    fn ops() {
        let e = json!({"a":1,"s":"hello","t":true,"n":null});
        let view = Val::from_value(&e);
        let e = Doc::with_value(&view, &e);
        assert!(t("a", Op::Equals(json!(1.0))).eval(&e));
        assert!(t("t", Op::Equals(json!(true))).eval(&e));
        assert!(!t("t", Op::Equals(json!("true"))).eval(&e));
        assert!(t("missing", Op::NotEquals(json!(1))).eval(&e));
        assert!(t("s", Op::In(vec![json!("x"), json!("hello")])).eval(&e));
        assert!(t("s", Op::NotIn(vec![json!("x")])).eval(&e));
        assert!(t("s", Op::Matches(Regex::new("^h").unwrap())).eval(&e));
        assert!(t("n", Op::Exists(false)).eval(&e));
        assert!(t("a", Op::Exists(true)).eval(&e));
        let both = Condition::All(vec![
            t("a", Op::Exists(true)),
            t("s", Op::Equals(json!("no"))),
        ]);
        assert!(!both.eval(&e));
        assert!(Condition::Not(Box::new(both.clone())).eval(&e));
        assert!(Condition::Any(vec![both, t("a", Op::Exists(true))]).eval(&e));
    }
}
