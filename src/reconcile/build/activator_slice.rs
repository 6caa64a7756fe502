//! EndpointSlice `NAME-service-activator`: while the model has no replica that answers (at zero,
//! or waking), its Service has no selector and this slice sends the Service's traffic to the
//! activator, which holds it until the model answers. The way Knative's activator takes a
//! revision's traffic; clients keep dialling the same Service name, and the request's Host
//! (or `:authority`) tells the activator which model it is for.

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};

use super::object_meta;
use crate::{
    runtimes,
    vocabulary::{
        Validated,
        names::{
            ACTIVATOR_GRPC_PORT, ACTIVATOR_HTTP_PORT, COMPONENT_SERVER, ENDPOINTSLICE_MANAGER,
            LABEL_ENDPOINTSLICE_MANAGED_BY, LABEL_SERVICE_NAME, activator_slice_name, service_name,
        },
    },
};

/// The slice while the activator takes the model's traffic; `None` while the pods do.
pub fn build(model: &Validated) -> Option<EndpointSlice> {
    let activator = model.activator.as_ref()?;
    let mut metadata = object_meta(model, activator_slice_name(&model.name), COMPONENT_SERVER);
    let labels = metadata.labels.get_or_insert_with(Default::default);
    labels.insert(LABEL_SERVICE_NAME.to_owned(), service_name(&model.name));
    labels.insert(
        LABEL_ENDPOINTSLICE_MANAGED_BY.to_owned(),
        ENDPOINTSLICE_MANAGER.to_owned(),
    );
    // A Service port reaches the slice's port of the same name. Inference goes to the activator;
    // the metrics port is left out, so a scrape of a model at zero finds nothing rather than
    // the activator's own metrics.
    let ports = runtimes::of(model)
        .service_ports()
        .iter()
        .filter_map(|port| {
            let activator_port = match port.name {
                "http" => ACTIVATOR_HTTP_PORT,
                "grpc" => ACTIVATOR_GRPC_PORT,
                _ => return None,
            };
            Some(EndpointPort {
                name: Some(port.name.to_owned()),
                port: Some(activator_port),
                protocol: Some("TCP".to_owned()),
                app_protocol: (port.name == "grpc").then(|| "kubernetes.io/h2c".to_owned()),
            })
        })
        .collect();
    let endpoints = activator
        .addresses
        .iter()
        .map(|address| Endpoint {
            addresses: vec![address.clone()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            ..Endpoint::default()
        })
        .collect();
    Some(EndpointSlice {
        metadata,
        address_type: activator.address_type.clone(),
        endpoints,
        ports: Some(ports),
    })
}
