#!/usr/bin/env bash
# Prints the RUSTFLAGS that every static build of the guard shares: build-static.sh's (the binary
# that ships) and startup-order.sh's (the profiled copy whose names its lists give). The two must
# compile the same code, or the lists would name what the shipped binary does not have; so the
# flags are written here once. The callers add their link arguments after these.
#
# usage: packaging/static-flags.sh
#
# The flags, and why:
# - `+crt-static`: glibc linked in, so the binary runs on any Linux >= 3.2 whatever its libc
#   (Amazon Linux 2's glibc 2.26, Alpine's musl, scratch and distroless images with none).
# - `relocation-model=static`: a plain static executable rather than a static-pie. A static-pie
#   applies ~18,000 relative relocations to itself at every start, writing (and so copying) the
#   ~280 KiB of .data.rel.ro: measured by bench/run.py, that is start-up time and anonymous memory.
#   It gives up ASLR of the binary's own image (the stack, heap and mmaps stay randomised), as
#   Debian's tini-static does.
# - `--remap-path-prefix` of cargo's registry: the dependencies' source paths in panic messages
#   and log locations read `tokio-1.54.1/src/...` rather than the builder's own
#   `/home/NAME/.cargo/registry/src/index.crates.io-<hash>/tokio-1.54.1/src/...`. The binary is
#   then the same whoever builds it from the same commit and toolchain (cargo passes the guard's
#   own sources as relative paths already, and the standard library's are remapped by rustup),
#   it names no home directory, and it is 67 KB smaller (1,146 such paths). A path with a space
#   cannot be passed in RUSTFLAGS; such a registry is left unmapped, which changes nothing else.
set -euo pipefail

flags="-C target-feature=+crt-static -C relocation-model=static"
registry=${CARGO_HOME:-$HOME/.cargo}/registry/src
for dir in "$registry"/*/; do
  [[ -d $dir && $dir != *" "* ]] || continue
  flags+=" --remap-path-prefix=$dir="
done
echo "$flags"
