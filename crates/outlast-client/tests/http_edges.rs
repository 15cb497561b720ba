//! The HTTP exporter's smaller edges: a bounded CA file read, endpoint URLs refused with a
//! hint when the exporter is built, and payload keys that always reach the receiver.

use std::time::Duration;

use outlast_client::http::{HttpExporter, HttpExporterBuilder, MAX_CA_FILE_BYTES, encode_key};
use outlast_client::testing::TestReceiver;
use outlast_client::{ConfigError, Exporter as _, Payload};

fn refused(result: Result<impl std::fmt::Debug, ConfigError>) -> (&'static str, String) {
    match result.expect_err("refused") {
        ConfigError::Invalid { param, reason } => (param, reason),
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn a_ca_file_that_never_ends_is_refused_at_once_naming_the_parameter() {
    let (param, reason) = refused(
        HttpExporter::builder("https://127.0.0.1:1/")
            .ca_file("/dev/zero")
            .build(),
    );
    assert_eq!(param, "ca_file");
    assert_eq!(
        reason,
        "\"/dev/zero\" is not a regular file (a PEM file of CA certificates is expected)"
    );
    let (param, _) = refused(HttpExporterBuilder::from_env_vars([
        ("OUTLAST_ENDPOINT", "https://127.0.0.1:1/"),
        ("OUTLAST_CA_FILE", "/dev/zero"),
    ]));
    assert_eq!(param, "OUTLAST_CA_FILE");
}

#[test]
fn a_ca_file_larger_than_the_bound_is_refused_without_being_read_whole() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("huge.pem");
    let file = std::fs::File::create(&path).expect("create");
    // Sparse: 1 GiB on paper, nothing on disk.
    file.set_len(1 << 30).expect("set_len");
    let (param, reason) = refused(
        HttpExporter::builder("https://127.0.0.1:1/")
            .ca_file(&path)
            .build(),
    );
    assert_eq!(param, "ca_file");
    assert!(
        reason.ends_with(&format!(
            "is larger than {MAX_CA_FILE_BYTES} bytes: not a CA bundle (a bundle of every public root is about 250 KiB)"
        )),
        "{reason}"
    );
    // At the bound exactly, the file is read (and refused for holding no certificate).
    file.set_len(MAX_CA_FILE_BYTES).expect("set_len");
    let (_, reason) = refused(
        HttpExporter::builder("https://127.0.0.1:1/")
            .ca_file(&path)
            .build(),
    );
    assert!(reason.starts_with("no PEM certificate"), "{reason}");
}

#[test]
fn an_endpoint_without_a_scheme_is_refused_with_the_fix() {
    let (param, reason) = refused(HttpExporterBuilder::from_env_vars([(
        "OUTLAST_ENDPOINT",
        "127.0.0.1:4318/v1/logs",
    )]));
    assert_eq!(param, "OUTLAST_ENDPOINT");
    assert_eq!(
        reason,
        "missing scheme: add http:// or https:// in front (e.g. \"http://127.0.0.1:4318/v1/logs\")"
    );
}

#[test]
fn an_endpoint_port_out_of_range_is_refused_when_the_exporter_is_built() {
    for port in ["99999", "0", "65536", "http"] {
        let url = format!("http://127.0.0.1:{port}/v1/logs");
        let (param, reason) = refused(HttpExporter::builder(&url).build());
        assert_eq!(param, "url");
        assert_eq!(
            reason,
            format!("port {port:?} is not a number from 1 to 65535")
        );
    }
}

#[tokio::test]
async fn keys_with_newlines_spaces_percent_or_non_ascii_arrive_percent_encoded() {
    let receiver = TestReceiver::start().await.expect("receiver");
    let exporter = HttpExporter::builder(receiver.url())
        .timeout(Duration::from_secs(5))
        .build()
        .expect("exporter");
    let keys = [
        "plain-key_1.2",
        "two\nlines",
        " padded ",
        "größe",
        "100%",
        "tab\there",
        "a,b",
        "",
    ];
    for key in keys {
        exporter
            .export(&Payload::new(&b"{}"[..]).with_key(key))
            .await
            .expect("delivered");
    }
    let got: Vec<Option<String>> = receiver.received().into_iter().map(|r| r.key).collect();
    let expected: Vec<Option<String>> = [
        "plain-key_1.2",
        "two%0Alines",
        "%20padded%20",
        "gr%C3%B6%C3%9Fe",
        "100%25",
        "tab%09here",
        "a%2Cb",
        "",
    ]
    .into_iter()
    .map(|k| Some(k.to_owned()))
    .collect();
    assert_eq!(got, expected);
    // Each one is what `encode_key` says, and it decodes back to the key.
    for (key, sent) in keys.iter().zip(&got) {
        let sent = sent.as_deref().expect("key sent");
        assert_eq!(encode_key(key), sent);
        assert_eq!(percent_decode(sent), *key);
    }
}

/// A plain percent-decoder, as a backend would use.
fn percent_decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("ascii");
            out.push(u8::from_str_radix(hex, 16).expect("hex"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("utf-8")
}
