//! The per-node HBONE proxy: what ztunnel does in in-pod mode, and nothing more.
//!
//! For every enrolled pod on its node it opens, inside the pod's namespace, 15001
//! (outbound capture), 15006 (inbound plaintext) and 15008 (HBONE: TLS 1.3 + HTTP/2
//! CONNECT). It has no listener of its own outside pods (admin/metrics ports are not
//! reproduced: nothing in the testbed reads them).

mod inbound;
mod outbound;
mod pool;
mod socket;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::identity::{self, TestCa, WorkloadCert};
use crate::netns::{self, Netns};
use crate::scenario::{PodSpec, PolicySpec, Scenario};
use crate::topology::Names;

pub use pool::{ConnectPool, MAX_STREAMS_PER_CONNECTION, PoolKey, UNUSED_RELEASE_TIMEOUT};

/// Outbound capture port.
pub const OUTBOUND_PORT: u16 = 15001;
/// Inbound plaintext port.
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
/// HBONE port.
pub const HBONE_PORT: u16 = 15008;
/// How long a connect (to a peer's 15008 or to an app) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Tunnel events kept for inspection (oldest dropped first).
const EVENT_CAPACITY: usize = 10_000;

/// Errors starting a proxy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The proxy's runtime could not be built.
    #[error("starting proxy runtime: {0}")]
    Runtime(std::io::Error),
    /// A pod's namespace could not be opened.
    #[error(transparent)]
    Netns(#[from] netns::Error),
    /// A listener could not be opened inside a pod.
    #[error("listening on {port} in pod {pod}: {source}")]
    Listen {
        pod: String,
        port: u16,
        source: std::io::Error,
    },
    /// A certificate or TLS configuration could not be made.
    #[error(transparent)]
    Identity(#[from] identity::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which side of the tunnel saw an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Outbound,
    Inbound,
}

/// How a flow was carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowPath {
    /// HTTP/2 CONNECT over mTLS to the peer's 15008.
    Hbone,
    /// Plain TCP to a workload that is not enrolled, or inbound plaintext on 15006.
    Tcp,
    /// Destination outside the mesh: dialled as the app asked.
    Passthrough,
}

/// One flow as a proxy handled it, for tests and the demo (not an exported signal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TunnelEvent {
    pub node: String,
    /// The enrolled pod whose listener took the flow.
    pub pod: String,
    pub direction: Direction,
    pub path: FlowPath,
    /// The client's address as the proxy knows it (outbound: the app's socket;
    /// inbound: the address the app will see).
    pub client: SocketAddr,
    /// `podIP:port` the flow goes to (the CONNECT `:authority` for HBONE).
    pub target: SocketAddr,
    pub source_identity: Option<String>,
    pub destination_identity: Option<String>,
    /// CONNECT response status (HBONE; 503 also when no HBONE connection could be
    /// opened), or 200/503 for a plain upstream connect. Inbound events know only the
    /// client's IP (port 0).
    pub status: u16,
    /// Outbound HBONE: whether the HTTP/2 connection came from the pool.
    pub reused: bool,
}

/// Counters of one proxy.
#[derive(Debug, Default)]
struct Counters {
    hbone_accepted: AtomicU64,
    hbone_dialed: AtomicU64,
    streams_sent: AtomicU64,
    streams_received: AtomicU64,
}

/// A snapshot of a proxy's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProxyStats {
    /// TLS connections accepted on 15008 (all pods of the node).
    pub hbone_connections_accepted: u64,
    /// TLS connections dialled to peers' 15008.
    pub hbone_connections_dialed: u64,
    /// CONNECT streams sent.
    pub connect_streams_sent: u64,
    /// CONNECT streams received.
    pub connect_streams_received: u64,
    /// Pooled connections open now.
    pub pooled_connections: usize,
}

