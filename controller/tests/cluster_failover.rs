//! High availability and restarts on a real API server (`plover_testkit::cluster`): two
//! `plover controller` replicas elect a leader on the manifests' Lease; the leader is killed
//! (SIGKILL) mid-rollout and the follower takes over within the lease duration and carries on
//! at the recorded step — no step repeated, no weight written twice, one promotion. Then the
//! API server itself is killed and restarted mid-rollout: the controller reconnects and the
//! rollout completes.

use std::time::{Duration, Instant};

use plover_testkit::cluster::{Cluster, CONTROLLER_NAMESPACE};

mod support;
use support::{
    canary_with_steps, cluster_with_base, events, eventually, install_example, jsonpath, set_image,
    start_controller, watch_weights,
};

const NS: &str = "mock-server";
const ROUTE: &str = "virtualservice/mock-server";
const WEIGHTS: &str = "{.spec.http[0].route[*].weight}";
/// Shorter than the manifests' 15 s so that the test is quick; the mechanism is the same.
const LEASE_SECONDS: u64 = 10;

/// The Istio subset example's Canary with three timed steps and no analysis.
fn canary(example_canary: &str) -> String {
    serde_json::to_string(&canary_with_steps(
        example_canary,
        serde_json::json!([
            {"setWeight": 20}, {"pause": {"duration": "4s"}},
            {"setWeight": 40}, {"pause": {"duration": "4s"}},
            {"setWeight": 60}, {"pause": {"duration": "4s"}}
        ]),
    ))
    .unwrap()
}

/// The Lease's holder, or why there is none yet.
fn lease_holder(cluster: &Cluster) -> String {
    let out = cluster.kubectl(&[
        "get",
        "lease/plover-controller",
        "-n",
        CONTROLLER_NAMESPACE,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

fn release(cluster: &Cluster, image: &str) {
    set_image(cluster, NS, "mock-server-canary", "mock-server", image);
}

fn state(cluster: &Cluster) -> (String, String, String) {
    (
        jsonpath(cluster, NS, "canary/mock-server", "{.status.phase}"),
        jsonpath(cluster, NS, ROUTE, WEIGHTS),
        jsonpath(
            cluster,
            NS,
            "deployment/mock-server",
            "{.spec.template.spec.containers[0].image}",
        ),
    )
}

#[test]
fn the_follower_takes_over_a_killed_leader_and_the_api_server_may_restart() {
    let mut cluster = cluster_with_base();
    let example_canary = install_example(&cluster, "istio-subsets", NS);
    let lease = ["--lease-duration-seconds", &LEASE_SECONDS.to_string()];
    let lease: Vec<&str> = lease.iter().map(|s| s.as_ref()).collect();
    let minute = Duration::from_secs(60);

    let mut leader = start_controller(&cluster, "plover-a", &lease);
    eventually(
        (&cluster, NS),
        "plover-a to lead",
        minute,
        &mut leader,
        || {
            let holder = lease_holder(&cluster);
            (holder == "plover-a").then_some(()).ok_or(holder)
        },
    );
    let mut follower = start_controller(&cluster, "plover-b", &lease);
    let route_log = cluster.dir().join("route.log");
    let mut watch = watch_weights(&cluster, NS, ROUTE, WEIGHTS, &route_log);
    cluster.apply(&canary(&example_canary)).unwrap();
    eventually((&cluster, NS), "Healthy", minute, &mut leader, || {
        let s = state(&cluster);
        (s.0 == "Healthy" && s.1 == "100 0")
            .then_some(())
            .ok_or(format!("{s:?}"))
    });

    // Mid-rollout, in the pause at 40%, the leader dies.
    release(&cluster, "ghcr.io/ssup2/mock-go-server:1.0.1");
    eventually((&cluster, NS), "weight 40", minute, &mut leader, || {
        let s = state(&cluster);
        (s.1 == "60 40").then_some(()).ok_or(format!("{s:?}"))
    });
    let step_at_kill = jsonpath(
        &cluster,
        NS,
        "canary/mock-server",
        "{.status.currentStepIndex}",
    );
    drop(leader);
    let killed = Instant::now();
    eventually(
        (&cluster, NS),
        "plover-b to lead",
        minute,
        &mut follower,
        || {
            let holder = lease_holder(&cluster);
            (holder == "plover-b").then_some(()).ok_or(holder)
        },
    );
    let takeover = killed.elapsed();
    assert!(
        takeover <= Duration::from_secs(LEASE_SECONDS) + Duration::from_millis(1500),
        "plover-b led {takeover:?} after the leader was killed (lease {LEASE_SECONDS} s)"
    );
    eventually(
        (&cluster, NS),
        "promotion by plover-b",
        minute,
        &mut follower,
        || {
            let s = state(&cluster);
            (s.0 == "Healthy" && s.1 == "100 0" && s.2.ends_with(":1.0.1"))
                .then_some(())
                .ok_or(format!("{s:?}"))
        },
    );
    let recorded = events(&cluster, NS);
    assert_eq!(
        recorded.matches("Normal Promoted").count(),
        1,
        "one promotion:\n{recorded}"
    );
    assert_eq!(
        recorded.matches("Normal Promoting").count(),
        1,
        "the promotion started once:\n{recorded}"
    );

    // The API server crashes mid-rollout and comes back.
    release(&cluster, "ghcr.io/ssup2/mock-go-server:1.0.2");
    eventually((&cluster, NS), "weight 20", minute, &mut follower, || {
        let s = state(&cluster);
        (s.1 == "80 20").then_some(()).ok_or(format!("{s:?}"))
    });
    cluster.restart_apiserver();
    let restarted = Instant::now();
    eventually(
        (&cluster, NS),
        "promotion after the restart",
        minute,
        &mut follower,
        || {
            let s = state(&cluster);
            (s.0 == "Healthy" && s.1 == "100 0" && s.2.ends_with(":1.0.2"))
                .then_some(())
                .ok_or(format!("{s:?}"))
        },
    );
    let after_restart = restarted.elapsed();

    let _ = watch.kill();
    let _ = watch.wait();
    let versions = std::fs::read_to_string(&route_log).unwrap();
    let sequence: Vec<&str> = versions
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, weights)| weights))
        .collect();
    // Every weight written once: the follower continued at the recorded step. (A watch
    // interrupted by the API server's restart may list the object once more when it
    // resumes, with the same resourceVersion: those lines are one version.)
    let mut unique: Vec<&str> = Vec::new();
    let mut last_version = "";
    for line in versions.lines() {
        let (version, weights) = line.split_once(' ').unwrap_or((line, ""));
        if version != last_version {
            unique.push(weights);
            last_version = version;
        }
    }
    assert_eq!(
        &unique[..5],
        ["100 0", "80 20", "60 40", "40 60", "100 0"],
        "first release: {sequence:?}"
    );
    let log = follower.log_text();
    assert!(
        !log.contains("code: 403") && !log.to_lowercase().contains("forbidden"),
        "plover-b was refused something:\n{log}"
    );
    println!(
        "leader killed at step {step_at_kill}; plover-b led {:.1} s later (lease {LEASE_SECONDS} s); \
         after the API server's restart the rollout was promoted in {:.1} s\nroute versions:\n{versions}",
        takeover.as_secs_f64(),
        after_restart.as_secs_f64()
    );
}
