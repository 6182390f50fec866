//! What a hostile local user, a broken agent and a broken IMDS cannot do to the guard: take over
//! its socket directory, make it panic with a huge duration or extension, hang it by leaving the
//! agent's process group or stopping the agent, leak the descriptors they send, grow it with
//! notices, flood its log, or make it read a config file forever. One test per way in.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, IoSlice, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use agent_guard::sim::imds::ImdsSim;
use serde_json::Value;

use crate::support::{
    Guard, SOON, bin, command, fixture, gone, http, process, read, require_root, run, scratch,
    wait_until,
};

const HUGE: &str = "3000000000000000h";

#[test]
fn a_duration_past_the_maximum_is_refused_before_anything_starts() {
    for option in [
        "--stop-timeout",
        "--drain-timeout",
        "--ready-timeout",
        "--ready-on",
        "--watchdog",
        "--spot-margin",
        "--imds-poll",
        "--check-interval",
        "--check-timeout",
        "--idle-release",
        "--heartbeat-interval",
        "--metrics-interval",
    ] {
        let (code, _, err) = run([option, HUGE, "--check-config", "--", "true"]);
        assert_eq!(code, 125, "{option}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!("{option}: invalid value `{HUGE}`"))
                && err.contains("at most 365d"),
            "{err}"
        );
    }
    // The drill's own durations are held to the same maximum.
    let (code, _, err) = run(["drill", "scale-in", "--after", HUGE, "--", "true"]);
    assert_eq!(code, 125, "{err}");
    assert!(
        err.contains("--after") && err.contains("at most 365d"),
        "{err}"
    );
    // A real run: refused before the agent starts, so no panic can orphan it.
    let dir = scratch();
    let marker = dir.path().join("started");
    let script = format!("touch {}; exec sleep 600", marker.display());
    let mut guard = Guard::start(
        dir.path(),
        [
            "--ready-on",
            HUGE,
            "--ready-timeout",
            HUGE,
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    assert_eq!(guard.code(), 125, "{}", guard.log());
    assert!(!marker.exists(), "the agent must not start");
}

/// Lines from a subscribed connection until the first drain event that satisfies `pick`.
fn drain_event(reader: &mut BufReader<UnixStream>, pick: impl Fn(&Value) -> bool) -> Value {
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("a line from the guard");
        assert!(n > 0, "the guard closed the subscription");
        let event: Value = serde_json::from_str(&line).expect("JSON");
        if event["event"] == "drain" && pick(&event) {
            return event;
        }
    }
}

/// One request on a fresh connection; its reply.
fn request(socket: &Path, line: &str) -> Value {
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream.set_read_timeout(Some(SOON)).expect("timeout");
    stream.write_all(line.as_bytes()).expect("write");
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .expect("a reply");
    serde_json::from_str(&reply).unwrap_or_else(|_| panic!("a JSON reply to {line}: {reply:?}"))
}

const HOURS_48_MS: u64 = 48 * 3600 * 1000;

#[test]
fn extensions_are_capped_at_48_hours_by_either_socket_and_nothing_breaks() {
    let dir = scratch();
    let ready = dir.path().join("ready");
    // Hears the drain signal and does nothing; exits 0 on SIGTERM.
    let script = format!(
        "import os, signal, time\n\
         signal.signal(signal.SIGUSR1, lambda *_: None)\n\
         signal.signal(signal.SIGTERM, lambda *_: os._exit(0))\n\
         open('{}', 'w').close()\n\
         while True: time.sleep(1)\n",
        ready.display()
    );
    let mut guard = Guard::start(
        dir.path(),
        [
            "--drain-signal",
            "USR1",
            "--drain-timeout",
            "10m",
            "--health-listen",
            "127.0.0.1:0",
            "--",
            "python3",
            "-c",
            &script,
        ],
    );
    wait_until("the agent is up", SOON, || ready.exists());
    let addr = guard.health_addr();
    let observer = UnixStream::connect(&guard.socket).expect("connect");
    observer.set_read_timeout(Some(SOON)).expect("timeout");
    (&observer)
        .write_all(b"{\"op\":\"subscribe\"}\n")
        .expect("subscribe");
    let mut events = BufReader::new(observer);
    assert_eq!(guard.ctl(&["drain"]).0, 0);
    drain_event(&mut events, |_| true);
    // The most EXTEND_TIMEOUT_USEC can say: 584,542 years.
    let notify = UnixDatagram::unbound().expect("socket");
    notify
        .send_to(
            b"EXTEND_TIMEOUT_USEC=18446744073709551615",
            guard.notify_socket(),
        )
        .expect("send");
    let moved = drain_event(&mut events, |e| {
        e["deadline_in_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 3_600_000)
    });
    let in_ms = moved["deadline_in_ms"].as_u64().expect("ms");
    assert!(
        (HOURS_48_MS - 3_600_000..=HOURS_48_MS).contains(&in_ms),
        "{moved}"
    );
    let deadline = humantime::parse_rfc3339(moved["deadline"].as_str().expect("text"))
        .expect("an RFC 3339 deadline");
    let from_now = deadline
        .duration_since(SystemTime::now())
        .expect("in the future");
    assert!(
        from_now <= Duration::from_millis(HOURS_48_MS + 60_000),
        "{moved}"
    );
    // Both status paths still answer, with the capped deadline.
    let status = guard.status();
    assert!(
        status["drain"]["deadline_in_ms"].as_u64() <= Some(HOURS_48_MS),
        "{status}"
    );
    let (code, _, body) = http(&addr, "GET", "/status");
    assert_eq!(code, 200);
    let body: Value = serde_json::from_str(&body).expect("/status is JSON");
    assert_eq!(body["phase"], "draining");
    // The control socket's `extend`: too much is the most; what is not a positive number is
    // refused in words, never with a dropped connection.
    for (line, ok) in [
        ("{\"op\":\"extend\",\"seconds\":1e308}\n", true),
        ("{\"op\":\"extend\",\"seconds\":1e309}\n", false),
        ("{\"op\":\"extend\",\"seconds\":NaN}\n", false),
        ("{\"op\":\"extend\",\"seconds\":Infinity}\n", false),
        ("{\"op\":\"extend\",\"seconds\":-Infinity}\n", false),
        ("{\"op\":\"extend\",\"seconds\":-5}\n", false),
        ("{\"op\":\"extend\",\"seconds\":0}\n", false),
    ] {
        let reply = request(&guard.socket, line);
        assert_eq!(reply["ok"], ok, "{line}: {reply}");
        if !ok {
            assert!(reply["error"].is_string(), "{line}: {reply}");
        }
    }
    let status = guard.status();
    assert!(
        status["drain"]["deadline_in_ms"].as_u64() <= Some(HOURS_48_MS),
        "{status}"
    );
    assert!(!guard.log().contains("moved earlier"), "{}", guard.log());
    assert_eq!(guard.ctl(&["drained"]).0, 0);
    assert_eq!(guard.code(), 0, "{}", guard.log());
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
}

/// A guard command whose control socket is the default one, in `runtime_dir` (as systemd's
/// `RuntimeDirectory=` gives it).
fn default_socket_command(runtime_dir: &Path) -> Command {
    let mut cmd = command();
    cmd.env_remove("AGENT_GUARD_SOCKET")
        .env_remove("XDG_RUNTIME_DIR")
        .env("RUNTIME_DIRECTORY", runtime_dir);
    cmd
}

/// Refused with exit 125 in one line naming `dir`, and the agent never started.
fn refused_socket_dir(dir: &Path, scratch: &Path, cmd: Command, marker: &Path, why: &str) {
    let mut guard = Guard::spawn(scratch, cmd);
    assert_eq!(guard.code(), 125, "{}", guard.log());
    let log = guard.log();
    assert_eq!(log.lines().count(), 1, "one line: {log}");
    assert!(log.contains(&dir.display().to_string()), "{log}");
    assert!(log.contains(why), "{log}");
    assert!(!marker.exists(), "the agent must not start");
}

#[test]
fn a_socket_directory_others_may_write_in_is_refused_and_a_new_one_is_private() {
    let dir = scratch();
    let shared = dir.path().join("shared");
    fs::create_dir(&shared).expect("mkdir");
    chmod(&shared, 0o777);
    let marker = dir.path().join("started");
    let mut cmd = default_socket_command(&shared);
    cmd.args(["--", "touch", marker.to_str().expect("utf-8")]);
    refused_socket_dir(&shared, dir.path(), cmd, &marker, "mode 0777");
    assert_eq!(
        fs::read_dir(&shared).expect("ls").count(),
        0,
        "nothing made in it"
    );
    // Missing: created 0700 (its parents too), and used.
    let fresh = dir.path().join("new/agent-guard");
    let mut cmd = default_socket_command(&fresh);
    cmd.args(["--", "touch", marker.to_str().expect("utf-8")]);
    let mut guard = Guard::spawn(dir.path(), cmd);
    assert_eq!(guard.code(), 0, "{}", guard.log());
    assert!(marker.exists());
    assert_eq!(mode_of(&fresh), 0o700);
}

#[test]
fn a_socket_directory_of_another_user_is_refused() {
    if !require_root() {
        return;
    }
    let dir = scratch();
    let foreign = dir.path().join("foreign");
    fs::create_dir(&foreign).expect("mkdir");
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).expect("chown");
    chmod(&foreign, 0o700);
    let marker = dir.path().join("started");
    let mut cmd = default_socket_command(&foreign);
    cmd.args(["--", "touch", marker.to_str().expect("utf-8")]);
    refused_socket_dir(&foreign, dir.path(), cmd, &marker, "belongs to uid 65534");
}

/// The reported attack: a guard that is not root, with neither RUNTIME_DIRECTORY nor
/// XDG_RUNTIME_DIR, falls back to /tmp/agent-guard-UID, which another user made first.
#[test]
fn the_tmp_fallback_made_first_by_another_user_is_refused() {
    if !require_root() {
        return;
    }
    let nobody = 65534;
    // The binary where `nobody` can run it (the build tree may be private).
    let bin_dir = tempfile::Builder::new()
        .prefix("ag-bin-")
        .tempdir()
        .expect("tempdir");
    chmod(bin_dir.path(), 0o755);
    let guard_bin = bin_dir.path().join("agent-guard");
    fs::copy(bin(), &guard_bin).expect("copy the binary");
    chmod(&guard_bin, 0o755);
    let taken = PathBuf::from(format!("/tmp/agent-guard-{nobody}"));
    let _ = fs::remove_dir_all(&taken);
    // Made by root, a user other than the guard's, and left writable by all.
    fs::create_dir(&taken).expect("mkdir");
    chmod(&taken, 0o777);
    let out = Command::new(&guard_bin)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("AGENT_GUARD_IMDS", "off")
        .env("AGENT_GUARD_HEALTH_LISTEN", "off")
        .current_dir("/")
        .uid(nobody)
        .gid(nobody)
        .args(["--", "true"])
        .output()
        .expect("the guard runs as nobody");
    let _ = fs::remove_dir_all(&taken);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("socket directory /tmp/agent-guard-65534"),
        "{err}"
    );
}

