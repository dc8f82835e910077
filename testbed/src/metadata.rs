//! The mesh as a static metadata file in ztunnel's local-config shape (`workloads:` and
//! `services:`), which Nephilia's agent reads as its static metadata source.
//! Shape: istio/ztunnel `src/state/workload.rs` / `LocalConfig` (camelCase fields,
//! VIPs as `network/ip`, ports as `port: targetPort`, workload services keyed
//! `namespace/hostname`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::scenario::Scenario;

/// Errors writing the metadata file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be written.
    #[error("writing metadata {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    /// Serialization failed.
    #[error("serializing metadata: {0}")]
    Serialize(#[from] serde_yaml_ng::Error),
}

/// ztunnel's local config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalConfig {
    pub workloads: Vec<LocalWorkload>,
    pub services: Vec<LocalService>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalWorkload {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub trust_domain: String,
    pub workload_name: String,
    pub workload_type: String,
    pub workload_ips: Vec<String>,
    /// `HBONE` for enrolled pods, `TCP` for the others.
    pub protocol: String,
    pub node: String,
    pub cluster_id: String,
    /// `namespace/hostname` → { service port: target port }.
    pub services: BTreeMap<String, BTreeMap<u16, u16>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalService {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    /// `network/ip`; the testbed has one unnamed network.
    pub vips: Vec<String>,
    /// service port → target port.
    pub ports: BTreeMap<u16, u16>,
}

impl LocalConfig {
    pub fn from_scenario(scenario: &Scenario) -> Self {
        let workloads = scenario
            .pods
            .iter()
            .map(|pod| {
                let services = scenario
                    .services
                    .iter()
                    .filter(|service| scenario.endpoints(service).any(|p| p.name == pod.name))
                    .map(|service| {
                        let ports = service
                            .ports
                            .iter()
                            .map(|p| (p.port, p.target_port))
                            .collect();
                        (
                            format!("{}/{}", service.namespace, service.hostname()),
                            ports,
                        )
                    })
                    .collect();
                LocalWorkload {
                    uid: format!("{}//Pod/{}/{}", scenario.cluster, pod.namespace, pod.name),
                    name: pod.name.clone(),
                    namespace: pod.namespace.clone(),
                    service_account: pod.service_account.clone(),
                    trust_domain: scenario.trust_domain.clone(),
                    workload_name: pod.workload_name().to_owned(),
                    workload_type: "deployment".to_owned(),
                    workload_ips: vec![pod.ip.to_string()],
                    protocol: if pod.enrolled { "HBONE" } else { "TCP" }.to_owned(),
                    node: pod.node.clone(),
                    cluster_id: scenario.cluster.clone(),
                    services,
                }
            })
            .collect();
        let services = scenario
            .services
            .iter()
            .map(|service| LocalService {
                name: service.name.clone(),
                namespace: service.namespace.clone(),
                hostname: service.hostname(),
                vips: vec![format!("/{}", service.vip)],
                ports: service
                    .ports
                    .iter()
                    .map(|p| (p.port, p.target_port))
                    .collect(),
            })
            .collect();
        Self {
            workloads,
            services,
        }
    }

    pub fn to_yaml(&self) -> Result<String, Error> {
        Ok(serde_yaml_ng::to_string(self)?)
    }

    pub fn write(&self, path: &Path) -> Result<(), Error> {
        let write_error = |source| Error::Write {
            path: path.display().to_string(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(write_error)?;
        }
        std::fs::write(path, self.to_yaml()?).map_err(write_error)
    }
}
