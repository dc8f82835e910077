//! The network: one `fabric` namespace holding a bridge, one namespace per node plugged
//! into it, and one namespace per pod behind its node — like a CNI with routed /32 pods.
//!
//! Nothing is created in the host's own namespace: deleting the testbed's namespaces
//! removes every link, route and rule it made, which is what makes `down` reliable.

use std::net::Ipv4Addr;

use crate::netns::{self, Netns};
use crate::scenario::{PodSpec, Scenario};

pub use crate::netns::Error;
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Gateway address every pod routes through; the node answers it on each pod's veth
/// (the same trick Calico uses), so pods need no subnet of their own.
const POD_GATEWAY: &str = "169.254.1.1";

/// ztunnel's mark on its own sockets (`SO_MARK` 1337): its traffic is never redirected.
pub const PROXY_MARK: u32 = 0x539;
/// istio-cni's connmark for connections the proxy made with a spoofed source address.
pub const RETURN_CONNMARK: u32 = 0x111;
/// Routing table that delivers marked replies locally.
pub const RETURN_TABLE: u32 = 100;

/// Namespace names of one mesh, all beginning with its prefix.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn fabric(&self) -> String {
        format!("{}-fabric", self.prefix)
    }
    pub fn node(&self, node: &str) -> String {
        format!("{}-node-{node}", self.prefix)
    }
    pub fn pod(&self, pod: &str) -> String {
        format!("{}-pod-{pod}", self.prefix)
    }
    /// Every namespace the scenario needs, fabric first.
    pub fn all(&self, scenario: &Scenario) -> Vec<String> {
        let mut names = vec![self.fabric()];
        names.extend(scenario.nodes.iter().map(|node| self.node(&node.name)));
        names.extend(scenario.pods.iter().map(|pod| self.pod(&pod.name)));
        names
    }
}

