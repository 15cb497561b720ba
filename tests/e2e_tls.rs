//! End to end over HTTPS: a receiver whose certificate is signed by a private CA made in
//! the test; the client's HTTP exporter, trusting that CA, delivers through the pipeline,
//! and what was spooled while the receiver was down is replayed over TLS once it is back.

use outlast_client::http::{HttpExporter, PayloadFraming};
use outlast_client::{Client, ClientBuilder, ContentType, Delivery, Payload};
use outlast_tests::{
    CALM_ATTEMPT_TIMEOUT, GENEROUS_FLUSH, Ledger, TlsReceiver, assert_arrival_order, bounded,
    fast_builder, first_arrivals,
};

/// Records per replay batch.
const BATCH: usize = 5;

fn client_for(receiver: &TlsReceiver, dir: &std::path::Path, trust_ca: bool) -> Client {
    let mut exporter = HttpExporter::builder(receiver.url()).timeout(CALM_ATTEMPT_TIMEOUT);
    if trust_ca {
        exporter = exporter.ca_pem(receiver.ca_pem().to_owned());
    }
    fast_builder(dir)
        .attempt_timeout(CALM_ATTEMPT_TIMEOUT)
        .batch_size(BATCH)
        .build(exporter.build().expect("valid exporter settings"))
        .expect("valid client settings")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_private_ca_delivers_and_replays_the_outage_backlog_over_tls() {
    bounded("the TLS test", async {
        let dir = tempfile::tempdir().expect("temporary spool directory");
        let receiver = TlsReceiver::start().await;
        let client = client_for(&receiver, dir.path(), true);
        let mut ledger = Ledger::default();

        for i in 0..5 {
            assert_eq!(ledger.export(&client, i).await, Ok(Delivery::Delivered));
        }
        assert!(receiver.handshakes() >= 1);
        assert_eq!(receiver.keys(), ledger.delivered);

        receiver.go_down().await;
        for i in 5..25 {
            assert_eq!(ledger.export(&client, i).await, Ok(Delivery::Spooled));
        }
        assert_eq!(receiver.keys().len(), 5, "nothing arrives while down");
        let handshakes_before = receiver.handshakes();

        receiver.come_up().await;
        let report = client.force_flush(GENEROUS_FLUSH).await;
        assert!(report.complete, "{report:?}");
        assert_eq!(report.remaining_records, 0, "{report:?}");
        assert_eq!(report.delivered, 20, "{report:?}");
        assert!(
            receiver.handshakes() > handshakes_before,
            "the replay went over new TLS connections"
        );

        let keys = receiver.keys();
        assert_eq!(
            keys.len(),
            25,
            "exactly once: the receiver stayed up: {keys:?}"
        );
        assert_arrival_order(
            &first_arrivals(&keys),
            &ledger.accepted,
            ClientBuilder::DEFAULT_MAX_IN_FLIGHT,
        );
        let stats = client.stats();
        assert_eq!((stats.exported, stats.replayed), (5, 20), "{stats:?}");
        assert_eq!(stats.dropped.total(), 0, "{stats:?}");
        ledger.assert_counters_add_up(&stats);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_without_the_private_ca_is_refused_and_the_payload_kept_in_the_spool() {
    bounded("the untrusted TLS test", async {
        let dir = tempfile::tempdir().expect("temporary spool directory");
        let receiver = TlsReceiver::start().await;
        let client = client_for(&receiver, dir.path(), false);
        let mut ledger = Ledger::default();

        // Verification is on: an unknown CA is a (retryable) connection failure, so the
        // payload is kept, never sent in clear, never dropped.
        assert_eq!(ledger.export(&client, 0).await, Ok(Delivery::Spooled));
        assert_eq!(receiver.handshakes(), 0);
        assert!(receiver.keys().is_empty());
        let stats = client.stats();
        assert_eq!(stats.spool_records, 1, "{stats:?}");
        assert_eq!(stats.dropped.total(), 0, "{stats:?}");
    })
    .await;
}

/// An OTLP-like record: one length-delimited field 1 holding `n` filler bytes of `tag`, so
/// that records concatenated are one valid message and each can be found in a merged body.
fn otlp_like(tag: u8, n: usize) -> Vec<u8> {
    assert!(n < 128, "a one-byte length");
    let mut v = vec![0x0a, n as u8];
    v.extend(std::iter::repeat_n(tag, n));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coalesced_replay_over_tls_sends_the_records_merged_and_in_order() {
    bounded("the coalesced TLS test", async {
        let dir = tempfile::tempdir().expect("temporary spool directory");
        let receiver = TlsReceiver::start().await;
        let exporter = HttpExporter::builder(receiver.url())
            .timeout(CALM_ATTEMPT_TIMEOUT)
            .ca_pem(receiver.ca_pem().to_owned())
            .payload_framing(PayloadFraming::OtlpProtobuf)
            .build()
            .expect("valid exporter settings");
        let client = fast_builder(dir.path())
            .attempt_timeout(CALM_ATTEMPT_TIMEOUT)
            .batch_size(50)
            .build(exporter)
            .expect("valid client settings");

        receiver.go_down().await;
        let records: Vec<Vec<u8>> = (0..40u8).map(|i| otlp_like(i, 100)).collect();
        for (i, r) in records.iter().enumerate() {
            let p = Payload::new(r.clone())
                .with_content_type(ContentType::Protobuf)
                .with_key(format!("r{i:02}"));
            let d = client.export(p).await.expect("accepted");
            assert_eq!(d, Delivery::Spooled);
        }
        receiver.come_up().await;
        let report = client.force_flush(GENEROUS_FLUSH).await;
        assert!(report.complete, "{report:?}");
        assert_eq!(report.delivered, 40, "{report:?}");

        // Fewer requests than records; each body holds consecutive records in order (the
        // bodies of a merged request were handed to TLS chunk by chunk), and together they
        // hold every record exactly once. Requests in flight together may arrive in any
        // order, so the bodies are put in order by their first record.
        let mut bodies = receiver.bodies();
        assert!(bodies.len() < 40, "merged: {} requests", bodies.len());
        bodies.sort_by_key(|b| b.get(2).copied());
        let received: Vec<u8> = bodies.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(received, records.concat());
        let mut keys = receiver.keys();
        keys.sort();
        let want: Vec<String> = (0..40).map(|i| format!("r{i:02}")).collect();
        assert_eq!(keys, want);
    })
    .await;
}
