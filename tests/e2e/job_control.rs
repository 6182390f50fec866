//! ^Z and SIGTSTP stop the agent's group and the guard, and SIGCONT continues both, as
//! dumb-init does: the shell that started the guard as a job gets its prompt back.

use std::process::Command;

use crate::support::{Guard, SOON, bin, children, fixture, process, scratch, wait_until};

fn state(pid: i32) -> Option<char> {
    process(pid).map(|p| p.state)
}

/// `kill -TSTP` on the guard: dumb-init passes it on, then stops itself with SIGSTOP.
#[test]
fn tstp_stops_the_agent_and_the_guard_and_cont_continues_both_as_dumb_init_does() {
    let dir = scratch();
    let mut guard = Guard::start(dir.path(), ["--", "sleep", "300"]);
    let guard_pid = guard.pid();
    wait_until("the agent runs", SOON, || !children(guard_pid).is_empty());
    let agent = children(guard_pid)[0].pid;
    guard.signal(libc::SIGTSTP);
    wait_until("the agent and the guard are both stopped", SOON, || {
        state(agent) == Some('T') && state(guard_pid) == Some('T')
    });
    guard.signal(libc::SIGCONT);
    wait_until("both run again", SOON, || {
        matches!(state(agent), Some('S' | 'R')) && matches!(state(guard_pid), Some('S' | 'R'))
    });
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 143, "log:\n{}", guard.log());
}

/// ^Z on a terminal goes to the foreground group, which is the agent's: the guard sees its
/// agent stopped and stops too, so the parent waiting for it (a shell) sees its job stopped.
/// After SIGCONT (the shell's `fg`) the agent reads the terminal again.
#[test]
fn ctrl_z_on_a_terminal_stops_the_guard_with_its_agent() {
    let agent = "echo AGENT-READY; read line; echo \"AGENT-GOT-$line\"";
    let out = Command::new(fixture("suspend_on_terminal.py"))
        .args([bin(), "--", "sh", "-c", agent])
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
    assert!(text.contains("GUARD-STOPPED"), "{text}");
    assert!(text.contains("AGENT-GOT-again"), "{text}");
}
