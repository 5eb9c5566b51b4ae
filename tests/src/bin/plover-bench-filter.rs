//! `cargo xtask bench filter`: what the Plover filter costs inside a real Envoy.
//!
//! Three Envoys (one worker each, pinned to CPU 0 when `taskset` exists) proxy to the same
//! loopback backend: without a Wasm filter, with an empty proxy-wasm filter (the floor every
//! Wasm filter pays), and with Plover's filter sending batches to a sink. They are measured in
//! alternation, round after round, so drifts of this noisy machine hit all three alike:
//! - CPU time Envoy spent per request (from /proc/<pid>/stat) under closed-loop load with
//!   `wrk -c 16`, and the throughput;
//! - p50/p99 latency at moderate load (`wrk -c 1`, one request at a time).
//!
//! Medians across rounds are printed with the ratios the targets are stated in.

use std::process::Command;
use std::time::Duration;

use plover_e2e::backend::{Backend, Behaviour};
use plover_e2e::envoy::{Envoy, GatewaySpec, Upstream, WasmFilter};
use plover_e2e::sink::Sink;
use plover_e2e::tools;

struct Args {
    rounds: usize,
    seconds: u64,
    connections: u32,
}

fn parse_args() -> Args {
    let mut args = Args {
        rounds: 5,
        seconds: 4,
        connections: 16,
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
            other => panic!("unknown flag {other}; flags: --rounds N --seconds N --connections N"),
        }
    }
    args
}

/// One wrk run's figures.
#[derive(Debug, Default, Clone, Copy)]
struct WrkResult {
    requests: u64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
}

fn parse_duration_us(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1_000.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000_000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * factor)
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
            "--latency",
            url,
        ])
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut result = WrkResult::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => result.p50_us = parse_duration_us(v).unwrap_or(f64::NAN),
            ["99%", v] => result.p99_us = parse_duration_us(v).unwrap_or(f64::NAN),
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

fn plover_config() -> String {
    serde_json::json!({
        "gateway_id": "bench",
        "exporter": {"cluster": "plover_exporter", "token": "bench-token"},
        "rules": [
            {"match": {"exact": "stable"}, "namespace": "bench", "service": "app", "role": "stable", "revision": "v1"}
        ]
    })
    .to_string()
}

fn main() {
    let args = parse_args();
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
    let dir = tempfile::tempdir().expect("temp dir");

    let upstreams = vec![Upstream {
        cluster: "stable".into(),
        port: backend.port,
        weight: 100,
    }];
    let base = GatewaySpec {
        upstreams,
        concurrency: 1,
        ..GatewaySpec::default()
    };
    let empty_module = std::env::var_os("PLOVER_EMPTY_FILTER_WASM")
        .expect("PLOVER_EMPTY_FILTER_WASM (run through cargo xtask bench filter)");
    let variants: Vec<(&str, GatewaySpec)> = vec![
        ("no filter", base.clone()),
        (
            "empty wasm",
            GatewaySpec {
                filter: Some(WasmFilter {
                    module: empty_module.into(),
                    configuration: String::new(),
                    root_id: "empty".into(),
                }),
                ..base.clone()
            },
        ),
        (
            "plover",
            GatewaySpec {
                filter: Some(WasmFilter::plover(plover_config())),
                exporter: Some(("plover_exporter".into(), sink.port)),
                ..base.clone()
            },
        ),
    ];
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
        "bench filter: {} rounds; CPU phase wrk -c{} for {}s, latency phase wrk -c1 for {}s; Envoy --concurrency 1",
        args.rounds, args.connections, args.seconds, args.seconds
    );
    for envoy in &envoys {
        wrk(&envoy.url("/"), 4, 1); // warm-up: VM start, connection pools
    }
    let mut cpu_per_request = vec![Vec::new(); envoys.len()];
    let mut throughput = vec![Vec::new(); envoys.len()];
    let mut p50 = vec![Vec::new(); envoys.len()];
    let mut p99 = vec![Vec::new(); envoys.len()];
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
            let moderate = wrk(&envoy.url("/"), 1, args.seconds);
            p50[i].push(moderate.p50_us);
            p99[i].push(moderate.p99_us);
        }
        eprint!(".");
    }
    eprintln!();

    println!(
        "{:<12} {:>14} {:>12} {:>12} {:>12}",
        "variant", "CPU µs/req", "req/s", "p50 µs", "p99 µs"
    );
    let mut medians = Vec::new();
    for (i, (name, _)) in variants.iter().enumerate() {
        let m = (
            median(&mut cpu_per_request[i]),
            median(&mut throughput[i]),
            median(&mut p50[i]),
            median(&mut p99[i]),
        );
        println!(
            "{:<12} {:>14.1} {:>12.0} {:>12.1} {:>12.1}",
            name, m.0, m.1, m.2, m.3
        );
        medians.push(m);
    }
    let (none, empty, plover) = (medians[0], medians[1], medians[2]);
    let added_empty = empty.0 - none.0;
    let added_plover = plover.0 - none.0;
    println!();
    println!("added CPU per request: empty wasm {added_empty:.1} µs, plover {added_plover:.1} µs");
    println!(
        "ratio plover/empty added CPU: {:.2} (target ≤ 1.25)",
        if added_empty > 0.0 {
            added_plover / added_empty
        } else {
            f64::NAN
        }
    );
    println!(
        "plover CPU per request vs no filter: {:.2}×",
        plover.0 / none.0
    );
    println!(
        "p99 added over no filter at moderate load: {:.1} µs (target ≤ 100)",
        plover.3 - none.3
    );
    println!(
        "p50 added over no filter at moderate load: {:.1} µs",
        plover.2 - none.2
    );
    std::thread::sleep(Duration::from_secs(3)); // let the last flush arrive
    let received = sink.received();
    println!(
        "sink check: plover filter reported {} requests in {} batches from {} VM instance(s); backend served {}",
        received.total_requests(),
        received.batches,
        received.instances.len(),
        backend.served()
    );
}
