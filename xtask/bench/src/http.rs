//! The HTTP reference: a bare hyper 1.x pooled client (HTTP/1.1 keep-alive, the same stack
//! outlast's exporter is built on) sending payloads straight to a receiver given by URL.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Sends `count` POSTs of `body` to `url` with `concurrency` requests in flight, through one
/// pooled keep-alive hyper client, reading each response to its end. Fails on any non-2xx.
/// Returns the elapsed time from the first request to the last response.
///
/// # Errors
///
/// A request that fails or gets a non-2xx status ends the run with that error.
///
/// # Cancel safety
///
/// Not cancel safe: dropping the future leaves spawned senders running until they finish.
pub(crate) async fn bare_send(
    url: &Uri,
    body: Bytes,
    count: u64,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency.max(1) {
        let (client, next, url, body) = (client.clone(), next.clone(), url.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let req = Request::post(url.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .body(Full::new(body.clone()))
                    .context("building request")?;
                let resp = client.request(req).await.context("sending request")?;
                let status = resp.status();
                resp.into_body()
                    .collect()
                    .await
                    .context("reading response")?;
                anyhow::ensure!(status.is_success(), "receiver answered {status}");
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await.context("sender task panicked")??;
    }
    Ok(start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loopback::LoopbackServer;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bare_client_delivers_every_payload_to_the_loopback_server() {
        let server = LoopbackServer::start().await.expect("server");
        let url: Uri = server.url().parse().expect("url");
        bare_send(&url, Bytes::from_static(&[7u8; 1024]), 100, 4)
            .await
            .expect("send");
        assert_eq!(server.requests(), 100);
        assert_eq!(server.bytes(), 100 * 1024);
    }
}
