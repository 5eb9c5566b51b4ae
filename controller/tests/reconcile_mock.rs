//! Reconcile against a `tower-test` mock API server: every request the controller makes is
//! asserted in order (method, path, query, body) and answered with a canned object. An
//! unexpected extra request fails the test; so does a missing one.

use std::{sync::Arc, time::Duration};

use http::{Request, Response};
use k8s_openapi::{api::apps::v1::Deployment, jiff::Timestamp};
use kube::{
    client::Body,
    runtime::{
        controller::Action,
        events::{Recorder, Reporter},
    },
    Client,
};
use plover_analysis::{
    provider::{BoxFuture, Outcome, ProviderError, Source},
    template::MetricSpec,
};
use plover_controller::{
    canary::{Canary, TrafficCheck},
    metrics::Metrics,
    observe::{template_revision, TrafficSource},
    rbac::{self, Rule},
    reconcile::{reconcile, Context},
    runner::Runner,
};
use plover_wire::stats::StatsResponse;
use serde_json::{json, Value};
use tower_test::mock::{self, Handle};

const T0: i64 = 1_800_000_000;
const T0_TEXT: &str = "2027-01-15T08:00:00Z";

struct NoProvider;
impl Source for NoProvider {
    fn query<'a>(&'a self, _: &'a MetricSpec) -> BoxFuture<'a, Result<Outcome, ProviderError>> {
        Box::pin(async { Err(ProviderError::Config("no providers in this test".into())) })
    }
}

struct NoExporter;
impl TrafficSource for NoExporter {
    fn stats<'a>(
        &'a self,
        _: &'a TrafficCheck,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<StatsResponse, String>> {
        Box::pin(async { Err("no exporter in this test".into()) })
    }
}

/// The mock API server: answers requests one by one as the test expects them. Every request
/// it receives must also be granted by `rules`, the RBAC table of whoever makes it
/// (`rbac::CONTROLLER`, or `rbac::CLI` for the kubectl commands): the manifests test holds the
/// installed RBAC to exactly those tables.
struct ApiServer {
    handle: Handle<Request<Body>, Response<Body>>,
    rules: &'static [Rule],
}

impl ApiServer {
    /// Expects the next request; returns its JSON body (Null if empty) after answering `reply`.
    async fn expect(
        &mut self,
        method: &str,
        path: &str,
        query: Option<&str>,
        reply: impl FnOnce(&Value) -> Value,
    ) -> Value {
        let content_type = (method == "PATCH").then_some("application/json-patch+json");
        self.expect_full(method, path, query, content_type, 200, reply)
            .await
    }

