//! The exporter's configuration: command-line flags and environment variables ([`Args`]),
//! validated once into a typed [`Config`] that the rest of the crate takes as given.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use plover_wire::batch::MAX_BATCH_BYTES;
use plover_wire::stats::parse_window_seconds;

use crate::store::{DurationBuckets, StoreConfig};

/// Most bytes one revision's window may hold before its oldest seconds are merged (see
/// [`crate::window`]). With the block headers (at most ~32 KiB) a window stays under the
/// 256 KiB-per-series target even when a client makes every second dense.
pub const WINDOW_BUDGET_BYTES: usize = 208 * 1024;

/// Flags and environment variables, as parsed. Turn them into a [`Config`] with
/// [`Config::from_args`].
#[derive(Debug, Clone, Parser)]
#[command(
    name = "plover-exporter",
    version,
    about = "Receives Plover filter batches and serves exact per-revision metrics."
)]
pub struct Args {
    /// Address to listen on (ingest, /metrics, /v1/stats, /healthz, /readyz).
    #[arg(long, env = "PLOVER_EXPORTER_LISTEN", default_value = "0.0.0.0:9464")]
    pub listen: SocketAddr,

    /// File holding the bearer token filters must send (surrounding whitespace is ignored).
    #[arg(long, env = "PLOVER_EXPORTER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// The bearer token itself. Prefer the environment variable or --token-file: command
    /// lines are visible to every user of the machine.
    #[arg(long, env = "PLOVER_EXPORTER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Accept batches without a token. Only for local experiments.
    #[arg(long, env = "PLOVER_EXPORTER_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Largest accepted batch body in bytes; larger ones get 413.
    #[arg(long, env = "PLOVER_EXPORTER_MAX_BATCH_BYTES", default_value_t = MAX_BATCH_BYTES)]
    pub max_batch_bytes: usize,

    /// Most series kept as sent. New series beyond are folded, not refused: a new code is
    /// counted under code `other` of its status class, a new route under route `(other)`, so
    /// per-class totals and every revision's window stay exact.
    #[arg(long, env = "PLOVER_EXPORTER_MAX_SERIES", default_value_t = 100_000)]
    pub max_series: usize,

    /// Most revisions kept over all services (a bound against unbounded label values).
    /// Requests of new revisions beyond are refused, reported to the filter as dropped, and
    /// flagged in every `/v1/stats` window they belong to (`lost_requests`).
    #[arg(long, env = "PLOVER_EXPORTER_MAX_REVISIONS", default_value_t = 10_000)]
    pub max_revisions: usize,

    /// Memory all per-revision windows together may use, in MiB. Far above what real traffic
    /// needs; when reached, old window seconds are merged (answers then say which window they
    /// really covered) instead of exhausting memory.
    #[arg(long, env = "PLOVER_EXPORTER_MAX_WINDOW_MIB", default_value_t = 4096)]
    pub max_window_mib: usize,

    /// Series (and filter VM records) not reported for this long are dropped; e.g. 10m.
    #[arg(long, env = "PLOVER_EXPORTER_SERIES_TTL", default_value = "10m")]
    pub series_ttl: String,

    /// Per-second history kept: the longest window that can be asked for; e.g. 10m.
    #[arg(long, env = "PLOVER_EXPORTER_WINDOW", default_value = "10m")]
    pub window: String,

    /// Windows exposed as gauges on /metrics, comma-separated.
    #[arg(long, env = "PLOVER_EXPORTER_WINDOWS", default_value = "30s,1m,5m")]
    pub windows: String,

    /// One plover_requests_total series per status code (`true`), or per status class only
    /// (`false`: no `code` and `grpc_status` labels; several times fewer series for users whose
    /// queries and alerts use classes).
    #[arg(
        long,
        env = "PLOVER_EXPORTER_SERIES_PER_CODE",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub series_per_code: bool,

    /// Upper bounds, in seconds, of the plover_request_duration_seconds buckets.
    #[arg(
        long,
        env = "PLOVER_EXPORTER_DURATION_BUCKETS",
        default_value = "0.005,0.01,0.025,0.05,0.1,0.25,0.5,1,2.5,5,10"
    )]
    pub duration_buckets: String,

    /// Prometheus native histograms for plover_request_duration_seconds, served to scrapers
    /// that ask for the protobuf exposition (Prometheus with native histograms enabled):
    /// `off`, `both` (native and classic buckets) or `only` (native only: the compact form).
    /// The text exposition always has the classic buckets.
    #[arg(long, env = "PLOVER_EXPORTER_NATIVE_HISTOGRAMS", default_value = "off")]
    pub native_histograms: NativeHistograms,

    /// Resolution of the native histograms: bucket edges grow by 2^(2^-schema), -4 to 8
    /// (3: ×1.09 per bucket, 8 buckets per doubling).
    #[arg(
        long,
        env = "PLOVER_EXPORTER_NATIVE_HISTOGRAM_SCHEMA",
        default_value_t = 3,
        allow_negative_numbers = true
    )]
    pub native_histogram_schema: i8,

    /// How long shutdown waits for in-flight requests before closing connections.
    #[arg(long, env = "PLOVER_EXPORTER_SHUTDOWN_TIMEOUT", default_value = "30s")]
    pub shutdown_timeout: String,

    /// Log format: `text` or `json`. Levels come from RUST_LOG (default `info`).
    #[arg(long, env = "PLOVER_EXPORTER_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

