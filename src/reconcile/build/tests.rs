//! Builder tests: each fixture is a ModelDeployment as a user writes it; assertions print the
//! rendered object when they fail.

use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};
use serde::Serialize;
use serde_json::Value;

use super::*;
use crate::{
    api::admission::FieldErrors,
    reconcile::validate::check,
    vocabulary::{
        DEFAULT_FASTAPI_IMAGE, DEFAULT_FETCHER_IMAGE, OperatorImages,
        names::{COMPONENT_SERVER, COMPONENT_VALIDATION, LABEL_COMPONENT, LABEL_VERSION},
    },
};

fn render(yaml: &str) -> Desired {
    let object: Value = serde_yaml_ng::from_str(yaml).expect("fixture is YAML");
    let validated = check(&object, &OperatorImages::default())
        .unwrap_or_else(|e| panic!("fixture should be valid, got:\n{e}\n{yaml}"));
    build(&validated)
}

fn show(object: &impl Serialize) -> String {
    serde_yaml_ng::to_string(object).expect("serializes")
}

fn pod(desired: &Desired) -> &PodSpec {
    desired
        .deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
}

fn server(desired: &Desired) -> &Container {
    &pod(desired).containers[0]
}

fn env_value<'a>(env: &'a [EnvVar], name: &str) -> Option<&'a str> {
    env.iter().find(|e| e.name == name).and_then(|e| e.value.as_deref())
}

fn quantity(
    map: &Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    key: &str,
) -> Option<String> {
    map.as_ref().and_then(|m| m.get(key)).map(|q| q.0.clone())
}

const DUMMY_MODEL: &str = include_str!("../../../tests/fixtures/original-readme/dummy-model.yaml");
const CUSTOM_MODEL: &str = include_str!("../../../tests/fixtures/original-readme/custom-model.yaml");
const TRITON_GPU: &str = include_str!("../../../examples/triton-gpu-autoscaling.yaml");
const TORCHSERVE_MIG: &str = include_str!("../../../examples/torchserve-mig.yaml");
const TIME_SLICED_T4: &str = include_str!("../../../examples/time-sliced-t4.yaml");

#[test]
fn original_dummy_model_renders_a_fastapi_deployment_and_service() {
    let desired = render(DUMMY_MODEL);
    let deployment = show(&desired.deployment);
    let spec = desired.deployment.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1), "{deployment}");
    let server = server(&desired);
    assert_eq!(server.image.as_deref(), Some(DEFAULT_FASTAPI_IMAGE), "{deployment}");
    assert_eq!(server.ports.as_ref().unwrap()[0].container_port, 8000, "{deployment}");
    let env = server.env.as_ref().unwrap();
    assert_eq!(
        env_value(env, "MODEL_PATH"),
        Some("/models/dummy_model.pt"),
        "{deployment}"
    );
    assert_eq!(
        env_value(env, "NVIDIA_VISIBLE_DEVICES"),
        Some("void"),
        "a CPU model hides GPUs:\n{deployment}"
    );
    let resources = server.resources.as_ref().unwrap();
    assert_eq!(
        quantity(&resources.limits, "cpu").as_deref(),
        Some("500m"),
        "{deployment}"
    );
    assert_eq!(
        quantity(&resources.requests, "memory").as_deref(),
        Some("256Mi"),
        "{deployment}"
    );
    assert!(
        pod(&desired).tolerations.is_none() && pod(&desired).affinity.is_none(),
        "{deployment}"
    );

    let fetch = &pod(&desired).init_containers.as_ref().expect("a fetch init container")[0];
    assert_eq!(fetch.image.as_deref(), Some(DEFAULT_FETCHER_IMAGE));
    assert_eq!(
        fetch.args.as_deref().unwrap(),
        [
            "fetch",
            "--uri",
            "https://dummy.com/dummy_model.pt",
            "--dest",
            "/models",
            // The model volume's default size limit, 100Gi.
            "--size-limit",
            "107374182400"
        ],
        "{deployment}"
    );

    let service = show(&desired.service);
    assert_eq!(
        desired.service.metadata.name.as_deref(),
        Some("dummy-model-service"),
        "{service}"
    );
    let port = &desired.service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("http"), 8000), "{service}");
    assert!(desired.hpa.is_none() && desired.validation_job.is_none() && desired.runtime_config.is_none());
}

#[test]
fn every_child_carries_the_original_labels() {
    let desired = render(CUSTOM_MODEL);
    for object in desired.objects() {
        let labels = &object["metadata"]["labels"];
        assert_eq!(labels["model"], "custom-model", "{object:#}");
        assert_eq!(labels["app.kubernetes.io/name"], "custom-model", "{object:#}");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "model-operator", "{object:#}");
    }
}

