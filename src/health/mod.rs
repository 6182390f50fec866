//! The health endpoint and the background probes it reports.
pub(crate) mod checks;
pub(crate) mod http_get;
pub(crate) mod metrics;
pub(crate) mod probes;
pub(crate) mod server;
pub(crate) mod status;
pub(crate) mod views;
