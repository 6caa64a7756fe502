//! `HOST:PORT` addresses: as flags and the probe command give them, and as the operator writes
//! them for pods, node agents and runtimes.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("endpoint {endpoint:?} is not HOST:PORT: {problem}")]
pub struct InvalidEndpoint {
    pub endpoint: String,
    pub problem: &'static str,
}

/// Checks `HOST:PORT` (IPv6 hosts in brackets, `[::1]:8001`) and returns it unchanged, so that
/// it can be put after `http://` as is.
pub fn parse_endpoint(endpoint: &str) -> Result<String, InvalidEndpoint> {
    let invalid = |problem| InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        problem,
    };
    if endpoint.contains("://") {
        return Err(invalid("give the address without a scheme"));
    }
    let (host, port) = endpoint
        .rsplit_once(':')
        .ok_or_else(|| invalid("the port is missing"))?;
    if host.is_empty() {
        return Err(invalid("the host is missing"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(invalid("an IPv6 host goes in brackets, e.g. [::1]:8001"));
    }
    if host.contains('/') || port.contains('/') {
        return Err(invalid("a path is not part of an endpoint"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(invalid("the port must be a number from 1 to 65535")),
        Ok(_) => Ok(endpoint.to_owned()),
    }
}

/// `HOST:PORT` for an address as Kubernetes reports it: an IPv6 address goes in brackets.
pub fn host_port(host: &str, port: impl std::fmt::Display) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Addresses that stand in for the pods of one ModelDeployment, keyed by (namespace, name).
pub type ModelEndpoints = BTreeMap<(String, String), String>;

/// A `NAMESPACE/NAME=HOST:PORT` override that does not parse; names the flag and the entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidModelEndpoint {
    #[error("--{flag} {entry:?} is not NAMESPACE/NAME=HOST:PORT")]
    Shape { flag: String, entry: String },
    #[error("--{flag} {entry:?}: {source}")]
    Endpoint {
        flag: String,
        entry: String,
        #[source]
        source: InvalidEndpoint,
    },
}

/// Parses `NAMESPACE/NAME=HOST:PORT` overrides as `--probe-endpoint` and
/// `--runtime-metrics-endpoint` take them.
pub fn parse_model_endpoints(flag: &str, specs: &[String]) -> Result<ModelEndpoints, InvalidModelEndpoint> {
    let mut endpoints = ModelEndpoints::new();
    for spec in specs {
        let shape = || InvalidModelEndpoint::Shape {
            flag: flag.to_owned(),
            entry: spec.clone(),
        };
        let (model, endpoint) = spec.split_once('=').ok_or_else(shape)?;
        let (namespace, name) = model
            .split_once('/')
            .filter(|(namespace, name)| !namespace.is_empty() && !name.is_empty())
            .ok_or_else(shape)?;
        let endpoint = parse_endpoint(endpoint).map_err(|source| InvalidModelEndpoint::Endpoint {
            flag: flag.to_owned(),
            entry: spec.clone(),
            source,
        })?;
        endpoints.insert((namespace.to_owned(), name.to_owned()), endpoint);
    }
    Ok(endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_pass_unchanged() {
        for good in ["127.0.0.1:8001", "localhost:8081", "[::1]:8000", "model.ns.svc:80"] {
            assert_eq!(parse_endpoint(good).as_deref(), Ok(good));
        }
    }

    #[test]
    fn each_mistake_is_named() {
        let problem = |endpoint| parse_endpoint(endpoint).unwrap_err().problem;
        assert_eq!(problem("http://127.0.0.1:8000"), "give the address without a scheme");
        assert_eq!(problem("127.0.0.1"), "the port is missing");
        assert_eq!(problem(":8000"), "the host is missing");
        assert_eq!(problem("::1:8000"), "an IPv6 host goes in brackets, e.g. [::1]:8001");
        assert_eq!(problem("host:80/v2"), "a path is not part of an endpoint");
        assert_eq!(problem("host:http"), "the port must be a number from 1 to 65535");
        assert_eq!(problem("host:0"), "the port must be a number from 1 to 65535");
        assert_eq!(problem("host:70000"), "the port must be a number from 1 to 65535");
    }

    #[test]
    fn model_endpoints_name_the_flag_and_the_entry() {
        let parsed = parse_model_endpoints("runtime-metrics-endpoint", &["ml/llm=127.0.0.1:8002".to_owned()]);
        assert_eq!(
            parsed,
            Ok(ModelEndpoints::from([(
                ("ml".to_owned(), "llm".to_owned()),
                "127.0.0.1:8002".to_owned()
            )]))
        );
        let error = parse_model_endpoints("probe-endpoint", &["llm=127.0.0.1:8002".to_owned()])
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            r#"--probe-endpoint "llm=127.0.0.1:8002" is not NAMESPACE/NAME=HOST:PORT"#
        );
        let error = parse_model_endpoints("probe-endpoint", &["ml/llm=127.0.0.1".to_owned()])
            .unwrap_err()
            .to_string();
        assert!(error.contains("the port is missing"), "{error}");
    }
}
