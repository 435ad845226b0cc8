//! The exit statuses of `sfmc-relay` (documented in the README and in each command's
//! `--help`), and how a failed run maps to one. Usage errors are clap's: status 2, like
//! [`ExitStatus::Config`].

use crate::commands::run::RunError;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// 0: done (every event delivered, skipped or dead-lettered; rules valid; cases passed).
    Success,
    /// 1: an I/O error (input, output, dead-letter file, listener, spool, Kafka delivery).
    Io,
    /// 1: `check` found errors in the rules, or `test` had a failing case (or no cases).
    Failed,
    /// 2: a configuration error (rules, environment, settings files).
    Config,
    /// 3: `--strict` and something was dead-lettered.
    DeadLettered,
    /// 4: `run`/`replay` stopped before every event was sent: it gave up waiting for SFMC
    /// (`delivery.give_up_after`, or a signal during an outage) or a signal stopped it;
    /// the events not sent are in the dead-letter file as `undelivered`, in input order,
    /// and `replay` sends them.
    Undelivered,
}

impl ExitStatus {
    /// The process exit code.
    pub const fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Io | ExitStatus::Failed => 1,
            ExitStatus::Config => 2,
            ExitStatus::DeadLettered => 3,
            ExitStatus::Undelivered => 4,
        }
    }
}

impl From<&RunError> for ExitStatus {
    fn from(e: &RunError) -> ExitStatus {
        match e {
            RunError::Config(_) => ExitStatus::Config,
            RunError::Io(_) => ExitStatus::Io,
        }
    }
}

impl From<ExitStatus> for std::process::ExitCode {
    fn from(s: ExitStatus) -> std::process::ExitCode {
        std::process::ExitCode::from(s.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_codes() {
        assert_eq!(ExitStatus::Success.code(), 0);
        assert_eq!(ExitStatus::Io.code(), 1);
        assert_eq!(ExitStatus::Failed.code(), 1);
        assert_eq!(ExitStatus::Config.code(), 2);
        assert_eq!(ExitStatus::DeadLettered.code(), 3);
        assert_eq!(ExitStatus::Undelivered.code(), 4);
        assert_eq!(
            ExitStatus::from(&RunError::Config("x".into())),
            ExitStatus::Config
        );
        assert_eq!(ExitStatus::from(&RunError::Io("x".into())), ExitStatus::Io);
    }
}