    /// Like `expect`, with the content type to check and the status code to answer with.
    async fn expect_full(
        &mut self,
        method: &str,
        path: &str,
        query: Option<&str>,
        content_type: Option<&str>,
        status: u16,
        reply: impl FnOnce(&Value) -> Value,
    ) -> Value {
        let (request, send) =
            tokio::time::timeout(Duration::from_secs(2), self.handle.next_request())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {method} {path}"))
                .unwrap_or_else(|| panic!("client gone before {method} {path}"));
        if let Err(e) = rbac::check(
            self.rules,
            request.method().as_str(),
            request.uri().path(),
            request.uri().query().unwrap_or_default(),
        ) {
            panic!("RBAC: {e}");
        }
        assert_eq!(request.method().as_str(), method, "{}", request.uri());
        assert_eq!(request.uri().path(), path);
        if let Some(q) = query {
            assert_eq!(
                request.uri().query().unwrap_or_default(),
                q,
                "query of {method} {path}"
            );
        }
        if let Some(expected) = content_type {
            let actual = request
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            assert_eq!(actual, expected, "{path}");
        }
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let response = reply(&body);
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&response).unwrap()))
                .unwrap(),
        );
        body
    }

    /// No further request arrives.
    /// The reads every reconcile of the `podinfo` Canary starts with: the stable and canary
    /// Deployments, then the route object at `route_path`.
    async fn expect_observation(
        &mut self,
        stable: &Value,
        canary: &Value,
        route_path: &str,
        route: &Value,
    ) {
        self.expect_observation_checking(stable, canary, &[], route_path, route)
            .await
    }

    /// [`Self::expect_observation`] of a new revision whose analyses are fetched (`templates`:
    /// path and object of each) and resolved before its first weight.
    async fn expect_observation_checking(
        &mut self,
        stable: &Value,
        canary: &Value,
        templates: &[(&str, &Value)],
        route_path: &str,
        route: &Value,
    ) {
        for (path, object) in [
            ("/apis/apps/v1/namespaces/test/deployments/podinfo", stable),
            (
                "/apis/apps/v1/namespaces/test/deployments/podinfo-canary",
                canary,
            ),
        ] {
            self.expect("GET", path, None, |_| object.clone()).await;
        }
        // Each Deployment's ReplicaSets, by its selector (none here: no pod-template-hash yet).
        for deployment in [stable, canary] {
            let labels = deployment["spec"]["selector"]["matchLabels"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            if labels.is_empty() {
                continue;
            }
            self.expect("GET", "/apis/apps/v1/namespaces/test/replicasets", None, |_| {
                json!({"apiVersion": "apps/v1", "kind": "ReplicaSetList", "metadata": {}, "items": []})
            })
            .await;
        }
        for (path, template) in templates {
            self.expect("GET", path, None, |_| (*template).clone())
                .await;
        }
        self.expect("GET", route_path, None, |_| route.clone())
            .await;
    }

    async fn expect_nothing_more(&mut self) {
        let next =
            tokio::time::timeout(Duration::from_millis(300), self.handle.next_request()).await;
        if let Ok(Some((request, _))) = next {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }
}

/// Every metric measures 0.5.
struct Half;
impl Source for Half {
    fn query<'a>(&'a self, _: &'a MetricSpec) -> BoxFuture<'a, Result<Outcome, ProviderError>> {
        Box::pin(async {
            Ok(Outcome::Value {
                value: plover_analysis::Value::Float(0.5),
                text: "0.5".into(),
            })
        })
    }
}

fn context() -> (Arc<Context>, ApiServer) {
    context_with(Arc::new(NoProvider))
}

fn context_with(source: Arc<dyn Source>) -> (Arc<Context>, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "test");
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "plover".into(),
            instance: None,
        },
    );
    let (runner, _completed) = Runner::new(source, Arc::new(std::time::SystemTime::now));
    let ctx = Context {
        client,
        recorder,
        runner,
        traffic: Arc::new(NoExporter),
        metrics: Arc::new(Metrics::new()),
        now: Arc::new(|| Timestamp::from_second(T0).unwrap()),
        notifier: plover_controller::notify::Notifier::new(
            Vec::new(),
            plover_controller::notify::RetryPolicy::default(),
        ),
    };
    (
        Arc::new(ctx),
        ApiServer {
            handle,
            rules: rbac::CONTROLLER,
        },
    )
}

fn deployment(name: &str, track: &str, image: &str, rolled_out: bool) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "test", "generation": 2, "resourceVersion": format!("{name}-rv")},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "podinfo", "track": track}},
            "template": {
                "metadata": {"labels": {"app": "podinfo", "track": track}},
                "spec": {"containers": [{"name": "podinfo", "image": image, "ports": [{"containerPort": 9898}]}]}
            }
        },
        "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": if rolled_out { 2 } else { 1 }, "availableReplicas": 2}
    })
}

fn revision(deployment: &Value) -> String {
    let d: Deployment = serde_json::from_value(deployment.clone()).unwrap();
    template_revision(&d.spec.unwrap().template)
}

