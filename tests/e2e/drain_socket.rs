//! The drain socket and sd_notify: agents hear drains and answer them; operators drain by hand;
//! readiness, extensions and the watchdog; and bad input that never harms the guard.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use agent_guard::sim::imds::ImdsSim;
use serde_json::Value;

use crate::support::{
    Guard, SOON, first_time, fixture, json_lines, let_time_pass, read, scratch, wait_until,
};

fn start(dir: &Path, options: &[&str], agent: &[&str]) -> Guard {
    let mut args: Vec<String> = options.iter().map(|s| s.to_string()).collect();
    args.push("--".into());
    args.extend(agent.iter().map(|s| s.to_string()));
    Guard::start(dir, &args)
}

fn agent_log(dir: &Path) -> String {
    dir.join("agent.log").display().to_string()
}

fn wait_ready_file(dir: &Path) {
    wait_until("the agent is up", SOON, || {
        dir.join("agent.log.ready").exists()
    });
}

fn heard_drain(e: &Value) -> bool {
    e["heard"]["event"] == "drain"
}

#[test]
fn a_subscriber_hears_the_drain_with_its_deadline_within_a_poll_of_a_scale_in() {
    let dir = scratch();
    let sim = ImdsSim::start().expect("sim");
    let log = agent_log(dir.path());
    let mut guard = start(
        dir.path(),
        &[
            "--imds",
            "on",
            "--imds-endpoint",
            &sim.url(),
            "--imds-poll",
            "200ms",
            "--drain-timeout",
            "45s",
        ],
        &[
            fixture("socket_agent.py").to_str().expect("utf-8"),
            &log,
            "--drained-after",
            "0.2",
        ],
    );
    wait_ready_file(dir.path());
    wait_until("subscribed", SOON, || guard.status()["phase"] == "ready");
    let posted = Instant::now();
    sim.set_lifecycle_state(Some("Terminated"));
    wait_until("the drain event", SOON, || {
        json_lines(Path::new(&log)).iter().any(heard_drain)
    });
    assert!(
        posted.elapsed() < Duration::from_secs(5),
        "heard after {:?}",
        posted.elapsed()
    );
    assert_eq!(guard.code(), 0, "{}", guard.log());
    let entries = json_lines(Path::new(&log));
    let drain = entries
        .iter()
        .find(|e| heard_drain(e))
        .expect("drain event");
    assert_eq!(drain["heard"]["reason"], "scale-in");
    let in_ms = drain["heard"]["deadline_in_ms"]
        .as_u64()
        .expect("deadline_in_ms");
    assert!((40_000..=45_000).contains(&in_ms), "deadline_in_ms {in_ms}");
    let deadline =
        humantime::parse_rfc3339_weak(drain["heard"]["deadline"].as_str().expect("deadline"))
            .expect("RFC 3339");
    let from_now = deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    assert!(
        from_now > Duration::from_secs(30),
        "deadline {from_now:?} from now"
    );
    // The phase turned to draining before (or with) the drain event, and the agent's
    // `drained` came before its stop signal.
    let phase_at =
        first_time(&entries, |e| e["heard"]["phase"] == "draining").expect("phase event");
    let drain_at = first_time(&entries, heard_drain).expect("drain");
    let drained_at = first_time(&entries, |e| e["sent"]["op"] == "drained").expect("drained sent");
    let term_at = first_time(&entries, |e| e["signal"] == "SIGTERM").expect("SIGTERM");
    assert!(
        phase_at <= drain_at && drain_at < drained_at && drained_at <= term_at,
        "{entries:?}"
    );
}

