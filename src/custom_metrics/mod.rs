//! The operator's `custom.metrics.k8s.io` aggregated API, everything the HPA scales on: kube-
//! apiserver proxies `/apis/custom.metrics.k8s.io/...` here (an `APIService` names this server's
//! Service), and the HPA controller reads two metrics from it, each from its own folder:
//!
//! - [`gpu_utilization`]: from the node agents' `/v1/samples` of the GPUs each pod holds;
//! - [`queue_time`]: `inference_queue_duration_us`, from each pod's runtime metrics endpoint.
//!
//! [`routes`] answers the requests in the [`wire`] formats; [`front_proxy`] lets only the API
//! server's front proxy in (TLS with its client certificate checked against the requestheader CA
//! the cluster publishes). This file binds and serves.

pub mod front_proxy;
pub mod gpu_utilization;
pub mod label_selector;
pub mod queue_time;
pub mod routes;
pub mod wire;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use futures::StreamExt;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
};
use k8s_openapi::api::{core::v1::Pod, discovery::v1::EndpointSlice};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, reflector, watcher},
};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tracing::{debug, info};

pub use self::gpu_utilization::node_agents::AgentEndpoint;
use self::{
    front_proxy::{
        ClientCertificate,
        authorization::DelegatedAuthorizer,
        reload::{IdentitySource, LiveTls, TrustSource},
        tls,
    },
    gpu_utilization::node_agents::{AgentDirectory, SampleSource},
    queue_time::QueueTimeSource,
    routes::ApiState,
};

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections may finish their requests after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A plain-HTTP client whose every request, connecting included, ends within `timeout`: for the
/// node agents' samples and the runtimes' metrics endpoints.
fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .expect("an HTTP client without TLS settings builds")
}

/// The custom-metrics server's flags.
#[derive(Debug, Clone)]
pub struct Settings {
    pub addr: SocketAddr,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// The front proxy's CA; read from `kube-system/extension-apiserver-authentication` when `None`.
    pub requestheader_client_ca_file: Option<PathBuf>,
    /// With the CA file: the names the front proxy's certificate may carry (empty: any).
    pub requestheader_allowed_names: Vec<String>,
    /// Node agents by node; when empty, the EndpointSlices of `agent_service`.
    pub agent_endpoints: Vec<AgentEndpoint>,
    pub agent_service: String,
    pub agent_namespace: String,
    pub agent_timeout: Duration,
    pub sample_max_age: Duration,
    /// Check each caller with a SubjectAccessReview, as aggregated API servers do.
    pub delegated_authorization: bool,
    /// Where the runtimes report queue time.
    pub queue_time: queue_time::Settings,
    /// How often the certificate files and the front proxy's CA are read again.
    pub tls_reload_interval: Duration,
}

/// Bound and configured; `serve` runs it.
pub struct CustomMetricsServer {
    listener: TcpListener,
    tls: Arc<LiveTls>,
    tls_reload_interval: Duration,
    app: axum::Router,
}

impl CustomMetricsServer {
    /// Binds the port and loads (or generates) the certificates, so that a bad file or a taken
    /// port stops `run` at once with its name. Reads pods from the operator's pod cache.
    pub async fn bind(settings: Settings, client: &Client, pods: reflector::Store<Pod>) -> anyhow::Result<Self> {
        let Settings {
            addr,
            tls_cert_file,
            tls_key_file,
            requestheader_client_ca_file,
            requestheader_allowed_names,
            agent_endpoints,
            agent_service,
            agent_namespace,
            agent_timeout,
            sample_max_age,
            delegated_authorization,
            queue_time,
            tls_reload_interval,
        } = settings;
        // Bound first: a taken port fails at once, and a port chosen by the caller is held
        // while the API calls below run.
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding the custom metrics address {addr}: {e}"))?;
        let queue_time = QueueTimeSource::new(queue_time);
        let identity = match (tls_cert_file, tls_key_file) {
            (Some(cert), Some(key)) => IdentitySource::Files { cert, key },
            // Generated once (or refused as half a pair).
            (cert, key) => IdentitySource::Generated(Arc::new(tls::serving_identity(cert.as_deref(), key.as_deref())?)),
        };
        let trust_source = match requestheader_client_ca_file {
            Some(ca) => TrustSource::File {
                ca,
                allowed_names: requestheader_allowed_names,
            },
            None => TrustSource::Cluster(client.clone()),
        };
        let tls = Arc::new(LiveTls::load(identity, trust_source).await?);
        let directory = if agent_endpoints.is_empty() {
            AgentDirectory::EndpointSlices(watch_agents(client, &agent_namespace, &agent_service))
        } else {
            AgentDirectory::from_flags(agent_endpoints)
        };
        let trust = tls.trust();
        info!(
            %addr,
            requestheader_ca = %trust.source,
            allowed_names = ?trust.allowed_names,
            ?tls_reload_interval,
            agents = ?directory,
            delegated_authorization,
            "custom metrics API configured"
        );
        let state = Arc::new(ApiState {
            pods,
            samples: SampleSource::new(directory, agent_timeout, sample_max_age),
            queue_time,
            tls: tls.clone(),
            authorizer: delegated_authorization.then(|| DelegatedAuthorizer::new(client.clone())),
        });
        Ok(Self {
            listener,
            tls,
            tls_reload_interval,
            app: routes::router(state),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until `shutdown` resolves, then lets open ones finish (bounded).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let Self {
            listener,
            tls,
            tls_reload_interval,
            app,
        } = self;
        let reloading = tokio::spawn(tls.clone().reload_every(tls_reload_interval));
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        info!(addr = ?listener.local_addr().ok(), "serving custom.metrics.k8s.io");
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        debug!(%error, "accepting a custom metrics connection");
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            // The configuration of this moment: a reload affects only later connections.
            let acceptor = tls.acceptor();
            let app = app.clone();
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        debug!(%peer, %error, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                let certificate = match tls.get_ref().1.peer_certificates().and_then(|chain| chain.first()) {
                    Some(leaf) => ClientCertificate::Verified {
                        common_name: tls::common_name(leaf),
                    },
                    None => ClientCertificate::Absent,
                };
                // Every request on this connection carries what the handshake established.
                let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(certificate.clone());
                    app.clone().oneshot(request.map(axum::body::Body::new))
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let connection = builder.serve_connection(TokioIo::new(tls), service);
                if let Err(error) = watcher.watch(connection).await {
                    debug!(%peer, %error, "custom metrics connection ended");
                }
            });
        }
        reloading.abort();
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
            debug!("custom metrics connections still open after {DRAIN_TIMEOUT:?}; closing them");
        }
    }
}

/// A cache of the node agents' EndpointSlices, kept current by a background watch.
fn watch_agents(client: &Client, namespace: &str, service: &str) -> reflector::Store<EndpointSlice> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let config = watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
    let (store, writer) = reflector::store();
    let stream = watcher(api, config).default_backoff().reflect(writer).applied_objects();
    tokio::spawn(stream.for_each(|_| futures::future::ready(())));
    store
}