/// Where a captured connection goes, decided from the original destination.
#[derive(Debug, Clone)]
pub(crate) enum Destination {
    Hbone {
        identity: String,
        target: SocketAddr,
    },
    Tcp {
        target: SocketAddr,
    },
    Passthrough {
        target: SocketAddr,
    },
}

/// The mesh as every proxy knows it (ztunnel learns this over xDS; here it is static).
pub(crate) struct Directory {
    workloads: HashMap<IpAddr, PodSpec>,
    services: HashMap<SocketAddr, (Vec<IpAddr>, u16)>,
    round_robin: AtomicUsize,
    trust_domain: String,
    cluster: String,
}

impl Directory {
    fn new(scenario: &Scenario) -> Self {
        let workloads = scenario
            .pods
            .iter()
            .map(|pod| (IpAddr::V4(pod.ip), pod.clone()))
            .collect();
        let mut services = HashMap::new();
        for service in &scenario.services {
            let endpoints: Vec<IpAddr> = scenario
                .endpoints(service)
                .map(|pod| IpAddr::V4(pod.ip))
                .collect();
            for port in &service.ports {
                services.insert(
                    SocketAddr::new(IpAddr::V4(service.vip), port.port),
                    (endpoints.clone(), port.target_port),
                );
            }
        }
        Self {
            workloads,
            services,
            round_robin: AtomicUsize::new(0),
            trust_domain: scenario.trust_domain.clone(),
            cluster: scenario.cluster.clone(),
        }
    }

    fn identity(&self, pod: &PodSpec) -> String {
        pod.identity(&self.trust_domain)
    }

    /// A service VIP picks one endpoint (round robin) and maps the port to its target
    /// port; a workload IP is used as is; anything else is outside the mesh.
    pub(crate) fn destination(&self, original: SocketAddr) -> Destination {
        let target = match self.services.get(&original) {
            Some((endpoints, target_port)) if !endpoints.is_empty() => {
                let pick = self.round_robin.fetch_add(1, Ordering::Relaxed) % endpoints.len();
                SocketAddr::new(endpoints[pick], *target_port)
            }
            _ => original,
        };
        match self.workloads.get(&target.ip()) {
            Some(pod) if pod.enrolled => Destination::Hbone {
                identity: self.identity(pod),
                target,
            },
            Some(_) => Destination::Tcp { target },
            None => Destination::Passthrough { target },
        }
    }

    /// ztunnel's `baggage` header for flows from `pod`.
    pub(crate) fn baggage(&self, pod: &PodSpec) -> String {
        format!(
            "k8s.cluster.name={},k8s.namespace.name={},k8s.deployment.name={},service.name={},service.version=latest",
            self.cluster,
            pod.namespace,
            pod.workload_name(),
            pod.workload_name()
        )
    }
}

/// An enrolled pod as its node's proxy holds it.
pub(crate) struct EnrolledPod {
    pub spec: PodSpec,
    pub identity: String,
    pub netns: Netns,
    pub cert: WorkloadCert,
    /// Bumped by the kill-tunnel fault: every open inbound tunnel to the pod resets.
    pub kill: watch::Sender<u64>,
}

/// State shared by every task of one proxy.
pub(crate) struct Shared {
    pub node: String,
    pub directory: Arc<Directory>,
    pub ca: Arc<TestCa>,
    pub policies: Arc<RwLock<Vec<PolicySpec>>>,
    pub pool: ConnectPool,
    counters: Counters,
    events: Arc<Mutex<VecDeque<TunnelEvent>>>,
}

impl Shared {
    pub(crate) fn record(&self, event: TunnelEvent) {
        tracing::debug!(?event, "tunnel event");
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if events.len() == EVENT_CAPACITY {
            events.pop_front();
        }
        events.push_back(event);
    }

    /// Whether a DENY policy stops `source_identity` from reaching `pod`.
    pub(crate) fn denied(&self, source_identity: &str, pod: &PodSpec) -> bool {
        let policies = self.policies.read().unwrap_or_else(|p| p.into_inner());
        policies
            .iter()
            .any(|policy| policy.to == pod.workload_name() && policy.from.matches(source_identity))
    }
}