#[test]
fn original_custom_model_autoscales_on_cpu_and_validates_first() {
    let desired = render(CUSTOM_MODEL);
    let deployment = show(&desired.deployment);
    assert_eq!(
        desired.deployment.spec.as_ref().unwrap().replicas,
        None,
        "the HPA owns replicas:\n{deployment}"
    );
    assert_eq!(server(&desired).image.as_deref(), Some("localhost/fastapi-pytorch:dev"));

    let hpa = desired.hpa.as_ref().expect("autoscale: true renders an HPA");
    let shown = show(hpa);
    let spec = hpa.spec.as_ref().unwrap();
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(1), 4), "{shown}");
    assert_eq!(spec.scale_target_ref.name, "custom-model", "{shown}");
    let metric = &spec.metrics.as_ref().unwrap()[0];
    let resource = metric.resource.as_ref().expect("a CPU resource metric");
    assert_eq!(
        (resource.name.as_str(), resource.target.average_utilization),
        ("cpu", Some(80)),
        "{shown}"
    );

    let job = desired.validation_job.as_ref().expect("validateScript renders a Job");
    let shown = show(job);
    let name = job.metadata.name.as_deref().unwrap();
    assert!(
        name.starts_with("custom-model-validate-") && name.len() == "custom-model-validate-".len() + 8,
        "{shown}"
    );
    let job_pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(job_pod.restart_policy.as_deref(), Some("Never"), "{shown}");
    assert!(
        job_pod.init_containers.is_some(),
        "validation runs on the fetched model:\n{shown}"
    );
    let container = &job_pod.containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("localhost/fastapi-pytorch:dev"),
        "runs in the runtime image:\n{shown}"
    );
    let env = container.env.as_ref().unwrap();
    assert_eq!(env_value(env, "VALIDATE_SCRIPT"), Some("validate.py"), "{shown}");
    assert_eq!(
        env_value(env, "MODEL_URI"),
        Some("https://example.com/model.pt"),
        "{shown}"
    );
    assert_eq!(env_value(env, "MODEL_PATH"), Some("/models/model.pt"), "{shown}");
    let labels = job.metadata.labels.as_ref().unwrap();
    assert_eq!(
        labels.get(LABEL_COMPONENT).map(String::as_str),
        Some(COMPONENT_VALIDATION),
        "{shown}"
    );

    // The Service must not route to validation pods.
    let selector = desired.service.spec.as_ref().unwrap().selector.as_ref().unwrap();
    assert_eq!(
        selector.get(LABEL_COMPONENT).map(String::as_str),
        Some(COMPONENT_SERVER)
    );
}

#[test]
fn original_architecture_example_renders() {
    let desired = render(include_str!(
        "../../../tests/fixtures/original-readme/example-model.yaml"
    ));
    assert_eq!(server(&desired).image.as_deref(), Some("custom-image:tag"));
    assert!(desired.hpa.is_some() && desired.validation_job.is_some());
}

