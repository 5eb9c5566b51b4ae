//! `fuzz`: the `cargo fuzz` targets of `fuzz/` (wire batch decoder, condition parser and
//! evaluator, AnalysisTemplate loader, filter configuration), each run for a while with
//! libFuzzer and AddressSanitizer, starting from the repository's own fixtures of each input
//! ([`seeds`]).
//! `cargo xtask test` runs each for [`SHORT_RUN_SECONDS`]; the long run is
//! `cargo xtask fuzz --seconds 3600`. A crash leaves its input in `fuzz/artifacts/<target>/`
//! and fails the command; each one found becomes a regression test beside the code.

use std::process::Command;

use crate::{cargo_bin, install, run, workspace_root};

pub const TARGETS: [&str; 4] = ["wire_batch", "condition", "template", "filter_config"];

/// Where each target's first inputs come from: the fixtures the other tests already use (the
/// golden batch, the filter configurations, the seed AnalysisTemplates), and for conditions a
/// few of their own.
fn seeds(target: &str) -> &'static str {
    match target {
        "wire_batch" => "wire/testdata",
        "template" => "tests/fixtures/seed-templates",
        "filter_config" => "wire/testdata/filter-config",
        _ => "fuzz/seeds/condition",
    }
}

/// Seconds per target in the test command's short run.
pub const SHORT_RUN_SECONDS: u64 = 15;

/// `fuzz [--seconds N] [TARGET…]`.
pub fn run_targets(args: &[&str]) -> Result<(), String> {
    let mut seconds = SHORT_RUN_SECONDS;
    let mut targets: Vec<&str> = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match *arg {
            "--seconds" => {
                seconds = rest
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|s| *s > 0)
                    .ok_or("--seconds takes a whole number of seconds above 0")?;
            }
            name if TARGETS.contains(&name) => targets.push(name),
            other => {
                return Err(format!(
                    "fuzz: unknown argument {other:?}; usage: fuzz [--seconds N] [{}]",
                    TARGETS.join("|")
                ))
            }
        }
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }
    install::cargo_fuzz()?;
    let root = workspace_root();
    for target in targets {
        let corpus = root.join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .map_err(|e| format!("creating {}: {e}", corpus.display()))?;
        println!("xtask: fuzzing {target} for {seconds} s");
        run(Command::new(cargo_bin())
            .current_dir(&root)
            // The instrumentation needs unstable rustc flags; this lets the stable toolchain
            // take them (the fuzz crate is built for fuzzing only, never shipped).
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", "--release", target])
            .arg(&corpus)
            .arg(root.join(seeds(target)))
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-max_len=65536",
                "-timeout=10",
                "-rss_limit_mb=2048",
                "-print_final_stats=1",
            ]))
        .map_err(|e| {
            format!(
                "{e}: fuzz target {target} found a failing input (see fuzz/artifacts/{target}/)"
            )
        })?;
    }
    Ok(())
}
