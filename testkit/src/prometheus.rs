//! Prometheus (Debian's package) on loopback, for the tests and the demo: started on a free
//! port with a given configuration and data directory, ready once `/-/ready` answers 200,
//! killed with its guard.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::ChildGuard;
use crate::{free_port, tools};

/// How long Prometheus may take to replay its data and become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A configuration that scrapes `targets` (`host:port`) every second, as job `job`.
pub fn scrape_config(job: &str, targets: &[String]) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
         scrape_configs:\n\
         - job_name: {job}\n  \
           scrape_interval: 1s\n  \
           static_configs: [{{targets: [{}]}}]\n",
        targets.join(", ")
    )
}

/// A running Prometheus. Killed (and reaped) when dropped.
pub struct Prometheus {
    /// `http://ADDRESS` (`http://127.0.0.1:PORT` from [`Prometheus::start`])
    pub url: String,
    pub address: std::net::SocketAddr,
    process: ChildGuard,
}

impl Prometheus {
    /// Writes `config` to `dir/prometheus.yml`, starts Prometheus with its TSDB in `data` and
    /// `extra` flags, and waits (blocking) until it is ready. The error says what went wrong,
    /// with Prometheus's log when it started.
    pub fn start(
        dir: &Path,
        config: &str,
        data: &Path,
        extra: &[&str],
    ) -> Result<Prometheus, String> {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        Prometheus::start_on(dir, config, data, extra, address)
    }

    /// [`Prometheus::start`] listening on `address` (e.g. the fixed port a manifest names).
    pub fn start_on(
        dir: &Path,
        config: &str,
        data: &Path,
        extra: &[&str],
        address: std::net::SocketAddr,
    ) -> Result<Prometheus, String> {
        let binary = tools::which("prometheus").ok_or_else(|| {
            "`prometheus` not found on PATH: run `cargo xtask test` or `cargo xtask demo` \
             (installs Debian's `prometheus` with apt-get)"
                .to_owned()
        })?;
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config)
            .map_err(|e| format!("write {}: {e}", config_path.display()))?;
        let mut command = Command::new(binary);
        command
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address={address}"))
            .args(extra);
        let process = ChildGuard::try_spawn("prometheus", command, &dir.join("prometheus.log"))?;
        let mut prometheus = Prometheus {
            url: format!("http://{address}"),
            address,
            process,
        };
        prometheus.wait_ready()?;
        Ok(prometheus)
    }

    /// Polls `/-/ready` until it answers 200 (Prometheus refuses connections while starting).
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.process.try_wait() {
                return Err(format!("prometheus exited ({status}): {}", self.log_text()));
            }
            if crate::http::get_status(&format!("{}/-/ready", self.url)) == Some(200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "prometheus not ready after {READY_TIMEOUT:?}: {}",
            self.log_text()
        ))
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }
}