fn agent_pid(guard: &Guard) -> i32 {
    let pid = guard.status()["agent_pid"].as_i64().expect("agent_pid");
    i32::try_from(pid).expect("a pid")
}

#[test]
fn an_agent_that_leaves_its_process_group_still_gets_the_stop_signal() {
    let dir = scratch();
    let moved = dir.path().join("moved");
    // The process-group path (`--cgroup off`, or no cgroup to be had): with a cgroup the agent
    // cannot leave what the stop signal reaches (tests/e2e/cgroup.rs).
    let mut guard = Guard::start(
        dir.path(),
        [
            "--cgroup".as_ref(),
            "off".as_ref(),
            "--".as_ref(),
            fixture("group_leaver.py").as_os_str(),
            moved.as_os_str(),
        ],
    );
    wait_until("the agent left its group", SOON, || moved.exists());
    let agent = agent_pid(&guard);
    let group: i32 = read(&moved).trim().parse().expect("a pgid");
    assert_ne!(group, agent, "the agent is in another group now");
    guard.signal(libc::SIGTERM);
    assert_eq!(
        guard.code(),
        0,
        "the agent's own exit on SIGTERM:\n{}",
        guard.log()
    );
    assert!(gone(agent));
    assert!(
        guard.log().contains("left its process group"),
        "{}",
        guard.log()
    );
}

