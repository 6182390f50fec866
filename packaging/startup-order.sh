#!/usr/bin/env bash
# Writes packaging/startup-order.txt: the functions the guard runs, the ones of its start and idle
# first, for the linker to lay out together (build-static.sh passes it to lld as
# --symbol-ordering-file); and packaging/startup-rodata.ld: the constants its start and idle read,
# gathered into one output section ahead of .rodata (passed to lld as a linker script).
#
# usage: packaging/startup-order.sh        (needs valgrind and python3; takes a few minutes; the
#                                           constants' list needs root, see 3. below)
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
#   3. the constants: read-only data has no symbols to order by (string literals, vtables and
#      jump tables are anonymous sections such as `.rodata..Lanon.<hash>.<n>`), and callgrind does
#      not see data. So the guard's start and idle run natively from a copy of the binary that is
#      not in the page cache, with the disk's read-ahead off for that run: the pages of the file
#      the kernel then read are exactly the pages touched. The input sections on the touched pages
#      of .rodata (from the link map) make packaging/startup-rodata.ld, an `INSERT BEFORE .rodata`
#      script: about 380 KB instead of 1.3 MB of constants spread over 20 64-KiB windows. Writing
#      the read-ahead needs root; without it the script says so and leaves the .ld as it is.
#   Functions that run natively but not under valgrind are added too: the variants of glibc's
#   string functions (an IFUNC picks one per CPU: valgrind's emulated CPU gets AVX2 where the
#   machine may pick EVEX, and an EC2 instance yet another), with their resolvers (run before
#   main, named as IFUNC symbols that a list of functions must include); and the child's side of
#   the agent's spawn (clone3 into the cgroup, which valgrind refuses; the child shares the
#   guard's memory until it execs, so what it touches stays resident in the guard).
# The names are mangled names with their hashes. The hashes depend on the crate, its version,
# the dependencies, the compiler and the target, not on the function bodies or the checkout's
# path: editing the code leaves the file valid (new functions just go unordered); changing a
# dependency or the toolchain makes it stale, which costs memory, never correctness (lld places
# what it cannot find as usual). The constants are named by a hash of their crate's code (the
# same in any checkout, measured): an edit of the guard's own code renames all of its own, which
# are then laid out as if unlisted (about 0.3 MiB more idle RSS) until this runs again; the
# dependencies' stay. So run it last, after the code changes of a release, on the very files
# that are committed (the profiled build must be that code, byte for byte), and commit both
# files; bench/run.py's idle RSS shows whether it is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

