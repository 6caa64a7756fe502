//! SIGTERM (or Ctrl-C) turns into one shutdown signal every server and loop waits on.

use tokio::sync::watch;
use tracing::info;

/// Fires once, on the first SIGTERM or Ctrl-C; clone it for every task that must stop.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Listens for the signals from now on.
    pub fn on_signal() -> Self {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            info!("shutting down");
            tx.send_replace(true);
        });
        Self(rx)
    }

    /// Resolves once shutdown has begun.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }

    /// The underlying flag, for loops that select on it.
    pub fn receiver(&self) -> watch::Receiver<bool> {
        self.0.clone()
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
