//! Kubernetes Events (`events.k8s.io/v1`) about the objects the operator manages. An Event that
//! repeats within six minutes becomes a series on the first one (`series.count`), as
//! `kubectl events` expects, so what was published recently is kept per object.
//!
//! kube-runtime's `Recorder` does the same, but keeps every Event it published in one map that
//! it prunes only when it publishes the next one: a deleted object's Events stayed in memory
//! until something else happened, and a thousand models created and deleted left a thousand
//! models' Events behind. Here an object's are dropped with [`EventPublisher::forget`], and
//! expired ones by [`EventPublisher::prune`] as well as on each publish.

use std::{collections::HashMap, sync::Mutex};

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event as KubeEvent},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    runtime::events::{Event, EventType},
};
use serde_json::json;

use crate::vocabulary::per_model::{forget_model, shrink_if_sparse};

/// How long a published Event may still grow a series instead of a new Event being created
/// (client-go's and kube-runtime's figure).
const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// An object, by namespace and name.
type ObjectKey = crate::vocabulary::per_model::ModelKey;

/// Publishes Events as `controller` (and `instance`, this replica), remembering the recent ones.
pub struct EventPublisher {
    client: Client,
    controller: String,
    instance: String,
    recent: Mutex<HashMap<ObjectKey, Vec<Published>>>,
}

/// One Event published lately, and what makes another the same one.
#[derive(Debug, Clone)]
struct Published {
    type_: EventType,
    reason: String,
    action: String,
    /// The object's UID: a new object under an old name starts its own Events.
    uid: Option<String>,
    name: String,
    count: i32,
    last_observed: Timestamp,
}

impl Published {
    fn repeats(&self, event: &Event, uid: Option<&String>) -> bool {
        self.type_ == event.type_
            && self.reason == event.reason
            && self.action == event.action
            && self.uid.as_ref() == uid
    }

    fn fresh(&self, now: Timestamp) -> bool {
        self.last_observed + SERIES_WINDOW > now
    }
}

impl EventPublisher {
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Self {
            client,
            controller: controller.to_owned(),
            instance: instance.unwrap_or_else(|| controller.to_owned()),
            recent: Mutex::default(),
        }
    }

    /// Publishes `event` about `regarding`: a new Event, or the next of a series when the same
    /// one was published in the last six minutes.
    pub async fn publish(&self, event: &Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".to_owned());
        let object = (namespace.clone(), regarding.name.clone().unwrap_or_default());
        let uid = regarding.uid.as_ref();
        let repeated = {
            let mut recent = self.recent.lock().expect("events lock");
            let published = recent.entry(object.clone()).or_default();
            published.retain(|p| p.fresh(now));
            published.iter().find(|p| p.repeats(event, uid)).cloned()
        };
        let api: Api<KubeEvent> = Api::namespaced(self.client.clone(), &namespace);
        if let Some(earlier) = repeated {
            let count = earlier.count.saturating_add(1);
            let series = json!({"series": {"count": count, "lastObservedTime": MicroTime(now)}});
            match api
                .patch(&earlier.name, &PatchParams::default(), &Patch::Merge(&series))
                .await
            {
                Ok(_) => {
                    self.remember(object, earlier.name, count, event, uid, now);
                    return Ok(());
                }
                // The API server let it expire (after an hour, by default): start anew.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(error),
            }
        }
        let created = api
            .create(&PostParams::default(), &self.new_event(event, regarding, now))
            .await?;
        let name = created.metadata.name.unwrap_or_default();
        self.remember(object, name, 1, event, uid, now);
        Ok(())
    }

    fn new_event(&self, event: &Event, regarding: &ObjectReference, now: Timestamp) -> KubeEvent {
        let object_name = regarding.name.as_deref().unwrap_or(&self.controller);
        KubeEvent {
            metadata: ObjectMeta {
                name: Some(format!("{object_name}.{:x}", now.as_nanosecond())),
                namespace: regarding.namespace.clone(),
                ..ObjectMeta::default()
            },
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            note: event.note.clone(),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_owned(),
            ),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: event.secondary.clone(),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..KubeEvent::default()
        }
    }

    fn remember(
        &self,
        object: ObjectKey,
        name: String,
        count: i32,
        event: &Event,
        uid: Option<&String>,
        now: Timestamp,
    ) {
        let mut recent = self.recent.lock().expect("events lock");
        let published = recent.entry(object).or_default();
        published.retain(|p| !p.repeats(event, uid));
        published.push(Published {
            type_: event.type_,
            reason: event.reason.clone(),
            action: event.action.clone(),
            uid: uid.cloned(),
            name,
            count,
            last_observed: now,
        });
    }

    /// Drops what is kept for an object that is gone.
    pub fn forget(&self, namespace: &str, name: &str) {
        forget_model(&mut self.recent.lock().expect("events lock"), namespace, name);
    }

    /// Drops every Event too old to grow a series, and the objects left with none.
    pub fn prune(&self) {
        let now = Timestamp::now();
        let mut recent = self.recent.lock().expect("events lock");
        recent.retain(|_, published| {
            published.retain(|p| p.fresh(now));
            !published.is_empty()
        });
        shrink_if_sparse(&mut recent);
    }

    /// Objects with recent Events kept.
    pub fn objects(&self) -> usize {
        self.recent.lock().expect("events lock").len()
    }
}

