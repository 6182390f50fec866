//! End-to-end tests: the real binary, real processes, real signals. One file per behaviour.

mod support;

mod busy;
mod cgroup;
mod clients;
mod config;
mod docs;
mod doctor;
mod drain_socket;
mod drill;
mod exit_status;
mod fault_signals;
mod fleet;
mod forwarding;
mod health;
mod hook_setup;
mod hooks_dir_users;
mod hostile;
mod imds_ipv6;
mod imds_sdk;
mod inherited_signals;
mod job_control;
mod lifecycle;
mod log_lines;
mod maintenance;
mod missing_credentials;
mod notices;
mod on_drain;
mod on_drain_bounds;
mod readme;
mod reaping;
mod restart;
mod several_guards;
mod stopping;
mod terminal;
mod warm_pool;