#[test]
fn triton_on_two_gpus_gets_its_ports_probes_and_placement() {
    let desired = render(TRITON_GPU);
    let deployment = show(&desired.deployment);
    let server = server(&desired);
    assert_eq!(
        server.image.as_deref(),
        Some("nvcr.io/nvidia/tritonserver:24.10-py3"),
        "{deployment}"
    );
    assert_eq!(server.command.as_deref().unwrap(), ["tritonserver"], "{deployment}");
    assert!(
        server
            .args
            .as_ref()
            .unwrap()
            .contains(&"--model-repository=/models".to_owned()),
        "{deployment}"
    );
    let ports: Vec<_> = server
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| (p.name.clone().unwrap(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        [
            ("http".to_owned(), 8000),
            ("grpc".to_owned(), 8001),
            ("metrics".to_owned(), 8002)
        ],
        "{deployment}"
    );
    assert_eq!(
        server.readiness_probe.as_ref().unwrap().grpc.as_ref().unwrap().port,
        8001,
        "{deployment}"
    );
    let liveness = server.liveness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
    assert_eq!(liveness.path.as_deref(), Some("/v2/health/live"), "{deployment}");
    assert_eq!(
        server.startup_probe.as_ref().unwrap().failure_threshold,
        Some(180),
        "{deployment}"
    );

    let resources = server.resources.as_ref().unwrap();
    assert_eq!(
        quantity(&resources.limits, "nvidia.com/gpu").as_deref(),
        Some("2"),
        "{deployment}"
    );
    assert_eq!(
        quantity(&resources.requests, "nvidia.com/gpu").as_deref(),
        Some("2"),
        "{deployment}"
    );
    assert_eq!(
        quantity(&resources.limits, "memory").as_deref(),
        Some("32Gi"),
        "{deployment}"
    );

    let pod = pod(&desired);
    let toleration = &pod.tolerations.as_ref().expect("GPU toleration")[0];
    assert_eq!(
        (toleration.key.as_deref(), toleration.effect.as_deref()),
        (Some("nvidia.com/gpu"), Some("NoSchedule")),
        "{deployment}"
    );
    let terms = &pod
        .affinity
        .as_ref()
        .unwrap()
        .node_affinity
        .as_ref()
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()
        .node_selector_terms;
    let expressions = terms[0].match_expressions.as_ref().unwrap();
    assert_eq!(expressions[0].key, "nvidia.com/gpu.product", "{deployment}");
    assert_eq!(
        expressions[0].values.as_deref().unwrap(),
        ["NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3"],
        "{deployment}"
    );
    assert_eq!(
        (expressions[1].key.as_str(), expressions[1].operator.as_str()),
        ("nvidia.com/gpu.memory", "Gt"),
        "{deployment}"
    );
    let server_env = server.env.as_ref().unwrap();
    assert!(
        env_value(server_env, "NVIDIA_VISIBLE_DEVICES").is_none(),
        "the device plugin sets it:\n{deployment}"
    );
    assert_eq!(
        env_value(server_env, "NVIDIA_DRIVER_CAPABILITIES"),
        Some("compute,utility"),
        "{deployment}"
    );
    assert_eq!(
        env_value(server_env, "CUDA_DEVICE_ORDER"),
        Some("PCI_BUS_ID"),
        "{deployment}"
    );
    assert!(
        pod.volumes.as_ref().unwrap().iter().any(|v| v.name == "dshm"),
        "Triton gets a larger /dev/shm:\n{deployment}"
    );

    let fetch = &pod.init_containers.as_ref().unwrap()[0];
    assert_eq!(
        fetch.args.as_deref().unwrap()[3..5],
        ["--dest".to_owned(), "/models/resnet50".to_owned()],
        "{deployment}"
    );

    let hpa = desired.hpa.as_ref().unwrap();
    let shown = show(hpa);
    let metric = &hpa.spec.as_ref().unwrap().metrics.as_ref().unwrap()[0];
    let pods = metric.pods.as_ref().expect("a Pods metric");
    assert_eq!(pods.metric.name, "gpu_utilization", "{shown}");
    assert_eq!(
        (
            pods.target.type_.as_str(),
            pods.target.average_value.as_ref().map(|q| q.0.as_str())
        ),
        ("AverageValue", Some("70")),
        "{shown}"
    );
    let service_ports = desired.service.spec.as_ref().unwrap().ports.as_ref().unwrap();
    assert_eq!(service_ports.len(), 3, "{}", show(&desired.service));
}

#[test]
fn triton_single_file_becomes_version_one_of_the_repository() {
    let desired = render(
        "apiVersion: mlops.sathvik.dev/v1\nkind: ModelDeployment\nmetadata: {name: densenet}\nspec:\n  modelURI: https://models.example.com/densenet.onnx\n  runtime: triton\n",
    );
    let fetch = &pod(&desired).init_containers.as_ref().unwrap()[0];
    assert_eq!(
        fetch.args.as_deref().unwrap(),
        [
            "fetch",
            "--uri",
            "https://models.example.com/densenet.onnx",
            "--dest",
            "/models/densenet/1",
            "--file-name",
            "model.onnx",
            "--size-limit",
            "107374182400"
        ],
        "{}",
        show(&desired.deployment)
    );
}

#[test]
fn triton_single_files_keep_their_last_extension() {
    for (uri, file_name) in [
        ("https://h/resnet50-v1.5.onnx", "model.onnx"),
        ("s3://models/bert.v2.pt", "model.pt"),
        ("https://h/engine.plan", "model.plan"),
        ("https://h/weights", "model.bin"),
    ] {
        let desired = render(&format!(
            "apiVersion: mlops.sathvik.dev/v1\nkind: ModelDeployment\nmetadata: {{name: m}}\nspec:\n  modelURI: {uri}\n  runtime: triton\n"
        ));
        let args = pod(&desired).init_containers.as_ref().unwrap()[0].args.clone().unwrap();
        assert_eq!(
            args[args.len() - 4..args.len() - 2],
            ["--file-name", file_name],
            "{uri}: {args:?}"
        );
    }
}

#[test]
fn torchserve_on_a_mig_slice_gets_its_config_and_slice_resource() {
    let desired = render(TORCHSERVE_MIG);
    let deployment = show(&desired.deployment);
    let server = server(&desired);
    assert_eq!(
        server.image.as_deref(),
        Some("pytorch/torchserve:0.12.0-gpu"),
        "{deployment}"
    );
    let args = server.args.as_ref().unwrap();
    assert!(
        args.windows(2).any(|w| w == ["--models", "bert=bert_seq_cls.mar"]),
        "{deployment}"
    );
    assert!(
        args.windows(2)
            .any(|w| w == ["--ts-config", "/etc/model-runtime/config.properties"]),
        "{deployment}"
    );
    let resources = server.resources.as_ref().unwrap();
    assert_eq!(
        quantity(&resources.limits, "nvidia.com/mig-1g.10gb").as_deref(),
        Some("1"),
        "{deployment}"
    );
    assert_eq!(quantity(&resources.limits, "nvidia.com/gpu"), None, "{deployment}");
    assert_eq!(desired.deployment.spec.as_ref().unwrap().replicas, Some(2));
    let expressions = pod(&desired)
        .affinity
        .as_ref()
        .unwrap()
        .node_affinity
        .as_ref()
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()
        .node_selector_terms[0]
        .match_expressions
        .clone()
        .unwrap();
    assert!(
        expressions[0]
            .values
            .as_ref()
            .unwrap()
            .contains(&"NVIDIA-H100-80GB-HBM3-MIG-1g.10gb".to_owned()),
        "{deployment}"
    );
    assert_eq!(
        server
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/ping")
    );

    let config = desired
        .runtime_config
        .as_ref()
        .expect("TorchServe gets a config.properties");
    let properties = &config.data.as_ref().unwrap()["config.properties"];
    for line in [
        "inference_address=http://0.0.0.0:8080",
        "management_address=http://0.0.0.0:8081",
        "metrics_address=http://0.0.0.0:8082",
        "disable_token_authorization=true",
        "enable_model_api=false",
        "number_of_gpu=1",
    ] {
        assert!(
            properties.lines().any(|l| l == line),
            "missing {line:?} in:\n{properties}"
        );
    }
    let template = desired
        .deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap();
    assert!(
        template
            .annotations
            .as_ref()
            .unwrap()
            .contains_key("mlops.sathvik.dev/runtime-config-hash"),
        "{deployment}"
    );
    let mounts = server.volume_mounts.as_ref().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m.mount_path == "/etc/model-runtime" && m.read_only == Some(true)),
        "{deployment}"
    );
    let names: Vec<_> = desired
        .objects()
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["ConfigMap", "Deployment", "Service"], "apply order");
}

#[test]
fn torchserve_without_gpus_uses_the_cpu_image_and_no_gpu_workers() {
    let desired = render(
        "apiVersion: mlops.sathvik.dev/v1\nkind: ModelDeployment\nmetadata: {name: noop}\nspec:\n  modelURI: https://h/noop.mar\n  runtime: torchserve\n",
    );
    assert_eq!(server(&desired).image.as_deref(), Some("pytorch/torchserve:0.12.0-cpu"));
    let properties = &desired.runtime_config.as_ref().unwrap().data.as_ref().unwrap()["config.properties"];
    assert!(
        properties.contains("number_of_gpu=0\n") && properties.contains("default_workers_per_model=1\n"),
        "{properties}"
    );
}