#[test]
fn drained_ends_the_drain_long_before_the_drain_timeout() {
    let dir = scratch();
    let log = agent_log(dir.path());
    let mut guard = start(
        dir.path(),
        &["--drain-timeout", "10m"],
        &[
            fixture("socket_agent.py").to_str().expect("utf-8"),
            &log,
            "--drained-after",
            "0.5",
        ],
    );
    wait_ready_file(dir.path());
    wait_until("subscribed", SOON, || {
        json_lines(Path::new(&log))
            .iter()
            .any(|e| e["heard"]["subscribed"] == true)
    });
    let (code, out, _) = guard.ctl(&["drain", "--reason", "test"]);
    assert_eq!((code, out.trim()), (0, "drain requested"));
    assert_eq!(guard.code(), 0, "{}", guard.log());
    let entries = json_lines(Path::new(&log));
    let drained_at = first_time(&entries, |e| e["sent"]["op"] == "drained").expect("drained");
    let term_at = first_time(&entries, |e| e["signal"] == "SIGTERM").expect("SIGTERM");
    assert!(
        drained_at <= term_at && term_at - drained_at < 5.0,
        "{entries:?}"
    );
    let drain = entries.iter().find(|e| heard_drain(e)).expect("drain");
    assert_eq!(drain["heard"]["reason"], "operator");
}

#[test]
fn extend_pushes_the_drain_deadline() {
    let dir = scratch();
    let log = agent_log(dir.path());
    let mut guard = start(
        dir.path(),
        &["--drain-timeout", "1s"],
        &[
            fixture("socket_agent.py").to_str().expect("utf-8"),
            &log,
            "--extend",
            "30",
            "--drained-after",
            "2.5",
        ],
    );
    wait_ready_file(dir.path());
    wait_until("subscribed", SOON, || guard.status()["phase"] == "ready");
    guard.ctl(&["drain"]);
    assert_eq!(guard.code(), 0, "{}", guard.log());
    let entries = json_lines(Path::new(&log));
    let drain_at = first_time(&entries, heard_drain).expect("drain");
    let drained_at = first_time(&entries, |e| e["sent"]["op"] == "drained").expect("drained");
    let term_at = first_time(&entries, |e| e["signal"] == "SIGTERM").expect("SIGTERM");
    // Without the extension the stop signal would have come 1 s after the drain.
    assert!(
        term_at - drain_at >= 2.4,
        "stop came {:.2}s after the drain",
        term_at - drain_at
    );
    assert!(drained_at <= term_at, "{entries:?}");
    // The extension was announced with the new deadline.
    let drains: Vec<_> = entries.iter().filter(|e| heard_drain(e)).collect();
    assert!(drains.len() >= 2, "{drains:?}");
    assert!(
        drains[1]["heard"]["deadline_in_ms"].as_u64() > Some(20_000),
        "{drains:?}"
    );
}

#[test]
fn extend_timeout_usec_pushes_the_drain_deadline_and_the_stop_grace() {
    let dir = scratch();
    let log = agent_log(dir.path());
    let mut guard = start(
        dir.path(),
        &[
            "--drain-signal",
            "USR1",
            "--drain-timeout",
            "1s",
            "--stop-timeout",
            "1s",
        ],
        &[
            fixture("notify_agent.py").to_str().expect("utf-8"),
            &log,
            "--on-drain-signal",
            "extend=30,drained-after=2.5",
            "--on-term",
            "extend=30,exit-after=2.5",
        ],
    );
    wait_ready_file(dir.path());
    let sent = Instant::now();
    guard.signal(libc::SIGTERM);
    // Not 137: the grace was extended past the 1 s stop timeout, and the agent exited by itself.
    assert_eq!(guard.code(), 0, "{}", guard.log());
    assert!(
        sent.elapsed() >= Duration::from_secs(5),
        "both extensions were honoured"
    );
    let entries = json_lines(Path::new(&log));
    let usr1 = first_time(&entries, |e| e["signal"] == "SIGUSR1").expect("drain signal");
    let drained = first_time(&entries, |e| e["sent"] == "X_DRAINED=1").expect("X_DRAINED");
    let term = first_time(&entries, |e| e["signal"] == "SIGTERM").expect("SIGTERM");
    assert!(
        usr1 < drained && drained <= term && term - usr1 >= 2.4,
        "{entries:?}"
    );
}

