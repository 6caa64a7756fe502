//! The `node-agent` binary end to end: it loads the fake `libnvidia-ml.so` through `--nvml-lib`
//! exactly as it would load the real one, and asks the fake kubelet's PodResources server on a
//! unix socket which pods hold which GPUs. Everything on loopback, in temporary directories.

mod support;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use node_agent::samples::NodeSamples;
use serde_json::{Value, json};
use support::{
    Agent, doubles, list_calls, start_agent, start_agent_with_env, start_kubelet, value_of, wait_for, write_json,
};
use tempfile::TempDir;

const A100: &str = "GPU-8f6b2a10-5c3d-4e1f-9a7b-0c1d2e3f4a5b";
const T4: &str = "GPU-1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f";
const MIG_PARENT: &str = "GPU-9e8d7c6b-5a49-4838-a726-1504f3e2d1c0";
const MIG_FREE: &str = "MIG-4a5b6c7d-8e9f-5a0b-9c1d-2e3f4a5b6c7d";
const MIG_HELD: &str = "MIG-7d6c5b4a-3f2e-5d1c-8b0a-9f8e7d6c5b4a";
const LOST: &str = "GPU-0bad0bad-0bad-4bad-8bad-0bad0bad0bad";
const SPARE: &str = "GPU-5e5e5e5e-5e5e-4e5e-9e5e-5e5e5e5e5e5e";
const WAIT: Duration = Duration::from_secs(20);

/// A temporary directory with the fake library installed under the real library's name.
struct Node {
    dir: TempDir,
    nvml_lib: PathBuf,
}

impl Node {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let nvml_lib = dir.path().join("libnvidia-ml.so.1");
        std::fs::copy(&doubles().nvml_lib, &nvml_lib).unwrap();
        Self { dir, nvml_lib }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start_agent(&self, nvml: &Value, socket: &Path, extra: &[&str]) -> Agent {
        write_json(&self.path("nvml.json"), nvml);
        start_agent(self.dir.path(), &self.nvml_lib, &self.path("nvml.json"), socket, extra)
    }
}

/// Five GPUs: an A100 held whole, a T4 time-sliced between two pods, an A100 in MIG mode with one
/// of its two MIG devices held, a GPU that has fallen off the bus, and a free one without power readings.
fn five_gpus() -> Value {
    json!({"devices": [
        {"uuid": A100, "utilizationGpu": 87, "utilizationMemory": 41, "memoryUsedMiB": 40960,
         "powerMilliwatts": 275500, "temperatureC": 61, "smClockMHz": 1410},
        {"uuid": T4, "name": "Tesla T4", "utilizationGpu": 33, "utilizationMemory": 12,
         "memoryTotalMiB": 15360, "memoryUsedMiB": 5120, "smClockMHz": 1590},
        {"uuid": MIG_PARENT, "memoryUsedMiB": 10752, "migDevices": [
            {"uuid": MIG_FREE, "name": "NVIDIA A100-SXM4-80GB MIG 1g.10gb", "memoryTotalMiB": 9984, "memoryUsedMiB": 256},
            {"uuid": MIG_HELD, "name": "NVIDIA A100-SXM4-80GB MIG 3g.40gb", "memoryTotalMiB": 40192, "memoryUsedMiB": 10496}]},
        {"uuid": LOST, "fail": "gpuIsLost"},
        {"uuid": SPARE, "utilizationGpu": 0, "unsupported": ["power"]}
    ]})
}

fn pod(name: &str, container: &str, resource: &str, ids: &[&str]) -> Value {
    json!({"namespace": "ml", "name": name, "containers": [
        {"name": container, "devices": [{"resourceName": resource, "deviceIds": ids}]}]})
}

fn five_gpus_pods() -> Value {
    json!({"pods": [
        pod("resnet-0", "triton", "nvidia.com/gpu", &[A100]),
        pod("bert-0", "torchserve", "nvidia.com/gpu.shared", &[&format!("{T4}::1"), &format!("{T4}::3")]),
        pod("bert-1", "torchserve", "nvidia.com/gpu.shared", &[&format!("{T4}::2")]),
        pod("mig-0", "worker", "nvidia.com/mig-3g.40gb", &[MIG_HELD]),
        pod("unlucky-0", "main", "nvidia.com/gpu", &[LOST]),
        {"namespace": "ml", "name": "cpu-only", "containers": [{"name": "main", "devices": []}]}
    ]})
}

