//! Where each node's agent listens and what it last sampled. In the cluster the agents are the
//! endpoints of their headless Service (EndpointSlices carry each endpoint's `nodeName`); outside
//! it, `--agent-endpoints NODE=HOST:PORT,...` names them. Samples are pulled per request with a
//! timeout, so a metric is never older than the agent's own interval plus one round trip.

use std::{collections::BTreeMap, fmt, str::FromStr, time::Duration};

use k8s_openapi::{api::discovery::v1::EndpointSlice, jiff::Timestamp};
use kube::runtime::reflector::Store;
use node_agent::samples::{NodeSamples, SAMPLES_PATH};
use tracing::debug;

use crate::{
    bounded_io::{SAMPLES_BODY_LIMIT, body_within},
    vocabulary::host_port,
};

/// One `NODE=HOST:PORT` of `--agent-endpoints`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentEndpoint {
    pub node: String,
    pub address: String,
}

/// An `--agent-endpoints` entry that is not `NODE=HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not NODE=HOST:PORT")]
pub struct InvalidAgentEndpoint(pub String);

impl FromStr for AgentEndpoint {
    type Err = InvalidAgentEndpoint;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidAgentEndpoint(text.to_owned());
        let (node, address) = text.split_once('=').ok_or_else(invalid)?;
        let port = address.rsplit_once(':').map(|(_, port)| port);
        if node.is_empty() || port.is_none_or(|p| p.parse::<u16>().is_err()) {
            return Err(invalid());
        }
        Ok(Self {
            node: node.to_owned(),
            address: address.to_owned(),
        })
    }
}

/// How to find the agent of a node.
#[derive(Clone)]
pub enum AgentDirectory {
    /// Fixed by flag.
    Static(BTreeMap<String, String>),
    /// The ready endpoints of the agents' Service.
    EndpointSlices(Store<EndpointSlice>),
}

impl fmt::Debug for AgentDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Static(map) => f.debug_tuple("Static").field(map).finish(),
            Self::EndpointSlices(_) => f.write_str("EndpointSlices"),
        }
    }
}

impl AgentDirectory {
    pub fn from_flags(endpoints: Vec<AgentEndpoint>) -> Self {
        Self::Static(endpoints.into_iter().map(|e| (e.node, e.address)).collect())
    }

    /// `HOST:PORT` of the agent on `node`, if one is known and ready.
    pub fn address_of(&self, node: &str) -> Option<String> {
        match self {
            Self::Static(map) => map.get(node).cloned(),
            Self::EndpointSlices(store) => store.state().iter().find_map(|slice| agent_in_slice(slice, node)),
        }
    }
}

fn agent_in_slice(slice: &EndpointSlice, node: &str) -> Option<String> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .or(ports.first())?
        .port?;
    let endpoint = slice
        .endpoints
        .iter()
        .find(|e| e.node_name.as_deref() == Some(node) && e.conditions.as_ref().and_then(|c| c.ready) != Some(false))?;
    Some(host_port(endpoint.addresses.first()?, port))
}

/// Why a node's samples are not used; the pods on it get no value.
#[derive(Debug, thiserror::Error)]
pub enum SamplesError {
    #[error("no node agent known for node {0}")]
    NoAgent(String),
    #[error("node agent of {node} at {address}: {source}")]
    Unreachable {
        node: String,
        address: String,
        source: reqwest::Error,
    },
    #[error("node agent of {node} at {address}: {source}")]
    TooMuch {
        node: String,
        address: String,
        source: crate::bounded_io::BodyError,
    },
    #[error("node agent of {node} at {address} answered samples that do not parse: {source}")]
    Unreadable {
        node: String,
        address: String,
        source: serde_json::Error,
    },
    #[error("node agent of {node} sampled at {sampled_at}, {age:?} ago, more than --sample-max-age")]
    Stale {
        node: String,
        sampled_at: String,
        age: Duration,
    },
    #[error("node agent of {node}: unreadable sample time {sampled_at:?}")]
    BadTime { node: String, sampled_at: String },
}

/// Fetches `/v1/samples` from node agents.
#[derive(Clone, Debug)]
pub struct SampleSource {
    pub directory: AgentDirectory,
    pub http: reqwest::Client,
    pub max_age: Duration,
}

/// A node's samples with their parsed time.
pub struct FreshSamples {
    pub samples: NodeSamples,
    pub sampled_at: Timestamp,
}

impl SampleSource {
    pub fn new(directory: AgentDirectory, timeout: Duration, max_age: Duration) -> Self {
        Self {
            directory,
            http: crate::bounded_io::peer_client(timeout),
            max_age,
        }
    }

    /// The node's latest samples, if its agent answers in time with a sample young enough.
    pub async fn fetch(&self, node: &str, now: Timestamp) -> Result<FreshSamples, SamplesError> {
        let address = self
            .directory
            .address_of(node)
            .ok_or_else(|| SamplesError::NoAgent(node.to_owned()))?;
        let unreachable = |source| SamplesError::Unreachable {
            node: node.to_owned(),
            address: address.clone(),
            source,
        };
        let response = self
            .http
            .get(format!("http://{address}{SAMPLES_PATH}"))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(unreachable)?;
        let body = body_within(response, SAMPLES_BODY_LIMIT)
            .await
            .map_err(|source| SamplesError::TooMuch {
                node: node.to_owned(),
                address: address.clone(),
                source,
            })?;
        let samples: NodeSamples = serde_json::from_slice(&body).map_err(|source| SamplesError::Unreadable {
            node: node.to_owned(),
            address: address.clone(),
            source,
        })?;
        let sampled_at: Timestamp = samples.sampled_at.parse().map_err(|_| SamplesError::BadTime {
            node: node.to_owned(),
            sampled_at: samples.sampled_at.clone(),
        })?;
        let age = now.duration_since(sampled_at).unsigned_abs();
        if age > self.max_age {
            return Err(SamplesError::Stale {
                node: node.to_owned(),
                sampled_at: samples.sampled_at,
                age,
            });
        }
        debug!(node, %address, gpus = samples.gpus.len(), "node agent samples");
        Ok(FreshSamples { samples, sampled_at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_endpoints_parse_or_say_what_is_wrong() {
        assert_eq!(
            "gpu-a100-0=127.0.0.1:9400".parse(),
            Ok(AgentEndpoint {
                node: "gpu-a100-0".into(),
                address: "127.0.0.1:9400".into()
            })
        );
        assert_eq!("n=[::1]:9400".parse::<AgentEndpoint>().unwrap().address, "[::1]:9400");
        for bad in ["gpu-a100-0", "=127.0.0.1:1", "n=127.0.0.1", "n=host:port"] {
            let error = bad.parse::<AgentEndpoint>().unwrap_err();
            assert_eq!(error.to_string(), format!("{bad:?} is not NODE=HOST:PORT"));
        }
    }

    #[test]
    fn endpoint_slices_give_the_ready_agent_of_a_node() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "addressType": "IPv4",
            "metadata": {"name": "node-agent-abc"},
            "ports": [{"name": "metrics", "port": 9400}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "nodeName": "a", "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "nodeName": "b", "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"], "nodeName": "c"}
            ]
        }))
        .unwrap();
        assert_eq!(agent_in_slice(&slice, "a").as_deref(), Some("10.0.0.1:9400"));
        assert_eq!(agent_in_slice(&slice, "b"), None);
        assert_eq!(agent_in_slice(&slice, "c").as_deref(), Some("10.0.0.3:9400"));
        assert_eq!(agent_in_slice(&slice, "d"), None);
    }
}