#[test]
fn a_spot_deadline_caps_every_extension() {
    let dir = scratch();
    let sim = ImdsSim::start().expect("sim");
    let log = agent_log(dir.path());
    let mut guard = start(
        dir.path(),
        &[
            "--imds",
            "on",
            "--imds-endpoint",
            &sim.url(),
            "--imds-poll",
            "200ms",
            "--spot-margin",
            "2s",
            "--drain-timeout",
            "10m",
            "--stop-timeout",
            "2s",
        ],
        &[
            fixture("socket_agent.py").to_str().expect("utf-8"),
            &log,
            "--extend",
            "600",
            "--ignore-term",
        ],
    );
    wait_ready_file(dir.path());
    wait_until("subscribed", SOON, || guard.status()["phase"] == "ready");
    // SIGKILL is due 5-6 s from now: a drain of about 3 s, then 2 s of grace. The agent asks for
    // ten more minutes and must not get them.
    let notice =
        humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(8)).to_string();
    let notice_time = humantime::parse_rfc3339(&notice).expect("time");
    sim.post_spot_interruption("terminate", &notice);
    assert_eq!(guard.code(), 137, "{}", guard.log());
    assert!(
        SystemTime::now() < notice_time,
        "SIGKILL came after the notice time despite the extension"
    );
    let entries = json_lines(Path::new(&log));
    assert!(
        entries.iter().any(|e| e["sent"]["op"] == "extend"),
        "the agent asked for more time"
    );
}

#[test]
fn an_agent_that_only_speaks_sd_notify_gets_its_stop_signal_at_once() {
    let dir = scratch();
    let log = agent_log(dir.path());
    let mut guard = start(
        dir.path(),
        &["--drain-timeout", "10m"],
        &[fixture("notify_agent.py").to_str().expect("utf-8"), &log],
    );
    wait_ready_file(dir.path());
    let asked = Instant::now();
    let (code, _, _) = guard.ctl(&["drain"]);
    assert_eq!(code, 0);
    assert_eq!(guard.code(), 0, "{}", guard.log());
    // No subscriber and no --drain-signal: waiting 10 minutes would be in vain.
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "took {:?}",
        asked.elapsed()
    );
}

#[test]
fn ready_1_flips_readiness_with_ready_on_notify() {
    let dir = scratch();
    let log = agent_log(dir.path());
    let trigger = dir.path().join("go");
    let mut guard = start(
        dir.path(),
        &["--ready-on", "notify"],
        &[
            fixture("notify_agent.py").to_str().expect("utf-8"),
            &log,
            "--ready-on-file",
            trigger.to_str().expect("utf-8"),
        ],
    );
    wait_ready_file(dir.path());
    let_time_pass(
        "the guard stays starting without READY=1",
        Duration::from_millis(300),
    );
    assert_eq!(
        guard.status()["phase"],
        "starting",
        "not ready before READY=1"
    );
    std::fs::write(&trigger, "").expect("trigger");
    wait_until("ready after READY=1", SOON, || {
        guard.status()["phase"] == "ready"
    });
    let status = guard.status();
    assert_eq!(status["ready_source"], "notify");
    assert_eq!(
        status["status"], "notify fixture up",
        "STATUS= is kept and shown"
    );
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 0);
}

