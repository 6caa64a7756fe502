//! Model readiness: whether the model itself answers, not merely whether a port is open. Every
//! piece of it lives in this folder:
//!
//! - the [`Prober`] and one client per runtime ([`triton`], [`torchserve`], [`fastapi`]), each
//!   turning what its runtime says into a [`ProbeOutcome`] with a fixed reason;
//! - [`targets`]: where each serving pod's runtime is reached (its IP, or an override);
//! - [`summary`]: every ready pod probed and summed up into the [`ModelReadiness`] that the
//!   `ModelReady` condition reports, or the kubelet's word when no pod can be probed;
//! - [`schedule`]: when to probe a model again, with backoff for silent ones.
//!
//! The kubelet's own readiness probes (what makes a pod Ready) are part of each runtime's
//! profile in `crate::runtimes`. The [`Prober`] is stateless: it bounds how many probes run at
//! once and how long each may take. The reconcile turns [`schedule`]'s answer into its requeue,
//! so a thousand models become a thousand timers on one queue rather than a thousand loops.

pub mod fastapi;
mod http;
pub mod schedule;
pub mod summary;
pub mod targets;
pub mod torchserve;
pub mod triton;

use std::{future::Future, sync::Arc, time::Duration};

use serde::Serialize;
use tokio::sync::Semaphore;

use self::{fastapi::FastapiProbe, torchserve::TorchserveProbe, triton::TritonProbe};
pub use self::{
    schedule::{ProbeSchedule, recheck_after},
    summary::{ModelReadiness, probe_models},
    targets::EndpointResolver,
};
use crate::{
    api::{ModelInfo, conditions::reasons},
    runtimes,
    vocabulary::{Runtime, host_port},
};

/// One model on one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    pub runtime: Runtime,
    /// `HOST:PORT` of the port the runtime's probe speaks to: Triton's gRPC port (8001),
    /// TorchServe's management port (8081), the FastAPI app's HTTP port (8000).
    pub endpoint: String,
    /// The model's name inside the runtime (`spec.modelName`).
    pub model_name: String,
    /// The ModelDeployment's `version`; each runtime decides how it maps (see its probe).
    pub version: Option<String>,
}

impl ProbeTarget {
    /// The target on a pod (or any host): its address and the runtime's probe port. An IPv6
    /// address, as pods in dual-stack clusters have, gets its brackets.
    pub fn on_host(runtime: Runtime, host: &str, model_name: impl Into<String>, version: Option<String>) -> Self {
        let port = runtimes::profile(runtime).probe_port().port;
        Self {
            runtime,
            endpoint: host_port(host, port),
            model_name: model_name.into(),
            version,
        }
    }
}

/// What a runtime said about a model.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeOutcome {
    /// True only when the runtime reports the model itself as loaded and answering.
    pub ready: bool,
    /// A reason from [`crate::api::conditions::reasons`], for the `ModelReady` condition.
    pub reason: &'static str,
    /// What the runtime said, for the condition's message.
    pub message: String,
    /// The model as the runtime describes it (`status.model`), when it is ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelInfo>,
}

impl ProbeOutcome {
    pub fn ready(message: impl Into<String>, model: Option<ModelInfo>) -> Self {
        Self {
            ready: true,
            reason: reasons::MODEL_LOADED,
            message: message.into(),
            model,
        }
    }

    pub fn not_ready(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            ready: false,
            reason,
            message: message.into(),
            model: None,
        }
    }
}

/// A runtime's readiness check. Implementations classify every failure into an outcome with a
/// reason; only the [`Prober`] adds the timeout around them.
pub trait ModelProbe: Send + Sync {
    fn probe(&self, target: &ProbeTarget) -> impl Future<Output = ProbeOutcome> + Send;
}

/// How probes are made.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    /// The longest one probe may take, connection included.
    pub timeout: Duration,
    /// Bearer token for TorchServe's management API, when its token auth is on.
    pub torchserve_token: Option<String>,
    /// How many probes may be in flight at once.
    pub max_concurrent: usize,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            torchserve_token: None,
            max_concurrent: 32,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProberError {
    #[error("max_concurrent must be at least 1")]
    NoConcurrency,
}

/// Probes models on any runtime, at most `max_concurrent` at a time, each within `timeout`.
/// Cheap to share: wrap it in an `Arc` and call [`Prober::probe`] from every reconcile.
pub struct Prober {
    triton: TritonProbe,
    torchserve: TorchserveProbe,
    fastapi: FastapiProbe,
    permits: Arc<Semaphore>,
    timeout: Duration,
}

