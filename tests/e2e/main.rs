//! End-to-end tests: the real binary, real processes, real signals. One file per behaviour.

mod support;

mod busy;
mod clients;
mod config;
mod drain_socket;
mod drill;
mod exit_status;
mod fleet;
mod forwarding;
mod health;
mod lifecycle;
mod notices;
mod readme;
mod reaping;
mod several_guards;
mod stopping;
mod terminal;