/// Which duration buckets the protobuf exposition carries (`--native-histograms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum NativeHistograms {
    /// Classic buckets only; no native buckets are kept.
    #[default]
    Off,
    /// Native and classic buckets.
    Both,
    /// Native buckets only.
    Only,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub auth: Auth,
    pub max_batch_bytes: usize,
    /// Window lengths for the /metrics gauges, in seconds, ascending, each at most the window.
    pub windows: Vec<u64>,
    /// `--series-per-code`.
    pub series_per_code: bool,
    /// `--native-histograms` (the schema is in the store's buckets).
    pub native_histograms: NativeHistograms,
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
    pub store: StoreConfig,
}

/// Whether and how ingest is authenticated.
#[derive(Clone)]
pub enum Auth {
    /// Batches must carry `authorization: Bearer <token>`.
    Bearer(String),
    /// `--insecure-no-auth`.
    Disabled,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Auth::Disabled => f.write_str("Disabled"),
        }
    }
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Flags could not be parsed (only from [`Config::parse_from`]).
    #[error("{0}")]
    Args(String),
    #[error(
        "no ingest token: set PLOVER_EXPORTER_TOKEN or --token-file (or --insecure-no-auth for local experiments)"
    )]
    NoToken,
    #[error("give the token once: either --token-file or PLOVER_EXPORTER_TOKEN/--token")]
    TwoTokens,
    #[error("the ingest token is empty")]
    EmptyToken,
    #[error("cannot read --token-file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
}

impl Config {
    /// Parses flags as a command line would (the first item is the program name); the
    /// environment is read too. Handy for tests and for embedding.
    pub fn parse_from<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args = Args::try_parse_from(args).map_err(|e| ConfigError::Args(e.to_string()))?;
        Config::from_args(args)
    }

    /// Validates parsed flags. Reads `--token-file`.
    pub fn from_args(args: Args) -> Result<Config, ConfigError> {
        let auth = match (args.insecure_no_auth, args.token_file, args.token) {
            (_, Some(_), Some(_)) => return Err(ConfigError::TwoTokens),
            (_, Some(path), None) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|source| ConfigError::TokenFile { path, source })?;
                Auth::Bearer(non_empty(text)?)
            }
            (_, None, Some(token)) => Auth::Bearer(non_empty(token)?),
            (true, None, None) => Auth::Disabled,
            (false, None, None) => return Err(ConfigError::NoToken),
        };
        if args.max_batch_bytes == 0 || args.max_batch_bytes > MAX_BATCH_BYTES {
            return Err(invalid(
                "max-batch-bytes",
                format!("must be between 1 and {MAX_BATCH_BYTES}"),
            ));
        }
        if args.max_window_mib == 0 {
            return Err(invalid("max-window-mib", "must be at least 1".into()));
        }
        if args.max_series == 0 {
            return Err(invalid("max-series", "must be at least 1".into()));
        }
        if args.max_revisions == 0 {
            return Err(invalid("max-revisions", "must be at least 1".into()));
        }
        let window = seconds("window", &args.window)?;
        let series_ttl = seconds("series-ttl", &args.series_ttl)?;
        if series_ttl < window {
            return Err(invalid(
                "series-ttl",
                format!("must be at least --window ({window}s), or windows would lose data early"),
            ));
        }
        let mut windows = args
            .windows
            .split(',')
            .map(|w| seconds("windows", w))
            .collect::<Result<Vec<_>, _>>()?;
        windows.sort_unstable();
        windows.dedup();
        if let Some(&longest) = windows.last() {
            if longest > window {
                return Err(invalid(
                    "windows",
                    format!("{longest}s is longer than --window ({window}s)"),
                ));
            }
        }
        let bounds = args
            .duration_buckets
            .split(',')
            .map(|b| {
                b.trim()
                    .parse::<f64>()
                    .map_err(|_| invalid("duration-buckets", format!("`{b}` is not a number")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if bounds.is_empty() || bounds.len() > DurationBuckets::MAX_BOUNDS {
            return Err(invalid(
                "duration-buckets",
                format!("give 1 to {} bounds", DurationBuckets::MAX_BOUNDS),
            ));
        }
        if bounds.iter().any(|b| !b.is_finite() || *b <= 0.0)
            || bounds.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(invalid(
                "duration-buckets",
                "bounds must be positive, finite and strictly ascending".into(),
            ));
        }
        if !DurationBuckets::NATIVE_SCHEMAS.contains(&args.native_histogram_schema) {
            return Err(invalid(
                "native-histogram-schema",
                format!(
                    "{} is not a schema Prometheus accepts ({} to {})",
                    args.native_histogram_schema,
                    DurationBuckets::NATIVE_SCHEMAS.start(),
                    DurationBuckets::NATIVE_SCHEMAS.end()
                ),
            ));
        }
        let native_schema = (args.native_histograms != NativeHistograms::Off)
            .then_some(args.native_histogram_schema);
        let shutdown_timeout =
            Duration::from_secs(seconds("shutdown-timeout", &args.shutdown_timeout)?);
        Ok(Config {
            listen: args.listen,
            auth,
            max_batch_bytes: args.max_batch_bytes,
            windows,
            series_per_code: args.series_per_code,
            native_histograms: args.native_histograms,
            shutdown_timeout,
            log_format: args.log_format,
            store: StoreConfig {
                max_series: args.max_series,
                max_revisions: args.max_revisions,
                series_ttl_ms: series_ttl * 1000,
                window_seconds: window,
                window_budget_bytes: WINDOW_BUDGET_BYTES,
                max_window_bytes: args.max_window_mib.saturating_mul(1 << 20),
                buckets: DurationBuckets::new(bounds, native_schema),
            },
        })
    }
}

fn non_empty(token: String) -> Result<String, ConfigError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(ConfigError::EmptyToken);
    }
    Ok(token.to_owned())
}

