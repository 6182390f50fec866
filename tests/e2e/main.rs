//! End-to-end tests: the real binary, real processes, real signals. One file per behaviour.

mod support;

mod busy;
mod clients;
mod config;
mod docs;
mod doctor;
mod drain_socket;
mod drill;
mod exit_status;
mod fleet;
mod forwarding;
mod health;
mod hooks_dir_users;
mod hostile;
mod imds_ipv6;
mod lifecycle;
mod maintenance;
mod notices;
mod on_drain;
mod readme;
mod reaping;
mod restart;
mod several_guards;
mod stopping;
mod terminal;
mod warm_pool;
