//! GPU autoscaling through the real aggregation layer, on the rig of `gpu_rig.rs`: the operator
//! serves the node agents' samples (or a runtime's queue time) as custom metrics through
//! kube-apiserver, and the real HPA controller scales the Deployment.
//!
//! The APIService `v1beta2.custom.metrics.k8s.io` is cluster-wide, so the tests that need it take
//! turns; `bench_autoscaling_reaction` (ignored, `make bench-autoscaling`) reuses the rig.

use std::time::{Duration, Instant};

use kube::ResourceExt;
use serde_json::{Value, json};

use crate::{
    gpu_rig::{API_SERVICE_TURN, MAX_REPLICAS, MODEL, Rig, SCALE_WAIT, model_yaml},
    support::{ReadyWatch, cluster_dir, eventually, warnings},
};

#[tokio::test]
async fn hpa_scales_on_gpu_utilization_served_through_the_aggregation_layer() {
    let _turn = API_SERVICE_TURN.lock().await;
    let rig = Rig::start("e2e-autoscaling", 20).await;
    rig.ns
        .apply_model(&model_yaml())
        .await
        .expect("the ModelDeployment is accepted");

    // The API server's discovery lists the operator's resource.
    let discovery = rig.get_raw("/apis/custom.metrics.k8s.io/v1beta2").await.unwrap();
    assert_eq!(discovery["resources"][0]["name"], "pods/gpu_utilization", "{discovery}");

    // One replica at 20 %: the list and the single-pod form serve it, with time and window.
    rig.wait_for_served_pods(1, "20").await;
    let pod = rig.running_pods().await.remove(0).name_any();
    let single = rig.get_raw(&rig.pods_metric_path(&pod)).await.unwrap();
    let item = &single["items"][0];
    assert_eq!(item["describedObject"]["name"], pod.as_str(), "{single}");
    assert_eq!(item["metric"]["name"], "gpu_utilization", "{single}");
    assert_eq!(item["value"], "20", "{single}");
    assert_eq!(item["windowSeconds"], 1, "{single}");
    assert!(item["timestamp"].as_str().unwrap().ends_with('Z'), "{single}");
    let unknown = rig
        .get_raw(&rig.pods_metric_path(&pod).replace("gpu_utilization", "gpu_temperature"))
        .await;
    assert!(
        matches!(unknown, Err(kube::Error::Api(ref s)) if s.code == 404),
        "{unknown:?}"
    );

    // The real HPA controller reads the same value.
    eventually(SCALE_WAIT, "the HPA reads gpu_utilization 20", || async {
        (rig.hpa_current_average().await.as_deref() == Some("20")).then_some(())
    })
    .await;
    assert_eq!(rig.deployment_replicas().await, Some(1));

    // Load above the 50 % target: 90 % → ceil(1 × 90/50) = 2 (the maximum). The model keeps
    // serving on its first replica while the second starts: Ready never turns False.
    let watch = ReadyWatch::start(rig.ns.api::<model_operator::api::ModelDeployment>(), MODEL);
    rig.set_utilization(90);
    eventually(SCALE_WAIT, "the HPA scales the Deployment out to 2", || async {
        (rig.deployment_replicas().await == Some(MAX_REPLICAS)).then_some(())
    })
    .await;
    rig.wait_for_served_pods(2, "90").await;
    let lapses = watch.stop();
    assert!(lapses.is_empty(), "Ready was not True during the scale-up: {lapses:#?}");
    let warnings = warnings(&rig.ns).await;
    assert!(warnings.is_empty(), "no Warning Event for a scale-up: {warnings:#?}");

    // Load well under: 10 % → ceil(2 × 10/50) = 1, at once with no stabilisation window.
    rig.set_utilization(10);
    eventually(SCALE_WAIT, "the HPA scales the Deployment back in to 1", || async {
        (rig.deployment_replicas().await == Some(1)).then_some(())
    })
    .await;
    rig.wait_for_served_pods(1, "10").await;

    direct_requests_are_refused(&rig).await;
    rig.teardown().await;
}

const QUEUED_MODEL: &str = "queued";
const QUEUE_METRIC: &str = "inference_queue_duration_us";
/// Microseconds: a request that waits more than 50 ms on average calls for another replica.
const QUEUE_TARGET_US: u32 = 50_000;

/// A CPU Triton model scaled on its queue time, between 1 and 2 replicas.
fn queued_model_yaml() -> String {
    format!(
        "apiVersion: mlops.sathvik.dev/v1
kind: ModelDeployment
metadata:
  name: {QUEUED_MODEL}
spec:
  modelURI: s3://example-models/triton/queued/
  runtime: triton
  autoscale: true
  autoscaling:
    minReplicas: 1
    maxReplicas: 2
    metric: inference-queue
    target: {QUEUE_TARGET_US}
    scaleDownStabilizationSeconds: 0
"
    )
}

/// One instance that takes 100 ms a request: requests sent at once wait for each other.
const QUEUED_CONFIG: &str = r#"
backend: "python"
max_batch_size: 0
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 4 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
"#;
const QUEUED_MODEL_PY: &str = r#"
import time
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            time.sleep(0.1)
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT0", data)]))
        return responses
