//! The HTTP exporter against the real loopback `TestReceiver`: status mapping, Retry-After,
//! outages, hangs, resets, gzip, headers, probes, connection reuse and env configuration.

use std::error::Error as _;
use std::future::Future;
use std::io::Write as _;
use std::time::{Duration, SystemTime};

use outlast_client::http::{HttpError, HttpExporter, HttpExporterBuilder, KEY_HEADER, Probe};
use outlast_client::testing::{Answer, CannedResponse, Mode, Recording, TestReceiver};
use outlast_client::{ConfigError, ContentType, ExportError, Exporter, Payload, Reachability};

/// Every network test finishes within this, or fails.
const TEST_BOUND: Duration = Duration::from_secs(30);

async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_BOUND, f)
        .await
        .expect("test finished within its bound");
}

async fn receiver() -> TestReceiver {
    TestReceiver::start().await.expect("receiver starts")
}

fn exporter(r: &TestReceiver) -> HttpExporter {
    HttpExporter::builder(format!("{}v1/logs", r.url()))
        .timeout(Duration::from_secs(5))
        .build()
        .expect("valid exporter settings")
}

fn http_error(e: &ExportError) -> &HttpError {
    e.source()
        .and_then(|s| s.downcast_ref::<HttpError>())
        .expect("the source is an HttpError")
}

fn payload(body: &'static [u8]) -> Payload {
    Payload::new(body).with_content_type(ContentType::Json)
}

#[tokio::test]
async fn status_200_is_ok_and_the_receiver_records_body_path_key_and_content_type() {
    bounded(async {
        let r = receiver().await;
        let e = exporter(&r);
        e.export(&payload(b"{\"a\":1}").with_key("batch-1"))
            .await
            .expect("200 is success");
        let got = r.received();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].path, "/v1/logs");
        assert_eq!(got[0].method, http::Method::POST);
        assert_eq!(got[0].body.as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(got[0].key.as_deref(), Some("batch-1"));
        assert_eq!(got[0].header(KEY_HEADER), Some("batch-1"));
        assert_eq!(got[0].header("content-type"), Some("application/json"));
        assert_eq!(got[0].answer, Answer::Status(200));
        assert_eq!(r.unique_keys(), ["batch-1"]);
    })
    .await;
}

#[tokio::test]
async fn status_400_is_permanent_with_the_status_and_a_bounded_body_excerpt() {
    bounded(async {
        let r = receiver().await;
        let e = exporter(&r);
        r.set_mode(Mode::Respond(
            CannedResponse::new(400).body("bad payload: field resourceSpans missing"),
        ))
        .await
        .expect("mode set");
        let err = e.export(&payload(b"{}")).await.expect_err("400 fails");
        assert!(err.is_permanent(), "{err}");
        let h = http_error(&err);
        assert_eq!(h.status(), Some(http::StatusCode::BAD_REQUEST));
        assert_eq!(
            h.body_excerpt(),
            Some("bad payload: field resourceSpans missing")
        );
        assert!(!h.is_connect() && !h.is_timeout());

        // A long body is cut to the excerpt size; the connection is still usable after.
        r.set_mode(Mode::Respond(
            CannedResponse::new(413).body(vec![b'x'; 100_000]),
        ))
        .await
        .expect("mode set");
        let err = e.export(&payload(b"{}")).await.expect_err("413 fails");
        assert!(err.is_permanent());
        assert_eq!(
            http_error(&err).body_excerpt().map(str::len),
            Some(outlast_client::http::BODY_EXCERPT_BYTES)
        );
        r.set_mode(Mode::Up).await.expect("mode set");
        e.export(&payload(b"{}")).await.expect("ok after errors");
    })
    .await;
}

