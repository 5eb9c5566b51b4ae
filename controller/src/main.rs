//! `plover`: Plover's command line. Parsing and dispatch only; behaviour lives in the library.

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use plover_analysis::{duration, run::Termination};
use plover_controller::cli::analyze::{self, Output};

#[derive(Parser)]
#[command(
    name = "plover",
    version,
    about = "Plover: canary releases for Istio/Envoy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an Argo Rollouts AnalysisTemplate (or Plover's inline analysis) outside any cluster.
    ///
    /// Prints each measurement (time, value, phase) as it is taken, then the final phase.
    /// It really waits `interval` between measurements; a metric with an interval and no count
    /// runs until Ctrl-C or --duration, which terminate the run as Argo's terminate does.
    ///
    /// Exit status: 0 Successful, 1 Failed, 2 Inconclusive, 3 Error, 64 bad usage.
    #[command(
        after_help = "Secrets for valueFrom.secretKeyRef: --secret NAME/KEY=VALUE, or the environment variable \
PLOVER_SECRET_<NAME>_<KEY> (upper case, other characters as _), e.g. PLOVER_SECRET_WORKSPACE_URL_SECRETURL.\n\
Prometheus metrics without an address use ARGO_ROLLOUTS_PROMETHEUS_ADDRESS, as in Argo.\n\
See analysis/ANALYSIS.md for the semantics and every difference from Argo Rollouts."
    )]
    Analyze(AnalyzeCmd),
    /// Canary commands: crd, controller, local, get, list, status, promote, abort, retry, set image, undo.
    #[command(flatten)]
    Canary(plover_controller::cli::commands::CanaryCommand),
}

#[derive(clap::Args)]
struct AnalyzeCmd {
    /// Template file (AnalysisTemplate, ClusterAnalysisTemplate, AnalysisRun, or a resource with
    /// spec.analysis). Repeat to merge several, as a Rollout merges its templates.
    #[arg(
        short = 'f',
        long = "file",
        required = true,
        value_name = "TEMPLATE.yaml"
    )]
    files: Vec<PathBuf>,
    /// An arg value, overriding the template's value or valueFrom.
    #[arg(long = "arg", value_name = "NAME=VALUE")]
    args: Vec<String>,
    /// A secret key for valueFrom.secretKeyRef.
    #[arg(long = "secret", value_name = "NAME/KEY=VALUE")]
    secrets: Vec<String>,
    /// A Rollout field for valueFrom.fieldRef (e.g. "metadata.labels['env']=prod").
    #[arg(long = "field", value_name = "PATH=VALUE")]
    fields: Vec<String>,
    /// Prometheus base URL used by every prometheus metric instead of its own address.
    #[arg(long, value_name = "URL")]
    prometheus: Option<String>,
    /// Plover exporter base URL for plover metrics without an address.
    #[arg(long, env = "PLOVER_EXPORTER_ADDRESS", value_name = "URL")]
    exporter: Option<String>,
    #[command(flatten)]
    tls: plover_controller::cli::commands::TlsArgs,
    /// Run `job` metrics as Jobs in this cluster (otherwise a job metric cannot run here).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The namespace of those Jobs (default: the kubeconfig context's).
    #[arg(short = 'n', long, requires = "kubeconfig")]
    namespace: Option<String>,
    /// text: a line per measurement and a summary; json: one document on stdout (progress on stderr).
    #[arg(long, short = 'o', value_enum, default_value_t = OutputArg::Text)]
    output: OutputArg,
    /// Terminate the run after this long (Go duration: 90s, 5m, 1h30m).
    #[arg(long, value_name = "DURATION")]
    duration: Option<String>,
    /// Multiply every interval, initialDelay and the 10 s error retry by this factor (demos and
    /// tests: 0.05 turns a 20s interval into 1s). Queries still run against "now".
    #[arg(long, value_name = "FACTOR", default_value_t = 1.0)]
    time_scale: f64,
    /// How a stopped metric with no successful measurement is judged: require-success
    /// (Inconclusive) or argo (Successful, as Argo Rollouts does).
    #[arg(long, value_enum, default_value_t = TerminationArg::RequireSuccess)]
    termination: TerminationArg,
    /// Treat this metric (a name or regular expression) as dry-run, as a template's dryRun
    /// does: its result cannot change the run's phase, and a metric that cannot be measured
    /// here (a job) is skipped instead of refused.
    #[arg(long = "dry-run", value_name = "METRIC")]
    dry_run: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputArg {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum TerminationArg {
    RequireSuccess,
    Argo,
}

fn pair(text: &str, what: &str) -> Result<(String, String)> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| anyhow!("{what} {text:?}: expected KEY=VALUE"))?;
    if k.is_empty() {
        bail!("{what} {text:?}: empty name");
    }
    Ok((k.to_owned(), v.to_owned()))
}

fn options(cmd: AnalyzeCmd) -> Result<analyze::Options> {
    let args: BTreeMap<_, _> = cmd
        .args
        .iter()
        .map(|a| pair(a, "--arg"))
        .collect::<Result<_>>()?;
    let fields: BTreeMap<_, _> = cmd
        .fields
        .iter()
        .map(|a| pair(a, "--field"))
        .collect::<Result<_>>()?;
    let mut secrets = BTreeMap::new();
    for s in &cmd.secrets {
        let (name_key, value) = pair(s, "--secret")?;
        let (name, key) = name_key
            .split_once('/')
            .ok_or_else(|| anyhow!("--secret {s:?}: expected NAME/KEY=VALUE"))?;
        secrets.insert((name.to_owned(), key.to_owned()), value);
    }
    let duration = cmd
        .duration
        .as_deref()
        .map(duration::parse)
        .transpose()
        .context("--duration")?
        .filter(|d| *d > Duration::ZERO);
    Ok(analyze::Options {
        files: cmd.files,
        args,
        secrets,
        fields,
        prometheus: cmd.prometheus,
        prometheus_default: std::env::var("ARGO_ROLLOUTS_PROMETHEUS_ADDRESS")
            .ok()
            .filter(|s| !s.is_empty()),
        exporter: cmd.exporter,
        ca_files: cmd.tls.ca_files,
        cluster: cmd.kubeconfig.map(|kubeconfig| analyze::ClusterOptions {
            kubeconfig,
            namespace: cmd.namespace,
        }),
        output: match cmd.output {
            OutputArg::Text => Output::Text,
            OutputArg::Json => Output::Json,
        },
        duration,
        time_scale: cmd.time_scale,
        termination: match cmd.termination {
            TerminationArg::RequireSuccess => Termination::RequireSuccess,
            TerminationArg::Argo => Termination::Argo,
        },
        dry_run: cmd.dry_run,
    })
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Canary(cmd) => plover_controller::cli::commands::run(cmd),
        Command::Analyze(cmd) => {
            let opts = match options(cmd) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("plover analyze: {e:#}");
                    return ExitCode::from(64);
                }
            };
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("plover: cannot start the runtime: {e}");
                    return ExitCode::from(3);
                }
            };
            let phase = runtime.block_on(async {
                let mut out = std::io::stdout();
                let mut err = std::io::stderr();
                analyze::run(&opts, &mut out, &mut err).await
            });
            ExitCode::from(analyze::exit_code(phase) as u8)
        }
    }
}