/// Creates every namespace, link, route and rule of the scenario. On error the caller
/// deletes the namespaces (they are recorded in the state file before this runs).
pub fn create(scenario: &Scenario, names: &Names) -> Result<()> {
    let fabric = names.fabric();
    run_ip(&["netns", "add", &fabric])?;
    netns::ip(&fabric, &["link", "set", "lo", "up"])?;
    netns::ip(&fabric, &["link", "add", "br0", "type", "bridge"])?;
    netns::ip(&fabric, &["link", "set", "br0", "up"])?;

    for (index, node) in scenario.nodes.iter().enumerate() {
        let ns = names.node(&node.name);
        run_ip(&["netns", "add", &ns])?;
        let port = format!("n{index}");
        netns::ip(
            &fabric,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        netns::ip(&fabric, &["link", "set", &port, "master", "br0", "up"])?;
        netns::ip(&ns, &["link", "set", "lo", "up"])?;
        netns::ip(
            &ns,
            &["addr", "add", &format!("{}/24", node.ip), "dev", "eth0"],
        )?;
        netns::ip(&ns, &["link", "set", "eth0", "up"])?;
        // The node routes for its pods; reverse-path filtering would drop replies that
        // come back over another interface than the one the route points at.
        sysctls(
            &ns,
            &[
                ("net/ipv4/ip_forward", "1"),
                ("net/ipv4/conf/all/rp_filter", "0"),
                ("net/ipv4/conf/default/rp_filter", "0"),
            ],
        )?;
    }

    for (index, pod) in scenario.pods.iter().enumerate() {
        create_pod(names, pod, index)?;
    }

    // Routes to pods on other nodes go over the bridge to that node.
    for node in &scenario.nodes {
        let ns = names.node(&node.name);
        for pod in scenario.pods.iter().filter(|pod| pod.node != node.name) {
            let Some(owner) = scenario.nodes.iter().find(|n| n.name == pod.node) else {
                continue;
            };
            netns::ip(
                &ns,
                &[
                    "route",
                    "add",
                    &format!("{}/32", pod.ip),
                    "via",
                    &owner.ip.to_string(),
                ],
            )?;
        }
        service_rules(scenario, &ns)?;
    }
    Ok(())
}

fn create_pod(names: &Names, pod: &PodSpec, index: usize) -> Result<()> {
    let ns = names.pod(&pod.name);
    let node_ns = names.node(&pod.node);
    run_ip(&["netns", "add", &ns])?;
    let port = format!("p{index}");
    netns::ip(
        &node_ns,
        &[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ],
    )?;
    netns::ip(
        &node_ns,
        &["addr", "add", &format!("{POD_GATEWAY}/32"), "dev", &port],
    )?;
    netns::ip(&node_ns, &["link", "set", &port, "up"])?;
    netns::ip(
        &node_ns,
        &["route", "add", &format!("{}/32", pod.ip), "dev", &port],
    )?;
    sysctls(
        &node_ns,
        &[(&format!("net/ipv4/conf/{port}/rp_filter"), "0")],
    )?;

    netns::ip(&ns, &["link", "set", "lo", "up"])?;
    netns::ip(
        &ns,
        &["addr", "add", &format!("{}/32", pod.ip), "dev", "eth0"],
    )?;
    netns::ip(&ns, &["link", "set", "eth0", "up"])?;
    netns::ip(
        &ns,
        &["route", "add", POD_GATEWAY, "dev", "eth0", "scope", "link"],
    )?;
    netns::ip(
        &ns,
        &["route", "add", "default", "via", POD_GATEWAY, "dev", "eth0"],
    )?;
    sysctls(
        &ns,
        &[
            ("net/ipv4/conf/all/rp_filter", "0"),
            ("net/ipv4/conf/default/rp_filter", "0"),
        ],
    )?;
    if pod.enrolled {
        enroll(&ns)?;
    }
    Ok(())
}

/// The istio-cni in-pod rules (ambient mode): outbound TCP not from the proxy goes to
/// 15001, inbound TCP other than HBONE goes to 15006, and replies to connections the
/// proxy opened with the client's address as source are routed back to `lo` via connmark
/// 0x111 and table 100.
/// Source of the rule set: istio/istio `cni/pkg/iptables/iptables.go` (in-pod rules).
fn enroll(ns: &str) -> Result<()> {
    let mark = format!("{PROXY_MARK:#x}/0xfff");
    let connmark = format!("{RETURN_CONNMARK:#x}/0xfff");
    let rules = format!(
        "*mangle
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_PRERT -m mark --mark {mark} -j CONNMARK --set-xmark {connmark}
-A ISTIO_PRERT ! -d 127.0.0.1/32 -i lo -p tcp -j ACCEPT
-A ISTIO_OUTPUT -m connmark --mark {connmark} -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
COMMIT
*nat
:ISTIO_PRERT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A PREROUTING -j ISTIO_PRERT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m mark ! --mark {mark} -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -p tcp -m mark --mark {connmark} -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark {mark} -j REDIRECT --to-ports 15001
COMMIT
"
    );
    netns::iptables_restore(ns, &rules)?;
    let table = RETURN_TABLE.to_string();
    netns::ip(
        ns,
        &[
            "rule", "add", "fwmark", &connmark, "pref", "32764", "lookup", &table,
        ],
    )?;
    netns::ip(
        ns,
        &[
            "route",
            "add",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            &table,
        ],
    )?;
    Ok(())
}

/// kube-proxy's part: pods that are not enrolled reach a service VIP through DNAT on
/// their node (enrolled pods never get that far: their proxy resolves the VIP itself).
fn service_rules(scenario: &Scenario, node_ns: &str) -> Result<()> {
    let mut rules = String::from("*nat\n");
    for service in &scenario.services {
        let endpoints: Vec<Ipv4Addr> = scenario.endpoints(service).map(|pod| pod.ip).collect();
        for port in &service.ports {
            let count = endpoints.len();
            for (index, endpoint) in endpoints.iter().enumerate() {
                // Equal spread: the i-th rule takes 1/(n-i) of what the earlier ones left.
                let spread = if index + 1 < count {
                    format!(
                        "-m statistic --mode random --probability {:.5} ",
                        1.0 / (count - index) as f64
                    )
                } else {
                    String::new()
                };
                rules.push_str(&format!(
                    "-A PREROUTING -d {}/32 -p tcp --dport {} {spread}-j DNAT --to-destination {endpoint}:{}\n",
                    service.vip, port.port, port.target_port
                ));
            }
        }
    }
    rules.push_str("COMMIT\n");
    netns::iptables_restore(node_ns, &rules)
}

fn run_ip(args: &[&str]) -> Result<()> {
    netns::run("ip", args).map(drop)
}

/// Writes `/proc/sys/...` values from inside a namespace (net sysctls are per namespace).
fn sysctls(ns: &str, values: &[(&str, &str)]) -> Result<()> {
    let handle = Netns::open(ns)?;
    handle
        .run(|| {
            for (key, value) in values {
                std::fs::write(format!("/proc/sys/{key}"), value)?;
            }
            Ok::<_, std::io::Error>(())
        })?
        .map_err(|source| Error::Spawn {
            command: format!("sysctl in {ns}"),
            source,
        })
}

/// Deletes namespaces, most dependent first (pods, then nodes, then the fabric);
/// returns the names that could not be deleted.
pub fn delete(namespaces: &[String]) -> Vec<(String, Error)> {
    namespaces
        .iter()
        .rev()
        .filter_map(|name| netns::delete(name).err().map(|error| (name.clone(), error)))
        .collect()
}
