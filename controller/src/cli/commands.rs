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
    /// Hold the rollout at its current step and weight until `promote`.
    Pause(TargetArgs),
    /// List Canaries with their status, step, weight and revisions.
    List(ListArgs),
    /// Print a rollout's status (`Healthy`, `Degraded - why`, `Paused - why`…) and, with
    /// --watch (the default), follow it until Healthy or Degraded.
    ///
    /// Exit status: 0 Healthy, 1 Degraded, 2 --timeout reached (or, without --watch, still in
    /// progress), 3 the Canary could not be read.
    Status(StatusArgs),
    /// Set a container's image in the canary Deployment: a new revision to roll out.
    Set(SetArgs),
    /// Give the canary Deployment the stable Deployment's pod template back (abandons the
    /// candidate; the rollout returns to Healthy).
    Undo(TargetArgs),
    /// Check a Canary file and the AnalysisTemplates it references, without a cluster: every
    /// problem at once (exit 1), or nothing (exit 0).
    Lint(LintArgs),
}

#[derive(Args)]
pub struct LintArgs {
    /// The Canary YAML.
    #[arg(short = 'f', long = "file", value_name = "CANARY.yaml")]
    file: PathBuf,
    /// AnalysisTemplate files the Canary references (repeat).
    #[arg(short = 't', long = "template", value_name = "TEMPLATE.yaml")]
    templates: Vec<PathBuf>,
}

#[derive(Args)]
pub struct ListArgs {
    /// `canaries` (the only kind; may be omitted).
    #[arg(value_parser = ["canary", "canaries", "pcan"])]
    kind: Option<String>,
    #[command(flatten)]
    namespace: NamespaceArg,
    /// Every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
}

#[derive(Args)]
pub struct StatusArgs {
    /// The Canary.
    name: String,
    #[command(flatten)]
    namespace: NamespaceArg,
    /// Follow the status until Healthy or Degraded (`--watch=false`: print it once).
    #[arg(short = 'w', long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    watch: bool,
    /// Give up watching after this long (Go duration: 90s, 5m, 1h30m; default: never).
    #[arg(short = 't', long, value_name = "DURATION")]
    timeout: Option<String>,
}

#[derive(Args)]
pub struct SetArgs {
    #[command(subcommand)]
    what: SetCommand,
}

#[derive(Subcommand)]
pub enum SetCommand {
    /// `set image NAME CONTAINER=IMAGE` (`*=IMAGE` for every container).
    Image {
        /// The Canary.
        name: String,
        #[arg(value_name = "CONTAINER=IMAGE")]
        image: String,
        #[command(flatten)]
        namespace: NamespaceArg,
    },
}

/// `-n`: the namespace (default: the kubeconfig context's, as kubectl does).
#[derive(Args, Clone, Debug, Default)]
pub struct NamespaceArg {
    /// Namespace (default: the kubeconfig context's, as kubectl).
    #[arg(short = 'n', long = "namespace", env = "PLOVER_NAMESPACE")]
    namespace: Option<String>,
}

impl NamespaceArg {
    /// The namespace given, else the client's (the kubeconfig context's, or the pod's).
    fn resolve(&self, client: &Client) -> String {
        self.namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned())
    }
}

/// How the user ran us: `kubectl plover` through the plugin, else `plover`.
pub fn program() -> &'static str {
    let invoked = std::env::args_os().next().unwrap_or_default();
    let file = std::path::Path::new(&invoked)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    if file.starts_with("kubectl-") {
        "kubectl plover"
    } else {
        "plover"
    }
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
    #[command(flatten)]
    notify: NotifyArgs,
    #[arg(long, value_enum, env = "PLOVER_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// Where phase changes are told, for every Canary.
#[derive(Args, Clone, Debug, Default)]
pub struct NotifyArgs {
    /// KIND=URL: POST a message on each phase change of every Canary (repeat, or
    /// comma-separate in PLOVER_NOTIFY); KIND is webhook (JSON), slack or teams. A Canary's
    /// spec.notifications adds its own.
    #[arg(
        long = "notify",
        env = "PLOVER_NOTIFY",
        value_name = "KIND=URL",
        value_delimiter = ','
    )]
    pub notify: Vec<String>,
}

