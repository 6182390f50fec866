#!/usr/bin/env bash
# Writes packaging/startup-order.txt: the functions the guard runs, the ones of its start and idle
# first, for the linker to lay out together (build-static.sh passes it to lld as
# --symbol-ordering-file).
#
# usage: packaging/startup-order.sh        (needs valgrind and python3; takes a few minutes)
#
# Why: a supervisor spends its life idle, and its resident memory is then mostly pages of its own
# binary that start-up touched. The kernel maps a file's pages 64 KiB at a time around each
# fault (fault-around), and the code that runs at start (argument parsing, the runtime, the
# health server, the spawn) is otherwise spread through the whole 6 MB of .text by crate: about
# 700 KB of it, executed, touched 62 of the 93 64-KiB windows. Laid out together it touches a
# dozen, which is most of the idle RSS and a good part of the start-up's page faults.
#
# How: the release binary is built unstripped, with the same flags as build-static.sh, from a
# copy of the tracked files, and run under callgrind, which lists every function executed:
#   1. start and idle: the guard around `sleep`, its health endpoint asked a few times, then
#      stopped by SIGTERM. These come first in the file.
#   2. a drilled scale-in (`agent-guard drill scale-in`): the IMDS poll, the drain, the stop and
#      the lifecycle hook's completion through the AWS SDK, in the drilled guard only (the
#      drill's own process is left out). These come after.
# The names are mangled names with their hashes. The hashes depend on the crate, its version,
# the dependencies, the compiler and the target, not on the function bodies or the checkout's
# path: editing the code leaves the file valid (new functions just go unordered); changing a
# dependency or the toolchain makes it stale, which costs memory, never correctness (lld places
# what it cannot find as usual). Run this again then, and commit the result; bench/run.py's idle
# RSS shows whether it is needed.
#
# Valgrind reserves the highest realtime signal for itself, so the guard, which installs a
# handler for every signal, cannot start under it; the profiled copy leaves that one signal out.
# The symbol names are unchanged by it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

for tool in valgrind python3; do
  command -v "$tool" >/dev/null || { echo "startup-order.sh: needs $tool (apt-get install $tool)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/agent-guard-order.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# The tracked files as they are now, committed or not.
git ls-files -z | tar --null -T - -c | tar -x -C "$work"
sig=$work/src/process/sig.rs
before=$(sha256sum "$sig")
sed -i 's/libc::SIGRTMIN()\.\.=libc::SIGRTMAX()/libc::SIGRTMIN()..libc::SIGRTMAX()/' "$sig"
[[ $(sha256sum "$sig") != "$before" ]] || {
  echo "startup-order.sh: src/process/sig.rs no longer has the realtime range this script edits; update the sed" >&2
  exit 1
}

host=$(rustc -vV | sed -n 's/^host: //p')
[[ $host == x86_64-unknown-linux-gnu ]] || {
  echo "startup-order.sh: the list is for x86_64-unknown-linux-gnu, and this host is $host" >&2
  exit 1
}
target_dir=${CARGO_TARGET_DIR:-$root/target}/startup-order
(cd "$work" && CARGO_TARGET_DIR=$target_dir CARGO_PROFILE_RELEASE_STRIP=false \
  RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
  cargo build --release --locked --target "$host" --bin agent-guard >&2)
binary=$target_dir/$host/release/agent-guard

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
get() { python3 - "$1" <<'EOF'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=5).read()
except Exception as e:
    if not hasattr(e, "code"):
        raise
EOF
}
grind=(valgrind --tool=callgrind --demangle=no --dump-instr=no)

# 1. Start and idle.
port=$(free_port)
"${grind[@]}" --callgrind-out-file="$work/idle.cg" "$binary" --imds off --health-listen "127.0.0.1:$port" \
  --socket "$work/idle.sock" -- sleep 600 2>"$work/idle.log" &
guard=$!
for _ in $(seq 300); do get "http://127.0.0.1:$port/livez" 2>/dev/null && break; sleep 0.2; done
for path in readyz livez health readyz livez; do get "http://127.0.0.1:$port/$path"; done
sleep 6 # a few idle timer ticks
kill -TERM "$guard" # valgrind itself: it passes the signal to the guard
wait "$guard" || true
[[ -s $work/idle.cg ]] || { cat "$work/idle.log" >&2; echo "startup-order.sh: the idle run left no profile" >&2; exit 1; }

# 2. A drilled scale-in; only the drilled guard is kept.
agent='trap "exit 0" TERM; while :; do sleep 0.2; done'
"${grind[@]}" --trace-children=yes --trace-children-skip='/bin/*,/usr/bin/*,*/sh,*/sleep' --callgrind-out-file="$work/drill.%p.cg" "$binary" drill scale-in \
  --after 3s -- sh -c "$agent" >"$work/drill.log" 2>&1 || {
  cat "$work/drill.log" >&2
  echo "startup-order.sh: the drill did not pass under valgrind" >&2
  exit 1
}

python3 - "$binary" "$work" "$root/packaging/startup-order.txt" <<'EOF'
import glob, re, subprocess, sys
binary, work, out = sys.argv[1:]

def executed(path):
    names = set()
    for line in open(path, errors="replace"):
        m = re.match(r"^c?fn=\(\d+\) (\S+)$", line.rstrip("\n"))
        if m:
            names.add(m.group(1))
    return names

def guard_profiles():
    for path in glob.glob(f"{work}/drill.*.cg"):
        with open(path, errors="replace") as f:
            cmd = next((l for l in f if l.startswith("cmd:")), "")
        if " drill " not in cmd and "agent-guard" in cmd:
            yield path

text = set()
nm = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True, check=True)
for line in nm.stdout.splitlines():
    parts = line.split()
    if len(parts) == 3 and parts[1] in "tTwW":
        text.add(parts[2])

idle = executed(f"{work}/idle.cg") & text
events = set()
drilled = list(guard_profiles())
if not drilled:
    sys.exit("startup-order.sh: no profile of the drilled guard")
for path in drilled:
    events |= executed(path) & text
events -= idle
with open(out, "w") as f:
    f.write("".join(name + "\n" for name in sorted(idle) + sorted(events)))
print(f"startup-order.sh: {len(idle)} functions of start and idle, then {len(events)} of a scale-in, in {out}")
EOF
