//! The crate's pure vocabulary: the types several parts decide on or show, with no I/O and no
//! clock of their own. Everything here may be imported from anywhere above `process`.
//!
//! - `drain`: [`DrainReason`], and whether a drain ends the instance.
//! - `notice`: [`NoticeKind`], which kind of notice IMDS gave.
//! - `phase`: [`PhaseName`], the phase as the outside world names it.
//! - `lifecycle_state`: [`LifecycleState`], every Auto Scaling lifecycle state, parsed once.
//! - `hooks`: [`HookResult`], [`HookState`], [`Awaiting`]: lifecycle hooks as every part names them.
//! - `run`, `report`, `lifecycle`: snapshot types, each written by one owner and read by the
//!   others through a `watch`: the supervisor's run, the agent's reports, the lifecycle work.
//! - `load_balancer`: the load-balancer step's snapshot (target groups as last seen, the last
//!   deregistration), written only by `aws::deregistration`.
//! - `status`: the typed `status` reply of the control socket and `/status`.

pub(crate) mod drain;
pub(crate) mod hooks;
pub(crate) mod lifecycle;
pub(crate) mod lifecycle_state;
pub(crate) mod load_balancer;
pub(crate) mod notice;
pub(crate) mod phase;
pub(crate) mod report;
pub(crate) mod restart;
pub(crate) mod run;
pub(crate) mod status;

pub use self::drain::DrainReason;
pub use self::hooks::{Awaiting, HookResult, HookState};
pub use self::lifecycle_state::LifecycleState;
pub use self::notice::NoticeKind;
pub use self::phase::PhaseName;
pub use self::restart::RestartPolicy;
