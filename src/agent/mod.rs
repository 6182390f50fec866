//! What faces the agent and the operator: the control socket, its protocol, sd_notify, and what
//! they share.
pub(crate) mod control;
pub(crate) mod protocol;
pub(crate) mod report;
pub(crate) mod sdnotify;
pub(crate) mod unixsock;
