//! `model-operator activator`: holds requests for models with no ready replica and forwards them
//! once the model answers (`crate::activator`), from the cluster of the in-cluster configuration
//! or of `KUBECONFIG`. Runs as its own Deployment; any number of replicas, each on its own.

use std::{net::SocketAddr, process::ExitCode, sync::Arc, time::Duration};

use axum::{Router, http::StatusCode, routing::get};
use clap::Args;
use tokio::net::TcpListener;
use tracing::{error, info};

use crate::{
    activator::{
        Activator, Limits, ModelKey,
        cluster::{ClusterModels, ClusterSettings, EndpointOverrides},
        upstream::Protocol,
    },
    controller::Shutdown,
    vocabulary::parse_model_endpoints,
};

#[derive(Debug, Args)]
pub struct ActivatorArgs {
    /// Where the models' HTTP traffic arrives (each runtime's HTTP port maps here).
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:8012")]
    pub http_addr: SocketAddr,
    /// Where the models' gRPC traffic arrives (Triton's KServe-v2 port maps here).
    #[arg(long, env = "GRPC_ADDR", default_value = "0.0.0.0:8013")]
    pub grpc_addr: SocketAddr,
    /// Address of `/healthz`, `/readyz` (ready once the watches have listed) and `/metrics`.
    #[arg(long, env = "HEALTH_ADDR", default_value = "0.0.0.0:8081")]
    pub health_addr: SocketAddr,
    /// Follow ModelDeployments in this namespace only; all namespaces when unset.
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// The longest a request waits for its model's cold start before it gets 503 / UNAVAILABLE.
    #[arg(long, env = "COLD_START_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub cold_start_timeout: Duration,
    /// Requests held per model while it starts; more are refused at once.
    #[arg(long, env = "QUEUE_PER_MODEL", default_value_t = 256)]
    pub queue_per_model: usize,
    /// Client connections open at once; more wait in the listen backlog.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Send one ModelDeployment's HTTP requests to `NAMESPACE/NAME=IP:PORT` instead of its pods
    /// (repeatable): where the pods' IPs cannot be reached.
    #[arg(long = "model-endpoint", env = "MODEL_ENDPOINTS", value_delimiter = ',')]
    pub model_endpoints: Vec<String>,
    /// Likewise for its gRPC requests.
    #[arg(long = "model-grpc-endpoint", env = "MODEL_GRPC_ENDPOINTS", value_delimiter = ',')]
    pub model_grpc_endpoints: Vec<String>,
    /// Forward to the serving pods' IPs. Off (`--forward-to-pod-ips=false`) where they cannot be
    /// reached: only models with a `--model-endpoint` are then forwarded.
    #[arg(long, env = "FORWARD_TO_POD_IPS", default_value_t = true, action = clap::ArgAction::Set)]
    pub forward_to_pod_ips: bool,
}

impl ActivatorArgs {
    pub fn run(self) -> ExitCode {
        let ActivatorArgs {
            http_addr,
            grpc_addr,
            health_addr,
            watch_namespace,
            cold_start_timeout,
            queue_per_model,
            max_connections,
            model_endpoints,
            model_grpc_endpoints,
            forward_to_pod_ips,
        } = self;
        let overrides = match (
            socket_overrides("model-endpoint", &model_endpoints),
            socket_overrides("model-grpc-endpoint", &model_grpc_endpoints),
        ) {
            (Ok(http), Ok(grpc)) => EndpointOverrides { http, grpc },
            (Err(problem), _) | (_, Err(problem)) => {
                error!("{problem}");
                return ExitCode::from(2);
            }
        };
        if queue_per_model == 0 || max_connections == 0 {
            error!("--queue-per-model and --max-connections must be at least 1");
            return ExitCode::from(2);
        }
        let settings = ClusterSettings {
            namespace: watch_namespace,
            overrides,
            pod_ips: forward_to_pod_ips,
            cold_start_timeout,
        };
        let limits = Limits {
            queue_per_model,
            max_connections,
            ..Limits::default()
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a Tokio runtime starts");
        match runtime.block_on(serve(settings, limits, [http_addr, grpc_addr], health_addr)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                error!("the activator stopped: {err:#}");
                ExitCode::FAILURE
            }
        }
    }
}

/// `NAMESPACE/NAME=IP:PORT` entries, with the address parsed (the activator connects to it).
fn socket_overrides(
    flag: &str,
    entries: &[String],
) -> Result<std::collections::BTreeMap<ModelKey, SocketAddr>, String> {
    let parsed = parse_model_endpoints(flag, entries).map_err(|e| e.to_string())?;
    parsed
        .into_iter()
        .map(|((namespace, name), endpoint)| {
            let addr = endpoint
                .parse()
                .map_err(|_| format!("--{flag} {namespace}/{name}={endpoint}: the address must be IP:PORT"))?;
            Ok((ModelKey { namespace, name }, addr))
        })
        .collect()
}

async fn serve(
    settings: ClusterSettings,
    limits: Limits,
    [http_addr, grpc_addr]: [SocketAddr; 2],
    health_addr: SocketAddr,
) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await?;
    let shutdown = Shutdown::on_signal();
    let (models, watching) = ClusterModels::start(client, settings);
    let http = TcpListener::bind(http_addr).await?;
    let grpc = TcpListener::bind(grpc_addr).await?;
    let health = TcpListener::bind(health_addr).await?;
    info!(http = ?http.local_addr()?, grpc = ?grpc.local_addr()?, health = ?health.local_addr()?, "activator listening");
    let activator = Activator::new(models.clone(), limits);
    let watch_task = tokio::spawn(watching);
    let metrics = activator.clone();
    let probes = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let metrics = Arc::clone(&metrics);
                async move { metrics.encode_metrics() }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let models = Arc::clone(&models);
                async move {
                    if models.is_synced() {
                        (StatusCode::OK, "ready")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "listing the cluster's ModelDeployments",
                        )
                    }
                }
            }),
        );
    let health_server = tokio::spawn(
        axum::serve(health, probes)
            .with_graceful_shutdown(shutdown.wait())
            .into_future(),
    );
    tokio::join!(
        activator.clone().serve(http, Protocol::Http, shutdown.wait()),
        activator.serve(grpc, Protocol::Grpc, shutdown.wait()),
    );
    watch_task.abort();
    let _ = health_server.await;
    Ok(())
}
