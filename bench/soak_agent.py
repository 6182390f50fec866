#!/usr/bin/env python3
"""An agent for bench/soak, misbehaving as MODE says. Writes DIR/ready once it is up.

usage: soak_agent.py DIR MODE
  drain   subscribes; on the drain event says drained; exits 0 on SIGTERM
  ignore  ignores SIGTERM, and so does a child it forks (both end SIGKILLed)
  leave   moves itself into another process group; exits 0 on SIGTERM
  flood   first floods both sockets (connections past the limit, a line past 64 KiB, datagrams
          carrying 17 fds each, hundreds of notifications, the largest extension), then as drain
"""
import json
import os
import signal
import socket
import sys
import threading
import time

directory, mode = sys.argv[1], sys.argv[2]


def subscribe():
    guard = socket.socket(socket.AF_UNIX)
    guard.connect(os.environ["AGENT_GUARD_SOCKET"])
    guard.sendall(b'{"op":"subscribe"}\n')

    def listen():
        for line in guard.makefile():
            if json.loads(line).get("event") == "drain":
                guard.sendall(b'{"op":"drained"}\n')

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
else:
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
if mode == "leave":
    leave_group()
if mode == "flood":
    flood()
if mode in ("drain", "flood"):
    kept = subscribe()
open(os.path.join(directory, "ready"), "w").close()
while True:
    time.sleep(1)
