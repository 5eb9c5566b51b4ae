//! Spec validation beyond the schema, into a typed [`Plan`]: every message starts with the field
//! it is about (`spec.steps[2]: …`), so the `InvalidSpec` condition tells the user what to fix,
//! and what passes is parsed once (durations, windows, defaults) so that `decide` never parses
//! or falls back.

use std::{fmt, time::Duration};

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::spec::*;
use plover_analysis::duration;

mod routes;

/// A spec as `decide` acts on it: every duration parsed, every default applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub steps: Vec<PlanStep>,
    /// The background analysis and the step index it starts at.
    pub background: Option<BackgroundPlan>,
    pub traffic_check: Option<TrafficCheckPlan>,
    /// `progressDeadlineSeconds` (default 600).
    pub progress_deadline: Duration,
    pub progress_deadline_abort: bool,
    /// Envoy file routing (local mode): the workloads are revision names, and promotion makes
    /// the canary's revision the stable one instead of copying a pod template.
    pub envoy_routing: bool,
    /// `spec.trafficRouting.managedRoutes`, highest priority first.
    pub managed_routes: Vec<String>,
}

/// One step, its kind resolved.
#[derive(Clone, Debug, PartialEq)]
pub enum PlanStep {
    SetWeight(u32),
    /// `None`: until promoted.
    Pause(Option<Duration>),
    Analysis(AnalysisSource),
    /// Set (or, without matches, remove) a managed header route.
    HeaderRoute(SetHeaderRoute),
    /// Set (or, without matches, remove) a managed mirror route.
    MirrorRoute(SetMirrorRoute),
}

#[derive(Clone, Debug, PartialEq)]
pub struct BackgroundPlan {
    pub starting_step: u32,
    pub source: AnalysisSource,
}

/// `spec.trafficCheck` with its defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct TrafficCheckPlan {
    pub window: Duration,
    /// Percentage points (see `split::judge`).
    pub tolerance: u32,
    pub min_requests: u64,
    pub mismatch_after: Duration,
    pub exporter: String,
}

/// One problem in the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the field, e.g. `spec.trafficRouting.istio.virtualService.name`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a spec cannot be acted on: all problems found, in field order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct InvalidSpec {
    pub errors: Vec<FieldError>,
}

impl fmt::Display for InvalidSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.errors.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join("; "))
    }
}

struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// A Kubernetes object name: DNS-1123 subdomain.
    fn name(&mut self, field: &str, value: &str) {
        if value.is_empty() {
            self.push(field, "must not be empty");
        } else if value.len() > 253
            || !value
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            || !value.starts_with(|c: char| c.is_ascii_alphanumeric())
            || !value.ends_with(|c: char| c.is_ascii_alphanumeric())
        {
            self.push(field, format!("{value:?} is not a valid name (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)"));
        }
    }
}

/// Parses a pause duration: a number of seconds or a Go duration string.
pub fn pause_duration(value: &IntOrString) -> Result<Duration, String> {
    match value {
        IntOrString::Int(n) if *n >= 0 => Ok(Duration::from_secs(u64::from(n.unsigned_abs()))),
        IntOrString::Int(n) => Err(format!("{n} is negative")),
        IntOrString::String(s) => match s.trim().parse::<u64>() {
            Ok(n) => Ok(Duration::from_secs(n)),
            Err(_) => duration::parse(s.trim()).map_err(|e| e.to_string()),
        },
    }
}

/// Parses an optional Go duration field, with a default.
pub fn duration_or(value: Option<&str>, default: &str) -> Result<Duration, String> {
    duration::parse(value.unwrap_or(default).trim()).map_err(|e| e.to_string())
}

