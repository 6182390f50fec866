#!/usr/bin/env bash
# Builds the statically linked release binary for one target and prints its path. release.sh and
# bench/run.py use it, so the binary that is measured is the binary that ships.
#
# usage: packaging/build-static.sh [TARGET]     (default: this machine's, e.g. x86_64-unknown-linux-gnu)
# exit status: 0 built; 3 TARGET cannot be built here (the reason on stderr); 1 the build failed
#
# The flags, and why (those every static build shares, in packaging/static-flags.sh):
# - packaging/static-nss.c, linked in: host names come from /etc/hosts and DNS only. A static glibc
#   would otherwise dlopen the host's NSS modules named in /etc/nsswitch.conf (resolve,
#   myhostname, sss …), built for another glibc: on Debian 11 that aborts the process. Why, in
#   that file; packaging/test-root.sh checks it.
# - packaging/startup-order.txt, for lld (x86_64 built on x86_64 only): the functions of the
#   guard's start and idle laid out together, then those of a scale-in, so that an idle guard
#   maps a dozen 64-KiB windows of its code instead of most of them; and
#   packaging/startup-rodata.ld, the same for the constants start-up reads (string literals,
#   vtables, jump tables: 6 windows instead of 20). Why and how both are made, in
#   packaging/startup-order.sh; a stale list costs memory, never correctness.
# Passed as RUSTFLAGS together with --target, so they reach the target's code and not the build
# scripts or proc-macros, and override any RUSTFLAGS of the caller's.
set -euo pipefail
cd "$(dirname "$0")/.."

host=$(rustc -vV | sed -n 's/^host: //p')
target=${1:-$host}
cc=cc
cannot() { echo "build-static.sh: cannot build $target here: $*" >&2; exit 3; }

case $target in
  *-linux-gnu) ;;
  *) cannot "only the *-linux-gnu targets are set up (static glibc)" ;;
esac
sysroot=$(rustc --print sysroot)
if [[ ! -d $sysroot/lib/rustlib/$target/lib ]]; then
  # rustup cannot fetch another target's standard library here; Debian's can be installed beside
  # it (packaging/toolchain-aarch64.sh). Then Debian's rustc and cargo build this target, first on
  # PATH for this build only: a standard library works only with the very compiler that built it.
  [[ -x /usr/bin/rustc && -x /usr/bin/cargo && -d /usr/lib/rustlib/$target/lib ]] ||
    cannot "its standard library is not installed (packaging/toolchain-aarch64.sh, or rustup target add $target)"
  export PATH=/usr/bin:$PATH RUSTC=/usr/bin/rustc CARGO=/usr/bin/cargo
  unset RUSTUP_TOOLCHAIN
  host=$(rustc -vV | sed -n 's/^host: //p')
fi

if [[ $target != "$host" ]]; then
  # A cross build needs the target's C compiler (ring has C and assembly) and its static libc.
  arch=${target%%-*}
  cc=$arch-linux-gnu-gcc
  command -v "$cc" >/dev/null ||
    cannot "no $cc (apt-get install gcc-$arch-linux-gnu libc6-dev-${arch/aarch64/arm64}-cross)"
  [[ $("$cc" -print-file-name=libc.a) == /* ]] ||
    cannot "$cc has no static libc.a (apt-get install libc6-dev-${arch/aarch64/arm64}-cross)"
  triple_var=$(tr 'a-z-' 'A-Z_' <<<"$target")
  export "CARGO_TARGET_${triple_var}_LINKER=$cc"
  export "CC_${target//-/_}=$cc" "AR_${target//-/_}=$arch-linux-gnu-ar"
fi

out=$(realpath -m "${CARGO_TARGET_DIR:-target}/$target")
mkdir -p "$out"
# Named by its content, so that a change to it changes RUSTFLAGS and cargo links again.
nss_obj=$out/static-nss-$(sha256sum packaging/static-nss.c | cut -c1-12).o
[[ -f $nss_obj ]] || "$cc" -O2 -fno-pie -c packaging/static-nss.c -o "$nss_obj"

flags="$(packaging/static-flags.sh) -C link-arg=$nss_obj"
if [[ $target == x86_64-unknown-linux-gnu && $host == "$target" && -f packaging/startup-order.txt ]]; then
  # Named by its content too. The list is of x86_64's mangled names (startup-order.sh makes it
  # on an x86_64 host): another target's linker would find none of them, silently.
  order=$out/startup-order-$(sha256sum packaging/startup-order.txt | cut -c1-12).txt
  [[ -f $order ]] || cp packaging/startup-order.txt "$order"
  flags+=" -C link-arg=-Wl,--symbol-ordering-file=$order -C link-arg=-Wl,--no-warn-symbol-ordering"
  if [[ -f packaging/startup-rodata.ld ]]; then
    # The constants start-up reads, ahead of .rodata (an INSERT script: the default layout
    # stays). Its names are x86_64's too; an unmatched line is silently nothing.
    rodata=$out/startup-rodata-$(sha256sum packaging/startup-rodata.ld | cut -c1-12).ld
    [[ -f $rodata ]] || cp packaging/startup-rodata.ld "$rodata"
    flags+=" -C link-arg=-Wl,-T,$rodata"
  fi
fi

# Stripped by the linker rather than by the profile's `strip = true`: the profile is part of the
# hash in every mangled name, and startup-order.sh, which needs the symbols, builds with
# strip = false; the names must be the same in both.
flags+=" -C link-arg=-Wl,--strip-all"
unset CARGO_ENCODED_RUSTFLAGS
CARGO_PROFILE_RELEASE_STRIP=false RUSTFLAGS="$flags" \
  cargo build --release --locked --target "$target" --bin agent-guard >&2
binary=${CARGO_TARGET_DIR:-target}/$target/release/agent-guard
file -b "$binary" | grep -q 'statically linked' || {
  echo "build-static.sh: $binary is not statically linked: $(file -b "$binary")" >&2
  exit 1
}
echo "$binary"
