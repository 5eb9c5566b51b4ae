//! `cargo xtask bench filter`: what the Plover filter costs inside a real Envoy.
//!
//! Envoys (one worker each, pinned to CPU 0 when `taskset` exists) proxy to the same loopback
//! backend, one per variant: without a Wasm filter; with an empty proxy-wasm filter (the floor
//! every Wasm filter pays); with Plover's counting module sending batches to a sink, untagged
//! and behind route tags (reading the revision header, the Istio path); with the module loaded
//! as an access logger, both ways; with the tagging module writing the tags itself; with each
//! opt-in `record` value; with route tags alone; with Envoy's gRPC access-log service streaming
//! every request's entry to a receiver (the native alternative); with the empty filter reduced
//! to `on_log` (the SDK's per-stream floor) and evaluating Plover's four values there (the
//! floor of any evaluation-based filter); with the empty filter making one host call (`one
//! read`); and with any other builds (`--variant NAME=PATH.wasm`) or configurations
//! (`--plover-config NAME=JSON`); `--only NAME,…` keeps those named (and the three the summary
//! needs). They are measured in alternation, round after round, so drifts of this noisy
//! machine hit all alike:
//! - CPU time Envoy spent per request (from /proc/<pid>/stat) under closed-loop load with
//!   `wrk -c 16`, and the throughput;
//! - p50/p99 latency at moderate load: one client sends one request at a time, to each Envoy in
//!   turn on its own keep-alive connection, so every variant's samples are taken interleaved
//!   under the same conditions (wrk against one Envoy after the other let a noisy second
//!   land on one variant only).
//!
//! While it runs, a 0 µs CPU wake-up latency is requested ([`plover_testkit::latency`]): halted
//! vCPUs of this VM take milliseconds to wake, which would swamp a 100 µs p99 target.
//!
//! Medians across rounds (CPU) and quantiles of all samples (latency) are printed with the
//! ratios the targets are stated in.
//!
//! Last, the measurement's accuracy under load (Plover's target: the gateway's p50 within 1% +
//! 1 ms of the backend's configured delay): a fresh Envoy with Plover (two workers, unpinned)
//! before a 20 ms stable and a 50 ms canary backend, 8 concurrent clients, the filter's
//! histograms from the sink beside the backends' own and the client's figures. The end-to-end
//! tests assert only that the filter's figure lies between the backend's and the client's; the
//! distance to the configured delay depends on the machine and is judged here.
//!
//! `--instructions N` measures instead the instructions Envoy executes per request, with Envoy
//! under `valgrind --tool=callgrind` (whose counts, unlike CPU time, do not depend on what else
//! the machine is doing): each variant in turn is warmed up, its counters zeroed, sent N
//! requests with h2load, and its count read back, twice.

use std::process::Command;
use std::time::Duration;

use plover_testkit::access_log::AccessLogReceiver;
use plover_testkit::backend::{
    stable_and_slower_failing_canary, Backend, Behaviour, CANARY_DELAY_MS, STABLE_DELAY_MS,
};
use plover_testkit::envoy::{Envoy, GatewaySpec, Upstream, WasmFilter};
use plover_testkit::http::load;
use plover_testkit::sink::Sink;
use plover_testkit::tools;
use plover_testkit::LatencyReport;

struct Args {
    rounds: usize,
    seconds: u64,
    connections: u32,
    /// Other builds of the Plover filter measured beside the current one (`--variant NAME=PATH`),
    /// e.g. to compare a change against the last commit's build in the same run.
    variants: Vec<(String, std::path::PathBuf)>,
    /// The current build with its configuration changed (`--plover-config NAME=JSON`, the JSON
    /// object merged into the bench's configuration), e.g. to price response tagging.
    configured_variants: Vec<(String, serde_json::Value)>,
    /// The empty fixture with another configuration (`--fixture NAME=CONFIG`), e.g.
    /// `evaluate:[response.code]` to price one CEL evaluation.
    fixture_variants: Vec<(String, String)>,
    /// Requests per measurement in instruction-count mode.
    instructions: Option<u64>,
    /// Only the variants named here (`--only NAME,NAME`), the three the summary needs kept.
    only: Vec<String>,
}

