//! The canary subcommands of `plover` (and of the kubectl plugin `kubectl-plover`): argument
//! parsing and dispatch to [`controller`](crate::controller), [`local`] and [`kubectl`]. `main.rs` flattens
//! [`CanaryCommand`] into its own command list.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Subcommand, ValueEnum};
use kube::{Client, ResourceExt};

use plover_analysis::provider::Settings;

use crate::{
    canary::crd,
    cli::kubectl::{self, Request, View},
    controller, local,
    observe::{Exporter, TrafficSource},
};

#[derive(Subcommand)]
pub enum CanaryCommand {
    /// Print the Canary CustomResourceDefinition (apply it with `plover crd | kubectl apply -f -`).
    Crd,
    /// Run the Canary controller in the cluster (leader election on a Lease, /metrics, /healthz).
    Controller(ControllerArgs),
    /// Run a Canary from a spec file with no API server: local Envoy via file-based RDS, revision
    /// names as workloads, status in a JSON file.
    Local(LocalArgs),
    /// Show a Canary as a status tree (steps, weights, analysis runs, per-revision stats).
    Get(GetArgs),
    /// Leave the current pause or step; with --full skip all remaining steps and analysis.
    Promote(PromoteArgs),
    /// Route all traffic to stable and stop the rollout (Degraded until retry or a new revision).
    Abort(TargetArgs),
    /// Start an aborted rollout over from the first step.
    Retry(TargetArgs),
}

#[derive(Args)]
pub struct ControllerArgs {
    /// Watch only this namespace (default: all).
    #[arg(long, env = "PLOVER_WATCH_NAMESPACE")]
    namespace: Option<String>,
    #[arg(long, env = "PLOVER_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Compete for leadership on a Lease (disable for a single replica or development).
    #[arg(long, env = "PLOVER_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    #[arg(long, default_value = "plover-controller")]
    lease_name: String,
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Identity in the Lease (default: the pod name from POD_NAME, else the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Plover exporter for analysis metrics without an address.
    #[arg(long, env = "PLOVER_EXPORTER_ADDRESS")]
    exporter: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
    #[arg(long, value_enum, env = "PLOVER_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How the providers' https is verified.
#[derive(Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// PEM file of CA certificates that https providers (Prometheus, web, the exporter) trust
    /// besides the system's roots (repeat, or comma-separate in PLOVER_CA_FILE). A metric's
    /// `insecure: true` skips verification, as in Argo.
    #[arg(
        long = "ca-file",
        env = "PLOVER_CA_FILE",
        value_name = "PEM",
        value_delimiter = ','
    )]
    pub ca_files: Vec<PathBuf>,
}

#[derive(Args)]
pub struct LocalArgs {
    /// The Canary YAML (spec.trafficRouting.envoy).
    #[arg(short = 'f', long = "file", value_name = "CANARY.yaml")]
    file: PathBuf,
    /// AnalysisTemplate files the Canary references (repeat).
    #[arg(short = 't', long = "template", value_name = "TEMPLATE.yaml")]
    templates: Vec<PathBuf>,
    /// Status file (default: <CANARY.yaml>.status.json).
    #[arg(long)]
    status_file: Option<PathBuf>,
    /// Plover exporter for plover metrics without an address.
    #[arg(long, env = "PLOVER_EXPORTER_ADDRESS")]
    exporter: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
    /// Exit at Healthy after a promotion (0), or at Degraded (1).
    #[arg(long)]
    until_done: bool,
    /// Longest pause between two decisions, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    poll_ms: u64,
}

#[derive(Args)]
pub struct GetArgs {
    /// Only `canary` is known.
    #[arg(value_parser = ["canary", "canaries", "pcan"])]
    kind: String,
    name: Option<String>,
    #[arg(short = 'n', long, env = "PLOVER_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Re-render every 2 s until Ctrl-C.
    #[arg(short = 'w', long)]
    watch: bool,
    /// Local mode: the Canary spec file (its status file next to it) instead of the cluster.
    #[arg(long, value_name = "CANARY.yaml")]
    local: Option<PathBuf>,
}

#[derive(Args)]
pub struct TargetArgs {
    /// The Canary (omit with --status-file).
    name: Option<String>,
    #[arg(short = 'n', long, env = "PLOVER_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Local mode: leave the request in this status file.
    #[arg(long)]
    status_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct PromoteArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Skip all remaining steps and analysis.
    #[arg(long)]
    full: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("plover: cannot start the runtime: {e}");
            None
        }
    }
}

