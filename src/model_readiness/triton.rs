//! Triton's model probe, over the KServe-v2 gRPC API on the gRPC port (8001).
//!
//! `ModelReady{name, version}` alone decides readiness: the server-wide `/v2/health/ready` stays
//! true after a model is unloaded (`--strict-readiness` ignores unloaded versions) and goes false
//! while any other model loads in explicit mode, so it says nothing about this model. When the
//! model is not ready, `RepositoryIndex` supplies the why (`LOADING`, `UNAVAILABLE` + `unloaded`,
//! a load error); when it is, `ModelMetadata` fills `status.model`.

use std::time::Duration;

use tonic::{Code, Status, transport::Endpoint};

use self::kserve::{
    ModelMetadataRequest, ModelReadyRequest, RepositoryIndexRequest,
    grpc_inference_service_client::GrpcInferenceServiceClient, model_metadata_response::TensorMetadata,
    repository_index_response::ModelIndex,
};
use super::{ModelProbe, ProbeOutcome, ProbeTarget};
use crate::{
    api::{ModelInfo, TensorInfo, conditions::reasons},
    bounded_io::PROBE_MESSAGE_LIMIT,
    vocabulary::error_chain,
};

/// Client code generated from `proto/kserve/v2/grpc_predict_v2.proto`.
#[allow(clippy::all, clippy::pedantic)]
pub mod kserve {
    tonic::include_proto!("inference");
}

type Client = GrpcInferenceServiceClient<tonic::transport::Channel>;

pub struct TritonProbe {
    timeout: Duration,
}

impl TritonProbe {
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }

    /// Connects eagerly, so that "nothing listens there" is told apart from "Triton answered
    /// UNAVAILABLE" (a lazy channel reports both as UNAVAILABLE).
    async fn connect(&self, endpoint: &str) -> Result<Client, ProbeOutcome> {
        let uri = format!("http://{endpoint}");
        let endpoint_config = Endpoint::from_shared(uri).map_err(|err| {
            ProbeOutcome::not_ready(
                reasons::PROBE_FAILED,
                format!("{endpoint} is not a gRPC address: {err}"),
            )
        })?;
        let channel = endpoint_config
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .connect()
            .await
            .map_err(|err| {
                ProbeOutcome::not_ready(
                    reasons::SERVER_UNAVAILABLE,
                    format!("nothing answers gRPC on {endpoint}: {}", error_chain(&err)),
                )
            })?;
        // Explicit, not tonic's default: no answer a server sends may grow the operator by more.
        Ok(GrpcInferenceServiceClient::new(channel)
            .max_decoding_message_size(PROBE_MESSAGE_LIMIT)
            .max_encoding_message_size(PROBE_MESSAGE_LIMIT))
    }
}

/// The Triton model version to ask about, from the ModelDeployment's `version`. Triton versions
/// are the repository's numeric directories, while a ModelDeployment's version is free text
/// (default `v1`), so only a version made of digits (`"3"`) is passed on; anything else asks for
/// the version Triton's version policy serves (an empty version).
pub fn triton_version(version: Option<&str>) -> String {
    match version {
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => v.to_owned(),
        _ => String::new(),
    }
}

impl ModelProbe for TritonProbe {
    async fn probe(&self, target: &ProbeTarget) -> ProbeOutcome {
        let mut client = match self.connect(&target.endpoint).await {
            Ok(client) => client,
            Err(outcome) => return outcome,
        };
        let name = target.model_name.clone();
        let version = triton_version(target.version.as_deref());
        let shown = shown_model(&name, &version);
        let ready = client
            .model_ready(ModelReadyRequest {
                name: name.clone(),
                version: version.clone(),
            })
            .await;
        match ready {
            Ok(response) if response.get_ref().ready => {
                match client.model_metadata(ModelMetadataRequest { name, version }).await {
                    Ok(metadata) => ProbeOutcome::ready(
                        format!("Triton reports {shown} ready"),
                        Some(model_info(metadata.into_inner())),
                    ),
                    Err(status) => ProbeOutcome::ready(
                        format!(
                            "Triton reports {shown} ready; its metadata is unavailable: {}",
                            status.message()
                        ),
                        None,
                    ),
                }
            }
            Ok(_) => match repository_entry(&mut client, &name, &version).await {
                Ok(Some(entry)) => from_repository_state(&shown, &entry),
                Ok(None) => ProbeOutcome::not_ready(
                    reasons::MODEL_NOT_REGISTERED,
                    format!("Triton's model repository has no model {name:?}"),
                ),
                Err(status) => ProbeOutcome::not_ready(
                    reasons::MODEL_NOT_READY,
                    format!(
                        "Triton reports {shown} not ready (its repository index is unavailable: {})",
                        status.message()
                    ),
                ),
            },
            // Triton answers UNAVAILABLE to every model while the server is not ready, which
            // in explicit mode includes while any model loads: the index tells which.
            Err(status) if status.code() == Code::Unavailable => {
                match repository_entry(&mut client, &name, &version).await {
                    Ok(Some(entry)) if entry.state == "LOADING" => ProbeOutcome::not_ready(
                        reasons::MODEL_LOADING,
                        format!("Triton is loading {shown}; the server is not ready until it finishes"),
                    ),
                    _ => ProbeOutcome::not_ready(
                        reasons::SERVER_UNAVAILABLE,
                        format!("Triton on {} is not ready: {}", target.endpoint, status.message()),
                    ),
                }
            }
            Err(status) => ProbeOutcome::not_ready(reasons::PROBE_FAILED, rpc_failure("ModelReady", &status)),
        }
    }
}

