#!/usr/bin/env bash
# Notice → stop-signal latency and idle IMDS request rate, against the simulated IMDS (loopback).
# usage: bench/notices.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin agent-guard
cargo run --release --locked --example bench_notices -- "$@"
