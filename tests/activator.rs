//! The activator's data path against the real runtimes on loopback: a model with no replica gets
//! real requests (a FastAPI `POST /predict`, a Triton gRPC `ModelInfer`), the first of them asks
//! for a replica, which here starts the real server; every request is held until the operator's
//! own model probe says the model answers, then answered by the runtime. Streams held on one
//! HTTP/2 connection reach the replica in the order they arrived. A model that never starts, a
//! full queue and an unknown host get their refusals in the client's protocol.

mod support;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use model_operator::{
    activator::{Limits, Upstream, upstream::Protocol},
    api::Runtime,
    model_readiness::{ProbeTarget, triton::kserve::grpc_inference_service_client::GrpcInferenceServiceClient},
};
use support::{
    ServerProcess, TRITON_DOUBLER_PY, TestServers, Triton, doubler_infer_request, free_port, inference_app,
    one_model::{OneModel, StartReplica, http_client, predict_affine, publish_once_ready, start_activator},
    raw_floats, write_affine_model, write_triton_model,
};

/// Long enough for a runtime's start and load on this machine.
const COLD_START: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_sent_to_a_model_at_zero_are_held_until_fastapi_answers_then_answered() {
    let servers = TestServers::installed();
    let dir = tempfile::tempdir().unwrap();
    let model_path = dir.path().join("model.pt");
    write_affine_model(&servers.path("PYTHON"), &model_path);
    let port = free_port();
    let app: Arc<Mutex<Option<ServerProcess>>> = Arc::default();
    let start: StartReplica = {
        let (app, python_dir, model_path) = (app.clone(), dir.path().to_path_buf(), model_path.clone());
        Box::new(move |ready| {
            *app.lock().unwrap() = Some(inference_app(
                &TestServers::installed(),
                &python_dir,
                "affine",
                &model_path,
                port,
            ));
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let target = ProbeTarget {
                runtime: Runtime::FastapiPytorch,
                endpoint: addr.to_string(),
                model_name: "affine".into(),
                version: None,
            };
            tokio::spawn(publish_once_ready(target, Upstream { http: addr, grpc: None }, ready));
        })
    };
    let model = OneModel::new("affine", Duration::from_secs(120), Some(start));
    let (activator, addr) = start_activator(model.clone(), Limits::default(), Protocol::Http).await;
    assert!(app.lock().unwrap().is_none(), "no replica before the first request");

    // Eight clients at once, each with its own connection, during the cold start.
    let service = "affine-service.ml";
    let url = format!("http://{service}:{}/predict", addr.port());
    let asked = Instant::now();
    let requests = (1..=8).map(|i| {
        let (client, url) = (http_client(service, addr, COLD_START), url.clone());
        async move { predict_affine(&client, &url, i).await }
    });
    futures::future::join_all(requests).await;
    let cold_start = asked.elapsed();
    assert!(model.wakes.load(Ordering::Relaxed) >= 1);
    assert!(app.lock().unwrap().is_some(), "the first request started the replica");
    assert_eq!(activator.held(&model.key), 0, "nobody is left waiting");
    let text = activator.encode_metrics();
    assert!(
        text.contains(r#"model_operator_activator_requests_total{outcome="ForwardedAfterHold"} 8"#),
        "{text}"
    );

    // Several requests on one connection, one after another: answered in order, now warm.
    let client = http_client(service, addr, COLD_START);
    for i in 10..13 {
        predict_affine(&client, &url, i).await;
    }
    eprintln!("cold start through the activator: {cold_start:?}");
}

fn adder_repository(dir: &Path) -> PathBuf {
    let repo = dir.join("models");
    write_triton_model(&repo, "adder", &TRITON_DOUBLER_PY.replace("{delay}", "0"));
    repo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_inferences_sent_to_a_triton_model_at_zero_are_held_then_answered() {
    let dir = tempfile::tempdir().unwrap();
    let repo = adder_repository(dir.path());
    let triton: Arc<Mutex<Option<Triton>>> = Arc::default();
    let start: StartReplica = {
        let (triton, dir) = (triton.clone(), dir.path().to_path_buf());
        Box::new(move |ready| {
            let server = Triton::start(&TestServers::installed(), &repo, &dir, &[]);
            let grpc: SocketAddr = server.grpc.parse().unwrap();
            let http: SocketAddr = server.http.trim_start_matches("http://").parse().unwrap();
            *triton.lock().unwrap() = Some(server);
            let target = ProbeTarget {
                runtime: Runtime::Triton,
                endpoint: grpc.to_string(),
                model_name: "adder".into(),
                version: None,
            };
            tokio::spawn(publish_once_ready(target, Upstream { http, grpc: Some(grpc) }, ready));
        })
    };
    let model = OneModel::new("adder", Duration::from_secs(120), Some(start));
    let (activator, addr) = start_activator(model.clone(), Limits::default(), Protocol::Grpc).await;

    // One HTTP/2 connection to the activator, its `:authority` the model's Service.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .origin("http://adder-service.ml.svc:8001".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let client = GrpcInferenceServiceClient::new(channel);
    let order = Arc::new(Mutex::new(Vec::new()));
    let requests = (0..6u8).map(|i| {
        let (mut client, order) = (client.clone(), order.clone());
        async move {
            let value = f32::from(i);
            let response = client
                .model_infer(doubler_infer_request([value, value + 1.0, 0.5, -1.0]))
                .await
                .unwrap_or_else(|status| panic!("inference {i}: {status}"))
                .into_inner();
            order.lock().unwrap().push(i);
            assert_eq!(response.model_name, "adder");
            assert_eq!(
                raw_floats(&response.raw_output_contents[0]),
                [2.0 * value, 2.0 * value + 2.0, 1.0, -2.0],
                "inference {i}"
            );
        }
    });
    // Each stream opens after the one before, so that their arrival order is known.
    let staggered = requests.enumerate().map(|(k, request)| async move {
        tokio::time::sleep(Duration::from_millis(20 * k as u64)).await;
        request.await;
    });
    futures::future::join_all(staggered).await;
    assert!(triton.lock().unwrap().is_some(), "the first inference started Triton");
    assert_eq!(activator.held(&model.key), 0);
    // Every one answered. (The order Triton answers in is its own: its gRPC frontend hands
    // requests to the model from several threads. The order the activator sends them in is
    // checked below, where the replica records it.)
    assert_eq!(order.lock().unwrap().len(), 6);
}

/// A replica that records the order its requests arrive in, over HTTP/2 without TLS (as gRPC
/// runtimes speak in a cluster), and answers each with 200.
async fn recording_http2_server() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let recorded = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let recorded = recorded.clone();
            tokio::spawn(async move {
                // The service is called as each stream is accepted, in the connection's order.
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    recorded.lock().unwrap().push(request.uri().path().to_owned());
                    async { Ok::<_, std::convert::Infallible>(hyper::Response::new(axum::body::Body::from("ok"))) }
                });
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_held_on_one_connection_reach_the_replica_in_the_order_they_arrived() {
    let (replica, seen) = recording_http2_server().await;
    let model = OneModel::new("ordered", Duration::from_secs(60), None);
    let (activator, addr) = start_activator(model.clone(), Limits::default(), Protocol::Grpc).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve("ordered-service.ml", addr)
        .build()
        .unwrap();
    let url = format!("http://ordered-service.ml:{}", addr.port());
    let mut requests = Vec::new();
    for i in 0..10 {
        let (client, url) = (client.clone(), url.clone());
        requests.push(tokio::spawn(async move {
            let response = client.post(format!("{url}/r{i}")).body("x").send().await.unwrap();
            assert_eq!(response.status(), 200);
        }));
        // Each stream opens once the one before is held.
        let deadline = Instant::now() + Duration::from_secs(10);
        while activator.held(&model.key) < i + 1 {
            assert!(Instant::now() < deadline, "request {i} is held");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing reaches the replica before it is ready"
    );
    model.ready.send_replace(Some(Upstream {
        http: replica,
        grpc: Some(replica),
    }));
    for request in requests {
        request.await.unwrap();
    }
    let expected: Vec<String> = (0..10).map(|i| format!("/r{i}")).collect();
    assert_eq!(*seen.lock().unwrap(), expected);
}

#[tokio::test]
async fn a_model_that_does_not_start_in_time_a_full_queue_and_an_unknown_host_are_refused_clearly() {
    // Nothing starts: the replica never becomes ready.
    let model = OneModel::new("stuck", Duration::from_secs(2), None);
    let limits = Limits {
        queue_per_model: 2,
        ..Limits::default()
    };
    let (activator, http_addr) = start_activator(model.clone(), limits, Protocol::Http).await;
    let service = "stuck-service.ml";
    let url = format!("http://{service}:{}/predict", http_addr.port());
    let held = (0..2).map(|_| {
        let (client, url) = (http_client(service, http_addr, COLD_START), url.clone());
        async move { client.post(&url).body("{}").send().await.unwrap() }
    });
    let held = tokio::spawn(futures::future::join_all(held));
    let deadline = Instant::now() + Duration::from_secs(2);
    while activator.held(&model.key) < 2 {
        assert!(Instant::now() < deadline, "two requests are held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The queue is full: the third is refused at once, with a retry hint.
    let overflow = http_client(service, http_addr, COLD_START)
        .post(&url)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(overflow.status(), 503);
    assert_eq!(overflow.headers()["retry-after"], "1");
    let text = overflow.text().await.unwrap();
    assert!(
        text.contains("model ml/stuck is starting and already holds 2 requests"),
        "{text}"
    );

    // The held ones time out with the bound named.
    for response in held.await.unwrap() {
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "5");
        let text = response.text().await.unwrap();
        assert!(text.contains("model ml/stuck did not become ready within 2s"), "{text}");
    }
    assert_eq!(activator.held(&model.key), 0);

    // A host that names no model's Service.
    let other = http_client("payments.ml", http_addr, COLD_START)
        .get(format!("http://payments.ml:{}/", http_addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    assert!(other.text().await.unwrap().contains("is not a Service's name"));

    // gRPC clients get UNAVAILABLE with the same words, never a hang.
    let (_, grpc_addr) = start_activator(model.clone(), limits, Protocol::Grpc).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
        .unwrap()
        .origin("http://stuck-service.ml:8001".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let status = GrpcInferenceServiceClient::new(channel)
        .model_infer(doubler_infer_request([1.0; 4]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains("did not become ready within 2s"),
        "{}",
        status.message()
    );
    assert_eq!(status.metadata().get("grpc-retry-pushback-ms").unwrap(), "5000");

    // Each refusal is counted by its reason; nothing is held any more.
    let text = activator.encode_metrics();
    for line in [
        r#"model_operator_activator_requests_total{outcome="QueueFull"} 1"#,
        r#"model_operator_activator_requests_total{outcome="ColdStartTimeout"} 2"#,
        r#"model_operator_activator_requests_total{outcome="NoModel"} 1"#,
        "model_operator_activator_held_requests 0",
        "model_operator_activator_hold_seconds_count 2",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
}
