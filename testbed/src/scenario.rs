//! The scenario file: nodes, pods, services, policies, traffic and faults of one test mesh.
//!
//! The format is documented in `testbed/README.md`; every bound here (rate, duration,
//! in-flight requests) exists so that a scenario can never turn into unbounded load.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fault::Fault;

/// Highest request rate one traffic entry may ask for, per second.
pub const MAX_RATE_PER_SECOND: u32 = 500;
/// Longest a traffic entry may run.
pub const MAX_TRAFFIC_DURATION: Duration = Duration::from_secs(3600);

/// Errors reading or checking a scenario.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("reading scenario {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The YAML does not have the scenario's shape.
    #[error("parsing scenario: {0}")]
    Parse(#[from] serde_yaml_ng::Error),
    /// The scenario is well-formed but inconsistent (a dangling reference, a duplicate…).
    #[error("invalid scenario: {0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One test mesh.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scenario {
    /// Name of the mesh (used in the metadata file and logs).
    pub name: String,
    /// SPIFFE trust domain of every identity.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// Cluster name carried in `baggage` (ztunnel's `k8s.cluster.name`).
    #[serde(default = "default_cluster")]
    pub cluster: String,
    pub nodes: Vec<NodeSpec>,
    pub pods: Vec<PodSpec>,
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    /// Authorization policies enforced by the destination's proxy (401 at the tunnel).
    #[serde(default)]
    pub policies: Vec<PolicySpec>,
    #[serde(default)]
    pub traffic: Vec<TrafficSpec>,
    #[serde(default)]
    pub faults: Vec<ScheduledFault>,
}

/// A node: a network namespace on the shared bridge, router for its pods.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    /// Address on the node bridge; all nodes share one /24.
    pub ip: Ipv4Addr,
}

/// A pod: a network namespace behind its node, running at most one demo app.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    #[serde(default = "default_service_account")]
    pub service_account: String,
    /// Workload (deployment) name; defaults to the pod name.
    #[serde(default)]
    pub workload: Option<String>,
    pub ip: Ipv4Addr,
    pub node: String,
    /// Enrolled pods get the proxy's listeners and redirect rules; others talk plain TCP.
    #[serde(default = "default_true")]
    pub enrolled: bool,
    #[serde(default)]
    pub app: Option<AppSpec>,
}

impl PodSpec {
    pub fn workload_name(&self) -> &str {
        self.workload.as_deref().unwrap_or(&self.name)
    }

    /// The SPIFFE identity ztunnel would use for this pod.
    pub fn identity(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

/// Application protocol of a demo app or a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http,
    Grpc,
}

/// The demo app a pod runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppSpec {
    pub protocol: Protocol,
    pub port: u16,
    #[serde(default)]
    pub latency: LatencySpec,
    /// Share of requests answered with 503 (HTTP) or UNAVAILABLE (gRPC), 0.0–1.0.
    #[serde(default)]
    pub error_rate: f64,
    /// Calls made (in order) for every request received: the fan-out.
    #[serde(default)]
    pub calls: Vec<CallSpec>,
    /// Continue the caller's W3C trace (or start one) on outgoing calls.
    #[serde(default)]
    pub propagate_trace: bool,
}

/// Service time of a demo app: `base + uniform(0, jitter)`, and with probability
/// `tailRate` an extra `tail` (a long tail for the latency histograms).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LatencySpec {
    #[serde(default)]
    pub base_ms: u64,
    #[serde(default)]
    pub jitter_ms: u64,
    #[serde(default)]
    pub tail_ms: u64,
    #[serde(default)]
    pub tail_rate: f64,
}

/// A call from one app to a service (or any `host:port`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CallSpec {
    /// `hostname:port` of a service, or `ip:port`.
    pub to: String,
    #[serde(default)]
    pub protocol: Protocol,
}

/// A Kubernetes-like service: a VIP in front of the pods of one workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    pub namespace: String,
    /// Defaults to `name.namespace.svc.cluster.local`.
    #[serde(default)]
    pub hostname: Option<String>,
    pub vip: Ipv4Addr,
    pub ports: Vec<ServicePort>,
    /// Workload name whose pods (in the same namespace) are the endpoints.
    pub selector: String,
}

