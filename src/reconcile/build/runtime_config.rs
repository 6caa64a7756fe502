//! ConfigMap `NAME-runtime-config`: the runtime's generated configuration files, if any.

use k8s_openapi::api::core::v1::ConfigMap;

use super::{COMPONENT_SERVER, object_meta};
use crate::reconcile::validate::Validated;

pub fn config_map_name(model_name: &str) -> String {
    format!("{model_name}-runtime-config")
}

pub fn build(model: &Validated) -> Option<ConfigMap> {
    let files = model.profile.config_files(model);
    if files.is_empty() {
        return None;
    }
    Some(ConfigMap {
        metadata: object_meta(model, config_map_name(&model.name), COMPONENT_SERVER),
        data: Some(files),
        ..ConfigMap::default()
    })
}
