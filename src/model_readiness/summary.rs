//! Asks the runtime in each ready serving pod whether the model itself answers and sums the
//! answers up into the [`ModelReadiness`] the `ModelReady` condition reports. The kubelet's
//! probes say a pod's port is open; this says the model is loaded. Where no pod can be probed,
//! the kubelet's word is taken, and the reason says so.

use std::sync::Arc;

use kube::ResourceExt;

use super::{EndpointResolver, ProbeOutcome, ProbeTarget, Prober};
use crate::{
    api::{ModelInfo, conditions::reasons},
    vocabulary::{
        Validated,
        cached::{CachedDeployment, CachedPod},
        pods::{is_ready, is_terminating},
    },
};

/// How many replicas' models answer, and why (or why not), as the model probes report it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelReadiness {
    pub ready_replicas: i32,
    pub reason: &'static str,
    pub message: String,
    pub model: Option<ModelInfo>,
}

impl ModelReadiness {
    /// Readiness as the kubelet's probes see it, for when no model probe has answered: the
    /// reason says so, so that nobody mistakes it for the model's own word.
    pub fn from_pod_readiness(deployment: Option<&CachedDeployment>) -> Self {
        let ready = deployment
            .and_then(|d| d.status.as_ref())
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        let (reason, message) = if ready > 0 {
            (
                reasons::PODS_READY,
                format!("{ready} pod(s) pass the runtime's readiness probe; the model itself has not been probed"),
            )
        } else {
            (
                reasons::PODS_NOT_READY,
                "no pod passes the runtime's readiness probe yet".to_owned(),
            )
        };
        Self {
            ready_replicas: ready,
            reason,
            message,
            model: None,
        }
    }
}

/// The pods the kubelet calls ready and that are not going away: only these receive traffic,
/// so only these are asked about the model.
pub fn ready_pods(pods: &[Arc<CachedPod>]) -> Vec<&CachedPod> {
    pods.iter()
        .map(Arc::as_ref)
        .filter(|pod| !is_terminating(pod) && is_ready(pod))
        .collect()
}

/// Probes every ready pod (the Prober bounds how many at once across all models) and sums
/// the answers up. Also returns the outcome that decides when to look again: a not-ready one
/// when any pod's model does not answer, else a ready one; `None` when no pod was probed.
pub async fn probe_models(
    prober: &Prober,
    resolver: &EndpointResolver,
    model: &Validated,
    pods: &[Arc<CachedPod>],
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
    use crate::vocabulary::Runtime;

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
}