for tool in valgrind python3; do
  command -v "$tool" >/dev/null || { echo "startup-order.sh: needs $tool (apt-get install $tool)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/agent-guard-order.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# The tracked files as they are now, committed or not, unchanged: the constants' names depend on
# every byte of the crate. (Valgrind keeps the highest realtime signal for itself and shows it
# as ignored; the guard leaves a signal ignored at its start alone, so it runs under valgrind as
# it is: tests/e2e/forwarding.rs.)
git ls-files -z | tar --null -T - -c | tar -x -C "$work"

host=$(rustc -vV | sed -n 's/^host: //p')
[[ $host == x86_64-unknown-linux-gnu ]] || {
  echo "startup-order.sh: the list is for x86_64-unknown-linux-gnu, and this host is $host" >&2
  exit 1
}
target_dir=${CARGO_TARGET_DIR:-$root/target}/startup-order
# The link map names the input section at each address (the constants have no symbols). At a
# fixed path: RUSTFLAGS are part of every crate's fingerprint, so a path that changed per run would
# rebuild everything each time.
map=$target_dir/agent-guard.map
# The flags of the shipped build (build-static.sh), so that the profiled code is the same code.
static_flags=$(packaging/static-flags.sh)
(cd "$work" && CARGO_TARGET_DIR=$target_dir CARGO_PROFILE_RELEASE_STRIP=false \
  RUSTFLAGS="$static_flags -C link-arg=-Wl,-Map=$map -C link-arg=-Wl,--no-demangle" \
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

# The list from the profiles.
python3 - "$binary" "$work" "$root/packaging/startup-order.txt" <<'EOF'
import collections, glob, re, subprocess, sys
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

# Functions, with glibc's IFUNC symbols ('i': a resolver's address under the function's name).
text, ifunc, addr_of = set(), set(), {}
names_at = collections.defaultdict(set)
nm = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True, check=True)
for line in nm.stdout.splitlines():
    parts = line.split()
    if len(parts) == 3 and parts[1] in "tTwWi":
        addr, name = int(parts[0], 16), parts[2]
        text.add(name)
        addr_of[name] = addr
        names_at[addr].add(name)
        if parts[1] == "i":
            ifunc.add(name)

def aliases(names):
    return set().union(set(), *(names_at.get(addr_of.get(n), {n}) for n in names))

def widen(names):
    names = aliases(names)
    # Every variant of a function glibc picks per CPU (`__memchr_evex`, `__memchr_avx2` …).
    for name in names & ifunc:
        prefix = "__" + name.lstrip("_") + "_"
        names |= {t for t in text if t.startswith(prefix)}
    return aliases(names) & text

idle = widen(executed(f"{work}/idle.cg"))
events = set()
drilled = list(guard_profiles())
if not drilled:
    sys.exit("startup-order.sh: no profile of the drilled guard")
for path in drilled:
    events |= executed(path)
events = widen(events) - idle
with open(out, "w") as f:
    f.write("".join(name + "\n" for name in sorted(idle) + sorted(events)))
with open(f"{work}/idle.count", "w") as f:
    f.write(str(len(idle)))
print(f"startup-order.sh: {len(idle)} functions of start and idle, then {len(events)} of a scale-in (callgrind)")
EOF

# 3. Natively: what valgrind cannot see, and the constants. The profiled build is linked again
# with the list (only the link runs), and its start and idle run natively from a fresh copy,
# dropped from the page cache, with the disk's read-ahead off: each page the kernel reads is one
# touched (fault-around maps only pages already cached, so it reads nothing). The functions on
# touched pages outside the ordered block join the list; the constants on touched pages of
# .rodata make the linker script.
cat >"$work/pages.py" <<'EOF'
import ctypes, os, sys
mode, path = sys.argv[1:]
fd = os.open(path, os.O_RDONLY)
if mode == "drop":
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
size = os.fstat(fd).st_size
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED: maps, reads nothing
pages = (size + 4095) // 4096
vec = (ctypes.c_ubyte * pages)()
if libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) != 0:
    sys.exit(f"mincore: errno {ctypes.get_errno()}")
cached = [i for i in range(pages) if vec[i] & 1]
print("\n".join(map(str, cached)) if mode == "list" else len(cached))
EOF
dev=$(python3 -c 'import os, sys; d = os.stat(sys.argv[1]).st_dev; print(f"{os.major(d)}:{os.minor(d)}")' "$work")
ra=
for f in "/sys/dev/block/$dev/bdi/read_ahead_kb" "/sys/dev/block/$dev/../bdi/read_ahead_kb"; do
  [[ -w $f ]] && { ra=$f; break; }
done
if [[ $(id -u) != 0 || -z $ra ]]; then
  echo "startup-order.sh: not root, or no read-ahead setting for the disk under $work (device $dev): no native pass; the list is callgrind's alone and packaging/startup-rodata.ld is left as it is" >&2
  exit 0
fi
(cd "$work" && CARGO_TARGET_DIR=$target_dir CARGO_PROFILE_RELEASE_STRIP=false \
  RUSTFLAGS="$static_flags -C link-arg=-Wl,-Map=$map -C link-arg=-Wl,--no-demangle" \
  cargo rustc --release --locked --target "$host" --bin agent-guard -- \
  -C link-arg=-Wl,--symbol-ordering-file="$root/packaging/startup-order.txt" \
  -C link-arg=-Wl,--no-warn-symbol-ordering >&2) # RUSTFLAGS' -Map comes last: $map is this link's
