//! Everything that talks to AWS: IMDS and its notices, lifecycle hooks, scale-in protection.
pub(crate) mod api;
pub(crate) mod context;
pub(crate) mod emf;
pub(crate) mod health_status;
pub(crate) mod imds;
pub(crate) mod lifecycle;
pub(crate) mod notices;
pub(crate) mod protection;
pub(crate) mod replace;
