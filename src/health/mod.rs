//! The health endpoint and the background probes it reports.
pub(crate) mod checks;
pub(crate) mod server;
