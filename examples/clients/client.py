import json, os, socket

guard = socket.socket(socket.AF_UNIX)
guard.connect(os.environ["AGENT_GUARD_SOCKET"])
guard.sendall(b'{"op":"subscribe"}\n')
for line in guard.makefile():
    msg = json.loads(line)
    if msg.get("event") == "drain":
        print(f"draining ({msg['reason']}), {msg['deadline_in_ms']} ms left", flush=True)
        # ... stop taking new work, finish what is in flight ...
        guard.sendall(b'{"op":"drained"}\n')
