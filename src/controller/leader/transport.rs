//! The writer's connections to the API server, fenced by the term at the last moment.
//!
//! [`WriteGate`](super::WriteGate) checks the term when a request is handed to the client, but
//! the bytes go out later, when the connection's task runs. A replica frozen in between (SIGSTOP,
//! a paused VM) would send, on waking, a request it decided on while it led. So the writer's
//! client also checks the term right before every write to its sockets: once the term is over no
//! byte leaves, whatever is queued. What remains is the instant between that check and the
//! `write(2)` it guards, which no client can close (only the API server could, with a fencing
//! token it does not have).

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use kube::{
    Client, Config,
    client::{Body, ConfigExt},
};
use tower::ServiceBuilder;

use crate::{telemetry::CountRequests, vocabulary::Leadership};

/// A connection that refuses to write once the term is over.
pub struct Fenced<T> {
    inner: T,
    leadership: Leadership,
}

/// What a fenced connection answers a write outside the term with.
#[derive(Debug, thiserror::Error)]
#[error("no bytes written to the API server: this replica is not the leader")]
pub struct FencedOff;

impl<T: Read + Unpin> Read for Fenced<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Fenced<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if !self.leadership.is_leading() {
            return Poll::Ready(Err(io::Error::other(FencedOff)));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        // Every write goes through the check in poll_write.
        false
    }
}

impl<T: Connection> Connection for Fenced<T> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

/// Opens TCP connections and fences them (TLS goes on top, so the check guards every write of
/// encrypted bytes to the socket).
#[derive(Clone)]
struct FencedConnector {
    inner: HttpConnector,
    leadership: Leadership,
}

impl tower::Service<http::Uri> for FencedConnector {
    type Response = Fenced<<HttpConnector as tower::Service<http::Uri>>::Response>;
    type Error = <HttpConnector as tower::Service<http::Uri>>::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let leadership = self.leadership.clone();
        Box::pin(async move {
            let inner = connecting.await?;
            Ok(Fenced { inner, leadership })
        })
    }
}

/// The client the reconcile driver and the report write with: kube's stack (base URI,
/// credentials, extra headers) over fenced connections, with [`WriteGate`](super::WriteGate)
/// refusing writes outside the term before they are even queued.
pub fn writer_client(config: &Config, leadership: Leadership, counted: CountRequests) -> kube::Result<Client> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    let fenced = FencedConnector {
        inner: http,
        leadership: leadership.clone(),
    };
    let https = config.rustls_https_connector_with_connector(fenced)?;
    let hyper_client: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
    let service = ServiceBuilder::new()
        .layer(counted)
        .layer(super::WriteGate::new(leadership))
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(|error: hyper_util::client::legacy::Error| Box::new(error) as Box<dyn std::error::Error + Send + Sync>)
        .service(hyper_client);
    Ok(Client::new(service, config.default_namespace.clone()))
}
