//! `model-operator run`: the operator itself, in the cluster of the in-cluster configuration or
//! of `KUBECONFIG`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::Args;
use tracing::error;

use super::ImageArgs;
use crate::{
    controller::{self, ActivatorService, LeaseSettings, Settings},
    custom_metrics::{self, AgentEndpoint},
    model_readiness::{EndpointResolver, ProbeSettings},
    vocabulary::parse_model_endpoints,
};

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
    /// How long a Lease holds without renewal; a standby takes over after it runs out (whole
    /// seconds, at least 1s).
    #[arg(long, env = "LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// How long after its last successful renewal a leader stops writing; shorter than the
    /// lease. Two thirds of `--lease-duration` when unset.
    #[arg(long, env = "RENEW_DEADLINE", value_parser = humantime::parse_duration)]
    pub renew_deadline: Option<Duration>,
    /// How often the leader renews and a standby looks at the Lease, and the timeout of each
    /// such call; shorter than the renew deadline. Two fifteenths of `--lease-duration` when unset.
    #[arg(long, env = "RETRY_PERIOD", value_parser = humantime::parse_duration)]
    pub retry_period: Option<Duration>,
    /// Reconciles that run at once.
    #[arg(long, env = "RECONCILE_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// Address of the Prometheus `/metrics` endpoint.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Address of `/healthz` and `/readyz`.
    #[arg(long, env = "HEALTH_ADDR", default_value = "0.0.0.0:8081")]
    pub health_addr: SocketAddr,
    /// The longest one model probe may take, connection included.
    #[arg(long, env = "PROBE_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub probe_timeout: Duration,
    /// Model probes in flight at once, across every ModelDeployment.
    #[arg(long, env = "PROBE_CONCURRENCY", default_value_t = 32)]
    pub probe_concurrency: usize,
    /// Probe every pod of one ModelDeployment at another address, `NAMESPACE/NAME=HOST:PORT`
    /// (repeatable): for clusters whose pod IPs the operator cannot reach.
    #[arg(long = "probe-endpoint", env = "PROBE_ENDPOINTS", value_delimiter = ',')]
    pub probe_endpoints: Vec<String>,
    /// Probe each serving pod at its IP, and read its runtime's queue time there. Turn off
    /// (`--probe-pod-ips=false`) where the operator cannot reach pod IPs, e.g. when it runs
    /// outside the cluster: models without a `--probe-endpoint` then take ModelReady from the
    /// kubelet's readiness probe, and have no queue time without a `--runtime-metrics-endpoint`.
    #[arg(long, env = "PROBE_POD_IPS", default_value_t = true, action = clap::ArgAction::Set)]
    pub probe_pod_ips: bool,
    /// Read the queue time of every pod of one ModelDeployment at another address,
    /// `NAMESPACE/NAME=HOST:PORT` (repeatable): the runtime's metrics endpoint, for clusters
    /// whose pod IPs the operator cannot reach.
    #[arg(
        long = "runtime-metrics-endpoint",
        env = "RUNTIME_METRICS_ENDPOINTS",
        value_delimiter = ','
    )]
    pub runtime_metrics_endpoints: Vec<String>,
    /// The activator's Service, `NAMESPACE/NAME`: while a model has no replica that answers (at
    /// zero, or waking), its Service points at the activator's ready addresses, read from this
    /// Service's EndpointSlices, and back at the pods once the model answers. Unset: Services
    /// always select the pods, and clients must send to the activator themselves.
    #[arg(long, env = "ACTIVATOR_SERVICE")]
    pub activator_service: Option<ActivatorService>,
    /// Address of the custom.metrics.k8s.io API (HTTPS) that the APIService points at.
    #[arg(long, env = "CUSTOM_METRICS_ADDR", default_value = "0.0.0.0:6443")]
    pub custom_metrics_addr: SocketAddr,
    /// Serving certificate (PEM) of the custom metrics API; self-generated when unset.
    #[arg(long, env = "TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert-file.
    #[arg(long, env = "TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// How often the serving certificate files and the front proxy's CA are read again; a
    /// change is served to new connections (cert-manager renewals, CA rotation).
    #[arg(long, env = "TLS_RELOAD_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub tls_reload_interval: Duration,
    /// CA of the API server's front proxy (kube-apiserver's --requestheader-client-ca-file); when
    /// unset, read with the allowed names from kube-system/extension-apiserver-authentication.
    #[arg(long, env = "REQUESTHEADER_CLIENT_CA_FILE")]
    pub requestheader_client_ca_file: Option<PathBuf>,
    /// With --requestheader-client-ca-file: common names the front proxy's certificate may have
    /// (comma-separated; empty allows any name the CA signed).
    #[arg(
        long,
        env = "REQUESTHEADER_ALLOWED_NAMES",
        value_delimiter = ',',
        requires = "requestheader_client_ca_file"
    )]
    pub requestheader_allowed_names: Vec<String>,
    /// Node agents as NODE=HOST:PORT,... for running outside the cluster; when unset, the
    /// endpoints of --agent-service.
    #[arg(long, env = "AGENT_ENDPOINTS", value_delimiter = ',')]
    pub agent_endpoints: Vec<AgentEndpoint>,
    /// The node agents' headless Service, whose EndpointSlices name each node's agent.
    #[arg(long, env = "AGENT_SERVICE", default_value = "node-agent")]
    pub agent_service: String,
    /// Namespace of --agent-service.
    #[arg(long, env = "AGENT_NAMESPACE", default_value = "model-operator-system")]
    pub agent_namespace: String,
    /// How long to wait for a node agent's samples, or a runtime's metrics, before leaving the
    /// pods without a value.
    #[arg(long, env = "AGENT_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub agent_timeout: Duration,
    /// Samples older than this are not served (the agent is stuck or its clock is off).
    #[arg(long, env = "SAMPLE_MAX_AGE", default_value = "15s", value_parser = humantime::parse_duration)]
    pub sample_max_age: Duration,
    /// Check every custom metrics caller with a SubjectAccessReview (needs system:auth-delegator);
    /// `false` leaves it to kube-apiserver, which authorizes requests before proxying them.
    #[arg(long, env = "DELEGATED_AUTHORIZATION", default_value_t = true, action = clap::ArgAction::Set)]
    pub delegated_authorization: bool,
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
            renew_deadline,
            retry_period,
            concurrency,
            metrics_addr,
            health_addr,
            probe_timeout,
            probe_concurrency,
            probe_endpoints,
            probe_pod_ips,
            runtime_metrics_endpoints,
            activator_service,
            custom_metrics_addr,
            tls_cert_file,
            tls_key_file,
            tls_reload_interval,
            requestheader_client_ca_file,
            requestheader_allowed_names,
            agent_endpoints,
            agent_service,
            agent_namespace,
            agent_timeout,
            sample_max_age,
            delegated_authorization,
        } = self;
        let endpoints = match EndpointResolver::new(&probe_endpoints, probe_pod_ips) {
            Ok(endpoints) => endpoints,
            Err(problem) => {
                error!("{problem}");
                return ExitCode::from(2);
            }
        };
        let runtime_metrics_endpoints =
            match parse_model_endpoints("runtime-metrics-endpoint", &runtime_metrics_endpoints) {
                Ok(endpoints) => endpoints,
                Err(problem) => {
                    error!("{problem}");
                    return ExitCode::from(2);
                }
            };
        let lease = if disable_leader_election {
            None
        } else {
            match LeaseSettings::new(
                lease_namespace,
                lease_name,
                holder_id.unwrap_or_else(default_holder_id),
                lease_duration,
                renew_deadline,
                retry_period,
            ) {
                Ok(settings) => Some(settings),
                Err(problem) => {
                    error!("{problem}");
                    return ExitCode::from(2);
                }
            }
        };
        let settings = Settings {
            images: images.into_images(),
            watch_namespace,
            lease,
            concurrency,
            metrics_addr,
            health_addr,
            probes: ProbeSettings {
                timeout: probe_timeout,
                // The operator deploys TorchServe with token auth off (its runtime config).
                torchserve_token: None,
                max_concurrent: probe_concurrency,
            },
            endpoints,
            custom_metrics: custom_metrics::Settings {
                addr: custom_metrics_addr,
                tls_cert_file,
                tls_key_file,
                requestheader_client_ca_file,
                requestheader_allowed_names,
                agent_endpoints,
                agent_service,
                agent_namespace,
                agent_timeout,
                sample_max_age,
                delegated_authorization,
                tls_reload_interval,
                queue_time: custom_metrics::queue_time::Settings {
                    endpoints: runtime_metrics_endpoints,
                    pod_ips: probe_pod_ips,
                    timeout: agent_timeout,
                },
            },
            activator: activator_service,
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
