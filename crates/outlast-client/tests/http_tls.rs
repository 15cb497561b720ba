//! HTTPS with the HTTP exporter: a loopback TLS server whose certificate is signed by a
//! private CA generated here; verification is on by default and a custom CA makes it pass.

use std::convert::Infallible;
use std::error::Error as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use outlast_client::http::{HttpError, HttpExporter};
use outlast_client::{Exporter, Payload};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::PrivateKeyDer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Every network test finishes within this, or fails.
const TEST_BOUND: Duration = Duration::from_secs(30);

struct TlsServer {
    addr: SocketAddr,
    ca_pem: String,
    task: JoinHandle<()>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A private CA, a `localhost` server certificate signed by it, and an HTTPS server on
/// 127.0.0.1 answering 200 to everything.
async fn tls_server() -> TlsServer {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().expect("server key");
    let server_params =
        CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .expect("server certificate");

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone()],
            PrivateKeyDer::try_from(server_key.serialize_der()).expect("server key DER"),
        )
        .expect("server TLS config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            conns.spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    TlsServer {
        addr,
        ca_pem: ca_cert.pem(),
        task,
    }
}

fn url(s: &TlsServer) -> String {
    format!("https://localhost:{}/v1/traces", s.addr.port())
}

#[tokio::test]
async fn https_with_the_custom_ca_succeeds() {
    tokio::time::timeout(TEST_BOUND, async {
        let s = tls_server().await;
        let e = HttpExporter::builder(url(&s))
            .ca_pem(s.ca_pem.clone())
            .timeout(Duration::from_secs(5))
            .build()
            .expect("valid settings");
        e.export(&Payload::new(&b"x"[..]))
            .await
            .expect("TLS export");
        e.export(&Payload::new(&b"y"[..]))
            .await
            .expect("second TLS export");

        // The same CA from a file.
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(s.ca_pem.as_bytes()).expect("write CA");
        let from_file = HttpExporter::builder(url(&s))
            .ca_file(file.path())
            .timeout(Duration::from_secs(5))
            .build()
            .expect("valid settings");
        from_file
            .export(&Payload::new(&b"z"[..]))
            .await
            .expect("TLS export with a CA file");
    })
    .await
    .expect("test finished within its bound");
}

#[tokio::test]
async fn https_without_the_custom_ca_fails_verification_retryably() {
    tokio::time::timeout(TEST_BOUND, async {
        let s = tls_server().await;
        let e = HttpExporter::builder(url(&s))
            .timeout(Duration::from_secs(5))
            .build()
            .expect("valid settings");
        let err = e
            .export(&Payload::new(&b"x"[..]))
            .await
            .expect_err("an unknown CA is refused: verification is on by default");
        assert!(err.is_retryable() && !err.is_timeout(), "{err}");
        let h = err
            .source()
            .and_then(|s| s.downcast_ref::<HttpError>())
            .expect("HttpError source");
        assert!(h.is_connect(), "{h:?}");
        // The certificate error is kept in the source chain, not flattened.
        let mut chain = String::new();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(h);
        while let Some(c) = cur {
            chain.push_str(&format!("{c} / "));
            cur = c.source();
        }
        assert!(chain.to_lowercase().contains("certificate"), "{chain}");
    })
    .await
    .expect("test finished within its bound");
}