/// Checks what the CRD schema cannot (one-of choices, references, durations, names) and returns
/// the plan `decide` follows.
pub fn validate(spec: &CanarySpec) -> Result<Plan, InvalidSpec> {
    let mut e = Errors(Vec::new());
    let mut steps = Vec::with_capacity(spec.steps.len());
    e.name("spec.workload.stable", &spec.workload.stable);
    e.name("spec.workload.canary", &spec.workload.canary);
    // With Envoy routing (local mode) the workloads are revisions, and the same revision on both
    // means there is nothing to roll out; elsewhere they are two Deployments.
    if !spec.workload.stable.is_empty()
        && spec.workload.stable == spec.workload.canary
        && spec.traffic_routing.envoy.is_none()
    {
        e.push(
            "spec.workload.canary",
            "must differ from spec.workload.stable",
        );
    }
    validate_routing(&mut e, &spec.traffic_routing, &spec.workload);
    routes::managed_routes(&mut e, spec);
    let progress_deadline = match spec.progress_deadline_seconds {
        None => Duration::from_secs(u64::from(DEFAULT_PROGRESS_DEADLINE_SECONDS)),
        Some(s) => match u64::try_from(s) {
            Ok(s) if s >= 1 => Duration::from_secs(s),
            _ => {
                e.push("spec.progressDeadlineSeconds", "must be >= 1");
                Duration::ZERO
            }
        },
    };
    for (i, step) in spec.steps.iter().enumerate() {
        let field = format!("spec.steps[{i}]");
        let set = [
            step.set_weight.is_some(),
            step.pause.is_some(),
            step.analysis.is_some(),
            step.set_header_route.is_some(),
            step.set_mirror_route.is_some(),
        ];
        const KINDS: &str = "setWeight, pause, analysis, setHeaderRoute, setMirrorRoute";
        match set.iter().filter(|s| **s).count() {
            1 => {}
            0 => e.push(&field, format!("must set one of {KINDS}")),
            _ => e.push(&field, format!("must set only one of {KINDS}")),
        }
        if let Some(route) = &step.set_header_route {
            routes::header_route(&mut e, &field, route, &spec.traffic_routing);
            steps.push(PlanStep::HeaderRoute(route.clone()));
        }
        if let Some(route) = &step.set_mirror_route {
            routes::mirror_route(&mut e, &field, route, &spec.traffic_routing);
            steps.push(PlanStep::MirrorRoute(route.clone()));
        }
        if let Some(w) = step.set_weight {
            match u32::try_from(w).ok().filter(|w| *w <= 100) {
                Some(w) => steps.push(PlanStep::SetWeight(w)),
                None => e.push(
                    format!("{field}.setWeight"),
                    format!("{w} is not between 0 and 100"),
                ),
            }
        }
        if let Some(pause) = &step.pause {
            match pause.duration.as_ref().map(pause_duration).transpose() {
                Ok(d) => steps.push(PlanStep::Pause(d)),
                Err(message) => e.push(format!("{field}.pause.duration"), message),
            }
        }
        if let Some(a) = &step.analysis {
            validate_source(
                &mut e,
                &format!("{field}.analysis"),
                &a.templates,
                &a.metrics,
                &a.args,
            );
            steps.push(PlanStep::Analysis(a.clone()));
        }
    }
    let background = spec.analysis.as_ref().map(|a| {
        validate_source(&mut e, "spec.analysis", &a.templates, &a.metrics, &a.args);
        let starting_step = match a.starting_step {
            None => 0,
            Some(s) => match u32::try_from(s)
                .ok()
                .filter(|s| *s as usize <= spec.steps.len())
            {
                Some(s) => s,
                None => {
                    e.push(
                        "spec.analysis.startingStep",
                        format!("{s} is not a step index (0 to {})", spec.steps.len()),
                    );
                    0
                }
            },
        };
        BackgroundPlan {
            starting_step,
            source: a.source(),
        }
    });
    let traffic_check = spec.traffic_check.as_ref().map(|t| {
        if !(t.exporter.starts_with("http://") || t.exporter.starts_with("https://")) {
            e.push(
                "spec.trafficCheck.exporter",
                format!("{:?} is not an http(s) URL", t.exporter),
            );
        }
        let window = t.window.as_deref().unwrap_or(DEFAULT_TRAFFIC_WINDOW);
        let window = match plover_wire::stats::parse_window_seconds(window) {
            Some(seconds) => Duration::from_secs(seconds),
            None => {
                e.push(
                    "spec.trafficCheck.window",
                    format!("{window:?} is not a window such as 30s, 5m or 1h"),
                );
                Duration::ZERO
            }
        };
        let tolerance = match t.tolerance {
            None => DEFAULT_TRAFFIC_TOLERANCE,
            Some(tol) => u32::try_from(tol)
                .ok()
                .filter(|t| *t <= 100)
                .unwrap_or_else(|| {
                    e.push(
                        "spec.trafficCheck.tolerance",
                        format!("{tol} is not between 0 and 100"),
                    );
                    0
                }),
        };
        let min_requests = match t.min_requests {
            None => DEFAULT_MIN_REQUESTS,
            Some(m) => u64::try_from(m).unwrap_or_else(|_| {
                e.push("spec.trafficCheck.minRequests", "must be >= 0");
                0
            }),
        };
        let mismatch_after = duration_or(t.mismatch_after.as_deref(), DEFAULT_MISMATCH_AFTER)
            .unwrap_or_else(|message| {
                e.push("spec.trafficCheck.mismatchAfter", message);
                Duration::ZERO
            });
        TrafficCheckPlan {
            window,
            tolerance,
            min_requests,
            mismatch_after,
            exporter: t.exporter.clone(),
        }
    });
    if e.0.is_empty() {
        Ok(Plan {
            steps,
            background,
            traffic_check,
            progress_deadline,
            progress_deadline_abort: spec.progress_deadline_abort,
            envoy_routing: spec.traffic_routing.envoy.is_some(),
            managed_routes: spec
                .traffic_routing
                .managed_routes
                .iter()
                .map(|r| r.name.clone())
                .collect(),
        })
    } else {
        Err(InvalidSpec { errors: e.0 })
    }
}