#[test]
fn a_posix_sh_agent_speaks_both_protocols() {
    // Without nc the fixture could never subscribe, and the test would only time out.
    if !crate::support::require_tool("nc") || !crate::support::require_tool("systemd-notify") {
        return;
    }
    let dir = scratch();
    let log = agent_log(dir.path());
    let mut guard = start(
        dir.path(),
        &["--ready-on", "notify", "--drain-timeout", "10m"],
        &[fixture("shell_agent.sh").to_str().expect("utf-8"), &log],
    );
    wait_until("ready by systemd-notify", SOON, || {
        guard.status()["phase"] == "ready"
    });
    wait_until("subscribed with nc", SOON, || {
        read(&log).contains("\"subscribed\":true")
    });
    let asked = Instant::now();
    guard.ctl(&["drain"]);
    assert_eq!(guard.code(), 0, "{}", guard.log());
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "drained ended the 10-minute drain"
    );
    let text = read(&log);
    let drained = text.find("sent drained").expect("drained sent");
    let term = text.find("SIGTERM").expect("SIGTERM");
    assert!(drained < term, "{text}");
}

#[test]
fn a_missed_watchdog_is_reported_and_watchdog_pid_is_the_agent() {
    let dir = scratch();
    let log = agent_log(dir.path());
    let mut guard = start(
        dir.path(),
        &["--watchdog", "400ms"],
        &[
            fixture("notify_agent.py").to_str().expect("utf-8"),
            &log,
            "--pings",
            "20",
        ],
    );
    wait_ready_file(dir.path());
    let entries = json_lines(Path::new(&log));
    let env = &entries[0]["env"];
    assert_eq!(env["WATCHDOG_USEC"], "400000");
    assert_eq!(
        env["WATCHDOG_PID"].as_str(),
        Some(entries[0]["pid"].to_string().as_str()),
        "{env}"
    );
    assert_eq!(env["AGENT_GUARD_SOCKET"].as_str(), guard.socket.to_str());
    assert_eq!(
        env["NOTIFY_SOCKET"].as_str(),
        guard.notify_socket().to_str()
    );
    // While it pings (20 pings, 4 s), all is well; once it stops, the miss is reported. Looked
    // at after the second ping, not after a sleep that a loaded machine can stretch past the end.
    let pings = || {
        json_lines(Path::new(&log))
            .iter()
            .filter(|e| e["sent"] == "WATCHDOG=1")
            .count()
    };
    wait_until("two pings", SOON, || pings() >= 2);
    let missed = guard.status()["watchdog_missed"].clone();
    assert!(
        !read(&log).contains("stopped"),
        "the status must be read while the agent still pings"
    );
    assert_eq!(missed, false, "missed while pinging: {}", guard.log());
    wait_until("pings stop", SOON, || read(&log).contains("stopped"));
    wait_until("the miss is reported", SOON, || {
        guard.status()["watchdog_missed"] == true
    });
    wait_until("the miss is logged", SOON, || {
        guard.log().contains("missed its watchdog")
    });
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 0);
}

#[test]
fn ctl_without_a_guard_says_so_in_one_line() {
    let dir = scratch();
    let out = Command::new(crate::support::bin())
        .args(["ctl", "--socket"])
        .arg(dir.path().join("none.sock"))
        .arg("status")
        .output()
        .expect("ctl runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no guard is listening on"), "{err}");
}

/// A raw client: sends `bytes`, returns the first line of the answer.
fn exchange(socket: &Path, bytes: &[u8]) -> String {
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream.set_read_timeout(Some(SOON)).expect("timeout");
    let _ = stream.write_all(bytes);
    let mut line = String::new();
    let _ = BufReader::new(&stream).read_line(&mut line);
    line
}

