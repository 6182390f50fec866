//! The health endpoint: each path per phase, readiness turning 503 before the agent is told,
//! checks that fail or hang without slowing an answer, secrets kept out of every output, a
//! Prometheus text a real parser accepts, a server that stays up under abuse, and a shutdown that
//! nothing in flight can hold up.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Guard, SOON, fixture, http, json_lines, read, scratch, wait_until};

fn start(dir: &Path, options: &[&str], agent: &[&str]) -> Guard {
    let mut args: Vec<String> = vec!["--health-listen".into(), "127.0.0.1:0".into()];
    args.extend(options.iter().map(|s| s.to_string()));
    args.push("--".into());
    args.extend(agent.iter().map(|s| s.to_string()));
    Guard::start(dir, &args)
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port()
}

#[test]
fn every_endpoint_answers_per_phase() {
    let dir = scratch();
    let log = dir.path().join("agent.log");
    let trigger = dir.path().join("go");
    let mut guard = start(
        dir.path(),
        &[
            "--ready-on",
            "notify",
            "--drain-signal",
            "USR1",
            "--drain-timeout",
            "10m",
        ],
        &[
            fixture("notify_agent.py").to_str().expect("utf-8"),
            log.to_str().expect("utf-8"),
            "--ready-on-file",
            trigger.to_str().expect("utf-8"),
            "--on-drain-signal",
            "drained-after=600",
        ],
    );
    let addr = guard.health_addr();
    // The agent's handlers are in place before it gets any signal.
    wait_until("the agent is up", SOON, || {
        dir.path().join("agent.log.ready").exists()
    });

    // Starting: alive, not ready.
    assert_eq!(http(&addr, "GET", "/livez").0, 200);
    let (code, _, body) = http(&addr, "GET", "/readyz?verbose");
    assert_eq!(code, 503);
    assert!(
        body.contains("[-]phase failed: starting") && body.ends_with("readyz check failed\n"),
        "{body}"
    );
    let (code, head, body) = http(&addr, "GET", "/health");
    assert_eq!(code, 200, "starting is a warning, not a failure");
    assert!(
        head.contains("content-type: application/health+json"),
        "{head}"
    );
    let health = json(&body);
    assert_eq!(health["status"], "warn");
    assert_eq!(
        health["checks"]["agent-guard:phase"][0]["observedValue"],
        "starting"
    );

    // Ready.
    std::fs::write(&trigger, "").expect("trigger");
    wait_until("ready", SOON, || http(&addr, "GET", "/readyz").0 == 200);
    let (_, _, body) = http(&addr, "GET", "/readyz");
    assert_eq!(body, "ok\n");
    let (_, _, body) = http(&addr, "GET", "/readyz?verbose");
    assert_eq!(body, "[+]phase ok\nreadyz check passed\n");
    let health = json(&http(&addr, "GET", "/health").2);
    assert_eq!(health["status"], "pass");
    let agent = &health["checks"]["agent:uptime"][0];
    assert_eq!(agent["status"], "pass");
    assert_eq!(agent["observedUnit"], "s");
    assert!(
        agent["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{agent}"
    );
    let (code, head, body) = http(&addr, "GET", "/status");
    assert_eq!(code, 200);
    assert!(head.contains("content-type: application/json"));
    let status = json(&body);
    for field in [
        "phase",
        "phase_since",
        "agent_pid",
        "agent_uptime_s",
        "ready_source",
        "drain",
        "checks",
        "health_listen",
    ] {
        assert!(
            status.get(field).is_some(),
            "/status lacks {field}: {status}"
        );
    }
    assert_eq!(status["phase"], "ready");
    assert_eq!(status["ready_source"], "notify");
    let (code, head, body) = http(&addr, "GET", "/metrics");
    assert_eq!(code, 200);
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        body.contains("agent_guard_phase{phase=\"ready\"} 1"),
        "{body}"
    );

    // Anything else.
    assert_eq!(http(&addr, "GET", "/nope").0, 404);
    let (code, head, _) = http(&addr, "POST", "/readyz");
    assert_eq!(code, 405);
    assert!(head.contains("allow: get, head"), "{head}");
    let (code, _, body) = http(&addr, "HEAD", "/status");
    assert_eq!((code, body.as_str()), (200, ""));

    // Draining: not ready, still alive.
    guard.ctl(&["drain"]);
    wait_until("draining", SOON, || guard.status()["phase"] == "draining");
    let (code, _, body) = http(&addr, "GET", "/readyz?verbose");
    assert_eq!(code, 503);
    assert!(body.contains("[-]phase failed: draining"), "{body}");
    assert_eq!(http(&addr, "GET", "/livez").0, 200);
    let metrics = http(&addr, "GET", "/metrics").2;
    assert!(
        metrics.contains("agent_guard_drains_total{reason=\"operator\"} 1"),
        "{metrics}"
    );
    assert!(json(&http(&addr, "GET", "/status").2)["drain"]["reason"] == "operator");

    // Drained: the stop signal follows, the agent exits 0 on it.
    assert_eq!(guard.ctl(&["drained"]).0, 0);
    assert_eq!(guard.code(), 0);
}

