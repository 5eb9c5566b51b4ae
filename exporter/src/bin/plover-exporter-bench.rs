//! In-process benchmark of the exporter: ingest rate on one core, `/metrics` render time at
//! 100k series, memory per series (realistic and worst-case density), and ingest latency.
//!
//! Run: `cargo xtask bench exporter` or
//! `cargo run --release -p plover-exporter --bin plover-exporter-bench -- [--seconds N] [--series N]`.
//!
//! Memory is measured with a counting global allocator (`stats_alloc`): live heap bytes requested, before and
//! after building the state (malloc's own per-allocation overhead is estimated separately).

use std::alloc::System;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use plover_exporter::config::NativeHistograms;
use plover_exporter::ingest::Ingest;
use plover_exporter::store::{Applied, Store};
use plover_exporter::Config;
use plover_wire::batch::{CONTENT_TYPE, INGEST_PATH};
use plover_wire::histogram::COUNTS_LEN;
use plover_wire::{Batch, BatchView, Histogram, Role, SeriesDelta, SeriesKey};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

/// Counts every allocation (the wrapper forwards each call to the system allocator unchanged).
#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// glibc's per-chunk overhead, for the "with malloc overhead" estimate.
const MALLOC_OVERHEAD: usize = 16;

/// Heap in use: (requested bytes, allocations).
fn heap() -> (usize, usize) {
    let stats = ALLOCATOR.stats();
    // stats_alloc already adds a realloc's growth to `bytes_allocated` (and its shrinking to
    // `bytes_deallocated`); `bytes_reallocated` is the same change again, so it is not added.
    let bytes = stats.bytes_allocated as isize - stats.bytes_deallocated as isize;
    let allocations = stats.allocations.saturating_sub(stats.deallocations);
    (bytes.max(0) as usize, allocations)
}

/// What one /metrics exposition renders.
enum Exposition<'a> {
    Text(&'a prometheus_client::registry::Registry),
    Protobuf(&'a plover_exporter::metrics::Protobuf),
}

/// Renders an exposition through `/metrics`' chunked writer into a body drained (and
/// dropped) as a connection would; returns the bytes sent.
fn streamed_render(exposition: &Exposition) -> usize {
    use http_body_util::BodyExt;
    let (mut writer, mut body) = plover_exporter::stream::channel();
    let drain = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let mut sent = 0;
            while let Some(Ok(frame)) = body.frame().await {
                sent += frame.into_data().map_or(0, |d| d.len());
            }
            sent
        })
    });
    match exposition {
        Exposition::Text(registry) => {
            prometheus_client::encoding::text::encode(&mut writer, registry).expect("render")
        }
        Exposition::Protobuf(protobuf) => protobuf.encode(&mut writer).expect("render"),
    }
    writer.finish().expect("last chunk");
    drain.join().expect("drain")
}

/// Runs `f` and returns its result with the most live heap it held above what was live
/// before (sampled every 50 µs from the counting allocator, so allocator retention and earlier
/// renders do not hide it as they would in RSS).
fn peak_heap_growth<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = heap().0;
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let running = running.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while running.load(Ordering::Relaxed) {
                peak = peak.max(heap().0);
                std::thread::sleep(Duration::from_micros(50));
            }
            peak
        })
    };
    let out = f();
    running.store(false, Ordering::Relaxed);
    let peak = sampler.join().expect("sampler").max(heap().0);
    (out, peak.saturating_sub(before))
}

#[derive(Parser, Debug)]
#[command(about = "plover-exporter in-process benchmark")]
struct Args {
    /// Gateways (one filter VM each), each flushing one batch per simulated second.
    #[arg(long, default_value_t = 100)]
    gateways: usize,
    /// Services behind every gateway; each has a stable and a canary revision.
    #[arg(long, default_value_t = 50)]
    services: usize,
    /// Simulated seconds of ingest (600 fills the default 10-minute window).
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Series in the /metrics render test.
    #[arg(long, default_value_t = 100_000)]
    series: usize,
    /// Revisions in the worst-case memory test (one series each, every second dense).
    #[arg(long, default_value_t = 20)]
    worst_revisions: usize,
    /// Run only one part: ingest, http, render or worst.
    #[arg(long)]
    only: Option<String>,
}

