//! Exit codes of `quill`. Usage errors exit with 2 (clap's convention).

/// The command did what was asked.
pub const OK: u8 = 0;
/// The command could not do its work (the one-line reason is on stderr).
pub const ERROR: u8 = 1;
/// The command ran, but one of its own checks (a known answer) gave a wrong result.
pub const CHECK_FAILED: u8 = 3;