fn testdata(name: &str) -> Value {
    let text = std::fs::read_to_string(format!(
        "{}/testdata/objects/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn canary(spec: Value, status: Option<Value>) -> Arc<Canary> {
    let mut object = json!({
        "apiVersion": "plover.dev/v1alpha1", "kind": "Canary",
        "metadata": {"name": "podinfo", "namespace": "test", "uid": "u-1", "generation": 1, "resourceVersion": "100"},
        "spec": spec
    });
    if let Some(status) = status {
        object["status"] = status;
    }
    Arc::new(serde_json::from_value(object).unwrap())
}

fn merge_status(object: &Canary, patch: &Value) -> Value {
    assert_eq!(
        patch[0],
        json!({"op": "test", "path": "/metadata/resourceVersion", "value": "100"})
    );
    assert_eq!(patch[1]["op"], "add");
    assert_eq!(patch[1]["path"], "/status");
    let mut obj = serde_json::to_value(object).unwrap();
    obj["status"] = patch[1]["value"].clone();
    obj
}

fn check_event(body: &Value, type_: &str, reason: &str, note_contains: &str) -> Value {
    assert_eq!(body["type"], type_);
    assert_eq!(body["reason"], reason);
    assert_eq!(body["action"], "Rollout");
    assert_eq!(body["regarding"]["kind"], "Canary");
    assert_eq!(body["regarding"]["name"], "podinfo");
    assert_eq!(body["reportingController"], "plover");
    let note = body["note"].as_str().unwrap_or_default();
    assert!(
        note.contains(note_contains),
        "{note:?} should contain {note_contains:?}"
    );
    body.clone()
}

const FM: Option<&str> = Some("&fieldManager=plover-controller");

#[tokio::test]
async fn istio_rollout_sets_the_weight_pauses_then_writes_nothing_more() {
    let (ctx, mut api) = context();
    let spec = json!({
        "workload": {"stable": "podinfo", "canary": "podinfo-canary"},
        "trafficRouting": {"istio": {
            "virtualService": {"name": "podinfo", "routes": ["primary"]},
            "stableService": "podinfo-stable", "canaryService": "podinfo-canary"}},
        "steps": [{"setWeight": 20}, {"pause": {}}]
    });
    let stable = deployment("podinfo", "stable", "podinfo:6.0", true);
    let candidate = deployment("podinfo-canary", "canary", "podinfo:6.1", true);
    let (stable_rev, canary_rev) = (revision(&stable), revision(&candidate));
    let vs = testdata("virtualservice-hosts.yaml");
    let object = canary(spec.clone(), None);

    let task = tokio::spawn(reconcile(object.clone(), ctx.clone()));
    api.expect_observation(
        &stable,
        &candidate,
        "/apis/networking.istio.io/v1/namespaces/test/virtualservices/podinfo",
        &vs,
    )
    .await;
    let mut weighted = vs.clone();
    weighted["spec"]["http"][1]["route"][0]["weight"] = json!(80);
    weighted["spec"]["http"][1]["route"][1]["weight"] = json!(20);
    let patch = api
        .expect(
            "PATCH",
            "/apis/networking.istio.io/v1/namespaces/test/virtualservices/podinfo",
            FM,
            |_| weighted.clone(),
        )
        .await;
    assert_eq!(
        patch,
        json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": "1041"},
            {"op": "test", "path": "/spec/http/1/name", "value": "primary"},
            {"op": "test", "path": "/spec/http/1/route/1/destination", "value": {"host": "podinfo-canary.test.svc.cluster.local", "port": {"number": 9898}}},
            {"op": "add", "path": "/spec/http/1/route/1/weight", "value": 20},
            {"op": "test", "path": "/spec/http/1/route/0/destination", "value": {"host": "podinfo-stable.test.svc.cluster.local", "port": {"number": 9898}}},
            {"op": "add", "path": "/spec/http/1/route/0/weight", "value": 80},
        ])
    );
    api.expect(
        "POST",
        "/apis/events.k8s.io/v1/namespaces/test/events",
        None,
        |b| {
            check_event(
                b,
                "Normal",
                "NewRevision",
                &format!(
                    "canary revision {canary_rev} of Deployment podinfo-canary started; stable runs revision {stable_rev}"
                ),
            )
        },
    )
    .await;
    let status_patch = api
        .expect(
            "PATCH",
            "/apis/plover.dev/v1alpha1/namespaces/test/canaries/podinfo/status",
            FM,
            |b| merge_status(&object, b),
        )
        .await;
    assert_eq!(
        status_patch[1]["value"],
        json!({
            "phase": "Paused",
            "message": "CanaryPauseStep: paused until promoted",
            "observedGeneration": 1,
            "revision": canary_rev,
            "stableRevision": stable_rev,
            "currentStepIndex": 1,
            "stepStartedAt": T0_TEXT,
            "desiredWeight": 20,
            "weightChangedAt": T0_TEXT,
            "pause": {"reason": "CanaryPauseStep", "since": T0_TEXT},
            "attempt": 0,
            "conditions": [{
                "type": "Progressing", "status": "True", "reason": "NewRevision",
                "message": format!("canary revision {canary_rev} of Deployment podinfo-canary started; stable runs revision {stable_rev}"),
                "lastTransitionTime": T0_TEXT, "observedGeneration": 1
            }]
        })
    );
    let action = task.await.unwrap().unwrap();
    assert_eq!(
        action,
        Action::await_change(),
        "an indefinite pause waits for promote"
    );
    api.expect_nothing_more().await;

    // The reconcile our own status write triggers: reads, finds everything in place, writes nothing.
    let object = canary(spec, Some(status_patch[1]["value"].clone()));
    let task = tokio::spawn(reconcile(object, ctx.clone()));
    api.expect_observation(
        &stable,
        &candidate,
        "/apis/networking.istio.io/v1/namespaces/test/virtualservices/podinfo",
        &weighted,
    )
    .await;
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    api.expect_nothing_more().await;
}

