//! The test's kubelet for the pods that must really serve traffic. KWOK plays the kubelet of
//! the fake node for the API server (pod phase, conditions, an address from the pod network);
//! this one does the part KWOK cannot: for each running pod the test cares about, it makes the
//! pod's network namespace with the address KWOK gave it ([`crate::podnet`]) and starts what
//! the pod runs there, through a callback that reads the pod's spec; when the pod goes away it
//! stops that and deletes the namespace.

use std::any::Any;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::podnet::{PodNamespace, PodNetwork};

/// How long a deleted pod's namespace stays (unless a new pod takes its address first).
const LINGER: Duration = Duration::from_secs(5);

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
/// stay API objects only). An error is recorded and the pod retried at the next pod event.
pub type Runtime =
    Box<dyn FnMut(&Pod, &PodNamespace) -> Result<Option<Running>, String> + Send + 'static>;

/// A running kubelet; stops (and stops its pods) when dropped.
pub struct Kubelet {
    stop: Arc<AtomicBool>,
    errors: Arc<Mutex<Vec<String>>>,
    /// The running `kubectl get pods --watch`, killed on drop.
    watch: Arc<Mutex<Option<Child>>>,
    threads: Vec<JoinHandle<()>>,
}

struct Started {
    netns: PodNamespace,
    _running: Option<Running>,
}

impl Kubelet {
    /// Watches the pods (`kubectl get pods --watch` as `kubeconfig`'s user) and starts or
    /// stops them as they come and go.
    pub fn start(
        kubectl: PathBuf,
        kubeconfig: PathBuf,
        network: Arc<PodNetwork>,
        mut runtime: Runtime,
    ) -> Kubelet {
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let watch: Arc<Mutex<Option<Child>>> = Arc::new(Mutex::new(None));
        let (events, received) = mpsc::channel();
        let watcher = {
            let (stop, watch, errors) = (stop.clone(), watch.clone(), errors.clone());
            std::thread::Builder::new()
                .name("kubelet-watch".into())
                .spawn(move || watch_pods(&kubectl, &kubeconfig, &stop, &watch, &errors, events))
                .expect("start the kubelet's watch")
        };
        let (thread_stop, thread_errors) = (stop.clone(), errors.clone());
        let thread = std::thread::Builder::new()
            .name("kubelet".into())
            .spawn(move || {
                let mut objects: BTreeMap<String, Value> = BTreeMap::new();
                let mut started: BTreeMap<String, Started> = BTreeMap::new();
                let mut lingering: Vec<(PodNamespace, Instant)> = Vec::new();
                while !thread_stop.load(Ordering::Relaxed) {
                    let mut changed = false;
                    let mut next = received.recv_timeout(Duration::from_millis(200)).ok();
                    while let Some(event) = next {
                        changed = true;
                        match event {
                            WatchEvent::Restarted => objects.clear(),
                            WatchEvent::Pod {
                                deleted: true, uid, ..
                            } => {
                                objects.remove(&uid);
                            }
                            WatchEvent::Pod { uid, object, .. } => {
                                objects.insert(uid, object);
                            }
                        }
                        next = received.try_recv().ok();
                    }
                    if changed {
                        let pods = running_pods(&objects);
                        sync(
                            &network,
                            &mut runtime,
                            &mut started,
                            &mut lingering,
                            pods,
                            &thread_errors,
                        );
                    }
                    let now = Instant::now();
                    lingering.retain(|(netns, until)| {
                        let keep = *until > now;
                        if !keep {
                            network.detach(netns);
                        }
                        keep
                    });
                }
                for (_, pod) in std::mem::take(&mut started) {
                    drop(pod._running);
                    network.detach(&pod.netns);
                }
                for (netns, _) in lingering {
                    network.detach(&netns);
                }
            })
            .expect("start the kubelet thread");
        Kubelet {
            stop,
            errors,
            watch,
            threads: vec![thread, watcher],
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

/// What the watch saw.
enum WatchEvent {
    /// The watch started again: a full list of pods follows.
    Restarted,
    Pod {
        uid: String,
        deleted: bool,
        object: Value,
    },
}

/// `kubectl get pods --all-namespaces --watch --output-watch-events -o json`, its events sent
/// on; restarted (after half a second) whenever it ends, until `stop`.
fn watch_pods(
    kubectl: &Path,
    kubeconfig: &Path,
    stop: &AtomicBool,
    watch: &Mutex<Option<Child>>,
    errors: &Mutex<Vec<String>>,
    events: mpsc::Sender<WatchEvent>,
) {
    while !stop.load(Ordering::Relaxed) {
        let spawned = Command::new(kubectl)
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args([
                "get",
                "pods",
                "--all-namespaces",
                "--watch",
                "--output-watch-events",
            ])
            .args(["-o", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                record(errors, format!("kubectl get pods --watch: {e}"));
                return;
            }
        };
        let Some(stdout) = child.stdout.take() else {
            return;
        };
        *watch.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        if events.send(WatchEvent::Restarted).is_err() {
            return;
        }
        let stream = serde_json::Deserializer::from_reader(std::io::BufReader::new(stdout));
        for event in stream.into_iter::<Value>() {
            let Ok(event) = event else { break };
            let object = event["object"].clone();
            let Some(uid) = object["metadata"]["uid"].as_str() else {
                continue;
            };
            let sent = events.send(WatchEvent::Pod {
                uid: uid.to_owned(),
                deleted: event["type"] == "DELETED",
                object,
            });
            if sent.is_err() {
                return;
            }
        }
        if let Some(mut child) = watch.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(mut child) = self.watch.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for thread in self.threads.drain(..) {
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
    lingering: &mut Vec<(PodNamespace, Instant)>,
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
            // Stopped at once, as a pod that got SIGTERM; its namespace stays a few seconds,
            // so that a connection to it is refused (and retried elsewhere by the gateway)
            // rather than left to time out, until a new pod takes the address.
            drop(pod._running);
            lingering.push((pod.netns, Instant::now() + LINGER));
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
fn running_pods(objects: &BTreeMap<String, Value>) -> BTreeMap<String, Pod> {
    let mut pods = BTreeMap::new();
    for (uid, object) in objects {
        let metadata = &object["metadata"];
        let ip = object["status"]["podIP"]
            .as_str()
            .and_then(|ip| ip.parse().ok());
        let running = object["status"]["phase"] == "Running";
        let terminating = !metadata["deletionTimestamp"].is_null();
        let Some(ip) = ip else {
            continue;
        };
        if !running || terminating || object["spec"]["hostNetwork"] == true {
            continue;
        }
        pods.insert(
            uid.clone(),
            Pod {
                namespace: metadata["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                name: metadata["name"].as_str().unwrap_or_default().to_owned(),
                ip,
                object: object.clone(),
            },
        );
    }
    pods
}
