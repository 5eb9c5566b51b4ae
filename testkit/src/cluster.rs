//! A real Kubernetes control plane on loopback for the cluster tests: etcd, kube-apiserver
//! (RBAC authorizer, a token file, service-account keys), kube-controller-manager,
//! kube-scheduler and KWOK with one fake node, so that Deployments really roll out and their
//! pods become Ready without kubelets. `cargo xtask cluster-tools` builds them from the pinned
//! Go modules of `tests/cluster/` (and `cargo xtask test` does it first).
//!
//! Two identities: `admin` (group `system:masters`) for the test, and the controller's
//! ServiceAccount `system:serviceaccount:plover-system:plover-controller`, which holds exactly
//! the RBAC the manifests grant it. Everything lives in one temp dir; every process is killed
//! when the [`Cluster`] is dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::process::{tail, ChildGuard};
use crate::{free_port, tools};

/// The ServiceAccount the controller runs as in the manifests.
pub const CONTROLLER_NAMESPACE: &str = "plover-system";
pub const CONTROLLER_SERVICE_ACCOUNT: &str = "plover-controller";

/// The fake node pods are scheduled on.
pub const NODE: &str = "kwok-node-0";

/// The README's install replaces these placeholders with `sed`; [`Cluster::kustomize`] does
/// the same with test values.
pub const PLACEHOLDERS: [(&str, &str); 4] = [
    ("PLOVER_INGEST_TOKEN", "0123456789abcdef0123456789abcdef"),
    ("registry.example.com/plover", "registry.test/plover"),
    (
        "PLOVER_WASM_URL",
        "https://artifacts.test/plover_filter.wasm",
    ),
    (
        "PLOVER_WASM_SHA256",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    ),
];