/// One node's proxy, running on its own runtime (threads named `ztunnel`).
pub struct HboneProxy {
    shared: Arc<Shared>,
    pods: HashMap<String, Arc<EnrolledPod>>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// Things every proxy of a mesh shares.
#[derive(Clone)]
pub struct MeshContext {
    pub ca: Arc<TestCa>,
    pub policies: Arc<RwLock<Vec<PolicySpec>>>,
    pub events: Arc<Mutex<VecDeque<TunnelEvent>>>,
}

impl HboneProxy {
    /// Starts the proxy of `node` and enrolls every enrolled pod on it.
    pub fn start(
        scenario: &Scenario,
        names: &Names,
        node: &str,
        context: &MeshContext,
    ) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ztunnel")
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let shared = Arc::new(Shared {
            node: node.to_owned(),
            directory: Arc::new(Directory::new(scenario)),
            ca: context.ca.clone(),
            policies: context.policies.clone(),
            pool: ConnectPool::default(),
            counters: Counters::default(),
            events: context.events.clone(),
        });
        let sweeper = shared.clone();
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval(UNUSED_RELEASE_TIMEOUT / 10);
            loop {
                ticks.tick().await;
                sweeper.pool.release_unused(UNUSED_RELEASE_TIMEOUT);
            }
        });
        let mut pods = HashMap::new();
        for spec in scenario
            .pods
            .iter()
            .filter(|p| p.node == node && p.enrolled)
        {
            let identity = spec.identity(&scenario.trust_domain);
            let pod = Arc::new(EnrolledPod {
                spec: spec.clone(),
                cert: context.ca.issue(&identity)?,
                identity,
                netns: Netns::open(&names.pod(&spec.name))?,
                kill: watch::channel(0).0,
            });
            let _guard = runtime.enter();
            let listener = |port| {
                socket::listen(&pod.netns, port).map_err(|source| Error::Listen {
                    pod: spec.name.clone(),
                    port,
                    source,
                })
            };
            let outbound = listener(OUTBOUND_PORT)?;
            let plaintext = listener(INBOUND_PLAINTEXT_PORT)?;
            let hbone = listener(HBONE_PORT)?;
            let server_config = context.ca.server_config(&pod.cert)?;
            runtime.spawn(outbound::serve(shared.clone(), pod.clone(), outbound));
            runtime.spawn(inbound::serve_plaintext(
                shared.clone(),
                pod.clone(),
                plaintext,
            ));
            runtime.spawn(inbound::serve_hbone(
                shared.clone(),
                pod.clone(),
                hbone,
                server_config,
            ));
            pods.insert(spec.name.clone(), pod);
        }
        Ok(Self {
            shared,
            pods,
            runtime: Some(runtime),
        })
    }

    pub fn stats(&self) -> ProxyStats {
        let counters = &self.shared.counters;
        ProxyStats {
            hbone_connections_accepted: counters.hbone_accepted.load(Ordering::Relaxed),
            hbone_connections_dialed: counters.hbone_dialed.load(Ordering::Relaxed),
            connect_streams_sent: counters.streams_sent.load(Ordering::Relaxed),
            connect_streams_received: counters.streams_received.load(Ordering::Relaxed),
            pooled_connections: self.shared.pool.connections(),
        }
    }

    /// Resets every open inbound tunnel to `pod`; false if the pod is not enrolled here.
    pub fn kill_tunnels(&self, pod: &str) -> bool {
        match self.pods.get(pod) {
            Some(enrolled) => {
                enrolled.kill.send_modify(|generation| *generation += 1);
                true
            }
            None => false,
        }
    }
}

impl Drop for HboneProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            crate::shutdown_runtime(runtime);
        }
    }
}