impl NotifyArgs {
    fn targets(&self) -> Result<Vec<crate::notify::Target>, String> {
        self.notify
            .iter()
            .map(|t| crate::notify::Target::parse(t))
            .collect()
    }
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
    #[command(flatten)]
    notify: NotifyArgs,
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
    #[command(flatten)]
    namespace: NamespaceArg,
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
    #[command(flatten)]
    namespace: NamespaceArg,
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
            eprintln!("{}: cannot start the runtime: {e}", program());
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
    eprintln!("{} {what}: {e}", program());
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
            let notify = match args.notify.targets() {
                Ok(targets) => targets,
                Err(e) => return fail("controller", e),
            };
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
                notify,
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
            let notify = match args.notify.targets() {
                Ok(targets) => targets,
                Err(e) => return fail("local", e),
            };
            let opts = local::Options {
                notify,
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
        CanaryCommand::Pause(target) => send(target, Request::Pause),
        CanaryCommand::List(args) => list(args),
        CanaryCommand::Lint(args) => {
            let problems = local::lint(&args.file, &args.templates);
            if problems.is_empty() {
                println!("{}: ok", args.file.display());
                return ExitCode::SUCCESS;
            }
            for problem in &problems {
                println!("{problem}");
            }
            eprintln!("{} lint: {} problem(s)", program(), problems.len());
            ExitCode::FAILURE
        }
        CanaryCommand::Status(args) => status(args),
        CanaryCommand::Set(SetArgs {
            what:
                SetCommand::Image {
                    name,
                    image,
                    namespace,
                },
        }) => {
            let Some((container, image)) = image
                .split_once('=')
                .filter(|(c, i)| !c.is_empty() && !i.is_empty())
            else {
                return fail(
                    "set image",
                    format!("{image:?}: expected CONTAINER=IMAGE (or *=IMAGE)"),
                );
            };
            let (container, image) = (container.to_owned(), image.to_owned());
            edit(
                "set image",
                namespace,
                move |client, namespace| async move {
                    kubectl::set_image(client, &namespace, &name, &container, &image).await
                },
            )
        }
        CanaryCommand::Undo(target) => {
            let Some(name) = target.name else {
                return fail("undo", "name the Canary");
            };
            edit(
                "undo",
                target.namespace,
                move |client, namespace| async move { kubectl::undo(client, &namespace, &name).await },
            )
        }
    }
}

/// Runs one edit with a client; prints what it did.
fn edit<F, Fut>(what: &str, namespace: NamespaceArg, f: F) -> ExitCode
where
    F: FnOnce(Client, String) -> Fut,
    Fut: std::future::Future<Output = Result<String, kubectl::KubectlError>>,
{
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    let result = rt.block_on(async {
        let client = Client::try_default().await.map_err(|e| e.to_string())?;
        let namespace = namespace.resolve(&client);
        f(client, namespace).await.map_err(|e| e.to_string())
    });
    match result {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(what, e),
    }
}

fn list(args: ListArgs) -> ExitCode {
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    let result = rt.block_on(async {
        let client = Client::try_default().await.map_err(|e| e.to_string())?;
        let namespace = (!args.all_namespaces).then(|| args.namespace.resolve(&client));
        kubectl::list(client, namespace.as_deref())
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(canaries) if canaries.is_empty() => {
            println!("No canaries found.");
            ExitCode::SUCCESS
        }
        Ok(canaries) => {
            print!("{}", kubectl::render_list(&canaries, args.all_namespaces));
            ExitCode::SUCCESS
        }
        Err(e) => fail("list", e),
    }
}

/// Exit statuses of `status`.
const STATUS_DEGRADED: u8 = 1;
const STATUS_TIMED_OUT: u8 = 2;
const STATUS_UNREADABLE: u8 = 3;

fn status(args: StatusArgs) -> ExitCode {
    let timeout = match args
        .timeout
        .as_deref()
        .map(plover_analysis::duration::parse)
    {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            eprintln!("{} status: --timeout: {e}", program());
            return ExitCode::from(64);
        }
    };
    let Some(rt) = runtime() else {
        return ExitCode::from(STATUS_UNREADABLE);
    };
    rt.block_on(async {
        let client = match Client::try_default().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{} status: {e}", program());
                return ExitCode::from(STATUS_UNREADABLE);
            }
        };
        let namespace = args.namespace.resolve(&client);
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut printed = String::new();
        loop {
            let status = match kubectl::status(client.clone(), &namespace, &args.name).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{} status: {e}", program());
                    return ExitCode::from(STATUS_UNREADABLE);
                }
            };
            // Like Argo's: a line each time the status changes.
            let line = status.line();
            if line != printed {
                println!("{line}");
                printed = line;
            }
            match status {
                kubectl::RolloutStatus::Healthy => return ExitCode::SUCCESS,
                kubectl::RolloutStatus::Degraded(_) => return ExitCode::from(STATUS_DEGRADED),
                kubectl::RolloutStatus::InProgress(_) if !args.watch => {
                    return ExitCode::from(STATUS_TIMED_OUT)
                }
                kubectl::RolloutStatus::InProgress(_) => {}
            }
            let next = tokio::time::Instant::now() + Duration::from_secs(1);
            if deadline.is_some_and(|d| next > d) {
                if let Some(d) = deadline {
                    tokio::time::sleep_until(d).await;
                }
                eprintln!("{} status: --timeout reached while {printed}", program());
                return ExitCode::from(STATUS_TIMED_OUT);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = tokio::signal::ctrl_c() => return ExitCode::from(STATUS_TIMED_OUT),
            }
        }
    })
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
        let namespace = target.namespace.resolve(&client);
        kubectl::request(client, &namespace, &name, request)
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
                    kubectl::fetch(client.clone(), &args.namespace.resolve(client), name)
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
