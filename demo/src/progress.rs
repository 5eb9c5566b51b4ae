//! Live progress: on a terminal a block that redraws in place (plain ANSI: cursor up, clear
//! to end); elsewhere one line every few seconds plus a line per controller event, so a log
//! or CI output stays readable. Every figure comes from the controller's snapshot (status,
//! verdicts, measurements) and the exporter's `/v1/stats` answer it read.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use plover_controller::canary::measurement::measurement_sentence;
use plover_controller::canary::{AnalysisRunStatus, CanaryStatus};
use plover_wire::stats::RevisionStats;

use crate::local::Snapshot;
use crate::stack::LoadCounters;

/// How often plain output prints a status line.
const PLAIN_EVERY: Duration = Duration::from_secs(2);

/// One frame's inputs.
pub struct Frame<'a> {
    pub release: &'a str,
    pub from: &'a str,
    pub revision: &'a str,
    pub elapsed: Duration,
    pub snapshot: &'a Snapshot,
    pub load: &'a LoadCounters,
    pub rps: f64,
}

pub struct Display {
    tty: bool,
    /// Terminal columns: a wrapped line would break the cursor-up count, so lines are clipped.
    width: usize,
    /// Lines of the live block currently on screen (TTY).
    drawn: usize,
    last_plain: Option<Instant>,
    /// Events already printed (by time).
    events_until: Option<Instant>,
    /// Plain output: the metric lines last printed, so a metric whose latest measurement has
    /// not changed is not printed again.
    metrics_printed: Vec<String>,
}

/// Columns of the controlling terminal (`stty size`), 100 when it cannot tell.
fn terminal_width() -> usize {
    let size = std::fs::File::open("/dev/tty")
        .ok()
        .and_then(|tty| {
            std::process::Command::new("stty")
                .arg("size")
                .stdin(tty)
                .output()
                .ok()
        })
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    size.and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(100)
}

fn percent(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "—".into(), |r| format!("{:.2}%", r * 100.0))
}

fn millis(seconds: Option<f64>) -> String {
    seconds.map_or_else(|| "—".into(), |s| format!("{:.1} ms", s * 1000.0))
}

fn step(status: &CanaryStatus, steps: usize) -> String {
    match status.current_step_index {
        None => "no rollout".into(),
        Some(_) => format!("step {}", status.step_label(steps)),
    }
}

fn run_line(kind: &str, run: &AnalysisRunStatus) -> String {
    format!(
        "{kind} {}  {:?}  ✔ {} ✖ {} ? {} ⚠ {}{}",
        run.name,
        run.phase,
        run.successful,
        run.failed,
        run.inconclusive,
        run.error,
        run.message
            .as_deref()
            .map(|m| format!("  {m}"))
            .unwrap_or_default()
    )
}

/// Each metric of the step's and the background run with its latest measurement in words
/// (for the comparative metrics, the evidence against stable).
pub fn metric_lines(status: &CanaryStatus) -> Vec<String> {
    [&status.step_analysis, &status.background_analysis]
        .into_iter()
        .flatten()
        .flat_map(|run| &run.metrics)
        .filter_map(|m| {
            let latest = m.latest.as_ref()?;
            Some(format!(
                "{} ({:?}): {}",
                m.name,
                m.phase,
                measurement_sentence(latest)
            ))
        })
        .collect()
}

fn revision_line(r: &RevisionStats) -> String {
    format!(
        "{:<10} {:<7} {:>7.1} req/s  success {:>8}  p99 {:>9}  ({} requests)",
        r.revision,
        r.role,
        r.request_rate,
        percent(r.success_ratio),
        millis(r.latency_seconds.p99),
        r.requests
    )
}

impl Display {
    pub fn new(plain: bool) -> Display {
        let tty = !plain && std::io::stdout().is_terminal();
        Display {
            tty,
            width: if tty { terminal_width() } else { usize::MAX },
            drawn: 0,
            last_plain: None,
            events_until: None,
            metrics_printed: Vec::new(),
        }
    }

    fn erase(&mut self, out: &mut impl Write) {
        if self.drawn > 0 {
            let _ = write!(out, "\x1b[{}A\x1b[J", self.drawn);
            self.drawn = 0;
        }
    }

    /// A permanent line (printed above the live block on a terminal).
    pub fn line(&mut self, text: &str) {
        let mut out = std::io::stdout().lock();
        self.erase(&mut out);
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }

    /// Prints events not printed yet, as permanent lines.
    fn events(&mut self, snapshot: &Snapshot) {
        let fresh: Vec<String> = snapshot
            .events
            .iter()
            .filter(|e| self.events_until.is_none_or(|t| e.at > t))
            .map(|e| {
                format!(
                    "  {} {}: {}",
                    if e.warning { "⚠" } else { "•" },
                    e.reason,
                    e.message
                )
            })
            .collect();
        if let Some(last) = snapshot.events.last() {
            self.events_until = Some(last.at);
        }
        for line in fresh {
            self.line(&line);
        }
    }

    pub fn frame(&mut self, f: &Frame<'_>, steps: usize) {
        self.events(f.snapshot);
        let s = &f.snapshot.status;
        let phase = s.phase.map_or("—", |p| p.as_str());
        let observed = s
            .observed_weight
            .map_or_else(|| "—".into(), |w| format!("{w:.1}%"));
        let stats = f.snapshot.stats.as_ref();
        // The exporter keeps every revision it has seen in its window; those without a request
        // in the answer's window (earlier releases) are left out.
        let revisions: Vec<&RevisionStats> = stats
            .map(|st| st.revisions.iter().filter(|r| r.requests > 0).collect())
            .unwrap_or_default();
        let load = &f.load;
        let counter =
            |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let now = Instant::now();
        let measurements = metric_lines(s);

        if !self.tty {
            if self
                .last_plain
                .is_some_and(|t| now.duration_since(t) < PLAIN_EVERY)
            {
                return;
            }
            self.last_plain = Some(now);
            let mut line = format!(
                "[{:>5.1}s] {} {}→{}  {phase}  {}  weight {}% observed {observed}",
                f.elapsed.as_secs_f64(),
                f.release,
                f.from,
                f.revision,
                step(s, steps),
                s.desired_weight
            );
            for r in &revisions {
                let _ = write!(
                    line,
                    " | {} {} {:.0}/s {} p99 {}",
                    r.revision,
                    r.role,
                    r.request_rate,
                    percent(r.success_ratio),
                    millis(r.latency_seconds.p99)
                );
            }
            for (kind, run) in [("bg", &s.background_analysis), ("step", &s.step_analysis)] {
                if let Some(run) = run {
                    let _ = write!(
                        line,
                        " | {kind} {:?} ✔{} ✖{} ?{} ⚠{}",
                        run.phase, run.successful, run.failed, run.inconclusive, run.error
                    );
                }
            }
            self.line(&line);
            for m in &measurements {
                if !self.metrics_printed.contains(m) {
                    self.line(&format!("          {m}"));
                }
            }
            self.metrics_printed = measurements;
            return;
        }

        let mut lines = vec![
            format!(
                "\x1b[1mrelease {}\x1b[0m  {} → {}   {:.1}s   {phase}  {}{}",
                f.release,
                f.from,
                f.revision,
                f.elapsed.as_secs_f64(),
                step(s, steps),
                // The plain "step i/n" message repeats what the step column says.
                s.message
                    .as_deref()
                    .filter(|m| !m.starts_with("step "))
                    .map(|m| format!("  ({m})"))
                    .unwrap_or_default()
            ),
            format!(
                "weight     desired {}%   observed {observed}{}",
                s.desired_weight,
                stats
                    .map(|st| format!(" over the last {}s", st.window_seconds))
                    .unwrap_or_default()
            ),
        ];
        if revisions.is_empty() {
            lines.push("revision   (no traffic in the exporter's window yet)".into());
        }
        lines.extend(
            revisions
                .iter()
                .map(|r| format!("revision   {}", revision_line(r))),
        );
        for (kind, run) in [
            ("background", &s.background_analysis),
            ("step", &s.step_analysis),
        ] {
            if let Some(run) = run {
                lines.push(format!("analysis   {}", run_line(kind, run)));
            }
        }
        for m in measurements {
            lines.push(format!("           {m}"));
        }
        lines.push(format!(
            "load       {:.0} req/s target   sent {}   ok {}   5xx {}   failed {}   skipped (max in flight) {}",
            f.rps,
            counter(&load.sent),
            counter(&load.ok),
            counter(&load.errors),
            counter(&load.failed),
            counter(&load.skipped)
        ));
        let mut out = std::io::stdout().lock();
        self.erase(&mut out);
        for line in &lines {
            let clipped: String = line.chars().take(self.width).collect();
            let _ = writeln!(out, "{clipped}\x1b[K");
        }
        self.drawn = lines.len();
        let _ = out.flush();
    }

    /// Removes the live block (before the summary).
    pub fn finish(&mut self) {
        let mut out = std::io::stdout().lock();
        self.erase(&mut out);
        let _ = out.flush();
    }
}
