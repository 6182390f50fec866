//! What the doctor saw on the instance, as plain data: gathered once (`gather`), judged
//! without I/O (`judge`). Each fact keeps the service's own words for what went wrong, so a
//! judgement can quote them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::aws::api::CallError;
use crate::aws::imds::ImdsError;

/// Everything the checks look at.
#[derive(Debug, Clone)]
pub struct Facts {
    pub command: CommandFact,
    pub imds: ImdsFact,
    pub region: RegionFact,
    pub credentials: CredentialsFact,
    pub aws: AwsFact,
    pub systemd: SystemdFact,
    pub port: PortFact,
    /// `--cgroup`: what the guard would get, or why it could not have one (`None` with `off`).
    pub cgroup: Option<Result<crate::process::cgroup::Probe, String>>,
    /// `--target-groups`: the target groups a drain deregisters from, and their health checks.
    pub load_balancer: LbFact,
}

/// The agent's program, looked up as the guard will look it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandFact {
    /// No command after `--` and none in the config file.
    Missing,
    Found(PathBuf),
    /// Not found, or not executable: the guard's own error line.
    Unusable(String),
}

/// What IMDS answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImdsFact {
    /// `--imds off`: the guard never asks, so neither does the doctor.
    NotAsked,
    /// No session token or no instance id.
    Failed(ImdsError),
    Answered(Metadata),
}

impl ImdsFact {
    pub fn metadata(&self) -> Option<&Metadata> {
        match self {
            ImdsFact::Answered(m) => Some(m),
            _ => None,
        }
    }
}

/// The instance as IMDS describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub endpoint: String,
    pub instance_id: String,
    /// `placement/region`.
    pub region: Option<String>,
    /// `instance-life-cycle`: `spot`, `on-demand`, …; `None` if it did not answer.
    pub life_cycle: Option<String>,
    pub tags: TagsFact,
    /// `autoscaling/target-lifecycle-state`.
    pub target_state: Option<String>,
}

/// Instance tags in metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagsFact {
    /// The `tags/instance` listing is empty: tags in metadata are off.
    Off,
    /// On, with the `aws:autoscaling:groupName` tag if the instance has it.
    On { group: Option<String> },
}

/// Where the region comes from: the environment wins, as in the guard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionFact {
    /// `AWS_REGION`, else `AWS_DEFAULT_REGION`.
    pub env: Option<String>,
    /// IMDS `placement/region`.
    pub imds: Option<String>,
}

impl RegionFact {
    /// The region the guard will use, and whether it came from the environment.
    pub fn resolved(&self) -> Option<(&str, bool)> {
        match (&self.env, &self.imds) {
            (Some(env), _) => Some((env, true)),
            (None, Some(imds)) => Some((imds, false)),
            (None, None) => None,
        }
    }
}

/// Which source of the SDK's credential chain answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialsFact {
    Found(CredentialSource),
    /// No source answered: the chain's own error.
    Missing(String),
}

/// The SDK's credential sources, as an operator names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    Environment,
    Profile,
    WebIdentity,
    Container,
    InstanceProfile,
    Other,
}

impl CredentialSource {
    pub fn describe(self) -> &'static str {
        match self {
            CredentialSource::Environment => "environment variables (AWS_ACCESS_KEY_ID)",
            CredentialSource::Profile => "a profile in the shared config files",
            CredentialSource::WebIdentity => "a web identity token (AWS_WEB_IDENTITY_TOKEN_FILE)",
            CredentialSource::Container => {
                "the container credentials endpoint (ECS task role or EKS Pod Identity)"
            }
            CredentialSource::InstanceProfile => "the instance profile (IMDS)",
            CredentialSource::Other => "a source the SDK did not name",
        }
    }
}

/// What the Auto Scaling API said, or why it was not asked.
#[derive(Debug, Clone)]
pub enum AwsFact {
    NotAsked(Blocker),
    Asked(Box<AwsFacts>),
}

/// What was missing, so that the Auto Scaling API was not asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocker {
    InstanceId,
    Region,
    Credentials,
}

impl Blocker {
    pub fn describe(self) -> &'static str {
        match self {
            Blocker::InstanceId => "the instance id is unknown (IMDS did not answer)",
            Blocker::Region => "no region",
            Blocker::Credentials => "no credentials",
        }
    }
}

/// The answers of the Auto Scaling API.
#[derive(Debug, Clone)]
pub struct AwsFacts {
    pub instance_id: String,
    /// `DescribeAutoScalingInstances` for this instance: its row, `None` if it is in no group.
    pub member: Result<Option<Member>, CallError>,
    /// The group, once its name is known.
    pub group: Option<GroupFacts>,
}

/// One instance of a group, as the API describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub group: String,
    /// `LifecycleState`: `InService`, `Pending:Wait`, `Standby`, …
    pub state: String,
    /// `HEALTHY` or `Healthy` (AWS spells it both ways).
    pub health: String,
    pub protected: bool,
}

/// How the group's name was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupFrom {
    Flag,
    Tag,
    Api,
}

impl GroupFrom {
    pub fn describe(self) -> &'static str {
        match self {
            GroupFrom::Flag => "--asg-name",
            GroupFrom::Tag => "the metadata tag aws:autoscaling:groupName",
            GroupFrom::Api => "DescribeAutoScalingInstances",
        }
    }
}

/// The group and what it holds.
#[derive(Debug, Clone)]
pub struct GroupFacts {
    pub name: String,
    pub from: GroupFrom,
    /// `DescribeAutoScalingGroups`: `None` when no such group exists.
    pub described: Result<Option<GroupInfo>, CallError>,
    /// `DescribeLifecycleHooks`: every hook of the group.
    pub hooks: Result<Vec<HookInfo>, CallError>,
    /// The permissions proven by harmless calls, in the order made.
    pub probes: Vec<(Permission, ProbeOutcome)>,
}