/// Provider settings of the controller and local mode: the exporter and CA flags, and Argo's
/// `ARGO_ROLLOUTS_PROMETHEUS_ADDRESS` for Prometheus metrics without an address.
fn settings(exporter: Option<String>, tls: TlsArgs) -> Settings {
    Settings {
        exporter,
        ca_files: tls.ca_files,
        prometheus_default: std::env::var("ARGO_ROLLOUTS_PROMETHEUS_ADDRESS")
            .ok()
            .filter(|s| !s.is_empty()),
        ..Default::default()
    }
}

fn fail(what: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("plover {what}: {e}");
    ExitCode::FAILURE
}

/// Runs one canary subcommand.
pub fn run(command: CanaryCommand) -> ExitCode {
    match command {
        CanaryCommand::Crd => match crd::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => fail("crd", e),
        },
        CanaryCommand::Controller(args) => {
            init_logs(args.log_format);
            let identity = args
                .identity
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| format!("plover-{}", std::process::id()));
            let opts = controller::Options {
                namespace: args.namespace,
                metrics_addr: args.metrics_addr,
                leader_elect: args.leader_elect,
                lease_name: args.lease_name,
                lease_namespace: args.lease_namespace,
                identity,
                lease_duration: Duration::from_secs(args.lease_duration_seconds.max(3)),
                settings: settings(args.exporter, args.tls),
            };
            let Some(rt) = runtime() else {
                return ExitCode::FAILURE;
            };
            match rt.block_on(controller::run(opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail("controller", e),
            }
        }
        CanaryCommand::Local(args) => {
            let opts = local::Options {
                canary_file: args.file,
                template_files: args.templates,
                status_file: args.status_file,
                settings: settings(args.exporter, args.tls),
                until_done: args.until_done,
                poll: Duration::from_millis(args.poll_ms.max(10)),
            };
            let Some(rt) = runtime() else {
                return ExitCode::FAILURE;
            };
            let mut out = std::io::stdout();
            match rt.block_on(local::run(opts, &mut out)) {
                Ok(local::Outcome::Promoted | local::Outcome::Healthy) => ExitCode::SUCCESS,
                Ok(local::Outcome::Degraded) => ExitCode::from(1),
                Err(e) => fail("local", e),
            }
        }
        CanaryCommand::Get(args) => get(args),
        CanaryCommand::Promote(args) => {
            let request = if args.full {
                Request::PromoteFull
            } else {
                Request::Promote
            };
            send(args.target, request)
        }
        CanaryCommand::Abort(target) => send(target, Request::Abort),
        CanaryCommand::Retry(target) => send(target, Request::Retry),
    }
}

fn send(target: TargetArgs, request: Request) -> ExitCode {
    if let Some(file) = target.status_file {
        return match local::request(&file, request) {
            Ok(message) => {
                println!("{message}");
                ExitCode::SUCCESS
            }
            Err(e) => fail("request", e),
        };
    }
    let Some(name) = target.name else {
        return fail("request", "name the Canary (or pass --status-file)");
    };
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    let result: Result<String, String> = rt.block_on(async {
        let client = Client::try_default().await.map_err(|e| e.to_string())?;
        kubectl::request(client, &target.namespace, &name, request)
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => fail("request", e),
    }
}

/// A local Canary: spec file, its status file, and the exporter's per-revision stats.
async fn local_view(file: &std::path::Path) -> Result<View, local::LocalError> {
    let mut canary = local::read_canary(file)?;
    canary.status = Some(local::read_status(&local::default_status_file(file))?);
    let mut stats = None;
    if let (Some(check), Ok(exporter)) = (&canary.spec.traffic_check, Exporter::new()) {
        let namespace = canary.namespace().unwrap_or_else(|| "default".to_owned());
        let service = check.service.clone().unwrap_or_else(|| canary.name_any());
        stats = exporter.stats(check, &namespace, &service).await.ok();
    }
    Ok(View {
        canary,
        stable: None,
        canary_workload: None,
        stats,
    })
}

fn get(args: GetArgs) -> ExitCode {
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    rt.block_on(async {
        let client = if args.local.is_some() {
            None
        } else {
            match Client::try_default().await {
                Ok(c) => Some(c),
                Err(e) => return fail("get", e),
            }
        };
        loop {
            let text = match (&args.local, &client, &args.name) {
                (Some(file), _, _) => local_view(file)
                    .await
                    .map(|v| kubectl::render(&v))
                    .map_err(|e| e.to_string()),
                (None, Some(client), Some(name)) => {
                    kubectl::fetch(client.clone(), &args.namespace, name)
                        .await
                        .map(|v| kubectl::render(&v))
                        .map_err(|e| e.to_string())
                }
                _ => Err("name the Canary".to_owned()),
            };
            match text {
                Ok(t) if args.watch => print!("\x1b[H\x1b[2J{t}"),
                Ok(t) => {
                    print!("{t}");
                    return ExitCode::SUCCESS;
                }
                Err(e) => return fail("get", e),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
            }
        }
    })
}