#[test]
fn bad_input_gets_a_clear_answer_and_leaves_guard_and_agent_running() {
    let dir = scratch();
    let log = agent_log(dir.path());
    let mut guard = start(
        dir.path(),
        &[],
        &[fixture("notify_agent.py").to_str().expect("utf-8"), &log],
    );
    wait_ready_file(dir.path());
    let socket = guard.socket.clone();

    assert!(exchange(&socket, b"not json\n").contains("invalid JSON"));
    assert!(
        exchange(&socket, b"{\"op\":\"launch-missiles\"}\n")
            .contains("unknown op `launch-missiles`")
    );
    assert!(exchange(&socket, b"{\"op\":\"busy\",\"in_flight\":-3}\n").contains("\"ok\":false"));
    let mut long = vec![b'x'; 70 * 1024];
    long.push(b'\n');
    assert!(exchange(&socket, &long).contains("longer than 64 KiB"));

    // Hundreds of connections at once: some are refused, none harms the guard.
    let many: Vec<UnixStream> = (0..300)
        .filter_map(|_| UnixStream::connect(&socket).ok())
        .collect();
    let refused = exchange(&socket, b"{\"op\":\"status\"}\n");
    assert!(refused.contains("too many connections"), "{refused}");
    drop(many);
    wait_until("status answers again", SOON, || {
        exchange(&socket, b"{\"op\":\"status\"}\n").contains("\"ok\":true")
    });

    // A flood of datagrams, oversized ones among them.
    let flood = UnixDatagram::unbound().expect("datagram");
    for i in 0..5000 {
        let _ = flood.send_to(
            format!("STATUS=flood {i}").as_bytes(),
            guard.notify_socket(),
        );
    }
    let _ = flood.send_to(&vec![b'A'; 8000], guard.notify_socket());

    // A client that connects and never writes is closed with an answer, in bounded time.
    let mut silent = UnixStream::connect(&socket).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let started = Instant::now();
    let mut answer = String::new();
    let _ = silent.read_to_string(&mut answer);
    assert!(answer.contains("no request in time"), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(25));

    let status = guard.status();
    assert_eq!(status["phase"], "ready", "{status}");
    assert!(
        status["status"]
            .as_str()
            .is_some_and(|s| s.starts_with("flood")),
        "{status}"
    );
    assert!(
        guard.child.try_wait().expect("try_wait").is_none(),
        "the guard runs"
    );
    guard.signal(libc::SIGTERM);
    assert_eq!(
        guard.code(),
        0,
        "the agent was never harmed: {}",
        guard.log()
    );
}

#[test]
fn peers_of_another_user_are_refused() {
    let dir = scratch();
    let log = agent_log(dir.path());
    let mut guard = start(
        dir.path(),
        &[],
        &[fixture("notify_agent.py").to_str().expect("utf-8"), &log],
    );
    wait_ready_file(dir.path());
    let mode = std::fs::metadata(&guard.socket)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the control socket is private");
    if !crate::support::require_root() {
        return;
    }
    // Open the file permissions so that only the credential check stands in the way.
    for path in [guard.socket.clone(), guard.notify_socket()] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    }
    let script = "import socket, sys\n\
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); c.connect(sys.argv[1])\n\
        print(c.makefile().readline().strip())  # refused at once, before any request\n\
        d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); d.sendto(b'STATUS=intruder', sys.argv[2])\n";
    use std::os::unix::process::CommandExt;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&guard.socket)
        .arg(guard.notify_socket())
        .uid(65534)
        .gid(65534)
        .output()
        .expect("python3 as nobody");
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.contains("permission denied"),
        "{answer} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("both refusals are logged", SOON, || {
        let log = guard.log();
        log.contains("refused a peer of another user")
            && log.contains("refused a datagram from another user")
    });
    let status = guard.status();
    assert_eq!(status["phase"], "ready", "the drain was refused");
    assert_ne!(status["status"], "intruder");
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 0);
}

