//! `config/default`'s own pieces (`config/rbac`, `config/manager`, the namespace): they parse as
//! their Kubernetes types with no field the API server would drop, the operator Deployment keeps
//! the promises the operator's flags and the restricted Pod Security profile depend on, and no
//! RBAC rule anywhere under `config/` has a wildcard. `make install-check` applies the whole
//! tree to the local cluster; these catch the same mistakes without one.

use std::path::{Path, PathBuf};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Container, Namespace, Service},
        rbac::v1::{ClusterRole, PolicyRule, Role},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;

fn path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(file)
}

/// Every document of a file, as JSON values.
fn documents(file: &str) -> Vec<Value> {
    let path = path(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

/// One document as `T`, refusing fields `T` does not know.
fn typed<T: DeserializeOwned>(document: Value, what: &str) -> T {
    let mut unknown = Vec::new();
    let value: T = serde_ignored::deserialize(document, |field| unknown.push(field.to_string()))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        unknown.is_empty(),
        "{what}: fields the API server would drop: {unknown:?}"
    );
    value
}

fn one<T: DeserializeOwned>(file: &str, kind: &str) -> T {
    let mut found: Vec<Value> = documents(file).into_iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "{file}: one {kind}");
    typed(found.remove(0), &format!("{file} {kind}"))
}

fn operator_container(deployment: &Deployment) -> &Container {
    let pod = deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    pod.containers
        .iter()
        .find(|c| c.name == "operator")
        .expect("an `operator` container")
}

/// The number of the container's port named `name`.
fn container_port(container: &Container, name: &str) -> i32 {
    container
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("a port named {name}"))
        .container_port
}

#[test]
fn the_operator_runs_two_replicas_with_leader_election() {
    let deployment: Deployment = one("config/manager/deployment.yaml", "Deployment");
    let spec = deployment.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let container = operator_container(&deployment);
    assert_eq!(container.args.as_deref(), Some(&["run".to_owned()][..]));
    let env = container.env.as_deref().unwrap_or_default();
    assert!(
        !env.iter().any(|e| e.name == "DISABLE_LEADER_ELECTION"),
        "two replicas need the Lease"
    );
    // The Lease lives in the pod's own namespace (where the leader-election Role grants it).
    let from_field = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
            .map(|f| f.field_path.clone())
    };
    assert_eq!(from_field("POD_NAMESPACE").as_deref(), Some("metadata.namespace"));
    assert_eq!(from_field("POD_NAME").as_deref(), Some("metadata.name"));
    let account = spec.template.spec.as_ref().unwrap().service_account_name.clone();
    let service_account: Value = documents("config/rbac/service_account.yaml").remove(0);
    assert_eq!(account.as_deref(), service_account["metadata"]["name"].as_str());
}

#[test]
fn probes_and_ports_are_the_operators_defaults() {
    let deployment: Deployment = one("config/manager/deployment.yaml", "Deployment");
    let container = operator_container(&deployment);
    let port = |name: &str| container_port(container, name);
    // `model-operator run`'s --metrics-addr, --health-addr and --custom-metrics-addr defaults.
    assert_eq!(
        (port("metrics"), port("health"), port("custom-metrics")),
        (8080, 8081, 6443)
    );
    for (probe, path) in [
        (&container.liveness_probe, "/healthz"),
        (&container.readiness_probe, "/readyz"),
    ] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).expect("an HTTP probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.port,
            IntOrString::String("health".into()),
            "{path} is on the admin port"
        );
    }
    let metrics: Service = one("config/manager/service.yaml", "Service");
    let service_port = &metrics.spec.unwrap().ports.unwrap()[0];
    assert_eq!(service_port.target_port, Some(IntOrString::String("metrics".into())));
}

#[test]
fn the_operator_pod_meets_the_restricted_profile() {
    let deployment: Deployment = one("config/manager/deployment.yaml", "Deployment");
    let pod = deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let pod_security = pod.security_context.as_ref().expect("a pod securityContext");
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert_eq!(
        pod_security.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    let container = operator_container(&deployment);
    let security = container
        .security_context
        .as_ref()
        .expect("a container securityContext");
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.run_as_non_root, Some(true));
    let capabilities = security.capabilities.as_ref().unwrap();
    assert_eq!(capabilities.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert!(capabilities.add.is_none());
    assert!(
        pod.volumes.is_none(),
        "restricted allows no hostPath; the operator needs no volume"
    );
    assert!(
        container
            .image
            .as_deref()
            .is_some_and(|i| !i.ends_with(":latest") && i.contains(':')),
        "a pinned image tag"
    );
}

#[test]
fn the_namespace_says_why_it_is_privileged() {
    let namespace: Namespace = one("config/default/namespace.yaml", "Namespace");
    let labels = namespace.metadata.labels.unwrap();
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "privileged");
    assert_eq!(namespace.metadata.name.as_deref(), Some("model-operator-system"));
}