#[test]
fn an_agent_that_left_its_group_and_ignores_sigterm_is_killed_after_the_stop_timeout() {
    let dir = scratch();
    let moved = dir.path().join("moved");
    let mut guard = Guard::start(
        dir.path(),
        [
            "--stop-timeout".as_ref(),
            "1s".as_ref(),
            "--".as_ref(),
            fixture("group_leaver.py").as_os_str(),
            moved.as_os_str(),
            "--ignore-term".as_ref(),
        ],
    );
    wait_until("the agent left its group", SOON, || moved.exists());
    let agent = agent_pid(&guard);
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 137, "SIGKILL reached it:\n{}", guard.log());
    assert!(gone(agent));
}

#[test]
fn a_stopped_agent_is_continued_after_the_stop_signal() {
    let dir = scratch();
    let ready = dir.path().join("ready");
    // Exits 0 on SIGTERM; SIGSTOP stops it.
    let script = format!(
        "import os, signal, time\n\
         signal.signal(signal.SIGTERM, lambda *_: os._exit(0))\n\
         open('{}', 'w').close()\n\
         while True: time.sleep(1)\n",
        ready.display()
    );
    let mut guard = Guard::start(
        dir.path(),
        ["--stop-timeout", "10m", "--", "python3", "-c", &script],
    );
    wait_until("the agent is up", SOON, || ready.exists());
    let agent = agent_pid(&guard);
    // Stopped by someone else (a debugger, an operator): a TSTP to the guard would stop the
    // guard as well (`job_control.rs`), which then could not act on the SIGTERM below.
    // SAFETY: kill(2) on the agent's pid, which the test just read.
    assert_eq!(unsafe { libc::kill(agent, libc::SIGSTOP) }, 0);
    wait_until("the agent is stopped", SOON, || {
        process(agent).is_some_and(|p| p.state == 'T')
    });
    guard.signal(libc::SIGTERM);
    // Not SIGKILLed after 10 minutes: continued, it handled SIGTERM.
    assert_eq!(guard.code(), 0, "{}", guard.log());
}