impl ServiceSpec {
    pub fn hostname(&self) -> String {
        self.hostname
            .clone()
            .unwrap_or_else(|| format!("{}.{}.svc.cluster.local", self.name, self.namespace))
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    pub port: u16,
    pub target_port: u16,
}

/// Who a policy talks about: a namespace and optionally one service account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Principal {
    pub namespace: String,
    #[serde(default)]
    pub service_account: Option<String>,
}

impl Principal {
    /// Whether a SPIFFE identity `spiffe://td/ns/N/sa/S` falls under this principal.
    pub fn matches(&self, identity: &str) -> bool {
        let mut parts = identity.rsplitn(5, '/');
        let (Some(sa), Some("sa"), Some(ns), Some("ns")) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        ns == self.namespace
            && self
                .service_account
                .as_deref()
                .is_none_or(|want| want == sa)
    }
}

/// A DENY authorization policy: `from` may not reach workload `to`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    pub from: Principal,
    /// Destination workload name.
    pub to: String,
}

/// Bounded load from one pod to one destination.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficSpec {
    /// Source pod.
    pub from: String,
    /// `hostname:port` of a service, or `ip:port`.
    pub to: String,
    #[serde(default)]
    pub protocol: Protocol,
    /// Requests per second (at most 500).
    pub rate: u32,
    /// How long to send, e.g. `90s` (at most 1h).
    #[serde(with = "duration_text")]
    pub duration: Duration,
    /// Delay after `up` before starting.
    #[serde(default, with = "duration_text")]
    pub start: Duration,
}

/// A fault injected at `at` after `up`, reverted after `duration` if given.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScheduledFault {
    #[serde(with = "duration_text")]
    pub at: Duration,
    #[serde(default, with = "optional_duration_text")]
    pub duration: Option<Duration>,
    pub fault: Fault,
}

fn default_trust_domain() -> String {
    "cluster.local".to_owned()
}
fn default_cluster() -> String {
    "Kubernetes".to_owned()
}
fn default_service_account() -> String {
    "default".to_owned()
}
fn default_true() -> bool {
    true
}

/// Parses `1500ms`, `30s`, `2m`, `1h` (a bare number means seconds).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    match unit.trim() {
        "ms" => Some(Duration::from_millis(number)),
        "" | "s" => Some(Duration::from_secs(number)),
        "m" => Some(Duration::from_secs(number.checked_mul(60)?)),
        "h" => Some(Duration::from_secs(number.checked_mul(3600)?)),
        _ => None,
    }
}

