//! The activator on loopback, with the real FastAPI runtime (`make bench-activator`):
//!
//! 1. cold start: a model with no replica gets `POST /predict`; the time to its answer, split
//!    into the activator asking for a replica, the runtime starting and loading the model until
//!    the operator's probe says it answers (polled every 200 ms here), and the forward;
//! 2. added latency on a warm model: the same request sent straight to the runtime and through
//!    the activator, interleaved on one keep-alive connection each; the difference of the
//!    medians (target: under 1 ms);
//! 3. memory: the process's resident memory per request held while a model starts.
//!
//! On the cluster a cold start also waits for the scale-up to reach the Deployment and for the
//! scheduler and kubelet to start the pod; those parts are not here.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use model_operator::{
    activator::{Limits, Upstream, upstream::Protocol},
    api::Runtime,
    model_readiness::ProbeTarget,
};
use support::{
    ServerProcess, TestServers, free_port, inference_app,
    one_model::{OneModel, StartReplica, http_client, predict_affine, publish_once_ready, start_activator},
    write_affine_model,
};
use tokio::io::AsyncWriteExt;

const COLD_ROUNDS: usize = 3;
const WARM_REQUESTS: usize = 2000;
const HELD_REQUESTS: usize = 1000;
/// The goal for the activator's added latency on a warm model, at the median.
const ADDED_LATENCY_TARGET: Duration = Duration::from_millis(1);