fn parse_args() -> Args {
    let mut args = Args {
        rounds: 5,
        seconds: 4,
        connections: 16,
        variants: Vec::new(),
        configured_variants: Vec::new(),
        fixture_variants: Vec::new(),
        instructions: None,
        only: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_default();
        let number = || {
            value
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{flag} takes a positive number, got {value:?}"))
        };
        match flag.as_str() {
            "--rounds" => args.rounds = number() as usize,
            "--seconds" => args.seconds = number(),
            "--connections" => args.connections = number() as u32,
            "--instructions" => args.instructions = Some(number().max(1)),
            // Variant names hold no comma.
            "--only" => args.only = value.split(',').map(|v| v.trim().to_owned()).collect(),
            "--variant" => match value.split_once('=') {
                Some((name, path)) if !name.is_empty() && !path.is_empty() => {
                    args.variants.push((name.to_owned(), path.into()))
                }
                _ => panic!("--variant takes NAME=PATH.wasm, got {value:?}"),
            },
            "--fixture" => match value.split_once('=') {
                Some((name, configuration)) if !name.is_empty() => args
                    .fixture_variants
                    .push((name.to_owned(), configuration.to_owned())),
                _ => panic!("--fixture takes NAME=CONFIGURATION, got {value:?}"),
            },
            "--plover-config" => match value
                .split_once('=')
                .map(|(name, json)| (name, serde_json::from_str::<serde_json::Value>(json)))
            {
                Some((name, Ok(changes))) if !name.is_empty() && changes.is_object() => {
                    args.configured_variants.push((name.to_owned(), changes))
                }
                _ => panic!("--plover-config takes NAME={{JSON object}}, got {value:?}"),
            },
            other => panic!(
                "unknown flag {other}; flags: --rounds N --seconds N --connections N --variant NAME=PATH.wasm --plover-config NAME=JSON --fixture NAME=CONFIG --instructions REQUESTS --only NAME,NAME"
            ),
        }
    }
    args
}

/// One wrk run's figures.
#[derive(Debug, Default, Clone, Copy)]
struct WrkResult {
    requests: u64,
    rps: f64,
}

fn wrk(url: &str, connections: u32, seconds: u64) -> WrkResult {
    let mut command = Command::new("taskset");
    if tools::which("taskset").is_some() {
        command.args(["-c", "1"]).arg(tools::debian_tool("wrk"));
    } else {
        command = Command::new(tools::debian_tool("wrk"));
    }
    let out = command
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            url,
        ])
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut result = WrkResult::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [n, "requests", "in", ..] => result.requests = n.parse().unwrap_or(0),
            ["Requests/sec:", v] => result.rps = v.parse().unwrap_or(0.0),
            _ => {}
        }
    }
    assert!(
        result.requests > 0,
        "wrk produced no requests:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        eprintln!("warning: wrk saw errors against {url}:\n{text}");
    }
    result
}

/// User+system CPU seconds of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    let clk_tck = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0);
    ticks / clk_tck
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Quantile `q` of `samples_us` (nearest rank; sorts the samples).
fn quantile(samples_us: &mut [f64], q: f64) -> f64 {
    if samples_us.is_empty() {
        return f64::NAN;
    }
    samples_us.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * samples_us.len() as f64).ceil() as usize).clamp(1, samples_us.len());
    samples_us[rank - 1]
}

/// For `duration`, sends one GET at a time to each of the Envoys listening on `ports` in turn,
/// each on its own keep-alive connection, and returns the latencies (µs) of each. One request
/// in flight at a time: moderate load, and samples of all variants interleaved in time.
fn interleaved_latencies(ports: &[u16], duration: Duration) -> Vec<Vec<f64>> {
    let mut connections: Vec<KeepAlive> = ports.iter().map(|&port| KeepAlive::open(port)).collect();
    let mut latencies = vec![Vec::new(); ports.len()];
    let deadline = std::time::Instant::now() + duration;
    let mut cycle = 0;
    while std::time::Instant::now() < deadline {
        for k in 0..ports.len() {
            let i = (cycle + k) % ports.len();
            let started = std::time::Instant::now();
            connections[i].get();
            latencies[i].push(started.elapsed().as_nanos() as f64 / 1_000.0);
        }
        cycle += 1;
    }
    latencies
}

