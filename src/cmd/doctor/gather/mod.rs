//! Looks at the instance, once, each look bounded in time and none of them changing anything:
//! the command, the health port, the systemd unit, IMDS, the credentials, the Auto Scaling
//! API and the target groups (Elastic Load Balancing v2). Everything seen goes into
//! [`Facts`]; nothing here judges it.

mod aws;
mod elb;
mod imds;
mod systemd;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use super::facts::{
    AwsFact, Blocker, CommandFact, CredentialsFact, Facts, LbFact, PortFact, RegionFact,
};
use crate::config::{Config, Settings, TargetGroups};
use crate::health::http_get;

/// How long the health port's holder has to say who it is.
const HOLDER_WITHIN: Duration = Duration::from_secs(2);
/// The region the credential chain is asked in when none is known: the chain's sources
/// (environment, profile, container, instance profile) do not depend on it.
const ANY_REGION: &str = "us-east-1";

/// Gathers every fact the checks need.
pub async fn gather(config: &Config, settings: &Settings) -> Facts {
    let command = command(config);
    let port = port(config).await;
    // A guard of this configuration already runs: it may change the protection at any moment.
    let guard_running = matches!(port, PortFact::ThisGuard(_))
        || std::os::unix::net::UnixStream::connect(&config.socket).is_ok();
    let systemd = systemd::unit(config, settings);
    let imds = imds::gather(config).await;
    let region = RegionFact {
        env: crate::aws::context::env_region(),
        imds: imds.metadata().and_then(|m| m.region.clone()),
    };
    // The guard's own client builder: the same credential chain, endpoints and timeouts.
    let client_region = region.resolved().map_or(ANY_REGION, |(r, _)| r);
    let sdk = crate::aws::context::sdk_config(client_region, &config.imds_endpoint).await;
    let client = aws_sdk_autoscaling::Client::new(&sdk);
    let credentials = aws::credentials(&sdk).await;
    let aws = match (imds.metadata(), region.resolved(), &credentials) {
        (None, _, _) => AwsFact::NotAsked(Blocker::InstanceId),
        (_, None, _) => AwsFact::NotAsked(Blocker::Region),
        (_, _, CredentialsFact::Missing(_)) => AwsFact::NotAsked(Blocker::Credentials),
        (Some(metadata), Some(_), CredentialsFact::Found(_)) => AwsFact::Asked(Box::new(
            aws::group(&client, config, metadata, guard_running).await,
        )),
    };
    let load_balancer = match (&config.load_balancer.target_groups, &aws) {
        (TargetGroups::Off, _) => LbFact::Off,
        (_, AwsFact::Asked(facts)) => match &facts.group {
            Some(group) if matches!(group.described, Ok(Some(_))) => {
                let elb = aws_sdk_elasticloadbalancingv2::Client::new(&sdk);
                LbFact::Asked(Box::new(
                    elb::gather(&client, &elb, config, &group.name).await,
                ))
            }
            _ => LbFact::NotAsked,
        },
        _ => LbFact::NotAsked,
    };
    Facts {
        command,
        imds,
        region,
        credentials,
        aws,
        systemd,
        port,
        cgroup: (config.cgroup != crate::config::CgroupMode::Off)
            .then(|| crate::process::cgroup::probe().map_err(|e| e.to_string())),
        load_balancer,
    }
}

/// The agent's program, looked up as the guard will at start.
fn command(config: &Config) -> CommandFact {
    match config.command.first() {
        None => CommandFact::Missing,
        Some(program) => match crate::process::child::resolve(program) {
            Ok(path) => CommandFact::Found(path),
            Err(err) => CommandFact::Unusable(err.to_string()),
        },
    }
}

/// Whether the health port can be bound, and if not, whether this configuration's own guard
/// holds it (it answers `/status` with the same name).
async fn port(config: &Config) -> PortFact {
    let Some(addr) = config.health_listen else {
        return PortFact::Off;
    };
    // Bound and closed at once: the port is only tried, never kept.
    match std::net::TcpListener::bind(addr) {
        Ok(_) => PortFact::Free(addr),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => match holder(addr).await {
            Some(name) if name == config.name => PortFact::ThisGuard(addr),
            Some(name) => PortFact::Taken {
                addr,
                by: format!("a guard named {name}"),
            },
            None => PortFact::Taken {
                addr,
                by: "another program".to_string(),
            },
        },
        Err(err) => PortFact::Unusable {
            addr,
            error: err.to_string(),
        },
    }
}

/// The `name` a guard on `addr` gives in its `/status`, if a guard answers there.
async fn holder(addr: SocketAddr) -> Option<String> {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let url = url::Url::parse(&format!(
        "http://{}/status",
        SocketAddr::new(ip, addr.port())
    ))
    .ok()?;
    let answer = tokio::time::timeout(HOLDER_WITHIN, http_get::get(&url, true))
        .await
        .ok()?
        .ok()?;
    let body = answer.body?;
    let status: serde_json::Value = serde_json::from_slice(&body).ok()?;
    status["name"].as_str().map(str::to_string)
}
