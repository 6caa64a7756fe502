//! The activator: takes a model's Service traffic while the model has no ready replica (scaled
//! to zero, or starting), holds each request in a bounded queue per model, asks for a replica,
//! and forwards the held requests in arrival order once the model itself answers, over HTTP/1.1
//! or gRPC. A request it cannot forward gets a clear refusal in its own protocol
//! ([`refusal`]), never a hang.
//!
//! - [`host`]: which model a request is for, from the Service name it dialled;
//! - [`gate`]: one model's queue of held requests and their order;
//! - [`upstream`]: the connections to the replicas, and what is rewritten on the way;
//! - [`refusal`]: the answers when a request cannot go on;
//! - [`metrics`]: what became of the requests, for `/metrics`;
//! - [`cluster`]: the [`Models`] of a real cluster (its ModelDeployments and serving pods).
//!
//! What the activator knows about models (which Service is whose, whether a replica is ready and
//! where, how to ask for one) comes from a [`Models`], so that the data path is the same whoever
//! decides those.

pub mod cluster;
pub mod gate;
pub mod host;
pub mod metrics;
pub mod refusal;
pub mod upstream;

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::body::Body;
use http::{Request, Response, header};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{net::TcpListener, sync::Semaphore, sync::watch, time::Instant};
use tracing::{debug, info};

use self::{
    gate::{Gate, NoTurn},
    host::ServiceHost,
    metrics::{ActivatorMetrics, FORWARDED, FORWARDED_AFTER_HOLD},
    refusal::Refusal,
    upstream::{Protocol, Upstreams, response_for_client},
};

/// A ModelDeployment, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelKey {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ModelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where a ready replica's runtime answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstream {
    /// The runtime's HTTP (inference) port.
    pub http: SocketAddr,
    /// Its gRPC port, for runtimes that have one (Triton's KServe-v2, TorchServe's).
    pub grpc: Option<SocketAddr>,
}

/// A model the activator can hold requests for.
#[derive(Debug, Clone)]
pub struct Route {
    pub model: ModelKey,
    /// `Some` while one of its replicas' model answers (the operator's model probe, not merely a
    /// Ready pod), `None` while it has none.
    pub ready: watch::Receiver<Option<Upstream>>,
    /// The longest a request may wait for the model's cold start.
    pub cold_start_timeout: Duration,
}

/// What the activator learns about models.
pub trait Models: Send + Sync + 'static {
    /// The model whose Service `host` names, or why there is none (the words reach the client).
    fn route(&self, host: &ServiceHost) -> Result<Route, String>;

    /// Asks for a replica of `model`: called when a request starts to wait, so it may be called
    /// many times during one cold start and must be cheap and idempotent.
    fn wake(&self, model: &ModelKey);
}

/// Bounds of the activator's resources.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Requests held per model while it starts; more get `503` / `UNAVAILABLE` at once.
    pub queue_per_model: usize,
    /// Client connections open at once, across ports; more wait in the listen backlog.
    pub max_connections: usize,
    /// How long an HTTP/1.1 client may take to send a request's headers.
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            queue_per_model: 256,
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// How long open connections may finish after a shutdown began.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The activator's data path, shared by its listeners.
pub struct Activator {
    models: Arc<dyn Models>,
    gates: Mutex<HashMap<ModelKey, Arc<Gate<Upstream>>>>,
    upstreams: Upstreams,
    limits: Limits,
    connections: Arc<Semaphore>,
    metrics: ActivatorMetrics,
}

