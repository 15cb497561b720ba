//! Row 12: the codec of stored records. Ratio and cost per record of gzip (flate2 with its
//! default miniz_oxide backend, levels 1, 2 and 6) and zstd (levels 1 and 3) on realistic
//! telemetry: OTLP span and log batches made by the OpenTelemetry SDK and encoded as its OTLP
//! exporter encodes them, JSON log lines,
//! and incompressible bytes (12a-12d); then what the client stores on disk per payload byte
//! with its defaults, receiver down (12e-12g), and the outage latency of compressible
//! payloads (12h).

use std::io::{Read as _, Write as _};
use std::time::Instant;

use crate::disk::record;
use crate::measure::{Cell, Collector, SideSpec, Unit};
use crate::report::{Row, Target};
use crate::rows::Ctx;

/// Items per SDK batch (the batch processors' default `max_export_batch_size`).
const SDK_BATCH: usize = 512;
/// Batches of each kind measured.
const BATCHES: usize = 8;

/// A codec and level.
#[derive(Debug, Clone, Copy)]
enum Codec {
    Gzip(u32),
    Zstd(i32),
}

impl Codec {
    fn name(self) -> String {
        match self {
            Codec::Gzip(l) => format!("gzip-{l} (flate2)"),
            Codec::Zstd(l) => format!("zstd-{l}"),
        }
    }

    fn compress(self, data: &[u8]) -> anyhow::Result<Vec<u8>> {
        Ok(match self {
            Codec::Gzip(l) => {
                let mut e = flate2::write::GzEncoder::new(
                    Vec::with_capacity(data.len() / 2 + 64),
                    flate2::Compression::new(l),
                );
                e.write_all(data)?;
                e.finish()?
            }
            Codec::Zstd(l) => zstd::bulk::compress(data, l)?,
        })
    }

    fn decompress(self, data: &[u8], len: usize) -> anyhow::Result<Vec<u8>> {
        Ok(match self {
            Codec::Gzip(_) => {
                let mut out = Vec::with_capacity(len);
                flate2::read::MultiGzDecoder::new(data).read_to_end(&mut out)?;
                out
            }
            Codec::Zstd(_) => zstd::bulk::decompress(data, len)?,
        })
    }
}

const CODECS: [Codec; 5] = [
    Codec::Gzip(1),
    Codec::Gzip(2),
    Codec::Gzip(6),
    Codec::Zstd(1),
    Codec::Zstd(3),
];