#[tokio::test]
async fn retryable_statuses_are_retryable_and_other_4xx_permanent() {
    bounded(async {
        let r = receiver().await;
        let e = exporter(&r);
        for status in [408, 429, 500, 502, 503, 504] {
            r.set_mode(Mode::Status(status)).await.expect("mode set");
            let err = e.export(&payload(b"{}")).await.expect_err("error status");
            assert!(err.is_retryable(), "{status}: {err}");
            assert_eq!(err.retry_after(), None, "{status}");
            assert_eq!(http_error(&err).status().map(|s| s.as_u16()), Some(status));
        }
        for status in [401, 403, 404, 409, 413, 501, 302] {
            r.set_mode(Mode::Status(status)).await.expect("mode set");
            let err = e.export(&payload(b"{}")).await.expect_err("error status");
            assert!(err.is_permanent(), "{status}: {err}");
        }
        assert_eq!(r.accepted_count(), 0);
        assert_eq!(r.request_count(), 13);
    })
    .await;
}

#[tokio::test]
async fn a_status_list_replaces_the_retryable_statuses_keeping_retry_after_and_transport_failures()
{
    bounded(async {
        let r = receiver().await;
        let e = HttpExporter::builder(format!("{}v1/logs", r.url()))
            .timeout(Duration::from_secs(5))
            .retryable_statuses(
                [429, 502, 503, 504].map(|s| http::StatusCode::from_u16(s).expect("a status")),
            )
            .build()
            .expect("valid exporter settings");
        for status in [429, 502, 503, 504] {
            r.set_mode(Mode::Status(status)).await.expect("mode set");
            let err = e.export(&payload(b"{}")).await.expect_err("error status");
            assert!(err.is_retryable(), "{status}: {err}");
        }
        // Retried by default, not under this list.
        for status in [408, 500, 400, 413] {
            r.set_mode(Mode::Status(status)).await.expect("mode set");
            let err = e.export(&payload(b"{}")).await.expect_err("error status");
            assert!(err.is_permanent(), "{status}: {err}");
            assert_eq!(http_error(&err).status().map(|s| s.as_u16()), Some(status));
        }
        r.set_mode(Mode::TooManyRequests {
            retry_after: Some(Duration::from_secs(7)),
        })
        .await
        .expect("mode set");
        let err = e.export(&payload(b"{}")).await.expect_err("429");
        assert!(err.is_retryable());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
        r.set_mode(Mode::Down).await.expect("mode set");
        let err = e.export(&payload(b"{}")).await.expect_err("down");
        assert!(err.is_retryable(), "{err}");
    })
    .await;
}

#[tokio::test]
async fn retry_after_in_seconds_and_as_http_date_is_honoured_for_429_and_503() {
    bounded(async {
        let r = receiver().await;
        let e = exporter(&r);

        r.set_mode(Mode::TooManyRequests {
            retry_after: Some(Duration::from_secs(7)),
        })
        .await
        .expect("mode set");
        let err = e.export(&payload(b"{}")).await.expect_err("429");
        assert!(err.is_retryable());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));

        r.set_mode(Mode::Respond(
            CannedResponse::new(503).header("retry-after", "7"),
        ))
        .await
        .expect("mode set");
        let err = e.export(&payload(b"{}")).await.expect_err("503");
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));

        let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        for status in [429, 503] {
            r.set_mode(Mode::Respond(
                CannedResponse::new(status).header("Retry-After", date.clone()),
            ))
            .await
            .expect("mode set");
            let err = e.export(&payload(b"{}")).await.expect_err("error status");
            let d = err
                .retry_after()
                .expect("an HTTP-date Retry-After is honoured");
            assert!(
                d > Duration::from_secs(100) && d <= Duration::from_secs(120),
                "{status}: {d:?}"
            );
        }

        // Retry-After on a status that does not define it is not used.
        r.set_mode(Mode::Respond(
            CannedResponse::new(500).header("retry-after", "7"),
        ))
        .await
        .expect("mode set");
        let err = e.export(&payload(b"{}")).await.expect_err("500");
        assert!(err.is_retryable());
        assert_eq!(err.retry_after(), None);
    })
    .await;
}

