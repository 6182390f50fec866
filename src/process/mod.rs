//! The agent as a process: spawning it, signalling it, reaping it, and its exit status.
pub(crate) mod child;
pub(crate) mod drain_command;
pub(crate) mod exit;
pub(crate) mod reaper;
pub(crate) mod sig;
pub(crate) mod signals;
pub(crate) mod upstream;