#[tokio::test]
async fn gateway_api_rollout_is_promoted_then_routes_everything_to_stable() {
    let (ctx, mut api) = context();
    let spec = json!({
        "workload": {"stable": "podinfo", "canary": "podinfo-canary"},
        "trafficRouting": {"gatewayAPI": {"httpRoute": "podinfo", "stableService": "podinfo-stable", "canaryService": "podinfo-canary"}},
        "steps": [{"setWeight": 50}]
    });
    let stable = deployment("podinfo", "stable", "podinfo:6.0", true);
    let candidate = deployment("podinfo-canary", "canary", "podinfo:6.1", true);
    let (stable_rev, canary_rev) = (revision(&stable), revision(&candidate));
    let route = testdata("httproute.yaml");
    let object = canary(spec.clone(), None);

    // 1. New revision: 50/50, all steps done, so the canary's template goes to stable.
    let task = tokio::spawn(reconcile(object.clone(), ctx.clone()));
    api.expect_observation(
        &stable,
        &candidate,
        "/apis/gateway.networking.k8s.io/v1/namespaces/test/httproutes/podinfo",
        &route,
    )
    .await;
    let mut split = route.clone();
    split["spec"]["rules"][1]["backendRefs"][0]["weight"] = json!(50);
    split["spec"]["rules"][1]["backendRefs"][1]["weight"] = json!(50);
    split["metadata"]["resourceVersion"] = json!("312");
    let patch = api
        .expect(
            "PATCH",
            "/apis/gateway.networking.k8s.io/v1/namespaces/test/httproutes/podinfo",
            FM,
            |_| split.clone(),
        )
        .await;
    assert_eq!(
        patch,
        json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": "311"},
            {"op": "test", "path": "/spec/rules/1/backendRefs/1/name", "value": "podinfo-canary"},
            {"op": "add", "path": "/spec/rules/1/backendRefs/1/weight", "value": 50},
            {"op": "test", "path": "/spec/rules/1/backendRefs/0/name", "value": "podinfo-stable"},
            {"op": "add", "path": "/spec/rules/1/backendRefs/0/weight", "value": 50},
        ])
    );
    let mut promoted = stable.clone();
    promoted["spec"]["template"]["spec"] = candidate["spec"]["template"]["spec"].clone();
    let patch = api
        .expect(
            "PATCH",
            "/apis/apps/v1/namespaces/test/deployments/podinfo",
            FM,
            |_| promoted.clone(),
        )
        .await;
    let canary_template_spec: Value = {
        let d: Deployment = serde_json::from_value(candidate.clone()).unwrap();
        serde_json::to_value(d.spec.unwrap().template.spec).unwrap()
    };
    assert_eq!(
        patch,
        json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": "podinfo-rv"},
            {"op": "add", "path": "/spec/template/spec", "value": canary_template_spec},
        ])
    );
    api.expect(
        "POST",
        "/apis/events.k8s.io/v1/namespaces/test/events",
        None,
        |b| check_event(b, "Normal", "NewRevision", &canary_rev),
    )
    .await;
    api.expect(
        "POST",
        "/apis/events.k8s.io/v1/namespaces/test/events",
        None,
        |b| {
            check_event(
                b,
                "Normal",
                "Promoting",
                &format!("all steps complete: promoting revision {canary_rev} to the stable Deployment podinfo"),
            )
        },
    )
    .await;
    let status = api
        .expect(
            "PATCH",
            "/apis/plover.dev/v1alpha1/namespaces/test/canaries/podinfo/status",
            FM,
            |b| merge_status(&object, b),
        )
        .await;
    let status = status[1]["value"].clone();
    assert_eq!(status["phase"], "Promoting");
    assert_eq!(status["currentStepIndex"], 1);
    assert_eq!(status["desiredWeight"], 50);
    assert_eq!(status["stableRevision"], stable_rev);
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(5))
    );
    api.expect_nothing_more().await;

    // 2. Stable now runs the canary's revision and has rolled out: everything to stable, Healthy.
    let object = canary(spec, Some(status));
    let mut stable_now = promoted.clone();
    stable_now["metadata"]["generation"] = json!(3);
    stable_now["status"]["observedGeneration"] = json!(3);
    assert_eq!(revision(&stable_now), canary_rev);
    let task = tokio::spawn(reconcile(object.clone(), ctx.clone()));
    api.expect_observation(
        &stable_now,
        &candidate,
        "/apis/gateway.networking.k8s.io/v1/namespaces/test/httproutes/podinfo",
        &split,
    )
    .await;
    let patch = api
        .expect(
            "PATCH",
            "/apis/gateway.networking.k8s.io/v1/namespaces/test/httproutes/podinfo",
            FM,
            |_| split.clone(),
        )
        .await;
    assert_eq!(
        patch,
        json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": "312"},
            {"op": "test", "path": "/spec/rules/1/backendRefs/1/name", "value": "podinfo-canary"},
            {"op": "add", "path": "/spec/rules/1/backendRefs/1/weight", "value": 0},
            {"op": "test", "path": "/spec/rules/1/backendRefs/0/name", "value": "podinfo-stable"},
            {"op": "add", "path": "/spec/rules/1/backendRefs/0/weight", "value": 100},
        ])
    );
    api.expect(
        "POST",
        "/apis/events.k8s.io/v1/namespaces/test/events",
        None,
        |b| {
            check_event(
                b,
                "Normal",
                "Promoted",
                &format!("revision {canary_rev} promoted: stable runs it and takes all traffic"),
            )
        },
    )
    .await;
    let status = api
        .expect(
            "PATCH",
            "/apis/plover.dev/v1alpha1/namespaces/test/canaries/podinfo/status",
            FM,
            |b| merge_status(&object, b),
        )
        .await;
    let status = &status[1]["value"];
    assert_eq!(status["phase"], "Healthy");
    assert_eq!(status["desiredWeight"], 0);
    assert_eq!(status["stableRevision"], canary_rev);
    assert_eq!(status["conditions"][0]["reason"], "Promoted");
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    api.expect_nothing_more().await;
}