/// A keep-alive HTTP/1.1 connection sending `GET /` and reading each answer whole (the
/// backend's answers carry a content-length).
struct KeepAlive {
    port: u16,
    stream: std::net::TcpStream,
    buffer: Vec<u8>,
}

impl KeepAlive {
    fn open(port: u16) -> KeepAlive {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect to Envoy on port {port}: {e}"));
        stream.set_nodelay(true).expect("TCP_NODELAY");
        KeepAlive {
            port,
            stream,
            buffer: Vec::with_capacity(4096),
        }
    }

    fn get(&mut self) {
        use std::io::{Read, Write};
        let port = self.port;
        self.stream
            .write_all(b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n")
            .unwrap_or_else(|e| panic!("send to Envoy on port {port}: {e}"));
        self.buffer.clear();
        let mut chunk = [0u8; 4096];
        loop {
            let n = self
                .stream
                .read(&mut chunk)
                .unwrap_or_else(|e| panic!("read from Envoy on port {port}: {e}"));
            assert!(n > 0, "Envoy on port {port} closed the connection");
            self.buffer.extend_from_slice(&chunk[..n]);
            let Some(head_end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&self.buffer[..head_end]).to_ascii_lowercase();
            assert!(
                head.starts_with("http/1.1 200"),
                "Envoy on port {port} answered {head:?}"
            );
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no content-length from Envoy on port {port}: {head:?}"));
            if self.buffer.len() >= head_end + 4 + length {
                return;
            }
        }
    }
}

fn plover_config() -> String {
    plover_config_with(&serde_json::json!({}))
}

/// The bench's configuration with the top-level fields of `changes` replaced.
fn plover_config_with(changes: &serde_json::Value) -> String {
    let mut config = serde_json::json!({
        "gateway_id": "bench",
        "exporter": {"cluster": "plover_exporter", "token": "bench-token"},
        "rules": [
            {"match": {"exact": "stable"}, "namespace": "bench", "service": "app", "role": "stable", "revision": "v1"}
        ]
    });
    if let (Some(config), Some(changes)) = (config.as_object_mut(), changes.as_object()) {
        config.extend(changes.clone());
    }
    config.to_string()
}

/// The named variants the summary's targets are stated on.
const NO_FILTER: &str = "no filter";
const EMPTY: &str = "empty wasm";
const PLOVER: &str = "plover";
const PLOVER_TAGGED: &str = "plover+route tags";
const PLOVER_ACCESS_LOG: &str = "plover access log";
const PLOVER_ACCESS_LOG_TAGGED: &str = "plover access log+route tags";

/// The header the route tags (and the tagged variant's filter reads as its revision header).
const TAG_HEADER: &str = plover_testkit::envoy::ROUTE_TAG_HEADER;

fn main() {
    let args = parse_args();
    let awake = plover_testkit::latency::keep_cpus_awake();
    // The backend and this process run on CPU 1, Envoy on CPU 0, so Envoy's CPU time is its own.
    if tools::which("taskset").is_some() {
        let _ = Command::new("taskset")
            .args(["-pc", "1", &std::process::id().to_string()])
            .output();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let backend = runtime.block_on(Backend::start("v1", Behaviour::default()));
    let sink = runtime.block_on(Sink::start("bench-token"));
    let access_log = runtime.block_on(AccessLogReceiver::start());
    let dir = tempfile::tempdir().expect("temp dir");

    let untagged = Upstream {
        cluster: "stable".into(),
        port: backend.port,
        weight: 100,
        tag: None,
    };
    let base = GatewaySpec {
        upstreams: vec![untagged.clone()],
        concurrency: 1,
        ..GatewaySpec::default()
    };
    // The route sets the revision tag on the request and the response, as Plover's routers do.
    let route_tagged = GatewaySpec {
        upstreams: vec![Upstream {
            tag: Some("stable/v1".into()),
            ..untagged
        }],
        ..base.clone()
    };
    let module = |variable: &str| {
        std::path::PathBuf::from(std::env::var_os(variable).unwrap_or_else(|| {
            panic!("{variable} is not set: run this through `cargo xtask bench filter`")
        }))
    };
    // The empty filter (see filter/empty-fixture) with all of the SDK's exports, and reduced to
    // what counting in `on_log` needs.
    let (empty_module, empty_on_log_only) = (
        module("PLOVER_EMPTY_FILTER_WASM"),
        module("PLOVER_EMPTY_FILTER_ON_LOG_ONLY_WASM"),
    );
    // Plover sending its batches to the sink, as an HTTP filter or as an access logger.
    let with_plover = |on: &GatewaySpec, filter: WasmFilter| GatewaySpec {
        filter: Some(filter),
        exporter: Some(("plover_exporter".into(), sink.port)),
        ..on.clone()
    };
    let as_access_logger = |on: &GatewaySpec, logger: WasmFilter| GatewaySpec {
        access_logger: Some(logger),
        exporter: Some(("plover_exporter".into(), sink.port)),
        ..on.clone()
    };
    let plover = |changes: serde_json::Value| WasmFilter::plover(plover_config_with(&changes));
    // Behind route tags, the filter reads the revision header with the rest (the Istio path).
    let reading_the_tag = || {
        plover(serde_json::json!({
            "sources": ["cluster", "response_header"],
            "response_header": {"name": TAG_HEADER}
        }))
    };
    let fixture_of = |module: &std::path::Path, configuration: &str| GatewaySpec {
        filter: Some(WasmFilter {
            module: module.to_owned(),
            configuration: configuration.to_owned(),
            root_id: "empty".into(),
        }),
        ..base.clone()
    };
    let fixture = |configuration: &str| fixture_of(&empty_module, configuration);
    let mut tagging_module = plover(serde_json::json!({
        "tagging": {"request_header": TAG_HEADER, "response_header": TAG_HEADER}
    }));
    tagging_module.module = tools::filter_tagging_wasm();
    let mut variants: Vec<(String, GatewaySpec)> = vec![
        (NO_FILTER.into(), base.clone()),
        (EMPTY.into(), fixture("")),
        (
            PLOVER.into(),
            with_plover(&base, plover(serde_json::json!({}))),
        ),
        ("route tags".into(), route_tagged.clone()),
        // What a tagged request through Istio costs: the route writes the tags, the filter
        // reads the revision header with the rest.
        (
            PLOVER_TAGGED.into(),
            with_plover(&route_tagged, reading_the_tag()),
        ),
        // The counting module loaded as an access logger: no per-stream context at all.
        (
            PLOVER_ACCESS_LOG.into(),
            as_access_logger(&base, plover(serde_json::json!({}))),
        ),
        (
            PLOVER_ACCESS_LOG_TAGGED.into(),
            as_access_logger(&route_tagged, reading_the_tag()),
        ),
        // Tags written by the filter (the tagging module, for routes Plover does not manage).
        ("tagging module".into(), with_plover(&base, tagging_module)),
    ];
    // The floor of a module counting in `on_log` (the SDK's context bookkeeping, no header or
    // body hook), and that floor plus the evaluation Plover makes: what is left above it is
    // Plover's own work.
    variants.push((
        "empty on_log-only".into(),
        fixture_of(&empty_on_log_only, ""),
    ));
    variants.push((
        "evaluate on_log-only".into(),
        fixture_of(
            &empty_on_log_only,
            "evaluate:[xds.cluster_name, response.code, response.flags, request.duration]",
        ),
    ));
    // Each opt-in value priced on its own, and the one on by default (the host read that
    // tells mirrored copies apart) priced by its absence.
    for (name, record) in [
        ("plover-mirrored", serde_json::json!({"mirrored": false})),
        ("plover+route", serde_json::json!({"route": true})),
        ("plover+sizes", serde_json::json!({"sizes": true})),
        ("plover+grpc", serde_json::json!({"grpc_status": true})),
    ] {
        variants.push((
            name.into(),
            with_plover(&base, plover(serde_json::json!({ "record": record }))),
        ));
    }
    // The native alternative: Envoy's gRPC access-log service streaming each request's entry.
    variants.push((
        "grpc access log".into(),
        GatewaySpec {
            grpc_access_log: Some(access_log.port),
            ..base.clone()
        },
    ));
    // The empty filter making one host call per request (reading the cluster name): the floor
    // for any filter that tells revisions apart by cluster.
    variants.push(("one read".into(), fixture("read-cluster-name")));
    if !args.only.is_empty() {
        // The summary's ratios need these three; variants asked for by flag are kept too.
        variants.retain(|(name, _)| {
            [NO_FILTER, EMPTY, PLOVER].contains(&name.as_str()) || args.only.contains(name)
        });
    }
    for (name, configuration) in &args.fixture_variants {
        variants.push((name.clone(), fixture(configuration)));
    }
    for (name, module) in &args.variants {
        let mut filter = WasmFilter::plover(plover_config());
        filter.module = module.clone();
        variants.push((name.clone(), with_plover(&base, filter)));
    }
    for (name, changes) in &args.configured_variants {
        variants.push((name.clone(), with_plover(&base, plover(changes.clone()))));
    }
    if let Some(requests) = args.instructions {
        instructions(&variants, requests, dir.path());
        let (messages, bytes) = access_log.received();
        println!("access-log receiver: {messages} messages, {bytes} bytes");
        return;
    }
    let envoys: Vec<Envoy> = variants
        .iter()
        .map(|(_, spec)| {
            let envoy = Envoy::start(spec, dir.path());
            if tools::which("taskset").is_some() {
                let _ = Command::new("taskset")
                    .args(["-a", "-pc", "0", &envoy.process.pid().to_string()])
                    .output();
            }
            envoy
        })
        .collect();

    println!(
        "bench filter: {} rounds; CPU phase wrk -c{} for {}s per variant, latency phase one request at a time to each Envoy in turn for {}s; Envoy --concurrency 1",
        args.rounds, args.connections, args.seconds, args.seconds
    );
    println!("{}", awake.state);
    for envoy in &envoys {
        wrk(&envoy.url("/"), 4, 1); // warm-up: VM start, connection pools
    }
    let mut cpu_per_request = vec![Vec::new(); envoys.len()];
    let mut throughput = vec![Vec::new(); envoys.len()];
    let mut latencies = vec![Vec::new(); envoys.len()];
    let mut p99_added_by_round = Vec::new();
    let ports: Vec<u16> = envoys.iter().map(|e| e.listener_port).collect();
    let index = |name: &str| {
        variants
            .iter()
            .position(|(n, _)| n == name)
            .expect("a named variant")
    };
    let (none, empty, plover) = (index(NO_FILTER), index(EMPTY), index(PLOVER));
    // The tagged variant, when measured (else plover again).
    let tagged = variants
        .iter()
        .position(|(n, _)| n == PLOVER_TAGGED)
        .unwrap_or(plover);
    for round in 0..args.rounds {
        // Rotate the order so no variant always runs first.
        for k in 0..envoys.len() {
            let i = (round + k) % envoys.len();
            let envoy = &envoys[i];
            let before = cpu_seconds(envoy.process.pid());
            let loaded = wrk(&envoy.url("/"), args.connections, args.seconds);
            let after = cpu_seconds(envoy.process.pid());
            cpu_per_request[i].push((after - before) * 1e6 / loaded.requests as f64);
            throughput[i].push(loaded.rps);
        }
        let mut round_latencies = interleaved_latencies(&ports, Duration::from_secs(args.seconds));
        let none_p99 = quantile(&mut round_latencies[none], 0.99);
        p99_added_by_round.push((
            quantile(&mut round_latencies[plover], 0.99) - none_p99,
            quantile(&mut round_latencies[tagged], 0.99) - none_p99,
        ));
        for (all, round) in latencies.iter_mut().zip(round_latencies) {
            all.extend(round);
        }
        eprint!(".");
    }
    eprintln!();

    let medians: Vec<(f64, f64, f64, f64)> = (0..variants.len())
        .map(|i| {
            (
                median(&mut cpu_per_request[i]),
                median(&mut throughput[i]),
                quantile(&mut latencies[i], 0.5),
                quantile(&mut latencies[i], 0.99),
            )
        })
        .collect();
    let added_empty = medians[empty].0 - medians[none].0;
    println!(
        "{:<30} {:>11} {:>11} {:>9} {:>12} {:>9} {:>9} {:>12}",
        "variant",
        "CPU µs/req",
        "added µs",
        "× empty",
        "% of Envoy",
        "req/s",
        "p50 µs",
        "p99 added µs"
    );
    for (i, (name, _)) in variants.iter().enumerate() {
        let m = medians[i];
        let added = m.0 - medians[none].0;
        println!(
            "{:<30} {:>11.1} {:>11.1} {:>9.2} {:>11.0}% {:>9.0} {:>9.1} {:>12.1}",
            name,
            m.0,
            added,
            added / added_empty,
            100.0 * added / medians[none].0,
            m.1,
            m.2,
            m.3 - medians[none].3
        );
    }
    println!();
    let by_round = |pick: fn(&(f64, f64)) -> f64| {
        p99_added_by_round
            .iter()
            .map(|d| format!("{:.0}", pick(d)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "p99 added over no filter at moderate load (target ≤ 100 µs), over {} samples each: plover {:.1} µs (by round {}), plover+route tags {:.1} µs (by round {})",
        latencies[none].len().min(latencies[plover].len()),
        medians[plover].3 - medians[none].3,
        by_round(|d| d.0),
        medians[tagged].3 - medians[none].3,
        by_round(|d| d.1),
    );
    println!(
        "p99 added by the empty wasm filter (the floor any Wasm filter pays): {:.1} µs",
        medians[empty].3 - medians[none].3
    );
    std::thread::sleep(Duration::from_secs(3)); // let the last flush arrive
    let received = sink.received();
    println!(
        "sink check: the plover variants reported {} requests in {} batches from {} VM instance(s); backend served {}",
        received.total_requests(),
        received.batches,
        received.instances.len(),
        backend.served()
    );
    let (messages, bytes) = access_log.received();
    println!("access-log receiver: {messages} messages, {bytes} bytes");
    drop(envoys);
    accuracy(dir.path());
}

/// The gateway's latency figures under load against the backends' configured delays.
fn accuracy(dir: &std::path::Path) {
    const REQUESTS: u64 = 4_000;
    // Undo the CPU pinning of the phases above: this phase measures a gateway as deployed.
    if tools::which("taskset").is_some() {
        let _ = Command::new("taskset")
            .args(["-a", "-pc", "0-1", &std::process::id().to_string()])
            .output();
    }
    // Two workers, as the end-to-end tests' clients and backends have.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (stable, canary) = runtime.block_on(stable_and_slower_failing_canary(500));
    let sink = runtime.block_on(Sink::start("bench-token"));
    let envoy = Envoy::start(
        &GatewaySpec::plover_seventy_thirty(stable.port, canary.port, "bench-token", sink.port),
        dir,
    );
    let report = runtime.block_on(load(&envoy.url("/"), REQUESTS, 8, "x-plover-revision"));
    std::thread::sleep(Duration::from_secs(3)); // let the last flush arrive
    let received = sink.received();
    println!();
    println!(
        "accuracy under load ({REQUESTS} requests, 8 clients, Envoy --concurrency 2; target: p50 within 1% + 1 ms of the configured delay):"
    );
    for (backend, delay_ms) in [(&stable, STABLE_DELAY_MS), (&canary, CANARY_DELAY_MS)] {
        let revision = backend.revision.as_str();
        let (Some(gateway), Some(client)) = (
            received.durations.get(revision),
            report.latency_by_revision.get(revision),
        ) else {
            println!("{revision}: no samples (sink {:?})", received.requests);
            continue;
        };
        for q in [0.5, 0.99] {
            let measured = gateway.value_at_quantile(q).unwrap_or(0) as f64;
            let figures = LatencyReport::new(q, measured, &backend.handling(), client, delay_ms);
            println!("{revision} {figures}");
        }
    }
}

/// Sends `requests` requests over two keep-alive HTTP/1.1 connections; panics unless all succeed.
fn h2load(url: &str, requests: u64) {
    let out = Command::new(tools::debian_tool("h2load"))
        .args(["--h1", "-c", "2", "-n", &requests.to_string(), url])
        .output()
        .expect("run h2load");
    let text = String::from_utf8_lossy(&out.stdout);
    let succeeded = format!("{requests} succeeded");
    assert!(
        text.contains(&succeeded) && text.contains(&format!("{requests} 2xx")),
        "h2load did not get {requests} successful responses from {url}:\n{text}"
    );
}

/// Instructions Envoy executed per request for each variant, under callgrind.
fn instructions(variants: &[(String, GatewaySpec)], requests: u64, dir: &std::path::Path) {
    let control = tools::debian_tool("callgrind_control");
    println!(
        "bench filter --instructions: Envoy --concurrency 1 under callgrind; instructions per request over {requests} requests, measured twice"
    );
    let mut per_request = Vec::new();
    for (name, spec) in variants {
        let out_file = dir.join(format!("callgrind-{}.out", name.replace(' ', "-")));
        let out_arg = format!("--callgrind-out-file={}", out_file.display());
        let launcher = [
            "valgrind",
            "--tool=callgrind",
            "--smc-check=all-non-file", // V8 writes the machine code it runs
            &out_arg,
        ];
        let envoy = Envoy::start_under(&launcher, spec, dir);
        let pid = envoy.process.pid().to_string();
        h2load(&envoy.url("/"), 500); // warm-up: V8 tiers up, connection pools fill
        let mut counts = Vec::new();
        for _ in 0..2 {
            let zeroed = Command::new(&control)
                .args(["-z", &pid])
                .output()
                .expect("callgrind_control -z");
            assert!(zeroed.status.success(), "callgrind_control -z failed");
            h2load(&envoy.url("/"), requests);
            let dumped = Command::new(&control)
                .args(["-d", &pid])
                .output()
                .expect("callgrind_control -d");
            assert!(dumped.status.success(), "callgrind_control -d failed");
            counts.push(latest_dump_total(&out_file) as f64 / requests as f64);
        }
        println!("{name:<30} {:>12.0} {:>12.0}", counts[0], counts[1]);
        per_request.push(median(&mut counts));
        drop(envoy);
    }
    let at = |name: &str| {
        variants
            .iter()
            .position(|(n, _)| n == name)
            .map(|i| per_request[i])
    };
    let (Some(none), Some(empty)) = (at(NO_FILTER), at(EMPTY)) else {
        return;
    };
    println!();
    println!(
        "{:<30} {:>12} {:>10} {:>9} {:>12}",
        "variant", "instr./req", "added", "× empty", "% of Envoy"
    );
    for (i, (name, _)) in variants.iter().enumerate() {
        let added = per_request[i] - none;
        println!(
            "{:<30} {:>12.0} {:>10.0} {:>9.2} {:>11.1}%",
            name,
            per_request[i],
            added,
            added / (empty - none),
            100.0 * added / none
        );
    }
    println!();
    for (name, target_added, target_ratio) in [
        (PLOVER, 31_000.0, 1.6),
        (PLOVER_TAGGED, 42_000.0, 2.1),
        (PLOVER_ACCESS_LOG, 31_000.0, 1.6),
        (PLOVER_ACCESS_LOG_TAGGED, 42_000.0, 2.1),
    ] {
        let Some(measured) = at(name) else {
            continue;
        };
        let added = measured - none;
        println!(
            "{name}: {added:.0} instructions added per request (target ≤ {target_added:.0}), {:.2}× the empty filter's (target ≤ {target_ratio})",
            added / (empty - none)
        );
    }
}

/// The `summary:` total of the newest dump callgrind wrote beside `out_file` (`<out_file>.<n>`).
fn latest_dump_total(out_file: &std::path::Path) -> u64 {
    let name = out_file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let dir = out_file.parent().expect("dump directory");
    // callgrind_control returns once the dump is requested; wait for the file to be complete.
    for _ in 0..600 {
        let newest = std::fs::read_dir(dir)
            .expect("read dump directory")
            .filter_map(Result::ok)
            .filter_map(|e| {
                let file = e.file_name().into_string().ok()?;
                let n: u32 = file.strip_prefix(&format!("{name}."))?.parse().ok()?;
                Some((n, e.path()))
            })
            .max();
        if let Some((_, path)) = newest {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if let Some(total) = text
                .lines()
                .find_map(|l| l.strip_prefix("summary:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                let _ = std::fs::remove_file(&path);
                return total;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("callgrind wrote no dump next to {}", out_file.display());
}