impl Activator {
    pub fn new(models: Arc<dyn Models>, limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            models,
            gates: Mutex::new(HashMap::new()),
            upstreams: Upstreams::default(),
            limits,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            metrics: ActivatorMetrics::default(),
        })
    }

    /// Its metrics as `/metrics` serves them; the held requests counted from the gates.
    pub fn encode_metrics(&self) -> String {
        let held: usize = self
            .gates
            .lock()
            .expect("gates lock")
            .values()
            .map(|gate| gate.held())
            .sum();
        self.metrics.held.set(i64::try_from(held).unwrap_or(i64::MAX));
        self.metrics.encode()
    }

    /// Requests held now for `model`.
    pub fn held(&self, model: &ModelKey) -> usize {
        self.gates
            .lock()
            .expect("gates lock")
            .get(model)
            .map_or(0, |gate| gate.held())
    }

    /// Serves `listener`, whose requests go to each model's `protocol` port, until `shutdown`
    /// resolves; then open connections may finish (bounded).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, protocol: Protocol, shutdown: impl Future<Output = ()>) {
        let graceful = GracefulShutdown::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout);
        builder.http2().timer(TokioTimer::new());
        let builder = Arc::new(builder);
        tokio::pin!(shutdown);
        info!(addr = ?listener.local_addr().ok(), ?protocol, "activator serving");
        loop {
            let permit = tokio::select! {
                permit = self.connections.clone().acquire_owned() => permit.expect("the connection semaphore is never closed"),
                () = &mut shutdown => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        debug!(%error, "accepting an activator connection");
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let activator = self.clone();
            let builder = builder.clone();
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let _slot = permit;
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let activator = activator.clone();
                    async move { Ok::<_, Infallible>(activator.handle(protocol, peer, request).await) }
                });
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                if let Err(error) = watcher.watch(connection.into_owned()).await {
                    debug!(%peer, %error, "activator connection ended");
                }
            });
        }
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
            debug!("activator connections still open after {DRAIN_TIMEOUT:?}; closing them");
        }
    }

    /// One request, counted by what became of it.
    async fn handle(&self, protocol: Protocol, peer: SocketAddr, request: Request<Incoming>) -> Response<Body> {
        let (response, outcome) = self.forward(protocol, peer, request).await;
        self.metrics.requests.with_label_values(&[outcome]).inc();
        response
    }

    /// Its model found, its turn waited for, then forwarded; or why not.
    async fn forward(
        &self,
        protocol: Protocol,
        peer: SocketAddr,
        request: Request<Incoming>,
    ) -> (Response<Body>, &'static str) {
        let grpc = protocol == Protocol::Grpc
            || request
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/grpc"));
        let refuse = |refusal: Refusal| {
            debug!(%peer, reason = refusal.reason(), message = %refusal.message(), "request refused");
            let response = if grpc { refusal.grpc() } else { refusal.http() };
            (response, refusal.reason())
        };
        let host = request
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| request.headers().get(header::HOST).and_then(|h| h.to_str().ok()));
        let route = match host::parse(host)
            .map_err(|e| e.to_string())
            .and_then(|service| self.models.route(&service))
        {
            Ok(route) => route,
            Err(why) => return refuse(Refusal::NoModel(why)),
        };
        let model = route.model.clone();
        let gate = self.gate(&route);
        let arrived = Instant::now();
        let deadline = arrived + route.cold_start_timeout;
        let mut held = false;
        let turn = gate
            .turn(deadline, || {
                held = true;
                self.models.wake(&model);
            })
            .await;
        if held {
            self.metrics.hold_seconds.observe(arrived.elapsed().as_secs_f64());
        }
        let turn = match turn {
            Ok(turn) => turn,
            Err(NoTurn::Full) => {
                return refuse(Refusal::QueueFull {
                    model: model.to_string(),
                    capacity: self.limits.queue_per_model,
                });
            }
            Err(NoTurn::Timeout) => {
                return refuse(Refusal::ColdStartTimeout {
                    model: model.to_string(),
                    waited: route.cold_start_timeout,
                });
            }
            Err(NoTurn::Gone) => return refuse(Refusal::NoModel(format!("model {model} was deleted"))),
        };
        let outcome = if turn.was_held {
            debug!(%model, waited = ?arrived.elapsed(), "held request forwarded");
            FORWARDED_AFTER_HOLD
        } else {
            FORWARDED
        };
        let addr = match protocol {
            Protocol::Http => turn.upstream.http,
            Protocol::Grpc => match turn.upstream.grpc {
                Some(addr) => addr,
                None => return refuse(Refusal::NoModel(format!("model {model}'s runtime serves no gRPC"))),
            },
        };
        let pending = match self.upstreams.dispatch(protocol, addr, peer, request).await {
            Ok(pending) => pending,
            Err(error) => {
                return refuse(Refusal::UpstreamFailed {
                    model: model.to_string(),
                    error,
                });
            }
        };
        // Queued on the replica's connection: the next request may go.
        drop(turn);
        match pending.await {
            Ok(response) => (response_for_client(response), outcome),
            Err(error) => refuse(Refusal::UpstreamFailed {
                model: model.to_string(),
                error,
            }),
        }
    }

    /// The model's gate, made at its first request; gates of models whose routes are gone are
    /// dropped on the way.
    fn gate(&self, route: &Route) -> Arc<Gate<Upstream>> {
        let mut gates = self.gates.lock().expect("gates lock");
        if let Some(gate) = gates.get(&route.model)
            && !gate.is_orphaned()
        {
            return gate.clone();
        }
        gates.retain(|_, gate| !gate.is_orphaned() || gate.held() > 0);
        let gate = Arc::new(Gate::new(route.ready.clone(), self.limits.queue_per_model));
        gates.insert(route.model.clone(), gate.clone());
        gate
    }
}
