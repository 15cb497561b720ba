//! Answers a user can act on: exact error messages that print each cause once, readable
//! `Debug`, the spool's state in the stats, and warnings about misspelt variables.

mod common;

use std::error::Error as _;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outlast_client::http::{HttpError, HttpExporter};
use outlast_client::testing::{CannedResponse, MemoryExporter, Mode, Outcome, TestReceiver};
use outlast_client::{
    ClientBuilder, DropError, DropReason, ErrorChain, Exporter as _, Payload, SpoolState,
};
use tracing_subscriber::fmt::MakeWriter;

/// Every error in the chain prints its own message, not its source's.
fn assert_each_cause_once(e: &(dyn std::error::Error + 'static)) {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(src) = err.source() {
            let (outer, inner) = (err.to_string(), src.to_string());
            assert!(
                !outer.contains(&inner),
                "{outer:?} repeats its source {inner:?}"
            );
        }
        cur = err.source();
    }
}

#[tokio::test]
async fn a_401_drop_says_the_status_and_the_body_once() {
    let receiver = TestReceiver::start().await.expect("receiver");
    receiver
        .set_mode(Mode::Respond(
            CannedResponse::new(401).body(r#"{"error":"invalid token"}"#),
        ))
        .await
        .expect("mode");
    let dir = common::spool_dir();
    let exporter = HttpExporter::builder(receiver.url())
        .build()
        .expect("exporter");
    let client = common::builder(dir.path()).build(exporter).expect("client");
    let err = client
        .export(Payload::new(&b"{}"[..]))
        .await
        .expect_err("401 is permanent");
    let expected = r#"payload dropped: the backend rejected it permanently: HTTP status 401 Unauthorized: "{\"error\":\"invalid token\"}""#;
    assert_eq!(err.to_string(), expected);
    assert_eq!(format!("{err:?}"), expected);
    assert_eq!(ErrorChain(&err).to_string(), expected, "printed once");
    assert!(err.source().is_none());
    // The structured cause is still there.
    let http = err
        .export_error()
        .and_then(|e| e.source())
        .and_then(|s| s.downcast_ref::<HttpError>())
        .expect("the HttpError");
    assert_eq!(http.status().map(|s| s.as_u16()), Some(401));
    let _ = client.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_refused_connection_prints_each_cause_once() {
    let receiver = TestReceiver::start().await.expect("receiver");
    receiver.set_mode(Mode::Down).await.expect("down");
    let exporter = HttpExporter::builder(receiver.url())
        .build()
        .expect("exporter");
    let e = exporter
        .export(&Payload::new(&b"{}"[..]))
        .await
        .expect_err("refused");
    assert_eq!(e.to_string(), "export failed, retryable");
    let chain = ErrorChain(&e).to_string();
    assert!(
        chain.starts_with("export failed, retryable: cannot connect to the endpoint: "),
        "{chain}"
    );
    assert_eq!(format!("{e:?}"), chain);
    assert_each_cause_once(&e);
}

#[tokio::test]
async fn a_config_error_from_main_prints_its_message_not_its_fields() {
    let vars = [("OUTLAST_BATCH_SIZE".to_owned(), "many".to_owned())];
    let e: Box<dyn std::error::Error> = ClientBuilder::from_env_vars(vars)
        .expect_err("not a number")
        .into();
    // What `main() -> Result<(), Box<dyn Error>>` prints after `Error: `.
    assert_eq!(
        format!("{e:?}"),
        r#"invalid configuration: OUTLAST_BATCH_SIZE: "many" is not a whole number"#
    );
}

#[tokio::test]
async fn the_stats_say_why_there_is_no_spool_and_that_shutdown_closed_it() {
    let dir = common::spool_dir();
    let exporter = MemoryExporter::new();

    // A normal client: available, then closed by shutdown (not "unavailable").
    let client = common::client(dir.path(), &exporter);
    let s = client.stats();
    assert!(s.spool_available());
    assert_eq!(s.spool, SpoolState::Available);
    let report = client
        .shutdown(Duration::from_secs(5))
        .await
        .expect("shutdown");
    assert!(report.complete);
    let s = client.stats();
    assert!(!s.spool_available());
    assert_eq!(s.spool, SpoolState::Closed);
    assert!(s.spool.unavailable_reason().is_none());

    // A spool directory that is a file: unavailable, with the reason.
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"").expect("file");
    exporter.set_mode(Outcome::Fail);
    let client = common::client(&file, &exporter);
    let s = client.stats();
    assert!(!s.spool_available());
    let reason = s.spool.unavailable_reason().expect("a reason").to_string();
    assert!(reason.contains("not-a-directory"), "{reason}");
    // A payload that needs the spool is dropped, and the drop names the same cause.
    let err = client
        .export(Payload::new(&b"x"[..]))
        .await
        .expect_err("nowhere to keep it");
    assert_eq!(err.reason(), DropReason::SpoolUnavailable);
    assert_eq!(
        err.to_string(),
        format!(
            "payload dropped: the backend is unreachable and the spool is unavailable: the spool could not be opened: {reason}"
        )
    );
    // Still unavailable (not "closed") after shutdown: it never had one.
    let _ = client.shutdown(Duration::from_secs(5)).await;
    assert!(client.stats().spool.unavailable_reason().is_some());
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[test]
fn a_misspelt_variable_is_warned_about_with_the_closest_known_name() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let vars = [
            ("OUTLAST_ATTEMP_TIMEOUT", "5s"),
            ("OUTLAST_ATTEMPT_TIMEOUT", "5s"),
            ("OUTLAST_ENDPOINT", "http://127.0.0.1:4318/"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let _ = ClientBuilder::from_env_vars(vars).expect("valid");
    });
    let text = String::from_utf8(logs.0.lock().expect("log buffer").clone()).expect("utf-8");
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(
        warnings[0].contains(
            "outlast: unknown environment variable OUTLAST_ATTEMP_TIMEOUT ignored (did you mean OUTLAST_ATTEMPT_TIMEOUT?)"
        ),
        "{text}"
    );
}

#[test]
fn drop_errors_are_send_sync_and_readable_without_the_payload() {
    fn assert_send_sync_static<T: Send + Sync + 'static>() {}
    assert_send_sync_static::<DropError>();
    assert_send_sync_static::<SpoolState>();
}