/// OTLP `ExportTraceServiceRequest`s of [`SDK_BATCH`] spans each, from the SDK: a web
/// service's traces (a server span with a database, a cache and an outgoing HTTP call
/// under it), with the semantic-convention attributes instrumentation libraries set.
fn span_batches(batch: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    use opentelemetry::KeyValue;
    use opentelemetry::trace::{
        Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use prost::Message as _;

    let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let resource = resource();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .with_resource(resource.clone())
        .build();
    let tracer = provider.tracer_with_scope(
        opentelemetry::InstrumentationScope::builder("outlast-bench-http")
            .with_version("0.1.0")
            .build(),
    );
    let routes = [
        "/api/users/{id}",
        "/api/orders/{id}",
        "/api/cart",
        "/healthz",
        "/api/search",
    ];
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..(SDK_BATCH * BATCHES / 4) {
        let route = routes[i % routes.len()];
        let id = next() % 100_000;
        let status = if next() % 20 == 0 { 500 } else { 200 };
        let mut server = tracer
            .span_builder(format!("GET {route}"))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("http.route", route),
                KeyValue::new("url.path", route.replace("{id}", &id.to_string())),
                KeyValue::new("url.scheme", "https"),
                KeyValue::new("server.address", "api.example.com"),
                KeyValue::new("client.address", format!("10.0.{}.{}", next() % 256, next() % 256)),
                KeyValue::new("user_agent.original", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"),
                KeyValue::new("http.response.status_code", status),
                KeyValue::new("network.protocol.version", "1.1"),
            ])
            .start(&tracer);
        if status == 500 {
            server.set_status(Status::error("upstream failed"));
            server.add_event(
                "exception",
                vec![
                    KeyValue::new("exception.type", "TimeoutError"),
                    KeyValue::new("exception.message", "upstream did not answer within 2s"),
                ],
            );
        }
        let cx = opentelemetry::Context::current_with_span(server);
        let children: [(&str, SpanKind, Vec<KeyValue>); 3] = [
            (
                "SELECT shop.users",
                SpanKind::Client,
                vec![
                    KeyValue::new("db.system.name", "postgresql"),
                    KeyValue::new("db.namespace", "shop"),
                    KeyValue::new("db.operation.name", "SELECT"),
                    KeyValue::new(
                        "db.query.text",
                        "SELECT id, name, email, created_at FROM users WHERE id = $1",
                    ),
                    KeyValue::new("server.address", "db-primary.internal"),
                    KeyValue::new("server.port", 5432),
                ],
            ),
            (
                "GET",
                SpanKind::Client,
                vec![
                    KeyValue::new("db.system.name", "redis"),
                    KeyValue::new("db.operation.name", "GET"),
                    KeyValue::new("server.address", "cache.internal"),
                    KeyValue::new("server.port", 6379),
                ],
            ),
            (
                "POST",
                SpanKind::Client,
                vec![
                    KeyValue::new("http.request.method", "POST"),
                    KeyValue::new(
                        "url.full",
                        format!("https://billing.internal/v1/quotes/{}", next() % 100_000),
                    ),
                    KeyValue::new("server.address", "billing.internal"),
                    KeyValue::new("http.response.status_code", 200),
                ],
            ),
        ];
        for (name, kind, attrs) in children {
            tracer
                .span_builder(name)
                .with_kind(kind)
                .with_attributes(attrs)
                .start_with_context(&tracer, &cx)
                .end();
        }
        cx.span().end();
    }
    let spans = exporter.get_finished_spans()?;
    let encoded = opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema::from(
        &resource,
    );
    let batches = spans
        .chunks(batch)
        .map(|c| {
            ExportTraceServiceRequest {
                resource_spans: group_spans_by_resource_and_scope(c.to_vec(), &encoded),
            }
            .encode_to_vec()
        })
        .collect();
    let _ = provider.shutdown();
    Ok(batches)
}

/// OTLP `ExportLogsServiceRequest`s of [`SDK_BATCH`] log records each, from the SDK: an
/// application's log lines with severity, attributes and trace context.
fn log_batches() -> anyhow::Result<Vec<Vec<u8>>> {
    use opentelemetry::logs::{
        AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity,
    };
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::transform::logs::tonic::group_logs_by_resource_and_scope;
    use prost::Message as _;

    let exporter = opentelemetry_sdk::logs::InMemoryLogExporter::default();
    let resource = resource();
    let provider = opentelemetry_sdk::logs::SdkLoggerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .with_resource(resource.clone())
        .build();
    let logger = provider.logger("outlast-bench-app");
    let messages = [
        "request served",
        "cache miss, loading from the database",
        "user signed in",
        "payment authorised",
        "retrying the upstream call",
    ];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..(SDK_BATCH * BATCHES) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut r = logger.create_log_record();
        let warn = x.is_multiple_of(10);
        r.set_severity_number(if warn { Severity::Warn } else { Severity::Info });
        r.set_severity_text(if warn { "WARN" } else { "INFO" });
        r.set_body(AnyValue::from(messages[i % messages.len()]));
        r.set_timestamp(std::time::SystemTime::now());
        r.set_observed_timestamp(std::time::SystemTime::now());
        r.add_attribute("code.function.name", "handle_request");
        r.add_attribute("code.file.path", "src/handlers/orders.rs");
        r.add_attribute("user.id", format!("u-{}", x % 50_000));
        r.add_attribute("http.route", "/api/orders/{id}");
        r.add_attribute("duration_ms", (x % 900) as i64);
        r.set_trace_context(
            opentelemetry::trace::TraceId::from(u128::from(x) << 64 | u128::from(x.rotate_left(7))),
            opentelemetry::trace::SpanId::from(x.rotate_left(13)),
            Some(opentelemetry::trace::TraceFlags::SAMPLED),
        );
        logger.emit(r);
    }
    let logs = exporter.get_emitted_logs()?;
    let encoded = opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema::from(
        &resource,
    );
    let batches = logs
        .chunks(SDK_BATCH)
        .map(|c| {
            let pairs: Vec<_> = c.iter().map(|l| (&l.record, &l.instrumentation)).collect();
            // `LogBatch::new` is public but documented as not meant for direct use: it is
            // how the SDK hands a batch to its exporter, which is what this reproduces.
            let batch = opentelemetry_sdk::logs::LogBatch::new(&pairs);
            ExportLogsServiceRequest {
                resource_logs: group_logs_by_resource_and_scope(&batch, &encoded),
            }
            .encode_to_vec()
        })
        .collect();
    let _ = provider.shutdown();
    Ok(batches)
}

