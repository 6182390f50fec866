//! The supervisor's state machine: the pure `step`, and the one task that owns the phase.
pub(crate) mod announce;
pub(crate) mod restart;
pub(crate) mod said;
pub(crate) mod state;
pub(crate) mod supervisor;