#[test]
fn time_sliced_t4_accepts_shared_products() {
    let desired = render(TIME_SLICED_T4);
    let deployment = show(&desired.deployment);
    let terms = &pod(&desired)
        .affinity
        .as_ref()
        .unwrap()
        .node_affinity
        .as_ref()
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()
        .node_selector_terms;
    assert_eq!(
        terms[0].match_expressions.as_ref().unwrap()[0]
            .values
            .as_deref()
            .unwrap(),
        ["Tesla-T4", "Tesla-T4-SHARED"],
        "{deployment}"
    );
    assert_eq!(
        quantity(&server(&desired).resources.as_ref().unwrap().limits, "nvidia.com/gpu").as_deref(),
        Some("1")
    );
    assert_eq!(desired.deployment.spec.as_ref().unwrap().replicas, Some(3));
    let job = desired.validation_job.as_ref().unwrap();
    let job_resources = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0]
        .resources
        .as_ref()
        .unwrap();
    assert_eq!(
        quantity(&job_resources.limits, "nvidia.com/gpu"),
        None,
        "validation takes no GPU:\n{}",
        show(job)
    );
}

#[test]
fn autoscaling_metric_defaults_follow_the_gpu() {
    let gpu_model = render(
        "apiVersion: mlops.sathvik.dev/v1\nkind: ModelDeployment\nmetadata: {name: m}\nspec:\n  modelURI: s3://b/m/\n  runtime: triton\n  gpu: {count: 1}\n  autoscale: true\n",
    );
    let metric = &gpu_model
        .hpa
        .as_ref()
        .unwrap()
        .spec
        .as_ref()
        .unwrap()
        .metrics
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        metric.pods.as_ref().unwrap().metric.name,
        "gpu_utilization",
        "{}",
        show(&gpu_model.hpa)
    );

    let queue = render(
        "apiVersion: mlops.sathvik.dev/v1\nkind: ModelDeployment\nmetadata: {name: m}\nspec:\n  modelURI: s3://b/m/\n  runtime: triton\n  autoscale: true\n  autoscaling: {metric: inference-queue, minReplicas: 2, maxReplicas: 6, scaleDownStabilizationSeconds: 0}\n",
    );
    let hpa = queue.hpa.as_ref().unwrap();
    let shown = show(hpa);
    let spec = hpa.spec.as_ref().unwrap();
    let pods = spec.metrics.as_ref().unwrap()[0].pods.as_ref().unwrap();
    assert_eq!(pods.metric.name, "inference_queue_duration_us", "{shown}");
    assert_eq!(pods.target.average_value.as_ref().unwrap().0, "50000", "{shown}");
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 6), "{shown}");
    let window = spec
        .behavior
        .as_ref()
        .unwrap()
        .scale_down
        .as_ref()
        .unwrap()
        .stabilization_window_seconds;
    assert_eq!(window, Some(0), "{shown}");
}

#[test]
fn a_claim_is_mounted_instead_of_fetched() {
    let desired = render(
        "apiVersion: mlops.sathvik.dev/v1\nkind: ModelDeployment\nmetadata: {name: llama}\nspec:\n  modelURI: pvc://model-cache/llama/7b\n  runtime: triton\n",
    );
    let deployment = show(&desired.deployment);
    let pod = pod(&desired);
    assert!(pod.init_containers.is_none(), "{deployment}");
    let volume = &pod.volumes.as_ref().unwrap()[0];
    let claim = volume.persistent_volume_claim.as_ref().expect("a claim volume");
    assert_eq!(
        (claim.claim_name.as_str(), claim.read_only),
        ("model-cache", Some(true)),
        "{deployment}"
    );
    let mount = &server(&desired).volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (mount.mount_path.as_str(), mount.sub_path.as_deref()),
        ("/models/llama", Some("llama/7b")),
        "{deployment}"
    );
}

#[test]
fn user_settings_are_merged_into_the_pod() {
    let desired = render(
        r#"
apiVersion: mlops.sathvik.dev/v1
kind: ModelDeployment
metadata: {name: tuned, namespace: ml}
spec:
  modelURI: https://h/m.pt
  runtime: fastapi-pytorch
  gpu: {count: 1, products: [Tesla-T4]}
  nodeSelector: {pool: inference}
  tolerations: [{key: dedicated, operator: Equal, value: ml, effect: NoSchedule}]
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms: [{matchExpressions: [{key: zone, operator: In, values: [eu-1a]}]}]
  env: [{name: MODEL_PATH, value: /models/override.pt}, {name: WORKERS, value: "4"}]
  runtimeArgs: [--log-level, debug]
"#,
    );
    let deployment = show(&desired.deployment);
    assert_eq!(desired.deployment.metadata.namespace.as_deref(), Some("ml"));
    let pod = pod(&desired);
    assert_eq!(pod.node_selector.as_ref().unwrap()["pool"], "inference", "{deployment}");
    let tolerations: Vec<_> = pod
        .tolerations
        .as_ref()
        .unwrap()
        .iter()
        .map(|t| t.key.clone().unwrap())
        .collect();
    assert_eq!(tolerations, ["nvidia.com/gpu", "dedicated"], "{deployment}");
    let expressions = pod
        .affinity
        .as_ref()
        .unwrap()
        .node_affinity
        .as_ref()
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()
        .node_selector_terms[0]
        .match_expressions
        .clone()
        .unwrap();
    let keys: Vec<_> = expressions.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        ["zone", "nvidia.com/gpu.product"],
        "both must hold:\n{deployment}"
    );
    let env = server(&desired).env.as_ref().unwrap();
    assert_eq!(
        env_value(env, "MODEL_PATH"),
        Some("/models/override.pt"),
        "the user's variable wins:\n{deployment}"
    );
    assert_eq!(env.iter().filter(|e| e.name == "MODEL_PATH").count(), 1, "{deployment}");
    assert_eq!(env_value(env, "WORKERS"), Some("4"), "{deployment}");
    assert_eq!(
        server(&desired).args.as_deref().unwrap(),
        ["--log-level", "debug"],
        "{deployment}"
    );
}

