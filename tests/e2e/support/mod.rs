//! Helpers shared by the end-to-end tests: run the real binary, wait on conditions (never on
//! fixed sleeps), and look at processes through /proc.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The generous bound for anything that should happen "soon" on a loaded 2-core machine.
pub const SOON: Duration = Duration::from_secs(15);

/// Whether the tests run in CI (`CI=true`), where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Whether `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            use std::os::unix::fs::PermissionsExt;
            fs::metadata(dir.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Whether the calling test may go on: `ok`, or a skip for want of `missing` (say what and how
/// to get it). A skip must not pass as green where it hides a missing install step: under
/// `CI=true` it panics, failing the test. Elsewhere it is recorded, and one line listing every
/// skipped test is printed when the test binary exits (a test's own output is captured, so a
/// line printed from inside the test would not be seen).
pub fn require(ok: bool, missing: &str) -> bool {
    if ok {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    if in_ci() {
        panic!(
            "{test} cannot run: {missing}; with CI=true a skip is a failure (install it in .ci/run)"
        );
    }
    record_skip(format!("{test} ({missing})"));
    false
}

/// [`require`] for a program on PATH.
pub fn require_tool(tool: &str) -> bool {
    require(have(tool), &format!("{tool} is not installed"))
}

/// [`require`] for root, for tests that act as another user.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no side effects.
    require(unsafe { libc::geteuid() } == 0, "needs root")
}

static SKIPS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn record_skip(what: String) {
    static AT_EXIT: std::sync::Once = std::sync::Once::new();
    SKIPS.lock().unwrap_or_else(|e| e.into_inner()).push(what);
    // SAFETY: registers a plain function with no arguments; it runs once, at exit.
    AT_EXIT.call_once(|| unsafe {
        libc::atexit(print_skips);
    });
}

/// The one summary line, at exit (after the test harness's own report).
extern "C" fn print_skips() {
    let skips = SKIPS.lock().unwrap_or_else(|e| e.into_inner());
    if !skips.is_empty() {
        eprintln!(
            "SKIPPED {} test(s), green but untested here (CI=true makes a skip a failure): {}",
            skips.len(),
            skips.join("; ")
        );
    }
}

/// The agent-guard binary built for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_agent-guard")
}

/// A test fixture's path.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// An agent for `sh -c`: runs `setup` (its traps), says so by creating `armed`, then idles. A
/// guard is ready before its agent's shell has read its first line, and a signal that came before
/// the traps would end the shell by the default action: a test that has the guard signal the
/// agent soon after the start waits for `armed` first ([`wait_armed`]).
pub fn armed_shell(setup: &str, armed: &Path) -> String {
    format!(
        "{setup}; touch {}; while :; do sleep 0.05; done",
        armed.display()
    )
}

/// Waits until an [`armed_shell`] has set its traps.
pub fn wait_armed(armed: &Path) {
    wait_until("the agent's traps are set", SOON, || armed.exists());
}

/// A scratch directory removed when dropped.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("agent-guard-test-")
        .tempdir()
        .expect("a temporary directory")
}

/// Polls `check` until it is true, or panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Lets `time` pass on purpose, for a test whose behaviour IS time passing: something must NOT
/// happen within it (no call, no second warning, no early phase), or inputs must be spread over
/// it. `why` says which, in the test's words. Never a way to wait for something to happen: that
/// is [`wait_until`]'s job.
pub fn let_time_pass(why: &str, time: Duration) {
    eprintln!("letting {time:?} pass: {why}");
    std::thread::sleep(time);
}

/// A file's text, or "" if it does not exist yet.
pub fn read(path: impl AsRef<Path>) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// A guard started in the background, its stderr going to a file (a pipe could fill and block it).
pub struct Guard {
    pub child: Child,
    pub stderr: PathBuf,
    pub started: Instant,
    /// Its control socket (from AGENT_GUARD_SOCKET; a `--socket` flag would override it).
    pub socket: PathBuf,
}

