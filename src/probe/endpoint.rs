//! `HOST:PORT` endpoints as the probe command and the operator's endpoint resolver give them.

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
}
