//! Service `NAME-service`: the runtime's named ports, selecting serving pods only; selecting no
//! pod while the activator takes its traffic (`activator_slice`).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Service, ServicePort, ServiceSpec},
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{object_meta, server_selector};
use crate::{
    runtimes,
    vocabulary::{
        Validated,
        names::{COMPONENT_SERVER, LABEL_HELD_BY_ACTIVATOR, service_name},
    },
};

/// The serving pods; none while the activator takes the traffic, so that the EndpointSlice
/// controller empties its slices and the activator's slice is what the Service reaches.
fn selector(model: &Validated) -> BTreeMap<String, String> {
    let mut selector = server_selector(model);
    if model.activator.is_some() {
        selector.insert(LABEL_HELD_BY_ACTIVATOR.to_owned(), "true".to_owned());
    }
    selector
}

pub fn build(model: &Validated) -> Service {
    let ports = runtimes::of(model)
        .service_ports()
        .iter()
        .map(|port| ServicePort {
            name: Some(port.name.to_owned()),
            port: port.port,
            target_port: Some(IntOrString::String(port.name.to_owned())),
            protocol: Some("TCP".to_owned()),
            app_protocol: (port.name == "grpc").then(|| "kubernetes.io/h2c".to_owned()),
            ..ServicePort::default()
        })
        .collect();
    Service {
        metadata: object_meta(model, service_name(&model.name), COMPONENT_SERVER),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector(model)),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}
