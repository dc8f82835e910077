//! `--metadata kubernetes`: this node's pods, and all services, namespaces and
//! ReplicaSets, kept current with kube-rs watchers and reflectors. Pods are watched with
//! a `spec.nodeName=` field selector: a node only needs to name its own pods, the graph
//! server joins them with what the other nodes report.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc, time::Duration};

use futures_util::{FutureExt as _, StreamExt as _};
use k8s_openapi::{
    api::{
        apps::v1::ReplicaSet,
        core::v1::{Namespace, Pod, Service as KubeService},
    },
    apimachinery::pkg::{apis::meta::v1::OwnerReference, util::intstr::IntOrString},
};
use kube::{
    Api, Client, Resource, ResourceExt as _,
    runtime::{WatchStreamExt as _, reflector, watcher},
};

use super::{MeshMetadata, MetadataStore, Protocol, Service, Workload};

/// Label that enrols a pod or a whole namespace in ambient mode (istio-cni).
const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
/// Annotation istio-cni sets on pods it redirected to ztunnel.
const REDIRECTION: &str = "ambient.istio.io/redirection";

/// Why the Kubernetes source failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable kubeconfig or in-cluster configuration.
    #[error("cannot configure a Kubernetes client: {0}")]
    Config(#[source] kube::Error),
    /// A watch failed and could not recover.
    #[error("watching {resource}: {source}")]
    Watch {
        resource: &'static str,
        source: watcher::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Cluster facts not in the objects themselves.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// This node's name (`NODE_NAME` from the downward API).
    pub node: String,
    pub trust_domain: String,
    pub cluster_domain: String,
}

/// Everything the reflectors hold, turned into the metadata the agent uses.
pub fn build(
    pods: &[Arc<Pod>],
    services: &[Arc<KubeService>],
    namespaces: &[Arc<Namespace>],
    replica_sets: &[Arc<ReplicaSet>],
    options: &ClusterOptions,
) -> MeshMetadata {
    let ambient_namespaces: Vec<&str> = namespaces
        .iter()
        .filter(|ns| {
            ns.labels()
                .get(DATAPLANE_MODE)
                .is_some_and(|mode| mode == "ambient")
        })
        .map(|ns| ns.name_any_ref())
        .collect();
    let services: Vec<(Service, BTreeMap<String, String>)> = services
        .iter()
        .filter_map(|service| convert_service(service, options))
        .collect();
    let workloads = pods
        .iter()
        .filter(|pod| {
            pod.status
                .as_ref()
                .and_then(|s| s.pod_ip.as_ref())
                .is_some()
        })
        .map(|pod| {
            let namespace = pod.namespace().unwrap_or_default();
            let labels = pod.labels();
            let pod_mode = labels.get(DATAPLANE_MODE).map(String::as_str);
            let redirected = pod
                .annotations()
                .get(REDIRECTION)
                .is_some_and(|value| value == "enabled");
            let enrolled = redirected
                || pod_mode == Some("ambient")
                || (pod_mode != Some("none") && ambient_namespaces.contains(&namespace.as_str()));
            let spec = pod.spec.as_ref();
            let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
            Workload {
                pod: pod.name_any(),
                workload: owner_workload(pod, replica_sets),
                service_account: spec
                    .and_then(|s| s.service_account_name.clone())
                    .unwrap_or_else(|| "default".into()),
                trust_domain: options.trust_domain.clone(),
                ips: pod_ips(pod),
                // Host-network pods share the node's address; ztunnel does not capture them.
                protocol: if enrolled && !host_network {
                    Protocol::Hbone
                } else {
                    Protocol::Tcp
                },
                node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
                services: services
                    .iter()
                    .filter(|(service, selector)| {
                        service.namespace == namespace
                            && !selector.is_empty()
                            && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
                    })
                    .map(|(service, _)| service.hostname.clone())
                    .collect(),
                namespace,
            }
        })
        .collect();
    MeshMetadata::new(workloads, services.into_iter().map(|(s, _)| s).collect())
}

trait NameRef {
    fn name_any_ref(&self) -> &str;
}

impl NameRef for Namespace {
    fn name_any_ref(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }
}

fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let status = pod.status.as_ref();
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| ips.iter().filter_map(|ip| ip.ip.parse().ok()).collect())
        .unwrap_or_default();
    if ips.is_empty()
        && let Some(ip) = status
            .and_then(|s| s.pod_ip.as_ref())
            .and_then(|ip| ip.parse().ok())
    {
        ips.push(ip);
    }
    ips
}

fn controller(references: Option<&Vec<OwnerReference>>) -> Option<&OwnerReference> {
    references?
        .iter()
        .find(|reference| reference.controller == Some(true))
}