fn resource() -> opentelemetry_sdk::Resource {
    use opentelemetry::KeyValue;
    opentelemetry_sdk::Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", "checkout"),
            KeyValue::new("service.version", "2.14.3"),
            KeyValue::new("deployment.environment.name", "production"),
            KeyValue::new("host.name", "ip-10-0-12-34.eu-west-1.compute.internal"),
            KeyValue::new("telemetry.sdk.language", "rust"),
            KeyValue::new("telemetry.sdk.name", "opentelemetry"),
            KeyValue::new("telemetry.sdk.version", "0.33.0"),
        ])
        .build()
}

/// JSON log lines, 100 per payload (about 25 KiB), as a logging library writes them.
fn json_batches() -> Vec<Vec<u8>> {
    let mut x = 0xD1B5_4A32_D192_ED03u64;
    (0..BATCHES)
        .map(|b| {
            let mut s = String::new();
            for i in 0..100 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s.push_str(&format!(
                    "{{\"timestamp\":\"2026-12-02T12:{:02}:{:02}.{:06}Z\",\"level\":\"{}\",\"target\":\"checkout::handlers::orders\",\"message\":\"request served\",\"http.method\":\"GET\",\"http.route\":\"/api/orders/{{id}}\",\"order_id\":{},\"user_id\":\"u-{}\",\"status\":200,\"duration_ms\":{},\"trace_id\":\"{:032x}\"}}\n",
                    b,
                    i % 60,
                    x % 1_000_000,
                    if x.is_multiple_of(10) { "WARN" } else { "INFO" },
                    x % 1_000_000,
                    x % 50_000,
                    x % 900,
                    u128::from(x) * 0x1_0000_0001
                ));
            }
            s.into_bytes()
        })
        .collect()
}

fn incompressible_batches() -> Vec<Vec<u8>> {
    (0..BATCHES as u64)
        .map(|s| record(16 * 1024, s + 1))
        .collect()
}

/// Ratio (compressed bytes per payload byte), compress and decompress µs per record, one
/// repetition over every payload.
fn measure(codec: Codec, payloads: &[Vec<u8>]) -> anyhow::Result<Vec<f64>> {
    let (mut raw, mut packed) = (0usize, 0usize);
    let (mut c_us, mut d_us) = (0.0, 0.0);
    for p in payloads {
        let t = Instant::now();
        let z = codec.compress(p)?;
        c_us += t.elapsed().as_secs_f64() * 1e6;
        let t = Instant::now();
        let back = codec.decompress(&z, p.len())?;
        d_us += t.elapsed().as_secs_f64() * 1e6;
        anyhow::ensure!(back == *p, "{} did not round-trip", codec.name());
        raw += p.len();
        packed += z.len();
    }
    let n = payloads.len().max(1) as f64;
    Ok(vec![packed as f64 / raw.max(1) as f64, c_us / n, d_us / n])
}

/// The payloads of one data set, or why they could not be made.
type DataSet = anyhow::Result<Vec<Vec<u8>>>;

