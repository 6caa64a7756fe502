//! Who may call the metrics API: only kube-apiserver's front proxy, proven by its client
//! certificate ([`tls`], reloaded as it rotates by [`reload`]), naming the user it forwards for,
//! who is then checked with a SubjectAccessReview ([`authorization`]).

pub mod authorization;
pub mod reload;
pub mod tls;

use axum::http::HeaderMap;

use self::{authorization::Requester, tls::FrontProxyTrust};

/// The header that carries the user the front proxy authenticated.
const REMOTE_USER: &str = "x-remote-user";
const REMOTE_GROUP: &str = "x-remote-group";
/// Every authenticated user's group.
const AUTHENTICATED_GROUP: &str = "system:authenticated";

/// What the TLS handshake established about the client; set per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCertificate {
    /// The client sent none.
    Absent,
    /// Signed by the requestheader CA (rustls checked the chain during the handshake).
    Verified { common_name: Option<String> },
}

/// Why a request is not the front proxy's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotFrontProxy {
    #[error("no client certificate: only the API server's front proxy may call this server")]
    NoCertificate,
    #[error("client certificate CN {common_name:?} is not among the requestheader allowed names {allowed:?}")]
    NameNotAllowed { common_name: String, allowed: Vec<String> },
    #[error("the front proxy sent no X-Remote-User")]
    NoUser,
}

/// The user the front proxy vouches for, from the connection's certificate and the request's
/// headers.
pub fn authenticate(
    trust: &FrontProxyTrust,
    certificate: Option<&ClientCertificate>,
    headers: &HeaderMap,
) -> Result<Requester, NotFrontProxy> {
    match certificate {
        None | Some(ClientCertificate::Absent) => Err(NotFrontProxy::NoCertificate),
        Some(ClientCertificate::Verified { common_name }) if !trust.name_allowed(common_name.as_deref()) => {
            Err(NotFrontProxy::NameNotAllowed {
                common_name: common_name.clone().unwrap_or_default(),
                allowed: trust.allowed_names.clone(),
            })
        }
        Some(ClientCertificate::Verified { .. }) => {
            let user = header_text(headers, REMOTE_USER).ok_or(NotFrontProxy::NoUser)?;
            // One header per group, as kube-apiserver sends them.
            let mut groups: Vec<String> = headers
                .get_all(REMOTE_GROUP)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_owned)
                .collect();
            // As k8s.io/apiserver's authenticators do: the aggregator's own discovery requests
            // name a user without groups, and `system:discovery` is granted to this group.
            if !groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
                groups.push(AUTHENTICATED_GROUP.to_owned());
            }
            Ok(Requester { user, groups })
        }
    }
}

/// Every value of one header, joined with commas; `None` when absent or empty.
pub fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}