#[test]
fn a_stale_socket_is_replaced_a_live_one_or_a_symlink_refused() {
    let dir = scratch();
    let path = dir.path().join("g.sock");
    // Stale: bound once, nobody listens now.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
    let log = agent_log(dir.path());
    let socket_arg = path.to_str().expect("utf-8");
    let mut first = start(
        dir.path(),
        &["--socket", socket_arg],
        &[fixture("notify_agent.py").to_str().expect("utf-8"), &log],
    );
    wait_ready_file(dir.path());
    // Live: a second guard on the same path exits 125 without starting its agent.
    let other = scratch();
    let marker = other.path().join("started");
    let mut second = start(
        other.path(),
        &["--socket", socket_arg],
        &["touch", marker.to_str().expect("utf-8")],
    );
    assert_eq!(second.code(), 125);
    assert!(
        second
            .log()
            .contains("another agent-guard is listening there"),
        "{}",
        second.log()
    );
    assert!(!marker.exists());
    first.signal(libc::SIGTERM);
    assert_eq!(first.code(), 0);
    assert!(!path.exists(), "the guard removes its socket at exit");
    // A symlink planted at the path is neither followed nor removed.
    let target = dir.path().join("precious");
    std::fs::write(&target, "data").expect("write");
    std::os::unix::fs::symlink(&target, &path).expect("symlink");
    let mut third = start(other.path(), &["--socket", socket_arg], &["true"]);
    assert_eq!(third.code(), 125);
    assert!(
        third.log().contains("exists and is not a socket"),
        "{}",
        third.log()
    );
    assert_eq!(std::fs::read_to_string(&target).expect("intact"), "data");
}

#[test]
fn under_systemd_the_guard_relays_ready_status_and_stopping_upstream() {
    let dir = scratch();
    // Stands in for systemd's notification socket.
    let upstream_path = dir.path().join("systemd-notify.sock");
    let upstream = UnixDatagram::bind(&upstream_path).expect("bind");
    upstream.set_read_timeout(Some(SOON)).expect("timeout");
    let log = agent_log(dir.path());
    let mut cmd = crate::support::command();
    cmd.env("NOTIFY_SOCKET", &upstream_path)
        .args(["--ready-on", "notify", "--"])
        .arg(fixture("notify_agent.py"))
        .arg(&log);
    let mut guard = Guard::spawn(dir.path(), cmd);
    let mut heard = Vec::new();
    let mut buf = [0u8; 4096];
    while !heard.iter().any(|m: &String| m.contains("READY=1")) {
        let n = upstream
            .recv(&mut buf)
            .expect("a notification from the guard");
        heard.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        heard.iter().any(|m| m == "STATUS=notify fixture up"),
        "the agent's STATUS is relayed: {heard:?}"
    );
    guard.signal(libc::SIGTERM);
    loop {
        let n = upstream.recv(&mut buf).expect("STOPPING=1 from the guard");
        if &buf[..n] == b"STOPPING=1" {
            break;
        }
    }
    assert_eq!(guard.code(), 0);
    // The agent never saw systemd's socket: it got the guard's own.
    let entries = json_lines(Path::new(&log));
    assert_eq!(
        entries[0]["env"]["NOTIFY_SOCKET"].as_str(),
        guard.notify_socket().to_str()
    );
}

#[test]
fn the_fd_sent_with_barrier_1_is_closed() {
    let dir = scratch();
    let done = dir.path().join("barrier-done");
    // sd_notify_barrier(): send the write end of a pipe with BARRIER=1, close ours, wait for EOF.
    let script = format!(
        "import os, socket\n\
         r, w = os.pipe()\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         s.connect(os.environ['NOTIFY_SOCKET'])  # send_fds ignores its address argument\n\
         socket.send_fds(s, [b'BARRIER=1'], [w])\n\
         os.close(w)\n\
         os.read(r, 1)\n\
         open('{}', 'w').close()\n\
         import time; time.sleep(600)\n",
        done.display()
    );
    let mut guard = start(dir.path(), &[], &["python3", "-c", &script]);
    wait_until("the barrier returns", SOON, || done.exists());
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 143);
}

/// A raw subscriber: connects, subscribes, and returns the stream and a reader of its lines.
fn subscribe(socket: &Path) -> (UnixStream, BufReader<UnixStream>) {
    let stream = UnixStream::connect(socket).expect("connect");
    stream.set_read_timeout(Some(SOON)).expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    (&stream)
        .write_all(b"{\"op\":\"subscribe\"}\n")
        .expect("subscribe");
    let mut line = String::new();
    reader.read_line(&mut line).expect("the subscribe reply");
    assert!(line.contains("\"subscribed\":true"), "{line}");
    (stream, reader)
}

