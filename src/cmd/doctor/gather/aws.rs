//! What the Auto Scaling API says, through the guard's own client: which credentials answered,
//! this instance's row, its group, the group's hooks, and each permission the guard needs,
//! proven by a call that cannot change anything:
//! - `CompleteLifecycleAction` and `RecordLifecycleActionHeartbeat` with a random action token
//!   and no instance id: no lifecycle action can match it, so AWS answers ValidationError ("No
//!   active Lifecycle Action found with token …") if IAM let the call through, AccessDenied if
//!   not. Made only while the instance is in service, never in a wait state.
//! - `SetInstanceProtection` to the value the instance already has, read just before; not made
//!   while a guard of this configuration runs, since that guard may change it meanwhile.

use std::error::Error as StdError;
use std::time::Duration;

use aws_credential_types::credential_feature::AwsCredentialFeature;
use aws_sdk_autoscaling::Client;
use aws_sdk_autoscaling::config::ProvideCredentials;
use aws_sdk_autoscaling::error::{ProvideErrorMetadata, SdkError};

use crate::aws::api::CallError;
use crate::cmd::doctor::facts::{
    AwsFacts, CredentialSource, CredentialsFact, GroupFacts, GroupFrom, GroupInfo, HookInfo,
    Member, Metadata, Permission, ProbeOutcome, TagsFact, Transition,
};
use crate::cmd::doctor::judge::{probe_blocker, wanted_probes};
use crate::config::Config;

/// How long the credential chain may take (the instance profile's own IMDS reads included).
const CREDENTIALS_WITHIN: Duration = Duration::from_secs(20);
/// The global timeout's ceiling, for hooks that do not report theirs.
const MAX_GLOBAL: Duration = Duration::from_secs(48 * 3600);

/// Which source of the SDK's default chain gives credentials, as the guard's client will ask.
pub async fn credentials(sdk: &aws_config::SdkConfig) -> CredentialsFact {
    let Some(provider) = sdk.credentials_provider() else {
        return CredentialsFact::Missing("the SDK has no credential provider".to_string());
    };
    match tokio::time::timeout(CREDENTIALS_WITHIN, provider.provide_credentials()).await {
        Err(_) => CredentialsFact::Missing("no source answered within 20s".to_string()),
        Ok(Err(err)) => CredentialsFact::Missing(one_line(&chain(&err))),
        Ok(Ok(credentials)) => {
            let features = credentials
                .get_property::<Vec<AwsCredentialFeature>>()
                .map(Vec::as_slice)
                .unwrap_or_default();
            CredentialsFact::Found(source(features))
        }
    }
}

/// The source the chain's providers tag their credentials with.
fn source(features: &[AwsCredentialFeature]) -> CredentialSource {
    use AwsCredentialFeature as F;
    let has = |wanted: &[F]| features.iter().any(|f| wanted.contains(f));
    if has(&[F::CredentialsImds]) {
        CredentialSource::InstanceProfile
    } else if has(&[F::CredentialsHttp]) {
        CredentialSource::Container
    } else if has(&[
        F::CredentialsEnvVarsStsWebIdToken,
        F::CredentialsStsAssumeRoleWebId,
        F::CredentialsProfileStsWebIdToken,
    ]) {
        CredentialSource::WebIdentity
    } else if has(&[F::CredentialsEnvVars]) {
        CredentialSource::Environment
    } else if has(&[
        F::CredentialsProfile,
        F::CredentialsProfileSourceProfile,
        F::CredentialsProfileNamedProvider,
        F::CredentialsProfileSso,
        F::CredentialsProfileProcess,
        F::CredentialsSso,
        F::CredentialsProcess,
        F::CredentialsStsAssumeRole,
    ]) {
        CredentialSource::Profile
    } else {
        CredentialSource::Other
    }
}

