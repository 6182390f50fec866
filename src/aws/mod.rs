//! Everything that talks to AWS: IMDS and its notices, scheduled events, warm pools, lifecycle
//! hooks, scale-in protection, instance health.
pub(crate) mod api;
pub(crate) mod backoff;
pub(crate) mod context;
pub(crate) mod deregistration;
pub(crate) mod emf;
pub(crate) mod health_status;
pub(crate) mod hook_calls;
pub(crate) mod imds;
pub(crate) mod lifecycle;
pub(crate) mod maintenance;
pub(crate) mod notices;
pub(crate) mod protection;
pub(crate) mod replace;
pub(crate) mod scheduled;
pub(crate) mod status;
pub(crate) mod targets;
pub(crate) mod termination;
pub(crate) mod transport;
pub(crate) mod wait_state;
pub(crate) mod warm_pool;
