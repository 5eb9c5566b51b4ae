//! Prometheus (Debian's 2.42) scraping the exporter every second, with its data in the demo's
//! temp dir. The Argo-style template in the demo's Canary queries it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::DemoError;
use crate::http::{client, get};
use crate::process::ChildGuard;
use crate::{free_port, tools};

/// A running Prometheus. Killed when dropped.
pub struct Prometheus {
    pub url: String,
    _process: ChildGuard,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`host:port`) and waits until it is ready.
    pub async fn start(dir: &Path, target: &str) -> Result<Prometheus, DemoError> {
        let binary = tools::which("prometheus").ok_or_else(|| DemoError::MissingTool {
            tool: "prometheus",
            hint: "run `cargo xtask demo` (installs Debian's `prometheus` with apt-get)".into(),
        })?;
        let config = dir.join("prometheus.yml");
        let text = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n\
             - job_name: plover-exporter\n  \
               scrape_interval: 1s\n  \
               static_configs: [{{targets: ['{target}']}}]\n"
        );
        std::fs::write(&config, text).map_err(|e| DemoError::Io {
            what: format!("write {}", config.display()),
            source: e,
        })?;
        let port = free_port();
        let mut command = Command::new(binary);
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus-data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let mut process = ChildGuard::spawn("prometheus", command, &dir.join("prometheus.log"));
        let url = format!("http://127.0.0.1:{port}");
        let http = client();
        for _ in 0..300 {
            if let Ok(Some(status)) = process.try_wait() {
                return Err(DemoError::Start {
                    what: "prometheus",
                    message: format!("exited ({status}): {}", process.log_text()),
                });
            }
            if get(&http, &format!("{url}/-/ready"), "").await.0 == 200 {
                return Ok(Prometheus {
                    url,
                    _process: process,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(DemoError::Start {
            what: "prometheus",
            message: format!("not ready after 30s: {}", process.log_text()),
        })
    }
}