/// A command for the guard with a clean environment: no AGENT_GUARD_*, RUST_LOG or AWS_* from
/// the developer's shell can change what a test sees.
///
/// IMDS is off unless a test turns it on with a flag (which beats the environment) and points it
/// at a simulator: a test must never send a packet to the real 169.254.169.254.
pub fn command() -> Command {
    let mut cmd = Command::new(bin());
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("AGENT_GUARD_")
            || key_text == "RUST_LOG"
            || key_text.starts_with("AWS_")
        {
            cmd.env_remove(&key);
        }
    }
    cmd.env("AGENT_GUARD_IMDS", "off");
    // No port 8099 on all interfaces: tests that need the endpoint ask for 127.0.0.1:0.
    cmd.env("AGENT_GUARD_HEALTH_LISTEN", "off");
    // Each guard its own control socket: tests run at once and many agents share a name.
    cmd.env("AGENT_GUARD_SOCKET", unique_socket());
    cmd.stdin(Stdio::null());
    // And no signal ignored: a test binary started from a script's background job (`cmd &`
    // without job control, nohup) inherits SIGINT and SIGQUIT (or SIGHUP) ignored, and every
    // guard would pass that on. A test that wants one ignored says so in a pre_exec of its own,
    // which runs after this one.
    // SAFETY: only signal(2), async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            for sig in 1..=libc::SIGSYS {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            Ok(())
        });
    }
    cmd
}

/// A fresh socket path, short enough for sun_path.
pub fn unique_socket() -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    std::env::temp_dir().join(format!("ag-{}-{n}.sock", std::process::id()))
}

/// The socket a prepared command will use.
fn socket_of(cmd: &Command) -> PathBuf {
    cmd.get_envs()
        .find(|(k, _)| *k == "AGENT_GUARD_SOCKET")
        .and_then(|(_, v)| v)
        .map(PathBuf::from)
        .unwrap_or_default()
}

