//! Delegated authorization, as aggregated API servers do it: the user the front proxy names is
//! checked with a SubjectAccessReview (the operator's `system:auth-delegator` binding allows it).
//! kube-apiserver has already authorized the request before proxying it; this second check keeps
//! a leaked front-proxy certificate from reading metrics for anyone. Allowed answers are cached
//! briefly, since the HPA asks the same question every sync period.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::{Api, Client, api::PostParams};

use crate::vocabulary::names::CUSTOM_METRICS_GROUP as GROUP;

/// How long an allowed decision is reused; a revoked permission takes at most this long.
const ALLOWED_TTL: Duration = Duration::from_secs(10);

/// Who the front proxy says is asking.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requester {
    pub user: String,
    pub groups: Vec<String>,
}

/// What is asked for, as kube-apiserver's request info would name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Access {
    /// `GET .../namespaces/{namespace}/pods/{name}/{metric}`: resource `pods`, the metric as
    /// subresource, `*` as the name for the list form.
    Metric {
        version: String,
        namespace: String,
        name: String,
        metric: String,
    },
    /// Discovery and anything else: the path.
    Path(String),
}

impl Access {
    /// The access a request path asks for.
    pub fn of_path(path: &str) -> Self {
        let prefix = format!("/apis/{GROUP}/");
        let parts: Option<Vec<&str>> = path.strip_prefix(&prefix).map(|rest| rest.split('/').collect());
        match parts.as_deref() {
            Some([version, "namespaces", namespace, "pods", name, metric]) => Self::Metric {
                version: (*version).to_owned(),
                namespace: (*namespace).to_owned(),
                // The aggregator escapes the list form's `*`; pod names need no other escaping.
                name: if *name == "%2A" {
                    "*".to_owned()
                } else {
                    (*name).to_owned()
                },
                metric: (*metric).to_owned(),
            },
            _ => Self::Path(path.to_owned()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("asking the API server whether {user} may read {access:?}: {source}")]
pub struct AuthorizationError {
    user: String,
    access: Access,
    source: kube::Error,
}

/// Asks the API server, with a short cache of allowed decisions.
#[derive(Clone)]
pub struct DelegatedAuthorizer {
    client: Client,
    allowed: Arc<Mutex<HashMap<(Requester, Access), Instant>>>,
}

impl DelegatedAuthorizer {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            allowed: Arc::default(),
        }
    }

    pub async fn allows(&self, requester: &Requester, access: &Access) -> Result<bool, AuthorizationError> {
        let key = (requester.clone(), access.clone());
        {
            let mut allowed = self.allowed.lock().unwrap_or_else(|p| p.into_inner());
            allowed.retain(|_, at| at.elapsed() < ALLOWED_TTL);
            if allowed.contains_key(&key) {
                return Ok(true);
            }
        }
        let review = SubjectAccessReview {
            spec: review_spec(requester, access),
            ..SubjectAccessReview::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|source| AuthorizationError {
                user: requester.user.clone(),
                access: access.clone(),
                source,
            })?;
        let verdict = answer.status.is_some_and(|s| s.allowed);
        if verdict {
            self.allowed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, Instant::now());
        }
        Ok(verdict)
    }
}

fn review_spec(requester: &Requester, access: &Access) -> SubjectAccessReviewSpec {
    let (resource_attributes, non_resource_attributes) = match access {
        Access::Metric {
            version,
            namespace,
            name,
            metric,
        } => (
            Some(ResourceAttributes {
                group: Some(GROUP.to_owned()),
                version: Some(version.clone()),
                resource: Some("pods".to_owned()),
                subresource: Some(metric.clone()),
                namespace: Some(namespace.clone()),
                name: Some(name.clone()),
                verb: Some("get".to_owned()),
                ..ResourceAttributes::default()
            }),
            None,
        ),
        Access::Path(path) => (
            None,
            Some(NonResourceAttributes {
                path: Some(path.clone()),
                verb: Some("get".to_owned()),
            }),
        ),
    };
    SubjectAccessReviewSpec {
        user: Some(requester.user.clone()),
        groups: Some(requester.groups.clone()),
        resource_attributes,
        non_resource_attributes,
        ..SubjectAccessReviewSpec::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_paths_are_pod_subresources_and_the_rest_paths() {
        assert_eq!(
            Access::of_path("/apis/custom.metrics.k8s.io/v1beta2/namespaces/ml/pods/%2A/gpu_utilization"),
            Access::Metric {
                version: "v1beta2".into(),
                namespace: "ml".into(),
                name: "*".into(),
                metric: "gpu_utilization".into()
            }
        );
        assert_eq!(
            Access::of_path("/apis/custom.metrics.k8s.io/v1beta2"),
            Access::Path("/apis/custom.metrics.k8s.io/v1beta2".into())
        );
        let spec = review_spec(
            &Requester {
                user: "system:serviceaccount:kube-system:horizontal-pod-autoscaler".into(),
                groups: vec!["system:serviceaccounts".into()],
            },
            &Access::of_path("/apis/custom.metrics.k8s.io/v1beta2/namespaces/ml/pods/*/gpu_utilization"),
        );
        let resource = spec.resource_attributes.unwrap();
        assert_eq!(
            (
                resource.resource.as_deref(),
                resource.subresource.as_deref(),
                resource.verb.as_deref()
            ),
            (Some("pods"), Some("gpu_utilization"), Some("get"))
        );
        assert!(spec.non_resource_attributes.is_none());
    }
}
