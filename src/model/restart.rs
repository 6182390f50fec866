//! `--restart`: which exits of the agent are followed by a new start, as every part names it.

use std::fmt;

use crate::process::exit::{ChildExit, ExitKind};

/// Which exits of the agent are followed by a new start (`--restart`). A drain or a stop always
/// ends the guard, whatever this says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RestartPolicy {
    /// The guard exits with the agent (the default).
    #[default]
    Never,
    /// After a non-zero status or a death by a signal.
    OnFailure,
    /// After any exit, 0 included.
    Always,
}

impl RestartPolicy {
    /// Whether an agent that ended this way by itself is to be started again.
    pub fn applies(self, exit: &ChildExit) -> bool {
        match self {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => exit.kind() != ExitKind::Code(0),
            RestartPolicy::Always => true,
        }
    }

    /// The name as `--restart` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
