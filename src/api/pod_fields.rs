//! The pod fields a ModelDeployment passes through (`resources`, `env`, `nodeSelector`,
//! `tolerations`, `affinity`, `runtimeArgs`) take k8s-openapi's schemas, which say nothing of
//! what the API server refuses in a Pod. This transform of the spec's schema adds those rules,
//! so that a spec whose pods the API server would refuse is refused when it is applied, naming
//! the field, instead of failing later at every reconcile:
//!
//! - the checks the API server makes on a Pod's container and scheduling fields (quantities,
//!   requests within limits, resource and label names, toleration and selector operators, env
//!   names and sources), as CEL rules and patterns;
//! - bounds on every list, map and string the rules read (`maxItems`, `maxProperties`,
//!   `maxLength`), without which the API server cannot bound the rules' cost and refuses the CRD.
//!   The bounds are far above anything a model's pod needs.
//!
//! Everything here lands in the generated CRD, so `render`'s offline admission applies the same
//! rules (`super::admission`).

use schemars::Schema;
use serde_json::{Map, Value, json};

/// A label name without prefix: up to 63 characters, alphanumeric at both ends.
const LABEL_NAME: &str = "[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?";
/// A DNS subdomain, as a label key's prefix.
const DNS_SUBDOMAIN: &str = "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*";
/// The longest label key: a 253-character prefix, `/`, a 63-character name.
const LABEL_KEY_MAX: u64 = 317;
/// The longest label value.
const LABEL_VALUE_MAX: u64 = 63;

