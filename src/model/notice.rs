//! Which kind of notice IMDS gave: the journal's, `/status`'s and the metrics' one name for it.

use crate::names::named_enum;

named_enum! {
    /// Which kind of notice.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum NoticeKind {
        LifecycleState = "target-lifecycle-state",
        Spot = "spot-interruption",
        Rebalance = "rebalance-recommendation",
        /// An EC2 scheduled event (`events/maintenance/scheduled`).
        ScheduledEvent = "scheduled-event",
    }
}