#[cfg(test)]
mod tests {
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::Value;
    use tower_test::mock;

    use super::*;

    fn event(reason: &str) -> Event {
        Event {
            type_: EventType::Warning,
            reason: reason.to_owned(),
            note: Some("the model does not answer".to_owned()),
            action: "ModelReady".to_owned(),
            secondary: None,
        }
    }

    fn regarding(name: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("mlops.sathvik.dev/v1".into()),
            kind: Some("ModelDeployment".into()),
            namespace: Some("ml".into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            ..ObjectReference::default()
        }
    }

    /// Each request the API server saw: method, path and body.
    type Seen = Vec<(String, String, Value)>;

    /// An API server that records each request and echoes its body.
    fn publisher() -> (EventPublisher, tokio::task::JoinHandle<Seen>) {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some((request, respond)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let mut answer = body.clone();
                if answer["metadata"].is_null() {
                    answer["metadata"] = json!({"name": parts.uri.path().rsplit('/').next().unwrap()});
                }
                seen.push((parts.method.to_string(), parts.uri.path().to_owned(), body));
                respond.send_response(Response::new(Body::from(serde_json::to_vec(&answer).unwrap())));
            }
            seen
        });
        let client = Client::new(service, "ml");
        (
            EventPublisher::new(client, "model-operator", Some("pod-0".into())),
            server,
        )
    }

    #[tokio::test]
    async fn a_repeat_grows_a_series_and_forgetting_the_object_drops_its_events() {
        let (events, server) = publisher();
        events
            .publish(&event("ServerUnavailable"), &regarding("bert"))
            .await
            .unwrap();
        events
            .publish(&event("ServerUnavailable"), &regarding("bert"))
            .await
            .unwrap();
        events
            .publish(&event("ModelLoading"), &regarding("bert"))
            .await
            .unwrap();
        events
            .publish(&event("ServerUnavailable"), &regarding("llm"))
            .await
            .unwrap();
        assert_eq!(events.objects(), 2);
        events.forget("ml", "bert");
        assert_eq!(events.objects(), 1, "a deleted model's Events are not kept");
        // A model of the same name again, after its deletion: a new Event, no series.
        events
            .publish(&event("ServerUnavailable"), &regarding("bert"))
            .await
            .unwrap();
        drop(events);

        let seen = server.await.unwrap();
        let calls: Vec<(&str, &str)> = seen.iter().map(|(m, p, _)| (m.as_str(), p.as_str())).collect();
        let created = "/apis/events.k8s.io/v1/namespaces/ml/events";
        assert_eq!(calls[0], ("POST", created));
        assert_eq!(calls[1].0, "PATCH");
        assert!(calls[1].1.starts_with(&format!("{created}/bert.")), "{calls:?}");
        assert_eq!(seen[1].2["series"]["count"], 2);
        assert_eq!(calls[2..], [("POST", created), ("POST", created), ("POST", created)]);
        let first = &seen[0].2;
        assert_eq!(first["reason"], "ServerUnavailable");
        assert_eq!(first["type"], "Warning");
        assert_eq!(first["reportingController"], "model-operator");
        assert_eq!(first["reportingInstance"], "pod-0");
        assert_eq!(first["regarding"]["name"], "bert");
    }

    #[tokio::test]
    async fn old_events_are_pruned_even_when_nothing_is_published() {
        let (events, _server) = publisher();
        let published = |minutes_ago: i64, reason: &str| Published {
            type_: EventType::Normal,
            reason: reason.into(),
            action: "ModelReady".into(),
            uid: None,
            name: format!("bert.{minutes_ago}"),
            count: 1,
            last_observed: Timestamp::now() - SignedDuration::from_mins(minutes_ago),
        };
        events.recent.lock().unwrap().extend([
            (("ml".to_owned(), "bert".to_owned()), vec![published(7, "ModelLoaded")]),
            (
                ("ml".to_owned(), "llm".to_owned()),
                vec![published(7, "ModelLoaded"), published(1, "ServerUnavailable")],
            ),
        ]);
        events.prune();
        assert_eq!(events.objects(), 1, "bert's only Event expired");
        assert_eq!(
            events.recent.lock().unwrap()[&("ml".to_owned(), "llm".to_owned())].len(),
            1
        );
    }
}
