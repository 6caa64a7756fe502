//! Reads from peers the operator does not control, bounded in bytes as well as in time. A model
//! server runs the image a ModelDeployment's author chose, so its answers (to the model probe,
//! on its metrics endpoint) may be anything, of any length; so may a node agent's. Every body
//! read here stops at a limit, and an answer longer than that is an error that names the limit,
//! so that no peer can grow the operator's memory. Reads in flight at once share one budget,
//! [`IN_FLIGHT_BUDGET`]: many hostile peers answering many reads together cannot add up past it
//! either, since a read that would take the budget past its end fails at once (waiting could
//! leave every reader holding part of it). Time is bounded by each HTTP client's own timeout,
//! which covers the body too.

use std::ops::Deref;

use bytes::Bytes;
use tokio::sync::{Semaphore, SemaphorePermit};

/// The most a model probe reads of an answer: they are a few hundred bytes of JSON.
pub const PROBE_BODY_LIMIT: usize = 256 * 1024;
/// The most of one gRPC message a model probe decodes (Triton's metadata of a model with many
/// inputs stays far below it).
pub const PROBE_MESSAGE_LIMIT: usize = 1024 * 1024;
/// The most of a runtime's Prometheus text: a Triton serving hundreds of models stays below it.
pub const METRICS_BODY_LIMIT: usize = 4 * 1024 * 1024;
/// The most of a node agent's samples: eight GPUs with their MIG slices and pods are a few KiB.
pub const SAMPLES_BODY_LIMIT: usize = 1024 * 1024;

/// The HTTP client for peers: every request, connecting included, ends within `timeout`, and a
/// redirect is an answer, never followed. Following one would let a model server send the
/// operator's request anywhere the operator can reach (a cloud metadata service, another
/// tenant's pod) and have the answer quoted back in the model's status.
pub fn peer_client(timeout: std::time::Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client without TLS settings builds")
}

/// The most the bodies being read from peers hold together, across every read in the process:
/// four metrics endpoints at their limit, or a hundred ordinary answers of 100 KiB. A read past
/// it fails, and is tried again at the next probe or request.
pub const IN_FLIGHT_BUDGET: usize = 16 * 1024 * 1024;

static IN_FLIGHT: Semaphore = Semaphore::const_new(IN_FLIGHT_BUDGET);

/// Why a body was not read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the answer is longer than the {limit} bytes read from a peer")]
    TooLarge { limit: usize },
    #[error(
        "the operator is already holding {budget} bytes of answers from peers, so this one was not read; it is read again next time"
    )]
    OverBudget { budget: usize },
    #[error("reading the answer: {0}")]
    Transfer(#[from] reqwest::Error),
}

/// A body read within its limits. It holds its share of [`IN_FLIGHT_BUDGET`] until dropped, so
/// parse it and let it go.
#[derive(Debug)]
pub struct Body {
    bytes: Bytes,
    _share: Option<SemaphorePermit<'static>>,
}

impl Deref for Body {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Takes `bytes` more of the budget into `share`, or says that the budget is spent.
fn reserve(share: &mut Option<SemaphorePermit<'static>>, bytes: usize) -> Result<(), BodyError> {
    if bytes == 0 {
        return Ok(());
    }
    let over_budget = || BodyError::OverBudget {
        budget: IN_FLIGHT_BUDGET,
    };
    let wanted = u32::try_from(bytes).map_err(|_| over_budget())?;
    let more = IN_FLIGHT.try_acquire_many(wanted).map_err(|_| over_budget())?;
    match share {
        Some(held) => held.merge(more),
        None => *share = Some(more),
    }
    Ok(())
}

/// The body of `response`, if it is at most `limit` bytes and the process-wide budget has room
/// for it. A declared length over the limit is refused before anything is read; otherwise
/// chunks are taken until the limit is passed. The budget is charged for the buffer's capacity,
/// not only what it holds, since that is what the process keeps.
pub async fn body_within(mut response: reqwest::Response, limit: usize) -> Result<Body, BodyError> {
    if response.content_length().is_some_and(|length| length > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut share = None;
    let mut body: Vec<u8> = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let needed = body.len() + chunk.len();
        if needed > limit {
            return Err(BodyError::TooLarge { limit });
        }
        if needed > body.capacity() {
            // Doubling, as a Vec would, but never past the limit and always paid for first.
            let capacity = needed.max(body.capacity() * 2).min(limit);
            reserve(&mut share, capacity - body.capacity())?;
            body.reserve_exact(capacity - body.len());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Body {
        bytes: Bytes::from(body),
        _share: share,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server that answers every request with a chunked body that never ends, or with a
    /// declared length of `declared` bytes it never sends.
    async fn endless_server(declared: Option<u64>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0u8; 1024];
                    let _ = stream.read(&mut request).await;
                    let head = match declared {
                        Some(length) => format!("HTTP/1.1 200 OK\r\ncontent-length: {length}\r\n\r\n"),
                        None => "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_owned(),
                    };
                    if stream.write_all(head.as_bytes()).await.is_err() || declared.is_some() {
                        return;
                    }
                    let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
                    // Bounded: the client gives up long before this many.
                    for _ in 0..100_000 {
                        if stream.write_all(chunk.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        address
    }

    #[tokio::test]
    async fn an_endless_body_stops_at_the_limit() {
        let address = endless_server(None).await;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let response = http.get(format!("http://{address}/")).send().await.unwrap();
        let error = body_within(response, 1024 * 1024).await.unwrap_err();
        assert!(matches!(error, BodyError::TooLarge { limit: 1_048_576 }), "{error}");
        assert_eq!(
            error.to_string(),
            "the answer is longer than the 1048576 bytes read from a peer"
        );
    }

    #[tokio::test]
    async fn peers_redirects_are_answers_not_followed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).await;
                let answer = "HTTP/1.1 302 Found\r\nlocation: /latest/meta-data/\r\ncontent-length: 0\r\n\r\n";
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        let response = peer_client(Duration::from_secs(5))
            .get(format!("http://{address}/models/m"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 302);
        assert_eq!(
            requests.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "the redirect was not followed"
        );
    }

    #[tokio::test]
    async fn reads_together_stay_within_the_budget_and_give_it_back() {
        let mut share = None;
        reserve(&mut share, IN_FLIGHT_BUDGET / 2).unwrap();
        let mut second = None;
        reserve(&mut second, IN_FLIGHT_BUDGET / 4).unwrap();
        let error = reserve(&mut None, IN_FLIGHT_BUDGET / 2).unwrap_err();
        assert!(matches!(error, BodyError::OverBudget { .. }), "{error}");
        drop((share, second));
        // Other tests read bodies at the same time, but far less than half the budget.
        reserve(&mut None, IN_FLIGHT_BUDGET / 2).expect("the shares were given back");
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_unread() {
        let address = endless_server(Some(10 * 1024 * 1024 * 1024)).await;
        let http = reqwest::Client::new();
        let response = http.get(format!("http://{address}/")).send().await.unwrap();
        assert!(matches!(
            body_within(response, 4096).await,
            Err(BodyError::TooLarge { limit: 4096 })
        ));
    }
}
