#!/usr/bin/env bash
# Installs agent-guard for an AMI bake: the binary, the systemd unit template agent-guard@.service,
# the tmpfiles.d line for /run/agent-guard (the hooks directory, shared through the group
# agent-guard) and an example config; on the live system (no DESTDIR) it also creates that group
# and, where systemd runs, the directory. No network; running it twice changes nothing the second time.
#
# usage: packaging/install.sh [BINARY]      install BINARY (default: the agent-guard beside
#                                           packaging/ in a release archive, else target/release/agent-guard)
#        packaging/install.sh DIR           install from the release archive in DIR (a copy of dist/)
#                                           for this machine's `uname -m`, x86_64 or aarch64,
#                                           checked against DIR/SHA256SUMS when it is there
#        packaging/install.sh --uninstall   remove what it installed (your configs and the group are kept)
# environment: PREFIX (default /usr/local), DESTDIR (stage under this root, for packaging)
# A binary built for another architecture than `uname -m` is refused, even where qemu would run it.
set -euo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "install.sh: $*" >&2; exit 1; }

here=$(cd "$(dirname "$0")" && pwd)
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
bindir=$DESTDIR$PREFIX/bin
unitdir=$DESTDIR/etc/systemd/system
confdir=$DESTDIR/etc/agent-guard
tmpfilesdir=$DESTDIR/etc/tmpfiles.d
unit=$unitdir/agent-guard@.service
tmpfiles=$tmpfilesdir/agent-guard.conf
example=$confdir/example.toml

mode=install
binary=target/release/agent-guard
# In an unpacked release archive the binary sits beside packaging/.
[[ -f $here/../agent-guard && ! -d $here/../src ]] && binary=$here/../agent-guard
case "${1:-}" in
  --uninstall) mode=uninstall; [[ $# -eq 1 ]] || usage ;;
  -h|--help) usage ;;
  -*) echo "install.sh: unknown option $1" >&2; usage ;;
  "") ;;
  *) binary=$1; [[ $# -eq 1 ]] || usage ;;
esac
[[ $PREFIX == /* ]] || die "PREFIX must be an absolute path, not '$PREFIX'"

writable() {  # the nearest existing parent of $1 must be writable
  local d=$1
  while [[ ! -e $d ]]; do d=$(dirname "$d"); done
  [[ -w $d ]]
}
for d in "$bindir" "$unitdir" "$confdir" "$tmpfilesdir"; do
  writable "$d" || die "cannot write to $d: run as root, or stage with DESTDIR=/some/dir"
done

reload_systemd() {
  # Only on a live system with systemd running, never while staging.
  if [[ -z $DESTDIR && -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    systemctl daemon-reload
  fi
}

# The group the guards of different users share /run/agent-guard through (the tmpfiles.d line
# names it): only on the live system, never while staging.
ensure_group() {
  getent group agent-guard >/dev/null && return 0
  if command -v groupadd >/dev/null; then
    groupadd -r agent-guard
  elif command -v addgroup >/dev/null; then
    addgroup --system agent-guard
  else
    die "cannot create the group agent-guard: no groupadd or addgroup here"
  fi
}

# /run/agent-guard at once (at boot, systemd-tmpfiles makes it anyway), on a live system with
# systemd running only: never while staging, nor in a chroot.
apply_tmpfiles() {
  if [[ -z $DESTDIR && -d /run/systemd/system ]] && command -v systemd-tmpfiles >/dev/null; then
    systemd-tmpfiles --create "$tmpfiles"
  fi
}

if [[ $mode == uninstall ]]; then
  rm -f "$bindir/agent-guard" "$unit" "$example" "$tmpfiles"
  # Only directories left empty, and only the ones this script creates; never a user's config.
  rmdir "$confdir" 2>/dev/null || true
  if [[ -n $DESTDIR ]]; then
    for d in "$bindir" "$unitdir" "$tmpfilesdir" "$DESTDIR$PREFIX" "$DESTDIR/etc/systemd" "$DESTDIR/etc" "$DESTDIR/usr"; do
      rmdir "$d" 2>/dev/null || true
    done
  fi
  reload_systemd
  echo "agent-guard removed from ${DESTDIR:-/}"
  exit 0
fi

machine=$(uname -m)
# DIR: the archive for this machine, checked, unpacked into a scratch directory.
if [[ -d $binary ]]; then
  dir=$binary
  archives=("$dir"/agent-guard-*-"$machine"-linux.tar.gz)
  [[ -f ${archives[0]} ]] || die "no agent-guard-VERSION-$machine-linux.tar.gz in $dir (this machine is $machine)"
  ((${#archives[@]} == 1)) || die "more than one release for $machine in $dir: name the archive's binary instead"
  archive=${archives[0]} name=$(basename "${archives[0]}" .tar.gz)
  if [[ -f $dir/SHA256SUMS ]]; then
    (cd "$dir" && grep " $name.tar.gz\$" SHA256SUMS | sha256sum -c --quiet -) >/dev/null 2>&1 ||
      die "$archive does not match $dir/SHA256SUMS"
  fi
  unpacked=$(mktemp -d)
  trap 'rm -rf "$unpacked"' EXIT
  tar xzf "$archive" -C "$unpacked" "$name/agent-guard" || die "$archive holds no $name/agent-guard"
  binary=$unpacked/$name/agent-guard
fi
[[ -f $binary ]] || die "no binary at $binary: build it with 'cargo build --release --locked', or give its path"
# The ELF header's machine (bytes 18-19), so that a Graviton gets no x86_64 binary nor the reverse:
# with qemu registered in binfmt_misc the wrong one would even run, emulated, many times slower.
elf=$(od -An -tx1 -N20 "$binary" | tr -d ' \n')
case $elf in
  7f454c46*b700) built=aarch64 ;;
  7f454c46*3e00) built=x86_64 ;;
  7f454c46*) built="another architecture (ELF machine 0x${elf:38:2}${elf:36:2})" ;;
  *) die "$binary is not agent-guard (not an ELF executable)" ;;
esac
[[ $built == "$machine" ]] ||
  die "$binary is built for $built, this machine is $machine: use agent-guard-VERSION-$machine-linux.tar.gz"
[[ -x $binary ]] || die "$binary is not executable"
version=$("$binary" --version 2>/dev/null) || die "$binary does not run on this machine (built for another architecture?)"
[[ $version == "agent-guard "* ]] || die "$binary is not agent-guard (it says: $version)"

install -d -m 0755 "$bindir" "$unitdir"
install -d -m 0755 "$confdir" "$tmpfilesdir"
install -m 0755 "$binary" "$bindir/agent-guard"
# The unit names the binary by its absolute path: the one PREFIX puts it at.
sed "s|/usr/bin/agent-guard|$PREFIX/bin/agent-guard|" "$here/systemd/agent-guard@.service" > "$unit.tmp"
chmod 0644 "$unit.tmp"
mv -f "$unit.tmp" "$unit"
install -m 0644 "$here/examples/queue-worker.toml" "$example"
install -m 0644 "$here/systemd/agent-guard.conf" "$tmpfiles"
if [[ -z $DESTDIR ]]; then
  ensure_group
  apply_tmpfiles
fi
reload_systemd
echo "installed $version: $PREFIX/bin/agent-guard, /etc/systemd/system/agent-guard@.service, /etc/tmpfiles.d/agent-guard.conf, /etc/agent-guard/example.toml${DESTDIR:+ (under $DESTDIR)}"
echo "next: write /etc/agent-guard/NAME.toml (see example.toml), then systemctl enable --now agent-guard@NAME"