#[tokio::test]
async fn an_unparsable_retry_after_is_ignored_not_an_error() {
    bounded(async {
        let r = receiver().await;
        let e = exporter(&r);
        for garbage in ["soon", "-5", "1.5", "Someday, 99 Foo 2099"] {
            r.set_mode(Mode::Respond(
                CannedResponse::new(429).header("retry-after", garbage),
            ))
            .await
            .expect("mode set");
            let err = e.export(&payload(b"{}")).await.expect_err("429");
            assert!(err.is_retryable(), "{garbage}");
            assert_eq!(err.retry_after(), None, "{garbage}");
            assert_eq!(http_error(&err).status().map(|s| s.as_u16()), Some(429));
        }
    })
    .await;
}

#[tokio::test]
async fn down_is_a_retryable_connect_error_and_the_same_exporter_recovers_when_up() {
    bounded(async {
        let r = receiver().await;
        let e = exporter(&r);
        e.export(&payload(b"before")).await.expect("up");

        r.set_mode(Mode::Down).await.expect("down");
        // The pooled connection was closed by the receiver; whether this attempt finds it
        // dead or opens a new one, it fails retryably.
        let err = e.export(&payload(b"during")).await.expect_err("down");
        assert!(err.is_retryable(), "{err}");
        let err = e.export(&payload(b"during")).await.expect_err("down");
        assert!(err.is_retryable(), "{err}");
        let h = http_error(&err);
        assert!(h.is_connect(), "{h:?}");
        assert_eq!(
            h.status(),
            None,
            "no status is made up for a refused connection"
        );

        r.set_mode(Mode::Up).await.expect("up again");
        e.export(&payload(b"after"))
            .await
            .expect("the pool recovers");
        let bodies: Vec<_> = r.received().into_iter().filter_map(|q| q.body).collect();
        assert_eq!(bodies, [&b"before"[..], &b"after"[..]]);
    })
    .await;
}

#[tokio::test]
async fn a_hanging_server_gives_a_timeout_within_the_request_timeout() {
    bounded(async {
        let r = receiver().await;
        r.set_mode(Mode::Hang).await.expect("mode set");
        let e = HttpExporter::builder(r.url())
            .timeout(Duration::from_millis(200))
            .build()
            .expect("valid settings");
        let err = tokio::time::timeout(Duration::from_secs(5), e.export(&payload(b"{}")))
            .await
            .expect("export returns, bounded by its own timeout")
            .expect_err("hang fails");
        assert!(err.is_timeout() && err.is_retryable(), "{err}");
        assert!(r.wait_for_requests(1, Duration::from_secs(5)).await);
        assert_eq!(r.received()[0].answer, Answer::Hung);

        // The timed-out attempt left the exporter usable (cancel safety).
        r.set_mode(Mode::Up).await.expect("mode set");
        e.export(&payload(b"{}")).await.expect("ok after a timeout");

        // A slow but answering server within the timeout is fine.
        r.set_mode(Mode::Slow(Duration::from_millis(20)))
            .await
            .expect("mode set");
        e.export(&payload(b"{}")).await.expect("slow but in time");
    })
    .await;
}

#[tokio::test]
async fn a_connection_reset_mid_request_is_retryable() {
    bounded(async {
        let r = receiver().await;
        let e = exporter(&r);
        r.set_mode(Mode::ResetMidRequest).await.expect("mode set");
        let err = e.export(&payload(b"{}")).await.expect_err("reset fails");
        assert!(err.is_retryable() && !err.is_timeout(), "{err}");
        let h = http_error(&err);
        assert_eq!(h.status(), None);
        assert!(h.is_transport(), "{h:?}");
        // The receiver really resets (RST), and the I/O error is kept in the source chain.
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(h);
        let mut reset = false;
        while let Some(c) = cur {
            reset |= c
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset);
            cur = c.source();
        }
        assert!(reset, "{h:?}");
        assert_eq!(r.received()[0].answer, Answer::Reset);

        r.set_mode(Mode::Up).await.expect("mode set");
        e.export(&payload(b"{}")).await.expect("ok after a reset");
    })
    .await;
}

