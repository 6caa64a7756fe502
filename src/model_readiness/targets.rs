//! Where the operator reaches each serving pod's runtime for the model probe.

use kube::ResourceExt;

use super::ProbeTarget;
use crate::vocabulary::{
    InvalidModelEndpoint, ModelEndpoints, Validated, cached::CachedPod, names::LABEL_VERSION, parse_model_endpoints,
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
    pub fn new(specs: &[String], probe_pod_ips: bool) -> Result<Self, InvalidModelEndpoint> {
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
    pub fn target(&self, model: &Validated, pod: &CachedPod) -> Option<ProbeTarget> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
            let error = EndpointResolver::new(&[bad.into()], true).unwrap_err().to_string();
            assert!(error.contains("--probe-endpoint"), "{error}");
        }
    }
}
