//! `sfmc-relay run` and `replay`: NDJSON from stdin or a file (or a dead-letter file)
//! through the pipeline into SFMC.

use crate::pipeline::{Pipeline, PipelineOptions};
use crate::source::{Framing, file, lines};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub use crate::pipeline::{
    Env, RuleSource, RunError, RunSummary, Target, sink_config, target, wait_for_signal,
};

/// How the input lines are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// NDJSON events or `{"batch":[...]}` envelopes.
    Events,
    /// A dead-letter file: each line's `event` is sent again, except records with outcome
    /// `uncertain` (skipped, with the reason).
    DeadLetters,
    /// A dead-letter file, `uncertain` records included (`replay --uncertain`).
    DeadLettersWithUncertain,
}

pub struct RunOptions {
    pub input: Option<PathBuf>,
    pub input_kind: InputKind,
    pub dead_letter: PathBuf,
    /// Override the rules' `delivery.requests_per_second` (0 = unlimited).
    pub requests_per_second: Option<u32>,
    /// Progress line on stderr (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Environment lookup for credentials and endpoints.
    pub env: Env,
    /// Where state kept across runs lives (Contact Keys known to exist); `None`: the
    /// dead-letter file's directory.
    pub state_dir: Option<PathBuf>,
}

/// Run the relay until the input ends or a signal arrives.
pub async fn run(rules: RuleSource, opts: RunOptions) -> Result<RunSummary, RunError> {
    let input =
        lines::open_input(opts.input.as_deref()).map_err(|e| RunError::Io(e.to_string()))?;
    let framing = match opts.input_kind {
        InputKind::Events => Framing::Ndjson,
        InputKind::DeadLetters => Framing::DeadLetter { uncertain: false },
        InputKind::DeadLettersWithUncertain => Framing::DeadLetter { uncertain: true },
    };
    let mut p = PipelineOptions::new(framing, opts.dead_letter, opts.env);
    p.requests_per_second = opts.requests_per_second;
    p.progress = opts.progress;
    p.state_dir = opts.state_dir;
    let pipeline = Pipeline::start(rules, p).await?;
    let state = Arc::new(file::ReaderState::default());
    let unsent = pipeline.unsent();
    let reader = {
        let (feeder, unsent, state) = (pipeline.feeder(), unsent.clone(), state.clone());
        std::thread::Builder::new()
            .name("sfmc-relay-reader".into())
            .spawn(move || file::read_into(input, feeder, unsent, state))
            .map_err(|e| RunError::Io(e.to_string()))?
    };
    let mut summary = pipeline.run(wait_for_signal()).await?;
    // After a stop the reader dead-letters what it read but could not push, then ends;
    // one waiting for more of a stdin that does not end holds nothing: leave it (the
    // process ends).
    let read = if summary.interrupted {
        while !reader.is_finished() && !state.idle.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if reader.is_finished() {
            join(reader)?
        } else {
            Ok(())
        }
    } else {
        join(reader)?
    };
    unsent
        .complete(&mut summary)
        .map_err(|e| RunError::Io(format!("dead-letter file: {e}")))?;
    summary.lines = state.lines_read.load(Ordering::Relaxed);
    read.map_err(|e| RunError::Io(format!("reading input: {e}")))?;
    Ok(summary)
}

fn join(
    reader: std::thread::JoinHandle<std::io::Result<()>>,
) -> Result<std::io::Result<()>, RunError> {
    reader
        .join()
        .map_err(|_| RunError::Io("the input reader thread panicked".into()))
}
