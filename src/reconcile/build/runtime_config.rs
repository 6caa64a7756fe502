//! ConfigMap `NAME-runtime-config`: the runtime's generated configuration files, if any.

use k8s_openapi::api::core::v1::ConfigMap;

use super::object_meta;
use crate::{
    runtimes,
    vocabulary::{
        Validated,
        names::{COMPONENT_SERVER, runtime_config_name},
    },
};

pub fn build(model: &Validated) -> Option<ConfigMap> {
    let files = runtimes::of(model).config_files(model);
    if files.is_empty() {
        return None;
    }
    Some(ConfigMap {
        metadata: object_meta(model, runtime_config_name(&model.name), COMPONENT_SERVER),
        data: Some(files),
        ..ConfigMap::default()
    })
}