/// Every file under `config/` (the Prometheus examples included) and the chart's templates.
fn yaml_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            found.push(path);
        }
    }
}

fn rules(file: &Path) -> Vec<(String, PolicyRule)> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut rules = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(&text) {
        let Ok(value) = Value::deserialize(document) else {
            continue;
        };
        let what = format!("{} {} {}", file.display(), value["kind"], value["metadata"]["name"]);
        let found = match value["kind"].as_str() {
            Some("ClusterRole") => typed::<ClusterRole>(value, &what).rules,
            Some("Role") => typed::<Role>(value, &what).rules,
            _ => None,
        };
        rules.extend(found.into_iter().flatten().map(|rule| (what.clone(), rule)));
    }
    rules
}

#[test]
fn no_rbac_rule_has_a_wildcard() {
    let mut files = Vec::new();
    yaml_files(&path("config"), &mut files);
    let rules: Vec<(String, PolicyRule)> = files.iter().flat_map(|f| rules(f)).collect();
    assert!(
        rules.len() >= 10,
        "expected the operator's rules, found {}",
        rules.len()
    );
    for (what, rule) in &rules {
        let fields = [
            rule.api_groups.clone().unwrap_or_default(),
            rule.resources.clone().unwrap_or_default(),
            rule.verbs.clone(),
            rule.non_resource_urls.clone().unwrap_or_default(),
        ];
        assert!(
            !fields.iter().flatten().any(|f| f.contains('*')),
            "{what}: a wildcard in {rule:?}"
        );
    }
}

#[test]
fn the_operator_may_write_only_what_it_applies() {
    let role: ClusterRole = one("config/rbac/role.yaml", "ClusterRole");
    let mut writes = Vec::new();
    for rule in role.rules.unwrap() {
        for resource in rule.resources.iter().flatten() {
            for verb in rule
                .verbs
                .iter()
                .filter(|v| !["get", "list", "watch"].contains(&v.as_str()))
            {
                writes.push(format!("{verb} {resource}"));
            }
        }
    }
    // Server-side apply of every child kind (src/reconcile/apply.rs; the EndpointSlice points a
    // model's Service at the activator), pruning of the optional ones,
    // the status, Events; nothing on pods, nodes or the ModelDeployment's spec.
    let mut expected = vec![
        "update modeldeployments/finalizers",
        "patch modeldeployments/status",
        "create deployments",
        "patch deployments",
        "create services",
        "patch services",
        "create endpointslices",
        "patch endpointslices",
        "delete endpointslices",
        "create jobs",
        "patch jobs",
        "create horizontalpodautoscalers",
        "patch horizontalpodautoscalers",
        "delete horizontalpodautoscalers",
        "create configmaps",
        "patch configmaps",
        "delete configmaps",
        "create resourceclaimtemplates",
        "patch resourceclaimtemplates",
        "delete resourceclaimtemplates",
        "create events",
        "patch events",
    ];
    let mut writes: Vec<&str> = writes.iter().map(String::as_str).collect();
    writes.sort_unstable();
    expected.sort_unstable();
    assert_eq!(writes, expected);
}

#[derive(Deserialize)]
struct Kustomization {
    resources: Vec<String>,
}

/// Every kustomization's resources exist, as files or as directories with a kustomization.
#[test]
fn every_kustomization_lists_what_exists() {
    let mut files = Vec::new();
    yaml_files(&path("config"), &mut files);
    files.push(path("crds/kustomization.yaml"));
    let kustomizations: Vec<&PathBuf> = files.iter().filter(|f| f.ends_with("kustomization.yaml")).collect();
    assert!(
        kustomizations
            .iter()
            .any(|k| k.ends_with("config/default/kustomization.yaml"))
    );
    for kustomization in kustomizations {
        let parsed: Kustomization = serde_yaml_ng::from_str(&std::fs::read_to_string(kustomization).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", kustomization.display()));
        let dir = kustomization.parent().unwrap();
        for resource in parsed.resources {
            let target = dir.join(&resource);
            assert!(
                target.is_file() || target.join("kustomization.yaml").is_file(),
                "{} lists {resource}, which is neither a file nor a kustomization",
                kustomization.display()
            );
        }
    }
}

/// The objects a kustomization builds, as `apiVersion kind name`: its files' documents and, for a
/// listed directory, that kustomization's, recursively (what `kubectl kustomize` emits, less its
/// transformers, which change no kind).
fn bundle(dir: &Path) -> Vec<String> {
    let file = dir.join("kustomization.yaml");
    let parsed: Kustomization =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display())))
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut objects = Vec::new();
    for resource in parsed.resources {
        let target = dir.join(&resource);
        if target.is_dir() {
            objects.extend(bundle(&target));
            continue;
        }
        let relative = target
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        for document in documents(&relative) {
            objects.push(format!(
                "{} {} {}",
                document["apiVersion"].as_str().unwrap_or_default(),
                document["kind"].as_str().unwrap_or_default(),
                document["metadata"]["name"].as_str().unwrap_or_default()
            ));
        }
    }
    objects.sort_unstable();
    objects
}

