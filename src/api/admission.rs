//! Offline admission: checks a raw `ModelDeployment` the way the API server does when it is
//! applied (strict decoding, the CRD's OpenAPI schema, then its CEL rules), so that
//! `model-operator render` refuses exactly what `kubectl apply` would, with the same field
//! names. The rules live once, in the generated CRD; nothing here restates them.

use std::fmt;

use kube::CustomResourceExt;
use serde_json::Value;

use super::{GROUP, ModelDeployment};

/// One refused field, named by its path from the object root (`spec.gpu.count`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Every refused field of one object; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    pub fn single(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }

    /// Whether some error names `field` (exactly, or a field below it).
    pub fn names(&self, field: &str) -> bool {
        self.0.iter().any(|e| {
            e.field == field
                || e.field
                    .strip_prefix(field)
                    .is_some_and(|rest| rest.starts_with(['.', '[']))
        })
    }
}

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Admits one object given as JSON (already parsed from YAML): returns the typed resource,
/// with schema defaults applied as the API server would, or every field it refuses.
pub fn admit(object: &Value) -> Result<ModelDeployment, FieldErrors> {
    let Admission { model, errors } = admit_all(object);
    match (model, errors.is_empty()) {
        (Some(model), true) => Ok(model),
        _ => Err(FieldErrors(errors)),
    }
}

/// What admission found: every refused field, and the typed resource whenever the object
/// decodes at all (refused or not), so that a caller can add checks of its own.
#[derive(Debug)]
pub struct Admission {
    pub model: Option<ModelDeployment>,
    pub errors: Vec<FieldError>,
}

/// As [`admit`], keeping the decoded resource alongside the errors.
pub fn admit_all(object: &Value) -> Admission {
    match admit_decoded(object) {
        Ok((model, errors)) => Admission {
            model: Some(model),
            errors,
        },
        Err(FieldErrors(errors)) => Admission { model: None, errors },
    }
}

fn admit_decoded(object: &Value) -> Result<(ModelDeployment, Vec<FieldError>), FieldErrors> {
    let mut object = object.clone();
    // The API server drops nulls before validating; a YAML key with no value is a null.
    strip_nulls(&mut object);
    check_type_meta(&object)?;

    let (typed, unknown) = decode_strict(&object)?;
    let mut errors: Vec<FieldError> = unknown
        .into_iter()
        .map(|field| FieldError {
            message: "field not declared in schema".to_owned(),
            field,
        })
        .collect();

    let schema = crd_schema();
    errors.extend(schema_errors(&schema, &object));
    errors.extend(list_map_errors(&schema, &object, ""));
    // CEL rules see the object after defaulting, as in the API server; the typed value carries
    // the same defaults through serde.
    let defaulted = serde_json::to_value(&typed).expect("ModelDeployment serializes to JSON");
    errors.extend(cel_errors(&schema, &defaulted));
    Ok((typed, errors))
}

fn check_type_meta(object: &Value) -> Result<(), FieldErrors> {
    let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
    let expected_version = format!("{GROUP}/v1");
    if kind != "ModelDeployment" {
        return Err(FieldErrors::single(
            "kind",
            format!("expected ModelDeployment, found {kind:?}"),
        ));
    }
    if api_version != expected_version {
        return Err(FieldErrors::single(
            "apiVersion",
            format!("expected {expected_version}, found {api_version:?}"),
        ));
    }
    Ok(())
}

/// Typed decoding that reports the path of a wrong type or enum value, and collects fields
/// the schema does not declare (kubectl's default `--validate=strict` refuses those).
fn decode_strict(object: &Value) -> Result<(ModelDeployment, Vec<String>), FieldErrors> {
    let mut unknown = Vec::new();
    // serde_ignored writes `?` for an Option it stepped through; users never see those.
    let mut record_unknown = |path: serde_ignored::Path<'_>| {
        let segments: Vec<String> = path
            .to_string()
            .split('.')
            .filter(|s| *s != "?")
            .map(str::to_owned)
            .collect();
        unknown.push(segments.join("."));
    };
    let deserializer = serde_ignored::Deserializer::new(object, &mut record_unknown);
    let typed: Result<ModelDeployment, _> = serde_path_to_error::deserialize(deserializer);
    match typed {
        // apiVersion and kind are read by `check_type_meta`, not by the typed decoder.
        Ok(typed) => Ok((
            typed,
            unknown
                .into_iter()
                .filter(|f| f != "apiVersion" && f != "kind")
                .collect(),
        )),
        Err(error) => {
            let field = error.path().to_string();
            let field = if field == "." { String::new() } else { field };
            Err(FieldErrors::single(field, error.into_inner().to_string()))
        }
    }
}