/// Rows 11a-11g.
pub(crate) fn group_codec(ctx: &Ctx<'_>) -> Vec<Row> {
    eprintln!("[bench] row 12: codecs on SDK-made OTLP batches, JSON lines, random bytes");
    let figs = [
        ("disk/payload bytes", Unit::Ratio),
        ("compress µs/record", Unit::Micros),
        ("decompress µs/record", Unit::Micros),
    ];
    let sets: Vec<(&str, &str, DataSet)> = vec![
        (
            "12a",
            "OTLP span batches (SDK, 512 spans)",
            span_batches(SDK_BATCH),
        ),
        ("12b", "OTLP log batches (SDK, 512 records)", log_batches()),
        (
            "12c",
            "JSON log lines (100 per payload)",
            Ok(json_batches()),
        ),
        (
            "12d",
            "incompressible bytes (16 KiB)",
            Ok(incompressible_batches()),
        ),
    ];
    let reps = ctx.plan.reps.max(1);
    let mut rows = Vec::new();
    let mut detail = String::from(
        "\n| data | codec | disk/payload | compress µs/record | decompress µs/record |\n|---|---|--:|--:|--:|\n",
    );
    let mut samples: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    for (id, what, set) in sets {
        let set = match set {
            Ok(s) => s,
            Err(e) => {
                rows.push(Row::new(
                    id,
                    format!("Stored codec: {what}"),
                    "not built",
                    Cell::not_measured("gzip-1", format!("{e:#}")),
                    Cell::not_measured("zstd-3", "as outlast"),
                    Target::None,
                ));
                continue;
            }
        };
        let avg = set.iter().map(Vec::len).sum::<usize>() / set.len().max(1);
        let mut cells = Vec::new();
        for codec in CODECS {
            let mut c = Collector::new(SideSpec::new(codec.name(), &figs));
            for _ in 0..reps {
                c.run(|| measure(codec, &set));
            }
            let cell = c.finish();
            if let Cell::Measured { figures, .. } = &cell {
                let m: Vec<f64> = figures.iter().map(|f| f.median).collect();
                detail.push_str(&format!(
                    "| {what} | {} | {:.3} | {:.1} | {:.1} |\n",
                    codec.name(),
                    m[0],
                    m[1],
                    m[2]
                ));
            }
            cells.push(cell);
        }
        // What the client stores (gzip-1) beside zstd at its default level.
        let zstd3 = cells.remove(4);
        let gzip1 = cells.remove(0);
        rows.push(Row::new(
            id,
            format!("Stored codec: {what}"),
            format!(
                "{} payloads of {} bytes on average; gzip-1 (what the client stores) beside zstd-3",
                set.len(),
                avg
            ),
            gzip1,
            zstd3,
            Target::None,
        ));
        samples.push((what.to_owned(), set));
    }
    println!("{detail}");
    rows.extend(stored_rows(ctx, &samples));
    rows.push(outage_row(ctx));
    rows
}

/// Rows 11e-11g: spool bytes per payload byte after exporting each data set with the
/// client's defaults while the exporter fails (everything spooled).
#[cfg(feature = "outlast")]
fn stored_rows(ctx: &Ctx<'_>, samples: &[(String, Vec<Vec<u8>>)]) -> Vec<Row> {
    use outlast_client::testing::{MemoryExporter, Outcome};
    use outlast_client::{Client, ContentType, Payload};
    let figs = [("disk/payload bytes", Unit::Ratio)];
    let mut rows = Vec::new();
    for (i, (what, set)) in samples.iter().enumerate() {
        if what.starts_with("OTLP log") {
            continue;
        }
        let (id, target) = match i {
            0 => (
                "12e",
                Target::AtMost {
                    max: 0.35,
                    unit: Unit::Ratio,
                    note: Some("median".into()),
                },
            ),
            3 => (
                "12g",
                Target::AtMost {
                    max: 1.02,
                    unit: Unit::Ratio,
                    note: Some("median".into()),
                },
            ),
            _ => ("12f", Target::None),
        };
        let mut c = Collector::new(SideSpec::new("client defaults, exporter down", &figs));
        for _ in 0..ctx.plan.reps.max(1) {
            c.run(|| {
                let dir = tempfile::tempdir_in(ctx.dir)?;
                let exporter = MemoryExporter::new();
                exporter.set_mode(Outcome::Fail);
                let ct = if what.starts_with("OTLP") {
                    ContentType::Protobuf
                } else {
                    ContentType::Json
                };
                let mut total = 0u64;
                let bytes = ctx.rt.block_on(async {
                    let client = Client::builder()
                        .spool_dir(dir.path())
                        .immediate_retry_delay(std::time::Duration::ZERO)
                        .build(exporter)?;
                    for _ in 0..4 {
                        for p in set {
                            total += p.len() as u64;
                            let d = client
                                .export(Payload::new(p.clone()).with_content_type(ct.clone()))
                                .await
                                .map_err(|e| anyhow::anyhow!("dropped: {}", e.reason()))?;
                            anyhow::ensure!(d.is_spooled(), "not spooled: {d:?}");
                        }
                    }
                    let b = client.stats().spool_bytes;
                    let _ = client.shutdown(std::time::Duration::from_secs(5)).await;
                    Ok(b)
                })?;
                Ok(vec![bytes as f64 / total.max(1) as f64])
            });
        }
        rows.push(Row::new(
            id,
            format!("Spool bytes per payload byte: {what}"),
            format!("{} payloads exported while the exporter fails, client defaults (segment headers and frames included)", set.len() * 4),
            c.finish(),
            Cell::not_measured("no reference", "the target is absolute"),
            target,
        ));
    }
    rows
}

