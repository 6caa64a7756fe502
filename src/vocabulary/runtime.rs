//! The inference servers a ModelDeployment can choose (`spec.runtime`).

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The inference servers the operator knows how to run and probe.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    /// NVIDIA Triton Inference Server (KServe v2 HTTP and gRPC).
    Triton,
    /// PyTorch TorchServe (inference and management APIs).
    Torchserve,
    /// The project's FastAPI + PyTorch server (`inference/`).
    FastapiPytorch,
}

impl Runtime {
    pub const ALL: [Runtime; 3] = [Runtime::Triton, Runtime::Torchserve, Runtime::FastapiPytorch];

    /// The spelling used in the spec (and in the runtime label of every pod).
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Triton => "triton",
            Runtime::Torchserve => "torchserve",
            Runtime::FastapiPytorch => "fastapi-pytorch",
        }
    }

    /// The runtime a spec spelling names; `None` for any other text.
    pub fn from_spelling(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|runtime| runtime.as_str() == text)
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip_and_match_serde() {
        for runtime in Runtime::ALL {
            assert_eq!(Runtime::from_spelling(runtime.as_str()), Some(runtime));
            assert_eq!(serde_json::to_value(runtime).unwrap(), runtime.as_str());
        }
        assert_eq!(Runtime::from_spelling("Triton"), None);
    }
}
