//! `plover-exporter`: parses the configuration, sets up logging, binds, and serves until
//! SIGINT or SIGTERM.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use anyhow::Context;
use clap::Parser;
use plover_exporter::config::{Args, Config, LogFormat};
use tokio::net::TcpListener;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Exit status for an unusable configuration (sysexits' EX_USAGE).
const EX_USAGE: i32 = 64;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = match Config::from_args(Args::parse()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("plover-exporter: {error}");
            std::process::exit(EX_USAGE);
        }
    };
    init_logging(config.log_format);
    if matches!(config.auth, plover_exporter::config::Auth::Disabled) {
        tracing::warn!("Ingest is not authenticated (--insecure-no-auth).");
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    plover_exporter::run(config, listener, shutdown_signal()).await?;
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| spec.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let layer = tracing_subscriber::fmt::layer().with_target(false);
    match format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(filter)
            .with(layer.json())
            .init(),
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM (what Kubernetes sends).
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(e) => {
                // Still stoppable by Ctrl-C; Kubernetes would fall back to SIGKILL.
                tracing::warn!("cannot install a SIGTERM handler: {e}");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