/// The labels dcgm-exporter gives a GPU series, in its order.
fn labels(gpu: u32, uuid: &str, model: &str, holder: Option<(&str, &str)>) -> String {
    let (pod, container, namespace) = holder.map_or(("", "", ""), |(pod, container)| (pod, container, "ml"));
    format!(
        r#"gpu="{gpu}",UUID="{uuid}",modelName="{model}",Hostname="gpu-node-1",container="{container}",namespace="{namespace}",pod="{pod}""#
    )
}

const A100_NAME: &str = "NVIDIA A100-SXM4-80GB";

#[test]
fn reports_every_gpu_with_the_pods_holding_it() {
    let node = Node::new();
    let socket = node.path("kubelet.sock");
    write_json(&node.path("pods.json"), &five_gpus_pods());
    let kubelet = start_kubelet(node.dir.path(), &socket, &node.path("pods.json"));
    let agent = node.start_agent(
        &five_gpus(),
        &socket,
        &["--interval", "200ms", "--pod-resources-interval", "5s"],
    );
    let metrics = wait_for(WAIT, "GPU series with pod labels", || {
        let metrics = agent.metrics();
        metrics.contains(r#"pod="resnet-0""#).then_some(metrics)
    });

    // Exclusive: one series, the pod's labels.
    let resnet = labels(0, A100, A100_NAME, Some(("resnet-0", "triton")));
    for (family, value) in [
        ("DCGM_FI_DEV_GPU_UTIL", 87.0),
        ("DCGM_FI_DEV_MEM_COPY_UTIL", 41.0),
        ("DCGM_FI_DEV_FB_USED", 40960.0),
        ("DCGM_FI_DEV_FB_FREE", 40960.0),
        ("DCGM_FI_DEV_POWER_USAGE", 275.5),
        ("DCGM_FI_DEV_GPU_TEMP", 61.0),
        ("DCGM_FI_DEV_SM_CLOCK", 1410.0),
    ] {
        assert_eq!(
            value_of(&metrics, &format!("{family}{{{resnet}}}")),
            Some(value),
            "{family}\n{metrics}"
        );
    }

    // Time-sliced: one series per sharing pod, however many replicas each holds, each the whole GPU's value.
    let t4_util: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with(r#"DCGM_FI_DEV_GPU_UTIL{gpu="1""#))
        .collect();
    assert_eq!(
        t4_util,
        [
            format!(
                "DCGM_FI_DEV_GPU_UTIL{{{}}} 33",
                labels(1, T4, "Tesla T4", Some(("bert-0", "torchserve")))
            ),
            format!(
                "DCGM_FI_DEV_GPU_UTIL{{{}}} 33",
                labels(1, T4, "Tesla T4", Some(("bert-1", "torchserve")))
            ),
        ],
        "{metrics}"
    );

    // MIG: no utilisation for the GPU; memory per MIG device, the held one with its pod.
    assert!(!metrics.contains(r#"DCGM_FI_DEV_GPU_UTIL{gpu="2""#), "{metrics}");
    let mig_held = format!(
        r#"DCGM_FI_DEV_FB_USED{{gpu="2",UUID="{MIG_PARENT}",modelName="{A100_NAME}",GPU_I_PROFILE="3g.40gb",MIG_UUID="{MIG_HELD}",Hostname="gpu-node-1",container="worker",namespace="ml",pod="mig-0"}}"#
    );
    assert_eq!(value_of(&metrics, &mig_held), Some(10496.0), "{metrics}");
    let mig_free = format!(
        r#"DCGM_FI_DEV_FB_FREE{{gpu="2",UUID="{MIG_PARENT}",modelName="{A100_NAME}",GPU_I_PROFILE="1g.10gb",MIG_UUID="{MIG_FREE}",Hostname="gpu-node-1",container="",namespace="",pod=""}}"#
    );
    assert_eq!(value_of(&metrics, &mig_free), Some(9728.0), "{metrics}");
    let parent = format!("DCGM_FI_DEV_FB_USED{{{}}}", labels(2, MIG_PARENT, A100_NAME, None));
    assert_eq!(value_of(&metrics, &parent), Some(10752.0), "{metrics}");

    // The lost GPU is skipped and counted; the others still report.
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("DCGM_") && l.contains(r#"{gpu="3""#)),
        "{metrics}"
    );
    assert!(!metrics.contains(LOST), "{metrics}");
    assert!(
        value_of(&metrics, r#"node_agent_device_read_errors_total{gpu="3"}"#).unwrap() >= 1.0,
        "{metrics}"
    );
    assert_eq!(value_of(&metrics, "node_agent_gpus"), Some(4.0), "{metrics}");
    assert_eq!(
        value_of(&metrics, "node_agent_unmatched_device_ids"),
        Some(1.0),
        "{metrics}"
    );

    // A free GPU: one series with empty pod labels; a reading it does not support is absent.
    let spare = format!("DCGM_FI_DEV_GPU_UTIL{{{}}}", labels(4, SPARE, A100_NAME, None));
    assert_eq!(value_of(&metrics, &spare), Some(0.0), "{metrics}");
    assert!(!metrics.contains(r#"DCGM_FI_DEV_POWER_USAGE{gpu="4""#), "{metrics}");

    let warnings = agent.logged("WARN", "skipping a GPU");
    assert_eq!(
        warnings.len(),
        1,
        "one warning for the lost GPU, not one per pass: {warnings:?}"
    );
    assert_eq!(warnings[0]["fields"]["gpu"], 3);

    // The samples endpoint: the same readings, per pod the GPUs behind its device IDs.
    let (status, body) = agent.get("/v1/samples");
    assert_eq!(status, 200, "{body}");
    let samples: NodeSamples = serde_json::from_str(&body).unwrap();
    assert_eq!(samples.node, "gpu-node-1");
    assert_eq!(samples.interval_seconds, 0.2);
    assert!(samples.pod_resources_at.is_some(), "{body}");
    let indices: Vec<u32> = samples.gpus.iter().map(|g| g.index).collect();
    assert_eq!(indices, [0, 1, 2, 4], "{body}");
    assert_eq!(samples.gpus[0].utilization_percent, Some(87));
    assert_eq!(samples.gpus[0].fb_used_mib, Some(40960));
    assert_eq!(samples.gpus[2].utilization_percent, None, "{body}");
    assert_eq!(samples.gpus[2].mig_devices[1].profile.as_deref(), Some("3g.40gb"));
    let bert = samples.pods.iter().find(|p| p.pod == "bert-0").unwrap();
    assert_eq!(bert.device_ids, [format!("{T4}::1"), format!("{T4}::3")]);
    assert_eq!(bert.gpus, [T4]);
    assert_eq!(bert.resource, "nvidia.com/gpu.shared");
    let mig = samples.pods.iter().find(|p| p.pod == "mig-0").unwrap();
    assert_eq!(
        (mig.gpus.as_slice(), mig.mig_devices.as_slice()),
        ([MIG_PARENT.to_string()].as_slice(), [MIG_HELD.to_string()].as_slice())
    );
    assert_eq!(samples.pod_gpu_utilization("ml", "bert-1"), Some(33.0));
    assert_eq!(samples.pod_gpu_utilization("ml", "resnet-0"), Some(87.0));
    assert_eq!(samples.pod_gpu_utilization("ml", "unlucky-0"), None);
    assert!(!samples.pods.iter().any(|p| p.pod == "cpu-only"), "{body}");

    // Scrapes read the cached answer: the kubelet is asked on the refresh interval, not per scrape.
    for _ in 0..30 {
        agent.metrics();
        agent.get("/v1/samples");
    }
    assert!(
        list_calls(&kubelet) <= 2,
        "{} List calls for 60 requests:\n{}",
        list_calls(&kubelet),
        kubelet.log()
    );

    let (status, body) = agent.get("/readyz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

#[test]
fn without_the_kubelet_socket_gpus_are_reported_without_pod_labels() {
    let node = Node::new();
    let socket = node.path("pod-resources/kubelet.sock");
    let agent = node.start_agent(
        &five_gpus(),
        &socket,
        &["--interval", "200ms", "--pod-resources-interval", "1s"],
    );
    let metrics = wait_for(WAIT, "a few failed PodResources refreshes", || {
        let metrics = agent.metrics();
        (value_of(&metrics, "node_agent_pod_resources_refresh_errors_total")? >= 2.0).then_some(metrics)
    });
    let a100 = format!("DCGM_FI_DEV_GPU_UTIL{{{}}}", labels(0, A100, A100_NAME, None));
    assert_eq!(value_of(&metrics, &a100), Some(87.0), "{metrics}");
    let t4 = format!("DCGM_FI_DEV_GPU_UTIL{{{}}}", labels(1, T4, "Tesla T4", None));
    assert_eq!(value_of(&metrics, &t4), Some(33.0), "{metrics}");
    assert!(
        metrics
            .lines()
            .filter(|l| l.starts_with("DCGM_"))
            .all(|l| l.contains(r#"pod=""}"#)),
        "{metrics}"
    );
    assert_eq!(
        value_of(&metrics, "node_agent_pod_resources_age_seconds"),
        Some(f64::INFINITY)
    );
    assert_eq!(agent.get("/readyz").0, 200, "the kubelet is not needed to be ready");
    let warnings = agent.logged("WARN", "kubelet PodResources API unavailable");
    assert_eq!(
        warnings.len(),
        1,
        "one clear line, not one per retry:\n{}",
        agent.process.log()
    );
    assert!(
        warnings[0]["fields"]["socket"]
            .as_str()
            .unwrap()
            .ends_with("kubelet.sock")
    );

    // The kubelet comes up: pod labels follow without a restart.
    write_json(&node.path("pods.json"), &five_gpus_pods());
    let _kubelet = start_kubelet(node.dir.path(), &socket, &node.path("pods.json"));
    let labelled = format!(
        "DCGM_FI_DEV_GPU_UTIL{{{}}}",
        labels(0, A100, A100_NAME, Some(("resnet-0", "triton")))
    );
    wait_for(WAIT, "pod labels once the kubelet answers", || {
        value_of(&agent.metrics(), &labelled)
    });
}

#[test]
fn without_nvml_the_agent_stays_up_and_not_ready() {
    let node = Node::new();
    let missing = node.path("no-driver/libnvidia-ml.so.1");
    write_json(&node.path("nvml.json"), &five_gpus());
    let mut agent = start_agent(
        node.dir.path(),
        &missing,
        &node.path("nvml.json"),
        &node.path("kubelet.sock"),
        &["--interval", "100ms"],
    );
    let metrics = wait_for(WAIT, "several NVML retries", || {
        let metrics = agent.metrics();
        (value_of(&metrics, "node_agent_nvml_init_errors_total")? >= 3.0).then_some(metrics)
    });
    assert!(!metrics.contains("DCGM_"), "{metrics}");
    assert_eq!(value_of(&metrics, "node_agent_nvml_up"), Some(0.0));
    assert_eq!(
        value_of(&metrics, "node_agent_last_sample_age_seconds"),
        Some(f64::INFINITY)
    );

    let (status, body) = agent.get("/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = agent.get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("NVML unavailable: ") && body.contains("no-driver/libnvidia-ml.so.1"),
        "{body}"
    );
    let (status, body) = agent.get("/v1/samples");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("NVML unavailable"), "{body}");

    let warnings = agent.logged("WARN", "NVML unavailable");
    assert_eq!(
        warnings.len(),
        1,
        "one clear line, not one per retry:\n{}",
        agent.process.log()
    );
    assert!(
        warnings[0]["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("No such file"),
        "{warnings:?}"
    );
    assert!(agent.process.is_running(), "the agent exited:\n{}", agent.process.log());
}

#[test]
fn nvml_that_fails_to_initialise_is_retried_until_it_works() {
    let node = Node::new();
    let mut broken = five_gpus();
    broken["initError"] = json!("driverNotLoaded");
    let agent = node.start_agent(&broken, &node.path("kubelet.sock"), &["--interval", "100ms"]);
    wait_for(WAIT, "a failed NVML initialisation", || {
        (value_of(&agent.metrics(), "node_agent_nvml_init_errors_total")? >= 2.0).then_some(())
    });
    let (status, body) = agent.get("/readyz");
    assert_eq!(
        (status, body.as_str()),
        (503, "NVML unavailable: NVIDIA driver is not loaded\n")
    );

    write_json(&node.path("nvml.json"), &five_gpus());
    wait_for(WAIT, "readiness once NVML initialises", || {
        (agent.get("/readyz").0 == 200).then_some(())
    });
    assert_eq!(value_of(&agent.metrics(), "node_agent_nvml_up"), Some(1.0));
    assert_eq!(
        agent.logged("INFO", "NVML initialised").len(),
        1,
        "{}",
        agent.process.log()
    );
}

#[test]
fn changes_show_up_in_the_next_sample_and_refresh() {
    let node = Node::new();
    let socket = node.path("kubelet.sock");
    write_json(&node.path("pods.json"), &json!({"pods": []}));
    let _kubelet = start_kubelet(node.dir.path(), &socket, &node.path("pods.json"));
    let mut gpus = json!({"devices": [{"uuid": A100, "utilizationGpu": 10}]});
    let agent = node.start_agent(
        &gpus,
        &socket,
        &["--interval", "200ms", "--pod-resources-interval", "300ms"],
    );
    let idle = format!("DCGM_FI_DEV_GPU_UTIL{{{}}}", labels(0, A100, A100_NAME, None));
    wait_for(WAIT, "the first reading", || {
        (value_of(&agent.metrics(), &idle)? == 10.0).then_some(())
    });

    // Load arrives: the next sampling pass (200 ms) shows it.
    gpus["devices"][0]["utilizationGpu"] = json!(90);
    write_json(&node.path("nvml.json"), &gpus);
    let started = std::time::Instant::now();
    wait_for(Duration::from_secs(5), "the new utilisation", || {
        (value_of(&agent.metrics(), &idle)? == 90.0).then_some(())
    });
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );

    // A pod is scheduled onto the GPU: the next refresh labels the series, and /v1/samples agrees.
    write_json(
        &node.path("pods.json"),
        &json!({"pods": [pod("llm-0", "vllm", "nvidia.com/gpu", &[A100])]}),
    );
    let held = format!(
        "DCGM_FI_DEV_GPU_UTIL{{{}}}",
        labels(0, A100, A100_NAME, Some(("llm-0", "vllm")))
    );
    wait_for(Duration::from_secs(5), "the pod's labels", || {
        value_of(&agent.metrics(), &held)
    });
    let samples: NodeSamples = serde_json::from_str(&agent.get("/v1/samples").1).unwrap();
    assert_eq!(samples.pod_gpu_utilization("ml", "llm-0"), Some(90.0));
}

/// A GPU allocated through a DRA claim is named by pool and device; only the node's ResourceSlice
/// says which GPU that is. Without access to the API server (no configuration here; no RBAC in a
/// cluster) the agent still serves the device plugin's GPUs with their pods, leaves the claimed
/// GPU without a pod, counts it unmatched, and says why once however often it retries.
#[test]
fn without_api_access_claimed_gpus_stay_unattributed_and_it_says_so_once() {
    let node = Node::new();
    let socket = node.path("kubelet.sock");
    write_json(
        &node.path("pods.json"),
        &json!({"pods": [
            pod("resnet-0", "triton", "nvidia.com/gpu", &[A100]),
            {"namespace": "ml", "name": "llm-0", "containers": [{"name": "triton", "dynamicResources": [
                {"claimName": "llm-0-gpu-x7k2p", "claimNamespace": "ml", "claimResources": [
                    {"driverName": "gpu.nvidia.com", "poolName": "gpu-node-1", "deviceName": "gpu-1"}]}]}]}
        ]}),
    );
    let _kubelet = start_kubelet(node.dir.path(), &socket, &node.path("pods.json"));
    write_json(
        &node.path("nvml.json"),
        &json!({"devices": [{"uuid": A100, "utilizationGpu": 87}, {"uuid": SPARE, "utilizationGpu": 12}]}),
    );
    let no_kubeconfig = node.path("no-such-kubeconfig");
    let agent = start_agent_with_env(
        node.dir.path(),
        &node.nvml_lib,
        &node.path("nvml.json"),
        &socket,
        &[
            "--interval",
            "200ms",
            "--pod-resources-interval",
            "200ms",
            "--resource-slices-interval",
            "200ms",
        ],
        &[("KUBECONFIG", &no_kubeconfig)],
    );
    let metrics = wait_for(WAIT, "three failed ResourceSlice reads", || {
        let metrics = agent.metrics();
        (value_of(&metrics, "node_agent_resource_slice_read_errors_total")? >= 3.0).then_some(metrics)
    });
    assert_eq!(
        value_of(
            &metrics,
            &format!(
                "DCGM_FI_DEV_GPU_UTIL{{{}}}",
                labels(0, A100, A100_NAME, Some(("resnet-0", "triton")))
            )
        ),
        Some(87.0),
        "{metrics}"
    );
    assert_eq!(
        value_of(
            &metrics,
            &format!("DCGM_FI_DEV_GPU_UTIL{{{}}}", labels(1, SPARE, A100_NAME, None))
        ),
        Some(12.0),
        "{metrics}"
    );
    assert!(!metrics.contains("llm-0") && !metrics.contains("dra_"), "{metrics}");
    assert_eq!(
        value_of(&metrics, "node_agent_unmatched_device_ids"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(value_of(&metrics, "node_agent_resource_slice_reads_total"), Some(0.0));

    let warnings = agent.logged("WARN", "cannot read this node's ResourceSlices");
    assert_eq!(warnings.len(), 1, "{}", agent.process.log());
    let error = warnings[0]["fields"]["error"].as_str().unwrap();
    assert!(error.contains("no API server configuration"), "{error}");
}
