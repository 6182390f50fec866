#!/usr/bin/env bash
# Installs what packaging/build-static.sh needs to build the aarch64 (Graviton) binary on an x86_64
# Debian 12, and what packaging/test.sh needs to run it: Debian's rustc-web and cargo-web with the
# aarch64 standard library (libstd-rust-web-dev:arm64), all three pinned to one version, the cross
# gcc and its static libc, and qemu-user-static. rustup cannot fetch another target's standard
# library here; Debian can. rustup's toolchain stays the default: build-static.sh puts Debian's
# rustc and cargo (/usr/bin) first on PATH for the aarch64 build only.
#
# Idempotent: when everything is installed at one version it says so and changes nothing.
# Refuses with one line (exit 1) when Debian's rustc is older than Cargo.toml's rust-version.
# Why multiarch (dpkg --add-architecture arm64) and not `apt-get download` of the one package:
# docs/aarch64.md.
#
# usage: packaging/toolchain-aarch64.sh      (as root, on Debian 12 amd64)
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "toolchain-aarch64.sh: $*" >&2; exit 1; }
[[ $# -eq 0 ]] || { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[[ $(dpkg --print-architecture 2>/dev/null) == amd64 ]] || die "needs an amd64 Debian (dpkg --print-architecture)"
[[ $(id -u) == 0 ]] || die "needs root (dpkg --add-architecture, apt-get install)"

want=$(sed -n 's/^rust-version *= *"\([^"]*\)".*/\1/p' Cargo.toml)
[[ -n $want ]] || die "Cargo.toml has no rust-version"
# The three Rust packages, pinned together; the rest unpinned.
rust_pkgs=(rustc-web cargo-web libstd-rust-web-dev:amd64 libstd-rust-web-dev:arm64)
other_pkgs=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static)

installed() { dpkg-query -W -f '${db:Status-Abbrev} ${Version}\n' "$1" 2>/dev/null | sed -n 's/^ii  *//p'; }
# The upstream part of a Debian version: 1.96.0+dfsg1-1~deb12u2 -> 1.96.0
upstream() { local v=${1#*:}; v=${v%%+*}; echo "${v%%-*}"; }
new_enough() { dpkg --compare-versions "$(upstream "$1")" ge "$want"; }
refuse_old() {
  die "Debian's rustc-web is $(upstream "$1"), older than Cargo.toml's rust-version $want: the aarch64 build needs a newer one (bookworm-security in apt's sources?)"
}

# Already in place at one version: nothing to do (no apt-get update either).
current() {
  local v='' p got
  for p in "${rust_pkgs[@]}"; do
    got=$(installed "$p")
    [[ -n $got && ( -z $v || $got == "$v" ) ]] || return 1
    v=$got
  done
  for p in "${other_pkgs[@]}"; do [[ -n $(installed "$p") ]] || return 1; done
  echo "$v"
}
if v=$(current) && dpkg --print-foreign-architectures | grep -qx arm64; then
  new_enough "$v" || refuse_old "$v"
  echo "toolchain-aarch64.sh: already installed: rustc-web, cargo-web, libstd-rust-web-dev:arm64 $v"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
apt-get update -qq
# The arm64 standard library's candidate sets the version: after a security update it may lag the
# amd64 compiler's, and the -dev package is Multi-Arch: same, so both architectures must match it.
v=$(apt-cache policy libstd-rust-web-dev:arm64 | sed -n 's/^ *Candidate: *//p')
[[ -n $v && $v != "(none)" ]] || die "apt has no libstd-rust-web-dev:arm64 (is bookworm in apt's sources?)"
new_enough "$v" || refuse_old "$v"
for p in rustc-web cargo-web; do
  apt-cache madison "$p" | awk -F' *[|] *' '{print $2}' | grep -qxF "$v" ||
    die "apt has libstd-rust-web-dev:arm64 $v but no $p $v: run apt-get update again once the mirror has both"
done
apt-get install -y -qq --no-install-recommends "${rust_pkgs[@]/%/=$v}" "${other_pkgs[@]}" >/dev/null

v=$(current) || die "the packages did not end up at one version: $(for p in "${rust_pkgs[@]}"; do echo -n "$p $(installed "$p"); "; done)"
compgen -G '/usr/lib/rustlib/aarch64-unknown-linux-gnu/lib/libstd-*.rlib' >/dev/null ||
  die "no aarch64 libstd in /usr/lib/rustlib/aarch64-unknown-linux-gnu/lib after the install"
echo "toolchain-aarch64.sh: installed rustc-web, cargo-web, libstd-rust-web-dev:arm64 $v ($(/usr/bin/rustc --version))"
