//! One model behind the activator, for its tests and its benchmark: the part of a cluster the
//! activator asks (which Service is whose, whether a replica answers, a replica wanted), with the
//! replica a real server the test starts when asked.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use model_operator::{
    activator::{Activator, Limits, ModelKey, Models, Route, Upstream, host::ServiceHost, upstream::Protocol},
    model_readiness::{ProbeSettings, ProbeTarget, Prober},
};
use tokio::{net::TcpListener, sync::watch};

/// A model's replica, as the test starts it when the activator asks for one.
pub type StartReplica = Box<dyn FnOnce(watch::Sender<Option<Upstream>>) + Send>;

/// One model, `NAME-service` in namespace `ml`: the part of the cluster the activator asks.
pub struct OneModel {
    pub key: ModelKey,
    pub ready: watch::Sender<Option<Upstream>>,
    cold_start_timeout: Duration,
    pub wakes: AtomicUsize,
    start: Mutex<Option<StartReplica>>,
}

impl OneModel {
    pub fn new(name: &str, cold_start_timeout: Duration, start: Option<StartReplica>) -> Arc<Self> {
        Arc::new(Self {
            key: ModelKey {
                namespace: "ml".into(),
                name: name.into(),
            },
            ready: watch::channel(None).0,
            cold_start_timeout,
            wakes: AtomicUsize::new(0),
            start: Mutex::new(start),
        })
    }
}

impl Models for OneModel {
    fn route(&self, host: &ServiceHost) -> Result<Route, String> {
        let ours = host.service == format!("{}-service", self.key.name)
            && host.namespace.as_deref().is_none_or(|ns| ns == self.key.namespace);
        if !ours {
            return Err(format!("no ModelDeployment has the Service {host}"));
        }
        Ok(Route {
            model: self.key.clone(),
            ready: self.ready.subscribe(),
            cold_start_timeout: self.cold_start_timeout,
        })
    }

    fn wake(&self, _model: &ModelKey) {
        self.wakes.fetch_add(1, Ordering::Relaxed);
        if let Some(start) = self.start.lock().unwrap().take() {
            start(self.ready.clone());
        }
    }
}

/// The activator on a free loopback port for `protocol`.
pub async fn start_activator(
    models: Arc<dyn Models>,
    limits: Limits,
    protocol: Protocol,
) -> (Arc<Activator>, SocketAddr) {
    let activator = Activator::new(models, limits);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(activator.clone().serve(listener, protocol, std::future::pending()));
    (activator, addr)
}

/// Probes `target` with the operator's own prober until the model answers, then publishes where.
pub async fn publish_once_ready(target: ProbeTarget, upstream: Upstream, ready: watch::Sender<Option<Upstream>>) {
    let prober = Prober::new(ProbeSettings::default()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let outcome = prober.probe(&target).await;
        if outcome.ready {
            ready.send_replace(Some(upstream));
            return;
        }
        assert!(Instant::now() < deadline, "the model never answered: {outcome:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A client that reaches `service_host` (a model's Service name) at the activator, as the
/// Service would send it there; each request may take up to `timeout`.
pub fn http_client(service_host: &str, activator: SocketAddr, timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .resolve(service_host, activator)
        .timeout(timeout)
        .build()
        .unwrap()
}

/// `POST /predict` of `x` at `url` to the affine test model (`write_affine_model`), which must
/// answer 2x + 1.
pub async fn predict_affine(client: &reqwest::Client, url: &str, x: u32) {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(format!(r#"{{"features": [[{x}.0]]}}"#))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{status}: {text}");
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"predictions": [[f64::from(2 * x + 1)]]}),
        "for {x}"
    );
}
