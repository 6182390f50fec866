//! One AWS context for the whole run: the Auto Scaling client (region, credentials, timeouts,
//! one TLS stack), this instance's id and its group. Built once, the first time a feature needs
//! it (lifecycle hooks, scale-in protection, EMF), and shared by all of them, so the
//! configuration is loaded and the group discovered once, not per feature.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OnceCell, watch};

use crate::aws::api::{CallError, record_result};
use crate::aws::backoff::through_throttling;
use crate::aws::imds::ImdsClient;
use crate::aws::notices::ImdsStatus;
use crate::aws::status::LifecycleBoard;

/// How long the first user waits for IMDS to give the instance id and region.
const IDENTITY_WITHIN: Duration = Duration::from_secs(30);
/// How long the group lookup is retried through throttling.
const LOOKUP_RETRY_WINDOW: Duration = Duration::from_secs(120);

/// Why the AWS context could not be built; every feature that needs it is then off.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    #[error("the instance id did not come from IMDS within 30s")]
    NoIdentity,
    #[error("no AWS region: set AWS_REGION or let IMDS give placement/region")]
    NoRegion,
    #[error("instance {instance_id} is in no Auto Scaling group (DescribeAutoScalingInstances)")]
    NotInGroup { instance_id: String },
    #[error(
        "cannot find the group: give --asg-name, enable instance metadata tags, or allow autoscaling:DescribeAutoScalingInstances"
    )]
    GroupLookupDenied,
    #[error("cannot find the group: {0}")]
    GroupLookup(String),
}

/// The Auto Scaling client and the group and instance it acts on.
#[derive(Debug)]
pub struct AwsContext {
    pub client: aws_sdk_autoscaling::Client,
    /// Elastic Load Balancing v2, from the same SDK configuration (credentials, region, TLS,
    /// timeouts); `AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2` reaches it through that config.
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    pub group: String,
    pub instance_id: String,
    pub region: String,
}

/// What is needed to build the context, and the context once built.
pub struct SharedAws {
    asg_name: Option<String>,
    imds_endpoint: String,
    imds: watch::Receiver<ImdsStatus>,
    board: LifecycleBoard,
    cell: OnceCell<Result<Arc<AwsContext>, ContextError>>,
}

impl SharedAws {
    /// Nothing is loaded or called until [`SharedAws::get`].
    pub fn new(
        asg_name: Option<String>,
        imds_endpoint: String,
        imds: watch::Receiver<ImdsStatus>,
        board: LifecycleBoard,
    ) -> Arc<SharedAws> {
        Arc::new(SharedAws {
            asg_name,
            imds_endpoint,
            imds,
            board,
            cell: OnceCell::new(),
        })
    }

    /// The lifecycle snapshot's writer, for the calls made with this context.
    pub fn board(&self) -> &LifecycleBoard {
        &self.board
    }

    /// The context, built by the first caller; later callers wait for it and share the result.
    pub async fn get(&self) -> Result<Arc<AwsContext>, ContextError> {
        self.cell
            .get_or_init(|| async { self.build().await.map(Arc::new) })
            .await
            .clone()
    }

    async fn build(&self) -> Result<AwsContext, ContextError> {
        let mut imds = self.imds.clone();
        // The watch guard is dropped inside the future: it must not live across an await.
        let identity = tokio::time::timeout(IDENTITY_WITHIN, async {
            imds.wait_for(|s| s.instance_id.is_some())
                .await
                .map(|s| (s.instance_id.clone().unwrap_or_default(), s.region.clone()))
        })
        .await;
        let Ok(Ok((instance_id, imds_region))) = identity else {
            return Err(ContextError::NoIdentity);
        };
        let region = env_region().or(imds_region).ok_or(ContextError::NoRegion)?;
        let config = sdk_config(&region, &self.imds_endpoint).await;
        let client = aws_sdk_autoscaling::Client::new(&config);
        let elb = aws_sdk_elasticloadbalancingv2::Client::new(&config);
        let group = match &self.asg_name {
            Some(name) => name.clone(),
            None => self.discover_group(&client, &instance_id).await?,
        };
        self.board.update(|status| {
            status.group = Some(group.clone());
            status.instance_id = Some(instance_id.clone());
        });
        Ok(AwsContext {
            client,
            elb,
            group,
            instance_id,
            region,
        })
    }

