//! Readiness (client): asks the runtime in each ready serving pod whether the model itself
//! answers, through the runtime's `ModelProbe`, and sums the answers up for the `ModelReady`
//! condition. The kubelet's probes say a pod's port is open; this says the model is loaded.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::{build::LABEL_VERSION, status::ModelReadiness, validate::Validated};
use crate::{
    api::conditions::reasons,
    probe::{ModelEndpoints, ProbeOutcome, ProbeTarget, Prober, parse_model_endpoints},
};

/// Where the operator reaches a pod's runtime: the pod's IP and the runtime's probe port, unless
/// an override names another address for all pods of one ModelDeployment. An operator that
/// cannot route to pod IPs (one running outside the cluster, or the test cluster, whose pods
/// have fake IPs) turns pod probing off: models without an override then take `ModelReady`
/// from the kubelet's readiness probe, and say so in the reason.
#[derive(Debug, Clone)]
pub struct EndpointResolver {
    overrides: ModelEndpoints,
    probe_pod_ips: bool,
}

impl EndpointResolver {
    /// Overrides written `NAMESPACE/NAME=HOST:PORT` (`--probe-endpoint`).
    pub fn new(specs: &[String], probe_pod_ips: bool) -> Result<Self, String> {
        Ok(Self {
            overrides: parse_model_endpoints("probe-endpoint", specs)?,
            probe_pod_ips,
        })
    }

    /// Whether the model's pods can be probed at all.
    pub fn reaches(&self, model: &Validated) -> bool {
        self.probe_pod_ips
            || self
                .overrides
                .contains_key(&(model.namespace.clone(), model.name.clone()))
    }

    /// The probe target for one serving pod; `None` while the pod has no IP.
    pub fn target(&self, model: &Validated, pod: &Pod) -> Option<ProbeTarget> {
        // A pod of the previous version, during a rollout, is asked for its own version.
        let version = pod
            .labels()
            .get(LABEL_VERSION)
            .cloned()
            .unwrap_or_else(|| model.version.clone());
        let key = (model.namespace.clone(), model.name.clone());
        if let Some(endpoint) = self.overrides.get(&key) {
            return Some(ProbeTarget {
                runtime: model.runtime,
                endpoint: endpoint.clone(),
                model_name: model.model_name.clone(),
                version: Some(version),
            });
        }
        if !self.probe_pod_ips {
            return None;
        }
        let ip = pod.status.as_ref()?.pod_ip.as_deref().filter(|ip| !ip.is_empty())?;
        Some(ProbeTarget::on_host(
            model.runtime,
            ip,
            model.model_name.clone(),
            Some(version),
        ))
    }
}