#[tokio::test]
async fn an_invalid_spec_reads_nothing_and_writes_only_its_status() {
    let (ctx, mut api) = context();
    let spec = json!({
        "workload": {"stable": "podinfo", "canary": "podinfo"},
        "trafficRouting": {},
        "steps": [{"setWeight": 20}]
    });
    let object = canary(spec, None);
    let task = tokio::spawn(reconcile(object.clone(), ctx.clone()));
    api.expect("POST", "/apis/events.k8s.io/v1/namespaces/test/events", None, |b| {
        check_event(b, "Warning", "InvalidSpec", "spec.workload.canary: must differ from spec.workload.stable; spec.trafficRouting: must set one of istio, gatewayAPI, envoy")
    })
    .await;
    let status = api
        .expect(
            "PATCH",
            "/apis/plover.dev/v1alpha1/namespaces/test/canaries/podinfo/status",
            FM,
            |b| merge_status(&object, b),
        )
        .await;
    assert_eq!(status[1]["value"]["phase"], "Degraded");
    assert_eq!(status[1]["value"]["conditions"][0]["type"], "InvalidSpec");
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::await_change(),
        "no hot loop"
    );
    api.expect_nothing_more().await;
}

#[tokio::test]
async fn a_failed_analysis_rolls_back_to_stable_with_an_argo_message_and_warning_events() {
    let (ctx, mut api) = context_with(Arc::new(Half));
    let spec = json!({
        "workload": {"stable": "podinfo", "canary": "podinfo-canary"},
        "trafficRouting": {"istio": {
            "virtualService": {"name": "podinfo", "routes": ["primary"]},
            "stableService": "podinfo-stable", "canaryService": "podinfo-canary"}},
        "steps": [{"setWeight": 20}, {"analysis": {"templates": [{"templateName": "success-rate"}]}}, {"setWeight": 60}]
    });
    let template = json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisTemplate",
        "metadata": {"name": "success-rate", "namespace": "test"},
        "spec": {"metrics": [{"name": "success-rate", "successCondition": "result >= 0.95",
                              "provider": {"prometheus": {"address": "http://prometheus:9090", "query": "x"}}}]}
    });
    let stable = deployment("podinfo", "stable", "podinfo:6.0", true);
    let candidate = deployment("podinfo-canary", "canary", "podinfo:6.1", true);
    let canary_rev = revision(&candidate);
    let vs = testdata("virtualservice-hosts.yaml");
    let object = canary(spec.clone(), None);

    let task = tokio::spawn(reconcile(object.clone(), ctx.clone()));
    api.expect_observation_checking(
        &stable,
        &candidate,
        &[(
            "/apis/argoproj.io/v1alpha1/namespaces/test/analysistemplates/success-rate",
            &template,
        )],
        "/apis/networking.istio.io/v1/namespaces/test/virtualservices/podinfo",
        &vs,
    )
    .await;
    let mut weighted = vs.clone();
    weighted["spec"]["http"][1]["route"][0]["weight"] = json!(80);
    weighted["spec"]["http"][1]["route"][1]["weight"] = json!(20);
    weighted["metadata"]["resourceVersion"] = json!("1042");
    api.expect(
        "PATCH",
        "/apis/networking.istio.io/v1/namespaces/test/virtualservices/podinfo",
        FM,
        |_| weighted.clone(),
    )
    .await;
    api.expect(
        "GET",
        "/apis/argoproj.io/v1alpha1/namespaces/test/analysistemplates/success-rate",
        None,
        |_| template.clone(),
    )
    .await;
    api.expect(
        "POST",
        "/apis/events.k8s.io/v1/namespaces/test/events",
        None,
        |b| check_event(b, "Normal", "NewRevision", &canary_rev),
    )
    .await;
    let status = api
        .expect(
            "PATCH",
            "/apis/plover.dev/v1alpha1/namespaces/test/canaries/podinfo/status",
            FM,
            |b| merge_status(&object, b),
        )
        .await;
    let status = status[1]["value"].clone();
    let run = format!("podinfo-{canary_rev}-0-step1");
    assert_eq!(status["stepAnalysis"]["name"], run.as_str());
    assert_eq!(status["currentStepIndex"], 1);
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(5))
    );
    api.expect_nothing_more().await;

    // The run measures 0.5 < 0.95: Failed at its first measurement.
    let key = ("test".to_owned(), "podinfo".to_owned());
    for _ in 0..100 {
        if ctx
            .runner
            .verdicts(&key)
            .get(&run)
            .is_some_and(|v| v.phase.is_completed())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let message = "Metric \"success-rate\" assessed Failed due to failed (1) > failureLimit (0)";
    let object = canary(spec, Some(status));
    let task = tokio::spawn(reconcile(object.clone(), ctx.clone()));
    api.expect_observation(
        &stable,
        &candidate,
        "/apis/networking.istio.io/v1/namespaces/test/virtualservices/podinfo",
        &weighted,
    )
    .await;
    let patch = api
        .expect(
            "PATCH",
            "/apis/networking.istio.io/v1/namespaces/test/virtualservices/podinfo",
            FM,
            |_| vs.clone(),
        )
        .await;
    assert_eq!(
        patch[0],
        json!({"op": "test", "path": "/metadata/resourceVersion", "value": "1042"})
    );
    assert_eq!(
        patch[3],
        json!({"op": "add", "path": "/spec/http/1/route/1/weight", "value": 0})
    );
    assert_eq!(
        patch[5],
        json!({"op": "add", "path": "/spec/http/1/route/0/weight", "value": 100})
    );
    api.expect(
        "POST",
        "/apis/events.k8s.io/v1/namespaces/test/events",
        None,
        |b| check_event(b, "Warning", "AnalysisFailed", message),
    )
    .await;
    api.expect(
        "POST",
        "/apis/events.k8s.io/v1/namespaces/test/events",
        None,
        |b| {
            let event = check_event(b, "Warning", "RolloutAborted", message);
            // The reason is not repeated in the note.
            assert!(!event["note"]
                .as_str()
                .unwrap_or_default()
                .starts_with("RolloutAborted"));
            event
        },
    )
    .await;
    let status = api
        .expect(
            "PATCH",
            "/apis/plover.dev/v1alpha1/namespaces/test/canaries/podinfo/status",
            FM,
            |b| merge_status(&object, b),
        )
        .await;
    let status = &status[1]["value"];
    assert_eq!(status["phase"], "Degraded");
    assert_eq!(status["message"], format!("RolloutAborted: {message}"));
    assert_eq!(status["desiredWeight"], 0);
    assert_eq!(status["abort"], true);
    assert_eq!(status["stepAnalysis"]["phase"], "Failed");
    assert_eq!(status["stepAnalysis"]["failed"], 1);
    // The metric and its latest measurement, for `plover get`.
    let metric = &status["stepAnalysis"]["metrics"][0];
    assert_eq!(metric["name"], "success-rate");
    assert_eq!(metric["phase"], "Failed");
    assert_eq!(metric["latest"]["phase"], "Failed");
    assert_eq!(metric["latest"]["value"], "0.5");
    assert!(metric["latest"]["measuredAt"].is_string(), "{metric}");
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    api.expect_nothing_more().await;

    // The status as written, read back: the next reconcile finds nothing new to write.
    let object = canary(
        serde_json::to_value(&object.spec).unwrap(),
        Some(status.clone()),
    );
    let task = tokio::spawn(reconcile(object.clone(), ctx.clone()));
    api.expect_observation(
        &stable,
        &candidate,
        "/apis/networking.istio.io/v1/namespaces/test/virtualservices/podinfo",
        &vs,
    )
    .await;
    assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    api.expect_nothing_more().await;
}

