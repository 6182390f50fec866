//! The supervisor's phase as the outside world names it (protocol, `/status`, metrics).

use crate::names::named_enum;

named_enum! {
    /// A phase as the outside world names it (`{"event":"phase","phase":…}`, `/status`, metrics):
    /// `Exited` and `Done` are one phase there.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum PhaseName {
        Starting = "starting",
        Ready = "ready",
        Draining = "draining",
        Stopping = "stopping",
        Exited = "exited",
    }
}
