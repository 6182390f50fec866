//! The agent's reports about itself (status text, `STOPPING=1`, watchdog pings, work in flight,
//! what made it ready): written only by the servers that face the agent, read by everyone else
//! through a `watch`.

use std::sync::Arc;

use tokio::sync::watch;

use crate::model::report::AgentReport;
use crate::model::run::RunStats;

/// The writer of the agent's report, shared by the control socket and the sd_notify socket.
#[derive(Clone)]
pub struct Reports {
    tx: Arc<watch::Sender<AgentReport>>,
}

impl Default for Reports {
    fn default() -> Self {
        Reports {
            tx: Arc::new(watch::channel(AgentReport::default()).0),
        }
    }
}

impl Reports {
    /// Changes the report; readers see the change at once.
    pub fn update(&self, f: impl FnOnce(&mut AgentReport)) {
        self.tx.send_modify(f);
    }

    /// The report now.
    pub fn get(&self) -> AgentReport {
        self.tx.borrow().clone()
    }

    /// A reader's handle.
    pub fn subscribe(&self) -> watch::Receiver<AgentReport> {
        self.tx.subscribe()
    }

    /// Follows the supervisor's runs until it is gone: when it starts a new agent (`--restart`),
    /// what the last one reported does not carry over.
    pub async fn follow_restarts(self, mut run: watch::Receiver<RunStats>) {
        let mut pid = run.borrow_and_update().agent_pid;
        while run.changed().await.is_ok() {
            let now = run.borrow_and_update().agent_pid;
            if now != pid && pid.is_some() {
                self.update(AgentReport::agent_restarted);
            }
            pid = now;
        }
    }
}