impl Guard {
    /// Starts `agent-guard ARGS` with stderr captured in `dir/guard.stderr`.
    pub fn start<I, S>(dir: &Path, args: I) -> Guard
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = command();
        cmd.args(args);
        Guard::spawn(dir, cmd)
    }

    /// Starts a prepared command with stderr captured in `dir/guard.stderr`.
    pub fn spawn(dir: &Path, mut cmd: Command) -> Guard {
        cmd.stdout(Stdio::null());
        Guard::spawn_keeping_stdout(dir, cmd)
    }

    /// Like `spawn`, with stdout (the agent's) captured in `dir/guard.stdout`.
    pub fn spawn_capturing(dir: &Path, mut cmd: Command) -> Guard {
        cmd.stdout(fs::File::create(dir.join("guard.stdout")).expect("stdout file"));
        Guard::spawn_keeping_stdout(dir, cmd)
    }

    fn spawn_keeping_stdout(dir: &Path, mut cmd: Command) -> Guard {
        // Each guard registers its hooks in its own test's directory, never in the host's
        // /run/agent-guard among the other tests' guards; a `--hooks-dir` flag still wins.
        cmd.env("AGENT_GUARD_HOOKS_DIR", dir.join("hooks"));
        let stderr = dir.join("guard.stderr");
        let file = fs::File::create(&stderr).expect("stderr file");
        cmd.stderr(file);
        let socket = socket_of(&cmd);
        let child = cmd.spawn().expect("agent-guard starts");
        Guard {
            child,
            stderr,
            started: Instant::now(),
            socket,
        }
    }

    /// The agent's sd_notify socket.
    pub fn notify_socket(&self) -> PathBuf {
        self.socket.with_extension("notify")
    }

    /// `agent-guard ctl --socket <this guard's> ARGS`: (code, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(bin())
            .arg("ctl")
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("ctl runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The guard's `status` reply as JSON (once its socket exists).
    pub fn status(&self) -> serde_json::Value {
        wait_until("the control socket", SOON, || self.socket.exists());
        let (code, out, err) = self.ctl(&["--json", "status"]);
        assert_eq!(
            code,
            0,
            "ctl status failed: {err}\nguard log:\n{}",
            self.log()
        );
        serde_json::from_str(out.trim()).expect("status is JSON")
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `sig` to the guard.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    /// Waits for the guard to exit, within `SOON` plus `extra`.
    pub fn wait(&mut self, extra: Duration) -> ExitStatus {
        let deadline = SOON + extra;
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if start.elapsed() > deadline {
                let _ = self.child.kill();
                panic!(
                    "agent-guard did not exit within {deadline:?}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The guard's exit code, after waiting for it.
    pub fn code(&mut self) -> i32 {
        let status = self.wait(Duration::ZERO);
        status.code().unwrap_or_else(|| {
            panic!(
                "agent-guard itself died of a signal: {status:?}\n{}",
                self.log()
            )
        })
    }

    /// What the guard wrote on stderr so far.
    pub fn log(&self) -> String {
        read(&self.stderr)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // A failing test's guards say what they did: CI prints the test's output, never the
        // scratch directory (gone with it).
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(80)..];
            eprintln!(
                "--- guard log {} (last {} of {} lines) ---\n{}\n--- end ---",
                self.stderr.display(),
                tail.len(),
                lines.len(),
                tail.join("\n")
            );
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `agent-guard ARGS` to completion; returns (code, stdout, stderr).
pub fn run<I, S>(args: I) -> (i32, String, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = command().args(args).output().expect("agent-guard runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One process as /proc shows it.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub state: char,
    pub ppid: i32,
    // Read by no test, but shown when one prints a process it did not expect (Debug): which
    // group a leftover process is in is the first thing to know.
    #[allow(dead_code)]
    pub pgrp: i32,
}

/// Every process on the machine.
pub fn processes() -> Vec<Proc> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some(p) = process(pid) {
            out.push(p);
        }
    }
    out
}

/// One process, if it exists.
pub fn process(pid: i32) -> Option<Proc> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    Some(Proc {
        pid,
        state,
        ppid,
        pgrp,
    })
}

/// Whether `pid` is gone or a zombie (it does no more work).
pub fn gone(pid: i32) -> bool {
    process(pid).is_none_or(|p| p.state == 'Z' || p.state == 'X')
}

/// The children of `pid`.
pub fn children(pid: i32) -> Vec<Proc> {
    processes().into_iter().filter(|p| p.ppid == pid).collect()
}

/// The lines of a recorder fixture's log.
pub fn recorded(log: &Path) -> Vec<String> {
    read(log).lines().map(str::to_string).collect()
}

/// A fixture's JSON-lines log.
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    read(path)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The monotonic time (s) of the first entry of a JSON-lines log that satisfies `pick`.
pub fn first_time(
    entries: &[serde_json::Value],
    pick: impl Fn(&serde_json::Value) -> bool,
) -> Option<f64> {
    entries
        .iter()
        .find(|e| pick(e))
        .and_then(|e| e["t"].as_f64())
}

/// A raw HTTP/1.1 exchange (`Connection: close`): (status, lower-cased head, body).
pub fn http(addr: &str, method: &str, path: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the health endpoint");
    stream.set_read_timeout(Some(SOON)).expect("timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_ascii_lowercase(), body.to_string())
}

impl Guard {
    /// The health endpoint's address, once it listens (`--health-listen 127.0.0.1:0`).
    pub fn health_addr(&self) -> String {
        let mut addr = String::new();
        wait_until("the health endpoint", SOON, || {
            addr = self.status()["health_listen"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            !addr.is_empty()
        });
        addr
    }
}

/// A guard command pointed at the simulated IMDS and Auto Scaling API, with test credentials.
pub fn aws_command(
    imds: &agent_guard::sim::imds::ImdsSim,
    asg: &agent_guard::sim::autoscaling::AutoScalingSim,
) -> Command {
    let mut cmd = command();
    cmd.env("AWS_ENDPOINT_URL_AUTO_SCALING", asg.url())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "AKIDTESTTESTTEST")
        .env("AWS_SECRET_ACCESS_KEY", "test-secret")
        .args([
            "--imds",
            "on",
            "--imds-endpoint",
            &imds.url(),
            "--imds-poll",
            "200ms",
        ]);
    cmd
}

/// The moto server `.ci/run` starts (`AGENT_GUARD_TEST_MOTO`), if it answers.
pub fn moto_url() -> Option<String> {
    let url = std::env::var("AGENT_GUARD_TEST_MOTO").ok()?;
    let addr = url.trim_start_matches("http://").to_string();
    std::net::TcpStream::connect(&addr).ok().map(|_| url)
}

/// A simulated instance in service in a simulated group: IMDS and the Auto Scaling API, with
/// the group's hooks put, as most lifecycle tests start.
pub struct World {
    pub imds: agent_guard::sim::imds::ImdsSim,
    pub asg: agent_guard::sim::autoscaling::AutoScalingSim,
}

impl World {
    pub fn start(
        group: &str,
        instance: &str,
        hooks: impl IntoIterator<Item = agent_guard::sim::autoscaling::Hook>,
    ) -> World {
        let imds = agent_guard::sim::imds::ImdsSim::start().expect("imds sim");
        let asg = agent_guard::sim::autoscaling::AutoScalingSim::start().expect("asg sim");
        asg.add_instance(group, instance, "InService");
        for hook in hooks {
            asg.put_hook(group, hook);
        }
        World { imds, asg }
    }

    /// The Auto Scaling calls named `action`, in the order the simulator received them.
    pub fn calls(&self, action: &str) -> Vec<agent_guard::sim::autoscaling::Call> {
        self.asg
            .calls()
            .into_iter()
            .filter(|c| c.action == action)
            .collect()
    }
}

/// A [`World`] with a load balancer: a simulated Elastic Load Balancing v2 API holding one
/// target group (`web`, port 8080) with a deregistration delay, of which the instance is a
/// healthy target when `attached` (and the group then lists the target group).
pub struct LbWorld {
    pub imds: agent_guard::sim::imds::ImdsSim,
    pub asg: agent_guard::sim::autoscaling::AutoScalingSim,
    pub elb: agent_guard::sim::elb::ElbSim,
    /// The target group's ARN.
    pub arn: String,
}

impl LbWorld {
    pub fn start(
        (group, instance): (&str, &str),
        hook: agent_guard::sim::autoscaling::Hook,
        delay: Duration,
        attached: bool,
    ) -> LbWorld {
        use agent_guard::sim::elb::{ElbSim, TargetGroupSpec};
        let World { imds, asg } = World::start(group, instance, [hook]);
        let elb = ElbSim::start().expect("elb sim");
        let arn =
            elb.add_target_group(TargetGroupSpec::new("web", 8080).deregistration_delay(delay));
        if attached {
            elb.add_healthy_target(&arn, instance, 8080);
            asg.set_target_groups(group, std::slice::from_ref(&arn));
        }
        LbWorld {
            imds,
            asg,
            elb,
            arn,
        }
    }

    /// The Auto Scaling calls named `action`, in the order the simulator received them.
    pub fn asg_calls(&self, action: &str) -> Vec<agent_guard::sim::autoscaling::Call> {
        self.asg
            .calls()
            .into_iter()
            .filter(|c| c.action == action)
            .collect()
    }

    /// The Elastic Load Balancing calls named `action`, in order.
    pub fn elb_calls(&self, action: &str) -> Vec<agent_guard::sim::autoscaling::Call> {
        self.elb
            .calls()
            .into_iter()
            .filter(|c| c.action == action)
            .collect()
    }
}
