//! Admin server: `/metrics` on one address, `/healthz` and `/readyz` on another, as the
//! kubelet and Prometheus expect. Readiness turns true only after the watch caches have synced.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use tokio::net::TcpListener;

use crate::telemetry::Metrics;

/// What `/readyz` answers: true once every watch cache has listed. (Whether a *model* is ready
/// is `crate::model_readiness`.)
#[derive(Clone, Default)]
pub struct CachesSynced(Arc<AtomicBool>);

impl CachesSynced {
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Binds both listeners first, so that a taken port fails `run` at once with its address.
pub async fn bind(metrics_addr: SocketAddr, health_addr: SocketAddr) -> std::io::Result<(TcpListener, TcpListener)> {
    let metrics = TcpListener::bind(metrics_addr)
        .await
        .map_err(|e| with_addr(e, metrics_addr))?;
    let health = TcpListener::bind(health_addr)
        .await
        .map_err(|e| with_addr(e, health_addr))?;
    Ok((metrics, health))
}

fn with_addr(error: std::io::Error, addr: SocketAddr) -> std::io::Error {
    std::io::Error::new(error.kind(), format!("binding {addr}: {error}"))
}

/// Serves until `shutdown` resolves.
pub async fn serve<F>(
    (metrics_listener, health_listener): (TcpListener, TcpListener),
    metrics: Metrics,
    caches_synced: CachesSynced,
    shutdown: impl Fn() -> F,
) -> std::io::Result<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let metrics_app = Router::new().route("/metrics", get(render_metrics)).with_state(metrics);
    let health_app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(caches_synced);
    let metrics_server = axum::serve(metrics_listener, metrics_app).with_graceful_shutdown(shutdown());
    let health_server = axum::serve(health_listener, health_app).with_graceful_shutdown(shutdown());
    tokio::try_join!(async { metrics_server.await }, async { health_server.await })?;
    Ok(())
}

async fn render_metrics(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        metrics.encode(),
    )
}

async fn ready(State(caches_synced): State<CachesSynced>) -> impl IntoResponse {
    if caches_synced.get() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "watch caches not synced yet")
    }
}