/// When each step of one cold start ended.
#[derive(Debug, Default, Clone, Copy)]
struct Timeline {
    woken: Option<Instant>,
    spawned: Option<Instant>,
    ready: Option<Instant>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// One checked prediction, timed.
async fn predict(client: &reqwest::Client, url: &str, x: u32) -> Duration {
    let started = Instant::now();
    predict_affine(client, url, x).await;
    started.elapsed()
}

/// One cold start: the model at zero, one request, its answer.
async fn cold_start(dir: &std::path::Path, round: usize) -> (Duration, Timeline) {
    let model_path = dir.join("model.pt");
    let port = free_port();
    let app: Arc<Mutex<Option<ServerProcess>>> = Arc::default();
    let timeline: Arc<Mutex<Timeline>> = Arc::default();
    let start: StartReplica = {
        let (app, timeline, dir, model_path) = (app.clone(), timeline.clone(), dir.to_path_buf(), model_path.clone());
        Box::new(move |ready| {
            timeline.lock().unwrap().woken = Some(Instant::now());
            *app.lock().unwrap() = Some(inference_app(
                &TestServers::installed(),
                &dir,
                "affine",
                &model_path,
                port,
            ));
            timeline.lock().unwrap().spawned = Some(Instant::now());
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let target = ProbeTarget {
                runtime: Runtime::FastapiPytorch,
                endpoint: addr.to_string(),
                model_name: "affine".into(),
                version: None,
            };
            tokio::spawn(async move {
                publish_once_ready(target, Upstream { http: addr, grpc: None }, ready).await;
                timeline.lock().unwrap().ready = Some(Instant::now());
            });
        })
    };
    let model = OneModel::new("affine", Duration::from_secs(120), Some(start));
    let (_activator, addr) = start_activator(model.clone(), Limits::default(), Protocol::Http).await;
    let service = "affine-service.ml";
    let client = http_client(service, addr, Duration::from_secs(120));
    let asked = Instant::now();
    predict(
        &client,
        &format!("http://{service}:{}/predict", addr.port()),
        round as u32,
    )
    .await;
    let answered = asked.elapsed();
    let timeline = *timeline.lock().unwrap();
    drop(app.lock().unwrap().take());
    (answered, timeline)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let servers = TestServers::installed();
    let dir = tempfile::tempdir().unwrap();
    write_affine_model(&servers.path("PYTHON"), &dir.path().join("model.pt"));

    // 1. Cold starts.
    for round in 0..COLD_ROUNDS {
        let asked = Instant::now();
        let (answered, t) = cold_start(dir.path(), round).await;
        let (woken, spawned, ready) = (t.woken.unwrap(), t.spawned.unwrap(), t.ready.unwrap());
        println!(
            "cold start {round}: answered after {answered:.2?}: replica asked for {:.1?}, process started {:.1?}, \
             model loaded and probed ready {:.2?}, forwarded and answered {:.1?}",
            woken.saturating_duration_since(asked),
            spawned.saturating_duration_since(woken),
            ready.saturating_duration_since(spawned),
            (asked + answered).saturating_duration_since(ready),
        );
    }

    // 2. Added latency on a warm model.
    let port = free_port();
    let _app = inference_app(&servers, dir.path(), "affine", &dir.path().join("model.pt"), port);
    let runtime: SocketAddr = ([127, 0, 0, 1], port).into();
    let model = OneModel::new("warm", Duration::from_secs(120), None);
    let (_activator, addr) = start_activator(model.clone(), Limits::default(), Protocol::Http).await;
    publish_once_ready(
        ProbeTarget {
            runtime: Runtime::FastapiPytorch,
            endpoint: runtime.to_string(),
            model_name: "affine".into(),
            version: None,
        },
        Upstream {
            http: runtime,
            grpc: None,
        },
        model.ready.clone(),
    )
    .await;
    let direct_client = reqwest::Client::new();
    let direct_url = format!("http://{runtime}/predict");
    let service = "warm-service.ml";
    let via_client = http_client(service, addr, Duration::from_secs(120));
    let via_url = format!("http://{service}:{}/predict", addr.port());
    // Connections opened and the runtime's first-request costs paid before the clock runs.
    for i in 0..50 {
        predict(&direct_client, &direct_url, i).await;
        predict(&via_client, &via_url, i).await;
    }
    let (mut direct, mut via) = (Vec::new(), Vec::new());
    for i in 0..WARM_REQUESTS as u32 {
        direct.push(predict(&direct_client, &direct_url, i).await);
        via.push(predict(&via_client, &via_url, i).await);
    }
    direct.sort();
    via.sort();
    let added = percentile(&via, 0.5).saturating_sub(percentile(&direct, 0.5));
    for (what, sorted) in [("straight to the runtime", &direct), ("through the activator", &via)] {
        println!(
            "warm POST /predict {what}, {WARM_REQUESTS} requests: median {:.2?}, p90 {:.2?}, p99 {:.2?}",
            percentile(sorted, 0.5),
            percentile(sorted, 0.9),
            percentile(sorted, 0.99)
        );
    }
    println!(
        "activator's added latency at the median: {added:.1?} (target under {ADDED_LATENCY_TARGET:?}): {}",
        if added < ADDED_LATENCY_TARGET { "met" } else { "MISSED" }
    );

    // 3. Memory per held request: a model that never starts, and raw clients that cost little.
    let stuck = OneModel::new("stuck", Duration::from_secs(300), None);
    let limits = Limits {
        queue_per_model: HELD_REQUESTS,
        ..Limits::default()
    };
    let (activator, addr) = start_activator(stuck.clone(), limits, Protocol::Http).await;
    let before = resident_kib();
    let mut clients = Vec::new();
    for _ in 0..HELD_REQUESTS {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"POST /predict HTTP/1.1\r\nHost: stuck-service.ml\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
            .await
            .unwrap();
        clients.push(stream);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while activator.held(&stuck.key) < HELD_REQUESTS {
        assert!(Instant::now() < deadline, "{} held", activator.held(&stuck.key));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let holding = resident_kib();
    println!(
        "{HELD_REQUESTS} requests held: resident memory {before} KiB before, {holding} KiB holding, {:.1} KiB a request",
        holding.saturating_sub(before) as f64 / HELD_REQUESTS as f64
    );
    drop(clients);

    if added >= ADDED_LATENCY_TARGET {
        eprintln!("the activator's added latency at the median missed its target");
        std::process::exit(1);
    }
}
