//! The subcommands besides supervising: `ctl`, `drill` and `doctor`.
pub(crate) mod ctl;
pub(crate) mod doctor;
pub(crate) mod drill;
