//! Plover's sequential judges: the canary *against stable*, with always-valid tests.
//!
//! Threshold rules on one revision (Argo, Flagger) are slow or noisy: a fixed interval times a
//! failure limit delays rollback by minutes, and at low canary traffic a threshold passes or
//! fails by chance. Plover has exact per-revision counts and latency histograms for both
//! revisions over the same seconds, so it compares them directly, after every flush:
//!
//! - [`odds`]: the exact conditional test on the odds ratio of an event between canary and
//!   stable, valid at any stopping time (false decisions ≤ α however often one looks);
//! - [`compare`]: the judges built on it — error ratio, a latency quantile shift, and the
//!   whole latency distribution (several quantiles, Bonferroni), and [`compare::Judge`], which
//!   picks one by configuration and holds a decision once reached;
//! - [`margin`]: an always-valid non-inferiority test with an absolute margin on the error
//!   rates (universal inference), which can pass a canary with no errors at all;
//! - [`looks`]: bookkeeping that feeds a judge each second of traffic at most once from
//!   windowed answers (the exporter's `/v1/stats`);
//! - [`simulate`]: seeded simulations that check the false-failure rate and measure the time
//!   to detect, side by side with Argo-style threshold templates.
//!
//! Everything here is pure: counts in, decisions out. The method is documented in
//! `sequential/SEQUENTIAL.md`.

pub mod compare;
pub mod looks;
pub mod mann_whitney;
pub mod margin;
pub mod odds;
pub mod simulate;