#[test]
fn readiness_is_503_before_the_agent_hears_of_the_drain() {
    let dir = scratch();
    let log = dir.path().join("agent.log");
    // The agent needs the address to probe it: it comes from a fixed free port.
    let port = closed_port();
    let mut guard = Guard::start(
        dir.path(),
        [
            "--health-listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--drain-timeout".to_string(),
            "10m".to_string(),
            "--".to_string(),
            fixture("socket_agent.py").display().to_string(),
            log.display().to_string(),
            "--probe".to_string(),
            format!("http://127.0.0.1:{port}/readyz"),
            "--drained-after".to_string(),
            "0".to_string(),
        ],
    );
    wait_until("subscribed", SOON, || guard.status()["subscribers"] == 1);
    assert_eq!(http(&format!("127.0.0.1:{port}"), "GET", "/readyz").0, 200);
    guard.ctl(&["drain"]);
    assert_eq!(guard.code(), 0, "{}", guard.log());
    let entries = json_lines(&log);
    let probe = entries
        .iter()
        .find_map(|e| e["probe"].as_u64())
        .expect("the agent probed /readyz");
    assert_eq!(
        probe, 503,
        "the load balancer already saw 503 when the agent was told"
    );
}

#[test]
fn failing_and_hanging_checks_never_slow_an_answer() {
    let dir = scratch();
    // Accepts connections and never answers them.
    let hang = TcpListener::bind("127.0.0.1:0").expect("bind");
    let hang_port = hang.local_addr().expect("addr").port();
    let mut guard = start(
        dir.path(),
        &[
            "--check",
            &format!("dead=tcp://127.0.0.1:{}", closed_port()),
            "--check",
            &format!("hang=http://127.0.0.1:{hang_port}/"),
            "--check-interval",
            "200ms",
            "--check-timeout",
            "1s",
        ],
        &["sleep", "600"],
    );
    let addr = guard.health_addr();
    wait_until("both checks report", SOON, || {
        let body = http(&addr, "GET", "/readyz?verbose").2;
        body.contains("[-]dead failed: connect")
            && body.contains("[-]hang failed: no answer within 1s")
    });
    // Meanwhile every answer is quick, though a probe is always hanging.
    let mut slowest = Duration::ZERO;
    for _ in 0..50 {
        let t = Instant::now();
        assert_eq!(http(&addr, "GET", "/readyz").0, 503);
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(500),
        "slowest /readyz took {slowest:?}"
    );
    let health = json(&http(&addr, "GET", "/health").2);
    assert_eq!(health["status"], "fail");
    assert_eq!(
        health["checks"]["dead:responseTime"][0]["componentType"],
        "datastore"
    );
    assert_eq!(health["checks"]["hang:responseTime"][0]["status"], "fail");
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 143);
    drop(hang);
}