fn validate_routing(e: &mut Errors, routing: &TrafficRouting, workload: &WorkloadRef) {
    let configured: Vec<&str> = [
        routing.istio.as_ref().map(|_| "istio"),
        routing.gateway_api.as_ref().map(|_| "gatewayAPI"),
        routing.envoy.as_ref().map(|_| "envoy"),
    ]
    .into_iter()
    .flatten()
    .collect();
    match configured.len() {
        1 => {}
        0 => e.push(
            "spec.trafficRouting",
            "must set one of istio, gatewayAPI, envoy",
        ),
        _ => e.push(
            "spec.trafficRouting",
            format!(
                "must set only one of istio, gatewayAPI, envoy (found {})",
                configured.join(", ")
            ),
        ),
    }
    if let Some(istio) = &routing.istio {
        let f = "spec.trafficRouting.istio";
        e.name(
            &format!("{f}.virtualService.name"),
            &istio.virtual_service.name,
        );
        for (i, r) in istio.virtual_service.routes.iter().enumerate() {
            if r.is_empty() {
                e.push(
                    format!("{f}.virtualService.routes[{i}]"),
                    "must not be empty",
                );
            }
        }
        let hosts = (
            istio.stable_service.as_deref(),
            istio.canary_service.as_deref(),
        );
        match (&istio.destination_rule, hosts) {
            (Some(dr), (None, None)) => {
                e.name(&format!("{f}.destinationRule.name"), &dr.name);
                if dr.stable_subset_name.is_empty() {
                    e.push(format!("{f}.destinationRule.stableSubsetName"), "must not be empty");
                }
                if dr.canary_subset_name.is_empty() {
                    e.push(format!("{f}.destinationRule.canarySubsetName"), "must not be empty");
                }
                if !dr.stable_subset_name.is_empty() && dr.stable_subset_name == dr.canary_subset_name {
                    e.push(format!("{f}.destinationRule.canarySubsetName"), "must differ from stableSubsetName");
                }
            }
            (Some(_), _) => e.push(f, "set either destinationRule (subset mode) or stableService and canaryService (host mode), not both"),
            (None, (Some(stable), Some(canary))) => {
                e.name(&format!("{f}.stableService"), stable);
                e.name(&format!("{f}.canaryService"), canary);
                if stable == canary {
                    e.push(format!("{f}.canaryService"), "must differ from stableService");
                }
            }
            (None, _) => e.push(f, "set destinationRule (subset mode) or both stableService and canaryService (host mode)"),
        }
    }
    if let Some(gw) = &routing.gateway_api {
        let f = "spec.trafficRouting.gatewayAPI";
        e.name(&format!("{f}.httpRoute"), &gw.http_route);
        e.name(&format!("{f}.stableService"), &gw.stable_service);
        e.name(&format!("{f}.canaryService"), &gw.canary_service);
        if !gw.stable_service.is_empty() && gw.stable_service == gw.canary_service {
            e.push(
                format!("{f}.canaryService"),
                "must differ from stableService",
            );
        }
        for (i, r) in gw.rules.iter().enumerate() {
            if r.is_empty() {
                e.push(format!("{f}.rules[{i}]"), "must not be empty");
            }
        }
    }
    if let Some(header) = &routing.revision_header {
        let f = "spec.trafficRouting.revisionHeader";
        if header.is_empty()
            || !header
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            e.push(
                f,
                format!("{header:?} is not a header name (lowercase letters, digits and '-')"),
            );
        }
    }
    if let Some(envoy) = &routing.envoy {
        let f = "spec.trafficRouting.envoy";
        if envoy.routes_file.is_empty() {
            e.push(format!("{f}.routesFile"), "must not be empty");
        } else if std::path::Path::new(&envoy.routes_file)
            .file_name()
            .is_none()
        {
            e.push(format!("{f}.routesFile"), "must name a file");
        }
        if envoy.route_config_name.is_empty() {
            e.push(format!("{f}.routeConfigName"), "must not be empty");
        }
        if envoy.domains.is_empty() {
            e.push(format!("{f}.domains"), "must list at least one domain");
        }
        match (&envoy.stable_cluster, &envoy.canary_cluster) {
            (None, None) => {
                if envoy.clusters_file.is_some() || !envoy.backends.is_empty() {
                    e.push(
                        format!("{f}.clustersFile"),
                        "needs stableCluster and canaryCluster",
                    );
                }
            }
            (Some(stable), Some(canary)) => {
                if stable.is_empty() || stable == canary {
                    e.push(
                        format!("{f}.canaryCluster"),
                        "must be set and differ from stableCluster",
                    );
                }
                if envoy.clusters_file.as_deref().is_none_or(str::is_empty) {
                    e.push(
                        format!("{f}.clustersFile"),
                        "must be set with fixed clusters",
                    );
                }
                // The stable revision changes with promotions; only the canary's is known here.
                if !envoy.backends.contains_key(&workload.canary) {
                    e.push(
                        format!("{f}.backends"),
                        format!("has no backend for revision {:?}", workload.canary),
                    );
                }
                for (revision, address) in &envoy.backends {
                    if address
                        .rsplit_once(':')
                        .and_then(|(_, p)| p.parse::<u16>().ok())
                        .is_none()
                    {
                        e.push(
                            format!("{f}.backends.{revision}"),
                            format!("{address:?} is not host:port"),
                        );
                    }
                }
            }
            _ => e.push(f, "set both stableCluster and canaryCluster, or neither"),
        }
        if !envoy.prefix.starts_with('/') {
            e.push(
                format!("{f}.prefix"),
                format!("{:?} must start with '/'", envoy.prefix),
            );
        }
    }
}

