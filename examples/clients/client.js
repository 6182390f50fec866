const net = require("net"), readline = require("readline");

const guard = net.createConnection(process.env.AGENT_GUARD_SOCKET);
guard.write(JSON.stringify({ op: "subscribe" }) + "\n");
readline.createInterface({ input: guard }).on("line", (line) => {
  const msg = JSON.parse(line);
  if (msg.event === "drain") {
    console.log(`draining (${msg.reason}), ${msg.deadline_in_ms} ms left`);
    // ... stop taking new work, finish what is in flight ...
    guard.write(JSON.stringify({ op: "drained" }) + "\n");
  }
});
