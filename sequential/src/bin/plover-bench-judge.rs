//! `cargo xtask bench judge`: Plover's sequential judges against the seeds' Argo-style
//! threshold templates, Kayenta's fixed-horizon Mann–Whitney judgement and the oracle (Wald's
//! SPRT knowing the true rates), on the same simulated traffic (100 rps, canary at 10%, stable
//! at 1% errors and log-normal latency), side by side.

use plover_sequential::odds::OddsTestConfig;
use plover_sequential::simulate::{
    simulate, KayentaJudge, Method, OracleSprt, Revision, Scenario, Summary, SEED_TEMPLATES,
    TIGHT_TEMPLATE,
};

const ALPHA: f64 = 0.05;
/// The absolute margins of the pass-side rows, in percentage points.
const MARGIN_POINTS: [f64; 2] = [0.5, 1.0];
/// The latency judges' margin in the pass-side rows, µs.
const LATENCY_MARGIN_MICROS: u64 = 5_000;

/// Median time over *all* runs, counting a run that never got there as infinitely late:
/// `None` when more than half never did.
fn median_over_all_runs(seconds: &[u64], runs: u64) -> Option<f64> {
    let mut times: Vec<f64> = seconds.iter().map(|&s| s as f64).collect();
    times.resize(runs as usize, f64::INFINITY);
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied()?;
    median.is_finite().then_some(median)
}

fn seconds(s: Option<f64>, otherwise: &str) -> String {
    s.map_or(otherwise.to_owned(), |s| format!("{s:.0} s"))
}

fn row(name: &str, healthy: &Summary, regressed: &Summary, horizon: u64) {
    println!(
        "{name:<50} {:>10.3} {:>9.3} {:>16} {:>14}",
        healthy.failure_share(),
        regressed.failure_share(),
        seconds(regressed.median_failure_seconds(), "never"),
        seconds(
            median_over_all_runs(&regressed.failure_seconds, regressed.runs),
            &format!("> {horizon} s")
        ),
    );
}

fn header() {
    println!(
        "{:<50} {:>10} {:>9} {:>16} {:>14}",
        "method", "false fail", "detected", "median|detected", "median|all"
    );
}

fn pass_header() {
    println!(
        "{:<50} {:>10} {:>8} {:>13} {:>14} {:>13} {:>13}",
        "method",
        "false fail",
        "passed",
        "never passed",
        "median|passed",
        "median|all",
        "worse passed"
    );
}

/// A pass-side row; returns the median time to pass over all healthy runs.
fn pass_row(name: &str, healthy: &Summary, worse: &Summary, horizon: u64) -> Option<f64> {
    let all = median_over_all_runs(&healthy.pass_seconds, healthy.runs);
    println!(
        "{name:<50} {:>10.3} {:>8.3} {:>13.3} {:>14} {:>13} {:>13.3}",
        healthy.failure_share(),
        healthy.pass_share(),
        1.0 - healthy.pass_share(),
        seconds(healthy.median_pass_seconds(), "never"),
        seconds(all, &format!("> {horizon} s")),
        worse.pass_share(),
    );
    all
}

/// "Plover needs 1.3× the oracle's time", from two medians over all runs.
fn versus_oracle(what: &str, plover: Option<f64>, oracle: Option<f64>, horizon: u64) {
    match (plover, oracle) {
        (Some(p), Some(o)) => println!(
            "  {what}: plover {p:.0} s, the oracle {o:.0} s: plover needs {:.2}× the fewest looks any test could need",
            p / o
        ),
        (None, Some(o)) => println!(
            "  {what}: the oracle {o:.0} s; plover not within {horizon} s in half the runs (> {:.1}×)",
            horizon as f64 / o
        ),
        _ => println!("  {what}: the oracle did not decide within {horizon} s in half the runs"),
    }
}

