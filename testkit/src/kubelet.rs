//! The test's kubelet for the pods that must really serve traffic. KWOK plays the kubelet of
//! the fake node for the API server (pod phase, conditions, an address from the pod network);
//! this one does the part KWOK cannot: for each running pod the test cares about, it makes the
//! pod's network namespace with the address KWOK gave it ([`crate::podnet`]) and starts what
//! the pod runs there, through a callback that reads the pod's spec; when the pod goes away it
//! stops that and deletes the namespace.

use std::any::Any;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use crate::podnet::{PodNamespace, PodNetwork};

/// What the callback is told of a pod.
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    /// The whole Pod object, as the API server has it.
    pub object: Value,
}

impl Pod {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.object["metadata"]["labels"][key].as_str()
    }

    /// The first container's field, e.g. `image`.
    pub fn container(&self) -> &Value {
        &self.object["spec"]["containers"][0]
    }
}

/// Whatever runs a pod; dropped (stopping it) when the pod goes away.
pub type Running = Box<dyn Any + Send>;

/// The callback: what to run for a pod, or `Ok(None)` for pods the test does not run (they
/// stay API objects only). An error is recorded and the pod retried on the next poll.
pub type Runtime =
    Box<dyn FnMut(&Pod, &PodNamespace) -> Result<Option<Running>, String> + Send + 'static>;

/// A running kubelet; stops (and stops its pods) when dropped.
pub struct Kubelet {
    stop: Arc<AtomicBool>,
    errors: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

struct Started {
    netns: PodNamespace,
    _running: Option<Running>,
}

impl Kubelet {
    /// Polls the pods (every 250 ms, as `kubectl` with `kubeconfig`) and starts or stops them.
    pub fn start(
        kubectl: PathBuf,
        kubeconfig: PathBuf,
        network: Arc<PodNetwork>,
        mut runtime: Runtime,
    ) -> Kubelet {
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (thread_stop, thread_errors) = (stop.clone(), errors.clone());
        let thread = std::thread::Builder::new()
            .name("kubelet".into())
            .spawn(move || {
                let mut started: BTreeMap<String, Started> = BTreeMap::new();
                while !thread_stop.load(Ordering::Relaxed) {
                    match running_pods(&kubectl, &kubeconfig) {
                        Ok(pods) => {
                            sync(&network, &mut runtime, &mut started, pods, &thread_errors)
                        }
                        Err(e) => record(&thread_errors, e),
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                for (_, pod) in std::mem::take(&mut started) {
                    drop(pod._running);
                    network.detach(&pod.netns);
                }
            })
            .expect("start the kubelet thread");
        Kubelet {
            stop,
            errors,
            thread: Some(thread),
        }
    }

    /// What failed so far (a pod that could not be started, `kubectl` errors).
    pub fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn record(errors: &Mutex<Vec<String>>, error: String) {
    let mut errors = errors.lock().unwrap_or_else(|e| e.into_inner());
    if errors.last() != Some(&error) {
        errors.push(error);
    }
}

/// Starts new running pods and stops the ones gone (or terminating), keyed by pod uid.
fn sync(
    network: &PodNetwork,
    runtime: &mut Runtime,
    started: &mut BTreeMap<String, Started>,
    pods: BTreeMap<String, Pod>,
    errors: &Mutex<Vec<String>>,
) {
    let gone: Vec<String> = started
        .keys()
        .filter(|uid| !pods.contains_key(*uid))
        .cloned()
        .collect();
    for uid in gone {
        if let Some(pod) = started.remove(&uid) {
            drop(pod._running);
            network.detach(&pod.netns);
        }
    }
    for (uid, pod) in pods {
        if started.contains_key(&uid) {
            continue;
        }
        let netns = match network.attach(pod.ip) {
            Ok(netns) => netns,
            Err(e) => {
                record(errors, format!("{}/{}: {e}", pod.namespace, pod.name));
                continue;
            }
        };
        match runtime(&pod, &netns) {
            Ok(running) => {
                started.insert(
                    uid,
                    Started {
                        netns,
                        _running: running,
                    },
                );
            }
            Err(e) => {
                network.detach(&netns);
                record(errors, format!("{}/{}: {e}", pod.namespace, pod.name));
            }
        }
    }
}

/// Pods that are Running with an address and not being deleted, by uid.
fn running_pods(kubectl: &PathBuf, kubeconfig: &PathBuf) -> Result<BTreeMap<String, Pod>, String> {
    let out = Command::new(kubectl)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(["get", "pods", "--all-namespaces", "-o", "json"])
        .output()
        .map_err(|e| format!("kubectl get pods: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "kubectl get pods: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let list: Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("kubectl get pods: {e}"))?;
    let mut pods = BTreeMap::new();
    for object in list["items"].as_array().cloned().unwrap_or_default() {
        let metadata = &object["metadata"];
        let ip = object["status"]["podIP"]
            .as_str()
            .and_then(|ip| ip.parse().ok());
        let running = object["status"]["phase"] == "Running";
        let terminating = !metadata["deletionTimestamp"].is_null();
        let (Some(uid), Some(ip)) = (metadata["uid"].as_str(), ip) else {
            continue;
        };
        if !running || terminating || object["spec"]["hostNetwork"] == true {
            continue;
        }
        pods.insert(
            uid.to_owned(),
            Pod {
                namespace: metadata["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                name: metadata["name"].as_str().unwrap_or_default().to_owned(),
                ip,
                object,
            },
        );
    }
    Ok(pods)
}
