//! The clients docs/reference.md shows under "Talking to the guard" really drain: each runs as the agent,
//! hears an operator's drain, and answers `drained` long before the 10-minute drain timeout.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{Guard, SOON, command, read, require_tool, scratch, wait_until};

fn client(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/clients")
        .join(name)
}

/// Runs `agent` under a guard, drains it, and checks that it heard the drain and said drained.
fn drains(dir: &Path, agent: &[&str]) {
    let mut cmd = command();
    cmd.args(["--drain-timeout", "10m", "--"]).args(agent);
    let mut guard = Guard::spawn_capturing(dir, cmd);
    wait_until("the client subscribes", SOON, || {
        guard.status()["subscribers"] == 1
    });
    let asked = Instant::now();
    let (code, _, err) = guard.ctl(&["drain"]);
    assert_eq!(code, 0, "{err}");
    let status = guard.code();
    let out = read(dir.join("guard.stdout"));
    assert!(
        out.contains("draining"),
        "the client heard the drain: {out:?}\n{}",
        guard.log()
    );
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "drained ended the drain"
    );
    assert!(
        status == 0 || status == 143,
        "exit {status}: {}",
        guard.log()
    );
    assert!(guard.log().contains("subscribers=true"), "{}", guard.log());
}

#[test]
fn the_python_client_drains() {
    let dir = scratch();
    drains(
        dir.path(),
        &["python3", client("client.py").to_str().expect("utf-8")],
    );
}

#[test]
fn the_node_client_drains() {
    if !require_tool("node") {
        return;
    }
    let dir = scratch();
    drains(
        dir.path(),
        &["node", client("client.js").to_str().expect("utf-8")],
    );
}

#[test]
fn the_go_client_drains() {
    if !require_tool("go") {
        return;
    }
    let dir = scratch();
    let binary = dir.path().join("client");
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg(client("client.go"))
        .env("GOCACHE", dir.path().join("gocache"))
        .env("GOPATH", dir.path().join("gopath"))
        .env("GO111MODULE", "off")
        .output()
        .expect("go runs");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    drains(dir.path(), &[binary.to_str().expect("utf-8")]);
}

#[test]
fn the_bash_client_drains() {
    if !require_tool("nc") {
        return;
    }
    let dir = scratch();
    drains(
        dir.path(),
        &["bash", client("client.sh").to_str().expect("utf-8")],
    );
}

#[test]
fn readme_quotes_each_client_verbatim() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/reference.md"))
        .expect("docs/reference.md");
    for name in ["client.py", "client.js", "client.go", "client.sh"] {
        let code = std::fs::read_to_string(client(name)).expect("client");
        assert!(
            readme.contains(code.trim_end()),
            "docs/reference.md must quote examples/clients/{name} verbatim"
        );
    }
}