    /// The group from the IMDS tag `aws:autoscaling:groupName`, else
    /// DescribeAutoScalingInstances.
    async fn discover_group(
        &self,
        client: &aws_sdk_autoscaling::Client,
        instance_id: &str,
    ) -> Result<String, ContextError> {
        if let Ok(imds) = ImdsClient::new(&self.imds_endpoint, Duration::from_secs(1))
            && let Ok(Some(name)) = imds.get("tags/instance/aws:autoscaling:groupName").await
            && !name.trim().is_empty()
        {
            tracing::info!(group = %name.trim(), "lifecycle: group from the instance's metadata tag");
            return Ok(name.trim().to_string());
        }
        // A fleet starting at once shares one rate limit: retried through throttling.
        let answer = through_throttling(LOOKUP_RETRY_WINDOW, || async {
            let answer = client
                .describe_auto_scaling_instances()
                .instance_ids(instance_id)
                .send()
                .await
                .map_err(|e| CallError::from(&e));
            record_result(&self.board, "DescribeAutoScalingInstances", &answer);
            answer
        })
        .await;
        match answer {
            Ok(out) => {
                let group = out
                    .auto_scaling_instances()
                    .iter()
                    .find(|i| i.instance_id() == Some(instance_id))
                    .and_then(|i| i.auto_scaling_group_name())
                    .ok_or_else(|| ContextError::NotInGroup {
                        instance_id: instance_id.to_string(),
                    })?;
                tracing::info!(group = %group, "lifecycle: group from DescribeAutoScalingInstances");
                Ok(group.to_string())
            }
            Err(CallError::Denied(_)) => Err(ContextError::GroupLookupDenied),
            Err(other) => Err(ContextError::GroupLookup(other.text().to_string())),
        }
    }
}

/// The region the environment names (`AWS_REGION`, else `AWS_DEFAULT_REGION`), which wins over
/// the instance's own (IMDS `placement/region`).
pub(crate) fn env_region() -> Option<String> {
    std::env::var("AWS_REGION")
        .ok()
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .filter(|r| !r.is_empty())
}

/// The SDK configuration for every AWS client; its credential chain is the one the guard uses,
/// and its instance-profile credentials come from the IMDS the guard reads (`--imds-endpoint`,
/// `--imds-endpoint-mode`), not from the SDK's own idea of it.
pub(crate) async fn sdk_config(region: &str, imds_endpoint: &str) -> aws_config::SdkConfig {
    let http = crate::aws::transport::client();
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(Duration::from_secs(10))
        .operation_timeout(Duration::from_secs(10))
        .build();
    let region = aws_config::Region::new(region.to_string());
    let credentials = credentials(http.clone(), region.clone(), imds_endpoint).await;
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .credentials_provider(credentials)
        .region(region)
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(timeouts)
        .load()
        .await
}

/// The SDK's default credential chain (environment, profile, web identity, ECS, instance
/// profile), its instance-profile step reading `imds_endpoint`.
async fn credentials(
    http: aws_smithy_runtime_api::client::http::SharedHttpClient,
    region: aws_config::Region,
    imds_endpoint: &str,
) -> aws_config::default_provider::credentials::DefaultCredentialsChain {
    let provider = aws_config::provider_config::ProviderConfig::default()
        .with_http_client(http)
        .with_region(Some(region.clone()));
    let chain = aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
        .configure(provider.clone())
        .region(region);
    // The endpoint was validated with the configuration; were it refused here, the SDK's
    // default endpoint is what remains.
    match aws_config::imds::Client::builder()
        .configure(&provider)
        .endpoint(imds_endpoint)
    {
        Ok(imds) => chain.imds_client(imds.build()).build().await,
        Err(err) => {
            tracing::warn!(endpoint = imds_endpoint, error = %err, "instance-profile credentials: the SDK's default IMDS endpoint is used");
            chain.build().await
        }
    }
}