#[test]
fn serving_pods_are_hardened_and_labelled_with_their_version() {
    let desired = render(DUMMY_MODEL);
    let deployment = show(&desired.deployment);
    let pod = pod(&desired);
    let security = pod.security_context.as_ref().unwrap();
    assert_eq!(security.run_as_non_root, Some(true), "{deployment}");
    assert_eq!(pod.automount_service_account_token, Some(false), "{deployment}");
    let container_security = server(&desired).security_context.as_ref().unwrap();
    assert_eq!(
        container_security.allow_privilege_escalation,
        Some(false),
        "{deployment}"
    );
    assert_eq!(
        container_security.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..]),
        "{deployment}"
    );
    let template_labels = desired
        .deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    assert_eq!(template_labels[LABEL_VERSION], "v1", "{deployment}");
    let strategy = desired
        .deployment
        .spec
        .as_ref()
        .unwrap()
        .strategy
        .as_ref()
        .unwrap()
        .rolling_update
        .as_ref()
        .unwrap();
    assert_eq!(
        strategy.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0)),
        "{deployment}"
    );
}

#[test]
fn a_new_version_renders_a_new_validation_job() {
    let v1 = render(CUSTOM_MODEL);
    let v2 = render(&CUSTOM_MODEL.replace("version: v1", "version: v2"));
    let name = |d: &Desired| d.validation_job.as_ref().unwrap().metadata.name.clone().unwrap();
    assert_ne!(name(&v1), name(&v2));
    let version = |d: &Desired| {
        d.deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap()[LABEL_VERSION]
            .clone()
    };
    assert_eq!(version(&v2), "v2");
}

// ---- refused input: every rule names its field ----

fn refused(yaml: &str) -> FieldErrors {
    let object: Value = serde_yaml_ng::from_str(yaml).expect("fixture is YAML");
    match check(&object, &OperatorImages::default()) {
        Ok(validated) => panic!("should be refused, rendered:\n{}", show(&build(&validated).objects())),
        Err(errors) => errors,
    }
}

/// A valid GPU model with `patch` spliced into its spec.
fn with_spec(patch: &str) -> String {
    format!(
        "apiVersion: mlops.sathvik.dev/v1\nkind: ModelDeployment\nmetadata:\n  name: m\nspec:\n  modelURI: s3://bucket/model/\n  runtime: triton\n{}\n",
        patch.lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
    )
}

#[track_caller]
fn assert_refused(yaml: &str, field: &str, words: &str) {
    let errors = refused(yaml);
    let text = errors.to_string();
    assert!(
        errors.names(field) || text.contains(field),
        "expected an error naming {field}, got:\n{text}"
    );
    assert!(text.contains(words), "expected {words:?} in:\n{text}");
}

#[test]
fn unknown_runtime_is_refused() {
    let yaml = with_spec("").replace("runtime: triton", "runtime: onnxruntime");
    assert_refused(&yaml, "spec.runtime", "onnxruntime");
}

#[test]
fn missing_model_uri_is_refused() {
    let yaml = with_spec("").replace("  modelURI: s3://bucket/model/\n", "");
    assert_refused(&yaml, "spec", "modelURI");
}

#[test]
fn gpu_count_below_one_is_refused() {
    assert_refused(&with_spec("gpu: {count: 0}"), "spec.gpu.count", "minimum");
}

#[test]
fn mig_without_a_profile_is_refused() {
    assert_refused(&with_spec("gpu: {sharing: mig}"), "spec.gpu", "migProfile is required");
}

#[test]
fn a_profile_without_mig_is_refused() {
    assert_refused(
        &with_spec("gpu: {migProfile: 1g.10gb}"),
        "spec.gpu",
        "only be set when sharing is mig",
    );
}

#[test]
fn malformed_mig_profile_is_refused() {
    assert_refused(
        &with_spec("gpu: {sharing: mig, migProfile: big}"),
        "spec.gpu.migProfile",
        "does not match",
    );
}

#[test]
fn unknown_sharing_mode_is_refused() {
    assert_refused(&with_spec("gpu: {sharing: shared}"), "spec.gpu.sharing", "shared");
}

#[test]
fn unsupported_uri_scheme_is_refused() {
    let yaml = with_spec("").replace("s3://bucket/model/", "ftp://host/model.pt");
    assert_refused(&yaml, "spec.modelURI", "http://, https://, s3://, gs:// or pvc://");
}

#[test]
fn pvc_uri_without_a_valid_claim_is_refused() {
    let yaml = with_spec("").replace("s3://bucket/model/", "pvc://Model_Cache/x");
    assert_refused(&yaml, "spec.modelURI", "PersistentVolumeClaim");
}

#[test]
fn min_replicas_above_max_is_refused() {
    assert_refused(
        &with_spec("autoscale: true\nautoscaling: {minReplicas: 5, maxReplicas: 2}"),
        "spec.autoscaling",
        "minReplicas must not be greater than maxReplicas",
    );
}

#[test]
fn min_replicas_above_the_default_max_is_refused() {
    assert_refused(
        &with_spec("autoscale: true\nautoscaling: {minReplicas: 6}"),
        "spec.autoscaling",
        "minReplicas must not be greater than maxReplicas",
    );
}

#[test]
fn gpu_utilization_without_gpus_is_refused() {
    assert_refused(
        &with_spec("autoscale: true\nautoscaling: {metric: gpu-utilization}"),
        "spec",
        "needs spec.gpu",
    );
}

#[test]
fn mig_models_scale_on_cpu_by_default_and_refuse_gpu_utilization() {
    let mig = "gpu: {sharing: mig, migProfile: 1g.10gb}\nautoscale: true";
    let desired = render(&with_spec(mig));
    let hpa = desired.hpa.as_ref().unwrap();
    let metric = &hpa.spec.as_ref().unwrap().metrics.as_ref().unwrap()[0];
    assert_eq!(metric.type_, "Resource", "{}", show(hpa));
    assert_eq!(metric.resource.as_ref().unwrap().name, "cpu", "{}", show(hpa));
    assert_refused(
        &with_spec(&format!("{mig}\nautoscaling: {{metric: gpu-utilization}}")),
        "spec.autoscaling.metric",
        "cannot be measured on a MIG slice",
    );
}

