//! Peers that answer without end: a model whose runtime image answers TorchServe's management
//! API, its metrics endpoint and the node agents' port with bodies that never stop. The
//! operator reads a bounded prefix of each, reports why the model is not Ready, serves the
//! custom metrics API without those pods, and its memory stays where it was.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use model_operator::api::{ModelDeployment, conditions, conditions::reasons};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    task::JoinSet,
};

use crate::support::{Operator, TestNamespace, cluster, eventually, front_proxy_client, rss_kib};

const MODEL: &str = "hostile";
const REPLICAS: usize = 3;
const GPU_NODES: [&str; 4] = ["gpu-a100-0", "gpu-a100-1", "gpu-t4-0", "gpu-mig-0"];
/// Rounds of custom-metrics requests, each this many at once, for each of the two metrics.
const ROUNDS: usize = 30;
const REQUESTS_AT_ONCE: usize = 8;
/// The bound on the operator's growth while it reads from endless peers.
const RSS_GROWTH_LIMIT_KIB: u64 = 50 * 1024;

/// Answers every request on every connection with `200 OK` and a chunked body that does not
/// end (each connection stops by itself after 4 GiB; the operator gives up far sooner).
struct EndlessServer {
    address: String,
    sent_bytes: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl EndlessServer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let sent_bytes = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let (sent, accepted) = (sent_bytes.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            // Dropped with the accept task: aborting it stops every connection too.
            let mut streams = JoinSet::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                let sent = sent.clone();
                streams.spawn(async move {
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buffer[..n]),
                        }
                    }
                    let response_head =
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
                    if stream.write_all(response_head.as_bytes()).await.is_err() {
                        return;
                    }
                    // JSON-looking and Prometheus-looking at once: an array that never closes.
                    let payload = "[1,".repeat(64 * 1024 / 3);
                    let chunk = format!("{:x}\r\n{payload}\r\n", payload.len());
                    for _ in 0..(4u64 << 30) / payload.len() as u64 {
                        if stream.write_all(chunk.as_bytes()).await.is_err() {
                            return;
                        }
                        sent.fetch_add(payload.len() as u64, Ordering::Relaxed);
                    }
                });
            }
        });
        Self {
            address,
            sent_bytes,
            connections,
            accept,
        }
    }
}

impl Drop for EndlessServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Three TorchServe replicas on GPUs, so that each request for their metrics reads three
/// runtimes and up to three node agents.
fn model_yaml() -> String {
    format!(
        "apiVersion: mlops.sathvik.dev/v1
kind: ModelDeployment
metadata:
  name: {MODEL}
spec:
  modelURI: s3://example-models/torchserve/hostile.mar
  runtime: torchserve
  replicas: {REPLICAS}
  gpu:
    count: 1
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_answers_are_cut_short_and_memory_stays_flat() {
    let endless = EndlessServer::start().await;
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "e2e-hostile").await;
    let agents = GPU_NODES
        .iter()
        .map(|node| format!("{node}={}", endless.address))
        .collect::<Vec<_>>()
        .join(",");
    let probe = format!("{}/{MODEL}={}", ns.name, endless.address);
    let operator = Operator::start_with(
        &ns.name,
        "hostile",
        &[
            "--probe-endpoint",
            &probe,
            "--runtime-metrics-endpoint",
            &probe,
            "--agent-endpoints",
            &agents,
            // Long enough that only the byte limits can stop a read.
            "--agent-timeout",
            "10s",
            "--probe-timeout",
            "10s",
        ],
    );
    ns.apply_model(&model_yaml())
        .await
        .expect("the ModelDeployment is accepted");

    // The probe reads at most 256 KiB of TorchServe's endless answer and says so.
    let message = eventually(
        Duration::from_secs(90),
        "ModelReady says the answer was too long",
        || async {
            let model = ns.api::<ModelDeployment>().get_opt(MODEL).await.ok()??;
            let condition = model
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == conditions::MODEL_READY)?;
            (condition.status == "False" && condition.reason == reasons::PROBE_FAILED).then_some(condition.message)
        },
    )
    .await;
    assert!(message.contains("longer than the 262144 bytes"), "{message}");
    eventually(Duration::from_secs(90), "every replica is running", || async {
        let pods = ns
            .api::<Pod>()
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/name={MODEL}")))
            .await
            .ok()?;
        let running = pods
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        (running == REPLICAS).then_some(())
    })
    .await;

    let http = front_proxy_client(Duration::from_secs(30));
    let url = |metric: &str| {
        format!(
            "https://{}/apis/custom.metrics.k8s.io/v1beta2/namespaces/{}/pods/%2A/{metric}?labelSelector=app.kubernetes.io%2Fname%3D{MODEL}",
            operator.custom_metrics_addr, ns.name
        )
    };
    let urls = [url("inference_queue_duration_us"), url("gpu_utilization")];
    let request_round = || async {
        let requests = urls.iter().flat_map(|url| {
            let http = &http;
            (0..REQUESTS_AT_ONCE).map(move |_| {
                http.get(url)
                    .header("X-Remote-User", "e2e-admin")
                    .header("X-Remote-Group", "system:masters")
                    .send()
            })
        });
        for answer in futures::future::join_all(requests).await {
            let answer = answer.expect("the custom metrics API answers despite the endless peers");
            assert_eq!(answer.status(), 200);
            let list: Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
            assert_eq!(
                list["items"],
                Value::Array(Vec::new()),
                "pods whose peers never finish answering are left out: {list}"
            );
        }
    };

    // A few rounds first, so the baseline includes the allocator's pools and the connections.
    for _ in 0..3 {
        request_round().await;
    }
    let pid = operator.pid();
    let baseline = rss_kib(pid);
    let sent_before = endless.sent_bytes.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut peak = baseline;
    for _ in 0..ROUNDS {
        request_round().await;
        peak = peak.max(rss_kib(pid));
    }
    let elapsed = started.elapsed();
    let after = rss_kib(pid);
    let streamed = endless.sent_bytes.load(Ordering::Relaxed) - sent_before;
    eprintln!(
        "endless peers: {} requests in {:.1} s, {} MiB written to the operator's {} connections; \
         operator RSS {} MiB before, {} MiB at peak, {} MiB after (+{} MiB at peak)",
        ROUNDS * REQUESTS_AT_ONCE * urls.len(),
        elapsed.as_secs_f64(),
        streamed >> 20,
        endless.connections.load(Ordering::Relaxed),
        baseline / 1024,
        peak / 1024,
        after / 1024,
        peak.saturating_sub(baseline) / 1024,
    );
    assert!(
        peak.saturating_sub(baseline) < RSS_GROWTH_LIMIT_KIB,
        "the operator grew by {} KiB reading from endless peers",
        peak - baseline
    );
    // The test can fail: the peers offered far more than the limit allows the operator to keep.
    assert!(
        streamed > 20 * RSS_GROWTH_LIMIT_KIB * 1024 / 10,
        "the endless server streamed only {streamed} bytes; the test did not load the operator"
    );
    let log = operator.log_text();
    for cut in ["longer than the 4194304 bytes", "longer than the 1048576 bytes"] {
        assert!(
            log.contains(cut),
            "the operator's log names the limit it cut at ({cut})"
        );
    }
    ns.delete().await;
}
