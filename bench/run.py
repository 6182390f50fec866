#!/usr/bin/env python3
"""Benchmarks agent-guard against its peers in one run, and prints the results as Markdown.

usage: bench/run.py [--quick]     (run from the repository root after `cargo build --release`)
needs: hyperfine, tini, dumb-init (Debian packages) and python3.

Reported as ratios against peers measured in the same run, never as absolute promises:
- start-up: `true` bare, under tini, dumb-init and agent-guard (hyperfine, median);
- resident memory of each wrapper while it supervises an idle `sleep`;
- latency from `kill -USR1 <wrapper>` to the agent's signal handler.
"""
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUARD = os.path.join(ROOT, "target", "release", "agent-guard")
QUICK = "--quick" in sys.argv
# The guard's own options for these runs: no IMDS probe and no health port, so that each run
# measures supervision alone (those features are measured by their own benchmarks).
GUARD_OPTS = os.environ.get("BENCH_GUARD_OPTS", "--imds off").split()

WRAPPERS = {
    "bare": [],
    "tini": ["tini", "-s", "--"],
    "dumb-init": ["dumb-init"],
    "agent-guard": [GUARD, *GUARD_OPTS, "--"],
}


def need(tool):
    if shutil.which(tool) is None:
        sys.exit(f"bench: `{tool}` is missing: apt-get install -y hyperfine tini dumb-init")


def startup():
    runs = "100" if QUICK else "500"
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmds = [" ".join(w + ["true"]) for w in WRAPPERS.values()]
        subprocess.run(
            ["hyperfine", "-N", "--warmup", "50", "--runs", runs, "--export-json", out.name, *cmds],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        results = json.load(open(out.name))["results"]
    return {name: r["median"] * 1000 for name, r in zip(WRAPPERS, results)}


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def idle_rss():
    out = {}
    for name, wrapper in WRAPPERS.items():
        if name == "bare":
            continue
        proc = subprocess.Popen(wrapper + ["sleep", "60"], stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        out[name] = rss_kib(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        subprocess.run(["pkill", "-f", "^sleep 60$"], check=False)
    return out


def signal_latency():
    n = 100 if QUICK else 300
    agent = [sys.executable, os.path.join(ROOT, "bench", "latency_agent.py")]
    out = {}
    for name, wrapper in WRAPPERS.items():
        proc = subprocess.Popen(wrapper + agent, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        agent_pid = int(proc.stdout.readline().split()[1])
        target = agent_pid if name == "bare" else proc.pid
        samples = []
        for _ in range(n):
            t0 = time.monotonic_ns()
            os.kill(target, signal.SIGUSR1)
            t1 = int(proc.stdout.readline())
            samples.append((t1 - t0) / 1000)
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        os.kill(agent_pid, signal.SIGKILL) if name != "bare" else None
        proc.wait()
        samples.sort()
        out[name] = (statistics.median(samples), samples[int(len(samples) * 0.99) - 1])
    return out


def machine():
    cpu = "unknown cpu"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {cpu}, Linux {os.uname().release}"


def main():
    for tool in ("hyperfine", "tini", "dumb-init"):
        need(tool)
    if not os.access(GUARD, os.X_OK):
        sys.exit("bench: build first: cargo build --release --locked")
    start = startup()
    rss = idle_rss()
    lat = signal_latency()
    bare = start["bare"]
    print(f"Machine: {machine()}; {time.strftime('%Y-%m-%d')}.\n")
    print("| wrapper | start-up median (ms) | overhead over bare exec (ms) | idle RSS (KiB) | RSS vs tini | USR1→handler p50 (µs) | p99 (µs) |")
    print("|---|---|---|---|---|---|---|")
    for name in WRAPPERS:
        r = rss.get(name)
        rss_cell = f"{r}" if r is not None else "–"
        ratio = f"{r / rss['tini']:.1f}×" if r is not None else "–"
        p50, p99 = lat[name]
        print(
            f"| {name} | {start[name]:.2f} | {start[name] - bare:+.2f} | {rss_cell} | {ratio} | {p50:.0f} | {p99:.0f} |"
        )
    g = "agent-guard"
    print()
    print(f"agent-guard start-up overhead: {start[g] - bare:.2f} ms (floor 5 ms); "
          f"vs tini {start[g] / start['tini']:.2f}×, vs dumb-init {start[g] / start['dumb-init']:.2f}×.")
    print(f"agent-guard idle RSS: {rss[g] / 1024:.1f} MiB (floor 8 MiB).")


if __name__ == "__main__":
    main()
