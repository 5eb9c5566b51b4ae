//! The demo's files: the `Canary` spec (`canary.yaml`), the AnalysisTemplates it references
//! (`templates.yaml`) and the demo's own settings (`demo.yaml`: revisions, load, releases).
//! Timings live in these files, not in the code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plover_analysis::{duration, template};
use plover_controller::canary::Canary;
use serde::Deserialize;

use crate::release::Expect;
use crate::DemoError;
use plover_testkit::backend::Behaviour;

/// One revision of the demo app.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevisionSpec {
    #[serde(default)]
    pub delay: Option<String>,
    #[serde(default)]
    pub error_share: f64,
    #[serde(default)]
    pub error_status: Option<u16>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadSpec {
    pub rps: f64,
    pub max_in_flight: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReleaseSpec {
    pub name: String,
    pub revision: String,
    pub expect: Expect,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DemoFile {
    initial_revision: String,
    revisions: BTreeMap<String, RevisionSpec>,
    load: LoadSpec,
    releases: Vec<ReleaseSpec>,
    release_timeout: String,
    settle: String,
}

/// Everything the demo reads, checked.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    pub canary: Canary,
    pub initial_revision: String,
    pub revisions: BTreeMap<String, Behaviour>,
    pub load: LoadSpec,
    pub releases: Vec<ReleaseSpec>,
    pub release_timeout: Duration,
    pub settle: Duration,
}

fn read(path: &Path) -> Result<String, DemoError> {
    std::fs::read_to_string(path).map_err(|e| DemoError::Io {
        what: format!("read {}", path.display()),
        source: e,
    })
}

fn invalid(path: &Path, message: impl std::fmt::Display) -> DemoError {
    DemoError::Config {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

fn parse_duration(path: &Path, field: &str, text: &str) -> Result<Duration, DemoError> {
    duration::parse(text).map_err(|e| invalid(path, format!("{field}: {e}")))
}

impl DemoConfig {
    pub fn load(dir: &Path) -> Result<DemoConfig, DemoError> {
        let canary_path = dir.join("canary.yaml");
        let canary: Canary =
            serde_yaml::from_str(&read(&canary_path)?).map_err(|e| invalid(&canary_path, e))?;
        if canary.spec.traffic_routing.envoy.is_none() {
            return Err(invalid(
                &canary_path,
                "spec.trafficRouting.envoy: local mode routes a real Envoy through its routes file",
            ));
        }
        let templates_path = dir.join("templates.yaml");
        // The controller reads the templates itself; a mistake in them is reported here, before
        // anything starts.
        template::load(&read(&templates_path)?).map_err(|e| invalid(&templates_path, e))?;

        let demo_path: PathBuf = dir.join("demo.yaml");
        let file: DemoFile =
            serde_yaml::from_str(&read(&demo_path)?).map_err(|e| invalid(&demo_path, e))?;
        let mut revisions = BTreeMap::new();
        for (name, spec) in &file.revisions {
            let delay = match &spec.delay {
                Some(d) => parse_duration(&demo_path, &format!("revisions.{name}.delay"), d)?,
                None => Duration::ZERO,
            };
            if !(0.0..=1.0).contains(&spec.error_share) {
                return Err(invalid(
                    &demo_path,
                    format!("revisions.{name}.errorShare: between 0 and 1"),
                ));
            }
            let behaviour = Behaviour {
                delay,
                error_share: spec.error_share,
                error_status: spec.error_status.unwrap_or(500),
                ..Behaviour::default()
            };
            revisions.insert(name.clone(), behaviour);
        }
        let known = |field: String, revision: &str| {
            if revisions.contains_key(revision) {
                Ok(())
            } else {
                Err(invalid(
                    &demo_path,
                    format!("{field}: revision {revision:?} is not under `revisions`"),
                ))
            }
        };
        known("initialRevision".into(), &file.initial_revision)?;
        for (i, r) in file.releases.iter().enumerate() {
            known(format!("releases[{i}].revision"), &r.revision)?;
        }
        if file.load.rps <= 0.0 || file.load.max_in_flight == 0 {
            return Err(invalid(
                &demo_path,
                "load: rps and maxInFlight must be positive",
            ));
        }
        Ok(DemoConfig {
            canary,
            initial_revision: file.initial_revision,
            revisions,
            load: file.load,
            releases: file.releases,
            release_timeout: parse_duration(&demo_path, "releaseTimeout", &file.release_timeout)?,
            settle: parse_duration(&demo_path, "settle", &file.settle)?,
        })
    }

    /// The Canary's namespace (the filter's rules and the exporter's queries use it).
    pub fn namespace(&self) -> String {
        self.canary
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into())
    }

    /// The service the filter counts requests under: the traffic check's, else the Canary's name.
    pub fn service(&self) -> String {
        let named = self
            .canary
            .spec
            .traffic_check
            .as_ref()
            .and_then(|c| c.service.clone());
        named
            .or_else(|| self.canary.metadata.name.clone())
            .unwrap_or_else(|| "app".into())
    }
}
