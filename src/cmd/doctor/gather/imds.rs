//! What IMDS says of the instance, read with the guard's own IMDSv2 client (one session token,
//! the hop-limit case told apart from a dead endpoint).

use std::time::Duration;

use crate::aws::imds::{ImdsClient, ImdsError};
use crate::cmd::doctor::facts::{ImdsFact, Metadata, TagsFact};
use crate::config::{Config, ImdsMode};

/// Each IMDS request's bound, to connect and again to answer (as in the guard).
const IMDS_TIMEOUT: Duration = Duration::from_secs(1);

/// The instance's metadata; `NotAsked` under `--imds off`, which the guard never reads either.
pub async fn gather(config: &Config) -> ImdsFact {
    if config.imds == ImdsMode::Off {
        return ImdsFact::NotAsked;
    }
    let client = match ImdsClient::new(&config.imds_endpoint, IMDS_TIMEOUT) {
        Ok(client) => client,
        Err(err) => return ImdsFact::Failed(err),
    };
    // The first read also takes the session token: its failure is IMDS's.
    let instance_id = match client.get("instance-id").await {
        Ok(Some(id)) if !id.trim().is_empty() => id.trim().to_string(),
        Ok(_) => {
            return ImdsFact::Failed(ImdsError::Status {
                endpoint: client.endpoint().to_string(),
                path: "/latest/meta-data/instance-id".to_string(),
                status: 404,
            });
        }
        Err(err) => return ImdsFact::Failed(err),
    };
    let region = read(&client, "placement/region").await;
    let life_cycle = read(&client, "instance-life-cycle").await;
    let target_state = read(&client, "autoscaling/target-lifecycle-state").await;
    // With tags off, IMDS answers the listing with an empty body (and each tag 404).
    let tags = match read(&client, "tags/instance").await {
        Some(_) => TagsFact::On {
            group: read(&client, "tags/instance/aws:autoscaling:groupName").await,
        },
        None => TagsFact::Off,
    };
    ImdsFact::Answered(Metadata {
        endpoint: client.endpoint().to_string(),
        instance_id,
        region,
        life_cycle,
        tags,
        target_state,
    })
}

/// One item, trimmed; `None` when absent, empty or unreadable.
async fn read(client: &ImdsClient, item: &str) -> Option<String> {
    let value = client.get(item).await.ok().flatten()?;
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_string())
}
