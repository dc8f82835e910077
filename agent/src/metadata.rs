//! Who is behind an address: workloads (pods), services and their identities, from one
//! of three sources behind one interface:
//! - `static:FILE`: ztunnel's local-config shape (`workloads:` and `services:`), which
//!   the testbed writes, so one file describes a mesh to ztunnel and to Nephilia;
//! - `kubernetes`: watches this node's pods plus all services and namespaces;
//! - `none`: nothing is named; records carry addresses, netns and process names only.
//!
//! Addresses are looked up by IP. Pod IPs are unique in a cluster, so the IP of a
//! socket's pod-side address names its pod; sockets bound to loopback (a proxy's accepted
//! socket shows `127.0.0.1:15001`) are named through their network namespace instead,
//! which the flow builder maps to a pod from the other sockets it saw in that namespace.
//! Host-network pods share the node's IP: their sockets are named after the node only.

pub mod kubernetes;
pub mod static_file;

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    str::FromStr,
    sync::{Arc, RwLock},
};

use serde::{Deserialize, Serialize};

/// How a workload's traffic enters the mesh.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// Enrolled in ambient mode: traffic goes through the node proxy over HBONE.
    Hbone,
    /// Not enrolled: plain TCP.
    #[default]
    Tcp,
}

/// One pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    /// Pod name.
    pub pod: String,
    /// Owning workload (Deployment, StatefulSet, DaemonSet, CronJob, Job) or the pod name.
    pub workload: String,
    pub namespace: String,
    pub service_account: String,
    pub trust_domain: String,
    pub ips: Vec<IpAddr>,
    pub protocol: Protocol,
    pub node: String,
    /// Hostnames of the services selecting this pod.
    pub services: Vec<String>,
}

impl Workload {
    /// The SPIFFE identity ztunnel presents for this pod.
    pub fn identity(&self) -> String {
        spiffe_identity(&self.trust_domain, &self.namespace, &self.service_account)
    }
}

/// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, as Istio issues them.
pub fn spiffe_identity(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// One Kubernetes service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<IpAddr>,
    /// Service port → target port.
    pub ports: BTreeMap<u16, u16>,
}

/// A consistent view of the mesh's workloads and services.
#[derive(Clone, Debug, Default)]
pub struct MeshMetadata {
    workloads_by_ip: HashMap<IpAddr, Arc<Workload>>,
    services_by_vip: HashMap<IpAddr, Arc<Service>>,
    services_by_hostname: HashMap<String, Arc<Service>>,
}

impl MeshMetadata {
    pub fn new(workloads: Vec<Workload>, services: Vec<Service>) -> Self {
        let mut metadata = Self::default();
        for workload in workloads {
            let workload = Arc::new(workload);
            for ip in &workload.ips {
                metadata.workloads_by_ip.insert(*ip, Arc::clone(&workload));
            }
        }
        for service in services {
            let service = Arc::new(service);
            for vip in &service.vips {
                metadata.services_by_vip.insert(*vip, Arc::clone(&service));
            }
            metadata
                .services_by_hostname
                .insert(service.hostname.clone(), service);
        }
        metadata
    }

    pub fn workload(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workloads_by_ip.get(&ip)
    }

    pub fn service_by_vip(&self, ip: IpAddr) -> Option<&Arc<Service>> {
        self.services_by_vip.get(&ip)
    }

    pub fn service_by_hostname(&self, hostname: &str) -> Option<&Arc<Service>> {
        self.services_by_hostname.get(hostname)
    }

    /// Pods behind a service.
    pub fn endpoints(&self, service: &Service) -> Vec<&Arc<Workload>> {
        let mut endpoints: Vec<_> = self
            .workloads_by_ip
            .values()
            .filter(|workload| workload.services.contains(&service.hostname))
            .collect();
        endpoints.sort_by(|a, b| a.pod.cmp(&b.pod));
        endpoints.dedup_by(|a, b| Arc::ptr_eq(a, b));
        endpoints
    }

    pub fn workload_count(&self) -> usize {
        self.workloads_by_ip
            .values()
            .map(|workload| Arc::as_ptr(workload) as usize)
            .collect::<std::collections::HashSet<_>>()
            .len()
    }
}

/// The current metadata, swapped whole by the source that keeps it up to date.
#[derive(Clone)]
pub struct MetadataStore {
    current: Arc<RwLock<Arc<MeshMetadata>>>,
    /// Whether the source delivered its first full view (a store made with `default` has
    /// nothing to wait for).
    synced: Arc<std::sync::atomic::AtomicBool>,
}

impl Default for MetadataStore {
    fn default() -> Self {
        Self {
            current: Arc::default(),
            synced: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }
}

impl MetadataStore {
    /// A store whose source has not loaded yet: flows wait a little for names
    /// (`FlowBuilder`) rather than go out nameless.
    pub fn awaiting_first_load() -> Self {
        let store = Self::default();
        store
            .synced
            .store(false, std::sync::atomic::Ordering::Relaxed);
        store
    }

    /// Whether the source has delivered its first full view.
    pub fn is_synced(&self) -> bool {
        self.synced.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> Arc<MeshMetadata> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    pub fn replace(&self, metadata: MeshMetadata) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(metadata);
        self.synced
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Where metadata comes from (`--metadata`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataSource {
    /// `static:FILE`
    Static(std::path::PathBuf),
    /// `kubernetes`
    Kubernetes,
    /// `none`
    None,
}

impl FromStr for MetadataSource {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "kubernetes" => Ok(Self::Kubernetes),
            "none" => Ok(Self::None),
            _ => match value.strip_prefix("static:") {
                Some(path) if !path.is_empty() => Ok(Self::Static(path.into())),
                _ => Err(format!(
                    "unknown metadata source {value:?}: expected static:FILE, kubernetes or none"
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_and_bad_ones_are_named() {
        assert_eq!(
            "static:/tmp/mesh.yaml".parse(),
            Ok(MetadataSource::Static("/tmp/mesh.yaml".into()))
        );
        assert_eq!("kubernetes".parse(), Ok(MetadataSource::Kubernetes));
        assert_eq!("none".parse(), Ok(MetadataSource::None));
        let error = "static:".parse::<MetadataSource>().unwrap_err();
        assert!(error.contains("static:FILE"), "{error}");
        assert!(
            "consul"
                .parse::<MetadataSource>()
                .unwrap_err()
                .contains("\"consul\"")
        );
    }

    #[test]
    fn identity_is_spiffe() {
        let workload = Workload {
            namespace: "shop".into(),
            service_account: "payments".into(),
            trust_domain: "cluster.local".into(),
            ..Workload::default()
        };
        assert_eq!(
            workload.identity(),
            "spiffe://cluster.local/ns/shop/sa/payments"
        );
    }
}