/// Simulated clock for the collector.
static SIM_NOW_MS: AtomicU64 = AtomicU64::new(T0);
const T0: u64 = 1_700_000_000_000;

fn sim_now() -> u64 {
    SIM_NOW_MS.load(Ordering::Relaxed)
}

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Log-normal sample with the given median and sigma.
    fn log_normal(&mut self, median: f64, sigma: f64) -> f64 {
        let (u1, u2) = (self.unit().max(1e-12), self.unit());
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        median * (sigma * z).exp()
    }
}

fn config() -> Config {
    Config::parse_from(["bench", "--insecure-no-auth"]).expect("default configuration")
}

/// The default configuration, keeping native histogram buckets too.
fn config_with_native_histograms() -> Config {
    Config::parse_from(["bench", "--insecure-no-auth", "--native-histograms=both"])
        .expect("configuration with native histograms")
}

fn key(service: usize, revision: usize, route: usize, code: u16) -> SeriesKey {
    SeriesKey::answered(
        "bench",
        &format!("svc-{service:02}"),
        &format!("route-{route}"),
        &format!("v{}", revision + 1),
        if revision == 0 {
            Role::Stable
        } else {
            Role::Canary
        },
        code,
    )
}

/// Requests of one series in one second: latencies from a log-normal around `median_us`.
fn delta(rng: &mut Rng, requests: u64, median_us: f64) -> SeriesDelta {
    let mut d = SeriesDelta {
        requests,
        request_bytes: requests * 350,
        response_bytes: requests * 2200,
        ..Default::default()
    };
    for _ in 0..requests {
        d.duration.record(rng.log_normal(median_us, 0.5) as u64);
    }
    d
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

struct IngestFigures {
    batches_per_second: f64,
    p99: Duration,
    bytes_per_series: f64,
}

/// One flush of gateway `gateway`: ~10 rps per stable and ~2 rps per canary series, 1% 503s.
fn gateway_batch(rng: &mut Rng, args: &Args, gateway: usize, sequence: u64, end: u64) -> Batch {
    let mut series = Vec::with_capacity(args.services * 4);
    for service in 0..args.services {
        let median = 2_000.0 + 1_500.0 * service as f64;
        for revision in 0..2 {
            let requests = if revision == 0 {
                8 + rng.next() % 5
            } else {
                1 + rng.next() % 3
            };
            series.push((key(service, revision, 0, 200), delta(rng, requests, median)));
            if rng.next().is_multiple_of(10) {
                series.push((key(service, revision, 0, 503), delta(rng, 1, median * 3.0)));
            }
        }
    }
    series.sort_by(|a, b| a.0.cmp(&b.0));
    Batch {
        gateway: format!("gw-{gateway:03}"),
        instance: format!("gw-{gateway:03}-vm0"),
        sequence,
        start_unix_ms: end - 1000,
        end_unix_ms: end,
        dropped_requests: 0,
        sizes_unmeasured: false,
        series,
    }
}

/// The same traffic over HTTP: `plover_exporter::run` on a single-threaded runtime (one core),
/// fed by `connections` keep-alive clients on other threads, each posting its gateways'
/// pre-encoded batches one after another. Returns batches/s over the whole run.
fn http_ingest(args: &Args, seconds: u64, connections: usize) -> f64 {
    use std::io::{Read, Write};
    println!(
        "== HTTP ingest: the same traffic, {seconds} s simulated, POST {INGEST_PATH} over {connections} keep-alive connections, server on one thread"
    );
    let mut rng = Rng(0x5eed);
    let now = plover_exporter::http::unix_now_ms();
    // Gateway g's batches go over connection g % connections, in sequence order.
    let mut per_connection: Vec<Vec<Vec<u8>>> = vec![Vec::new(); connections];
    for second in 0..seconds {
        for gateway in 0..args.gateways {
            let end = now - (seconds - second) * 1000 + gateway as u64;
            per_connection[gateway % connections]
                .push(gateway_batch(&mut rng, args, gateway, second + 1, end).encode());
        }
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("loopback listener");
    let address = listener.local_addr().expect("listener address");
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            plover_exporter::run(config(), listener, async move {
                let _ = stopped.await;
            })
            .await
            .expect("server");
        });
    });
    let started = Instant::now();
    let clients: Vec<_> = per_connection
        .into_iter()
        .map(|bodies| {
            std::thread::spawn(move || {
                let mut stream = std::net::TcpStream::connect(address).expect("connect");
                stream.set_nodelay(true).expect("nodelay");
                let mut response = vec![0u8; 4096];
                for body in &bodies {
                    let head = format!(
                        "POST {INGEST_PATH} HTTP/1.1\r\nhost: bench\r\ncontent-type: {CONTENT_TYPE}\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    stream.write_all(head.as_bytes()).expect("request head");
                    stream.write_all(body).expect("request body");
                    // The answer is small ("200 OK", "applied"): read until its body is in.
                    let mut read = 0;
                    loop {
                        let n = stream.read(&mut response[read..]).expect("response");
                        assert!(n > 0, "server closed the connection");
                        read += n;
                        let text = String::from_utf8_lossy(&response[..read]);
                        if let Some(end) = text.find("\r\n\r\n") {
                            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
                            if text[end + 4..].ends_with('\n') {
                                break;
                            }
                        }
                    }
                }
                bodies.len()
            })
        })
        .collect();
    let batches: usize = clients.into_iter().map(|c| c.join().expect("client")).sum();
    let took = started.elapsed();
    let _ = stop.send(());
    server.join().expect("server thread");
    let rate = batches as f64 / took.as_secs_f64();
    println!("  {batches} batches in {took:?}: {rate:.0} batches/s end to end (HTTP parsing, auth, body, decode, merge, response)");
    rate
}

