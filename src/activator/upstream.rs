//! Sending a request on to a model's replica: HTTP/1.1 for the runtimes' HTTP ports, HTTP/2 for
//! their gRPC ports, bodies streamed both ways (a held request's body stays with its client until
//! it is forwarded). Hop-by-hop headers stay on their own hop.

use std::{collections::HashMap, net::SocketAddr, sync::Mutex};

use axum::body::Body;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, Version, header};
use hyper::{body::Incoming, client::conn::http2};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tracing::debug;

use crate::vocabulary::error_chain;

/// How long connecting to a replica may take: a pod that vanished without a reset (its node
/// lost) must not stall the requests queued behind the one connecting.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How often an idle HTTP/2 connection to a replica is pinged.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Which of the model's ports a request goes to, by the activator port it came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The runtime's HTTP port, spoken HTTP/1.1.
    Http,
    /// The runtime's gRPC port, spoken HTTP/2 (prior knowledge: in-cluster gRPC is plaintext).
    Grpc,
}

/// A response on its way back, once the request is queued on the upstream connection.
pub type PendingResponse = BoxFuture<'static, Result<Response<Incoming>, String>>;

/// The connections to the models' replicas: a pool for HTTP/1.1, one multiplexed connection per
/// replica for HTTP/2.
pub struct Upstreams {
    http1: Client<HttpConnector, Body>,
    http2: Mutex<HashMap<SocketAddr, http2::SendRequest<Body>>>,
}

impl Default for Upstreams {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let http1 = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(32)
            .build(connector);
        Self {
            http1,
            http2: Mutex::new(HashMap::new()),
        }
    }
}

impl Upstreams {
    /// Queues `request` for `addr` and returns the response to come. For HTTP/2 the request is on
    /// the connection's queue when this returns, so that requests dispatched in turn are sent in
    /// that order.
    pub async fn dispatch(
        &self,
        protocol: Protocol,
        addr: SocketAddr,
        peer: SocketAddr,
        request: Request<Incoming>,
    ) -> Result<PendingResponse, String> {
        let request = rewrite(request, protocol, addr, peer)?;
        match protocol {
            Protocol::Http => {
                let response = self.http1.request(request);
                Ok(Box::pin(async move { response.await.map_err(|e| error_chain(&e)) }))
            }
            Protocol::Grpc => {
                let mut sender = self.http2_sender(addr).await?;
                let response = sender.send_request(request);
                Ok(Box::pin(async move { response.await.map_err(|e| error_chain(&e)) }))
            }
        }
    }

    /// The replica's HTTP/2 connection, opened (again) when there is none or it closed.
    async fn http2_sender(&self, addr: SocketAddr) -> Result<http2::SendRequest<Body>, String> {
        let existing = self.http2.lock().expect("http2 connections lock").get(&addr).cloned();
        if let Some(mut sender) = existing
            && !sender.is_closed()
            && sender.ready().await.is_ok()
        {
            return Ok(sender);
        }
        // Bounded: the model's next requests wait their turn behind this one.
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connecting to {addr}: no answer within {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        // Pings find a replica that went away without closing the connection.
        let handshake = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(CONNECT_TIMEOUT)
            .handshake(TokioIo::new(stream));
        let (mut sender, connection) = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| format!("HTTP/2 handshake with {addr}: no answer within {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| format!("HTTP/2 handshake with {addr}: {}", error_chain(&e)))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%addr, error = %error_chain(&error), "upstream HTTP/2 connection ended");
            }
        });
        sender
            .ready()
            .await
            .map_err(|e| format!("HTTP/2 connection to {addr}: {}", error_chain(&e)))?;
        let mut connections = self.http2.lock().expect("http2 connections lock");
        connections.retain(|_, s| !s.is_closed());
        connections.insert(addr, sender.clone());
        Ok(sender)
    }
}

/// The request as the replica gets it: its URI pointed at `addr` (HTTP/1.1) or kept with its
/// authority (HTTP/2), the host the client named kept, hop-by-hop headers dropped, the client's
/// address appended to `X-Forwarded-For`.
fn rewrite(
    request: Request<Incoming>,
    protocol: Protocol,
    addr: SocketAddr,
    peer: SocketAddr,
) -> Result<Request<Body>, String> {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let host = parts.uri.authority().map(|a| a.as_str().to_owned()).or_else(|| {
        parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    });
    strip_hop_by_hop(&mut parts.headers);
    let forwarded_for = match parts.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    parts.headers.insert(
        "x-forwarded-for",
        HeaderValue::from_str(&forwarded_for).map_err(|e| e.to_string())?,
    );
    match protocol {
        Protocol::Http => {
            parts.version = Version::HTTP_11;
            parts.uri = format!("http://{addr}{path}")
                .parse::<Uri>()
                .map_err(|e| e.to_string())?;
            if let Some(host) = host {
                parts
                    .headers
                    .insert(header::HOST, HeaderValue::from_str(&host).map_err(|e| e.to_string())?);
            }
        }
        Protocol::Grpc => {
            parts.version = Version::HTTP_2;
            let authority = host.unwrap_or_else(|| addr.to_string());
            parts.uri = format!("http://{authority}{path}")
                .parse::<Uri>()
                .map_err(|e| e.to_string())?;
            parts.headers.remove(header::HOST);
        }
    }
    Ok(Request::from_parts(parts, Body::new(body)))
}

/// The replica's response as the client gets it.
pub fn response_for_client(response: Response<Incoming>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Body::new(body))
}

/// Drops the headers of one connection (RFC 9110 §7.6.1), those the `Connection` header names
/// too; `TE: trailers` stays, as gRPC needs it end to end.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    let trailers_only = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")));
    headers.remove(header::TE);
    if trailers_only {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_stay_on_their_hop_and_te_trailers_goes_on() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers, deflate"),
            ("content-type", "application/grpc"),
            ("authorization", "Bearer t"),
        ] {
            headers.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ("authorization".to_owned(), "Bearer t".to_owned()),
                ("content-type".to_owned(), "application/grpc".to_owned()),
                ("te".to_owned(), "trailers".to_owned()),
            ]
        );
    }
}
