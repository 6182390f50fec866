//! Why a drain started, and whether it ends the instance: the reason every part decides on.

use crate::names::named_enum;

named_enum! {
    /// Why a drain started. The names are the protocol's (`{"event":"drain","reason":…}`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum DrainReason {
        /// The Auto Scaling group set the target lifecycle state to `Terminated`.
        ScaleIn = "scale-in",
        /// EC2 posted a spot `instance-action`; the notice time is a hard deadline.
        SpotInterruption = "spot-interruption",
        /// EC2 recommended a rebalance and `--on-rebalance drain` is set.
        Rebalance = "rebalance",
        /// SIGTERM or SIGINT reached the guard.
        Signal = "signal",
        /// An operator asked for it on the control socket.
        Operator = "operator",
        /// The instance is going back to a warm pool.
        WarmPool = "warm-pool",
        /// An EC2 scheduled event (reboot, stop, retirement, maintenance) is near
        /// (`--on-maintenance drain`). The instance stays in its group: no hook is completed.
        Maintenance = "maintenance",
    }
}

impl DrainReason {
    /// Whether a drain for this reason ends with the instance leaving the group, so that the
    /// termination lifecycle hook is to be completed once the agent is gone.
    pub fn ends_instance(self) -> bool {
        matches!(
            self,
            DrainReason::ScaleIn | DrainReason::WarmPool | DrainReason::SpotInterruption
        )
    }

    /// Whether a drain for this reason ends the instance without the group deregistering it
    /// from its load balancers first (a scale-in is deregistered by the group before
    /// `Terminating:Wait`), so that the guard deregisters it before the agent hears of the drain.
    pub fn deregisters(self) -> bool {
        matches!(
            self,
            DrainReason::SpotInterruption | DrainReason::Maintenance
        )
    }

    /// The reason that decides once `later` came after this one: a reason that ends the instance
    /// is never taken back (the state machine only ever upgrades a drain to one).
    pub fn then(self, later: DrainReason) -> DrainReason {
        if self.ends_instance() && !later.ends_instance() {
            self
        } else {
            later
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reason that decides: a later reason that ends the instance overtakes one that does
    /// not (a scale-in during an operator's drain); nothing takes back one that does.
    #[test]
    fn the_deciding_reason_table() {
        use DrainReason::*;
        let cases = [
            (Operator, ScaleIn, ScaleIn),
            (Maintenance, SpotInterruption, SpotInterruption),
            (Signal, WarmPool, WarmPool),
            (ScaleIn, Operator, ScaleIn),
            (SpotInterruption, Signal, SpotInterruption),
            (Operator, Signal, Signal),
            (ScaleIn, SpotInterruption, SpotInterruption),
        ];
        for (first, later, decides) in cases {
            assert_eq!(first.then(later), decides, "{first} then {later}");
        }
    }
}
