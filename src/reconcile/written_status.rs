//! The status this process last wrote for each model, for the reconciles that run before the
//! watch delivers that write.
//!
//! A burst of events about a new model (its Deployment created, its pods scheduled, started,
//! ready) brings reconciles whose ModelDeployment comes from the cache, and the cache may still
//! hold the object from before the last status write. Compared with that stale status, the
//! same status would be written again and its transitions published again as Events (a second
//! Event of a series is a PATCH). So a write is remembered with the `resourceVersion`s that
//! predate it; while the cache shows one of those, the reconcile compares with what was written.
//! Once the cache shows anything else (the write itself, or a later change by anyone), the
//! record is dropped and the cache is the truth again: nothing is kept at rest.

use std::{collections::HashMap, sync::Mutex};

use kube::ResourceExt;

use crate::api::{ModelDeployment, ModelDeploymentStatus};
use crate::vocabulary::per_model::forget_model;

#[derive(Debug, Default)]
pub struct WrittenStatus {
    models: Mutex<HashMap<(String, String), Written>>,
}

#[derive(Debug)]
struct Written {
    uid: String,
    /// The versions of the object from before this write: a cache showing one of them has
    /// not caught up.
    older: Vec<String>,
    /// The version the write was stored as.
    stored: String,
    status: ModelDeploymentStatus,
}

fn key_of(model: &ModelDeployment) -> (String, String) {
    (model.namespace().unwrap_or_default(), model.name_any())
}

impl WrittenStatus {
    /// The status last written for `model` when its cached object predates that write; `None`
    /// when the cache has caught up (or nothing was written lately).
    pub fn newer_than_cache(&self, model: &ModelDeployment) -> Option<ModelDeploymentStatus> {
        let mut models = self.models.lock().expect("written status lock");
        let key = key_of(model);
        let written = models.get(&key)?;
        let stale = model.uid().as_deref() == Some(written.uid.as_str())
            && model
                .resource_version()
                .is_some_and(|version| written.older.contains(&version));
        if stale {
            Some(written.status.clone())
        } else {
            models.remove(&key);
            None
        }
    }

    /// Remembers that `status` was written over `model` (the object the reconcile read),
    /// which the API server then stored as `returned`.
    pub fn record(&self, model: &ModelDeployment, status: &ModelDeploymentStatus, returned: &ModelDeployment) {
        let (Some(uid), Some(read), Some(stored)) =
            (model.uid(), model.resource_version(), returned.resource_version())
        else {
            return;
        };
        let mut models = self.models.lock().expect("written status lock");
        let key = key_of(model);
        if read == stored {
            // The write changed nothing on the server: the cache already shows it.
            models.remove(&key);
            return;
        }
        // Writes in a row over the same stale object: every version before the newest is old.
        let mut older = match models.remove(&key) {
            Some(mut earlier) if earlier.uid == uid && earlier.older.contains(&read) => {
                earlier.older.push(earlier.stored);
                earlier.older
            }
            _ => vec![read],
        };
        older.dedup();
        models.insert(
            key,
            Written {
                uid,
                older,
                stored,
                status: status.clone(),
            },
        );
    }

    pub fn forget(&self, namespace: &str, name: &str) {
        forget_model(&mut self.models.lock().expect("written status lock"), namespace, name);
    }

    /// The models a write is remembered for.
    pub fn models(&self) -> Vec<(String, String)> {
        self.models
            .lock()
            .expect("written status lock")
            .keys()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::Phase;

    fn model(uid: &str, resource_version: &str) -> ModelDeployment {
        serde_json::from_value(json!({
            "apiVersion": "mlops.sathvik.dev/v1",
            "kind": "ModelDeployment",
            "metadata": {"name": "resnet", "namespace": "ml", "uid": uid, "resourceVersion": resource_version},
            "spec": {"modelURI": "s3://models/resnet", "runtime": "triton"},
        }))
        .expect("fixture is a ModelDeployment")
    }

    fn status(phase: Phase) -> ModelDeploymentStatus {
        ModelDeploymentStatus {
            phase: Some(phase),
            ..Default::default()
        }
    }

    #[test]
    fn a_cache_from_before_the_write_compares_with_what_was_written() {
        let written = WrittenStatus::default();
        written.record(&model("u1", "10"), &status(Phase::Deploying), &model("u1", "11"));
        assert_eq!(
            written.newer_than_cache(&model("u1", "10")),
            Some(status(Phase::Deploying)),
            "the cache still shows version 10"
        );

        // A second write over the same stale object: both older versions are stale.
        written.record(&model("u1", "10"), &status(Phase::Ready), &model("u1", "12"));
        for stale in ["10", "11"] {
            assert_eq!(
                written.newer_than_cache(&model("u1", stale)),
                Some(status(Phase::Ready))
            );
        }

        assert_eq!(written.newer_than_cache(&model("u1", "12")), None, "caught up");
        assert!(written.models().is_empty(), "nothing is kept once the cache caught up");
    }

    #[test]
    fn anything_but_an_older_version_of_the_same_object_is_the_truth() {
        let written = WrittenStatus::default();
        written.record(&model("u1", "10"), &status(Phase::Ready), &model("u1", "11"));
        assert_eq!(
            written.newer_than_cache(&model("u2", "10")),
            None,
            "deleted and created anew"
        );

        written.record(&model("u1", "10"), &status(Phase::Ready), &model("u1", "11"));
        assert_eq!(
            written.newer_than_cache(&model("u1", "15")),
            None,
            "changed since by someone"
        );

        written.record(&model("u1", "10"), &status(Phase::Ready), &model("u1", "10"));
        assert!(
            written.models().is_empty(),
            "a write the server found unchanged is no news"
        );

        written.record(&model("u1", "10"), &status(Phase::Ready), &model("u1", "11"));
        written.forget("ml", "resnet");
        assert_eq!(written.newer_than_cache(&model("u1", "10")), None);
    }
}
