//! The subcommands besides supervising: `ctl` and `drill`.
pub(crate) mod ctl;
pub(crate) mod drill;