#[test]
fn queue_scaling_works_on_every_runtime() {
    for runtime in ["triton", "torchserve", "fastapi-pytorch"] {
        let yaml = with_spec("autoscale: true\nautoscaling: {metric: inference-queue}")
            .replace("runtime: triton", &format!("runtime: {runtime}"));
        let desired = render(&yaml);
        let hpa = desired.hpa.as_ref().unwrap();
        let metrics = hpa.spec.as_ref().unwrap().metrics.as_ref().unwrap();
        let pods = metrics[0].pods.as_ref().unwrap();
        assert_eq!(
            pods.metric.name,
            "inference_queue_duration_us",
            "{runtime}: {}",
            show(hpa)
        );
    }
}

#[test]
fn utilisation_target_over_100_percent_is_refused() {
    assert_refused(
        &with_spec("autoscale: true\nautoscaling: {metric: cpu, target: 150}"),
        "spec",
        "between 1 and 100",
    );
}

#[test]
fn negative_replicas_are_refused() {
    assert_refused(&with_spec("replicas: -1"), "spec.replicas", "minimum");
}

#[test]
fn a_version_that_is_not_a_label_value_is_refused() {
    assert_refused(&with_spec("version: 'v1 final!'"), "spec.version", "does not match");
}

#[test]
fn gpu_resources_in_two_places_are_refused() {
    assert_refused(
        &with_spec("gpu: {count: 1}\nresources: {limits: {nvidia.com/gpu: 2}}"),
        "spec",
        "must not name nvidia.com/*",
    );
}

#[test]
fn malformed_quantity_is_refused() {
    assert_refused(
        &with_spec("resources: {limits: {cpu: five}}"),
        "spec.resources.limits.cpu",
        "not a quantity",
    );
}

#[test]
fn unknown_fields_are_refused_by_name() {
    assert_refused(&with_spec("gpu: {cuont: 2}"), "spec.gpu.cuont", "not declared");
}

#[test]
fn wrong_field_type_is_refused_by_name() {
    assert_refused(&with_spec("autoscale: maybe"), "spec.autoscale", "boolean");
}

#[test]
fn too_long_a_name_is_refused() {
    let yaml = with_spec("").replace("name: m\n", &format!("name: {}\n", "m".repeat(50)));
    assert_refused(&yaml, "metadata.name", "at most 45 characters");
}

#[test]
fn another_kind_is_refused() {
    assert_refused(
        &with_spec("").replace("kind: ModelDeployment", "kind: Deployment"),
        "kind",
        "expected ModelDeployment",
    );
}

/// A fastapi model with `patch` added to its spec.
fn fastapi_with(uri: &str, patch: &str) -> Desired {
    render(&format!(
        "apiVersion: mlops.sathvik.dev/v1\nkind: ModelDeployment\nmetadata: {{name: m}}\nspec:\n  modelURI: \"{uri}\"\n  runtime: fastapi-pytorch\n{}\n",
        patch.lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
    ))
}

fn fetch_container(desired: &Desired) -> &Container {
    &pod(desired).init_containers.as_ref().expect("a fetch init container")[0]
}

#[test]
fn torchserve_keeps_its_management_api_off_the_service() {
    let desired = render(TORCHSERVE_MIG);
    let ports: Vec<&str> = desired
        .service
        .spec
        .as_ref()
        .unwrap()
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .filter_map(|p| p.name.as_deref())
        .collect();
    assert_eq!(ports, ["http", "metrics"], "{}", show(&desired.service));
    let container_ports: Vec<i32> = server(&desired)
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| p.container_port)
        .collect();
    assert!(
        container_ports.contains(&8081),
        "the operator still probes it on the pod"
    );
}

#[test]
fn model_credentials_reach_the_fetch_and_not_the_runtime_unless_asked() {
    let desired = fastapi_with("s3://models/m.pt", "modelCredentials: {secretName: store-keys}");
    let fetch = fetch_container(&desired);
    let from = fetch.env_from.as_ref().expect("the fetch reads the Secret's keys");
    assert_eq!(from[0].secret_ref.as_ref().unwrap().name, "store-keys");
    assert!(
        fetch
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.mount_path == "/var/run/secrets/model-credentials"),
        "{}",
        show(fetch)
    );
    let volume = pod(&desired)
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "model-credentials")
        .unwrap();
    assert_eq!(
        volume.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("store-keys")
    );
    let runtime = server(&desired);
    assert!(runtime.env_from.is_none(), "{}", show(runtime));
    assert!(
        runtime
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .all(|m| m.name != "model-credentials")
    );
    let job = fastapi_with(
        "s3://models/m.pt",
        "modelCredentials: {secretName: store-keys}\nvalidateScript: check.py",
    )
    .validation_job
    .unwrap();
    let job_pod = job.spec.unwrap().template.spec.unwrap();
    assert!(
        job_pod.init_containers.unwrap()[0].env_from.is_some(),
        "the validation's fetch reads it too"
    );
    assert!(
        job_pod.containers[0].env_from.is_none(),
        "the validation script does not"
    );

    let exposed = fastapi_with(
        "s3://models/m.pt",
        "modelCredentials: {secretName: store-keys, exposeToRuntime: true}",
    );
    let runtime = server(&exposed);
    assert_eq!(
        runtime.env_from.as_ref().unwrap()[0].secret_ref.as_ref().unwrap().name,
        "store-keys"
    );
    assert!(
        runtime
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.name == "model-credentials")
    );
}

