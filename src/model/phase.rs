//! The supervisor's phase as the outside world names it (protocol, `/status`, metrics).

use std::fmt;

/// A phase as the outside world names it (`{"event":"phase","phase":…}`, `/status`, metrics):
/// `Exited` and `Done` are one phase there.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PhaseName {
    Starting,
    Ready,
    Draining,
    Stopping,
    Exited,
}

impl PhaseName {
    /// Every phase, for tables that must list each one (metrics).
    pub const ALL: [PhaseName; 5] = [
        PhaseName::Starting,
        PhaseName::Ready,
        PhaseName::Draining,
        PhaseName::Stopping,
        PhaseName::Exited,
    ];

    /// The wire name: `starting|ready|draining|stopping|exited`.
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseName::Starting => "starting",
            PhaseName::Ready => "ready",
            PhaseName::Draining => "draining",
            PhaseName::Stopping => "stopping",
            PhaseName::Exited => "exited",
        }
    }
}

impl fmt::Display for PhaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