/// The pods the kubelet calls ready and that are not going away: only these receive traffic,
/// so only these are asked about the model.
pub fn ready_pods(pods: &[Arc<Pod>]) -> Vec<&Pod> {
    pods.iter()
        .map(Arc::as_ref)
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter(|pod| {
            pod.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect()
}

/// Probes every ready pod (the Prober bounds how many at once across all models) and sums
/// the answers up. Also returns the outcome that decides when to look again: a not-ready one
/// when any pod's model does not answer, else a ready one; `None` when no pod was probed.
pub async fn probe_models(
    prober: &Prober,
    resolver: &EndpointResolver,
    model: &Validated,
    pods: &[Arc<Pod>],
) -> (ModelReadiness, Option<ProbeOutcome>) {
    let ready = ready_pods(pods);
    let targets: Vec<(String, ProbeTarget)> = ready
        .iter()
        .filter_map(|pod| Some((pod.name_any(), resolver.target(model, pod)?)))
        .collect();
    if targets.is_empty() {
        return (
            ModelReadiness {
                ready_replicas: 0,
                reason: reasons::PODS_NOT_READY,
                message: "no serving pod passes the runtime's readiness probe yet".to_owned(),
                model: None,
            },
            None,
        );
    }
    let outcomes = prober
        .probe_all(&targets.iter().map(|(_, target)| target.clone()).collect::<Vec<_>>())
        .await;
    summarize(&targets, outcomes)
}

fn summarize(targets: &[(String, ProbeTarget)], outcomes: Vec<ProbeOutcome>) -> (ModelReadiness, Option<ProbeOutcome>) {
    let probed = outcomes.len();
    let answering = outcomes.iter().filter(|o| o.ready).count();
    let model = outcomes.iter().find(|o| o.ready).and_then(|o| o.model.clone());
    let first_silent = targets.iter().zip(&outcomes).find(|(_, outcome)| !outcome.ready);
    let readiness = match first_silent {
        None => ModelReadiness {
            ready_replicas: count(answering),
            reason: reasons::MODEL_LOADED,
            message: format!("the model answers on {answering} of {probed} ready pod(s)"),
            model,
        },
        Some(((pod, target), outcome)) => ModelReadiness {
            ready_replicas: count(answering),
            reason: outcome.reason,
            message: format!(
                "the model answers on {answering} of {probed} ready pod(s); pod {pod} ({}): {}",
                target.endpoint, outcome.message
            ),
            model,
        },
    };
    let decisive = first_silent
        .map(|(_, outcome)| outcome.clone())
        .or_else(|| outcomes.into_iter().next());
    (readiness, decisive)
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ModelInfo, Runtime};

    fn target(endpoint: &str) -> ProbeTarget {
        ProbeTarget {
            runtime: Runtime::Triton,
            endpoint: endpoint.into(),
            model_name: "resnet".into(),
            version: Some("3".into()),
        }
    }

    fn loaded() -> ProbeOutcome {
        ProbeOutcome::ready(
            "resnet 3 is ready",
            Some(ModelInfo {
                name: "resnet".into(),
                platform: Some("onnxruntime_onnx".into()),
                ..ModelInfo::default()
            }),
        )
    }

    #[test]
    fn every_pod_answering_is_model_loaded_with_the_metadata() {
        let targets = [
            ("p0".into(), target("10.0.0.1:8001")),
            ("p1".into(), target("10.0.0.2:8001")),
        ];
        let (readiness, decisive) = summarize(&targets, vec![loaded(), loaded()]);
        assert_eq!(readiness.ready_replicas, 2);
        assert_eq!(readiness.reason, reasons::MODEL_LOADED);
        assert_eq!(readiness.model.unwrap().platform.as_deref(), Some("onnxruntime_onnx"));
        assert!(decisive.unwrap().ready);
    }

    #[test]
    fn a_silent_pod_names_itself_and_its_reason() {
        let targets = [
            ("p0".into(), target("10.0.0.1:8001")),
            ("p1".into(), target("10.0.0.2:8001")),
        ];
        let loading = ProbeOutcome::not_ready(reasons::MODEL_LOADING, "resnet is LOADING");
        let (readiness, decisive) = summarize(&targets, vec![loaded(), loading]);
        assert_eq!(readiness.ready_replicas, 1);
        assert_eq!(readiness.reason, reasons::MODEL_LOADING);
        assert!(
            readiness.message.contains("1 of 2")
                && readiness.message.contains("pod p1 (10.0.0.2:8001): resnet is LOADING"),
            "{}",
            readiness.message
        );
        assert!(readiness.model.is_some(), "metadata from the pod that answers");
        assert!(!decisive.unwrap().ready, "a silent pod decides when to look again");
    }

    #[test]
    fn overrides_parse_and_bad_ones_name_the_flag() {
        let resolver = EndpointResolver::new(&["ml/resnet=127.0.0.1:9001".into()], false).unwrap();
        assert_eq!(resolver.overrides[&("ml".into(), "resnet".into())], "127.0.0.1:9001");
        for bad in [
            "resnet=127.0.0.1:9001",
            "ml/resnet",
            "ml/=127.0.0.1:1",
            "ml/resnet=no-port",
        ] {
            let error = EndpointResolver::new(&[bad.into()], true).unwrap_err();
            assert!(error.contains("--probe-endpoint"), "{error}");
        }
    }
}