#[tokio::test]
async fn istio_subset_mode_syncs_the_destination_rule_before_weighting() {
    let (ctx, mut api) = context();
    let spec = json!({
        "workload": {"stable": "podinfo", "canary": "podinfo-canary"},
        "trafficRouting": {"istio": {
            "virtualService": {"name": "podinfo"},
            "destinationRule": {"name": "podinfo", "stableSubsetName": "stable", "canarySubsetName": "canary"}}},
        "steps": [{"setWeight": 10}, {"pause": {"duration": "1m"}}]
    });
    let stable = deployment("podinfo", "stable", "podinfo:6.0", true);
    let candidate = deployment("podinfo-canary", "canary", "podinfo:6.1", true);
    let dr = testdata("destinationrule.yaml");
    let vs = testdata("virtualservice-subsets.yaml");
    let object = canary(spec, None);

    let task = tokio::spawn(reconcile(object.clone(), ctx.clone()));
    api.expect_observation(
        &stable,
        &candidate,
        "/apis/networking.istio.io/v1/namespaces/test/destinationrules/podinfo",
        &dr,
    )
    .await;
    let patch = api
        .expect(
            "PATCH",
            "/apis/networking.istio.io/v1/namespaces/test/destinationrules/podinfo",
            FM,
            |_| dr.clone(),
        )
        .await;
    assert_eq!(
        patch,
        json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": "12"},
            {"op": "test", "path": "/spec/subsets/0/name", "value": "stable"},
            {"op": "add", "path": "/spec/subsets/0/labels/track", "value": "stable"},
            {"op": "add", "path": "/spec/subsets/-", "value": {"name": "canary", "labels": {"app": "podinfo", "track": "canary"}}},
        ])
    );
    api.expect(
        "GET",
        "/apis/networking.istio.io/v1/namespaces/test/virtualservices/podinfo",
        None,
        |_| vs.clone(),
    )
    .await;
    let patch = api
        .expect(
            "PATCH",
            "/apis/networking.istio.io/v1/namespaces/test/virtualservices/podinfo",
            FM,
            |_| vs.clone(),
        )
        .await;
    assert_eq!(
        patch,
        json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
            {"op": "test", "path": "/spec/http/0/route/1/destination", "value": {"host": "podinfo", "subset": "canary"}},
            {"op": "add", "path": "/spec/http/0/route/1/weight", "value": 10},
            {"op": "test", "path": "/spec/http/0/route/0/destination", "value": {"host": "podinfo", "subset": "stable"}},
            {"op": "add", "path": "/spec/http/0/route/0/weight", "value": 90},
        ])
    );
    api.expect(
        "POST",
        "/apis/events.k8s.io/v1/namespaces/test/events",
        None,
        |b| check_event(b, "Normal", "NewRevision", "started"),
    )
    .await;
    let status = api
        .expect(
            "PATCH",
            "/apis/plover.dev/v1alpha1/namespaces/test/canaries/podinfo/status",
            FM,
            |b| merge_status(&object, b),
        )
        .await;
    assert_eq!(status[1]["value"]["phase"], "Paused");
    assert_eq!(
        task.await.unwrap().unwrap(),
        Action::requeue(Duration::from_secs(60)),
        "requeue when the pause ends"
    );
    api.expect_nothing_more().await;
}

