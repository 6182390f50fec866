//! `--restart`: which exits of the agent are followed by a new start, as every part names it.

use crate::names::named_enum;
use crate::process::exit::{ChildExit, ExitKind};

named_enum! {
    /// Which exits of the agent are followed by a new start (`--restart`). A drain or a stop always
    /// ends the guard, whatever this says.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub enum RestartPolicy {
        /// The guard exits with the agent (the default).
        #[default]
        Never = "never",
        /// After a non-zero status or a death by a signal.
        OnFailure = "on-failure",
        /// After any exit, 0 included.
        Always = "always",
    }
}

impl RestartPolicy {
    /// Whether an agent that ended this way by itself is to be started again. An OOM kill in
    /// its cgroup is a failure even when the agent itself then exited 0.
    pub fn applies(self, exit: &ChildExit) -> bool {
        match self {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => exit.kind() != ExitKind::Code(0) || exit.oom_kills() > 0,
            RestartPolicy::Always => true,
        }
    }
}
