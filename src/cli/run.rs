//! `model-operator run`: the operator itself, in the cluster of the in-cluster configuration or
//! of `KUBECONFIG`.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use clap::Args;
use tracing::error;

use super::ImageArgs;
use crate::controller::{self, LeaseSettings, Settings};

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub images: ImageArgs,
    /// Watch ModelDeployments in this namespace only; all namespaces when unset.
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Reconcile without a leader Lease: for a single replica outside a cluster only.
    #[arg(long, env = "DISABLE_LEADER_ELECTION")]
    pub disable_leader_election: bool,
    /// Namespace of the leader Lease: the operator's own.
    #[arg(long, env = "POD_NAMESPACE", default_value = "model-operator-system")]
    pub lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "model-operator-leader")]
    pub lease_name: String,
    /// This replica's identity in the Lease; defaults to the pod name, else host name and pid.
    #[arg(long, env = "POD_NAME")]
    pub holder_id: Option<String>,
    /// How long a Lease holds without renewal; a standby takes over after it runs out.
    #[arg(long, env = "LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// Reconciles that run at once.
    #[arg(long, env = "RECONCILE_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// Address of the Prometheus `/metrics` endpoint.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Address of `/healthz` and `/readyz`.
    #[arg(long, env = "HEALTH_ADDR", default_value = "0.0.0.0:8081")]
    pub health_addr: SocketAddr,
}

impl RunArgs {
    pub fn run(self) -> ExitCode {
        let RunArgs {
            images,
            watch_namespace,
            disable_leader_election,
            lease_namespace,
            lease_name,
            holder_id,
            lease_duration,
            concurrency,
            metrics_addr,
            health_addr,
        } = self;
        let lease = (!disable_leader_election).then(|| LeaseSettings {
            namespace: lease_namespace,
            lease_name,
            holder_id: holder_id.unwrap_or_else(default_holder_id),
            lease_duration,
        });
        let settings = Settings {
            images: images.into_images(),
            watch_namespace,
            lease,
            concurrency,
            metrics_addr,
            health_addr,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a Tokio runtime starts");
        match runtime.block_on(controller::run(settings)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                error!("the operator stopped: {err:#}");
                ExitCode::FAILURE
            }
        }
    }
}

fn default_holder_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "model-operator".to_owned());
    format!("{host}-{}", std::process::id())
}
