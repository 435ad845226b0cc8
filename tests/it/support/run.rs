//! `run` / `replay` in-process (the library's `commands::run`), against a simulator.

use sfmc_relay::commands::run::{InputKind, RunError, RunOptions, RunSummary, run};
use sfmc_relay::rules::Program;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One in-process run: no rate limit, no progress, the environment from `env` only.
pub struct Run {
    pub program: Arc<Program>,
    pub input: PathBuf,
    pub dead: PathBuf,
    pub kind: InputKind,
    pub env: HashMap<String, String>,
}

impl Run {
    pub async fn go(self) -> Result<RunSummary, RunError> {
        let program = self.program;
        let env = self.env;
        let opts = RunOptions {
            input: Some(self.input),
            input_kind: self.kind,
            dead_letter: self.dead,
            requests_per_second: None,
            progress: false,
            env: env.into(),
            state_dir: None,
        };
        run(Arc::new(move || program.clone()), opts).await
    }
}

/// Deliver the events in `input` (NDJSON) with `program`; panics if the run fails.
pub async fn deliver(
    program: &Arc<Program>,
    input: &Path,
    dead: &Path,
    env: HashMap<String, String>,
) -> RunSummary {
    Run {
        program: program.clone(),
        input: input.to_path_buf(),
        dead: dead.to_path_buf(),
        kind: InputKind::Events,
        env,
    }
    .go()
    .await
    .expect("run")
}
