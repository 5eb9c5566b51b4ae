//! `kubectl-plover`: the kubectl plugin (`kubectl plover get canary NAME -w`, `list`,
//! `status NAME`, `promote NAME --full`, `abort`, `retry`, `set image`, `undo`). Same commands
//! as `plover`'s canary subcommands; install it next to kubectl on the PATH.

use clap::Parser;
use plover_controller::cli::commands::{self, CanaryCommand};

#[derive(Parser)]
#[command(
    name = "kubectl plover",
    bin_name = "kubectl plover",
    version,
    about = "Plover canary releases, as a kubectl plugin"
)]
struct Plugin {
    #[command(subcommand)]
    command: CanaryCommand,
}

fn main() -> std::process::ExitCode {
    commands::run(Plugin::parse().command)
}