fn format_duration(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

mod duration_text {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_duration(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_duration(&text).ok_or_else(|| {
            D::Error::custom(format!("not a duration: {text:?} (use 500ms, 30s, 2m)"))
        })
    }
}

mod optional_duration_text {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => serializer.serialize_str(&super::format_duration(*duration)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let Some(text) = Option::<String>::deserialize(deserializer)? else {
            return Ok(None);
        };
        super::parse_duration(&text).map(Some).ok_or_else(|| {
            D::Error::custom(format!("not a duration: {text:?} (use 500ms, 30s, 2m)"))
        })
    }
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    /// Parses and checks a scenario.
    pub fn from_yaml(text: &str) -> Result<Self> {
        let scenario: Scenario = serde_yaml_ng::from_str(text)?;
        scenario.validate()?;
        Ok(scenario)
    }

    pub fn pod(&self, name: &str) -> Option<&PodSpec> {
        self.pods.iter().find(|pod| pod.name == name)
    }

    /// Resolves `hostname:port` (a service) or `ip:port` to the address a client dials.
    /// Service hostnames resolve to their VIP: the testbed has no DNS, apps ask this.
    pub fn resolve(&self, target: &str) -> Option<SocketAddr> {
        if let Ok(address) = target.parse::<SocketAddr>() {
            return Some(address);
        }
        let (host, port) = target.rsplit_once(':')?;
        let port: u16 = port.parse().ok()?;
        self.services
            .iter()
            .find(|service| service.hostname() == host || service.name == host)
            .map(|service| SocketAddr::V4(SocketAddrV4::new(service.vip, port)))
    }

    /// Pods selected by a service, in scenario order.
    pub fn endpoints<'a>(&'a self, service: &'a ServiceSpec) -> impl Iterator<Item = &'a PodSpec> {
        self.pods.iter().filter(move |pod| {
            pod.namespace == service.namespace && pod.workload_name() == service.selector
        })
    }

    fn validate(&self) -> Result<()> {
        let invalid = |message: String| Err(Error::Invalid(message));
        if self.nodes.is_empty() {
            return invalid("a scenario needs at least one node".into());
        }
        let mut names = HashSet::new();
        let mut addresses: HashMap<Ipv4Addr, String> = HashMap::new();
        let mut claim = |ip: Ipv4Addr, owner: String| match addresses.insert(ip, owner.clone()) {
            Some(previous) => invalid(format!("{ip} is used by both {previous} and {owner}")),
            None => Ok(()),
        };
        let node_net = u32::from(self.nodes[0].ip) >> 8;
        for node in &self.nodes {
            if !names.insert(format!("node/{}", node.name)) {
                return invalid(format!("node {} is defined twice", node.name));
            }
            if u32::from(node.ip) >> 8 != node_net {
                return invalid(format!("node {} is not in the first node's /24", node.name));
            }
            claim(node.ip, format!("node {}", node.name))?;
        }
        for pod in &self.pods {
            if !names.insert(format!("pod/{}", pod.name)) {
                return invalid(format!("pod {} is defined twice", pod.name));
            }
            if !self.nodes.iter().any(|node| node.name == pod.node) {
                return invalid(format!("pod {} is on unknown node {}", pod.name, pod.node));
            }
            claim(pod.ip, format!("pod {}", pod.name))?;
            if let Some(app) = &pod.app {
                if !(0.0..=1.0).contains(&app.error_rate) {
                    return invalid(format!("pod {}: errorRate must be within 0..1", pod.name));
                }
                for call in &app.calls {
                    if self.resolve(&call.to).is_none() {
                        return invalid(format!(
                            "pod {}: cannot resolve call {}",
                            pod.name, call.to
                        ));
                    }
                }
            }
        }
        for service in &self.services {
            if !names.insert(format!("service/{}/{}", service.namespace, service.name)) {
                return invalid(format!("service {} is defined twice", service.name));
            }
            claim(service.vip, format!("service {}", service.name))?;
        }
        for traffic in &self.traffic {
            if self.pod(&traffic.from).is_none() {
                return invalid(format!("traffic from unknown pod {}", traffic.from));
            }
            if self.resolve(&traffic.to).is_none() {
                return invalid(format!("traffic to unresolvable {}", traffic.to));
            }
            if traffic.rate == 0 || traffic.rate > MAX_RATE_PER_SECOND {
                return invalid(format!("traffic rate must be 1..={MAX_RATE_PER_SECOND}"));
            }
            if traffic.duration > MAX_TRAFFIC_DURATION {
                return invalid("traffic duration must be at most 1h".into());
            }
        }
        for scheduled in &self.faults {
            scheduled
                .fault
                .check(self)
                .map_err(|error| Error::Invalid(error.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("7d"), None);
    }

    #[test]
    fn principal_matches_spiffe_identities() {
        let principal = Principal {
            namespace: "shop".into(),
            service_account: Some("frontend".into()),
        };
        assert!(principal.matches("spiffe://cluster.local/ns/shop/sa/frontend"));
        assert!(!principal.matches("spiffe://cluster.local/ns/shop/sa/checkout"));
        let whole_namespace = Principal {
            namespace: "shop".into(),
            service_account: None,
        };
        assert!(whole_namespace.matches("spiffe://cluster.local/ns/shop/sa/checkout"));
        assert!(!whole_namespace.matches("spiffe://cluster.local/ns/bank/sa/checkout"));
    }

    #[test]
    fn shipped_demo_scenario_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/demo.yaml");
        let scenario = Scenario::from_file(&path).expect("demo.yaml parses and validates");
        assert_eq!(scenario.nodes.len(), 2);
        assert!(scenario.services.len() >= 6);
        let namespaces: HashSet<_> = scenario.services.iter().map(|s| &s.namespace).collect();
        assert!(namespaces.len() >= 2);
        assert!(!scenario.faults.is_empty());
    }
}
