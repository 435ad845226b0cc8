//! `sfmc-relay schema`: print the JSON Schema of a rule file (for editors).
//!
//! Generated from the rule types ([`crate::rules::json_schema`]); the copy shipped in
//! `docs/rules.schema.json`, which the shipped rule files reference with a
//! `# yaml-language-server: $schema=...` comment, is checked against it by the tests.

use std::io::{self, Write};

/// Write the schema (pretty JSON, one trailing newline) to `out`.
pub fn print(out: &mut impl Write) -> io::Result<()> {
    out.write_all(crate::rules::json_schema::rule_file_schema().as_bytes())?;
    out.flush()
}