fn open_fds(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the guard's fds")
        .count()
}

#[test]
fn every_descriptor_sent_on_the_notify_socket_is_closed() {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let dir = scratch();
    let mut guard = Guard::start(dir.path(), ["--", "sleep", "600"]);
    let pid = guard.pid();
    let _ = guard.status(); // up, its sockets bound
    let before = open_fds(pid);
    let sock = UnixDatagram::unbound().expect("socket");
    sock.connect(guard.notify_socket()).expect("connect");
    let null = File::open("/dev/null").expect("/dev/null");
    // One more than the 16 a notification used to have room for.
    let fds = [null.as_raw_fd(); 17];
    let started = Instant::now();
    // 100 datagrams, in batches the guard reads before the next (the kernel bounds descriptors
    // in flight per user).
    for batch in 0..10 {
        for _ in 0..10 {
            let iov = [IoSlice::new(b"FDSTORE=1\nFDNAME=hostile")];
            sendmsg::<()>(
                sock.as_raw_fd(),
                &iov,
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            )
            .expect("sendmsg");
        }
        let mark = format!("batch {batch}");
        sock.send(format!("STATUS={mark}").as_bytes())
            .expect("send");
        wait_until("the guard read the batch", SOON, || {
            guard.status()["status"] == mark
        });
    }
    let after = open_fds(pid);
    assert!(
        after <= before + 2,
        "{before} fds before, {after} after 100 datagrams of 17"
    );
    let warnings = guard.log().lines().filter(|l| l.contains("WARN")).count();
    let allowed = started.elapsed().as_secs() as usize + 2;
    assert!(
        warnings <= allowed,
        "{warnings} warnings in {:?}: at most one a second\n{}",
        started.elapsed(),
        guard.log()
    );
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 143);
}