fn next_line(reader: &mut BufReader<UnixStream>) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).expect("a line from the guard");
    line
}

#[test]
fn a_request_written_in_two_parts_survives_an_event_between_them() {
    let dir = scratch();
    let log = agent_log(dir.path());
    let trigger = dir.path().join("go");
    let mut guard = start(
        dir.path(),
        &["--ready-on", "notify"],
        &[
            fixture("notify_agent.py").to_str().expect("utf-8"),
            &log,
            "--ready-on-file",
            trigger.to_str().expect("utf-8"),
        ],
    );
    wait_ready_file(dir.path());
    wait_until("the control socket", SOON, || guard.socket.exists());
    let (mut stream, mut reader) = subscribe(&guard.socket);
    // The request without its newline, read by the guard: it sits half-read there.
    stream
        .write_all(b"{\"op\":\"drained\"}")
        .expect("first part");
    wait_until("the guard read the first part", SOON, || {
        unread(&stream) == 0
    });
    // Now an event is delivered on the same connection while the request waits for its end.
    std::fs::write(&trigger, "").expect("trigger");
    let event = next_line(&mut reader);
    assert_eq!(event.trim(), r#"{"event":"phase","phase":"ready"}"#);
    stream.write_all(b"\n").expect("second part");
    let reply = next_line(&mut reader);
    assert_eq!(
        reply.trim(),
        r#"{"ok":true}"#,
        "the first part was lost: {reply}"
    );
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 0, "{}", guard.log());
}

#[test]
fn a_subscriber_hears_exited_and_then_the_connection_closes() {
    let dir = scratch();
    let log = agent_log(dir.path());
    let mut guard = start(
        dir.path(),
        &[],
        &[fixture("notify_agent.py").to_str().expect("utf-8"), &log],
    );
    wait_ready_file(dir.path());
    wait_until("the control socket", SOON, || guard.socket.exists());
    let (_stream, mut reader) = subscribe(&guard.socket);
    guard.signal(libc::SIGTERM);
    let mut rest = String::new();
    reader
        .read_to_string(&mut rest)
        .expect("the guard closes the connection");
    assert!(
        rest.ends_with("{\"event\":\"phase\",\"phase\":\"exited\"}\n"),
        "{rest:?}"
    );
    assert_eq!(guard.code(), 0, "{}", guard.log());
}

#[test]
fn a_client_that_never_reads_cannot_hold_the_guard_at_exit() {
    let dir = scratch();
    let log = agent_log(dir.path());
    let mut guard = start(
        dir.path(),
        &[],
        &[fixture("notify_agent.py").to_str().expect("utf-8"), &log],
    );
    wait_ready_file(dir.path());
    wait_until("the control socket", SOON, || guard.socket.exists());
    // Thousands of status requests whose replies (about 1 KiB each) are never read: the guard's
    // writes to this client block once the socket's buffers are full.
    let mut stuck = UnixStream::connect(&guard.socket).expect("connect");
    stuck
        .set_write_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    for _ in 0..5000 {
        if stuck.write_all(b"{\"op\":\"status\"}\n").is_err() {
            break; // the guard stopped reading too: it is blocked on its reply
        }
    }
    let sent = Instant::now();
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 0, "{}", guard.log());
    assert!(
        sent.elapsed() < Duration::from_secs(8),
        "exit took {:?}",
        sent.elapsed()
    );
    drop(stuck);
}

/// Bytes written on `stream` that its peer has not read yet (`SIOCOUTQ`: a Unix stream socket's
/// send queue empties as the peer reads).
fn unread(stream: &UnixStream) -> i32 {
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one c_int through the pointer, which outlives the call.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    assert_eq!(rc, 0, "SIOCOUTQ: {}", std::io::Error::last_os_error());
    queued
}
