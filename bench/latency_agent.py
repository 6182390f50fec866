#!/usr/bin/env python3
"""Benchmark agent: prints its pid, then for each SIGUSR1 prints CLOCK_MONOTONIC in ns."""
import os
import signal
import sys


def on_usr1(_signum, _frame):
    sys.stdout.write(f"{time_ns()}\n")
    sys.stdout.flush()


time_ns = __import__("time").monotonic_ns
signal.signal(signal.SIGUSR1, on_usr1)
sys.stdout.write(f"pid {os.getpid()}\n")
sys.stdout.flush()
while True:
    signal.pause()