/// 100 gateways × 50 services × 2 revisions, one batch per gateway per second: each encoded
/// batch goes through [`Ingest::apply_body`], what `POST /v1/batches` runs once it has read
/// the body (strict decode, store lock, merge), on this thread, timed batch by batch;
/// housekeeping ticks once per simulated second.
fn ingest(args: &Args) -> IngestFigures {
    println!(
        "== ingest: {} gateways × {} services × 2 revisions, 1 s flush, {} s simulated",
        args.gateways, args.services, args.seconds
    );
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (heap_before, allocs_before) = heap();
    let config = config();
    let store = Arc::new(Mutex::new(Store::new(config.store.clone())));
    let ingest = Ingest::new(
        config.auth.clone(),
        config.max_batch_bytes,
        store.clone(),
        sim_now,
    );
    let mut latencies = Vec::with_capacity(args.gateways * args.seconds as usize);
    let mut busy = Duration::ZERO;
    let mut tick_time = Duration::ZERO;
    let mut last_second = Vec::new();
    let mut batch_bytes = 0usize;
    let mut series_deltas = 0usize;
    for second in 0..args.seconds {
        for gateway in 0..args.gateways {
            let end = T0 + (second + 1) * 1000 + gateway as u64;
            let batch = gateway_batch(&mut rng, args, gateway, second + 1, end);
            series_deltas += batch.series.len();
            let encoded = batch.encode();
            drop(batch);
            batch_bytes += encoded.len();

            SIM_NOW_MS.store(end + 40, Ordering::Relaxed);
            let started = Instant::now();
            let applied = ingest.apply_body(&encoded);
            let took = started.elapsed();
            assert!(matches!(
                applied,
                Ok(Applied::Merged {
                    series_folded: 0,
                    refused_requests: 0,
                    ..
                })
            ));
            busy += took;
            latencies.push(took);
            if second + 1 == args.seconds {
                last_second.push(encoded);
            }
        }
        let started = Instant::now();
        store.lock().unwrap().tick(T0 + (second + 2) * 1000);
        tick_time += started.elapsed();
    }
    // The decode share, measured apart (decoding the last second's batches again) so that
    // the timed path above is exactly the request path.
    let rounds = 20;
    let started = Instant::now();
    for _ in 0..rounds {
        for encoded in &last_second {
            std::hint::black_box(
                BatchView::decode(std::hint::black_box(encoded)).expect("valid batch"),
            );
        }
    }
    let decode_time = started.elapsed() / (rounds * last_second.len().max(1)) as u32;
    let store = store.lock().unwrap();
    let batches = latencies.len();
    latencies.sort_unstable();
    let rate = batches as f64 / busy.as_secs_f64();
    let rate_with_ticks = batches as f64 / (busy + tick_time).as_secs_f64();
    let (heap_after, allocs_after) = heap();
    let bytes = (heap_after - heap_before) as f64;
    let overhead = (allocs_after - allocs_before) as f64 * MALLOC_OVERHEAD as f64;
    let series = store.series();
    let revisions = args.services * 2;
    println!(
        "  batches: {batches}, mean size {} B, {} series held",
        batch_bytes / batches.max(1),
        series
    );
    println!(
        "  time split: {:?} per batch, of which decode {:?} (measured apart) and lock + apply the rest",
        busy / batches as u32,
        decode_time,
    );
    println!(
        "  ingest rate (decode + apply, 1 core): {rate:.0} batches/s = {:.0} series deltas/s; with housekeeping ticks: {rate_with_ticks:.0} batches/s",
        series_deltas as f64 / busy.as_secs_f64()
    );
    println!(
        "  per-batch latency: p50 {:?}, p99 {:?}, max {:?}; tick {:?}/s",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
        tick_time / args.seconds.max(1) as u32
    );
    println!(
        "  memory: {} total, {} per revision window (~{:.0} rps each, {} s of history), {} per series ({} with malloc overhead)",
        kib(bytes),
        kib(store.window_heap_bytes() as f64 / revisions as f64),
        (10.0 + 2.0) / 2.0 * args.gateways as f64,
        args.seconds.min(600),
        kib(bytes / series as f64),
        kib((bytes + overhead) / series as f64),
    );
    IngestFigures {
        batches_per_second: rate,
        p99: percentile(&latencies, 0.99),
        bytes_per_series: (bytes + overhead) / series as f64,
    }
}