/// `kubectl apply --server-side -k config/default` must work on a cluster without
/// prometheus-operator: only built-in kinds and the CRD the bundle itself brings. The
/// ServiceMonitors come with config/prometheus, which is default plus them and nothing else.
#[test]
fn the_default_bundle_needs_no_crd_it_does_not_bring() {
    let default = bundle(&path("config/default"));
    let brought: Vec<String> = default
        .iter()
        .filter(|o| o.starts_with("apiextensions.k8s.io/v1 CustomResourceDefinition "))
        .map(|o| o.rsplit(' ').next().unwrap().split_once('.').unwrap().1.to_owned())
        .collect();
    assert_eq!(brought, ["mlops.sathvik.dev"], "{default:#?}");
    let builtin = [
        "v1 ",
        "apps/v1 ",
        "rbac.authorization.k8s.io/v1 ",
        "apiregistration.k8s.io/v1 ",
        "apiextensions.k8s.io/v1 ",
    ];
    let foreign: Vec<&String> = default
        .iter()
        .filter(|o| !builtin.iter().any(|prefix| o.starts_with(prefix)))
        .collect();
    assert!(
        foreign.is_empty(),
        "config/default needs CRDs it does not install: {foreign:?}"
    );

    let mut with_monitors = bundle(&path("config/prometheus"));
    let monitors: Vec<String> = with_monitors
        .extract_if(.., |o| o.starts_with("monitoring.coreos.com/v1 ServiceMonitor "))
        .collect();
    assert_eq!(
        monitors,
        [
            "monitoring.coreos.com/v1 ServiceMonitor model-operator",
            "monitoring.coreos.com/v1 ServiceMonitor node-agent"
        ]
    );
    assert_eq!(
        with_monitors, default,
        "config/prometheus is config/default plus the ServiceMonitors"
    );
}

/// The HPA controller's grant names every metric the custom metrics API serves, in the
/// kustomize tree and in the chart: a metric left out would read as forbidden in the HPA.
#[test]
fn the_hpa_may_read_every_served_metric() {
    let wanted: Vec<String> = model_operator::vocabulary::POD_METRICS
        .iter()
        .map(|metric| format!("pods/{metric}"))
        .collect();
    let reader = rules(&path("config/custom-metrics/rbac.yaml"))
        .into_iter()
        .find(|(what, _)| what.contains("custom-metrics-reader"))
        .expect("config/custom-metrics/rbac.yaml has the custom metrics reader role");
    assert_eq!(reader.1.resources.as_deref(), Some(wanted.as_slice()), "{}", reader.0);
    let chart = std::fs::read_to_string(path("charts/model-operator/templates/rbac.yaml")).unwrap();
    let listed = wanted.iter().map(|r| format!("{r:?}")).collect::<Vec<_>>().join(", ");
    assert!(
        chart.contains(&format!("resources: [{listed}]")),
        "the chart's reader role should list {listed}"
    );
}

#[test]
fn the_activator_runs_two_replicas_on_the_ports_its_service_names() {
    let deployment: Deployment = one("config/activator/deployment.yaml", "Deployment");
    let spec = deployment.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.as_ref().unwrap();
    let container = pod.containers.iter().find(|c| c.name == "activator").unwrap();
    assert_eq!(container.args.as_deref(), Some(&["activator".to_owned()][..]));
    let port = |name: &str| container_port(container, name);
    // `model-operator activator`'s --http-addr, --grpc-addr and --health-addr defaults.
    assert_eq!((port("http"), port("grpc"), port("health")), (8012, 8013, 8081));
    let service: Service = one("config/activator/service.yaml", "Service");
    let targets: Vec<Option<IntOrString>> = service
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .map(|p| p.target_port)
        .collect();
    assert_eq!(
        targets,
        [
            Some(IntOrString::String("http".into())),
            Some(IntOrString::String("grpc".into()))
        ]
    );
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let account: Value = documents("config/activator/serviceaccount.yaml").remove(0);
    assert_eq!(
        pod.service_account_name.as_deref(),
        account["metadata"]["name"].as_str()
    );
}

#[test]
fn the_activator_may_write_only_the_scale_of_models_and_their_deployments() {
    let role: ClusterRole = one("config/activator/rbac.yaml", "ClusterRole");
    let mut grants: Vec<String> = role
        .rules
        .unwrap()
        .into_iter()
        .flat_map(|rule| {
            let verbs = rule.verbs.clone();
            rule.resources
                .unwrap_or_default()
                .into_iter()
                .flat_map(move |resource| verbs.clone().into_iter().map(move |verb| format!("{verb} {resource}")))
        })
        .collect();
    grants.sort();
    assert_eq!(
        grants,
        [
            "list modeldeployments",
            "list pods",
            "patch deployments/scale",
            "patch modeldeployments/scale",
            "watch modeldeployments",
            "watch pods"
        ]
    );
}
