//! The `node-agent` command line: every flag has an environment variable and a default, and
//! `run(self)` destructures them all so that an unused flag does not compile.

use std::{
    ffi::OsString,
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, mpsc},
    time::Duration,
};

use anyhow::Context;
use clap::Parser;
use prometheus::Registry;
use tokio::net::TcpListener;
use tracing::{error, info};

use crate::{
    pod_resources::PodResourcesRefresher,
    resource_slices::SliceReader,
    sampler::Sampler,
    server,
    snapshot::AgentState,
    telemetry::{AgentMetrics, LogFormat, init_tracing},
};

#[derive(Debug, Parser)]
#[command(
    name = "node-agent",
    version,
    about = "GPU metrics from NVML, attributed to pods through the kubelet, served dcgm-exporter-style"
)]
pub struct Args {
    /// The NVML library to load (a name for the dynamic loader, or a path).
    #[arg(long, env = "NODE_AGENT_NVML_LIB", default_value = "libnvidia-ml.so.1")]
    pub nvml_lib: OsString,

    /// The kubelet's PodResources API socket.
    #[arg(
        long,
        env = "NODE_AGENT_POD_RESOURCES_SOCKET",
        default_value = "/var/lib/kubelet/pod-resources/kubelet.sock"
    )]
    pub pod_resources_socket: PathBuf,

    /// Address of /metrics, /v1/samples, /healthz and /readyz.
    #[arg(long, env = "NODE_AGENT_LISTEN", default_value = "0.0.0.0:9400")]
    pub listen: SocketAddr,

    /// How often to read every GPU (at least 100ms), e.g. `1s`, `500ms`.
    #[arg(long, env = "NODE_AGENT_INTERVAL", default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,

    /// How often to ask the kubelet which pods hold which GPUs (at least 100ms).
    #[arg(long, env = "NODE_AGENT_POD_RESOURCES_INTERVAL", default_value = "10s", value_parser = parse_interval)]
    pub pod_resources_interval: Duration,

    /// The fewest seconds between two reads of this node's ResourceSlices (at least 100ms). They
    /// are read from the API server (in-cluster or `KUBECONFIG`) only while the kubelet lists GPUs
    /// allocated through DRA claims: when one is unknown, or the last read is 10 times this old.
    #[arg(long, env = "NODE_AGENT_RESOURCE_SLICES_INTERVAL", default_value = "30s", value_parser = parse_interval)]
    pub resource_slices_interval: Duration,

    /// The node's name, for the `Hostname` label and its ResourceSlices (default: this machine's hostname).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
}

impl Args {
    /// Runs until SIGTERM or Ctrl-C. Only a bad flag or an address that cannot be bound stops it
    /// early: without NVML or the kubelet it stays up, not ready, and keeps retrying.
    pub fn run(self) -> ExitCode {
        let Args {
            nvml_lib,
            pod_resources_socket,
            listen,
            interval,
            pod_resources_interval,
            resource_slices_interval,
            node_name,
            log_format,
        } = self;
        init_tracing(log_format);
        let node = node_name.filter(|n| !n.is_empty()).unwrap_or_else(hostname);
        let state = Arc::new(AgentState::new(node, interval));
        let intervals = Intervals {
            pod_resources: pod_resources_interval,
            resource_slices: resource_slices_interval,
        };
        let result = serve(state, nvml_lib, pod_resources_socket, intervals, listen);
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                error!("{error:#}");
                ExitCode::FAILURE
            }
        }
    }
}

/// How often the refresher asks the kubelet, and at most how often it reads the ResourceSlices.
struct Intervals {
    pod_resources: Duration,
    resource_slices: Duration,
}

fn serve(
    state: Arc<AgentState>,
    nvml_lib: OsString,
    socket: PathBuf,
    intervals: Intervals,
    listen: SocketAddr,
) -> anyhow::Result<()> {
    let registry = Registry::new();
    let metrics = AgentMetrics::register(&registry).context("registering the agent's metrics")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (stop_sampler, stop) = mpsc::channel();
    let sampler = Sampler {
        nvml_lib,
        interval: state.interval,
        state: state.clone(),
        metrics: metrics.clone(),
    }
    .spawn(stop)
    .context("starting the sampler thread")?;

    let served = runtime.block_on(async {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        info!(
            address = %listener.local_addr()?,
            node = %state.node,
            "serving /metrics, /v1/samples, /healthz and /readyz"
        );
        let refresher = tokio::spawn(
            PodResourcesRefresher {
                socket,
                interval: intervals.pod_resources,
                state: state.clone(),
                metrics: metrics.clone(),
                slices: SliceReader::new(state.node.clone(), intervals.resource_slices, metrics.clone()),
            }
            .run(),
        );
        let app = server::router(state, registry, metrics);
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await;
        refresher.abort();
        served.context("serving HTTP")
    });

    drop(stop_sampler);
    if sampler.join().is_err() {
        error!("the sampler thread panicked");
    }
    served
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    info!("shutting down");
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if interval < Duration::from_millis(100) {
        return Err(format!("{text} is shorter than the 100ms minimum"));
    }
    Ok(interval)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn flags_are_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let args = Args::try_parse_from(["node-agent"]).unwrap();
        assert_eq!(args.nvml_lib, "libnvidia-ml.so.1");
        assert_eq!(args.listen, "0.0.0.0:9400".parse().unwrap());
        assert_eq!(args.interval, Duration::from_secs(1));
        assert_eq!(args.pod_resources_interval, Duration::from_secs(10));
        assert_eq!(args.resource_slices_interval, Duration::from_secs(30));
        assert_eq!(
            args.pod_resources_socket,
            PathBuf::from("/var/lib/kubelet/pod-resources/kubelet.sock")
        );
    }

    #[test]
    fn intervals_below_the_minimum_are_refused() {
        assert_eq!(parse_interval("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_interval("10ms").unwrap_err().contains("100ms minimum"));
        assert!(parse_interval("soon").is_err());
    }
}