/// `text` as a single-quoted CEL string literal.
fn cel(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn label_key_pattern() -> String {
    format!("^({DNS_SUBDOMAIN}/)?{LABEL_NAME}$")
}

fn label_value_pattern() -> String {
    format!("^({LABEL_NAME})?$")
}

/// Bounds on lists the rules iterate; a pod needs a handful of each.
const MAX_ENV: u64 = 256;
const MAX_TOLERATIONS: u64 = 64;
const MAX_TERMS: u64 = 16;
const MAX_REQUIREMENTS: u64 = 32;
const MAX_VALUES: u64 = 64;
const MAX_RESOURCES: u64 = 32;
const MAX_NODE_SELECTOR: u64 = 64;
const MAX_ARGS: u64 = 128;
/// Strings the rules read but Kubernetes does not bound.
const MAX_ENV_NAME: u64 = 1024;
const MAX_ARG: u64 = 4096;
/// A quantity's text: no real one comes near it.
const MAX_QUANTITY: u64 = 64;
const MAX_TOPOLOGY_KEY: u64 = LABEL_KEY_MAX;

/// The transform on `ModelDeploymentSpec`'s schema.
pub fn bound_pod_fields(schema: &mut Schema) {
    let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(resources) = properties.get_mut("resources") {
        resources_rules(object_of(resources));
    }
    if let Some(env) = properties.get_mut("env") {
        env_rules(object_of(env));
    }
    if let Some(env_from) = properties.get_mut("envFrom") {
        env_from_rules(object_of(env_from));
    }
    if let Some(node_selector) = properties.get_mut("nodeSelector") {
        let node_selector = object_of(node_selector);
        set(node_selector, "maxProperties", json!(MAX_NODE_SELECTOR));
        if let Some(values) = node_selector.get_mut("additionalProperties") {
            label_value(object_of(values));
        }
        rules(
            node_selector,
            [(
                format!(
                    "self.all(k, size(k) <= {LABEL_KEY_MAX} && k.matches({}))",
                    cel(&label_key_pattern())
                ),
                "nodeSelector keys must be label keys: an optional DNS-subdomain prefix and '/', then up to 63 \
                 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
                    .to_owned(),
                None,
            )],
        );
    }
    if let Some(tolerations) = properties.get_mut("tolerations") {
        let tolerations = object_of(tolerations);
        set(tolerations, "maxItems", json!(MAX_TOLERATIONS));
        toleration_rules(item_of(tolerations));
    }
    if let Some(affinity) = properties.get_mut("affinity") {
        affinity_rules(object_of(affinity));
    }
    if let Some(args) = properties.get_mut("runtimeArgs") {
        let args = object_of(args);
        set(args, "maxItems", json!(MAX_ARGS));
        set(item_of(args), "maxLength", json!(MAX_ARG));
    }
}

/// `resources`: names a container may ask for, non-negative quantities, requests within
/// limits, and whole numbers equal in request and limit for extended resources.
fn resources_rules(resources: &mut Map<String, Value>) {
    let properties = properties_of(resources);
    for kind in ["limits", "requests"] {
        if let Some(map) = properties.get_mut(kind) {
            let map = object_of(map);
            set(map, "maxProperties", json!(MAX_RESOURCES));
            if let Some(quantity) = map.get_mut("additionalProperties") {
                set(object_of(quantity), "maxLength", json!(MAX_QUANTITY));
            }
        }
    }
    let quantity = |map: &str, k: &str| format!("string(self.{map}[{k}])");
    let names = format!(
        "k in ['cpu', 'memory', 'ephemeral-storage'] || k.matches('^hugepages-[0-9]+[KMGTPE]i?$') || k.matches({})",
        cel(&format!("^{DNS_SUBDOMAIN}/{LABEL_NAME}$"))
    );
    let mut list = Vec::new();
    for map in ["limits", "requests"] {
        list.push((
            format!("!has(self.{map}) || self.{map}.all(k, {names})", names = names),
            format!(
                "resources.{map}: a container asks for cpu, memory, ephemeral-storage, hugepages-<size> or an \
                 extended resource named domain/name"
            ),
            Some(format!(".{map}")),
        ));
        list.push((
            format!(
                "!has(self.{map}) || self.{map}.all(k, isQuantity({q}) && !quantity({q}).isLessThan(quantity('0')))",
                q = quantity(map, "k")
            ),
            format!("resources.{map}: every value must be a quantity of at least 0, such as 500m, 2 or 4Gi"),
            Some(format!(".{map}")),
        ));
        list.push((
            format!(
                "!has(self.{map}) || self.{map}.all(k, !k.contains('/') || !isQuantity({q}) || quantity({q}).isInteger())",
                q = quantity(map, "k")
            ),
            format!("resources.{map}: an extended resource (domain/name) is asked for in whole units"),
            Some(format!(".{map}")),
        ));
    }
    let (request, limit) = (quantity("requests", "k"), quantity("limits", "k"));
    list.push((
        format!(
            "!has(self.limits) || !has(self.requests) || self.requests.all(k, !(k in self.limits) || \
             !isQuantity({request}) || !isQuantity({limit}) || quantity({request}).compareTo(quantity({limit})) <= 0)"
        ),
        "resources.requests must not exceed resources.limits of the same resource".to_owned(),
        Some(".requests".to_owned()),
    ));
    list.push((
        format!(
            "!has(self.limits) || !has(self.requests) || self.requests.all(k, !k.contains('/') || !(k in self.limits) || \
             !isQuantity({request}) || !isQuantity({limit}) || quantity({request}).compareTo(quantity({limit})) == 0)"
        ),
        "resources.requests of an extended resource (domain/name) must equal its limit: extended resources cannot \
         be overcommitted"
            .to_owned(),
        Some(".requests".to_owned()),
    ));
    rules(resources, list);
}

/// `env`: one entry per name (a list-map, as in a Pod), names the API server accepts, one
/// source per variable, and references it can resolve.
fn env_rules(env: &mut Map<String, Value>) {
    set(env, "maxItems", json!(MAX_ENV));
    set(env, "x-kubernetes-list-type", json!("map"));
    set(env, "x-kubernetes-list-map-keys", json!(["name"]));
    let item = item_of(env);
    if let Some(name) = properties_of(item).get_mut("name") {
        set(object_of(name), "maxLength", json!(MAX_ENV_NAME));
    }
    let source_count = [
        "fieldRef",
        "resourceFieldRef",
        "configMapKeyRef",
        "secretKeyRef",
        "fileKeyRef",
    ]
    .iter()
    .map(|source| format!("(has(self.valueFrom.{source}) ? 1 : 0)"))
    .collect::<Vec<_>>()
    .join(" + ");
    let field_paths = cel(
        "^(metadata\\.(name|namespace|uid)|metadata\\.(labels|annotations)\\['[^']+'\\]|\
         spec\\.(nodeName|serviceAccountName)|status\\.(hostIP|hostIPs|podIP|podIPs))$",
    );
    rules(
        item,
        [
            (
                "self.name.matches('^[ -<>-~]+$')".to_owned(),
                "env[].name must be printable ASCII characters other than '='".to_owned(),
                Some(".name".to_owned()),
            ),
            (
                "!(has(self.value) && has(self.valueFrom))".to_owned(),
                "env[]: value and valueFrom may not both be set".to_owned(),
                Some(".valueFrom".to_owned()),
            ),
            (
                format!("!has(self.valueFrom) || {source_count} == 1"),
                "env[].valueFrom must name exactly one source: secretKeyRef, configMapKeyRef, fieldRef, \
                 resourceFieldRef or fileKeyRef"
                    .to_owned(),
                Some(".valueFrom".to_owned()),
            ),
            (
                "!has(self.valueFrom) || !has(self.valueFrom.secretKeyRef) || \
                 (has(self.valueFrom.secretKeyRef.name) && self.valueFrom.secretKeyRef.name != '' && \
                 self.valueFrom.secretKeyRef.key.matches('^[-._a-zA-Z0-9]+$'))"
                    .to_owned(),
                "env[].valueFrom.secretKeyRef needs the Secret's name and a key of letters, digits, '-', '_' or '.'"
                    .to_owned(),
                Some(".valueFrom.secretKeyRef".to_owned()),
            ),
            (
                "!has(self.valueFrom) || !has(self.valueFrom.configMapKeyRef) || \
                 (has(self.valueFrom.configMapKeyRef.name) && self.valueFrom.configMapKeyRef.name != '' && \
                 self.valueFrom.configMapKeyRef.key.matches('^[-._a-zA-Z0-9]+$'))"
                    .to_owned(),
                "env[].valueFrom.configMapKeyRef needs the ConfigMap's name and a key of letters, digits, '-', '_' \
                 or '.'"
                    .to_owned(),
                Some(".valueFrom.configMapKeyRef".to_owned()),
            ),
            (
                format!(
                    "!has(self.valueFrom) || !has(self.valueFrom.fieldRef) || self.valueFrom.fieldRef.fieldPath.matches({field_paths})"
                ),
                "env[].valueFrom.fieldRef.fieldPath must be one a container's environment can read: metadata.name, \
                 metadata.namespace, metadata.uid, metadata.labels['KEY'], metadata.annotations['KEY'], \
                 spec.nodeName, spec.serviceAccountName, status.hostIP(s) or status.podIP(s)"
                    .to_owned(),
                Some(".valueFrom.fieldRef.fieldPath".to_owned()),
            ),
            (
                format!(
                    "!has(self.valueFrom) || !has(self.valueFrom.resourceFieldRef) || \
                     self.valueFrom.resourceFieldRef.resource.matches({})",
                    cel("^(limits|requests)\\.(cpu|memory|ephemeral-storage|hugepages-.+)$")
                ),
                "env[].valueFrom.resourceFieldRef.resource must be limits.<name> or requests.<name> of cpu, memory, \
                 ephemeral-storage or hugepages-<size>"
                    .to_owned(),
                Some(".valueFrom.resourceFieldRef.resource".to_owned()),
            ),
        ],
    );
    // The references' own strings, bounded for the rules that read them.
    if let Some(value_from) = properties_of(item).get_mut("valueFrom") {
        for (source, field) in [
            ("secretKeyRef", "key"),
            ("secretKeyRef", "name"),
            ("configMapKeyRef", "key"),
            ("configMapKeyRef", "name"),
            ("fieldRef", "fieldPath"),
            ("resourceFieldRef", "resource"),
        ] {
            if let Some(reference) = properties_of(object_of(value_from)).get_mut(source)
                && let Some(value) = properties_of(object_of(reference)).get_mut(field)
            {
                set(object_of(value), "maxLength", json!(MAX_ENV_NAME));
            }
        }
    }
}

/// `envFrom`: one source per entry, named, with a prefix that keeps names valid.
fn env_from_rules(env_from: &mut Map<String, Value>) {
    set(env_from, "maxItems", json!(MAX_TOLERATIONS));
    let item = item_of(env_from);
    if let Some(prefix) = properties_of(item).get_mut("prefix") {
        let prefix = object_of(prefix);
        set(prefix, "maxLength", json!(MAX_ENV_NAME));
        set(prefix, "pattern", json!("^[ -<>-~]*$"));
    }
    for source in ["secretRef", "configMapRef"] {
        if let Some(reference) = properties_of(item).get_mut(source)
            && let Some(name) = properties_of(object_of(reference)).get_mut("name")
        {
            set(object_of(name), "maxLength", json!(253));
        }
    }
    rules(
        item,
        [
            (
                "(has(self.secretRef) ? 1 : 0) + (has(self.configMapRef) ? 1 : 0) == 1".to_owned(),
                "envFrom[] must name exactly one of secretRef and configMapRef".to_owned(),
                None,
            ),
            (
                "(!has(self.secretRef) || (has(self.secretRef.name) && self.secretRef.name != '')) && \
                 (!has(self.configMapRef) || (has(self.configMapRef.name) && self.configMapRef.name != ''))"
                    .to_owned(),
                "envFrom[] needs the name of its Secret or ConfigMap".to_owned(),
                None,
            ),
        ],
    );
}

fn toleration_rules(toleration: &mut Map<String, Value>) {
    let properties = properties_of(toleration);
    if let Some(key) = properties.get_mut("key") {
        let key = object_of(key);
        set(key, "maxLength", json!(LABEL_KEY_MAX));
        set(key, "pattern", json!(format!("^({DNS_SUBDOMAIN}/)?({LABEL_NAME})?$")));
    }
    for (field, bound) in [("operator", 16), ("effect", 32), ("value", 256)] {
        if let Some(value) = properties.get_mut(field) {
            set(object_of(value), "maxLength", json!(bound));
        }
    }
    rules(
        toleration,
        [
            (
                "!has(self.operator) || self.operator in ['', 'Exists', 'Equal']".to_owned(),
                "tolerations[].operator must be Exists or Equal".to_owned(),
                Some(".operator".to_owned()),
            ),
            (
                "!has(self.effect) || self.effect in ['', 'NoSchedule', 'PreferNoSchedule', 'NoExecute']".to_owned(),
                "tolerations[].effect must be NoSchedule, PreferNoSchedule or NoExecute (or empty for all)".to_owned(),
                Some(".effect".to_owned()),
            ),
            (
                "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')".to_owned(),
                "tolerations[]: a toleration without a key must have operator Exists (it then tolerates every taint)"
                    .to_owned(),
                Some(".operator".to_owned()),
            ),
            (
                "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''".to_owned(),
                "tolerations[].value must be empty when operator is Exists".to_owned(),
                Some(".value".to_owned()),
            ),
            (
                format!(
                    "(has(self.operator) && self.operator == 'Exists') || !has(self.value) || \
                     (size(self.value) <= {LABEL_VALUE_MAX} && self.value.matches({}))",
                    cel(&label_value_pattern())
                ),
                "tolerations[].value must be a label value: up to 63 letters, digits, '-', '_' or '.', starting and \
                 ending with a letter or digit"
                    .to_owned(),
                Some(".value".to_owned()),
            ),
            (
                "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')".to_owned(),
                "tolerations[].effect must be NoExecute when tolerationSeconds is set".to_owned(),
                Some(".effect".to_owned()),
            ),
        ],
    );
}

fn affinity_rules(affinity: &mut Map<String, Value>) {
    let properties = properties_of(affinity);
    if let Some(node) = properties.get_mut("nodeAffinity") {
        let node = properties_of(object_of(node));
        if let Some(required) = node.get_mut("requiredDuringSchedulingIgnoredDuringExecution")
            && let Some(terms) = properties_of(object_of(required)).get_mut("nodeSelectorTerms")
        {
            let terms = object_of(terms);
            set(terms, "maxItems", json!(MAX_TERMS));
            set(terms, "minItems", json!(1));
            node_selector_term_rules(item_of(terms));
        }
        if let Some(preferred) = node.get_mut("preferredDuringSchedulingIgnoredDuringExecution") {
            let preferred = object_of(preferred);
            set(preferred, "maxItems", json!(MAX_TERMS));
            let item = item_of(preferred);
            weight(item);
            if let Some(term) = properties_of(item).get_mut("preference") {
                node_selector_term_rules(object_of(term));
            }
        }
    }
    for kind in ["podAffinity", "podAntiAffinity"] {
        let Some(pod) = properties.get_mut(kind) else { continue };
        let pod = properties_of(object_of(pod));
        if let Some(required) = pod.get_mut("requiredDuringSchedulingIgnoredDuringExecution") {
            let required = object_of(required);
            set(required, "maxItems", json!(MAX_TERMS));
            pod_affinity_term_rules(item_of(required));
        }
        if let Some(preferred) = pod.get_mut("preferredDuringSchedulingIgnoredDuringExecution") {
            let preferred = object_of(preferred);
            set(preferred, "maxItems", json!(MAX_TERMS));
            let item = item_of(preferred);
            weight(item);
            if let Some(term) = properties_of(item).get_mut("podAffinityTerm") {
                pod_affinity_term_rules(object_of(term));
            }
        }
    }
}

/// A preferred term's weight, 1 to 100 as the scheduler takes it.
fn weight(item: &mut Map<String, Value>) {
    if let Some(weight) = properties_of(item).get_mut("weight") {
        let weight = object_of(weight);
        set(weight, "minimum", json!(1));
        set(weight, "maximum", json!(100));
    }
}

fn node_selector_term_rules(term: &mut Map<String, Value>) {
    let properties = properties_of(term);
    if let Some(expressions) = properties.get_mut("matchExpressions") {
        let expressions = object_of(expressions);
        set(expressions, "maxItems", json!(MAX_REQUIREMENTS));
        requirement_rules(
            item_of(expressions),
            &["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"],
            true,
        );
    }
    if let Some(fields) = properties.get_mut("matchFields") {
        let fields = object_of(fields);
        set(fields, "maxItems", json!(MAX_REQUIREMENTS));
        let field = item_of(fields);
        bound_requirement(field);
        rules(
            field,
            [(
                "self.key == 'metadata.name' && self.operator in ['In', 'NotIn'] && has(self.values) && size(self.values) == 1"
                    .to_owned(),
                "matchFields: the only field a node selector may name is metadata.name, with In or NotIn and one value"
                    .to_owned(),
                None,
            )],
        );
    }
}

fn pod_affinity_term_rules(term: &mut Map<String, Value>) {
    let properties = properties_of(term);
    if let Some(topology) = properties.get_mut("topologyKey") {
        let topology = object_of(topology);
        set(topology, "maxLength", json!(MAX_TOPOLOGY_KEY));
        set(topology, "minLength", json!(1));
        set(topology, "pattern", json!(label_key_pattern()));
    }
    for selector in ["labelSelector", "namespaceSelector"] {
        let Some(selector) = properties.get_mut(selector) else {
            continue;
        };
        let selector = properties_of(object_of(selector));
        if let Some(labels) = selector.get_mut("matchLabels") {
            let labels = object_of(labels);
            set(labels, "maxProperties", json!(MAX_REQUIREMENTS));
            if let Some(values) = labels.get_mut("additionalProperties") {
                label_value(object_of(values));
            }
            rules(
                labels,
                [(
                    format!(
                        "self.all(k, size(k) <= {LABEL_KEY_MAX} && k.matches({}))",
                        cel(&label_key_pattern())
                    ),
                    "matchLabels keys must be label keys".to_owned(),
                    None,
                )],
            );
        }
        if let Some(expressions) = selector.get_mut("matchExpressions") {
            let expressions = object_of(expressions);
            set(expressions, "maxItems", json!(MAX_REQUIREMENTS));
            requirement_rules(item_of(expressions), &["In", "NotIn", "Exists", "DoesNotExist"], false);
        }
    }
}

/// A `key operator values` requirement: the operators allowed, values required by In/NotIn,
/// none for Exists/DoesNotExist, one integer for Gt/Lt.
fn requirement_rules(requirement: &mut Map<String, Value>, operators: &[&str], numeric: bool) {
    bound_requirement(requirement);
    if let Some(key) = properties_of(requirement).get_mut("key") {
        set(object_of(key), "pattern", json!(label_key_pattern()));
    }
    if let Some(values) = properties_of(requirement).get_mut("values") {
        label_value(item_of(object_of(values)));
    }
    let allowed = operators
        .iter()
        .map(|o| format!("'{o}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut list = vec![
        (
            format!("self.operator in [{allowed}]"),
            format!("operator must be one of {}", operators.join(", ")),
            Some(".operator".to_owned()),
        ),
        (
            "!(self.operator in ['In', 'NotIn']) || (has(self.values) && size(self.values) > 0)".to_owned(),
            "values must not be empty for In and NotIn".to_owned(),
            Some(".values".to_owned()),
        ),
        (
            "!(self.operator in ['Exists', 'DoesNotExist']) || !has(self.values) || size(self.values) == 0".to_owned(),
            "values must be empty for Exists and DoesNotExist".to_owned(),
            Some(".values".to_owned()),
        ),
    ];
    if numeric {
        list.push((
            "!(self.operator in ['Gt', 'Lt']) || (has(self.values) && size(self.values) == 1 && self.values[0].matches('^-?[0-9]+$'))"
                .to_owned(),
            "Gt and Lt take exactly one value, an integer".to_owned(),
            Some(".values".to_owned()),
        ));
    }
    rules(requirement, list);
}

fn bound_requirement(requirement: &mut Map<String, Value>) {
    let properties = properties_of(requirement);
    if let Some(key) = properties.get_mut("key") {
        set(object_of(key), "maxLength", json!(LABEL_KEY_MAX));
    }
    if let Some(operator) = properties.get_mut("operator") {
        set(object_of(operator), "maxLength", json!(16));
    }
    if let Some(values) = properties.get_mut("values") {
        let values = object_of(values);
        set(values, "maxItems", json!(MAX_VALUES));
        set(item_of(values), "maxLength", json!(LABEL_VALUE_MAX));
    }
}

fn label_value(schema: &mut Map<String, Value>) {
    set(schema, "maxLength", json!(LABEL_VALUE_MAX));
    set(schema, "pattern", json!(label_value_pattern()));
}

/// The object schema of a property, through the `anyOf [T, null]` schemars writes for an
/// `Option<T>` before the CRD's nullable rewrite.
fn object_of(value: &mut Value) -> &mut Map<String, Value> {
    let has_any_of = value.get("anyOf").is_some();
    let node = if has_any_of {
        value["anyOf"]
            .as_array_mut()
            .and_then(|variants| {
                variants
                    .iter_mut()
                    .find(|v| v.get("type").and_then(Value::as_str) != Some("null"))
            })
            .expect("an Option's anyOf has a non-null variant")
    } else {
        value
    };
    node.as_object_mut().expect("a property schema is an object")
}

fn properties_of(schema: &mut Map<String, Value>) -> &mut Map<String, Value> {
    schema
        .entry("properties")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("properties is an object")
}

fn item_of(schema: &mut Map<String, Value>) -> &mut Map<String, Value> {
    object_of(schema.get_mut("items").expect("an array schema has items"))
}

fn set(schema: &mut Map<String, Value>, key: &str, value: Value) {
    schema.insert(key.to_owned(), value);
}

/// Appends CEL rules (`rule`, `message`, optional `fieldPath`) to a schema's
/// `x-kubernetes-validations`.
fn rules(schema: &mut Map<String, Value>, list: impl IntoIterator<Item = (String, String, Option<String>)>) {
    let validations = schema
        .entry("x-kubernetes-validations")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .expect("x-kubernetes-validations is a list");
    for (rule, message, field_path) in list {
        let mut entry = json!({"rule": rule, "message": message});
        if let Some(path) = field_path {
            entry["fieldPath"] = json!(path);
        }
        validations.push(entry);
    }
}
