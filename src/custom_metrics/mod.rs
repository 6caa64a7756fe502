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
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::vocabulary::cached::CachedPod;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, reflector, watcher},
};
use tokio::{net::TcpListener, sync::Semaphore};
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

/// How much the server gives any one peer: every connection, handshake and request head is
/// bounded, so that no client (only the API server's front proxy should ever call) can hold
/// the server's memory or its connection slots.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Connections served at once; past this, new ones wait in the listen backlog. The API
    /// server's aggregator keeps a handful open per API server replica.
    pub max_connections: usize,
    /// A client that has not finished its TLS handshake by then is dropped.
    pub handshake_timeout: Duration,
    /// A request head not complete by then, or an HTTP/1.1 connection idle that long between
    /// requests, is closed.
    pub header_read_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 128,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
        }
    }
}
/// HTTP/2 connections are pinged this often, and closed when a ping goes unanswered this long.
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests at once on one HTTP/2 connection.
const H2_MAX_STREAMS: u32 = 64;
/// How long open connections may finish their requests after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

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
    limits: ServerLimits,
}

impl CustomMetricsServer {
    /// Binds the port and loads (or generates) the certificates, so that a bad file or a taken
    /// port stops `run` at once with its name. Reads pods from the operator's pod cache.
    pub async fn bind(settings: Settings, client: &Client, pods: reflector::Store<CachedPod>) -> anyhow::Result<Self> {
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
            limits: ServerLimits::default(),
        })
    }

    /// Other limits than the defaults (tests shorten the timeouts).
    pub fn with_limits(self, limits: ServerLimits) -> Self {
        Self { limits, ..self }
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
            limits:
                ServerLimits {
                    max_connections,
                    handshake_timeout,
                    header_read_timeout,
                },
        } = self;
        let reloading = tokio::spawn(tls.clone().reload_every(tls_reload_interval));
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        info!(addr = ?listener.local_addr().ok(), "serving custom.metrics.k8s.io");
        let connections = Arc::new(Semaphore::new(max_connections));
        // The protocol is the one TLS negotiated (ALPN), so the server never waits on a silent
        // client to guess it; each protocol bounds its own idle time.
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1.timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(H2_KEEPALIVE_INTERVAL))
            .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
            .max_concurrent_streams(H2_MAX_STREAMS);
        let (http1, http2) = (Arc::new(http1), Arc::new(http2));
        loop {
            // A slot first: while every one is taken, connections wait in the backlog instead of
            // holding memory here.
            let permit = tokio::select! {
                permit = connections.clone().acquire_owned() => permit.expect("the connection semaphore is never closed"),
                () = &mut shutdown => break,
            };
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
            let (http1, http2) = (http1.clone(), http2.clone());
            tokio::spawn(async move {
                let _slot = permit;
                let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
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
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
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
                let io = TokioIo::new(tls);
                let ended = if h2 {
                    watcher.watch(http2.serve_connection(io, service)).await
                } else {
                    watcher.watch(http1.serve_connection(io, service)).await
                };
                if let Err(error) = ended {
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::custom_metrics::front_proxy::reload::TestFrontProxy;

    /// The server on loopback with short limits, trusting `proxy`'s CA; returns its address and
    /// the certificate it serves.
    async fn serve_with(proxy: &TestFrontProxy, limits: ServerLimits) -> (SocketAddr, CertificateDer<'static>) {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("front-proxy-ca.crt");
        std::fs::write(&ca, &proxy.ca_pem).unwrap();
        let serving = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, serving.cert.pem()).unwrap();
        std::fs::write(&key, serving.signing_key.serialize_pem()).unwrap();
        // Nothing here calls the API server: the CA is a file, agents are fixed, authorization
        // is left to kube-apiserver.
        let (service, _handle) =
            tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
        let client = Client::new(service, "default");
        let settings = Settings {
            addr: "127.0.0.1:0".parse().unwrap(),
            tls_cert_file: Some(cert),
            tls_key_file: Some(key),
            requestheader_client_ca_file: Some(ca),
            requestheader_allowed_names: vec![],
            agent_endpoints: vec![AgentEndpoint {
                node: "gpu-0".into(),
                address: "127.0.0.1:9".into(),
            }],
            agent_service: "node-agent".into(),
            agent_namespace: "default".into(),
            agent_timeout: Duration::from_secs(1),
            sample_max_age: Duration::from_secs(5),
            delegated_authorization: false,
            queue_time: queue_time::Settings::default(),
            tls_reload_interval: Duration::from_secs(3600),
        };
        let (pods, _writer) = reflector::store();
        let server = CustomMetricsServer::bind(settings, &client, pods)
            .await
            .unwrap()
            .with_limits(limits);
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            // The directory holds the files the server already read; it outlives nothing here.
            let _dir = dir;
            server.serve(std::future::pending()).await;
        });
        (addr, serving.cert.der().clone())
    }

    const SHORT: ServerLimits = ServerLimits {
        max_connections: 2,
        handshake_timeout: Duration::from_millis(600),
        header_read_timeout: Duration::from_millis(600),
    };

    /// Connects with TLS as `client`; `None` when the handshake fails.
    async fn tls_connect(
        addr: SocketAddr,
        config: rustls::ClientConfig,
    ) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let mut stream = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .ok()?;
        // TLS 1.3 reports a refused client certificate only on the first read.
        stream.write_all(b"").await.ok()?;
        Some(stream)
    }

    /// Whether the peer closes `stream` within `within`.
    async fn closed_within(stream: &mut (impl AsyncReadExt + Unpin), within: Duration) -> bool {
        let mut buffer = [0u8; 1024];
        matches!(
            tokio::time::timeout(within, stream.read(&mut buffer)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    async fn get_discovery(stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
        stream
            .write_all(
                b"GET /apis/custom.metrics.k8s.io/v1beta2 HTTP/1.1\r\nhost: localhost\r\nx-remote-user: e2e\r\n\r\n",
            )
            .await
            .unwrap();
        let mut answer = vec![0u8; 4096];
        let read = stream.read(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer[..read]).into_owned()
    }

    #[tokio::test]
    async fn only_a_front_proxy_certificate_gets_a_session() {
        let proxy = TestFrontProxy::new("front-proxy-client");
        let (addr, served) = serve_with(&proxy, SHORT).await;
        let mut session = tls_connect(addr, proxy.client_config(&served))
            .await
            .expect("the proxy connects");
        assert!(get_discovery(&mut session).await.starts_with("HTTP/1.1 200"));

        // No certificate: the handshake is refused, before any HTTP.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(served.clone()).unwrap();
        let anonymous = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        match tls_connect(addr, anonymous).await {
            None => {}
            Some(mut stream) => assert!(
                closed_within(&mut stream, Duration::from_secs(2)).await,
                "a client without a certificate is cut off"
            ),
        }
        // A certificate another CA signed: refused alike.
        let stranger = TestFrontProxy::new("front-proxy-client");
        if let Some(mut stream) = tls_connect(addr, stranger.client_config(&served)).await {
            assert!(closed_within(&mut stream, Duration::from_secs(2)).await);
        }
    }

    #[tokio::test]
    async fn silent_and_idle_connections_are_closed_and_slots_are_bounded() {
        let proxy = TestFrontProxy::new("front-proxy-client");
        let (addr, served) = serve_with(&proxy, SHORT).await;

        // A connection that never starts its handshake is dropped after the handshake timeout.
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_within(&mut silent, Duration::from_secs(3)).await,
            "no handshake, no connection"
        );

        // A session that sends no request head, or goes idle after one, is closed too.
        let mut idle = tls_connect(addr, proxy.client_config(&served)).await.unwrap();
        assert!(
            closed_within(&mut idle, Duration::from_secs(3)).await,
            "no request head, no connection"
        );
        let mut used = tls_connect(addr, proxy.client_config(&served)).await.unwrap();
        assert!(get_discovery(&mut used).await.starts_with("HTTP/1.1 200"));
        assert!(
            closed_within(&mut used, Duration::from_secs(3)).await,
            "idle after a request"
        );

        // Two silent connections take both slots: a third client waits until one times out.
        let _first = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _second = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let mut third = tls_connect(addr, proxy.client_config(&served))
            .await
            .expect("served once a slot frees");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300),
            "served after {waited:?}, while both slots were taken"
        );
        assert!(get_discovery(&mut third).await.starts_with("HTTP/1.1 200"));
    }
}
