//! End-to-end tests: the real binary, real processes, real signals. One file per behaviour.

mod support;

mod busy;
mod clients;
mod config;
mod drain_socket;
mod drill;
mod exit_status;
mod forwarding;
mod health;
mod hostile;
mod lifecycle;
mod notices;
mod readme;
mod reaping;
mod stopping;
mod terminal;
