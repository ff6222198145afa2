//! Exit codes of `quill`: one constant per outcome class, and [`CliError`], the errors that
//! choose one. Everything a script may rely on is here; `quill --help` and the README list it.

/// The command did what was asked.
pub const OK: u8 = 0;
/// The cluster refused the request (permission, validation, state), or the command could not do
/// its work here (a file it needs, its input); the one-line reason is on stderr.
pub const REFUSED: u8 = 1;
/// The command line is wrong (clap's own convention for usage errors).
pub const USAGE: u8 = 2;
/// The command ran, but a check it exists for failed: a MAC, the audit chain, a verification,
/// a known answer.
pub const CHECK_FAILED: u8 = 3;
/// No node of the cluster could be reached (every endpoint tried, each named with its reason).
pub const UNREACHABLE: u8 = 4;
/// A write may or may not have been applied (the connection broke after it was sent). Retrying
/// with the same client id and serial, which the message prints, applies it at most once.
pub const INDETERMINATE: u8 = 5;

/// The text `quill --help` ends with.
pub const HELP: &str = "Exit codes: 0 ok, 1 refused by the cluster (permission, validation, state) or \
                        failed here, 2 usage, 3 check failed (MAC, audit chain, verification), 4 no node \
                        reachable, 5 indeterminate (the write may have happened: retry with the same serial).";

/// An error that decides the exit code. Other errors (reading a file, a bad input) exit with
/// [`REFUSED`].
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The cluster answered and said no.
    #[error("refused: {0}")]
    Refused(String),
    /// The command line is wrong in a way clap cannot see (two options that must go together).
    #[error("usage: {0}")]
    Usage(String),
    /// A check failed.
    #[error("check failed: {0}")]
    CheckFailed(String),
    /// No endpoint answered.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// A write's outcome is unknown.
    #[error(
        "indeterminate: {reason}; the write may or may not have been applied: retry with client id {client_id} \
         and serial {serial} to apply it at most once"
    )]
    Indeterminate {
        /// Why it is unknown (each endpoint and what happened there).
        reason: String,
        /// The client id of the write.
        client_id: String,
        /// Its serial.
        serial: u64,
    },
}

impl CliError {
    /// The exit code: one exhaustive match, so a new variant cannot ship without one.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Refused(_) => REFUSED,
            CliError::Usage(_) => USAGE,
            CliError::CheckFailed(_) => CHECK_FAILED,
            CliError::Unreachable(_) => UNREACHABLE,
            CliError::Indeterminate { .. } => INDETERMINATE,
        }
    }
}

/// The exit code of any error a command returned: a [`CliError`] anywhere in its chain decides,
/// otherwise [`REFUSED`].
pub fn of(e: &anyhow::Error) -> u8 {
    e.chain().find_map(|c| c.downcast_ref::<CliError>()).map_or(REFUSED, CliError::exit_code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_has_its_code_through_context() {
        let cases = [
            (CliError::Refused("x".into()), 1),
            (CliError::Usage("x".into()), 2),
            (CliError::CheckFailed("x".into()), 3),
            (CliError::Unreachable("x".into()), 4),
            (CliError::Indeterminate { reason: "x".into(), client_id: "c".into(), serial: 7 }, 5),
        ];
        for (e, code) in cases {
            let wrapped = anyhow::Error::from(e).context("while doing something");
            assert_eq!(of(&wrapped), code, "{wrapped:#}");
        }
        assert_eq!(of(&anyhow::anyhow!("no such file")), REFUSED);
    }

    #[test]
    fn indeterminate_names_the_serial_to_retry_with() {
        let e = CliError::Indeterminate { reason: "r".into(), client_id: "quill-ada-1".into(), serial: 42 };
        let text = e.to_string();
        assert!(text.contains("quill-ada-1") && text.contains("serial 42"), "{text}");
    }
}