"#;

/// `clients` loops of inference requests against Triton until dropped.
struct Load {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(triton_http: &str, clients: usize) -> Self {
        let url = format!("{triton_http}/v2/models/{QUEUED_MODEL}/infer");
        let body =
            json!({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [4], "data": [1, 2, 3, 4]}]}).to_string();
        let http = reqwest::Client::new();
        let tasks = (0..clients)
            .map(|_| {
                let (http, url, body) = (http.clone(), url.clone(), body.clone());
                tokio::spawn(async move {
                    loop {
                        let sent = http
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(body.clone())
                            .send()
                            .await;
                        if sent.is_err() {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                })
            })
            .collect();
        Self { tasks }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The pods' `inference_queue_duration_us` values in microseconds.
async fn queue_values(rig: &Rig) -> Vec<f64> {
    rig.served_values()
        .await
        .iter()
        .map(|(_, v)| v.parse::<f64>().unwrap_or(f64::NAN))
        .collect()
}

/// `autoscaling.metric: inference-queue` end to end: the operator reads the real Triton's
/// queue counters (every pod of the model is pointed at it with --runtime-metrics-endpoint,
/// since the cluster's pod IPs are fake), serves their per-request mean through the aggregation
/// layer, and the real HPA scales out while eight clients keep Triton's one instance busy and
/// back in once they stop.
#[tokio::test]
async fn hpa_scales_on_the_runtime_queue_time_of_a_real_triton() {
    let _turn = API_SERVICE_TURN.lock().await;
    let servers = crate::servers::TestServers::installed();
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("models").join(QUEUED_MODEL);
    std::fs::create_dir_all(model_dir.join("1")).unwrap();
    std::fs::write(model_dir.join("config.pbtxt"), QUEUED_CONFIG).unwrap();
    std::fs::write(model_dir.join("1").join("model.py"), QUEUED_MODEL_PY).unwrap();
    let triton = crate::servers::Triton::start(&servers, &dir.path().join("models"), dir.path(), &[]);
    triton.wait_until_ready(Duration::from_secs(90)).await;

    let metrics = triton.metrics.clone();
    let rig = Rig::start_with("e2e-queue", 0, QUEUED_MODEL, QUEUE_METRIC, |ns| {
        vec![format!("--runtime-metrics-endpoint={ns}/{QUEUED_MODEL}={metrics}")]
    })
    .await;
    rig.ns
        .apply_model(&queued_model_yaml())
        .await
        .expect("the ModelDeployment is accepted");
    let discovery = rig.get_raw("/apis/custom.metrics.k8s.io/v1beta2").await.unwrap();
    assert_eq!(
        discovery["resources"][1]["name"], "pods/inference_queue_duration_us",
        "{discovery}"
    );

    // Idle: the first read of a pod is a baseline, later ones serve 0 µs.
    rig.wait_for_served_pods(1, "0").await;
    eventually(SCALE_WAIT, "the HPA reads inference_queue_duration_us 0", || async {
        (rig.hpa_current_average().await.as_deref() == Some("0")).then_some(())
    })
    .await;

    // Eight clients on one 100 ms instance: each request waits about 700 ms, far above 50 ms.
    let load = Load::start(&triton.http, 8);
    eventually(SCALE_WAIT, "the HPA scales the queued model out to 2", || async {
        (rig.deployment_replicas().await == Some(2)).then_some(())
    })
    .await;
    let busy = eventually(
        SCALE_WAIT,
        "both pods are served a queue time over the target",
        || async {
            let values = queue_values(&rig).await;
            (values.len() == 2 && values.iter().all(|v| *v > f64::from(QUEUE_TARGET_US))).then_some(values)
        },
    )
    .await;
    eprintln!("queue time under load: {busy:?} µs");

    // The load stops: once the window holds no requests the mean is 0 and the HPA scales in.
    drop(load);
    eventually(SCALE_WAIT, "the HPA scales the queued model back in to 1", || async {
        (rig.deployment_replicas().await == Some(1)).then_some(())
    })
    .await;
    rig.wait_for_served_pods(1, "0").await;
    rig.teardown().await;
}

/// Only the API server's front proxy is served: no certificate, a forged user header or a
/// certificate from another CA (the cluster admin's) fail the handshake; the front proxy's own
/// certificate with a user header works for users RBAC allows.
async fn direct_requests_are_refused(rig: &Rig) {
    let url = format!(
        "https://{}{}",
        rig.operator.custom_metrics_addr,
        rig.pods_metric_path("%2A")
    );
    let pki = cluster_dir().join("pki");
    let client_with = |identity: Option<(&str, &str)>| {
        let mut builder = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(10));
        if let Some((cert, key)) = identity {
            let mut pem = std::fs::read(pki.join(cert)).unwrap();
            pem.extend(std::fs::read(pki.join(key)).unwrap());
            builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        builder.build().unwrap()
    };

    // Without the front proxy's certificate there is no TLS session at all, so no HTTP request,
    // forged headers or not.
    let anonymous = client_with(None).get(&url).send().await;
    assert!(anonymous.is_err(), "no certificate fails the handshake: {anonymous:?}");
    let forged = client_with(None)
        .get(&url)
        .header("X-Remote-User", "system:admin")
        .header("X-Remote-Group", "system:masters")
        .send()
        .await;
    assert!(
        forged.is_err(),
        "a user header without the proxy's certificate: {forged:?}"
    );

    let other_ca = client_with(Some(("admin.crt", "admin.key"))).get(&url).send().await;
    assert!(
        other_ca.is_err(),
        "a certificate the requestheader CA did not sign fails the handshake: {other_ca:?}"
    );

    let proxy = client_with(Some(("front-proxy-client.crt", "front-proxy-client.key")));
    let without_user = proxy.get(&url).send().await.unwrap();
    assert_eq!(
        without_user.status(),
        401,
        "the proxy's certificate without a user header"
    );
    // Authenticated by the proxy, then authorized by a SubjectAccessReview: a user without
    // RBAC is forbidden, a member of system:masters may read.
    let unprivileged = proxy
        .get(&url)
        .header("X-Remote-User", "e2e-nobody")
        .send()
        .await
        .unwrap();
    assert_eq!(unprivileged.status(), 403);
    let as_proxy = proxy
        .get(&url)
        .header("X-Remote-User", "e2e-admin")
        .header("X-Remote-Group", "system:masters")
        .send()
        .await
        .unwrap();
    assert_eq!(as_proxy.status(), 200);
    let list: Value = serde_json::from_str(&as_proxy.text().await.unwrap()).unwrap();
    assert_eq!(list["kind"], "MetricValueList", "{list}");
}

/// `make bench-autoscaling`: seconds from a utilisation step on the fake GPUs to (a) the custom
/// metrics API serving the new value through kube-apiserver and (b) the HPA's new desired
/// replica count, with whatever HPA sync period the cluster runs (the Makefile target sets the
/// controller manager's default, 15 s). Steps start at phases spread over one sync period
/// (`BENCH_HPA_SYNC_S`), since a step right after a sync waits the whole period.
#[tokio::test]
#[ignore = "benchmark: make bench-autoscaling"]
async fn bench_autoscaling_reaction() {
    let steps: u32 = std::env::var("BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let sync_period = Duration::from_secs_f64(
        std::env::var("BENCH_HPA_SYNC_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(15.0),
    );
    let _turn = API_SERVICE_TURN.lock().await;
    let rig = Rig::start("bench-autoscaling", 20).await;
    rig.ns
        .apply_model(&model_yaml())
        .await
        .expect("the ModelDeployment is accepted");
    rig.wait_for_served_pods(1, "20").await;
    eventually(SCALE_WAIT, "the HPA reads the metric", || async {
        rig.hpa_current_average().await.is_some().then_some(())
    })
    .await;

    let desired = || async { rig.hpa().await.and_then(|h| h.status).map(|s| s.desired_replicas) };
    let (mut served, mut decided) = (Vec::new(), Vec::new());
    for step in 0..steps {
        // Alternate 1 → 2 replicas (90 %) and back to 1 (10 %), each from a settled HPA, whose
        // last sync was just now: the offset sets the step's phase in the sync period.
        let (percent, want) = if step % 2 == 0 { (90, MAX_REPLICAS) } else { (10, 1) };
        let offset = sync_period * step / steps;
        tokio::time::sleep(offset).await;
        let before = desired().await;
        let started = Instant::now();
        rig.set_utilization(percent);
        let value = percent.to_string();
        eventually(SCALE_WAIT, &format!("step {step}: the API serves {value}"), || async {
            let values = rig.served_values().await;
            (!values.is_empty() && values.iter().all(|(_, v)| *v == value)).then_some(())
        })
        .await;
        served.push(started.elapsed().as_secs_f64());
        eventually(
            SCALE_WAIT,
            &format!("step {step}: desired replicas change from {before:?}"),
            || async {
                let now = desired().await;
                (now.is_some() && now != before).then_some(())
            },
        )
        .await;
        decided.push(started.elapsed().as_secs_f64());
        println!(
            "step {step} (phase +{:.1} s): utilisation → {percent} %: served after {:.2} s, HPA desired {before:?} → {:?} after {:.2} s",
            offset.as_secs_f64(),
            served[served.len() - 1],
            desired().await,
            decided[decided.len() - 1]
        );
        rig.wait_for_served_pods(want as usize, &value).await;
        eventually(SCALE_WAIT, "the HPA settles", || async {
            (desired().await == Some(want)).then_some(())
        })
        .await;
    }
    for (what, seconds) in [
        ("custom metrics API serves it", &mut served),
        ("HPA desired replicas", &mut decided),
    ] {
        seconds.sort_by(f64::total_cmp);
        let mean = seconds.iter().sum::<f64>() / seconds.len() as f64;
        println!(
            "utilisation step → {what}, {steps} steps: min {:.2} s, median {:.2} s, mean {mean:.2} s, max {:.2} s",
            seconds[0],
            seconds[seconds.len() / 2],
            seconds[seconds.len() - 1]
        );
    }
    rig.teardown().await;
}