#[test]
fn a_notice_that_changes_on_every_poll_is_kept_bounded_and_a_huge_value_logged_short() {
    let dir = scratch();
    let sim = ImdsSim::start().expect("sim");
    let mut guard = Guard::start(
        dir.path(),
        [
            "--imds",
            "on",
            "--imds-endpoint",
            &sim.url(),
            "--imds-poll",
            "50ms",
            "--",
            "sleep",
            "600",
        ],
    );
    let latest = |guard: &Guard| {
        guard.status()["imds"]["notices"]
            .as_array()
            .and_then(|n| n.last().cloned())
            .unwrap_or_default()
    };
    for n in 0..40 {
        let body = format!("{{\"noticeTime\":\"2026-11-28T08:22:00Z\",\"n\":{n}}}");
        sim.set_rebalance(Some(body.clone()));
        wait_until("the guard saw the new body", SOON, || {
            latest(&guard)["value"] == body.as_str()
        });
    }
    let kept = guard.status()["imds"]["notices"]
        .as_array()
        .map_or(0, Vec::len);
    assert!((1..=16).contains(&kept), "{kept} notices kept");
    // A 60 KiB lifecycle state (within the 64 KiB IMDS answers are read to): seen, shown and
    // logged as its start and its size.
    let huge = "x".repeat(60 << 10);
    sim.set_lifecycle_state(Some(&huge));
    wait_until("the guard saw it", SOON, || {
        guard.status()["imds"]["lifecycle_state"]
            .as_str()
            .is_some_and(|s| s.starts_with("xxxx"))
    });
    sim.set_lifecycle_state(Some("InService"));
    let shown = guard.status()["imds"]["lifecycle_state"]
        .as_str()
        .map_or(0, str::len);
    assert!(shown < 1024, "{shown} bytes shown");
    let log = guard.log();
    assert!(log.len() < 256 * 1024, "{} bytes of log", log.len());
    assert!(log.contains("bytes in all"), "the cut is said");
    // A 10 MB one is not read at all: that is said once.
    sim.set_lifecycle_state(Some(&"x".repeat(10 << 20)));
    wait_until("the guard saw it", SOON, || {
        guard.log().contains("more than 64 KiB")
    });
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 143);
}

#[test]
fn a_config_file_that_is_not_a_regular_file_is_refused_at_once() {
    let dir = scratch();
    let fifo = dir.path().join("fifo.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let big = dir.path().join("big.toml");
    fs::write(&big, "#".repeat(2 << 20)).expect("write");
    for (path, why) in [
        (Path::new("/dev/zero"), "not a regular file"),
        (fifo.as_path(), "not a regular file"),
        (dir.path(), "not a regular file"),
        (big.as_path(), "too large"),
    ] {
        let mut cmd = command();
        cmd.arg("--config")
            .arg(path)
            .args(["--check-config", "--", "true"]);
        // Were the file read whole, /dev/zero would take every byte of memory first.
        // SAFETY: setrlimit is async-signal-safe; this runs in the child before exec.
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 2 << 30,
                    rlim_max: 2 << 30,
                };
                libc::setrlimit(libc::RLIMIT_AS, &limit);
                Ok(())
            });
        }
        let mut guard = Guard::spawn(dir.path(), cmd);
        assert_eq!(guard.code(), 125, "{}: {}", path.display(), guard.log());
        let err = guard.log();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&path.display().to_string()) && err.contains(why),
            "{err}"
        );
    }
}