fn not_found(kind: &str, name: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
           "message": format!("{kind} \"{name}\" not found")})
}

#[tokio::test]
async fn leader_election_creates_the_lease_then_renews_it() {
    use k8s_openapi::api::coordination::v1::Lease;
    use plover_controller::lease::Elector;

    let (ctx, mut api) = context();
    let elector = Elector {
        api: kube::Api::<Lease>::namespaced(ctx.client.clone(), "plover-system"),
        name: "plover-controller".into(),
        identity: "pod-a".into(),
        duration: Duration::from_secs(15),
    };
    let path = "/apis/coordination.k8s.io/v1/namespaces/plover-system/leases/plover-controller";
    let task = tokio::spawn(async move {
        elector.acquire().await.unwrap();
        elector
    });
    api.expect_full("GET", path, None, None, 404, |_| {
        not_found("leases", "plover-controller")
    })
    .await;
    let created = api
        .expect(
            "POST",
            "/apis/coordination.k8s.io/v1/namespaces/plover-system/leases",
            None,
            |b| {
                let mut lease = b.clone();
                lease["metadata"]["resourceVersion"] = json!("1");
                lease
            },
        )
        .await;
    assert_eq!(created["metadata"]["name"], "plover-controller");
    assert_eq!(created["spec"]["holderIdentity"], "pod-a");
    assert_eq!(created["spec"]["leaseDurationSeconds"], 15);
    task.await.unwrap();
    api.expect_nothing_more().await;
}

