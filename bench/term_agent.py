#!/usr/bin/env python3
"""Benchmark agent: writes CLOCK_MONOTONIC (ns) to FILE when SIGTERM arrives, then exits 0.

usage: term_agent.py FILE    (FILE.ready is written once the handler is installed)
"""
import signal
import sys
import time

out = sys.argv[1]


def on_term(_signum, _frame):
    now = time.monotonic_ns()
    with open(out, "w") as f:
        f.write(str(now))
    sys.exit(0)


signal.signal(signal.SIGTERM, on_term)
open(out + ".ready", "w").close()
while True:
    signal.pause()