/// Profiling aid: applies pre-decoded batches only (no generation, no decode).
fn apply_only(args: &Args) {
    let mut rng = Rng(1);
    let mut store = Store::new(config().store);
    let mut batches = Vec::new();
    for second in 0..args.seconds {
        for gateway in 0..args.gateways {
            let mut series = Vec::new();
            for service in 0..args.services {
                for revision in 0..2 {
                    series.push((
                        key(service, revision, 0, 200),
                        delta(&mut rng, 10, 2_000.0 + 1_500.0 * service as f64),
                    ));
                }
            }
            series.sort_by(|a, b| a.0.cmp(&b.0));
            let end = T0 + (second + 1) * 1000 + gateway as u64;
            let (gateway, instance) = (format!("gw-{gateway:03}"), format!("gw-{gateway:03}-vm0"));
            batches.push(Batch {
                gateway,
                instance,
                sequence: second + 1,
                start_unix_ms: end - 1000,
                end_unix_ms: end,
                dropped_requests: 0,
                sizes_unmeasured: false,
                series,
            });
        }
    }
    let n = batches.len();
    let started = Instant::now();
    for b in batches {
        let end = b.end_unix_ms;
        store.apply(&b.view(), end + 40).unwrap();
    }
    let took = started.elapsed();
    println!(
        "apply only: {n} batches in {took:?}: {:.0} batches/s",
        n as f64 / took.as_secs_f64()
    );
}

struct RenderFigures {
    median: Duration,
    /// How long an ingest waited for the store lock while /metrics rendered: p99 and max (the
    /// max includes the probe thread's own scheduling delays on a busy machine).
    lock_wait: (Duration, Duration),
    bytes_per_series: f64,
}