#[tokio::test]
async fn gzip_bodies_decode_to_the_original_with_content_encoding_set() {
    bounded(async {
        let r = receiver().await;
        let e = HttpExporter::builder(r.url())
            .gzip(true)
            .build()
            .expect("valid settings");
        let original: Vec<u8> = (0..20_000u32)
            .flat_map(|i| (i % 97).to_le_bytes())
            .collect();
        e.export(&Payload::new(original.clone()).with_content_type(ContentType::Protobuf))
            .await
            .expect("200");
        let got = &r.received()[0];
        assert_eq!(got.header("content-encoding"), Some("gzip"));
        assert!(
            got.body_len < original.len() as u64,
            "the body is compressed"
        );
        let decoded = got
            .decoded_body()
            .expect("valid gzip")
            .expect("body recorded");
        assert_eq!(&decoded[..], &original[..]);
    })
    .await;
}

#[tokio::test]
async fn content_type_follows_each_payload() {
    bounded(async {
        let r = receiver().await;
        let e = exporter(&r);
        e.export(&Payload::new(&b"\x0a\x00"[..]).with_content_type(ContentType::Protobuf))
            .await
            .expect("ok");
        e.export(&payload(b"{}")).await.expect("ok");
        e.export(&Payload::new(&b"raw"[..])).await.expect("ok");
        let types: Vec<_> = r
            .received()
            .iter()
            .map(|q| q.header("content-type").map(str::to_owned))
            .collect();
        assert_eq!(
            types,
            [
                Some("application/x-protobuf".to_owned()),
                Some("application/json".to_owned()),
                Some("application/octet-stream".to_owned())
            ]
        );
        assert!(
            r.received()
                .iter()
                .all(|q| q.header("content-encoding").is_none())
        );
    })
    .await;
}

