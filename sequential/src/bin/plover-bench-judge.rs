//! `cargo xtask bench judge`: Plover's sequential judges against the seeds' Argo-style
//! threshold templates, on the same simulated traffic (100 rps, canary at 10%, stable at 1%
//! errors and log-normal latency), side by side.

use plover_sequential::odds::OddsTestConfig;
use plover_sequential::simulate::{
    simulate, Method, Revision, Scenario, Summary, SEED_TEMPLATES, TIGHT_TEMPLATE,
};

const ALPHA: f64 = 0.05;
/// The absolute margins of the pass-side rows, in percentage points.
const MARGIN_POINTS: [f64; 2] = [0.5, 1.0];

/// Median time to detect over *all* runs, counting a run that never detected as infinitely
/// late: `None` when more than half never did.
fn median_over_all_runs(summary: &Summary) -> Option<f64> {
    let mut times: Vec<f64> = summary.failure_seconds.iter().map(|&s| s as f64).collect();
    times.resize(summary.runs as usize, f64::INFINITY);
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied()?;
    median.is_finite().then_some(median)
}

fn row(name: &str, healthy: &Summary, regressed: &Summary, horizon: u64) {
    let detected_median = regressed
        .median_failure_seconds()
        .map_or("never".into(), |s| format!("{s:.0} s"));
    let all_median =
        median_over_all_runs(regressed).map_or(format!("> {horizon} s"), |s| format!("{s:.0} s"));
    println!(
        "{name:<48} {:>10.3} {:>9.3} {:>16} {:>14}",
        healthy.failure_share(),
        regressed.failure_share(),
        detected_median,
        all_median
    );
}

fn header() {
    println!(
        "{:<48} {:>10} {:>9} {:>16} {:>14}",
        "method", "false fail", "detected", "median|detected", "median|all"
    );
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

    println!(
        "{runs} seeded releases per cell; 100 rps, canary weight 10%, watched {horizon} s, one look per second; α = {ALPHA}"
    );
    println!("false fail: share of healthy canaries failed; detected: share of regressed canaries failed within {horizon} s;");
    println!("median|all counts a regression never detected as infinitely late.");
    println!("\nerror regression: canary 2% errors vs stable 1%");
    header();
    let plover_errors = Method::PloverErrors(plover);
    let plover_regressed = simulate(&doubled_errors, &plover_errors, runs, 2);
    row(
        "plover error-ratio (sequential, vs stable)",
        &simulate(&healthy, &plover_errors, runs, 1),
        &plover_regressed,
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
        let median = median_over_all_runs(&regressed).unwrap_or(f64::INFINITY);
        fastest_seed = Some(fastest_seed.map_or(median, |f: f64| f.min(median)));
    }
    let tight = Method::Threshold(TIGHT_TEMPLATE);
    row(
        TIGHT_TEMPLATE.name,
        &simulate(&healthy, &tight, runs, 1),
        &simulate(&doubled_errors, &tight, runs, 2),
        horizon,
    );
    match (median_over_all_runs(&plover_regressed), fastest_seed) {
        (Some(p), Some(t)) if t.is_finite() => println!("plover detects {:.1}× sooner than the fastest seed template (medians over all runs)", t / p),
        (Some(p), _) => println!(
            "plover detects > {:.1}× sooner than the fastest seed template: no seed template detects it in half the runs within {horizon} s",
            horizon as f64 / p
        ),
        (None, _) => println!("plover did not detect the regression in half the runs"),
    }

    println!(
        "\nthe pass side, error judge with an absolute margin: healthy = both 1%; worse = canary 2% \
         (1 point worse: beyond a 0.5-point margin, at the edge of a 1-point one)"
    );
    println!(
        "{:<48} {:>10} {:>12} {:>14} {:>16} {:>13}",
        "method", "false fail", "passed", "median|passed", "never passed", "worse passed"
    );
    for points in MARGIN_POINTS {
        let margin = Method::PloverErrorsMargin(plover, points / 100.0);
        let healthy_margin = simulate(&healthy, &margin, runs, 1);
        let worse_margin = simulate(&doubled_errors, &margin, runs, 2);
        println!(
            "{:<48} {:>10.3} {:>12.3} {:>14} {:>16.3} {:>13.3}",
            format!("plover error-ratio, margin {points} points"),
            healthy_margin.failure_share(),
            healthy_margin.pass_share(),
            healthy_margin
                .median_pass_seconds()
                .map_or("never".into(), |s| format!("{s:.0} s")),
            1.0 - healthy_margin.pass_share(),
            worse_margin.pass_share(),
        );
    }
    println!(
        "(worse passed: the false-pass rate β, bounded by α = {ALPHA}; the same judge's detection of the worse canary is the first table's plover row)"
    );

    println!("\nlatency regression: canary every latency +20% (so p99 +20%), log-normal σ = 0.5");
    header();
    let latency_runs = runs.min(300);
    for (name, method) in [
        (
            "plover p99 shift (sequential, vs stable)",
            Method::PloverLatencyQuantile(0.99, plover),
        ),
        (
            "plover latency distribution (4 quantiles)",
            Method::PloverLatencyDistribution(plover),
        ),
    ] {
        row(
            name,
            &simulate(&healthy, &method, latency_runs, 3),
            &simulate(&slower, &method, latency_runs, 4),
            horizon,
        );
    }
    println!("(latency rows: {latency_runs} releases each; the seeds have no latency template)");
}
