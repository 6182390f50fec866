//! The agent as a process: spawning it, signalling it, reaping it, and its exit status.
pub(crate) mod cgroup;
pub(crate) mod child;
mod clone_into;
pub(crate) mod crash;
pub(crate) mod drain_command;
pub(crate) mod exit;
pub(crate) mod inherited;
pub(crate) mod reaper;
pub(crate) mod sig;
pub(crate) mod signals;
pub(crate) mod spawn;
pub(crate) mod upstream;