/// This instance, its group (by flag, tag or API), the hooks and the permissions.
pub async fn group(
    client: &Client,
    config: &Config,
    metadata: &Metadata,
    guard_running: bool,
) -> AwsFacts {
    let instance_id = metadata.instance_id.clone();
    let member = describe_instance(client, &instance_id).await;
    let named = match (&config.lifecycle.asg_name, &metadata.tags, &member) {
        (Some(name), _, _) => Some((name.clone(), GroupFrom::Flag)),
        (None, TagsFact::On { group: Some(name) }, _) => Some((name.clone(), GroupFrom::Tag)),
        (None, _, Ok(Some(row))) => Some((row.group.clone(), GroupFrom::Api)),
        _ => None,
    };
    let group = match named {
        Some((name, from)) => {
            let described = describe_group(client, &name).await;
            let hooks = describe_hooks(client, &name).await;
            // The instance's row: from DescribeAutoScalingInstances, else the group's list.
            let row = match (&member, &described) {
                (Ok(Some(row)), _) if row.group == name => Some(row.clone()),
                (_, Ok(Some(info))) => info
                    .instances
                    .iter()
                    .find(|(id, _)| *id == instance_id)
                    .map(|(_, row)| row.clone()),
                _ => None,
            };
            let target = Target {
                group: &name,
                instance_id: &instance_id,
                row: row.as_ref(),
                exists: !matches!(described, Ok(None)),
            };
            let probes = probes(client, config, metadata, &target, guard_running).await;
            Some(GroupFacts {
                name,
                from,
                described,
                hooks,
                probes,
            })
        }
        None => None,
    };
    AwsFacts {
        instance_id,
        member,
        group,
    }
}

async fn describe_instance(client: &Client, id: &str) -> Result<Option<Member>, CallError> {
    let out = client
        .describe_auto_scaling_instances()
        .instance_ids(id)
        .send()
        .await
        .map_err(|e| CallError::from(&e))?;
    Ok(out
        .auto_scaling_instances()
        .iter()
        .find(|i| i.instance_id() == Some(id))
        .map(|i| Member {
            group: i.auto_scaling_group_name().unwrap_or_default().to_string(),
            state: i.lifecycle_state().unwrap_or_default().to_string(),
            health: i.health_status().unwrap_or_default().to_string(),
            protected: i.protected_from_scale_in().unwrap_or(false),
        }))
}

async fn describe_group(client: &Client, name: &str) -> Result<Option<GroupInfo>, CallError> {
    let out = client
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(name)
        .send()
        .await
        .map_err(|e| CallError::from(&e))?;
    let Some(group) = out
        .auto_scaling_groups()
        .iter()
        .find(|g| g.auto_scaling_group_name() == Some(name))
    else {
        return Ok(None);
    };
    let instances = group
        .instances()
        .iter()
        .map(|i| {
            let row = Member {
                group: name.to_string(),
                state: i.lifecycle_state().map_or("", |s| s.as_str()).to_string(),
                health: i.health_status().unwrap_or_default().to_string(),
                protected: i.protected_from_scale_in().unwrap_or(false),
            };
            (i.instance_id().unwrap_or_default().to_string(), row)
        })
        .collect();
    let terminate_hook_abandon = group
        .instance_lifecycle_policy()
        .and_then(|p| p.retention_triggers())
        .and_then(|t| t.terminate_hook_abandon())
        .map(|a| a.as_str().to_string());
    Ok(Some(GroupInfo {
        instances,
        terminate_hook_abandon,
    }))
}

async fn describe_hooks(client: &Client, group: &str) -> Result<Vec<HookInfo>, CallError> {
    let out = client
        .describe_lifecycle_hooks()
        .auto_scaling_group_name(group)
        .send()
        .await
        .map_err(|e| CallError::from(&e))?;
    Ok(out
        .lifecycle_hooks()
        .iter()
        .map(|h| {
            let secs =
                |v: Option<i32>| v.map(|s| Duration::from_secs(s.max(0).unsigned_abs().into()));
            // AWS's default HeartbeatTimeout, for a hook that does not say.
            let heartbeat_timeout =
                secs(h.heartbeat_timeout()).unwrap_or(Duration::from_secs(3600));
            HookInfo {
                name: h.lifecycle_hook_name().unwrap_or_default().to_string(),
                transition: Transition::from_api(h.lifecycle_transition().unwrap_or_default()),
                heartbeat_timeout,
                global_timeout: secs(h.global_timeout())
                    .unwrap_or_else(|| (heartbeat_timeout * 100).min(MAX_GLOBAL)),
                default_result: h.default_result().unwrap_or("ABANDON").to_string(),
            }
        })
        .collect())
}

/// What the probes act on.
struct Target<'a> {
    group: &'a str,
    instance_id: &'a str,
    /// The instance's row in the group, if it is in it.
    row: Option<&'a Member>,
    exists: bool,
}