#[test]
fn a_uri_with_credentials_reaches_the_fetch_alone_and_nowhere_as_an_argument() {
    let secret_uri = "https://deploy:s3cr3t@models.example.com/m.pt?token=t0k3n";
    let desired = fastapi_with(secret_uri, "");
    let deployment = show(&desired.deployment);
    let fetch = fetch_container(&desired);
    assert!(
        fetch
            .args
            .as_ref()
            .unwrap()
            .iter()
            .all(|a| !a.contains("s3cr3t") && !a.contains("t0k3n")),
        "{deployment}"
    );
    assert_eq!(env_value(fetch.env.as_ref().unwrap(), "MODEL_URI"), Some(secret_uri));
    assert_eq!(
        env_value(server(&desired).env.as_ref().unwrap(), "MODEL_URI"),
        Some("https://deploy:***@models.example.com/m.pt?token=***"),
        "the runtime is told the URI without its secrets"
    );
    assert_eq!(
        deployment.matches("s3cr3t").count(),
        1,
        "only the fetch's env holds it:\n{deployment}"
    );
}

#[test]
fn the_model_volume_is_bounded_by_the_spec() {
    let size_limit = |desired: &Desired| {
        pod(desired).volumes.as_ref().unwrap()[0]
            .empty_dir
            .as_ref()
            .unwrap()
            .size_limit
            .clone()
            .map(|q| q.0)
    };
    assert_eq!(
        size_limit(&fastapi_with("https://h/m.pt", "")).as_deref(),
        Some("100Gi")
    );
    assert_eq!(
        size_limit(&fastapi_with("https://h/m.pt", "modelSizeLimit: 20Gi")).as_deref(),
        Some("20Gi")
    );
    let from_resources = fastapi_with("https://h/m.pt", "resources: {limits: {ephemeral-storage: 50Gi}}");
    assert_eq!(size_limit(&from_resources).as_deref(), Some("50Gi"));
    let args = fetch_container(&from_resources).args.clone().unwrap();
    assert_eq!(args[args.len() - 2..], ["--size-limit", "53687091200"], "{args:?}");
}

const TRITON_DRA: &str = include_str!("../../../examples/triton-dra-h100.yaml");

#[test]
fn dra_gives_each_replica_a_claim_from_the_models_template_instead_of_a_gpu_limit() {
    let desired = render(TRITON_DRA);
    let template = desired
        .resource_claim_template
        .as_ref()
        .unwrap_or_else(|| panic!("a claim template:\n{}", show(&desired)));
    let name = template.metadata.name.clone().unwrap();
    assert!(name.starts_with("triton-dra-gpu-"), "{name}");
    let requests = template.spec.spec.devices.as_ref().unwrap().requests.as_ref().unwrap();
    let exactly = requests[0].exactly.as_ref().unwrap();
    assert_eq!(
        (requests[0].name.as_str(), exactly.device_class_name.as_str()),
        ("gpu", "gpu.nvidia.com")
    );
    assert_eq!(exactly.count, Some(2));
    let selectors: Vec<&str> = exactly
        .selectors
        .iter()
        .flatten()
        .map(|s| s.cel.as_ref().unwrap().expression.as_str())
        .collect();
    assert_eq!(selectors.len(), 2, "{selectors:#?}");
    assert!(selectors[0].contains("quantity('40960Mi')") && selectors[1].contains("in ['Hopper']"));

    let pod = pod(&desired);
    let claims = pod.resource_claims.as_ref().unwrap();
    assert_eq!(claims[0].name, "gpu");
    assert_eq!(claims[0].resource_claim_template_name.as_deref(), Some(name.as_str()));
    let resources = server(&desired).resources.as_ref().unwrap();
    assert_eq!(resources.claims.as_ref().unwrap()[0].name, "gpu");
    assert!(
        quantity(&resources.limits, "nvidia.com/gpu").is_none(),
        "no device-plugin limit:\n{}",
        show(resources)
    );
    assert!(pod.affinity.is_none(), "the devices, not GFD labels, choose the node");
    let tolerations = pod.tolerations.as_ref().unwrap();
    assert!(tolerations.iter().any(|t| t.key.as_deref() == Some("nvidia.com/gpu")));
    assert_eq!(
        env_value(server(&desired).env.as_ref().unwrap(), "CUDA_DEVICE_ORDER"),
        Some("PCI_BUS_ID")
    );
    // Applied before the pods that use it.
    let kinds: Vec<String> = desired
        .objects()
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["ResourceClaimTemplate", "Deployment", "Service"]);
}

#[test]
fn a_changed_gpu_request_is_a_new_template_and_so_new_pods() {
    let before = render(TRITON_DRA);
    let after = render(&TRITON_DRA.replace("count: 2", "count: 1"));
    let name = |d: &Desired| d.resource_claim_template.as_ref().unwrap().metadata.name.clone();
    assert_ne!(name(&before), name(&after));
    assert_eq!(
        name(&before),
        name(&render(TRITON_DRA)),
        "the same request, the same name"
    );
}

#[test]
fn mig_through_dra_asks_the_mig_class_for_the_profile() {
    let yaml = with_spec("gpu: {allocation: dra, sharing: mig, migProfile: 1g.10gb}");
    let desired = render(&yaml);
    let template = desired.resource_claim_template.as_ref().expect("a claim template");
    let exactly = template.spec.spec.devices.as_ref().unwrap().requests.as_ref().unwrap()[0]
        .exactly
        .clone()
        .unwrap();
    assert_eq!(exactly.device_class_name, "mig.nvidia.com");
    assert!(
        exactly.selectors.unwrap()[0]
            .cel
            .as_ref()
            .unwrap()
            .expression
            .contains("== '1g.10gb'")
    );
    let resources = server(&desired).resources.as_ref().unwrap();
    assert!(quantity(&resources.limits, "nvidia.com/mig-1g.10gb").is_none());
}

#[test]
fn auto_renders_the_device_plugin_offline() {
    // `render` has no cluster to read slices from; the reconcile resolves `auto` from them.
    let desired = render(TRITON_GPU);
    assert!(desired.resource_claim_template.is_none());
    assert_eq!(
        quantity(&server(&desired).resources.as_ref().unwrap().limits, "nvidia.com/gpu").as_deref(),
        Some("2")
    );
}