impl Prober {
    pub fn new(settings: ProbeSettings) -> Result<Self, ProberError> {
        let ProbeSettings {
            timeout,
            torchserve_token,
            max_concurrent,
        } = settings;
        if max_concurrent == 0 {
            return Err(ProberError::NoConcurrency);
        }
        // One connection pool for every HTTP runtime; its timeout backs up the outer one.
        let http = crate::bounded_io::peer_client(timeout);
        Ok(Self {
            triton: TritonProbe::new(timeout),
            torchserve: TorchserveProbe::new(http.clone(), torchserve_token),
            fastapi: FastapiProbe::new(http),
            permits: Arc::new(Semaphore::new(max_concurrent)),
            timeout,
        })
    }

    /// Probes one model. Waits for a free slot first; the timeout starts once the probe runs.
    pub async fn probe(&self, target: &ProbeTarget) -> ProbeOutcome {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the probe semaphore is never closed");
        let probe = async {
            match target.runtime {
                Runtime::Triton => self.triton.probe(target).await,
                Runtime::Torchserve => self.torchserve.probe(target).await,
                Runtime::FastapiPytorch => self.fastapi.probe(target).await,
            }
        };
        match tokio::time::timeout(self.timeout, probe).await {
            Ok(outcome) => outcome,
            Err(_) => ProbeOutcome::not_ready(
                reasons::PROBE_TIMEOUT,
                format!(
                    "{} on {} did not answer within {:?}",
                    target.runtime, target.endpoint, self.timeout
                ),
            ),
        }
    }

    /// Probes many models concurrently (still at most `max_concurrent` at once); the outcomes
    /// come back in the order of `targets`.
    pub async fn probe_all(&self, targets: &[ProbeTarget]) -> Vec<ProbeOutcome> {
        futures::future::join_all(targets.iter().map(|target| self.probe(target))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that accepts connections and never answers.
    async fn silent_server() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                // Reads the request and waits for the client to give up.
                tokio::spawn(async move {
                    let mut sink = Vec::new();
                    let _ = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut sink).await;
                });
            }
        });
        endpoint
    }

    #[tokio::test]
    async fn probes_time_out_and_never_exceed_the_concurrency_bound() {
        let endpoint = silent_server().await;
        let prober = Prober::new(ProbeSettings {
            timeout: Duration::from_millis(300),
            torchserve_token: None,
            max_concurrent: 2,
        })
        .unwrap();
        let targets: Vec<ProbeTarget> = (0..6)
            .map(|n| ProbeTarget {
                runtime: Runtime::FastapiPytorch,
                endpoint: endpoint.clone(),
                model_name: format!("model-{n}"),
                version: None,
            })
            .collect();
        let started = std::time::Instant::now();
        let outcomes = prober.probe_all(&targets).await;
        let elapsed = started.elapsed();
        assert!(
            outcomes.iter().all(|o| !o.ready && o.reason == reasons::PROBE_TIMEOUT),
            "{outcomes:#?}"
        );
        // Six probes, two at a time, each cut off at 300 ms: three rounds, where unbounded
        // probes would all end after one.
        assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    }

    #[test]
    fn targets_on_a_host_use_the_runtimes_probe_port() {
        let on = |runtime, host| ProbeTarget::on_host(runtime, host, "m", None).endpoint;
        assert_eq!(on(Runtime::Triton, "10.244.0.7"), "10.244.0.7:8001");
        assert_eq!(on(Runtime::Torchserve, "10.244.0.7"), "10.244.0.7:8081");
        assert_eq!(on(Runtime::FastapiPytorch, "10.244.0.7"), "10.244.0.7:8000");
        assert_eq!(on(Runtime::Triton, "fd00::7"), "[fd00::7]:8001");
        for runtime in Runtime::ALL {
            let profile = runtimes::profile(runtime);
            assert!(
                profile.ports().contains(&profile.probe_port()),
                "{runtime} probes a port it exposes"
            );
            assert!(
                crate::vocabulary::parse_endpoint(&ProbeTarget::on_host(runtime, "fd00::7", "m", None).endpoint)
                    .is_ok()
            );
        }
    }

    #[test]
    fn a_prober_needs_at_least_one_slot() {
        let settings = ProbeSettings {
            max_concurrent: 0,
            ..ProbeSettings::default()
        };
        assert!(matches!(Prober::new(settings), Err(ProberError::NoConcurrency)));
    }
}