fn main() {
    let runs: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000);
    let plover = OddsTestConfig {
        alpha: ALPHA,
        tolerance: 1.0,
        min_effect: 2.0,
    };
    let healthy = Scenario::healthy();
    let horizon = healthy.horizon_seconds;
    let doubled_errors = Scenario {
        canary: Revision {
            error_rate: 0.02,
            ..Revision::HEALTHY
        },
        ..healthy
    };
    let slower = Scenario {
        canary: Revision::HEALTHY.slower(1.2),
        ..healthy
    };
    let stable_rate = Revision::HEALTHY.error_rate;
    let oracle = |worse: f64| {
        Method::Oracle(OracleSprt {
            acceptable: stable_rate,
            worse,
            alpha: ALPHA,
            beta: ALPHA,
        })
    };
    // Kayenta at the watch window (one-minute points) and at Spinnaker's guidance (an
    // interval of an hour, so at least 50 points per metric).
    let kayenta = [
        (
            "kayenta mann-whitney, judged at 10 min (10 points)",
            KayentaJudge {
                interval_seconds: 600,
                step_seconds: 60,
            },
        ),
        (
            "kayenta mann-whitney, judged at 60 min (60 points)",
            KayentaJudge {
                interval_seconds: 3_600,
                step_seconds: 60,
            },
        ),
    ];
    let watched_for = |k: &KayentaJudge, s: Scenario| Scenario {
        horizon_seconds: k.interval_seconds,
        ..s
    };

    println!(
        "{runs} seeded releases per cell; 100 rps, canary weight 10%, watched {horizon} s (Kayenta: until its judgement), one look per second; α = β = {ALPHA}"
    );
    println!("false fail: share of healthy canaries failed; detected: share of regressed canaries failed;");
    println!("median|all counts a run that never got there as infinitely late.");
    println!("oracle: Wald's SPRT knowing the true stable and canary rates, α = β = {ALPHA}: the fewest looks any sequential test can need.");

    println!("\nerror regression: canary 2% errors vs stable 1%");
    header();
    let plover_errors = Method::PloverErrors(plover, None);
    let plover_regressed = simulate(&doubled_errors, &plover_errors, runs, 2);
    row(
        "plover error-ratio (sequential, vs stable)",
        &simulate(&healthy, &plover_errors, runs, 1),
        &plover_regressed,
        horizon,
    );
    let oracle_regressed = simulate(&doubled_errors, &oracle(0.02), runs, 2);
    row(
        "oracle SPRT (1% vs 2%, rates known)",
        &simulate(&healthy, &oracle(0.02), runs, 1),
        &oracle_regressed,
        horizon,
    );
    let mut fastest_seed: Option<f64> = None;
    for template in SEED_TEMPLATES {
        let method = Method::Threshold(template);
        let regressed = simulate(&doubled_errors, &method, runs, 2);
        row(
            template.name,
            &simulate(&healthy, &method, runs, 1),
            &regressed,
            horizon,
        );
        let median = median_over_all_runs(&regressed.failure_seconds, regressed.runs)
            .unwrap_or(f64::INFINITY);
        fastest_seed = Some(fastest_seed.map_or(median, |f: f64| f.min(median)));
    }
    let tight = Method::Threshold(TIGHT_TEMPLATE);
    row(
        TIGHT_TEMPLATE.name,
        &simulate(&healthy, &tight, runs, 1),
        &simulate(&doubled_errors, &tight, runs, 2),
        horizon,
    );
    let mut kayenta_summaries = Vec::new();
    for (name, k) in kayenta {
        let method = Method::Kayenta(k);
        let healthy_k = simulate(&watched_for(&k, healthy), &method, runs, 1);
        let worse_k = simulate(&watched_for(&k, doubled_errors), &method, runs, 2);
        row(name, &healthy_k, &worse_k, k.interval_seconds);
        kayenta_summaries.push((name, healthy_k, worse_k, k.interval_seconds));
    }
    let plover_median = median_over_all_runs(&plover_regressed.failure_seconds, runs);
    match (plover_median, fastest_seed) {
        (Some(p), Some(t)) if t.is_finite() => println!("  plover detects {:.1}× sooner than the fastest seed template (medians over all runs)", t / p),
        (Some(p), _) => println!(
            "  plover detects > {:.1}× sooner than the fastest seed template: no seed template detects it in half the runs within {horizon} s",
            horizon as f64 / p
        ),
        (None, _) => println!("  plover did not detect the regression in half the runs"),
    }
    versus_oracle(
        "time to detect (median over all runs)",
        plover_median,
        median_over_all_runs(&oracle_regressed.failure_seconds, runs),
        horizon,
    );

    println!(
        "\nthe pass side, error judge with an absolute margin: healthy = both 1%; worse = canary 2% \
         (1 point worse: beyond a 0.5-point margin, at the edge of a 1-point one)"
    );
    pass_header();
    for points in MARGIN_POINTS {
        let margin = Method::PloverErrors(plover, Some(points / 100.0));
        let plover_pass = pass_row(
            &format!("plover error-ratio, margin {points} points"),
            &simulate(&healthy, &margin, runs, 1),
            &simulate(&doubled_errors, &margin, runs, 2),
            horizon,
        );
        let edge = stable_rate + points / 100.0;
        let oracle_pass = pass_row(
            &format!("oracle SPRT (1% vs {}%, rates known)", edge * 100.0),
            &simulate(&healthy, &oracle(edge), runs, 1),
            &simulate(&doubled_errors, &oracle(edge), runs, 2),
            horizon,
        );
        versus_oracle(
            &format!("time to pass at {points} points (median over all runs)"),
            plover_pass,
            oracle_pass,
            horizon,
        );
    }
    for (name, healthy_k, worse_k, at) in &kayenta_summaries {
        pass_row(name, healthy_k, worse_k, *at);
    }
    println!(
        "(worse passed: the false-pass rate β, bounded by α = {ALPHA} for plover; Kayenta's fixed horizon passes whatever it does not call High)"
    );

    println!("\nlatency regression: canary every latency +20% (so p99 +20%, ≈ +13 ms), log-normal σ = 0.5, stable p99 ≈ 64 ms");
    header();
    let latency_runs = runs.min(300);
    let latency_methods = [
        (
            "plover p99 shift (sequential, vs stable)",
            Method::PloverLatencyQuantile(0.99, plover, None),
        ),
        (
            "plover latency distribution (4 quantiles)",
            Method::PloverLatencyDistribution(plover, None),
        ),
        (
            "plover p99 shift, margin 5 ms",
            Method::PloverLatencyQuantile(0.99, plover, Some(LATENCY_MARGIN_MICROS)),
        ),
        (
            "plover latency distribution, margin 5 ms",
            Method::PloverLatencyDistribution(plover, Some(LATENCY_MARGIN_MICROS)),
        ),
    ];
    let mut latency = Vec::new();
    for (name, method) in latency_methods {
        let h = simulate(&healthy, &method, latency_runs, 3);
        let s = simulate(&slower, &method, latency_runs, 4);
        row(name, &h, &s, horizon);
        latency.push((name, h, s));
    }
    println!("the latency judges' pass side: healthy = same distribution; worse = +20% (beyond a 5 ms margin at p99)");
    pass_header();
    for (name, h, s) in &latency {
        pass_row(name, h, s, horizon);
    }
    println!("(latency rows: {latency_runs} releases each; the seeds have no latency template; without a margin the pass side is 'odds of exceeding stable's quantile below 2×')");
}