#[tokio::test]
async fn a_valid_lease_held_by_another_replica_is_followed_and_an_expired_one_taken() {
    use k8s_openapi::api::coordination::v1::Lease;
    use plover_controller::lease::Elector;

    let (ctx, mut api) = context();
    let elector = Elector {
        api: kube::Api::<Lease>::namespaced(ctx.client.clone(), "plover-system"),
        name: "plover-controller".into(),
        identity: "pod-a".into(),
        duration: Duration::from_secs(15),
    };
    let path = "/apis/coordination.k8s.io/v1/namespaces/plover-system/leases/plover-controller";
    let task = tokio::spawn(async move { elector.acquire().await.unwrap() });
    // Held by pod-b, renewed long ago: expired, so pod-a replaces it (conditionally).
    let stale = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "plover-controller", "namespace": "plover-system", "resourceVersion": "7"},
        "spec": {"holderIdentity": "pod-b", "leaseDurationSeconds": 15, "renewTime": "2020-01-01T00:00:00.000000Z", "leaseTransitions": 2}});
    api.expect("GET", path, None, |_| stale.clone()).await;
    let replaced = api.expect("PUT", path, None, |b| b.clone()).await;
    assert_eq!(
        replaced["metadata"]["resourceVersion"], "7",
        "the replace only succeeds on what was read"
    );
    assert_eq!(replaced["spec"]["holderIdentity"], "pod-a");
    assert_eq!(replaced["spec"]["leaseTransitions"], 3);
    task.await.unwrap();
    api.expect_nothing_more().await;
}

#[tokio::test]
async fn promote_abort_retry_and_pause_patch_the_status_the_controller_reads() {
    use plover_controller::cli::kubectl::{request, Request};

    let (ctx, mut api) = context();
    api.rules = rbac::CLI;
    let object = canary(
        json!({"workload": {"stable": "a", "canary": "b"}, "trafficRouting": {}}),
        None,
    );
    let path = "/apis/plover.dev/v1alpha1/namespaces/test/canaries/podinfo";
    for (req, patch, message) in [
        (
            Request::Promote,
            json!({"status": {"promote": true}}),
            "canary 'podinfo' promoted",
        ),
        (
            Request::PromoteFull,
            json!({"status": {"promoteFull": true}}),
            "canary 'podinfo' fully promoted",
        ),
        (
            Request::Abort,
            json!({"status": {"abort": true}}),
            "canary 'podinfo' aborted",
        ),
        (
            Request::Retry,
            json!({"status": {"abort": false}}),
            "canary 'podinfo' retried",
        ),
        (
            Request::Pause,
            json!({"status": {"pauseRequested": true}}),
            "canary 'podinfo' paused (until promote)",
        ),
    ] {
        let client = ctx.client.clone();
        let task =
            tokio::spawn(async move { request(client, "test", "podinfo", req).await.unwrap() });
        let o = serde_json::to_value(object.as_ref()).unwrap();
        api.expect("GET", path, None, |_| o.clone()).await;
        let body = api
            .expect_full(
                "PATCH",
                &format!("{path}/status"),
                Some("&fieldManager=plover-cli"),
                Some("application/merge-patch+json"),
                200,
                |_| o.clone(),
            )
            .await;
        assert_eq!(body, patch);
        assert_eq!(task.await.unwrap(), message);
    }
    api.expect_nothing_more().await;
}
