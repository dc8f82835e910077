//! A running mesh: namespaces, one proxy per node, one app thread per pod, the
//! scenario's schedule — and the guard that removes all of it when dropped.

mod control;
mod faults;

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use crate::apps::{self, CallOutcome, PodApp, TrafficReport};
use crate::fault::Fault;
use crate::identity::{self, TestCa};
use crate::metadata::{self, LocalConfig};
use crate::netns::{self, Netns};
use crate::proxy::{self, HboneProxy, MeshContext, ProxyStats, TunnelEvent};
use crate::scenario::{Protocol, Scenario, TrafficSpec};
use crate::state::{self, MeshState, Removed};
use crate::topology::{self, Names};

pub use control::{ControlRequest, ControlResponse, send as send_control};
pub use faults::ActiveFault;

/// Errors bringing a mesh up or acting on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The prefix is not 1–8 lowercase letters or digits.
    #[error("prefix {0:?} must be 1-8 characters of [a-z0-9]")]
    Prefix(String),
    /// Namespaces with this prefix already exist (another mesh, or a crashed one: run `down`).
    #[error("namespaces with prefix {0} already exist; run `nephilia-testbed down --prefix {0}`")]
    PrefixInUse(String),
    /// The network could not be built.
    #[error("building the network: {0}")]
    Topology(#[from] netns::Error),
    #[error(transparent)]
    State(#[from] state::Error),
    #[error(transparent)]
    Metadata(#[from] metadata::Error),
    #[error(transparent)]
    Identity(#[from] identity::Error),
    #[error(transparent)]
    Proxy(#[from] proxy::Error),
    #[error(transparent)]
    App(#[from] apps::Error),
    #[error(transparent)]
    Fault(#[from] crate::fault::Error),
    /// The scenario has no such pod.
    #[error("no pod {0} in this mesh")]
    UnknownPod(String),
    /// Kill-tunnel needs an enrolled pod.
    #[error("pod {0} is not enrolled: it has no tunnel")]
    NotEnrolled(String),
    /// The runtime for the schedule and the control socket could not start.
    #[error("starting the mesh runtime: {0}")]
    Runtime(std::io::Error),
    /// The control socket could not be opened.
    #[error("control socket {path}: {source}")]
    Control {
        path: String,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to bring a mesh up.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Every namespace name begins with `<prefix>-`.
    pub prefix: String,
    /// Where the state file (and by default the metadata file) go.
    pub state_dir: PathBuf,
    /// Where to write the metadata file; default `<state_dir>/<prefix>-metadata.yaml`.
    pub metadata: Option<PathBuf>,
    /// Open `<state_dir>/<prefix>.sock` for `nephilia-testbed fault`.
    pub control_socket: bool,
    /// Start the scenario's traffic and scheduled faults.
    pub run_schedule: bool,
}

impl UpOptions {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            state_dir: PathBuf::from(state::STATE_DIR),
            metadata: None,
            control_socket: false,
            run_schedule: true,
        }
    }

    /// A prefix no other run uses (`t` + 7 random hex digits), for tests.
    pub fn unique() -> Self {
        let random: u32 = rand::random();
        Self::new(&format!("t{:07x}", random & 0x0fff_ffff))
    }
}

/// Everything a running mesh holds; shared with its scheduled tasks.
pub(crate) struct MeshInner {
    pub scenario: Arc<Scenario>,
    pub names: Names,
    pub context: MeshContext,
    pub proxies: Mutex<BTreeMap<String, HboneProxy>>,
    pub apps: Mutex<BTreeMap<String, PodApp>>,
    pub faults: Mutex<Vec<ActiveFault>>,
}

/// A running mesh. Dropping it stops every proxy and app and deletes every namespace
/// (and with them every link, route and rule) it made.
pub struct Mesh {
    inner: Arc<MeshInner>,
    state: MeshState,
    state_dir: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
    torn_down: bool,
}

impl Mesh {
    /// Builds the network, starts proxies and apps, writes the metadata and state files
    /// and (if asked) starts the scenario's traffic and faults. On error everything made
    /// so far is removed again.
    pub fn up(scenario: Scenario, options: UpOptions) -> Result<Self> {
        let prefix = options.prefix.clone();
        if prefix.is_empty()
            || prefix.len() > 8
            || !prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return Err(Error::Prefix(prefix));
        }
        let names = Names::new(&prefix);
        let namespaces = names.all(&scenario);
        if netns::list()
            .iter()
            .any(|name| name.starts_with(&format!("{prefix}-")))
        {
            return Err(Error::PrefixInUse(prefix));
        }
        let metadata = options
            .metadata
            .clone()
            .unwrap_or_else(|| options.state_dir.join(format!("{prefix}-metadata.yaml")));
        let control_socket = options
            .control_socket
            .then(|| options.state_dir.join(format!("{prefix}.sock")));
        let state = MeshState {
            prefix: prefix.clone(),
            scenario: scenario.name.clone(),
            pid: std::process::id(),
            namespaces,
            pods: scenario
                .pods
                .iter()
                .map(|pod| (pod.name.clone(), names.pod(&pod.name)))
                .collect(),
            metadata,
            control_socket,
        };
        // Recorded before anything exists, so a crash in between leaves a way back.
        state.write(&options.state_dir)?;
        let inner = Arc::new(MeshInner {
            scenario: Arc::new(scenario),
            names,
            context: MeshContext {
                ca: Arc::new(TestCa::generate()?),
                policies: Arc::new(RwLock::new(Vec::new())),
                events: Arc::new(Mutex::new(VecDeque::new())),
            },
            proxies: Mutex::new(BTreeMap::new()),
            apps: Mutex::new(BTreeMap::new()),
            faults: Mutex::new(Vec::new()),
        });
        let mut mesh = Self {
            inner,
            state,
            state_dir: options.state_dir.clone(),
            runtime: None,
            torn_down: false,
        };
        // On error `mesh` drops here and tears down whatever was made.
        mesh.start(&options)?;
        Ok(mesh)
    }

    fn start(&mut self, options: &UpOptions) -> Result<()> {
        let inner = &self.inner;
        let scenario = &inner.scenario;
        topology::create(scenario, &inner.names)?;
        *inner
            .context
            .policies
            .write()
            .unwrap_or_else(|p| p.into_inner()) = scenario.policies.clone();
        for node in &scenario.nodes {
            let proxy = HboneProxy::start(scenario, &inner.names, &node.name, &inner.context)?;
            lock(&inner.proxies).insert(node.name.clone(), proxy);
        }
        for pod in &scenario.pods {
            let app = PodApp::start(scenario.clone(), pod, &inner.names.pod(&pod.name))?;
            lock(&inner.apps).insert(pod.name.clone(), app);
        }
        LocalConfig::from_scenario(scenario).write(&self.state.metadata)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("testbed")
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        if let Some(path) = &self.state.control_socket {
            let _ = std::fs::remove_file(path);
            let _guard = runtime.enter();
            let listener =
                tokio::net::UnixListener::bind(path).map_err(|source| Error::Control {
                    path: path.display().to_string(),
                    source,
                })?;
            runtime.spawn(control::serve(Arc::downgrade(inner), listener));
        }
        self.runtime = Some(runtime);
        if options.run_schedule {
            self.start_schedule()?;
        }
        Ok(())
    }

    /// Starts the scenario's traffic and its scheduled faults (their `at` counts from
    /// now). `UpOptions::run_schedule` does it as the mesh comes up.
    pub fn start_schedule(&self) -> Result<()> {
        for spec in &self.inner.scenario.traffic {
            self.start_traffic(spec.clone())?;
        }
        if let Some(runtime) = &self.runtime {
            for scheduled in &self.inner.scenario.faults {
                let mesh = Arc::downgrade(&self.inner);
                runtime.spawn(faults::schedule(mesh, scheduled.clone()));
            }
        }
        Ok(())
    }

    pub fn prefix(&self) -> &str {
        &self.state.prefix
    }

    pub fn scenario(&self) -> &Scenario {
        &self.inner.scenario
    }

    /// Where the ztunnel-shaped metadata file was written.
    pub fn metadata_path(&self) -> &Path {
        &self.state.metadata
    }

    /// The control socket, if one was opened.
    pub fn control_socket(&self) -> Option<&Path> {
        self.state.control_socket.as_deref()
    }

    /// Name of a pod's network namespace (`ip netns exec NAME …`).
    pub fn pod_namespace(&self, pod: &str) -> Result<String> {
        self.inner
            .scenario
            .pod(pod)
            .ok_or_else(|| Error::UnknownPod(pod.to_owned()))?;
        Ok(self.inner.names.pod(pod))
    }

    /// Name of a node's network namespace.
    pub fn node_namespace(&self, node: &str) -> String {
        self.inner.names.node(node)
    }

    pub fn pod_ip(&self, pod: &str) -> Result<IpAddr> {
        let spec = self
            .inner
            .scenario
            .pod(pod)
            .ok_or_else(|| Error::UnknownPod(pod.to_owned()))?;
        Ok(IpAddr::V4(spec.ip))
    }

    /// A command that runs `program` inside the pod's namespace.
    pub fn command(&self, pod: &str, program: &str) -> Result<std::process::Command> {
        let namespace = self.pod_namespace(pod)?;
        let mut command = std::process::Command::new("ip");
        command.args(["netns", "exec", &namespace, program]);
        Ok(command)
    }

    /// A TCP connection made from inside the pod (so the pod's redirect rules apply),
    /// for tests that speak the protocol by hand.
    pub fn connect(
        &self,
        pod: &str,
        address: SocketAddr,
        timeout: Duration,
    ) -> std::io::Result<std::net::TcpStream> {
        let namespace = self.pod_namespace(pod).map_err(std::io::Error::other)?;
        let netns = Netns::open(&namespace).map_err(std::io::Error::other)?;
        let socket = netns
            .run(|| socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None))
            .map_err(std::io::Error::other)??;
        socket.connect_timeout(&address.into(), timeout)?;
        Ok(socket.into())
    }

    /// One call from the pod's app thread, with the demo apps' client (`target` is
    /// `hostname:port` or `ip:port`). Must not be called from inside a tokio runtime.
    pub fn call(&self, pod: &str, target: &str, protocol: Protocol) -> Result<CallOutcome> {
        let apps = lock(&self.inner.apps);
        let app = apps
            .get(pod)
            .ok_or_else(|| Error::UnknownPod(pod.to_owned()))?;
        Ok(app.call(target, protocol))
    }

    /// Starts bounded load (counted in [`Mesh::traffic`]).
    pub fn start_traffic(&self, spec: TrafficSpec) -> Result<Arc<TrafficReport>> {
        let apps = lock(&self.inner.apps);
        let app = apps
            .get(&spec.from)
            .ok_or_else(|| Error::UnknownPod(spec.from.clone()))?;
        Ok(app.start_traffic(spec))
    }

    /// Counts of every traffic entry started so far.
    pub fn traffic(&self) -> Vec<apps::TrafficCounts> {
        lock(&self.inner.apps)
            .values()
            .flat_map(|app| app.reports())
            .map(|report| report.counts())
            .collect()
    }

    /// Injects a fault now; it stays until reverted (or the mesh goes down).
    pub fn inject(&self, fault: Fault) -> Result<()> {
        faults::inject(&self.inner, fault)
    }

    /// Reverts one active fault (no-op if it is not active).
    pub fn revert(&self, fault: &Fault) -> Result<()> {
        faults::revert(&self.inner, fault)
    }

    /// Reverts every active fault.
    pub fn clear_faults(&self) -> Result<()> {
        faults::clear(&self.inner)
    }

    pub fn active_faults(&self) -> Vec<Fault> {
        lock(&self.inner.faults)
            .iter()
            .map(|f| f.fault.clone())
            .collect()
    }

    /// Counters of a node's proxy.
    pub fn proxy_stats(&self, node: &str) -> Option<ProxyStats> {
        lock(&self.inner.proxies).get(node).map(HboneProxy::stats)
    }

    /// Every flow the proxies handled so far (most recent 10 000).
    pub fn tunnel_events(&self) -> Vec<TunnelEvent> {
        lock(&self.inner.context.events).iter().cloned().collect()
    }

    /// Removes everything now and says what was removed.
    pub fn down(mut self) -> Removed {
        self.teardown()
    }

    fn teardown(&mut self) -> Removed {
        if self.torn_down {
            return Removed::default();
        }
        self.torn_down = true;
        if let Some(runtime) = self.runtime.take() {
            crate::shutdown_runtime(runtime);
        }
        // Apps first (their threads join), then proxies, then the namespaces.
        drop(std::mem::take(&mut *lock(&self.inner.apps)));
        drop(std::mem::take(&mut *lock(&self.inner.proxies)));
        state::remove(&self.state_dir, &self.state)
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let removed = self.teardown();
        for failure in removed.failures {
            tracing::warn!(%failure, "could not remove");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn upgrade(inner: &Weak<MeshInner>) -> Option<Arc<MeshInner>> {
    inner.upgrade()
}
