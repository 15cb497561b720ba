//! A minimal loopback HTTP receiver: the receiver of every HTTP row when the harness is built
//! without outlast (whose `TestReceiver` serves them otherwise), and of the HTTP tests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A minimal HTTP/1.1 receiver on 127.0.0.1: answers 200 to every request after reading its
/// body, and counts requests and body bytes. Stops when dropped.
///
/// Used when the harness is built without outlast (whose `TestReceiver` then serves every
/// row, references included), and by this module's test.
#[derive(Debug)]
pub(crate) struct LoopbackServer {
    addr: SocketAddr,
    // Read by the test only; counting costs the same on every row.
    #[cfg_attr(not(test), allow(dead_code))]
    requests: Arc<AtomicU64>,
    #[cfg_attr(not(test), allow(dead_code))]
    bytes: Arc<AtomicU64>,
    accept: JoinHandle<()>,
}

impl LoopbackServer {
    /// Binds a random port on 127.0.0.1 and serves on the current Tokio runtime.
    ///
    /// # Errors
    ///
    /// The port cannot be bound.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is spawned before the bind completes.
    pub(crate) async fn start() -> anyhow::Result<LoopbackServer> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding 127.0.0.1:0")?;
        let addr = listener.local_addr().context("local addr")?;
        let requests = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let (r, b) = (requests.clone(), bytes.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (r, b) = (r.clone(), b.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (r, b) = (r.clone(), b.clone());
                        async move {
                            let status = match req.into_body().collect().await {
                                Ok(body) => {
                                    b.fetch_add(body.to_bytes().len() as u64, Ordering::Relaxed);
                                    r.fetch_add(1, Ordering::Relaxed);
                                    StatusCode::OK
                                }
                                Err(_) => StatusCode::BAD_REQUEST,
                            };
                            let mut resp = Response::new(Full::new(Bytes::new()));
                            *resp.status_mut() = status;
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(LoopbackServer {
            addr,
            requests,
            bytes,
            accept,
        })
    }

    /// The URL to POST to.
    pub(crate) fn url(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    /// Requests answered so far.
    #[cfg(test)]
    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Body bytes received so far.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
