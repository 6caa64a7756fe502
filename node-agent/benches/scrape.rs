//! `make bench`: the release agent binary on a node of 8 GPUs and 50 GPU pods (the fake NVML and
//! the fake kubelet), measured from /proc: resident memory (VmRSS, and VmHWM, its peak) and CPU
//! time per scrape of `/metrics` and `/v1/samples`, net of the sampler's own CPU while idle.
//! Exits non-zero when a target is missed: under 15 MiB resident, under 1 ms CPU per scrape.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{HttpClient, doubles, start_agent, start_kubelet, wait_for, write_json};

const GPUS: usize = 8;
const PODS: usize = 50;
const SCRAPES: u32 = 2000;
const RSS_TARGET_MIB: f64 = 15.0;
const CPU_TARGET_MS: f64 = 1.0;

fn gpu_uuid(index: usize) -> String {
    format!("GPU-{index:08x}-5c3d-4e1f-9a7b-0c1d2e3f4a5b")
}

/// Eight A100s, each busy to a different degree.
fn gpus() -> Value {
    let devices: Vec<Value> = (0..GPUS)
        .map(|i| {
            json!({"uuid": gpu_uuid(i), "utilizationGpu": 10 * i, "utilizationMemory": 5 * i,
                   "memoryUsedMiB": 4096 * i, "powerMilliwatts": 90_000 + 20_000 * i})
        })
        .collect();
    json!({ "devices": devices })
}

/// Four pods own a GPU each; the other 46 share the other four GPUs as time-sliced replicas.
fn pods() -> Value {
    let pods: Vec<Value> = (0..PODS)
        .map(|p| {
            let (resource, id) = if p < 4 {
                ("nvidia.com/gpu", gpu_uuid(p))
            } else {
                ("nvidia.com/gpu.shared", format!("{}::{}", gpu_uuid(4 + p % 4), p / 4))
            };
            json!({"namespace": "inference", "name": format!("model-{p:02}-7d9f8c6b5-x2k4q"), "containers": [
                {"name": "server", "devices": [{"resourceName": resource, "deviceIds": [id]}]}]})
        })
        .collect();
    json!({ "pods": pods })
}

/// CPU time of every thread of `pid`, in nanoseconds (schedstat; clock ticks where it is absent).
fn cpu_ns(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the agent's /proc entry");
    let schedstat: Option<u64> = tasks
        .map(|task| {
            let path = task.ok()?.path().join("schedstat");
            std::fs::read_to_string(path)
                .ok()?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    if let Some(ns) = schedstat.filter(|&ns| ns > 0) {
        return ns;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks * 10_000_000
}

/// A `/proc/PID/status` field in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    let kib: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024.0
}

struct Scrapes {
    per_scrape_ms: f64,
    raw_ms: f64,
    wall_us: f64,
    bytes: usize,
}

/// `SCRAPES` requests on one keep-alive connection, net of the idle CPU rate over the same time.
fn measure(pid: u32, client: &mut HttpClient, path: &str, idle_ns_per_s: f64) -> Scrapes {
    for _ in 0..200 {
        client.get(path);
    }
    let cpu_before = cpu_ns(pid);
    let started = Instant::now();
    let mut bytes = 0;
    for _ in 0..SCRAPES {
        let (status, body) = client.get(path);
        assert_eq!(status, 200, "{body}");
        bytes = body.len();
    }
    let wall = started.elapsed();
    let cpu = (cpu_ns(pid) - cpu_before) as f64;
    let net = (cpu - idle_ns_per_s * wall.as_secs_f64()).max(0.0);
    Scrapes {
        per_scrape_ms: net / f64::from(SCRAPES) / 1e6,
        raw_ms: cpu / f64::from(SCRAPES) / 1e6,
        wall_us: wall.as_secs_f64() * 1e6 / f64::from(SCRAPES),
        bytes,
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let nvml_lib = dir.path().join("libnvidia-ml.so.1");
    std::fs::copy(&doubles().nvml_lib, &nvml_lib).unwrap();
    let socket = dir.path().join("kubelet.sock");
    write_json(&dir.path().join("pods.json"), &pods());
    write_json(&dir.path().join("nvml.json"), &gpus());
    let _kubelet = start_kubelet(dir.path(), &socket, &dir.path().join("pods.json"));
    let agent = start_agent(
        dir.path(),
        &nvml_lib,
        &dir.path().join("nvml.json"),
        &socket,
        &["--interval", "1s"],
    );
    let pid = agent.process.pid();

    let series = wait_for(Duration::from_secs(30), "all 50 pods attributed", || {
        let metrics = agent.metrics();
        let util: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("DCGM_FI_DEV_GPU_UTIL{"))
            .collect();
        (util.len() == PODS).then(|| metrics.lines().filter(|l| l.starts_with("DCGM_")).count())
    });

    // The sampler alone: 8 GPUs read once a second, no requests.
    let idle_window = Duration::from_secs(5);
    let idle_before = cpu_ns(pid);
    std::thread::sleep(idle_window);
    let idle_ns_per_s = (cpu_ns(pid) - idle_before) as f64 / idle_window.as_secs_f64();

    let mut client = HttpClient::connect(agent.address);
    let metrics = measure(pid, &mut client, "/metrics", idle_ns_per_s);
    let samples = measure(pid, &mut client, "/v1/samples", idle_ns_per_s);
    let rss = status_mib(pid, "VmRSS:");
    let hwm = status_mib(pid, "VmHWM:");

    println!(
        "node-agent, release build, {GPUS} GPUs, {PODS} pods ({series} DCGM series), {SCRAPES} scrapes per endpoint"
    );
    println!("  resident memory      VmRSS {rss:.1} MiB, VmHWM (peak) {hwm:.1} MiB   target < {RSS_TARGET_MIB} MiB");
    println!("  idle CPU (sampling)  {:.3} ms per second", idle_ns_per_s / 1e6);
    for (path, s) in [("/metrics", &metrics), ("/v1/samples", &samples)] {
        println!(
            "  {path:<12} CPU {:.3} ms per scrape (raw {:.3} ms), {:.0} us wall, {} bytes   target < {CPU_TARGET_MS} ms",
            s.per_scrape_ms, s.raw_ms, s.wall_us, s.bytes
        );
    }

    let misses: Vec<String> = [
        (hwm >= RSS_TARGET_MIB).then(|| format!("peak resident memory {hwm:.1} MiB")),
        (metrics.per_scrape_ms >= CPU_TARGET_MS).then(|| format!("/metrics {:.3} ms CPU", metrics.per_scrape_ms)),
        (samples.per_scrape_ms >= CPU_TARGET_MS).then(|| format!("/v1/samples {:.3} ms CPU", samples.per_scrape_ms)),
    ]
    .into_iter()
    .flatten()
    .collect();
    if misses.is_empty() {
        println!("  targets met");
    } else {
        eprintln!("targets missed: {}", misses.join(", "));
        std::process::exit(1);
    }
}
