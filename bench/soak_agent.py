#!/usr/bin/env python3
"""An agent for bench/soak, misbehaving as MODE says. Writes DIR/ready once it is up.

usage: soak_agent.py DIR MODE
  drain   subscribes; on the drain event says drained; exits 0 on SIGTERM
  ignore  ignores SIGTERM, and so does a child it forks (both end SIGKILLed)
  leave   moves itself into another process group; exits 0 on SIGTERM
  flood   first floods both sockets (connections past the limit, a line past 64 KiB, datagrams
          carrying 17 fds each, hundreds of notifications, the largest extension), then as drain
  slow=S  subscribes; on the drain event writes DIR/drain, says drained S seconds later, and
          exits 0 on SIGTERM; with its guard gone (SIGKILLed), it exits by itself then: an
          orphan that finished its drain. Either way its last act is DIR/gone, CLOCK_MONOTONIC
          seconds: every process of it is gone right after that time
"""
import json
import os
import signal
import socket
import sys
import threading
import time

directory, mode = sys.argv[1], sys.argv[2]


def mark(name):
    """DIR/NAME, holding CLOCK_MONOTONIC now, written whole (renamed into place)."""
    path = os.path.join(directory, name)
    with open(path + ".tmp", "w") as f:
        f.write(repr(time.monotonic()))
    os.rename(path + ".tmp", path)


def gone():
    mark("gone")
    os._exit(0)


def slow_drain(guard, seconds):
    mark("drain")
    time.sleep(seconds)
    try:
        guard.sendall(b'{"op":"drained"}\n')
    except OSError:
        gone()  # the guard is gone: nobody will stop this orphan
    time.sleep(10)  # SIGTERM comes first from a live guard
    gone()


def subscribe(slow=None):
    guard = socket.socket(socket.AF_UNIX)
    guard.connect(os.environ["AGENT_GUARD_SOCKET"])
    guard.sendall(b'{"op":"subscribe"}\n')

    def listen():
        for line in guard.makefile():
            if json.loads(line).get("event") != "drain":
                continue
            if slow is None:
                guard.sendall(b'{"op":"drained"}\n')
            else:
                threading.Thread(target=slow_drain, args=(guard, slow), daemon=True).start()

    threading.Thread(target=listen, daemon=True).start()
    return guard


def flood():
    path = os.environ["AGENT_GUARD_SOCKET"]
    held = []
    for _ in range(100):  # the guard serves 64 at once and refuses the rest
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        held.append(s)
    held[0].sendall(b"x" * (100 * 1024) + b"\n")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.connect(os.environ["NOTIFY_SOCKET"])
    null = os.open("/dev/null", os.O_RDONLY)
    for _ in range(50):
        socket.send_fds(notify, [b"FDSTORE=1\nFDNAME=soak"], [null] * 17)
    for n in range(300):
        notify.send(f"WATCHDOG=1\nX_IN_FLIGHT={n}\nSTATUS=flooding {n}".encode())
    notify.send(b"EXTEND_TIMEOUT_USEC=18446744073709551615")
    os.close(null)
    for s in held:
        s.close()


def leave_group():
    helper = os.fork()
    if helper == 0:
        time.sleep(600)
        os._exit(0)
    os.setpgid(helper, helper)
    os.setpgid(0, helper)
    os.kill(helper, signal.SIGKILL)
    os.waitpid(helper, 0)


if mode == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.fork() == 0:
        while True:
            time.sleep(1)
elif mode.startswith("slow="):
    signal.signal(signal.SIGTERM, lambda *_: gone())
else:
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
if mode == "leave":
    leave_group()
if mode == "flood":
    flood()
if mode in ("drain", "flood"):
    kept = subscribe()
if mode.startswith("slow="):
    kept = subscribe(float(mode.split("=", 1)[1]))
open(os.path.join(directory, "ready"), "w").close()
while True:
    time.sleep(1)