#[tokio::test]
async fn configured_headers_are_sent_and_debug_output_redacts_secrets() {
    bounded(async {
        let r = receiver().await;
        let builder = HttpExporter::builder(r.url())
            .header("Authorization", "Bearer hunter2-token")
            .header("x-api-key", "k-12345")
            .header("cookie", "session=abcdef")
            .header("x-tenant", "acme");
        let builder_debug = format!("{builder:?}");
        let e = builder.build().expect("valid settings");
        e.export(&payload(b"{}")).await.expect("ok");
        let got = &r.received()[0];
        assert_eq!(got.header("authorization"), Some("Bearer hunter2-token"));
        assert_eq!(got.header("x-api-key"), Some("k-12345"));
        assert_eq!(got.header("x-tenant"), Some("acme"));
        assert!(
            got.header("user-agent")
                .is_some_and(|u| u.starts_with("outlast/"))
        );

        for debug in [format!("{e:?}"), format!("{e:#?}"), builder_debug] {
            for secret in ["hunter2", "k-12345", "abcdef"] {
                assert!(!debug.contains(secret), "{secret} leaked: {debug}");
            }
            assert!(
                debug.contains("acme") && debug.contains("<redacted>"),
                "{debug}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn probe_is_reachable_when_up_and_unreachable_when_down() {
    bounded(async {
        let r = receiver().await;
        let tcp = exporter(&r);
        let health = HttpExporter::builder(r.url())
            .probe(Probe::HealthUrl(format!("{}health", r.url())))
            .build()
            .expect("valid settings");
        let none = HttpExporter::builder(r.url())
            .probe(Probe::Disabled)
            .build()
            .expect("valid settings");
        assert_eq!(tcp.probe().await, Reachability::Reachable);
        assert_eq!(health.probe().await, Reachability::Reachable);
        assert_eq!(none.probe().await, Reachability::Unsupported);
        assert_eq!(
            r.received().last().map(|q| q.path.as_str()),
            Some("/health")
        );

        r.set_mode(Mode::Status(503)).await.expect("mode set");
        assert_eq!(
            tcp.probe().await,
            Reachability::Reachable,
            "TCP still connects"
        );
        assert_eq!(
            health.probe().await,
            Reachability::Unreachable,
            "health is not 2xx"
        );

        r.set_mode(Mode::Down).await.expect("down");
        assert_eq!(tcp.probe().await, Reachability::Unreachable);
        assert_eq!(health.probe().await, Reachability::Unreachable);

        r.set_mode(Mode::Up).await.expect("up");
        assert_eq!(tcp.probe().await, Reachability::Reachable);
    })
    .await;
}

#[tokio::test]
async fn a_hanging_health_url_probe_is_bounded_by_the_probe_timeout() {
    bounded(async {
        let r = receiver().await;
        r.set_mode(Mode::Hang).await.expect("mode set");
        let e = HttpExporter::builder(r.url())
            .probe(Probe::HealthUrl(r.url()))
            .probe_timeout(Duration::from_millis(200))
            .build()
            .expect("valid settings");
        let got = tokio::time::timeout(Duration::from_secs(5), e.probe())
            .await
            .expect("probe returns, bounded by its own timeout");
        assert_eq!(got, Reachability::Unreachable);
    })
    .await;
}

#[tokio::test]
async fn sequential_exports_reuse_one_connection() {
    bounded(async {
        let r = receiver().await;
        let e = exporter(&r);
        for i in 0..20 {
            e.export(&payload(b"{}").with_key(format!("k{i}")))
                .await
                .expect("ok");
        }
        // Error statuses also leave the connection reusable (the body is drained).
        r.set_mode(Mode::Status(503)).await.expect("mode set");
        for _ in 0..5 {
            e.export(&payload(b"{}")).await.expect_err("503");
        }
        assert_eq!(r.request_count(), 25);
        assert_eq!(r.connections_accepted(), 1);
        assert!(r.received().iter().all(|q| q.connection == 0));
    })
    .await;
}

#[tokio::test]
async fn receiver_counts_duplicate_keys_among_accepted_requests_only() {
    bounded(async {
        let r = receiver().await;
        let e = exporter(&r);
        for k in ["a", "b", "a"] {
            e.export(&payload(b"{}").with_key(k)).await.expect("ok");
        }
        r.set_mode(Mode::Status(500)).await.expect("mode set");
        e.export(&payload(b"{}").with_key("c"))
            .await
            .expect_err("500");
        e.export(&payload(b"{}").with_key("b"))
            .await
            .expect_err("500");
        assert_eq!(r.unique_keys(), ["a", "b"]);
        assert_eq!(r.duplicates(), 1);
        assert_eq!(r.duplicate_keys(), [("a".to_owned(), 2)]);
        assert_eq!(r.request_count(), 5);
        assert_eq!(r.accepted_count(), 3);
        let seqs: Vec<u64> = r.received().iter().map(|q| q.seq).collect();
        assert_eq!(seqs, [0, 1, 2, 3, 4]);
    })
    .await;
}

#[tokio::test]
async fn keys_and_sizes_recording_keeps_no_bodies_or_headers() {
    bounded(async {
        let r = TestReceiver::builder()
            .recording(Recording::KeysAndSizes)
            .start()
            .await
            .expect("receiver starts");
        let e = exporter(&r);
        e.export(&payload(b"12345").with_key("k"))
            .await
            .expect("ok");
        let got = &r.received()[0];
        assert_eq!((got.body.as_ref(), got.headers.as_ref()), (None, None));
        assert_eq!(got.body_len, 5);
        assert_eq!(got.key.as_deref(), Some("k"));
        assert_eq!(r.bytes_received(), 5);
        assert!(r.wait_for_unique_keys(1, Duration::from_secs(1)).await);
    })
    .await;
}

#[tokio::test]
async fn a_dropped_receiver_stops_listening() {
    bounded(async {
        let r = receiver().await;
        let addr = r.addr();
        let e = exporter(&r);
        e.export(&payload(b"{}")).await.expect("ok");
        drop(r);
        // The accept task is aborted asynchronously; give the runtime a moment.
        let mut refused = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused, "nothing listens after drop");
        let err = e.export(&payload(b"{}")).await.expect_err("receiver gone");
        assert!(err.is_retryable());
    })
    .await;
}

#[tokio::test]
async fn a_shut_down_receiver_refuses_mode_changes_but_keeps_its_records() {
    bounded(async {
        let r = receiver().await;
        exporter(&r).export(&payload(b"{}")).await.expect("ok");
        r.shutdown().await;
        let err = r.set_mode(Mode::Up).await.expect_err("stopped");
        assert!(err.is_stopped());
        assert_eq!(r.request_count(), 1);
        assert!(tokio::net::TcpStream::connect(r.addr()).await.is_err());
    })
    .await;
}

fn param_of(e: &ConfigError) -> &'static str {
    match e {
        ConfigError::Invalid { param, .. } => param,
        _ => "other",
    }
}

#[tokio::test]
async fn from_env_vars_configures_endpoint_headers_timeout_gzip_and_ca() {
    bounded(async {
        let r = receiver().await;
        let url = r.url();
        let e = HttpExporterBuilder::from_env_vars([
            ("PATH", "/usr/bin"),
            ("OUTLAST_ENDPOINT", url.as_str()),
            (
                "OUTLAST_HEADERS",
                " x-tenant = acme , authorization=Bearer%20abc%3D ",
            ),
            ("OUTLAST_HTTP_TIMEOUT", "1500ms"),
            ("OUTLAST_HTTP_GZIP", "true"),
        ])
        .expect("valid variables")
        .build()
        .expect("valid settings");
        assert_eq!(e.timeout(), Duration::from_millis(1500));
        assert!(!format!("{e:?}").contains("abc"));
        e.export(&payload(b"hello")).await.expect("ok");
        let got = &r.received()[0];
        assert_eq!(got.header("x-tenant"), Some("acme"));
        assert_eq!(got.header("authorization"), Some("Bearer abc="));
        assert_eq!(got.header("content-encoding"), Some("gzip"));
        assert_eq!(
            got.decoded_body().expect("gzip").as_deref(),
            Some(&b"hello"[..])
        );
    })
    .await;
}

#[test]
fn from_env_vars_errors_name_the_variable() {
    let ok = ("OUTLAST_ENDPOINT", "http://127.0.0.1:4318/v1/traces");
    let cases: [(&[(&str, &str)], &str); 8] = [
        (&[], "OUTLAST_ENDPOINT"),
        (&[("OUTLAST_ENDPOINT", "  ")], "OUTLAST_ENDPOINT"),
        (&[("OUTLAST_ENDPOINT", "ftp://x/")], "OUTLAST_ENDPOINT"),
        (&[ok, ("OUTLAST_HEADERS", "novalue")], "OUTLAST_HEADERS"),
        (&[ok, ("OUTLAST_HEADERS", "a=%GG")], "OUTLAST_HEADERS"),
        (
            &[ok, ("OUTLAST_HTTP_TIMEOUT", "soon")],
            "OUTLAST_HTTP_TIMEOUT",
        ),
        (&[ok, ("OUTLAST_HTTP_GZIP", "maybe")], "OUTLAST_HTTP_GZIP"),
        (
            &[ok, ("OUTLAST_CA_FILE", "/nonexistent/outlast/ca.pem")],
            "OUTLAST_CA_FILE",
        ),
    ];
    for (vars, var) in cases {
        let e = HttpExporterBuilder::from_env_vars(vars.iter().copied()).expect_err(var);
        assert_eq!(param_of(&e), var, "{e}");
        assert!(e.to_string().contains(var), "{e}");
    }
    let zero = HttpExporterBuilder::from_env_vars([ok, ("OUTLAST_HTTP_TIMEOUT", "0")])
        .expect_err("zero timeout");
    assert_eq!(param_of(&zero), "OUTLAST_HTTP_TIMEOUT");

    let mut not_pem = tempfile::NamedTempFile::new().expect("temp file");
    not_pem.write_all(b"not a certificate").expect("write");
    let path = not_pem.path().to_str().expect("utf-8 temp path").to_owned();
    let e = HttpExporterBuilder::from_env_vars([ok, ("OUTLAST_CA_FILE", path.as_str())])
        .expect_err("not PEM");
    assert_eq!(param_of(&e), "OUTLAST_CA_FILE");
}

#[test]
fn from_env_vars_rejects_non_utf8_values_naming_the_variable() {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt as _;
    let vars = [(
        OsString::from("OUTLAST_ENDPOINT"),
        OsString::from_vec(vec![0x68, 0xff, 0x70]),
    )];
    let e = HttpExporterBuilder::from_env_vars(vars).expect_err("non UTF-8");
    assert_eq!(param_of(&e), "OUTLAST_ENDPOINT");
}

#[test]
fn exporter_reports_its_max_in_flight() {
    let e = HttpExporter::builder("http://127.0.0.1:9/")
        .max_in_flight(3)
        .build()
        .expect("valid settings");
    assert_eq!(e.max_in_flight(), 3);
    let d = HttpExporter::builder("http://127.0.0.1:9/")
        .build()
        .expect("valid settings");
    assert_eq!(
        d.max_in_flight(),
        outlast_client::http::DEFAULT_HTTP_MAX_IN_FLIGHT
    );
}

#[tokio::test]
async fn a_garbage_answer_is_a_retryable_invalid_response() {
    bounded(async {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            s.write_all(b"this is not HTTP at all\r\n\r\n")
                .await
                .expect("write garbage");
            let _ = s.shutdown().await;
        });
        let e = HttpExporter::builder(format!("http://{addr}/"))
            .timeout(Duration::from_secs(5))
            .build()
            .expect("valid settings");
        let err = e.export(&payload(b"{}")).await.expect_err("garbage");
        assert!(err.is_retryable() && !err.is_timeout(), "{err}");
        let h = http_error(&err);
        assert!(h.is_invalid_response(), "{h:?}");
        assert_eq!(h.status(), None);
        server.await.expect("server task ends");
    })
    .await;
}

