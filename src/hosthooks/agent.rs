//! What identifies a guard's agent to the other guards on the host, and whether it still runs
//! once its guard is gone: its process group and its start time, read from /proc, and its
//! cgroup when it runs in one of its own.
//!
//! A guard SIGKILLed mid-drain leaves its agent running as an orphan; the kernel's lock on the
//! registration says only that the guard is gone. The agent is the leader of its own process
//! group, so its pgid names the group, and the leader's start time (clock ticks since boot,
//! /proc/PID/stat field 22) tells it from a later process given the same number. Linux never
//! gives a new process a number still in use as a process group, so while any member of the
//! group lives the number is the group's: the group is gone once no live process has that pgid,
//! or once the number names a process that started at another time.
//!
//! A `setsid()` grandchild leaves the group, not the agent's cgroup (`--cgroup`): with one
//! recorded, the agent runs while either its group or its cgroup holds a process, which is what
//! the guard itself waits for before it calls its own agent gone.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::process::cgroup;

/// A guard's agent, as recorded in its registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentId {
    /// The agent's process group (the agent's own pid: it leads its group).
    pub pgid: i32,
    /// The group leader's start time, in clock ticks since boot.
    pub start: u64,
    /// The agent's cgroup, when it runs in one of its own (its emptiness is the proof that
    /// every process of the agent is gone, setsid ones included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
}

/// One process as /proc/PID/stat tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    state: char,
    pgrp: i32,
    start: u64,
}

impl Stat {
    /// A zombie (or a dead task) does nothing: it only waits to be reaped.
    fn runs(self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses /proc/PID/stat: `pid (comm) state ppid pgrp … starttime …`; the command name may
/// hold spaces and parentheses, so the fields are counted after its last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        // Field 22 of the line; the first after the name is field 3.
        start: fields.get(19)?.parse().ok()?,
    })
}

fn stat_of(pid: &str) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

impl AgentId {
    /// The agent whose pid is `pid`, in the cgroup `cgroup` if it has one of its own, as it runs
    /// now; `None` if /proc cannot say (it is gone).
    pub fn of(pid: i32, cgroup: Option<PathBuf>) -> Option<AgentId> {
        let stat = stat_of(&pid.to_string())?;
        Some(AgentId {
            pgid: stat.pgrp,
            start: stat.start,
            cgroup,
        })
    }

    /// Whether any process of the agent still runs (zombies aside): one in its cgroup, if it
    /// has one, or in its process group. A cgroup that cannot be read counts as populated, and
    /// so does /proc that cannot be listed: the other guards then wait, bounded, rather than end
    /// the instance under it.
    pub fn alive(&self) -> bool {
        // Both: a process the agent moved out of its cgroup (root may) still holds the group.
        self.cgroup
            .as_deref()
            .is_some_and(cgroup::recorded_populated)
            || self.group_alive()
    }

    /// Whether any process of the agent's process group still runs (zombies aside).
    fn group_alive(&self) -> bool {
        if let Some(leader) = stat_of(&self.pgid.to_string())
            && leader.start != self.start
        {
            // The number is another process's: the group it named is gone.
            return false;
        }
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return true;
        };
        procs.flatten().any(|entry| {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                return false;
            };
            stat_of(pid).is_some_and(|s| s.pgrp == self.pgid && s.runs())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_whatever_the_command_name() {
        let line = "812 (a (weird) name) S 1 812 812 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    123456 1000 10 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: 'S',
                pgrp: 812,
                start: 123456
            })
        );
        assert_eq!(parse_stat("812 (x) Z"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn a_group_lives_while_a_member_runs_and_not_after() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .expect("sleep");
        let pid = i32::try_from(child.id()).expect("pid");
        let id = AgentId::of(pid, None).expect("in /proc");
        assert_eq!(id.pgid, pid, "its own group");
        assert!(id.alive());
        let reused = AgentId {
            start: id.start + 1,
            ..id.clone()
        };
        assert!(!reused.alive(), "another start time: another process");
        child.kill().expect("kill");
        child.wait().expect("reaped");
        assert!(!id.alive());
    }

    /// Issue 25: a `setsid()` grandchild leaves the agent's group, not its cgroup: with the
    /// group gone, the agent runs while its recorded cgroup holds a process.
    #[test]
    fn an_agent_whose_group_is_gone_lives_while_its_cgroup_is_populated() {
        use std::os::unix::process::CommandExt;
        let Some(cgroup) = crate::process::cgroup::AgentCgroup::for_test("unit-agent-id") else {
            return;
        };
        let mut agent = std::process::Command::new("true")
            .process_group(0)
            .spawn()
            .expect("true");
        let pid = i32::try_from(agent.id()).expect("pid");
        let id = AgentId::of(pid, Some(cgroup.path().to_path_buf())).expect("in /proc");
        agent.wait().expect("reaped");
        assert!(!id.alive(), "group gone, cgroup empty");
        let join = cgroup.join_fd();
        let mut left = std::process::Command::new("sleep");
        left.arg("30");
        // SAFETY: one write(2) between fork and exec.
        unsafe { left.pre_exec(move || crate::process::cgroup::enter(join)) };
        let mut left = left.spawn().expect("sleep in the cgroup");
        let alive = id.alive();
        let json = serde_json::to_string(&id).expect("json");
        let back: AgentId = serde_json::from_str(&json).expect("read back");
        let alive_as_recorded = back.alive();
        left.kill().expect("kill");
        left.wait().expect("reaped");
        assert!(alive, "its group is gone, its cgroup holds a process");
        assert!(alive_as_recorded, "recorded with the cgroup: {json}");
        assert!(!id.alive(), "the cgroup is empty again");
        cgroup.remove();
        assert!(
            !id.alive(),
            "a cgroup removed was empty (the kernel removes no other)"
        );
    }

    /// A recorded path that is not a cgroup (another user of the hooks directory may have
    /// written it) counts as an agent still there, and is never read as a cgroup: a FIFO in
    /// place of `cgroup.events` does not hold the reader up.
    #[test]
    fn a_recorded_cgroup_that_is_not_one_is_not_trusted_and_does_not_block() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = std::ffi::CString::new(
            dir.path()
                .join("cgroup.events")
                .as_os_str()
                .as_encoded_bytes(),
        )
        .expect("path");
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let id = AgentId {
            pgid: i32::MAX,
            start: 0,
            cgroup: Some(dir.path().to_path_buf()),
        };
        assert!(id.alive(), "not a cgroup: not taken for an empty one");
        let gone = AgentId {
            cgroup: Some(dir.path().join("removed")),
            ..id
        };
        assert!(!gone.alive(), "nothing there: removed, so it was empty");
    }
}