/// The repository entry for the model, preferring the asked version when there are several.
async fn repository_entry(client: &mut Client, name: &str, version: &str) -> Result<Option<ModelIndex>, Status> {
    let index = client
        .repository_index(RepositoryIndexRequest {
            repository_name: String::new(),
            ready: false,
        })
        .await?
        .into_inner();
    let mut entries: Vec<ModelIndex> = index.models.into_iter().filter(|m| m.name == name).collect();
    let position = entries
        .iter()
        .position(|m| !version.is_empty() && m.version == version)
        .unwrap_or(0);
    Ok((!entries.is_empty()).then(|| entries.swap_remove(position)))
}

fn from_repository_state(shown: &str, entry: &ModelIndex) -> ProbeOutcome {
    let ModelIndex { state, reason, .. } = entry;
    let said = if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    };
    match state.as_str() {
        "LOADING" => ProbeOutcome::not_ready(reasons::MODEL_LOADING, format!("Triton is loading {shown}")),
        "UNLOADING" => ProbeOutcome::not_ready(reasons::MODEL_UNLOADED, format!("Triton is unloading {shown}")),
        // An explicit unload leaves the reason "unloaded"; anything else is a failed load.
        "UNAVAILABLE" if reason == "unloaded" => {
            ProbeOutcome::not_ready(reasons::MODEL_UNLOADED, format!("Triton has unloaded {shown}"))
        }
        // In explicit mode a model in the repository that nobody asked to load has no state.
        "" => ProbeOutcome::not_ready(
            reasons::MODEL_UNLOADED,
            format!("Triton has not loaded {shown}: it is in the repository but was never loaded"),
        ),
        "UNAVAILABLE" if !reason.is_empty() => ProbeOutcome::not_ready(
            reasons::MODEL_LOAD_FAILED,
            format!("Triton failed to load {shown}{said}"),
        ),
        _ => ProbeOutcome::not_ready(
            reasons::MODEL_NOT_READY,
            format!("Triton reports {shown} not ready (repository state {state}{said})"),
        ),
    }
}

fn model_info(metadata: kserve::ModelMetadataResponse) -> ModelInfo {
    let tensors = |list: Vec<TensorMetadata>| {
        list.into_iter()
            .map(|t| TensorInfo {
                name: t.name,
                datatype: t.datatype,
                shape: t.shape,
            })
            .collect()
    };
    ModelInfo {
        name: metadata.name,
        platform: Some(metadata.platform).filter(|p| !p.is_empty()),
        versions: metadata.versions,
        inputs: tensors(metadata.inputs),
        outputs: tensors(metadata.outputs),
    }
}

fn shown_model(name: &str, version: &str) -> String {
    if version.is_empty() {
        format!("model {name:?}")
    } else {
        format!("model {name:?} version {version}")
    }
}

fn rpc_failure(rpc: &str, status: &Status) -> String {
    format!("Triton's {rpc} failed with {:?}: {}", status.code(), status.message())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_numeric_versions_reach_triton() {
        assert_eq!(triton_version(Some("3")), "3");
        assert_eq!(triton_version(Some("12")), "12");
        assert_eq!(triton_version(Some("v1")), "");
        assert_eq!(triton_version(Some("2024-01")), "");
        assert_eq!(triton_version(Some("")), "");
        assert_eq!(triton_version(None), "");
    }

    fn entry(state: &str, reason: &str) -> ModelIndex {
        ModelIndex {
            name: "m".into(),
            version: "1".into(),
            state: state.into(),
            reason: reason.into(),
        }
    }

    #[test]
    fn repository_states_become_reasons() {
        let reason = |state, why| from_repository_state("model \"m\"", &entry(state, why)).reason;
        assert_eq!(reason("LOADING", ""), reasons::MODEL_LOADING);
        assert_eq!(reason("UNAVAILABLE", "unloaded"), reasons::MODEL_UNLOADED);
        assert_eq!(reason("UNLOADING", ""), reasons::MODEL_UNLOADED);
        assert_eq!(reason("UNAVAILABLE", "failed to load 'm'"), reasons::MODEL_LOAD_FAILED);
        assert_eq!(reason("UNAVAILABLE", ""), reasons::MODEL_NOT_READY);
        assert_eq!(reason("READY", ""), reasons::MODEL_NOT_READY);
        assert_eq!(reason("", ""), reasons::MODEL_UNLOADED);
        let failed = from_repository_state("model \"m\"", &entry("UNAVAILABLE", "ModuleNotFoundError: numpy"));
        assert_eq!(
            failed.message,
            "Triton failed to load model \"m\": ModuleNotFoundError: numpy"
        );
        assert!(!failed.ready);
    }
}