fn crd_schema() -> Value {
    let crd = ModelDeployment::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the derived CRD has an openAPIV3Schema");
    serde_json::to_value(schema).expect("the CRD schema serializes to JSON")
}

fn schema_errors(schema: &Value, object: &Value) -> Vec<FieldError> {
    // OpenAPI v3.0 schemas are closest to JSON Schema draft 4 (boolean exclusive bounds).
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(schema)
        .expect("the CRD schema is a valid JSON schema");
    validator
        .iter_errors(object)
        .map(|error| FieldError {
            field: pointer_to_field_path(&error.instance_path().to_string()),
            message: error.to_string(),
        })
        .collect()
}

fn cel_errors(schema: &Value, object: &Value) -> Vec<FieldError> {
    match kube::core::cel::Validator::new().validate(schema, object, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .into_vec()
            .into_iter()
            .map(|error| FieldError {
                field: error.field_path.clone(),
                message: error.message.clone(),
            })
            .collect(),
    }
}

/// Lists the schema declares `x-kubernetes-list-type: map` hold one entry per key (the API
/// server refuses a duplicate, as it refuses two containers' env entries of one name).
fn list_map_errors(schema: &Value, object: &Value, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match object {
        Value::Object(fields) => {
            for (name, value) in fields {
                let child = schema
                    .get("properties")
                    .and_then(|p| p.get(name))
                    .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()));
                if let Some(child) = child {
                    let child_path = if path.is_empty() {
                        name.clone()
                    } else {
                        format!("{path}.{name}")
                    };
                    errors.extend(list_map_errors(child, value, &child_path));
                }
            }
        }
        Value::Array(items) => {
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|keys| keys.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let is_map = schema.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map");
            let mut seen = Vec::new();
            for (index, item) in items.iter().enumerate() {
                if is_map {
                    let key: Vec<&Value> = keys.iter().map(|k| item.get(*k).unwrap_or(&Value::Null)).collect();
                    if seen.contains(&key) {
                        let shown: Vec<String> = keys.iter().zip(&key).map(|(k, v)| format!("{k}={v}")).collect();
                        errors.push(FieldError {
                            field: format!("{path}[{index}]"),
                            message: format!("duplicate entry for key {} in {path}", shown.join(",")),
                        });
                    }
                    seen.push(key);
                }
                if let Some(item_schema) = schema.get("items") {
                    errors.extend(list_map_errors(item_schema, item, &format!("{path}[{index}]")));
                }
            }
        }
        _ => {}
    }
    errors
}

/// `/spec/gpu/count` → `spec.gpu.count`; `/spec/env/0/name` → `spec.env[0].name`.
fn pointer_to_field_path(pointer: &str) -> String {
    let mut path = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.chars().all(|c| c.is_ascii_digit()) && !segment.is_empty() {
            path.push_str(&format!("[{segment}]"));
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&segment);
        }
    }
    path
}

fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_idle_time(scale_to_zero_after: &str) -> Value {
        serde_json::json!({
            "apiVersion": "mlops.sathvik.dev/v1",
            "kind": "ModelDeployment",
            "metadata": {"name": "drowsy"},
            "spec": {
                "modelURI": "https://models.example.com/model.pt",
                "runtime": "fastapi-pytorch",
                "autoscale": true,
                "resources": {"requests": {"cpu": "1"}},
                "autoscaling": {"minReplicas": 0, "scaleToZeroAfter": scale_to_zero_after},
            },
        })
    }

    #[test]
    fn an_idle_time_under_two_seconds_is_refused_by_the_crd_and_a_malformed_one_by_its_pattern_alone() {
        for fine in ["2s", "2000ms", "15m", "1h30m"] {
            let errors = admit_all(&with_idle_time(fine)).errors;
            assert!(errors.is_empty(), "{fine}: {errors:?}");
        }
        let short = admit_all(&with_idle_time("1500ms")).errors;
        assert_eq!(short.len(), 1, "{short:?}");
        assert_eq!(short[0].field, "spec.autoscaling.scaleToZeroAfter");
        assert!(short[0].message.contains("must be at least 2s"), "{}", short[0].message);
        // The pattern's refusal, and no CEL evaluation error beside it.
        let malformed = admit_all(&with_idle_time("ten minutes")).errors;
        assert_eq!(malformed.len(), 1, "{malformed:?}");
        assert_eq!(malformed[0].field, "spec.autoscaling.scaleToZeroAfter");
    }

    #[test]
    fn json_pointers_become_field_paths() {
        assert_eq!(pointer_to_field_path("/spec/gpu/count"), "spec.gpu.count");
        assert_eq!(pointer_to_field_path("/spec/env/0/name"), "spec.env[0].name");
        assert_eq!(pointer_to_field_path(""), "");
    }
}
