//! On a terminal the agent's process group takes the foreground, so interactive agents work.

use std::process::Command;

use crate::support::{bin, fixture};

#[test]
fn the_agent_gets_the_terminal_foreground() {
    // The agent prints whether its group is the terminal's foreground group.
    let check = "if [ \"$(ps -o tpgid= -p $$ | tr -d ' ')\" = \"$(ps -o pgid= -p $$ | tr -d ' ')\" ]; \
                 then echo AGENT-IN-FOREGROUND; else echo AGENT-IN-BACKGROUND; fi";
    let out = Command::new(fixture("foreground.py"))
        .args([bin(), "--", "sh", "-c", check])
        .env_remove("RUST_LOG")
        .env("AGENT_GUARD_IMDS", "off")
        .env("AGENT_GUARD_HEALTH_LISTEN", "off")
        .env("AGENT_GUARD_SOCKET", crate::support::unique_socket())
        .output()
        .expect("python3 runs the pty fixture");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("AGENT-IN-FOREGROUND"), "{text}");
}
