//! `--metadata static:FILE`: ztunnel's local-config format (the `workloads:` and
//! `services:` of ztunnel's `LOCAL_XDS_PATH` file, e.g. istio/ztunnel
//! examples/localhost.yaml). Unknown keys (policies, waypoints…) are ignored.

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use serde::Deserialize;

use super::{MeshMetadata, Protocol, Service, Workload};

/// Why a static metadata file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read metadata file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The YAML does not have ztunnel's local-config shape.
    #[error("metadata file {path} is not a ztunnel local config: {source}")]
    Parse {
        path: String,
        source: serde_yaml_ng::Error,
    },
    /// An address did not parse.
    #[error("metadata file {path}: {what} {value:?} is not an IP address")]
    Address {
        path: String,
        what: &'static str,
        value: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LocalConfig {
    #[serde(default)]
    workloads: Vec<LocalWorkload>,
    #[serde(default)]
    services: Vec<LocalService>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LocalWorkload {
    name: String,
    namespace: String,
    #[serde(default = "default_service_account")]
    service_account: String,
    #[serde(default = "default_trust_domain")]
    trust_domain: String,
    #[serde(default)]
    workload_ips: Vec<String>,
    #[serde(default)]
    protocol: Protocol,
    #[serde(default)]
    node: String,
    /// ztunnel's name of the owning workload (the Deployment, …).
    #[serde(default)]
    workload_name: Option<String>,
    /// `"namespace/hostname"` → service port → target port.
    #[serde(default)]
    services: BTreeMap<String, BTreeMap<u16, u16>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LocalService {
    name: String,
    namespace: String,
    hostname: String,
    /// `"network/ip"` (ztunnel's form) or a bare IP.
    #[serde(default)]
    vips: Vec<String>,
    #[serde(default)]
    ports: BTreeMap<u16, u16>,
}

fn default_service_account() -> String {
    "default".into()
}

fn default_trust_domain() -> String {
    "cluster.local".into()
}

fn ip(path: &Path, what: &'static str, value: &str) -> Result<IpAddr> {
    // ztunnel writes VIPs as `network/ip`, with an empty network for the default one.
    let bare = value.rsplit('/').next().unwrap_or(value);
    bare.parse().map_err(|_| Error::Address {
        path: path.display().to_string(),
        what,
        value: value.to_owned(),
    })
}

/// Reads and converts a ztunnel local-config file.
pub fn load(path: &Path) -> Result<MeshMetadata> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<MeshMetadata> {
    let config: LocalConfig = serde_yaml_ng::from_str(text).map_err(|source| Error::Parse {
        path: path.display().to_string(),
        source,
    })?;
    let workloads = config
        .workloads
        .into_iter()
        .map(|w| {
            Ok(Workload {
                workload: w.workload_name.unwrap_or_else(|| w.name.clone()),
                pod: w.name,
                namespace: w.namespace,
                service_account: w.service_account,
                trust_domain: w.trust_domain,
                ips: w
                    .workload_ips
                    .iter()
                    .map(|value| ip(path, "workloadIps entry", value))
                    .collect::<Result<_>>()?,
                protocol: w.protocol,
                node: w.node,
                services: w
                    .services
                    .into_keys()
                    .map(|key| {
                        key.split_once('/')
                            .map_or(key.clone(), |(_, host)| host.to_owned())
                    })
                    .collect(),
            })
        })
        .collect::<Result<_>>()?;
    let services = config
        .services
        .into_iter()
        .map(|s| {
            Ok(Service {
                vips: s
                    .vips
                    .iter()
                    .map(|value| ip(path, "vips entry", value))
                    .collect::<Result<_>>()?,
                name: s.name,
                namespace: s.namespace,
                hostname: s.hostname,
                ports: s.ports,
            })
        })
        .collect::<Result<_>>()?;
    Ok(MeshMetadata::new(workloads, services))
}

/// How often `watch` looks at the file.
pub const RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Keeps `store` equal to the file: loads it now if it exists (a bad file is an error),
/// then reloads it whenever it changes. A file that does not exist yet (the testbed
/// writes it when its mesh is up) or a bad later version is logged and waited for; the
/// last good metadata stays in use.
pub async fn watch(path: std::path::PathBuf, store: super::MetadataStore) -> Result<()> {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut loaded = modified(&path);
    match loaded {
        Some(_) => store.replace(load(&path)?),
        None => {
            tracing::warn!(path = %path.display(), "metadata file does not exist yet; waiting for it")
        }
    }
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(RELOAD_INTERVAL);
        loop {
            ticks.tick().await;
            let now = modified(&path);
            if now.is_none() || now == loaded {
                continue;
            }
            loaded = now;
            match load(&path) {
                Ok(metadata) => {
                    tracing::info!(path = %path.display(), workloads = metadata.workload_count(), "metadata loaded");
                    store.replace(metadata);
                }
                Err(error) => tracing::warn!(%error, "keeping the previous metadata"),
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: &str = r#"
workloads:
- uid: cluster1//v1/Pod/shop/checkout-7d9f-abcde
  name: checkout-7d9f-abcde
  namespace: shop
  serviceAccount: checkout
  workloadIps: ["10.40.1.10"]
  protocol: HBONE
  node: node-a
  workloadName: checkout
  services:
    "shop/checkout.shop.svc.cluster.local":
      8080: 8080
- uid: cluster1//v1/Pod/legacy/batch
  name: batch
  namespace: legacy
  workloadIps: ["10.40.2.20"]
  protocol: TCP
  node: node-b
policies: []
services:
- name: checkout
  namespace: shop
  hostname: checkout.shop.svc.cluster.local
  vips: ["/10.96.0.10"]
  ports:
    8080: 8080
"#;

    #[test]
    fn reads_ztunnel_local_config() {
        let mesh = parse(Path::new("mesh.yaml"), MESH).unwrap();
        let checkout = mesh.workload("10.40.1.10".parse().unwrap()).unwrap();
        assert_eq!(checkout.workload, "checkout");
        assert_eq!(checkout.pod, "checkout-7d9f-abcde");
        assert_eq!(checkout.protocol, Protocol::Hbone);
        assert_eq!(
            checkout.identity(),
            "spiffe://cluster.local/ns/shop/sa/checkout"
        );
        assert_eq!(checkout.services, vec!["checkout.shop.svc.cluster.local"]);
        let batch = mesh.workload("10.40.2.20".parse().unwrap()).unwrap();
        assert_eq!(
            (batch.workload.as_str(), batch.protocol),
            ("batch", Protocol::Tcp)
        );
        assert_eq!(
            batch.identity(),
            "spiffe://cluster.local/ns/legacy/sa/default"
        );
        let service = mesh.service_by_vip("10.96.0.10".parse().unwrap()).unwrap();
        assert_eq!(service.name, "checkout");
        assert_eq!(service.ports.get(&8080), Some(&8080));
        assert_eq!(mesh.endpoints(service).len(), 1);
        assert_eq!(mesh.workload_count(), 2);
    }

    #[test]
    fn bad_addresses_and_shapes_are_named() {
        let error = parse(
            Path::new("m.yaml"),
            "workloads:\n- name: a\n  namespace: b\n  workloadIps: [\"10.0.0.300\"]\n",
        )
        .unwrap_err();
        assert!(error.to_string().contains("\"10.0.0.300\""), "{error}");
        let error = parse(Path::new("m.yaml"), "workloads: 3\n").unwrap_err();
        assert!(
            error.to_string().contains("not a ztunnel local config"),
            "{error}"
        );
    }
}
