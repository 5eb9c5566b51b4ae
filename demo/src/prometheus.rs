//! Prometheus (Debian's 2.42) scraping the exporter every second, with its data in the demo's
//! temp dir. The Argo-style template in the demo's Canary queries it.

use std::path::Path;

use plover_testkit::prometheus::{scrape_config, Prometheus};

use crate::DemoError;

/// Starts Prometheus scraping `target` (`host:port`) and waits until it is ready.
pub async fn start(dir: &Path, target: &str) -> Result<Prometheus, DemoError> {
    let dir = dir.to_path_buf();
    let config = scrape_config("plover-exporter", &[target.to_owned()]);
    // Starting waits (blocking) for readiness: keep it off the runtime's workers.
    tokio::task::spawn_blocking(move || {
        Prometheus::start(&dir, &config, &dir.join("prometheus-data"), &[])
    })
    .await
    .map_err(|e| DemoError::Start {
        what: "prometheus",
        message: e.to_string(),
    })?
    .map_err(|message| DemoError::Start {
        what: "prometheus",
        message,
    })
}
