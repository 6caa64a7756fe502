//! Which model a request is for, from its `Host` (HTTP/1.1) or `:authority` (HTTP/2, gRPC): the
//! name the client dialled is the model's Service, `NAME-service`, with or without the namespace
//! and the cluster domain.

use std::fmt;

/// The Service a request named, as far as its host says.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceHost {
    /// The Service's name (`NAME-service`).
    pub service: String,
    /// The namespace, when the client named it (`NAME-service.NAMESPACE[.svc[.DOMAIN]]`); a
    /// short name leaves it to the activator to find the only model it can be.
    pub namespace: Option<String>,
}

impl fmt::Display for ServiceHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{}.{namespace}", self.service),
            None => write!(f, "{}", self.service),
        }
    }
}

/// Why a host names no Service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("the request has no Host header or :authority, so it names no model")]
    Missing,
    #[error("host {0:?} is an address, not a Service name: send the request to NAME-service.NAMESPACE")]
    Address(String),
    #[error("host {0:?} is not a Service's name (NAME-service[.NAMESPACE[.svc[.DOMAIN]]])")]
    NotAService(String),
}

/// Reads `NAME-service`, `NAME-service.NAMESPACE`, `NAME-service.NAMESPACE.svc` or
/// `NAME-service.NAMESPACE.svc.DOMAIN…`, each with an optional `:PORT`, case-insensitively.
pub fn parse(host: Option<&str>) -> Result<ServiceHost, HostError> {
    let host = host
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .ok_or(HostError::Missing)?;
    let name = strip_port(host).ok_or_else(|| HostError::Address(host.to_owned()))?;
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let mut labels = name.split('.');
    let service = labels.next().unwrap_or_default();
    let namespace = labels.next();
    let rest: Vec<&str> = labels.collect();
    let is_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if service.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostError::Address(host.to_owned()));
    }
    let service_like = is_label(service) && service.ends_with("-service");
    let namespace_ok = namespace.is_none_or(is_label);
    let rest_ok = rest.first().is_none_or(|svc| *svc == "svc") && rest.iter().all(|l| is_label(l));
    if !(service_like && namespace_ok && rest_ok) {
        return Err(HostError::NotAService(host.to_owned()));
    }
    Ok(ServiceHost {
        service: service.to_owned(),
        namespace: namespace.map(str::to_owned),
    })
}

/// The host without its port; `None` for an IPv6 literal (`[::1]:8000`).
fn strip_port(host: &str) -> Option<&str> {
    if host.starts_with('[') {
        return None;
    }
    Some(match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(service: &str, namespace: Option<&str>) -> Result<ServiceHost, HostError> {
        Ok(ServiceHost {
            service: service.to_owned(),
            namespace: namespace.map(str::to_owned),
        })
    }

    #[test]
    fn every_form_of_a_services_name_names_its_model() {
        for (host, expected) in [
            ("bert-service", named("bert-service", None)),
            ("bert-service:8000", named("bert-service", None)),
            ("bert-service.ml", named("bert-service", Some("ml"))),
            ("bert-service.ml:8001", named("bert-service", Some("ml"))),
            ("bert-service.ml.svc", named("bert-service", Some("ml"))),
            (
                "bert-service.ml.svc.cluster.local:8000",
                named("bert-service", Some("ml")),
            ),
            ("Bert-Service.ML.svc.cluster.local.", named("bert-service", Some("ml"))),
        ] {
            assert_eq!(parse(Some(host)), expected, "{host}");
        }
    }

    #[test]
    fn addresses_and_other_names_are_refused_with_the_form_expected() {
        assert_eq!(parse(None), Err(HostError::Missing));
        assert_eq!(parse(Some(" ")), Err(HostError::Missing));
        for address in ["10.0.0.7:8000", "10.0.0.7", "[fd00::7]:8000"] {
            assert_eq!(
                parse(Some(address)),
                Err(HostError::Address(address.into())),
                "{address}"
            );
        }
        for other in [
            "bert",
            "bert.ml",
            "bert-service.ml.cluster.local",
            "bert-service..svc",
            "-service.ml",
            "bert_service.ml",
        ] {
            assert_eq!(parse(Some(other)), Err(HostError::NotAService(other.into())), "{other}");
        }
        assert!(
            HostError::Address("10.0.0.7".into())
                .to_string()
                .contains("NAME-service.NAMESPACE")
        );
    }
}
