//! `tests/fixtures/bad-specs.yaml`: ModelDeployments each refused for one field, as cases
//! merged into a valid base.

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
pub struct Table {
    pub base: Value,
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
pub struct Case {
    pub case: String,
    #[serde(default)]
    pub metadata: serde_json::Map<String, Value>,
    #[serde(default)]
    pub spec: serde_json::Map<String, Value>,
    /// The field every refusal must name.
    pub field: String,
}

impl Case {
    /// The base with this case's metadata merged in and its spec keys replaced.
    pub fn object(&self, base: &Value) -> Value {
        let mut object = base.clone();
        for (key, value) in &self.metadata {
            object["metadata"][key] = value.clone();
        }
        for (key, value) in &self.spec {
            object["spec"][key] = value.clone();
        }
        object
    }
}

pub fn load() -> Table {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bad-specs.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}
