//! The README's first command does what the README says it does: on a fresh clone, with no
//! SFMC credentials, it shows rows landing in data extensions, contacts, a journey event,
//! what was skipped and dead-lettered and why, and what to set for a real account. Every
//! line of the README's sample output (up to its `...` elisions) must be in the real output.

use crate::support::root;
use std::process::Command;

#[test]
fn readme_first_command_shows_what_the_readme_says() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let quick = &readme[readme
        .find("## Quick start")
        .expect("a Quick start section")..];
    let command = quick
        .lines()
        .find(|l| l.starts_with("cargo run"))
        .expect("a command in the Quick start");
    let args: Vec<&str> = command
        .split_once(" -- ")
        .expect("cargo run ... -- ARGS")
        .1
        .split_whitespace()
        .collect();
    let sample = quick
        .split("```text\n")
        .nth(1)
        .and_then(|t| t.split("```").next())
        .expect("the sample output after the first command");

    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(crate::support::BIN)
        .current_dir(tmp.path())
        .args(args.iter().map(|a| {
            if a.starts_with("examples/") {
                root().join(a).into_os_string()
            } else {
                a.into()
            }
        }))
        .env_remove("SFMC_CLIENT_ID")
        .env_remove("SFMC_CLIENT_SECRET")
        .env_remove("SFMC_SUBDOMAIN")
        .env_remove("SFMC_IDENTIFY_DE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{command}:\n{err}");
    for line in sample.lines() {
        // Up to the first elision, and without what changes from run to run.
        let mut want = line;
        for cut in ["(...)", "...", "http://127.0.0.1:", "rules r1-"] {
            if let Some(i) = want.find(cut) {
                want = &want[..i];
            }
        }
        let want = want.trim();
        if want.is_empty() {
            continue;
        }
        assert!(
            err.lines().any(|l| l.trim().starts_with(want)),
            "README's sample line `{line}` is not in the output of `{command}`:\n{err}"
        );
    }
    // What the README promises in words, too.
    for want in [
        "Data extensions:",
        "Contacts: 4",
        "API events: 1",
        "skipped:",
        "dead-lettered:",
        "SFMC_CLIENT_ID",
    ] {
        assert!(err.contains(want), "{want}:\n{err}");
    }
    assert!(tmp.path().join("sfmc-relay.deadletter.ndjson").exists());
}