/// Each permission these options need, proven by a harmless call, or why it was not made.
async fn probes(
    client: &Client,
    config: &Config,
    metadata: &Metadata,
    target: &Target<'_>,
    guard_running: bool,
) -> Vec<(Permission, ProbeOutcome)> {
    let blocker = if target.exists {
        probe_blocker(
            target.row.map(|r| r.state.as_str()),
            metadata.target_state.as_deref(),
        )
    } else {
        Some(format!("there is no group {}", target.group))
    };
    let mut outcomes = Vec::new();
    for permission in wanted_probes(config) {
        let outcome = match &blocker {
            Some(why) => ProbeOutcome::NotProbed(why.clone()),
            None => probe(client, config, target, permission, guard_running).await,
        };
        outcomes.push((permission, outcome));
    }
    outcomes
}

async fn probe(
    client: &Client,
    config: &Config,
    target: &Target<'_>,
    permission: Permission,
    guard_running: bool,
) -> ProbeOutcome {
    let lifecycle = &config.lifecycle;
    let hook = lifecycle
        .terminate_hook
        .as_deref()
        .or(lifecycle.launch_hook.as_deref())
        .unwrap_or_default();
    match permission {
        Permission::CompleteLifecycleAction => outcome(
            client
                .complete_lifecycle_action()
                .auto_scaling_group_name(target.group)
                .lifecycle_hook_name(hook)
                .lifecycle_action_token(random_token())
                .lifecycle_action_result("CONTINUE")
                .send()
                .await,
        ),
        Permission::RecordLifecycleActionHeartbeat => outcome(
            client
                .record_lifecycle_action_heartbeat()
                .auto_scaling_group_name(target.group)
                .lifecycle_hook_name(hook)
                .lifecycle_action_token(random_token())
                .send()
                .await,
        ),
        Permission::SetInstanceProtection if guard_running => ProbeOutcome::NotProbed(
            "a guard of this configuration runs and may change the protection at any moment"
                .to_string(),
        ),
        Permission::SetInstanceProtection => match target.row {
            None => ProbeOutcome::NotProbed("the instance's protection is unknown".to_string()),
            Some(row) => outcome(
                client
                    .set_instance_protection()
                    .auto_scaling_group_name(target.group)
                    .instance_ids(target.instance_id)
                    .protected_from_scale_in(row.protected)
                    .send()
                    .await,
            ),
        },
    }
}

/// A probe's answer: a ValidationError (or, for a target that is not registered,
/// InvalidTarget) means IAM let the call through.
pub(super) fn outcome<T, E>(answer: Result<T, SdkError<E>>) -> ProbeOutcome
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    let err = match answer {
        Ok(_) => return ProbeOutcome::Allowed,
        Err(err) => err,
    };
    if matches!(err.code(), Some("ValidationError" | "InvalidTarget")) {
        return ProbeOutcome::Allowed;
    }
    match CallError::from(&err) {
        CallError::Denied(text) => ProbeOutcome::Denied(text),
        // An answer without an error code (an HTML error page) still has its status.
        _ if err.code().is_none() && err.raw_response().is_some() => {
            let status = err.raw_response().map_or(0, |r| r.status().as_u16());
            ProbeOutcome::Unproven(format!(
                "the API answered HTTP {status} without an error code"
            ))
        }
        other => ProbeOutcome::Unproven(other.text().to_string()),
    }
}

/// A version-4 UUID's shape from the process's hash seed and the clock: unique enough that no
/// real lifecycle action has it, which is all a probe needs.
fn random_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    let a = h.finish();
    h.write_u64(a);
    let b = h.finish();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}

/// The chain lists each source it tried on a line of its own: one line, for the journal.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// An error and its causes.
fn chain(err: &dyn StdError) -> String {
    crate::fmt::error_chain(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_shape_of_a_uuid_and_differ() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        let parts: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12], "{a}");
        assert!(a.chars().all(|c| c.is_ascii_hexdigit() || c == '-'), "{a}");
    }

    #[test]
    fn the_source_follows_the_providers_tags() {
        use AwsCredentialFeature as F;
        assert_eq!(
            source(&[F::CredentialsImds]),
            CredentialSource::InstanceProfile
        );
        assert_eq!(
            source(&[F::CredentialsEnvVars]),
            CredentialSource::Environment
        );
        assert_eq!(
            source(&[F::CredentialsProfile, F::CredentialsStsAssumeRole]),
            CredentialSource::Profile
        );
        assert_eq!(
            source(&[F::CredentialsEnvVarsStsWebIdToken]),
            CredentialSource::WebIdentity
        );
        assert_eq!(source(&[]), CredentialSource::Other);
    }
}