/// /metrics with `args.series` series (50 services × 2 revisions × routes × 10 codes) and five
/// minutes of dense window history per revision.
fn render(args: &Args) -> RenderFigures {
    const CODES: [u16; 10] = [200, 201, 204, 301, 404, 429, 500, 502, 503, 504];
    let routes = (args.series / (args.services * 2 * CODES.len())).max(1);
    let total = args.services * 2 * routes * CODES.len();
    println!(
        "== /metrics render: {total} series ({} services × 2 revisions × {routes} routes × {} codes)",
        args.services,
        CODES.len()
    );
    let mut rng = Rng(42);
    let (heap_before, allocs_before) = heap();
    let config = config_with_native_histograms();
    let store = Arc::new(Mutex::new(Store::new(config.store.clone())));
    let now = T0 + 400_000;
    SIM_NOW_MS.store(now, Ordering::Relaxed);
    {
        let mut s = store.lock().unwrap();
        let mut sequence = 0;
        let mut pending = Vec::new();
        let flush = |s: &mut Store,
                     pending: &mut Vec<(SeriesKey, SeriesDelta)>,
                     sequence: &mut u64,
                     end: u64| {
            *sequence += 1;
            let mut series = std::mem::take(pending);
            series.sort_by(|a, b| a.0.cmp(&b.0));
            let batch = Batch {
                gateway: "gw".into(),
                instance: "vm".into(),
                sequence: *sequence,
                start_unix_ms: end - 1000,
                end_unix_ms: end,
                dropped_requests: 0,
                sizes_unmeasured: false,
                series,
            };
            s.apply(&batch.view(), now).unwrap();
        };
        for service in 0..args.services {
            for revision in 0..2 {
                for route in 0..routes {
                    for code in CODES {
                        pending.push((
                            key(service, revision, route, code),
                            delta(&mut rng, 3, 20_000.0),
                        ));
                        if pending.len() == 1000 {
                            flush(&mut s, &mut pending, &mut sequence, now - 1000);
                        }
                    }
                }
            }
        }
        flush(&mut s, &mut pending, &mut sequence, now - 1000);
        // Five minutes of history: ~300 rps per revision, every second.
        for second in 0..300u64 {
            for service in 0..args.services {
                for revision in 0..2 {
                    pending.push((
                        key(service, revision, 0, 200),
                        delta(&mut rng, 300, 5_000.0 + 1_000.0 * service as f64),
                    ));
                }
            }
            flush(
                &mut s,
                &mut pending,
                &mut sequence,
                now - (300 - second) * 1000,
            );
            s.tick(now - (299 - second) * 1000);
        }
        assert_eq!(s.series(), total);
    }
    let (heap_after, allocs_after) = heap();
    let bytes = (heap_after - heap_before) as f64
        + (allocs_after - allocs_before) as f64 * MALLOC_OVERHEAD as f64;

    let registries = |series_per_code, native| {
        plover_exporter::metrics::registries(
            store.clone(),
            config.windows.clone(),
            series_per_code,
            native,
            sim_now,
        )
        .0
    };
    let registry = registries(true, NativeHistograms::Off).text;
    let mut times = Vec::new();
    let mut size = 0;
    let mut lines = 0;
    // Stands in for ingest during the scrapes: takes the store lock every 100 µs and records
    // how long it waited for it.
    let rendering = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let probe = {
        let (store, rendering) = (store.clone(), rendering.clone());
        std::thread::spawn(move || {
            let mut waits = Vec::new();
            while rendering.load(Ordering::Relaxed) {
                let started = Instant::now();
                drop(store.lock().unwrap());
                waits.push(started.elapsed());
                std::thread::sleep(Duration::from_micros(100));
            }
            waits
        })
    };
    // Before: the whole text in one string, as /metrics rendered until it streamed.
    let mut whole_peak = 0;
    for _ in 0..5 {
        let started = Instant::now();
        let (out, peak) = peak_heap_growth(|| {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
            out
        });
        times.push(started.elapsed());
        whole_peak = whole_peak.max(peak);
        size = out.len();
        lines = out.lines().count();
    }
    // After: written while sent, a few 64 KiB chunks at a time, as /metrics serves it.
    let streamed = |exposition: Exposition| {
        let mut times = Vec::new();
        let (mut size, mut peak) = (0, 0);
        for _ in 0..5 {
            let started = Instant::now();
            let (bytes, p) = peak_heap_growth(|| streamed_render(&exposition));
            times.push(started.elapsed());
            (size, peak) = (bytes, peak.max(p));
        }
        times.sort_unstable();
        (times[2], size, peak)
    };
    let (stream_median, stream_size, stream_peak) = streamed(Exposition::Text(&registry));
    assert_eq!(
        stream_size, size,
        "the streamed exposition is the whole one"
    );
    let by_class = registries(false, NativeHistograms::Off).text;
    let (class_median, class_size, class_peak) = streamed(Exposition::Text(&by_class));
    // The protobuf exposition (Prometheus with native histograms), classic buckets, both,
    // native only, and native only without per-code series (the compact form).
    let protobuf: Vec<(&str, (Duration, usize, usize))> = [
        ("classic buckets", true, NativeHistograms::Off),
        ("native and classic buckets", true, NativeHistograms::Both),
        ("native buckets only", true, NativeHistograms::Only),
        (
            "native buckets only, --series-per-code=false",
            false,
            NativeHistograms::Only,
        ),
    ]
    .into_iter()
    .map(|(name, per_code, native)| {
        let registries = registries(per_code, native);
        (name, streamed(Exposition::Protobuf(&registries.protobuf)))
    })
    .collect();
    rendering.store(false, Ordering::Relaxed);
    let mut waits = probe.join().expect("lock probe");
    waits.sort_unstable();
    if let Some(path) = std::env::var_os("PLOVER_BENCH_METRICS_OUT") {
        // The last rendering, to compare exposition output across changes (sort it first:
        // series order follows hash maps and differs from run to run).
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        std::fs::write(path, out).expect("writing PLOVER_BENCH_METRICS_OUT");
    }
    times.sort_unstable();
    let mb = |b: usize| b as f64 / 1e6;
    println!(
        "  render, whole text in one string (before): median {:?}, max {:?}; {:.1} MB, {lines} lines; peak heap +{:.0} MB",
        times[2],
        times[4],
        mb(size),
        mb(whole_peak)
    );
    println!(
        "  render, streamed in 64 KiB chunks (/metrics now): median {stream_median:?}; {:.1} MB; peak heap +{:.0} MB ({:.2}× the whole-string peak)",
        mb(stream_size),
        mb(stream_peak),
        stream_peak as f64 / whole_peak.max(1) as f64
    );
    println!(
        "  render, streamed, --series-per-code=false: median {class_median:?}; {:.1} MB ({:.2}× the size); peak heap +{:.0} MB",
        mb(class_size),
        class_size as f64 / size.max(1) as f64,
        mb(class_peak)
    );
    for (name, (median, bytes, peak)) in &protobuf {
        println!(
            "  render, protobuf, {name}: median {median:?}; {:.1} MB ({:.2}× the text); peak heap +{:.0} MB",
            mb(*bytes),
            *bytes as f64 / size.max(1) as f64,
            mb(*peak)
        );
    }
    println!(
        "  store lock wait of a concurrent ingest during the renders: p50 {:?}, p99 {:?}, max {:?} ({} probes)",
        percentile(&waits, 0.5),
        percentile(&waits, 0.99),
        waits.last().copied().unwrap_or_default(),
        waits.len()
    );
    println!(
        "  memory: {} per series (incl. 5 min of window history and native buckets; malloc overhead included)",
        kib(bytes / total as f64)
    );
    RenderFigures {
        median: times[2],
        lock_wait: (
            percentile(&waits, 0.99),
            waits.last().copied().unwrap_or_default(),
        ),
        bytes_per_series: bytes / total as f64,
    }
}

