#!/usr/bin/env bash
# Tests of the aarch64 (Graviton) release that packaging/release.sh wrote to dist/, on an x86_64
# host: the archive holds what the x86_64 one holds; the binary is a static aarch64 executable of
# at most 8 MiB; the .deb is arm64 and the .rpm aarch64, with the files of the x86_64 ones. Then
# the binary is rehearsed under qemu-user-static: --version, an agent's exit status passed on, a
# signal forwarded, `drill scale-in` and `drill spot` PASS with the very verdicts of the x86_64
# binary, and (as root) packaging/test-root.sh's checks as PID 1 of an empty root. Timings under
# emulation are not performance figures: nothing here measures one. Prints `ok`/`FAIL` lines and a
# total; packaging/test.sh runs it.
#
# usage: packaging/test-aarch64.sh X86_64_BINARY [SIM_WORLD]
#   X86_64_BINARY  the x86_64 static binary of the same release, whose drill verdicts are the reference
#   SIM_WORLD      the built example (cargo build --locked --example sim_world), for test-root.sh as root
# needs: qemu-user-static, unshare (util-linux), file, dpkg-deb, rpm; Linux >= 6.7 (qemu-aarch64.sh)
set -uo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 1 ]] || { sed -n '11,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
x86=$(realpath "$1") sim_world=${2:-}
passed=0 failed=0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ok() { echo "ok   $*"; passed=$((passed + 1)); }
bad() { echo "FAIL $*"; failed=$((failed + 1)); }
check() { local what=$1; shift; if "$@" >"$work/out" 2>&1; then ok "$what"; else bad "$what"; sed 's/^/     /' "$work/out"; fi; }
finish() { echo; echo "aarch64: $passed passed, $failed failed"; [[ $failed == 0 ]]; exit; }

version=$(cargo pkgid --locked); version=${version##*[#@]}
name=agent-guard-$version-aarch64-linux x86_name=agent-guard-$version-x86_64-linux
archive=dist/$name.tar.gz deb=dist/agent-guard_${version}-1_arm64.deb rpm=dist/agent-guard-$version-1.aarch64.rpm
for f in "$archive" "$deb" "$rpm"; do
  [[ -f $f ]] || { bad "release.sh made no $f"; finish; }
done

# The artefacts: the same contents as x86_64's, for the other architecture.
check "the archive $archive holds what the x86_64 one holds" \
  diff <(tar tzf "dist/$x86_name.tar.gz" | sed "s|^$x86_name/|$name/|" | sort) <(tar tzf "$archive" | sort)
check "the archive's owners, modes and times are the x86_64 one's (release.sh's fixed ones)" \
  diff <(tar tvzf "dist/$x86_name.tar.gz" | grep -v ' [^ ]*/agent-guard$' | awk '{print $1, $2, $4, $5, $6}' | sed "s| $x86_name/| $name/|") \
       <(tar tvzf "$archive" | grep -v ' [^ ]*/agent-guard$' | awk '{print $1, $2, $4, $5, $6}')
tar xzf "$archive" -C "$work"
binary=$work/$name/agent-guard
check "the binary is a static aarch64 executable (file)" sh -c \
  "file -b '$binary' | tee /dev/stderr | grep 'ARM aarch64' | grep -q 'statically linked'"
check "the binary names no interpreter and no shared libraries" sh -c \
  "! readelf -lW '$binary' | grep -q INTERP && ! readelf -dW '$binary' 2>/dev/null | grep -q NEEDED"
size=$(stat -c %s "$binary")
check "the binary is at most 8 MiB ($size bytes)" test "$size" -le $((8 * 1024 * 1024))
check "the .deb is arm64 and holds the files of the amd64 one" bash -c "
  dpkg-deb -f '$deb' Architecture | grep -qx arm64 &&
  diff <(dpkg-deb -c dist/agent-guard_${version}-1_amd64.deb | awk '{print \$6}') <(dpkg-deb -c '$deb' | awk '{print \$6}')"
check "the .deb's binary is the archive's" sh -c \
  "mkdir '$work/deb' && dpkg-deb -x '$deb' '$work/deb' && cmp '$binary' '$work/deb/usr/bin/agent-guard'"
check "the .deb has no library dependencies (the binary is static)" sh -c "! dpkg-deb -f '$deb' Depends | grep -q libc6"
check "the .rpm is aarch64 and holds the files of the x86_64 one" bash -c "
  rpm -qp --qf '%{ARCH}\n' '$rpm' | grep -qx aarch64 &&
  diff <(rpm -qpl dist/agent-guard-$version-1.x86_64.rpm) <(rpm -qpl '$rpm')"
check "the .rpm requires nothing but /bin/sh and rpm's own features" sh -c \
  "rpm -qpR '$rpm' | grep -v '^rpmlib(' | grep -vx /bin/sh | grep -q . && exit 1 || exit 0"

# toolchain-aarch64.sh (root only, as it is): run again it changes nothing, and it refuses with one
# line a Debian rustc older than rust-version (a copy of it beside a Cargo.toml asking for 99.0).
if [[ $(id -u) == 0 ]]; then
  check "toolchain-aarch64.sh run again changes nothing" sh -c \
    "packaging/toolchain-aarch64.sh | tee /dev/stderr | grep -q '^toolchain-aarch64.sh: already installed'"
  mkdir -p "$work/future/packaging"
  cp packaging/toolchain-aarch64.sh "$work/future/packaging/"
  sed 's/^rust-version *=.*/rust-version = "99.0"/' Cargo.toml > "$work/future/Cargo.toml"
  "$work/future/packaging/toolchain-aarch64.sh" >"$work/out" 2>&1
  code=$?
  if [[ $code == 1 && $(wc -l <"$work/out") == 1 ]] && grep -q "older than Cargo.toml's rust-version 99.0" "$work/out"; then
    ok "toolchain-aarch64.sh refuses, in one line, a Debian rustc older than rust-version"
  else
    bad "toolchain-aarch64.sh and rust-version 99.0: exit $code"; sed 's/^/     /' "$work/out"
  fi
fi

# install.sh picks by `uname -m`: on x86_64 it refuses the aarch64 binary, which qemu would run.
if [[ $(uname -m) == x86_64 ]]; then
  DESTDIR="$work/refused" packaging/install.sh "$binary" >"$work/out" 2>&1
  code=$?
  if [[ $code == 1 ]] && grep -q "built for aarch64, this machine is x86_64" "$work/out"; then
    ok "install.sh refuses the aarch64 binary on x86_64"
  else
    bad "install.sh and the aarch64 binary on x86_64: exit $code"; sed 's/^/     /' "$work/out"
  fi
fi

# Under qemu. The guard's control socket in this run's own directory, so that it meets no other.
qemu=/usr/bin/qemu-aarch64-static
[[ -x $qemu ]] || { bad "no $qemu: packaging/toolchain-aarch64.sh installs qemu-user-static"; finish; }
guard() { "$qemu" "$binary" --imds off --health-listen off --socket "$work/g.sock" "$@"; }
check "under qemu: --version says $version" sh -c "'$qemu' '$binary' --version | grep -qx 'agent-guard $version'"
guard -- sh -c 'exit 7' >"$work/out" 2>&1
code=$?
if [[ $code == 7 ]]; then ok "under qemu: the agent's exit status is passed on (7)"; else bad "under qemu: exit $code, not 7"; sed 's/^/     /' "$work/out"; fi

# A signal forwarded: the agent says it is ready (its trap is set), the guard gets SIGUSR1, the
# agent exits 42 from its trap, and the guard passes that on.
# qemu itself in the background, not through the function: $! must be the guard's pid, not that
# of a subshell running the function (which a SIGUSR1 would kill with 138).
"$qemu" "$binary" --imds off --health-listen off --socket "$work/g.sock" \
  -- sh -c "trap 'exit 42' USR1; touch '$work/ready'; while :; do sleep 0.1; done" >"$work/out" 2>&1 &
pid=$!
for _ in $(seq 600); do [[ -e $work/ready ]] && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -USR1 "$pid" 2>/dev/null
# A guard that never exits is stopped after a generous minute, and fails the check.
( sleep 60; kill -KILL "$pid" 2>/dev/null ) & watchdog=$!
wait "$pid"
code=$?
kill "$watchdog" 2>/dev/null; wait "$watchdog" 2>/dev/null
if [[ $code == 42 ]]; then ok "under qemu: SIGUSR1 is forwarded to the agent (its trap exits 42)"; else bad "under qemu: exit $code, not 42"; sed 's/^/     /' "$work/out"; fi

# The drills. Each starts a second copy of the guard, which the kernel execs only through
# binfmt_misc: qemu-aarch64.sh gives it one of its own. The verdict (PASS or FAIL, the reasons,
# the summary, the exit status) must be the x86_64 binary's, event by event.
verdict() {  # the drill's JSON report (its last line of stdout) -> its verdict, one line
  tail -n 1 | python3 -c 'import json, sys; r = json.load(sys.stdin); print(json.dumps({k: r[k] for k in ("event", "verdict", "reasons", "summary", "exit_status")}, sort_keys=True))'
}
agent=(sh -c 'trap "exit 0" TERM; while :; do sleep 0.2; done')
for event in scale-in spot; do
  "$x86" drill "$event" --json -- "${agent[@]}" >"$work/x86.json" 2>"$work/x86.err"
  packaging/qemu-aarch64.sh "$binary" drill "$event" --json -- "${agent[@]}" >"$work/a64.json" 2>"$work/a64.err"
  code=$?
  want=$(verdict <"$work/x86.json" 2>&1) got=$(verdict <"$work/a64.json" 2>&1)
  if [[ $code == 0 && $got == *'"verdict": "PASS"'* ]]; then
    ok "under qemu: drill $event PASSes"
  else
    bad "under qemu: drill $event (exit $code): $got"; sed 's/^/     /' "$work/a64.json" "$work/a64.err" | tail -40
  fi
  if [[ $got == "$want" ]]; then
    ok "under qemu: drill $event's verdict is x86_64's"
  else
    bad "under qemu: drill $event's verdict differs from x86_64's"; printf '     x86_64:  %s\n     aarch64: %s\n' "$want" "$got"
  fi
done

# As PID 1 of an empty root (packaging/test-root.sh), the aarch64 guard run by qemu there.
if [[ $(id -u) == 0 && -n $sim_world ]]; then
  packaging/qemu-aarch64.sh packaging/test-root.sh "$binary" "$sim_world" >"$work/root.log" 2>&1
  sed -n -e 's/^ok   /ok   under qemu: /p' -e 's/^FAIL /FAIL under qemu: /p' -e '/^     /p' "$work/root.log"
  passed=$((passed + $(grep -c '^ok ' "$work/root.log")))
  failed=$((failed + $(grep -c '^FAIL ' "$work/root.log")))
  grep -q '^root: [0-9]* passed' "$work/root.log" || bad "test-root.sh under qemu ran: $(tail -3 "$work/root.log")"
else
  # packaging/test.sh makes this a skip (a failure with CI=true).
  echo "SKIP the empty root under qemu (test-root.sh): needs root and SIM_WORLD"
fi
finish
