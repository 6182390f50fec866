//! The exit status contract: the agent's own code, 128+N when a signal N killed it, and three
//! codes of the guard's own, so that scripts and systemd can tell "agent failed" from "guard
//! failed".

use crate::RunError;
use crate::process::child::SpawnError;

/// agent-guard itself failed: a bad option or config, IMDS required but absent, socket unusable.
pub const GUARD_FAILED: u8 = 125;
/// COMMAND was found but could not be executed.
pub const CANNOT_EXECUTE: u8 = 126;
/// COMMAND was not found.
pub const NOT_FOUND: u8 = 127;

/// The exit code for a run that failed before the agent could be supervised.
pub fn for_error(err: &RunError) -> u8 {
    match err {
        RunError::Spawn(SpawnError::NotFound { .. }) => NOT_FOUND,
        RunError::Spawn(SpawnError::CannotExecute { .. }) => CANNOT_EXECUTE,
        _ => GUARD_FAILED,
    }
}