/// Worst case for memory: every second of every window is dense (all 3,328 indices occupied,
/// large counts), for the whole 10 minutes, with one series per revision, so nothing is shared.
fn worst_case(args: &Args) -> f64 {
    println!(
        "== worst-case density: {} revisions × 1 series, every second all {COUNTS_LEN} bins, 600 s",
        args.worst_revisions
    );
    let mut rng = Rng(7);
    let (heap_before, allocs_before) = heap();
    let mut store = Store::new(config().store);
    for second in 0..600u64 {
        let end = T0 + (second + 1) * 1000;
        let series = (0..args.worst_revisions)
            .map(|service| {
                let histogram = Histogram::from_bins(
                    (0..COUNTS_LEN as u16).map(|i| (i, 1 + rng.next() % 1000)),
                )
                .unwrap();
                let d = SeriesDelta {
                    requests: histogram.count(),
                    request_bytes: 0,
                    response_bytes: 0,
                    duration: histogram,
                };
                (key(service, 0, 0, 200), d)
            })
            .collect();
        let batch = Batch {
            gateway: "gw".into(),
            instance: "vm".into(),
            sequence: second + 1,
            start_unix_ms: end - 1000,
            end_unix_ms: end,
            dropped_requests: 0,
            sizes_unmeasured: false,
            series,
        };
        store.apply(&batch.view(), end + 40).unwrap();
        store.tick(end + 1000);
    }
    let (heap_after, allocs_after) = heap();
    let bytes = (heap_after - heap_before) as f64;
    let with_overhead = bytes + (allocs_after - allocs_before) as f64 * MALLOC_OVERHEAD as f64;
    let per_series = with_overhead / store.series() as f64;
    let service = store.service("bench", "svc-00").unwrap();
    let mut acc = plover_exporter::window::Accumulator::default();
    let newest = (T0 + 601_000) / 1000 - 1;
    let windows = service.windows(newest, &[30, 60, 300, 600], &mut acc);
    let covered: Vec<u64> = windows[0]
        .summaries
        .iter()
        .map(|s| s.covered_seconds)
        .collect();
    println!(
        "  memory: {} per series ({} with malloc overhead); {} budget merges; windows 30s/1m/5m/10m cover {covered:?} s",
        kib(bytes / store.series() as f64),
        kib(per_series),
        store.counters().window_merges
    );
    per_series
}