#[test]
fn dra_only_selectors_with_the_device_plugin_are_refused() {
    assert_refused(
        &with_spec("gpu: {allocation: device-plugin, architectures: [Hopper]}"),
        "spec.gpu.allocation",
        "the device plugin cannot honour them",
    );
    assert_refused(
        &with_spec("gpu: {allocation: dra, sharing: time-sliced}"),
        "spec.gpu.sharing",
        "time-sliced sharing is the device plugin's",
    );
    assert_refused(
        &with_spec("gpu: {allocation: dra, minComputeCapability: \"8\"}"),
        "spec.gpu.minComputeCapability",
        "",
    );
}

const GOES_TO_ZERO: &str = "apiVersion: mlops.sathvik.dev/v1\nkind: ModelDeployment\nmetadata: {name: m}\nspec:\n  modelURI: s3://b/m/\n  runtime: triton\n  autoscale: true\n  autoscaling: {metric: inference-queue, minReplicas: 0, maxReplicas: 3, scaleToZeroAfter: 10m}\n";

#[test]
fn a_model_that_may_go_to_zero_keeps_an_hpa_of_at_least_one_and_its_replicas_while_awake() {
    let object: Value = serde_yaml_ng::from_str(GOES_TO_ZERO).unwrap();
    let validated = check(&object, &OperatorImages::default()).unwrap();
    assert_eq!(
        validated.scaling.scale_to_zero_after(),
        Some(std::time::Duration::from_secs(600))
    );
    let awake = build(&validated);
    let hpa = awake.hpa.as_ref().expect("an HPA");
    let spec = hpa.spec.as_ref().unwrap();
    assert_eq!(
        (spec.min_replicas, spec.max_replicas),
        (Some(1), 3),
        "an HPA cannot go below one: {}",
        show(hpa)
    );
    assert_eq!(
        awake.deployment.spec.as_ref().unwrap().replicas,
        None,
        "awake, the HPA owns the replicas"
    );
}

#[test]
fn an_asleep_model_wants_no_replica_and_keeps_its_hpa() {
    let object: Value = serde_yaml_ng::from_str(GOES_TO_ZERO).unwrap();
    let mut validated = check(&object, &OperatorImages::default()).unwrap();
    validated.asleep = true;
    let asleep = build(&validated);
    assert_eq!(asleep.deployment.spec.as_ref().unwrap().replicas, Some(0));
    assert!(
        asleep.hpa.is_some(),
        "the HPA stands still at zero rather than being deleted"
    );
}

#[test]
fn the_idle_time_defaults_to_fifteen_minutes_and_must_be_a_duration_of_two_seconds_or_more() {
    let default = with_spec("autoscale: true\nautoscaling: {metric: inference-queue, minReplicas: 0}");
    let object: Value = serde_yaml_ng::from_str(&default).unwrap();
    let validated = check(&object, &OperatorImages::default()).unwrap();
    assert_eq!(
        validated.scaling.scale_to_zero_after(),
        Some(std::time::Duration::from_secs(900))
    );
    assert_refused(
        &with_spec("autoscale: true\nautoscaling: {metric: inference-queue, minReplicas: 0, scaleToZeroAfter: 500ms}"),
        "spec.autoscaling.scaleToZeroAfter",
        "shorter than the least idle time",
    );
    assert_refused(
        &with_spec("autoscale: true\nautoscaling: {metric: inference-queue, minReplicas: 2, scaleToZeroAfter: 5m}"),
        "spec.autoscaling.scaleToZeroAfter",
        "needs minReplicas: 0",
    );
}

#[test]
fn while_the_activator_takes_the_traffic_the_service_selects_nothing_and_a_slice_points_at_the_activator() {
    let object: Value = serde_yaml_ng::from_str(GOES_TO_ZERO).unwrap();
    let mut validated = check(&object, &OperatorImages::default()).unwrap();
    let serving = build(&validated);
    assert!(serving.activator_slice.is_none());
    assert!(serving.service.spec.as_ref().unwrap().selector.is_some());

    validated.activator = Some(crate::vocabulary::ActivatorEndpoints {
        address_type: "IPv4".into(),
        addresses: vec!["10.0.0.7".into(), "10.0.0.8".into()],
    });
    let handed = build(&validated);
    let selector = handed.service.spec.as_ref().unwrap().selector.clone().unwrap();
    assert_eq!(
        selector.get("mlops.sathvik.dev/held-by-activator").map(String::as_str),
        Some("true"),
        "a selector no pod matches, so the EndpointSlice controller empties its slices: {}",
        show(&handed.service)
    );
    let slice = handed.activator_slice.as_ref().expect("the activator's slice");
    let shown = show(slice);
    assert_eq!(slice.metadata.name.as_deref(), Some("m-service-activator"), "{shown}");
    let labels = slice.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["kubernetes.io/service-name"], "m-service", "{shown}");
    assert_eq!(
        labels["endpointslice.kubernetes.io/managed-by"], "model-operator.mlops.sathvik.dev",
        "not the EndpointSlice controller's, which would delete it: {shown}"
    );
    assert_eq!(labels["app.kubernetes.io/managed-by"], "model-operator", "{shown}");
    assert_eq!(slice.address_type, "IPv4");
    let addresses: Vec<&str> = slice.endpoints.iter().map(|e| e.addresses[0].as_str()).collect();
    assert_eq!(addresses, ["10.0.0.7", "10.0.0.8"], "{shown}");
    // Triton's inference ports go to the activator's; its metrics port is left out.
    let ports: Vec<(&str, i32)> = slice
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| (p.name.as_deref().unwrap(), p.port.unwrap()))
        .collect();
    assert_eq!(ports, [("http", 8012), ("grpc", 8013)], "{shown}");
}