/// The workload a pod belongs to: ReplicaSet → its Deployment, StatefulSet, DaemonSet,
/// Job → its CronJob, or the pod itself.
fn owner_workload(pod: &Pod, replica_sets: &[Arc<ReplicaSet>]) -> String {
    let Some(owner) = controller(pod.metadata.owner_references.as_ref()) else {
        return pod.name_any();
    };
    match owner.kind.as_str() {
        "ReplicaSet" => {
            let namespace = pod.namespace();
            let replica_set = replica_sets
                .iter()
                .find(|rs| rs.name_any() == owner.name && rs.namespace() == namespace);
            match replica_set.and_then(|rs| controller(rs.metadata.owner_references.as_ref())) {
                Some(deployment) => deployment.name.clone(),
                // Not in the cache yet: a Deployment's ReplicaSet is named
                // `<deployment>-<pod-template-hash>`.
                None => match pod.labels().get("pod-template-hash") {
                    Some(hash) => owner
                        .name
                        .strip_suffix(&format!("-{hash}"))
                        .unwrap_or(&owner.name)
                        .to_owned(),
                    None => owner.name.clone(),
                },
            }
        }
        // CronJobs name their Jobs `<cronjob>-<scheduled minute>`.
        "Job" => match owner.name.rsplit_once('-') {
            Some((cronjob, minute))
                if minute.len() >= 8 && minute.bytes().all(|b| b.is_ascii_digit()) =>
            {
                cronjob.to_owned()
            }
            _ => owner.name.clone(),
        },
        _ => owner.name.clone(),
    }
}

fn convert_service(
    service: &KubeService,
    options: &ClusterOptions,
) -> Option<(Service, BTreeMap<String, String>)> {
    let spec = service.spec.as_ref()?;
    let namespace = service.namespace().unwrap_or_default();
    let name = service.name_any();
    let vips = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .fold(Vec::new(), |mut vips: Vec<IpAddr>, ip| {
            if !vips.contains(&ip) {
                vips.push(ip);
            }
            vips
        });
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|port| {
            let service_port = u16::try_from(port.port).ok()?;
            let target = match &port.target_port {
                Some(IntOrString::Int(target)) => u16::try_from(*target).ok()?,
                // Named target ports resolve per pod; the service port is the best guess.
                _ => service_port,
            };
            Some((service_port, target))
        })
        .collect();
    Some((
        Service {
            hostname: format!("{name}.{namespace}.svc.{}", options.cluster_domain),
            name,
            namespace,
            vips,
            ports,
        },
        spec.selector.clone().unwrap_or_default(),
    ))
}

/// Connects with the usual kubeconfig / in-cluster configuration.
pub async fn client() -> Result<Client> {
    Client::try_default().await.map_err(Error::Config)
}

/// Keeps `store` current until a watch fails for good. Rebuilds at most every
/// `REBUILD_INTERVAL`, so a burst of pod events costs one rebuild.
pub async fn watch(client: Client, options: ClusterOptions, store: MetadataStore) -> Result<()> {
    const REBUILD_INTERVAL: Duration = Duration::from_millis(200);
    let (pods, pods_writer) = reflector::store::<Pod>();
    let (services, services_writer) = reflector::store::<KubeService>();
    let (namespaces, namespaces_writer) = reflector::store::<Namespace>();
    let (replica_sets, replica_sets_writer) = reflector::store::<ReplicaSet>();

    // Managed fields are large and never read: dropped before they reach the cache.
    let pod_events = watcher(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields(&format!("spec.nodeName={}", options.node)),
    )
    .default_backoff()
    .modify(|pod| pod.managed_fields_mut().clear())
    .reflect(pods_writer)
    .map(|event| {
        event.map(|_| ()).map_err(|source| Error::Watch {
            resource: "pods",
            source,
        })
    });
    let service_events = watcher(
        Api::<KubeService>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|service| service.managed_fields_mut().clear())
    .reflect(services_writer)
    .map(|event| {
        event.map(|_| ()).map_err(|source| Error::Watch {
            resource: "services",
            source,
        })
    });
    let namespace_events = watcher(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|namespace| namespace.managed_fields_mut().clear())
    .reflect(namespaces_writer)
    .map(|event| {
        event.map(|_| ()).map_err(|source| Error::Watch {
            resource: "namespaces",
            source,
        })
    });
    let replica_set_events = watcher(Api::<ReplicaSet>::all(client), watcher::Config::default())
        .default_backoff()
        .modify(|rs| {
            rs.managed_fields_mut().clear();
            // Only the owner references are read.
            rs.spec = None;
            rs.status = None;
        })
        .reflect(replica_sets_writer)
        .map(|event| {
            event.map(|_| ()).map_err(|source| Error::Watch {
                resource: "replicasets",
                source,
            })
        });

    let mut events = futures_util::stream::select_all([
        pod_events.boxed(),
        service_events.boxed(),
        namespace_events.boxed(),
        replica_set_events.boxed(),
    ]);
    let mut rebuild = tokio::time::interval(REBUILD_INTERVAL);
    let mut dirty = false;
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(())) => dirty = true,
                // The backoff retries transient failures; log and carry on.
                Some(Err(error)) => tracing::warn!(%error, "kubernetes watch error"),
                None => return Ok(()),
            },
            _ = rebuild.tick(), if dirty => {
                // The first view waits for every initial list: flows wait for it rather
                // than go out half named.
                let listed = [
                    pods.wait_until_ready().now_or_never(),
                    services.wait_until_ready().now_or_never(),
                    namespaces.wait_until_ready().now_or_never(),
                    replica_sets.wait_until_ready().now_or_never(),
                ];
                if !store.is_synced() && !listed.iter().all(|l| matches!(l, Some(Ok(())))) {
                    continue;
                }
                dirty = false;
                let metadata = build(
                    &pods.state(),
                    &services.state(),
                    &namespaces.state(),
                    &replica_sets.state(),
                    &options,
                );
                tracing::debug!(workloads = metadata.workload_count(), "kubernetes metadata rebuilt");
                store.replace(metadata);
            }
        }
    }
}