fn validate_source(
    e: &mut Errors,
    field: &str,
    templates: &[AnalysisTemplateRef],
    metrics: &[serde_json::Value],
    args: &[AnalysisArg],
) {
    if templates.is_empty() && metrics.is_empty() {
        e.push(field, "must reference templates or define metrics");
    }
    for (i, t) in templates.iter().enumerate() {
        e.name(
            &format!("{field}.templates[{i}].templateName"),
            &t.template_name,
        );
    }
    let mut names: Vec<&str> = Vec::new();
    for (i, m) in metrics.iter().enumerate() {
        match m.get("name").and_then(|n| n.as_str()) {
            Some(n) if !n.is_empty() => {
                if names.contains(&n) {
                    e.push(
                        format!("{field}.metrics[{i}].name"),
                        format!("two metrics have the same name '{n}'"),
                    );
                }
                names.push(n);
            }
            _ => e.push(format!("{field}.metrics[{i}].name"), "is required"),
        }
        if m.get("provider")
            .and_then(|p| p.as_object())
            .is_none_or(|p| p.is_empty())
        {
            e.push(format!("{field}.metrics[{i}].provider"), "is required");
        }
    }
    for (i, a) in args.iter().enumerate() {
        let f = format!("{field}.args[{i}]");
        if a.name.is_empty() {
            e.push(format!("{f}.name"), "must not be empty");
        }
        match (&a.value, &a.value_from) {
            (Some(_), Some(_)) => e.push(&f, "set value or valueFrom, not both"),
            (None, None) => e.push(&f, "set value or valueFrom"),
            (None, Some(from)) => match (&from.pod_template_hash_value, &from.field_ref) {
                (Some(h), None) => {
                    if h != "Stable" && h != "Latest" {
                        e.push(
                            format!("{f}.valueFrom.podTemplateHashValue"),
                            format!("{h:?} is not Stable or Latest"),
                        );
                    }
                }
                (None, Some(r)) => {
                    if r.field_path.is_empty() {
                        e.push(
                            format!("{f}.valueFrom.fieldRef.fieldPath"),
                            "must not be empty",
                        );
                    }
                }
                _ => e.push(
                    format!("{f}.valueFrom"),
                    "set exactly one of podTemplateHashValue, fieldRef",
                ),
            },
            (Some(_), None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn istio_spec() -> CanarySpec {
        CanarySpec {
            workload: WorkloadRef {
                stable: "podinfo".into(),
                canary: "podinfo-canary".into(),
            },
            traffic_routing: TrafficRouting {
                istio: Some(IstioRouting {
                    virtual_service: VirtualServiceRef {
                        name: "podinfo".into(),
                        routes: vec!["primary".into()],
                    },
                    stable_service: Some("podinfo-stable".into()),
                    canary_service: Some("podinfo-canary".into()),
                    destination_rule: None,
                }),
                ..Default::default()
            },
            steps: vec![CanaryStep {
                set_weight: Some(20),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn fields(spec: &CanarySpec) -> Vec<String> {
        match validate(spec) {
            Ok(_) => vec![],
            Err(e) => e.errors.into_iter().map(|f| f.field).collect(),
        }
    }

    #[test]
    fn managed_routes_name_what_each_router_cannot_take() {
        let spec = |routing: &str, steps: &str| -> CanarySpec {
            serde_yaml::from_str(&format!(
                "workload: {{stable: app, canary: app-canary}}\ntrafficRouting:\n{routing}\nsteps:\n{steps}"
            ))
            .unwrap()
        };
        let istio = "  istio: {virtualService: {name: app, routes: [primary]}, stableService: app, canaryService: app-canary}\n  managedRoutes: [{name: by-header}, {name: mirror}]";
        let good = spec(
            istio,
            "- setHeaderRoute: {name: by-header, match: [{headerName: x-canary, headerValue: {exact: always}}, {headerName: cookie, headerValue: {regex: '^(.*?;)?(canary=always)(;.*)?$'}}]}\n\
             - setMirrorRoute: {name: mirror, percentage: 35, match: [{method: {exact: GET}, path: {prefix: /api}, headers: {x-user: {prefix: test-}}}]}\n\
             - setHeaderRoute: {name: by-header}",
        );
        let plan = validate(&good).unwrap();
        assert_eq!(plan.managed_routes, ["by-header", "mirror"]);
        assert!(matches!(plan.steps[1], PlanStep::MirrorRoute(_)));

        let bad = spec(
            "  istio: {virtualService: {name: app, routes: [primary]}, stableService: app, canaryService: app-canary}\n  managedRoutes: [{name: primary}, {name: Mirror}, {name: x}, {name: x}]",
            "- setHeaderRoute: {name: other, match: [{headerName: X-Canary, headerValue: {}}]}\n\
             - setMirrorRoute: {name: x, percentage: 101, match: [{path: {exact: api}, method: {regex: '('}}]}\n\
             - setHeaderRoute: {name: x, match: [{headerName: a, headerValue: {exact: b, prefix: c}}]}",
        );
        let message = validate(&bad).unwrap_err().to_string();
        for expected in [
            r#"spec.trafficRouting.managedRoutes[0].name: "primary" is also a weighted route"#,
            r#"spec.trafficRouting.managedRoutes[1].name: "Mirror" is not a route name"#,
            r#"spec.trafficRouting.managedRoutes[3].name: "x" is listed twice"#,
            r#"spec.steps[1].setMirrorRoute.name: "x" is also a setHeaderRoute's name"#,
            r#"spec.steps[0].setHeaderRoute.name: "other" is not in spec.trafficRouting.managedRoutes"#,
            r#"spec.steps[0].setHeaderRoute.match[0].headerName: "X-Canary" is not a header name in lower case"#,
            "spec.steps[0].setHeaderRoute.match[0].headerValue: must set one of exact, prefix, regex",
            "spec.steps[1].setMirrorRoute.percentage: 101 is not between 0 and 100",
            "spec.steps[1].setMirrorRoute.match[0].method: regex \"(\" does not compile",
            "spec.steps[1].setMirrorRoute.match[0].path: an exact or prefix path starts with '/'",
            "spec.steps[2].setHeaderRoute.match[0].headerValue: must set only one of exact, prefix, regex",
        ] {
            assert!(message.contains(expected), "{expected}\n in: {message}");
        }

        // Gateway API matches a method exactly, from its list.
        let gateway = spec(
            "  gatewayAPI: {httpRoute: app, stableService: app, canaryService: app-canary}\n  managedRoutes: [{name: mirror}]",
            "- setMirrorRoute: {name: mirror, match: [{method: {prefix: G}}]}",
        );
        assert!(validate(&gateway).unwrap_err().to_string().contains(
            "spec.steps[0].setMirrorRoute.match[0].method: gatewayAPI matches a method exactly"
        ));
        // A step of two kinds is refused like any other.
        let two = spec(
            istio,
            "- setWeight: 10\n  setHeaderRoute: {name: by-header}",
        );
        assert_eq!(fields(&two), ["spec.steps[0]"]);
    }

    #[test]
    fn a_good_spec_passes() {
        assert!(validate(&istio_spec()).is_ok());
    }

    #[test]
    fn messages_name_the_field() {
        let mut spec = istio_spec();
        spec.steps.push(CanaryStep {
            set_weight: Some(120),
            ..Default::default()
        });
        spec.steps.push(CanaryStep::default());
        spec.steps.push(CanaryStep {
            pause: Some(PauseStep {
                duration: Some(IntOrString::String("5 minutes".into())),
            }),
            ..Default::default()
        });
        spec.workload.canary = "podinfo".into();
        spec.progress_deadline_seconds = Some(0);
        let err = validate(&spec).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("spec.progressDeadlineSeconds: must be >= 1"),
            "{text}"
        );
        assert!(
            text.contains("spec.workload.canary: must differ from spec.workload.stable"),
            "{text}"
        );
        assert!(
            text.contains("spec.steps[1].setWeight: 120 is not between 0 and 100"),
            "{text}"
        );
        assert!(
            text.contains("spec.steps[2]: must set one of setWeight, pause, analysis"),
            "{text}"
        );
        assert!(
            text.contains("spec.steps[3].pause.duration: time: "),
            "{text}"
        );
    }

    #[test]
    fn exactly_one_router() {
        let mut spec = istio_spec();
        spec.traffic_routing.envoy = Some(EnvoyRouting {
            routes_file: "/tmp/rds/routes.yaml".into(),
            prefix: "/".into(),
            route_config_name: "r".into(),
            domains: vec!["*".into()],
            ..Default::default()
        });
        assert_eq!(fields(&spec), vec!["spec.trafficRouting"]);
        spec.traffic_routing = TrafficRouting::default();
        assert_eq!(fields(&spec), vec!["spec.trafficRouting"]);
    }

    #[test]
    fn the_same_revision_on_both_workloads_is_nothing_to_roll_out_only_in_local_mode() {
        let mut spec = istio_spec();
        spec.workload.canary = spec.workload.stable.clone();
        assert_eq!(fields(&spec), vec!["spec.workload.canary"]);
        spec.traffic_routing = TrafficRouting {
            envoy: Some(EnvoyRouting {
                routes_file: "/tmp/rds/routes.yaml".into(),
                prefix: "/".into(),
                route_config_name: "r".into(),
                domains: vec!["*".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(fields(&spec), Vec::<String>::new());
    }

    #[test]
    fn fixed_envoy_clusters_need_a_cds_file_and_the_canary_backend() {
        let mut spec = istio_spec();
        spec.traffic_routing.istio = None;
        spec.workload = WorkloadRef {
            stable: "v1".into(),
            canary: "v2".into(),
        };
        let mut envoy = EnvoyRouting {
            routes_file: "/tmp/x/routes.yaml".into(),
            route_config_name: "r".into(),
            domains: vec!["*".into()],
            prefix: "/".into(),
            stable_cluster: Some("stable".into()),
            ..Default::default()
        };
        spec.traffic_routing.envoy = Some(envoy.clone());
        assert_eq!(fields(&spec), vec!["spec.trafficRouting.envoy"]);
        envoy.canary_cluster = Some("canary".into());
        envoy.backends.insert("v1".into(), "127.0.0.1:80".into());
        envoy.backends.insert("v9".into(), "nowhere".into());
        spec.traffic_routing.envoy = Some(envoy);
        assert_eq!(
            fields(&spec),
            vec![
                "spec.trafficRouting.envoy.clustersFile",
                "spec.trafficRouting.envoy.backends",
                "spec.trafficRouting.envoy.backends.v9"
            ]
        );
    }

    #[test]
    fn istio_needs_hosts_or_subsets() {
        let mut spec = istio_spec();
        if let Some(i) = spec.traffic_routing.istio.as_mut() {
            i.canary_service = None;
        }
        assert_eq!(fields(&spec), vec!["spec.trafficRouting.istio"]);
        if let Some(i) = spec.traffic_routing.istio.as_mut() {
            i.stable_service = None;
            i.destination_rule = Some(DestinationRuleRef {
                name: "podinfo".into(),
                stable_subset_name: "s".into(),
                canary_subset_name: "s".into(),
            });
        }
        assert_eq!(
            fields(&spec),
            vec!["spec.trafficRouting.istio.destinationRule.canarySubsetName"]
        );
    }

    #[test]
    fn analysis_sources_are_checked() {
        let mut spec = istio_spec();
        spec.steps.push(CanaryStep {
            analysis: Some(AnalysisSource::default()),
            ..Default::default()
        });
        spec.analysis = Some(BackgroundAnalysis {
            starting_step: Some(9),
            metrics: vec![
                serde_json::json!({"name": "m", "provider": {"web": {"url": "http://x"}}}),
                serde_json::json!({"name": "m"}),
            ],
            args: vec![AnalysisArg {
                name: "a".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(
            fields(&spec),
            vec![
                "spec.steps[1].analysis",
                "spec.analysis.metrics[1].name",
                "spec.analysis.metrics[1].provider",
                "spec.analysis.args[0]",
                "spec.analysis.startingStep",
            ]
        );
    }

    #[test]
    fn pause_durations() {
        assert_eq!(
            pause_duration(&IntOrString::Int(30)),
            Ok(Duration::from_secs(30))
        );
        assert_eq!(
            pause_duration(&IntOrString::String("1m30s".into())),
            Ok(Duration::from_secs(90))
        );
        assert_eq!(
            pause_duration(&IntOrString::String("45".into())),
            Ok(Duration::from_secs(45))
        );
        assert!(pause_duration(&IntOrString::Int(-1)).is_err());
    }
}