copy=$work/agent-guard.native
cp "$binary" "$copy"
ra_was=$(cat "$ra")
trap 'echo "$ra_was" >"$ra"; kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
sync "$copy"
left=$(python3 "$work/pages.py" drop "$copy")
(( left < 8 )) || { echo "startup-order.sh: $left pages of the copy stay cached; cannot trace" >&2; exit 1; }
echo 0 >"$ra"
port=$(free_port)
"$copy" --imds off --health-listen "127.0.0.1:$port" --socket "$work/native.sock" -- sleep 600 2>"$work/native.log" &
guard=$!
for _ in $(seq 300); do get "http://127.0.0.1:$port/livez" 2>/dev/null && break; sleep 0.1; done
for path in readyz livez health readyz livez; do get "http://127.0.0.1:$port/$path"; done
sleep 3 # a few idle timer ticks
python3 "$work/pages.py" list "$copy" >"$work/native.pages"
echo "$ra_was" >"$ra"
kill -TERM "$guard"
wait "$guard" || true

python3 - "$copy" "$work" "$map" "$root/packaging" <<'EOF'
import re, subprocess, sys
binary, work, mapfile, out_dir = sys.argv[1:]
segments = []
for line in subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True, check=True).stdout.splitlines():
    p = line.split()
    if p and p[0] == "LOAD":
        segments.append((int(p[1], 16), int(p[2], 16), int(p[4], 16)))
touched = set()
for page in map(int, open(f"{work}/native.pages").read().split()):
    off = page * 4096
    for seg_off, seg_addr, seg_size in segments:
        if seg_off <= off < seg_off + seg_size:
            touched.add((seg_addr + off - seg_off) & ~4095)

def on_touched(addr, length):
    return any(page in touched for page in range(addr & ~4095, addr + max(length, 1), 4096))

# The link map: output sections, input sections ("file:(section)") and symbols, one per line,
# told apart by the column their name starts in (the header's "Out", "In" and "Symbol").
functions, constants, output = [], [], None
with open(mapfile) as lines:
    header = next(lines)
    out_col, sym_col = header.index("Out"), header.index("Symbol")
    for line in lines:
        line = line.rstrip("\n")
        p = line.split()
        if len(p) != 5:
            continue
        addr, length, name = int(p[0], 16), int(p[2], 16), p[4]
        col = len(line) - len(name)
        if col == out_col:
            output = name
        elif col == sym_col and output == ".text" and on_touched(addr, length):
            functions.append(name)
        elif col < sym_col and output == ".rodata" and on_touched(addr, length):
            constants.append((name, length))

# Functions natively run that the profiles missed (the child's side of the spawn, which shares
# the guard's memory until it execs; what glibc picks on this CPU): the idle part gains them.
order = open(f"{out_dir}/startup-order.txt").read().split()
idle_count = int(open(f"{work}/idle.count").read())
listed = set(order)
extra = [f for f in dict.fromkeys(functions) if f not in listed]
order = order[:idle_count] + sorted(extra) + order[idle_count:]
with open(f"{out_dir}/startup-order.txt", "w") as f:
    f.write("".join(name + "\n" for name in order))
print(f"startup-order.sh: {len(extra)} functions on touched pages outside the ordered block added to start and idle")

patterns, size = [], 0
for name, length in constants:
    obj, section = name.split(":(", 1)
    section = section[:-1]
    member = re.search(r"([^/]+\.a)\(([^)]+)\)$", obj)
    if member:
        pattern = f"*{member.group(1)}:{member.group(2)}({section})"
    elif obj.startswith("<") or section == ".rodata" or section.startswith((".rodata.str", ".rodata.cst")):
        continue  # merged constants, or one object's whole .rodata: nothing to single out
    else:
        pattern = f"*({section})"
    if pattern not in patterns:
        patterns.append(pattern)
        size += length
with open(f"{out_dir}/startup-rodata.ld", "w") as f:
    f.write("/* Made by packaging/startup-order.sh: the constants an idle guard's start reads, laid out\n"
            "   together ahead of .rodata. A stale line matches nothing, or another constant. */\n"
            "SECTIONS {\n  .rodata.startup : {\n")
    f.write("".join(f"    {p}\n" for p in patterns))
    f.write("  }\n}\nINSERT BEFORE .rodata;\n")
print(f"startup-order.sh: {len(patterns)} sections of constants ({size} bytes) on touched pages, in {out_dir}/startup-rodata.ld")
EOF