#[tokio::test]
async fn export_many_sends_one_request_listing_every_key_in_order() {
    bounded(async {
        let r = receiver().await;
        let e = HttpExporter::builder(r.url())
            .payload_framing(outlast_client::http::PayloadFraming::NdJson)
            .build()
            .expect("valid");
        let a = payload(b"{\"a\":1}").with_key("a");
        let b = payload(b"{\"b\":2}");
        let c = payload(b"{\"c\":3}").with_key("c");
        assert!(e.coalescing(&a).is_some());
        e.export_many(&[a, b, c]).await.expect("accepted");
        let got = r.received();
        assert_eq!(got.len(), 1, "one request");
        let req = &got[0];
        assert_eq!(
            req.body.as_deref(),
            Some(&b"{\"a\":1}\n{\"b\":2}\n{\"c\":3}"[..])
        );
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert_eq!(req.header(outlast_client::http::RECORDS_HEADER), Some("3"));
        let keys: Vec<&str> = req
            .headers
            .as_ref()
            .expect("recorded")
            .get_all(outlast_client::http::KEYS_HEADER)
            .iter()
            .map(|v| v.to_str().expect("text"))
            .collect();
        assert_eq!(
            keys,
            ["a", "", "c"],
            "one line per payload, empty without a key"
        );
        assert_eq!(req.key, None);
        assert_eq!(req.keys, ["a", "c"]);
    })
    .await;
}

#[test]
fn only_a_declared_framing_lets_payloads_merge() {
    let url = "http://127.0.0.1:1/";
    let proto = Payload::new(&b"\x0a\x00"[..]).with_content_type(ContentType::Protobuf);
    let json = payload(b"{}");
    let opaque = HttpExporter::builder(url).build().expect("valid");
    assert_eq!(opaque.coalescing(&proto), None, "opaque by default");
    let otlp = HttpExporter::builder(url)
        .payload_framing(outlast_client::http::PayloadFraming::OtlpProtobuf)
        .build()
        .expect("valid");
    assert!(otlp.coalescing(&proto).is_some());
    assert_eq!(
        otlp.coalescing(&json),
        None,
        "OTLP framing merges protobuf only"
    );
}