/// A tiny HTTP server for the agent's own health URL: 200 with `{"status":"DOWN"}` or `"UP"`.
fn child_health_server(up: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream: TcpStream = stream;
            let mut buf = [0u8; 2048];
            let _ = stream.read(&mut buf);
            let body = if up.load(Ordering::SeqCst) {
                r#"{"status":"UP"}"#
            } else {
                r#"{"status":"DOWN"}"#
            };
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn the_agent_saying_down_with_a_200_is_not_ready_and_ready_on_health_waits_for_up() {
    let dir = scratch();
    let up = Arc::new(AtomicBool::new(false));
    let port = child_health_server(up.clone());
    let mut guard = start(
        dir.path(),
        &[
            "--ready-on",
            "health",
            "--child-health",
            &format!("http://127.0.0.1:{port}/actuator/health"),
            "--check-interval",
            "200ms",
        ],
        &["sleep", "600"],
    );
    let addr = guard.health_addr();
    wait_until("the DOWN is seen", SOON, || {
        http(&addr, "GET", "/readyz?verbose")
            .2
            .contains("[-]child-health failed: the agent reports `DOWN`")
    });
    assert_eq!(
        guard.status()["phase"],
        "starting",
        "not ready while the agent says DOWN"
    );
    up.store(true, Ordering::SeqCst);
    wait_until("ready once UP", SOON, || {
        http(&addr, "GET", "/readyz").0 == 200
    });
    assert_eq!(guard.status()["ready_source"], "health");
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 143);
}

#[test]
fn credentials_in_check_urls_appear_in_no_output() {
    let dir = scratch();
    let secret_check = format!(
        "db=http://admin:hunter2@127.0.0.1:{}/h?token=s3cr3t",
        closed_port()
    );
    let mut guard = start(
        dir.path(),
        &[
            "--check",
            &secret_check,
            "--check-interval",
            "200ms",
            "--log-level",
            "debug",
        ],
        &["sleep", "600"],
    );
    let addr = guard.health_addr();
    // The why names the stage and the OS error, and nothing of the URL.
    wait_until("the check fails", SOON, || {
        http(&addr, "GET", "/readyz?verbose")
            .2
            .contains("[-]db failed: connect: Connection refused (os error 111)")
    });
    let mut outputs = vec![guard.log()];
    for path in [
        "/readyz?verbose",
        "/health",
        "/status",
        "/metrics",
        "/livez?verbose",
    ] {
        outputs.push(http(&addr, "GET", path).2);
    }
    outputs.push(guard.ctl(&["--json", "status"]).1);
    let (_, check_config, _) = crate::support::run(["--check-config", "--check", &secret_check]);
    outputs.push(check_config);
    for text in &outputs {
        assert!(
            !text.contains("hunter2") && !text.contains("s3cr3t"),
            "a secret leaked:\n{text}"
        );
    }
    assert!(
        outputs.iter().any(|t| t.contains("http://***@127.0.0.1")),
        "the masked URL is shown"
    );
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 143);
}