fn seconds(flag: &'static str, text: &str) -> Result<u64, ConfigError> {
    parse_window_seconds(text).ok_or_else(|| {
        invalid(
            flag,
            format!("`{text}` is not a duration like 30s, 5m or 1h"),
        )
    })
}

fn invalid(flag: &'static str, reason: String) -> ConfigError {
    ConfigError::Invalid { flag, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, ConfigError> {
        Config::parse_from(["plover-exporter"].iter().chain(extra))
    }

    #[test]
    fn defaults_need_a_token() {
        assert!(matches!(parse(&[]), Err(ConfigError::NoToken)));
        let c = parse(&["--insecure-no-auth"]).unwrap();
        assert!(matches!(c.auth, Auth::Disabled));
        assert_eq!(c.windows, vec![30, 60, 300]);
        assert_eq!(c.store.window_seconds, 600);
        assert_eq!(c.store.max_series, 100_000);
        assert_eq!(c.store.buckets.bounds().len(), 11);
        assert_eq!(c.native_histograms, NativeHistograms::Off);
        assert_eq!(c.store.buckets.native_schema(), None);
    }

    #[test]
    fn native_histograms_take_a_schema_prometheus_accepts() {
        let c = parse(&["--insecure-no-auth", "--native-histograms", "only"]).unwrap();
        assert_eq!(c.native_histograms, NativeHistograms::Only);
        assert_eq!(c.store.buckets.native_schema(), Some(3));
        let c = parse(&[
            "--insecure-no-auth",
            "--native-histograms=both",
            "--native-histogram-schema",
            "-2",
        ])
        .unwrap();
        assert_eq!(c.store.buckets.native_schema(), Some(-2));
        let error = parse(&[
            "--insecure-no-auth",
            "--native-histograms=both",
            "--native-histogram-schema=9",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            error.contains(
                "--native-histogram-schema: 9 is not a schema Prometheus accepts (-4 to 8)"
            ),
            "{error}"
        );
        assert!(parse(&["--insecure-no-auth", "--native-histograms=yes"]).is_err());
    }

    #[test]
    fn token_from_a_file_is_trimmed_and_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let c = parse(&["--token-file", path.to_str().unwrap()]).unwrap();
        assert!(matches!(&c.auth, Auth::Bearer(t) if t == "s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(matches!(
            parse(&["--token-file", "/nonexistent/x"]),
            Err(ConfigError::TokenFile { .. })
        ));
        assert!(matches!(
            parse(&["--token-file", path.to_str().unwrap(), "--token", "x"]),
            Err(ConfigError::TwoTokens)
        ));
        assert!(matches!(
            parse(&["--token", "  "]),
            Err(ConfigError::EmptyToken)
        ));
    }

    #[test]
    fn bad_values_name_their_flag() {
        for (args, flag) in [
            (vec!["--windows", "30s,20m"], "windows"),
            (vec!["--windows", "30x"], "windows"),
            (vec!["--window", "0s"], "window"),
            (vec!["--series-ttl", "1m"], "series-ttl"),
            (vec!["--duration-buckets", "0.1,0.05"], "duration-buckets"),
            (vec!["--duration-buckets", "0.1,abc"], "duration-buckets"),
            (vec!["--max-series", "0"], "max-series"),
            (vec!["--max-revisions", "0"], "max-revisions"),
            (vec!["--max-batch-bytes", "99999999999"], "max-batch-bytes"),
        ] {
            let mut all = vec!["--insecure-no-auth"];
            all.extend(args);
            match parse(&all) {
                Err(ConfigError::Invalid { flag: f, .. }) => assert_eq!(f, flag),
                other => panic!("{all:?}: {other:?}"),
            }
        }
    }
}
