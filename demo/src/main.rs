//! `plover-demo`: the local demo (`cargo xtask demo` builds what it needs and runs this).
//! Parsing, signals and exit codes only; the demo lives in the library beside this file.

use std::path::PathBuf;
use std::process::ExitCode;

use plover_demo::progress::Display;
use plover_demo::{release, Options, Outcome};

const USAGE: &str =
    "usage: plover-demo [--scenario NAME] [--keep-running] [--plain] [--report FILE]
                   [--fixtures DIR] [--bench RUNS] [--istio]

  --scenario NAME   run only this release of demo.yaml (healthy, bad)
  --keep-running    leave the stack up after the releases (Ctrl-C stops it) and print its URLs
  --plain           plain lines even on a terminal
  --report FILE     write the outcomes as JSON
  --fixtures DIR    canary.yaml, templates.yaml and demo.yaml (default: demo/fixtures)
  --bench RUNS      benchmark: RUNS bad and RUNS healthy releases, alternated; prints the
                    time to roll a bad canary back and the healthy releases wrongly rolled back
  --istio           the releases on a real kube-apiserver with istiod and an Istio ingress
                    gateway (the example istio-subsets) instead of loopback Envoy

Exit status: 0 when every release ended as expected, 1 when one did not, 2 when the demo
could not run, 130 on Ctrl-C.";

fn parse(args: &[String]) -> Result<Options, String> {
    let mut opts = Options {
        fixtures: Options::default_fixtures(),
        scenario: None,
        keep_running: false,
        plain: false,
        bench_runs: None,
        report: None,
        istio: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--scenario" => opts.scenario = Some(value("--scenario")?),
            "--keep-running" => opts.keep_running = true,
            "--plain" => opts.plain = true,
            "--istio" => opts.istio = true,
            "--report" => opts.report = Some(PathBuf::from(value("--report")?)),
            "--fixtures" => opts.fixtures = PathBuf::from(value("--fixtures")?),
            "--bench" => {
                let runs = value("--bench")?;
                opts.bench_runs = Some(
                    runs.parse()
                        .map_err(|_| format!("--bench {runs:?}: a number of runs"))?,
                );
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if opts.istio && opts.bench_runs.is_some() {
        return Err("--bench runs on loopback only, not with --istio".into());
    }
    Ok(opts)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

/// The Istio demo runs on a thread of its own (it drives blocking processes); Ctrl-C sets the
/// flag it checks and waits for it to stop everything it started. `None` when interrupted.
fn istio(
    runtime: &tokio::runtime::Runtime,
    opts: &Options,
    display: &mut Display,
    outcomes: &mut Vec<Outcome>,
) -> Option<Result<(), plover_demo::DemoError>> {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let demo = scope.spawn(|| plover_demo::istio::run(opts, display, outcomes, &stop));
        let interrupted = runtime.block_on(async {
            loop {
                tokio::select! {
                    _ = interrupted() => return true,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {
                        if demo.is_finished() {
                            return false;
                        }
                    }
                }
            }
        });
        stop.store(interrupted, std::sync::atomic::Ordering::Relaxed);
        let result = demo.join().unwrap_or_else(|_| {
            Err(plover_demo::DemoError::Controller(
                "the Istio demo panicked".into(),
            ))
        });
        (!interrupted).then_some(result)
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let opts = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("plover-demo: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("plover-demo: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let mut display = Display::new(opts.plain || opts.bench_runs.is_some());
    let mut outcomes = Vec::new();
    // Dropping the demo's future (on a signal) drops the stack: every child is killed and the
    // temp dir removed before we exit.
    let result = if opts.istio {
        istio(&runtime, &opts, &mut display, &mut outcomes)
    } else {
        runtime.block_on(async {
            tokio::select! {
                r = release::run(&opts, &mut display, &mut outcomes) => Some(r),
                _ = interrupted() => None,
            }
        })
    };
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    display.finish();
    let planned = match result {
        Some(Err(e)) => {
            eprintln!("plover-demo: {e}");
            return ExitCode::from(2);
        }
        Some(Ok(())) => true,
        None => {
            println!("\ninterrupted: every process the demo started is stopped");
            // --keep-running ends with Ctrl-C once the releases are done.
            opts.keep_running && !outcomes.is_empty()
        }
    };
    if let Some(path) = &opts.report {
        if let Err(e) = std::fs::write(path, release::report_json(&outcomes)) {
            eprintln!("plover-demo: write {}: {e}", path.display());
        }
    }
    println!("\nsummary");
    for o in &outcomes {
        println!("  {}", o.summary_line());
    }
    if opts.bench_runs.is_some() {
        println!("\n{}", release::bench_figures(&outcomes));
    }
    if planned && !outcomes.is_empty() && outcomes.iter().all(Outcome::as_expected) {
        println!("every release ended as expected");
        ExitCode::SUCCESS
    } else if !planned {
        ExitCode::from(130)
    } else {
        println!("a release did not end as expected");
        ExitCode::from(1)
    }
}