/// The Python that has `prometheus_client` (CI's venv), if any.
fn python_with_prometheus() -> Option<String> {
    let candidates = [
        std::env::var("AGENT_GUARD_TEST_PYTHON").ok(),
        Some(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").to_string()),
        Some("python3".to_string()),
    ];
    candidates.into_iter().flatten().find(|py| {
        Command::new(py)
            .args(["-c", "import prometheus_client"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn metrics_parse_as_prometheus_text() {
    let Some(python) = python_with_prometheus() else {
        crate::support::require(
            false,
            "no Python with prometheus_client (.ci/run makes one)",
        );
        return;
    };
    let dir = scratch();
    let mut guard = start(
        dir.path(),
        &[
            "--check",
            &format!("db=tcp://127.0.0.1:{}", closed_port()),
            "--check-interval",
            "200ms",
        ],
        &["sleep", "600"],
    );
    let addr = guard.health_addr();
    wait_until("a check result", SOON, || {
        http(&addr, "GET", "/metrics")
            .2
            .contains("agent_guard_check_latency_seconds{")
    });
    let body = http(&addr, "GET", "/metrics").2;
    let script = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families\n\
                  fams = list(text_string_to_metric_families(sys.stdin.read()))\n\
                  print(' '.join(sorted(f.name + ':' + f.type for f in fams)))";
    let mut child = Command::new(&python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("parser finishes");
    let families = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the parser refused /metrics: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "agent_guard_phase:gauge",
        "agent_guard_drains:counter",
        "agent_guard_check_up:gauge",
        "agent_guard_imds_errors:counter",
    ] {
        assert!(families.contains(want), "{want} missing from {families}");
    }
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 143);
}

#[test]
fn abuse_leaves_it_answering_other_clients() {
    // A thousand idle connections need more descriptors than the usual soft limit of 1024.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max.min(8192);
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    let dir = scratch();
    let mut guard = start(dir.path(), &[], &["sleep", "600"]);
    let addr = guard.health_addr();
    let ok = |what: &str| {
        let t = Instant::now();
        let (code, _, _) = http(&addr, "GET", "/livez");
        assert_eq!(code, 200, "after {what}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "after {what}: {:?}",
            t.elapsed()
        );
    };

    // A slow client: half a head, then nothing; it is cut off, others are served meanwhile.
    let mut slow = TcpStream::connect(&addr).expect("connect");
    slow.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    ok("a slow client");
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let t = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "the slow client was closed in bounded time"
    );

    // Oversized headers.
    let mut big = TcpStream::connect(&addr).expect("connect");
    big.set_read_timeout(Some(SOON)).expect("timeout");
    let _ = write!(
        big,
        "GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let mut answer = String::new();
    let _ = big.read_to_string(&mut answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(80)]
    );
    ok("oversized headers");

    // Pipelined garbage.
    let mut junk = TcpStream::connect(&addr).expect("connect");
    junk.set_read_timeout(Some(SOON)).expect("timeout");
    let _ = junk.write_all(
        b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01GARBAGE\r\n\r\nNOT HTTP\r\n\r\n",
    );
    let mut answer = String::new();
    let _ = junk.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the good request was answered: {answer:.60}"
    );
    ok("pipelined garbage");

    // A thousand idle connections.
    let idle: Vec<TcpStream> = (0..1000)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    assert!(idle.len() >= 1000, "opened {}", idle.len());
    ok("a thousand idle connections");
    drop(idle);
    ok("the idle connections closing");

    assert!(
        guard.child.try_wait().expect("try_wait").is_none(),
        "the guard runs"
    );
    assert_eq!(
        read(&guard.stderr).matches("ERROR").count(),
        0,
        "{}",
        guard.log()
    );
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 143);
}

#[test]
fn the_guard_exits_promptly_with_a_probe_hanging_and_clients_connected() {
    let dir = scratch();
    // Accepts connections and never answers them: the probe hangs for its whole minute.
    let hang = TcpListener::bind("127.0.0.1:0").expect("bind");
    let hang_port = hang.local_addr().expect("addr").port();
    let mut guard = start(
        dir.path(),
        &[
            "--check",
            &format!("hang=http://127.0.0.1:{hang_port}/"),
            "--check-interval",
            "200ms",
            "--check-timeout",
            "1m",
        ],
        &["sleep", "600"],
    );
    let addr = guard.health_addr();
    assert_eq!(http(&addr, "GET", "/livez").0, 200);
    // A client with half a request head, and one idle between requests.
    let mut slow = TcpStream::connect(&addr).expect("connect");
    slow.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    let mut idle = TcpStream::connect(&addr).expect("connect");
    idle.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    idle.set_read_timeout(Some(SOON)).expect("timeout");
    let mut buf = [0u8; 512];
    let n = idle.read(&mut buf).expect("an answer");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);

    let t = Instant::now();
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 143);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the guard took {:?} to exit: neither the probe nor the clients may hold it",
        t.elapsed()
    );
    drop((slow, idle, hang));
}
