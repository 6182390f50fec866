#!/usr/bin/env bash
# Runs COMMAND where the kernel runs aarch64 programs through qemu-aarch64-static, on an x86_64
# host, without touching the host's binfmt_misc: in a user and mount namespace of its own
# (`unshare --user --map-root-user --mount`), with a binfmt_misc instance of that namespace
# (Linux >= 6.7) that hands aarch64 ELF files to qemu. Needed wherever an aarch64 program execs
# another aarch64 program, as the guard's drill does (it starts a second copy of the guard), and
# for a chroot that holds no qemu (the `F` flag opens qemu once, at registration). Inside, COMMAND
# is root of that namespace only: it can chroot, mount proc and make namespaces, nothing more.
#
# usage: packaging/qemu-aarch64.sh COMMAND [ARGS...]
# needs: qemu-user-static (packaging/toolchain-aarch64.sh installs it), unshare (util-linux)
set -euo pipefail

qemu=/usr/bin/qemu-aarch64-static
if [[ -z ${AGENT_GUARD_QEMU_NS:-} ]]; then
  [[ $# -ge 1 ]] || { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
  [[ -x $qemu ]] || { echo "qemu-aarch64.sh: no $qemu (apt-get install qemu-user-static)" >&2; exit 2; }
  exec env AGENT_GUARD_QEMU_NS=1 unshare --user --map-root-user --mount --propagation private --fork -- "$0" "$@"
fi
unset AGENT_GUARD_QEMU_NS
mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || {
  echo "qemu-aarch64.sh: cannot mount a binfmt_misc of this namespace (needs Linux >= 6.7; this is $(uname -r))" >&2
  exit 2
}
# The ELF header of an aarch64 executable (class 64, little-endian, e_machine 0xb7) and its mask,
# as qemu's own binfmt configuration writes them; binfmt_misc decodes the \x escapes itself.
magic='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
printf '%s' ":qemu-aarch64:M::$magic:$mask:$qemu:F" > /proc/sys/fs/binfmt_misc/register
exec "$@"