/// What `DescribeAutoScalingGroups` says of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// Each instance id with its row.
    pub instances: Vec<(String, Member)>,
    /// `InstanceLifecyclePolicy.RetentionTriggers.TerminateHookAbandon`: `retain` or
    /// `terminate`; `None` without a policy (which terminates).
    pub terminate_hook_abandon: Option<String>,
}

/// A lifecycle hook of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookInfo {
    pub name: String,
    pub transition: Transition,
    pub heartbeat_timeout: Duration,
    /// As the group reports it; else the smaller of 48 h and 100 heartbeat timeouts.
    pub global_timeout: Duration,
    /// `CONTINUE` or `ABANDON`.
    pub default_result: String,
}

/// A hook's transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Launching,
    Terminating,
    Other(String),
}

impl Transition {
    pub fn from_api(text: &str) -> Transition {
        match text {
            "autoscaling:EC2_INSTANCE_LAUNCHING" => Transition::Launching,
            "autoscaling:EC2_INSTANCE_TERMINATING" => Transition::Terminating,
            other => Transition::Other(other.to_string()),
        }
    }

    pub fn describe(&self) -> &str {
        match self {
            Transition::Launching => "launch",
            Transition::Terminating => "termination",
            Transition::Other(text) => text,
        }
    }
}

/// The calls the guard makes that change something, each proven (or not) by a call that
/// cannot change anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// `CompleteLifecycleAction` with a random token: no action can match it.
    CompleteLifecycleAction,
    /// `RecordLifecycleActionHeartbeat` with a random token.
    RecordLifecycleActionHeartbeat,
    /// `SetInstanceProtection` to the value the instance already has.
    SetInstanceProtection,
}

impl Permission {
    pub fn action(self) -> &'static str {
        match self {
            Permission::CompleteLifecycleAction => "CompleteLifecycleAction",
            Permission::RecordLifecycleActionHeartbeat => "RecordLifecycleActionHeartbeat",
            Permission::SetInstanceProtection => "SetInstanceProtection",
        }
    }
}

/// What a probe showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The call passed IAM: it answered, or refused the request's content (ValidationError).
    Allowed,
    /// AccessDenied: the service's words.
    Denied(String),
    /// Some other answer, which proves nothing either way.
    Unproven(String),
    /// Not made, and why.
    NotProbed(String),
}

/// The systemd unit that will run the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemdFact {
    /// No systemd here (a container, a laptop), and `INVOCATION_ID` is unset.
    Absent,
    /// systemd runs, but none of these units is installed.
    NoUnit {
        tried: Vec<String>,
    },
    Unit(Unit),
}

/// The unit's settings that bound a drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub name: String,
    /// `TimeoutStopSec`; `None` for `infinity`.
    pub timeout_stop: Option<Duration>,
    /// `KillMode`: `control-group`, `mixed`, `process` or `none`.
    pub kill_mode: String,
}

/// The health endpoint's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortFact {
    /// `--health-listen off`.
    Off,
    Free(SocketAddr),
    /// In use by a guard of this configuration (same name), already running.
    ThisGuard(SocketAddr),
    /// In use by something else.
    Taken {
        addr: SocketAddr,
        by: String,
    },
    /// Cannot be bound for another reason (a privileged port, an address not on this host).
    Unusable {
        addr: SocketAddr,
        error: String,
    },
}

/// What the doctor saw of the load balancers (`--target-groups`).
#[derive(Debug, Clone)]
pub enum LbFact {
    /// `--target-groups off`.
    Off,
    /// The group is unknown or AWS was not asked: nothing to look at.
    NotAsked,
    Asked(Box<LbFacts>),
}

/// The target groups and what Elastic Load Balancing v2 says of them.
#[derive(Debug, Clone)]
pub struct LbFacts {
    /// The target groups a drain would deregister from (the group's, for `auto`).
    pub arns: Result<Vec<String>, CallError>,
    /// The group's classic load balancers (`LoadBalancerNames`), which the guard does not handle.
    pub classic: Vec<String>,
    /// `DescribeTargetGroups` for `arns`.
    pub groups: Result<Vec<TargetGroupInfo>, CallError>,
    /// The permissions, each proven by a call that cannot change anything (or why not).
    pub probes: Vec<(LbPermission, ProbeOutcome)>,
}

/// One target group's health check, as `DescribeTargetGroups` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetGroupInfo {
    pub arn: String,
    /// `instance`, `ip`, `lambda` or `alb`.
    pub target_type: String,
    /// The traffic port.
    pub port: Option<i32>,
    pub health_check_enabled: bool,
    pub health_check_path: Option<String>,
    /// `traffic-port` or a port number.
    pub health_check_port: Option<String>,
    pub interval: Duration,
    pub unhealthy_threshold: u32,
}

/// The Elastic Load Balancing v2 calls a drain makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPermission {
    /// Proven by deregistering a target that is not registered: `InvalidTarget` if allowed.
    DeregisterTargets,
    DescribeTargetHealth,
    DescribeTargetGroupAttributes,
    /// No call proves it without registering something: never probed.
    RegisterTargets,
}

impl LbPermission {
    pub fn action(self) -> &'static str {
        match self {
            LbPermission::DeregisterTargets => "DeregisterTargets",
            LbPermission::DescribeTargetHealth => "DescribeTargetHealth",
            LbPermission::DescribeTargetGroupAttributes => "DescribeTargetGroupAttributes",
            LbPermission::RegisterTargets => "RegisterTargets",
        }
    }
}
