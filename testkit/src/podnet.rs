//! The pod network of a test cluster, made the way a bridge CNI plugin makes it: a Linux bridge
//! on the host holding the node's address, and one network namespace per pod with a veth pair
//! into the bridge and the pod's own address (the one KWOK gave the pod). Processes of a pod
//! run in its namespace (`ip netns exec`), and the test's own listeners for a pod are bound
//! inside it from a thread that enters it.
//!
//! Addresses come from 198.18.0.0/15, the range set aside for network benchmarks (RFC 2544):
//! never a real host's, and only ever inside namespaces this process made. Each network takes
//! one /24, chosen from the process id so that two test processes never share one.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Mutex;

use crate::tools::debian_tool;

/// `ip`: iproute2, which every Debian has.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new(debian_tool("ip"))
        .args(args)
        .output()
        .map_err(|e| format!("run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

static NEXT: AtomicU8 = AtomicU8::new(0);

/// Namespaces made so far in this process: each has a name of its own, so that a pod's
/// address taken over by a new pod never makes two pods share a namespace name.
static PODS: AtomicU32 = AtomicU32::new(0);

/// One /24 of pod addresses behind a bridge; the bridge has `.254`, the node's address.
pub struct PodNetwork {
    /// `198.18.X` (or `198.19.X`): the first three octets.
    prefix: [u8; 3],
    bridge: String,
    /// The namespaces made and not deleted yet, with their pod's address.
    namespaces: Mutex<Vec<(String, Ipv4Addr)>>,
}

impl PodNetwork {
    /// A new network; panics with `ip`'s message when the machine does not allow network
    /// namespaces (they need root, or CAP_NET_ADMIN and CAP_SYS_ADMIN).
    pub fn create() -> PodNetwork {
        // 0..400: 100 processes × 4 networks each, over 198.18.0–199 and 198.19.0–199.
        let n =
            (std::process::id() % 100) * 4 + u32::from(NEXT.fetch_add(1, Ordering::Relaxed) % 4);
        let prefix = [198, 18 + (n / 200) as u8, (n % 200) as u8];
        let bridge = format!("plvbr{n}");
        let network = PodNetwork {
            prefix,
            bridge,
            namespaces: Mutex::new(Vec::new()),
        };
        // A bridge left by a killed earlier run with the same number goes first.
        let _ = ip(&["link", "del", &network.bridge]);
        let node = format!("{}/24", network.node_ip());
        for args in [
            vec!["link", "add", network.bridge.as_str(), "type", "bridge"],
            vec!["addr", "add", node.as_str(), "dev", network.bridge.as_str()],
            vec!["link", "set", network.bridge.as_str(), "up"],
        ] {
            ip(&args).unwrap_or_else(|e| panic!("the pod network's bridge: {e}"));
        }
        network
    }

    /// The node's address, on the host's bridge: what host processes listen on for pods.
    pub fn node_ip(&self) -> Ipv4Addr {
        let [a, b, c] = self.prefix;
        Ipv4Addr::new(a, b, c, 254)
    }

    /// The pods' CIDR, for KWOK's `--cidr` (it hands out addresses from its first one).
    pub fn pod_cidr(&self) -> String {
        let [a, b, c] = self.prefix;
        format!("{a}.{b}.{c}.1/24")
    }

    /// The namespace of the pod with address `pod_ip` (from this network's range), made now.
    /// A namespace still holding that address (a deleted pod's, kept a few seconds for its
    /// in-flight connections) is deleted first: the address is the new pod's.
    pub fn attach(&self, pod_ip: Ipv4Addr) -> Result<PodNamespace, String> {
        let [a, b, c, d] = pod_ip.octets();
        if [a, b, c] != self.prefix || d == 0 || d == 254 || d == 255 {
            return Err(format!(
                "{pod_ip} is not a pod address of {}",
                self.pod_cidr()
            ));
        }
        let bridge_number = self.bridge.trim_start_matches("plvbr");
        let seq = PODS.fetch_add(1, Ordering::Relaxed) % 100_000;
        let name = format!("plv{bridge_number}-{seq}");
        // At most 15 bytes: plv + 3 + h + 5.
        let host_end = format!("plv{bridge_number}h{seq}");
        let address = format!("{pod_ip}/24");
        let gateway = self.node_ip().to_string();
        let stale: Vec<String> = self
            .namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, ip)| *ip == pod_ip)
            .map(|(name, _)| name.clone())
            .collect();
        for stale in stale {
            self.delete(&stale);
        }
        let _ = ip(&["netns", "del", &name]);
        for args in [
            vec!["netns", "add", name.as_str()],
            vec![
                "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &name,
            ],
            vec!["link", "set", &host_end, "master", &self.bridge],
            vec!["link", "set", &host_end, "up"],
            vec!["-n", &name, "link", "set", "lo", "up"],
            vec!["-n", &name, "addr", "add", &address, "dev", "eth0"],
            vec!["-n", &name, "link", "set", "eth0", "up"],
            vec!["-n", &name, "route", "add", "default", "via", &gateway],
        ] {
            ip(&args)?;
        }
        self.namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.clone(), pod_ip));
        Ok(PodNamespace { name, ip: pod_ip })
    }

    /// Deletes a pod's namespace (its veth goes with it), if it still exists.
    pub fn detach(&self, pod: &PodNamespace) {
        self.delete(&pod.name);
    }

    fn delete(&self, name: &str) {
        let mut namespaces = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        if namespaces.iter().any(|(n, _)| n == name) {
            let _ = ip(&["netns", "del", name]);
            namespaces.retain(|(n, _)| n != name);
        }
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        for (name, _) in self
            .namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = ip(&["netns", "del", &name]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// A pod's network namespace.
#[derive(Clone, Debug)]
pub struct PodNamespace {
    pub name: String,
    pub ip: Ipv4Addr,
}

impl PodNamespace {
    /// `program` run inside the pod's namespace (`ip netns exec`, which execs it: the child's
    /// pid is the program's).
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(debian_tool("ip"));
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// A blocking GET of `path` to the pod's own loopback `port` (e.g. Envoy's admin, which
    /// pilot-agent binds to 127.0.0.1 in the pod), connected from inside its namespace.
    pub fn get(&self, port: u16, path: &str) -> Option<(u16, String)> {
        let stream = self
            .in_namespace(move || {
                std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())
            })
            .ok()?;
        crate::http::request_on(stream, "localhost", path, &[])
    }

    /// Runs `make` on a short-lived thread that has entered the pod's namespace: what it makes
    /// (a socket) stays in the namespace.
    fn in_namespace<T: Send + 'static>(
        &self,
        make: impl FnOnce() -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || -> Result<T, String> {
            let namespace = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&namespace),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .map_err(|e| format!("enter {path}: {e}"))?;
            make()
        })
        .join()
        .map_err(|_| "the thread in the pod's namespace panicked".to_owned())?
    }

    /// A TCP listener on the pod's address, made inside its namespace: a short-lived thread
    /// enters the namespace, binds, and hands the socket back (a socket stays in the namespace
    /// it was made in).
    pub fn bind(&self, port: u16) -> Result<TcpListener, String> {
        let address = SocketAddr::from((self.ip, port));
        self.in_namespace(move || {
            TcpListener::bind(address).map_err(|e| format!("bind {address}: {e}"))
        })
    }
}

/// `command` run with `hosts` as its `/etc/hosts`, in a mount namespace of its own (the host's
/// file is untouched): how a process outside the cluster resolves the cluster's service names
/// the way cluster DNS would answer them for a pod.
pub fn with_hosts_file(command: Command, hosts: &Path) -> Command {
    let mut wrapped = Command::new(debian_tool("unshare"));
    wrapped
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$0\" /etc/hosts && exec \"$@\"")
        .arg(hosts)
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}
