//! Everything that talks to AWS: IMDS and its notices, lifecycle hooks, scale-in protection.
pub(crate) mod imds;
pub(crate) mod lifecycle;
pub(crate) mod notices;
pub(crate) mod protection;
