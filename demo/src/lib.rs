//! `plover-demo`: Plover's whole job on one machine, as a newcomer meets it (`cargo xtask demo`).
//!
//! It starts on loopback the demo app's revisions ([`plover_testkit::backend`]), Envoy with the Plover
//! filter as the gateway (routes and revision clusters from watched files), the exporter,
//! Prometheus scraping it, the `Canary` controller in local mode ([`local`]) and a load
//! generator ([`stack`]); then it runs the releases of `demo.yaml` ([`release`]) while
//! [`progress`] shows what the controller and the exporter report. Every figure shown comes
//! from the controller's status, the analysis runner or the exporter's `/v1/stats`.
//!
//! ```text
//!  load ──▶ Envoy (filter) ──▶ stable ─▶ revision backend      routes.json ◀── local controller
//!               │           └─▶ canary ─▶ revision backend      clusters.json ◀── promotion
//!               ▼
//!            exporter ── /metrics ──▶ Prometheus ──▶ Argo-style template ─┐
//!               └──── /v1/stats ──▶ Plover provider, traffic check ───────┴─▶ decide
//! ```
//!
//! All state lives in one temp dir removed at exit, every child process is owned by a guard,
//! and everything binds 127.0.0.1 on ports the OS picks, so a second run needs no cleanup.

pub mod config;
pub mod istio;
pub mod local;
pub mod progress;
pub mod prometheus;
pub mod release;
pub mod stack;

use std::path::PathBuf;

pub use release::Outcome;

/// Why the demo could not run (a release ending the wrong way is an [`Outcome`], not an error).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{what}: {message}")]
    Start { what: &'static str, message: String },
    #[error("controller: {0}")]
    Controller(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// What the command line asked for.
#[derive(Clone, Debug)]
pub struct Options {
    /// Directory with `canary.yaml`, `templates.yaml` and `demo.yaml`.
    pub fixtures: PathBuf,
    /// Run only the release with this name (`healthy`, `bad`).
    pub scenario: Option<String>,
    /// Leave the stack up after the releases until Ctrl-C.
    pub keep_running: bool,
    /// Plain lines even on a terminal.
    pub plain: bool,
    /// Benchmark: this many bad and this many healthy releases, alternated.
    pub bench_runs: Option<u32>,
    /// Write the outcomes as JSON here.
    pub report: Option<PathBuf>,
    /// Run the releases on a real control plane with istiod ([`istio`]) instead of loopback.
    pub istio: bool,
}

impl Options {
    /// The fixtures in the source tree (`demo/fixtures`).
    pub fn default_fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
    }
}
