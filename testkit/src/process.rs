//! Child processes that die with their guard, and waiting for them to be ready.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills (SIGKILL) and reaps the child when dropped.
pub struct ChildGuard {
    pub name: String,
    child: Child,
    log: std::path::PathBuf,
}

impl ChildGuard {
    /// Spawns `command` with stdout and stderr written to `log`; panics if it cannot start.
    pub fn spawn(name: &str, command: Command, log: &Path) -> ChildGuard {
        Self::try_spawn(name, command, log).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Spawns `command` with stdout and stderr written to `log`.
    pub fn try_spawn(name: &str, mut command: Command, log: &Path) -> Result<ChildGuard, String> {
        let file =
            std::fs::File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let err = file
            .try_clone()
            .map_err(|e| format!("clone the log handle of {name}: {e}"))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| format!("start {name}: {e}"))?;
        Ok(ChildGuard {
            name: name.to_owned(),
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics with the child's log when it has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}); its log:\n{}",
                self.name,
                self.log_text()
            );
        }
    }

    /// The exit status if the child has exited, without waiting (for callers that report
    /// instead of panicking).
    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ChildGuard {
    /// Kills the child; when a test is failing, shows the end of its log first.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {} log (last lines) ---\n{}",
                self.name,
                tail(&self.log_text(), 30)
            );
        }
    }
}

/// The last `lines` lines of `text` (a log's end, for a failure message).
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `ready` every 50 ms until it is true or `timeout` passes; panics with `what` then.
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
        .is_ok()
}