fn main() {
    let args = Args::parse();
    match args.only.as_deref() {
        Some("ingest") => {
            ingest(&args);
            return;
        }
        Some("render") => {
            render(&args);
            return;
        }
        Some("apply") => {
            apply_only(&args);
            return;
        }
        Some("worst") => {
            worst_case(&args);
            return;
        }
        Some("http") => {
            http_ingest(&args, 30, 4);
            return;
        }
        Some(other) => panic!("--only takes ingest, http, render or worst, not {other}"),
        None => {}
    }
    let ingest = ingest(&args);
    let http = http_ingest(&args, 30, 4);
    let render = render(&args);
    let worst = worst_case(&args);
    let target = 256.0 * 1024.0;
    println!("== summary (targets in brackets)");
    let check = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!(
        "  ingest: {:.0} batches/s [≥ 20000] {}",
        ingest.batches_per_second,
        check(ingest.batches_per_second >= 20_000.0)
    );
    println!("  ingest over HTTP, end to end (server on one thread, clients on others): {http:.0} batches/s");
    println!("  ingest p99 latency: {:?}", ingest.p99);
    println!(
        "  store-lock wait of an ingest during /metrics renders: p99 {:?}, max {:?} (was the whole render)",
        render.lock_wait.0, render.lock_wait.1
    );
    println!(
        "  /metrics render at {} series: {:?} [< 500 ms] {}",
        args.series,
        render.median,
        check(render.median < Duration::from_millis(500))
    );
    println!(
        "  memory per series: realistic {} / 100k-series store {} / worst case {} [≤ 256 KiB] {}",
        kib(ingest.bytes_per_series),
        kib(render.bytes_per_series),
        kib(worst),
        check(
            ingest
                .bytes_per_series
                .max(render.bytes_per_series)
                .max(worst)
                <= target
        )
    );
}