/// How long the control plane may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Where `cargo xtask cluster-tools` put the control plane: `bin/`, `crds/`, `kwok/`.
pub fn tools_dir() -> PathBuf {
    let dir = std::env::var_os("PLOVER_CLUSTER_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| tools::workspace_root().join("target/cluster-tools"));
    assert!(
        dir.join("bin/kube-apiserver").is_file(),
        "{} has no control plane: run `cargo xtask cluster-tools` (or `cargo xtask test`), which \
         builds kube-apiserver, etcd, kube-controller-manager, kube-scheduler and kwok from \
         tests/cluster/go.mod",
        dir.display()
    );
    dir
}

/// The upstream CRDs (Istio, Gateway API, prometheus-operator, Argo Rollouts), one file each.
pub fn upstream_crds() -> Vec<PathBuf> {
    let dir = tools_dir().join("crds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// A running control plane.
pub struct Cluster {
    /// `https://127.0.0.1:PORT`
    pub server: String,
    /// Kubeconfig of `admin` (`system:masters`).
    pub admin_kubeconfig: PathBuf,
    /// Kubeconfig of the controller's ServiceAccount.
    pub controller_kubeconfig: PathBuf,
    bin: PathBuf,
    /// Stopped last-started first (see `Drop`).
    processes: Vec<ChildGuard>,
    /// How each was started, to restart one.
    commands: Vec<(String, Vec<String>)>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the control plane and waits until the API server is ready and the fake node is
    /// Ready. Panics with the failing component's log.
    pub fn start() -> Cluster {
        Cluster::start_with(None)
    }

    /// A cluster whose pods take their addresses from `network`, which the test makes real
    /// by running each pod's processes in a namespace with that address
    /// ([`crate::podnet`]). The fake node's address is the network's bridge address.
    pub fn start_on(network: &crate::podnet::PodNetwork) -> Cluster {
        Cluster::start_with(Some((network.pod_cidr(), network.node_ip())))
    }

    fn start_with(pods: Option<(String, std::net::Ipv4Addr)>) -> Cluster {
        let tools = tools_dir();
        let bin = tools.join("bin");
        let dir = tempfile::Builder::new()
            .prefix("plover-cluster-")
            .tempdir()
            .expect("temp dir for the cluster");
        let path = dir.path().to_path_buf();
        let mut cluster = Cluster {
            server: String::new(),
            admin_kubeconfig: path.join("admin.kubeconfig"),
            controller_kubeconfig: path.join("controller.kubeconfig"),
            bin,
            processes: Vec::new(),
            commands: Vec::new(),
            dir,
        };
        service_account_keys(&path);
        std::fs::write(
            path.join("tokens.csv"),
            format!(
                "admin-token,admin,admin,system:masters\n\
                 controller-token,system:serviceaccount:{CONTROLLER_NAMESPACE}:{CONTROLLER_SERVICE_ACCOUNT},\
                 controller,\"system:serviceaccounts,system:serviceaccounts:{CONTROLLER_NAMESPACE},system:authenticated\"\n"
            ),
        )
        .expect("write the token file");

        let etcd = cluster.start_etcd();
        let port = free_port();
        cluster.server = format!("https://127.0.0.1:{port}");
        cluster.start_apiserver(&etcd, port);
        cluster.write_kubeconfig(&cluster.admin_kubeconfig.clone(), "admin-token");
        cluster.write_kubeconfig(&cluster.controller_kubeconfig.clone(), "controller-token");
        cluster.wait_for("the API server to be ready", |c| {
            c.kubectl(&["get", "--raw", "/readyz"]).status.success()
        });
        cluster.start_controllers(&tools, pods);
        cluster.create_node();
        cluster
    }

    /// `plover controller` (binary `plover`) as the controller's ServiceAccount, leader-elected
    /// on the manifests' Lease, with `extra` flags.
    pub fn controller_command(&self, plover: &Path, identity: &str, extra: &[&str]) -> Command {
        let mut command = Command::new(plover);
        command
            .args(["controller", "--identity", identity])
            .args(extra)
            .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--lease-namespace", CONTROLLER_NAMESPACE])
            .env("KUBECONFIG", &self.controller_kubeconfig)
            .env("RUST_LOG", "info");
        command
    }

    /// The temp dir holding the cluster's files and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `kubectl` (the one built with the control plane) as `admin`.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_as(&self.admin_kubeconfig, args, None)
    }

    /// The kubectl built with the control plane (the server's own version).
    pub fn kubectl_path(&self) -> PathBuf {
        self.bin.join("kubectl")
    }

    /// `kubectl` with `kubeconfig`, `stdin` piped in when given.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        let mut command = Command::new(self.kubectl_path());
        command
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start kubectl");
        if let Some(text) = stdin {
            use std::io::Write as _;
            let mut pipe = child.stdin.take().expect("kubectl stdin");
            pipe.write_all(text.as_bytes()).expect("write to kubectl");
        }
        child.wait_with_output().expect("kubectl output")
    }

    /// `kubectl` as `admin` that must succeed; its stdout. Panics with kubectl's stderr (the
    /// API server's message) otherwise.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl kustomize DIR` with the README's placeholders replaced ([`PLACEHOLDERS`]).
    pub fn kustomize(&self, dir: &Path) -> String {
        let mut yaml = self.kubectl_ok(&["kustomize", &dir.display().to_string()]);
        for (placeholder, value) in PLACEHOLDERS {
            yaml = yaml.replace(placeholder, value);
        }
        yaml
    }

    /// What the README's install expects a cluster to have: Istio's namespace, the namespace
    /// of the Gateway the Gateway API overlay's WasmPlugin attaches to (the example's), and
    /// the upstream CRDs, established.
    pub fn install_prerequisites(&self) {
        for namespace in ["istio-system", "rollouts-demo"] {
            if let Err(e) = self.apply(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}}}\n"
            )) {
                panic!("namespace {namespace}: {e}");
            }
        }
        let crds = upstream_crds();
        assert!(crds.len() >= 9, "upstream CRDs: {crds:?}");
        for crd in &crds {
            self.kubectl_ok(&["apply", "--server-side", "-f", &crd.display().to_string()]);
        }
        self.wait_established(&["crd", "--all"]);
    }

    /// Waits until the CRDs `what` names are served.
    pub fn wait_established(&self, what: &[&str]) {
        let mut args = vec!["wait", "--for=condition=Established", "--timeout=60s"];
        args.extend_from_slice(what);
        self.kubectl_ok(&args);
    }

    /// `kubectl apply --server-side` of `yaml` as `admin`; the API server's answer.
    pub fn apply(&self, yaml: &str) -> Result<String, String> {
        let out = self.kubectl_as(
            &self.admin_kubeconfig,
            &[
                "apply",
                "--server-side",
                "--field-manager=plover-test",
                "-f",
                "-",
            ],
            Some(yaml),
        );
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Polls `ready` every 200 ms until it holds; panics after [`START_TIMEOUT`] with the
    /// logs of every component.
    pub fn wait_for(&mut self, what: &str, mut ready: impl FnMut(&Cluster) -> bool) {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if ready(self) {
                return;
            }
            for process in &mut self.processes {
                process.assert_running();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let logs: Vec<String> = self
            .processes
            .iter()
            .map(|p| format!("--- {} ---\n{}", p.name, tail(&p.log_text(), 40)))
            .collect();
        panic!(
            "timed out after {START_TIMEOUT:?} waiting for {what}\n{}",
            logs.join("\n")
        );
    }

    fn spawn(&mut self, name: &str, args: Vec<String>) {
        self.processes.push(self.child(name, &args));
        self.commands.push((name.to_owned(), args));
    }

    fn child(&self, name: &str, args: &[String]) -> ChildGuard {
        let mut command = Command::new(self.bin.join(name));
        command.args(args);
        // A restarted component gets a log of its own (`NAME.N.log`).
        let log = self.dir.path().join(format!(
            "{name}.{}.log",
            self.commands.iter().filter(|(n, _)| n == name).count()
        ));
        ChildGuard::spawn(name, command, &log)
    }

    /// Kills kube-apiserver (SIGKILL, as a crash would) and starts it again with the same
    /// flags and storage; returns once it is ready again.
    pub fn restart_apiserver(&mut self) {
        let index = self
            .commands
            .iter()
            .position(|(name, _)| name == "kube-apiserver")
            .expect("kube-apiserver was started");
        let args = self.commands[index].1.clone();
        // The old one must be gone before the new one takes its port.
        drop(self.processes.remove(index));
        let restarted = self.child("kube-apiserver", &args);
        self.processes.insert(index, restarted);
        self.wait_for("the restarted API server to be ready", |c| {
            c.kubectl(&["get", "--raw", "/readyz"]).status.success()
        });
    }

    /// etcd on a free client port; its URL.
    fn start_etcd(&mut self) -> String {
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let data = self.dir.path().join("etcd");
        self.spawn(
            "etcd",
            vec![
                format!("--data-dir={}", data.display()),
                format!("--listen-client-urls={url}"),
                format!("--advertise-client-urls={url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
        );
        self.wait_for("etcd", |_| crate::process::port_open(client));
        url
    }

    fn start_apiserver(&mut self, etcd: &str, port: u16) {
        let dir = self.dir.path().to_path_buf();
        self.spawn(
            "kube-apiserver",
            vec![
                format!("--etcd-servers={etcd}"),
                format!("--secure-port={port}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                // The `kubernetes` Service's endpoints may not be loopback addresses; nothing
                // here reaches the API server through that Service.
                "--endpoint-reconciler-type=none".into(),
                format!("--cert-dir={}", dir.join("certs").display()),
                "--authorization-mode=RBAC".into(),
                format!("--token-auth-file={}", dir.join("tokens.csv").display()),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!(
                    "--service-account-key-file={}",
                    dir.join("sa.pub").display()
                ),
                format!(
                    "--service-account-signing-key-file={}",
                    dir.join("sa.key").display()
                ),
                // Service IPs are only allocated, never connected to.
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                "--allow-privileged=true".into(),
                "--enable-priority-and-fairness=false".into(),
            ],
        );
        let certs = dir.join("certs/apiserver.crt");
        self.wait_for("the API server's serving certificate", |_| certs.is_file());
    }

    fn write_kubeconfig(&self, path: &Path, token: &str) {
        let ca = self.dir.path().join("certs/apiserver.crt");
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\n\
                 clusters:\n- name: plover-test\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
                 users:\n- name: user\n  user:\n    token: {token}\n\
                 contexts:\n- name: plover-test\n  context:\n    cluster: plover-test\n    user: user\n\
                 current-context: plover-test\n",
                self.server,
                ca.display()
            ),
        )
        .expect("write a kubeconfig");
    }

    /// kube-controller-manager (Deployments → ReplicaSets → Pods, ServiceAccounts, …),
    /// kube-scheduler and KWOK, which plays the kubelet of one fake node.
    fn start_controllers(&mut self, tools: &Path, pods: Option<(String, std::net::Ipv4Addr)>) {
        let dir = self.dir.path().to_path_buf();
        let kubeconfig = self.admin_kubeconfig.display().to_string();
        self.spawn(
            "kube-controller-manager",
            vec![
                format!("--kubeconfig={kubeconfig}"),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()),
                format!(
                    "--service-account-private-key-file={}",
                    dir.join("sa.key").display()
                ),
                format!(
                    "--root-ca-file={}",
                    dir.join("certs/apiserver.crt").display()
                ),
                "--use-service-account-credentials=false".into(),
            ],
        );
        self.spawn(
            "kube-scheduler",
            vec![
                format!("--kubeconfig={kubeconfig}"),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()),
            ],
        );
        let mut kwok = vec![
            format!("--kubeconfig={kubeconfig}"),
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
            // The node's liveness is its Lease, renewed by KWOK as a kubelet renews it (the
            // with-lease heartbeat stage updates the status only every 10 minutes).
            "--node-lease-duration-seconds=40".into(),
            format!("--server-address=127.0.0.1:{}", free_port()),
        ];
        if let Some((cidr, node_ip)) = pods {
            kwok.push(format!("--cidr={cidr}"));
            kwok.push(format!("--node-ip={node_ip}"));
        }
        let stages = tools.join("kwok");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&stages)
            .unwrap_or_else(|e| panic!("{}: {e}", stages.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        kwok.extend(files.iter().map(|f| format!("--config={}", f.display())));
        self.spawn("kwok", kwok);
    }

    /// One Node that KWOK manages (its stages make it Ready and keep its Lease fresh).
    fn create_node(&mut self) {
        let node = format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {NODE}\n  annotations:\n    kwok.x-k8s.io/node: fake\n  \
             labels:\n    type: kwok\n    kubernetes.io/hostname: {NODE}\n    kubernetes.io/os: linux\n\
             spec: {{}}\n"
        );
        if let Err(e) = self.apply(&node) {
            panic!("create node {NODE}: {e}");
        }
        self.wait_for("the fake node to be Ready", |c| {
            c.kubectl(&[
                "get",
                "node",
                NODE,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .stdout
                == b"True"
        });
        // Pods need the default ServiceAccount of their namespace, made by the controller
        // manager; waiting for `default`'s shows it is working.
        self.wait_for("the controller manager to create ServiceAccounts", |c| {
            c.kubectl(&["get", "serviceaccount", "default", "-n", "default"])
                .status
                .success()
        });
    }
}

impl Drop for Cluster {
    /// Stops the components in the reverse order they started (KWOK first, etcd last).
    fn drop(&mut self) {
        while let Some(process) = self.processes.pop() {
            drop(process);
        }
    }
}

/// An RSA key pair for signing and checking ServiceAccount tokens (`sa.key`, `sa.pub`).
fn service_account_keys(dir: &Path) {
    let openssl = tools::debian_tool("openssl");
    for args in [
        vec!["genrsa", "-out", "sa.key", "2048"],
        vec!["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"],
    ] {
        let out = Command::new(&openssl)
            .current_dir(dir)
            .args(&args)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
