//! The rule files' JSON Schema (`sfmc-relay schema`, shipped as docs/rules.schema.json):
//! it is what the binary prints, every shipped and example rule file validates against it
//! and references it for editors, and it refuses what `check` refuses for shape.

use crate::support::root;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn printed_schema() -> String {
    let out = Command::new(crate::support::BIN)
        .arg("schema")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(&printed_schema()).unwrap();
    jsonschema::validator_for(&schema).expect("a valid JSON Schema")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    v.sort();
    v
}

/// The shipped and example rule sets, and the golden cases' own rule sets.
fn rule_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![
        root().join("rules"),
        root().join("examples/ecommerce/rules"),
    ];
    for set in ["custom", "default", "ecommerce"] {
        let Ok(cases) = std::fs::read_dir(root().join("tests/golden").join(set)) else {
            continue;
        };
        for case in cases {
            let rules = case.unwrap().path().join("rules");
            if rules.is_dir() {
                dirs.push(rules);
            }
        }
    }
    dirs
}

fn errors(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    v.iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

fn as_json(yaml: &str) -> Value {
    serde_saphyr::from_str::<Option<Value>>(yaml)
        .unwrap()
        .unwrap_or(Value::Null)
}

#[test]
fn shipped_schema_is_the_generated_one() {
    let shipped = std::fs::read_to_string(root().join("docs/rules.schema.json")).unwrap();
    assert!(
        shipped == printed_schema(),
        "docs/rules.schema.json is out of date: run `cargo run -- schema > docs/rules.schema.json`"
    );
}

#[test]
fn every_shipped_and_example_rule_file_validates() {
    let v = validator();
    let mut checked = 0;
    for dir in rule_dirs() {
        for file in yaml_files(&dir) {
            let doc = as_json(&std::fs::read_to_string(&file).unwrap());
            if doc.is_null() {
                continue; // an empty file is an empty rule file
            }
            let errs = errors(&v, &doc);
            assert!(errs.is_empty(), "{}: {errs:#?}", file.display());
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} rule files found");
}

#[test]
fn shipped_rule_files_reference_the_schema_for_editors() {
    for dir in [
        root().join("rules"),
        root().join("examples/ecommerce/rules"),
    ] {
        for file in yaml_files(&dir) {
            let text = std::fs::read_to_string(&file).unwrap();
            let first = text.lines().next().unwrap_or("");
            let rel = first
                .strip_prefix("# yaml-language-server: $schema=")
                .unwrap_or_else(|| {
                    panic!(
                        "{}: first line is not a yaml-language-server $schema comment: {first}",
                        file.display()
                    )
                });
            let target = file.parent().unwrap().join(rel);
            assert_eq!(
                target.canonicalize().unwrap(),
                root()
                    .join("docs/rules.schema.json")
                    .canonicalize()
                    .unwrap(),
                "{}",
                file.display()
            );
        }
    }
}

#[test]
fn schema_refuses_mistakes_that_check_refuses() {
    let v = validator();
    for (yaml, what) in [
        (
            "track:\n  - event: X\n    primry_key: Order Id\n",
            "primry_key",
        ),
        ("delivery:\n  linger: soon\n", "linger"),
        ("delivery:\n  batch_rows: many\n", "batch_rows"),
        ("casing:\n  style: kebab\n", "style"),
        ("nested: deep\n", "nested"),
        ("identify:\n  create_contacts: maybe\n", "create_contacts"),
        ("track:\n  - type: purchase\n", "type"),
        ("colour: blue\n", "colour"),
    ] {
        let errs = errors(&v, &as_json(yaml));
        assert!(!errs.is_empty(), "the schema accepts {yaml:?}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("r.yaml"), yaml).unwrap();
        let out = Command::new(crate::support::BIN)
            .args(["check", "--rules"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "check accepts {yaml:?} ({what})"
        );
    }
    // ${ENV} is accepted wherever the loader interpolates before checking.
    let ok = "delivery:\n  linger: ${LINGER:-200ms}\n  batch_rows: ${ROWS:-50}\ncasing:\n  style: ${STYLE:-title}\nidentify:\n  create_contacts: ${CREATE:-true}\n";
    assert!(
        errors(&v, &as_json(ok)).is_empty(),
        "{:?}",
        errors(&v, &as_json(ok))
    );
}
