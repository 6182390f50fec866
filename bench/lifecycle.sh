#!/usr/bin/env bash
# The agent's exit → CompleteLifecycleAction arriving at the simulated Auto Scaling API (20
# scale-ins, loopback), and the stripped release binary's size with this build's features.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin agent-guard >&2
cargo run --release --locked --example bench_notices -- lifecycle
size=$(stat -c %s target/release/agent-guard)
echo
printf 'Stripped release binary: %.2f MiB (floor 8 MiB); profile: opt-level "s", fat LTO, codegen-units 1, strip.\n' "$(echo "$size / 1048576" | bc -l)"
echo "TLS: one stack, rustls 0.23 with ring (AWS SDK and reqwest share it); AWS crates without default features:"
grep -E '^(aws-config|aws-sdk-autoscaling|aws-smithy-http-client|reqwest) ' Cargo.toml | sed 's/^/    /'