#[cfg(not(feature = "outlast"))]
fn stored_rows(_: &Ctx<'_>, _: &[(String, Vec<Vec<u8>>)]) -> Vec<Row> {
    Vec::new()
}

/// Row 12h: row 6 with compressible payloads: `export()` latency after the first spill, of
/// OTLP span batches of 4 spans (about 1.3 KiB, which the client stores gzipped).
#[cfg(feature = "outlast")]
fn outage_row(ctx: &Ctx<'_>) -> Row {
    use crate::measure::quantile;
    use outlast_client::testing::{MemoryExporter, Outcome};
    use outlast_client::{Client, ContentType, Payload};
    let calls = 20_000usize;
    let figs = [("p99", Unit::Micros), ("p50", Unit::Micros)];
    let mut c = Collector::new(SideSpec::new("export() while offline", &figs));
    let bodies = span_batches(4);
    let mut avg = 0;
    for _ in 0..ctx.plan.reps.max(1) {
        c.run(|| {
            let bodies = bodies.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            avg = bodies.iter().map(Vec::len).sum::<usize>() / bodies.len().max(1);
            let dir = tempfile::tempdir_in(ctx.dir)?;
            let exporter = MemoryExporter::new();
            exporter.set_mode(Outcome::Fail);
            let mut lat = ctx.rt.block_on(async {
                let client = Client::builder()
                    .spool_dir(dir.path())
                    .immediate_retry_delay(std::time::Duration::ZERO)
                    .build(exporter)?;
                let payload = |i: usize| {
                    Payload::new(bodies[i % bodies.len()].clone())
                        .with_content_type(ContentType::Protobuf)
                };
                anyhow::ensure!(
                    client
                        .export(payload(0))
                        .await
                        .is_ok_and(|d| d.is_spooled())
                );
                let mut lat = Vec::with_capacity(calls);
                for i in 0..calls {
                    let p = payload(i);
                    let t = Instant::now();
                    let d = client
                        .export(p)
                        .await
                        .map_err(|e| anyhow::anyhow!("dropped: {}", e.reason()))?;
                    lat.push(t.elapsed().as_secs_f64() * 1e6);
                    anyhow::ensure!(d.is_spooled(), "not spooled: {d:?}");
                }
                let _ = client.shutdown(std::time::Duration::from_secs(5)).await;
                Ok(lat)
            })?;
            lat.sort_by(f64::total_cmp);
            Ok(vec![quantile(&lat, 0.99), quantile(&lat, 0.5)])
        });
    }
    Row::new(
        "12h",
        "Outage: export() latency after the first spill, compressible payloads",
        format!(
            "{calls} export calls of OTLP span batches of 4 spans ({avg} bytes on average, stored gzipped), exporter failing, client defaults"
        ),
        c.finish(),
        Cell::not_measured("no reference", "row 6 is the same with random payloads"),
        Target::AtMost {
            max: 50.0,
            unit: Unit::Micros,
            note: Some("p99, as row 6".into()),
        },
    )
}

#[cfg(not(feature = "outlast"))]
fn outage_row(_: &Ctx<'_>) -> Row {
    Row::new(
        "12h",
        "Outage: export() latency after the first spill, compressible payloads",
        "not built",
        Cell::not_measured(
            "export() while offline",
            "harness built without the `outlast` feature",
        ),
        Cell::not_measured("no reference", "row 6 is the same with random payloads"),
        Target::None,
    )
}
