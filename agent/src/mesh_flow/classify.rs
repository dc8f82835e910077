//! What part a socket plays in ambient mode's data path, from its ports, mark and role —
//! facts ztunnel shows (shared/DESIGN.md), never a process name.

use std::net::{IpAddr, SocketAddr};

use crate::record::ConnectionRole;

/// ztunnel's ports and socket mark; configurable for meshes that change them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeshPorts {
    /// Outbound capture listener (istio-cni nat OUTPUT → REDIRECT).
    pub outbound: u16,
    /// Inbound plaintext capture listener (nat PREROUTING → REDIRECT).
    pub inbound_plaintext: u16,
    /// HBONE listener (mTLS + HTTP/2 CONNECT).
    pub hbone: u16,
    /// `SO_MARK` on the proxy's sockets and the mask istio-cni matches it with.
    pub proxy_mark: u32,
    pub mark_mask: u32,
}

impl Default for MeshPorts {
    fn default() -> Self {
        Self {
            outbound: 15001,
            inbound_plaintext: 15006,
            hbone: 15008,
            proxy_mark: 0x539,
            mark_mask: 0xfff,
        }
    }
}

/// A socket's part in the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketKind {
    /// The proxy's accepted end of an app's captured outbound connection (`:15001`).
    OutboundCapture,
    /// The proxy's accepted end of a plaintext inbound connection (`:15006`).
    InboundPlaintextCapture,
    /// The proxy's HBONE connection to a peer's `:15008`.
    TunnelClient,
    /// An HBONE connection the proxy accepted on `:15008`.
    TunnelServer,
    /// The destination proxy's connection to its app, from the original client's IP.
    InboundDelivery,
    /// The source proxy's plain TCP to a destination outside HBONE.
    ProxyUpstream,
    /// An application's socket.
    App,
}

/// What the classifier needs to know about a socket.
pub struct SocketFacts {
    pub role: ConnectionRole,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub mark: u32,
    /// The pod IP of the socket's network namespace, if known.
    pub pod_ip: Option<IpAddr>,
}

impl MeshPorts {
    pub fn is_proxy_mark(&self, mark: u32) -> bool {
        mark & self.mark_mask == self.proxy_mark & self.mark_mask
    }

    pub fn classify(&self, socket: &SocketFacts) -> SocketKind {
        let proxy = self.is_proxy_mark(socket.mark);
        match socket.role {
            ConnectionRole::Server if socket.local.port() == self.outbound => {
                SocketKind::OutboundCapture
            }
            ConnectionRole::Server if socket.local.port() == self.inbound_plaintext => {
                SocketKind::InboundPlaintextCapture
            }
            ConnectionRole::Server if socket.local.port() == self.hbone => SocketKind::TunnelServer,
            ConnectionRole::Client if socket.remote.port() == self.hbone => {
                SocketKind::TunnelClient
            }
            // The delivery goes to this pod's own address from a spoofed source; a plain
            // upstream leaves from this pod's address.
            ConnectionRole::Client if proxy => match socket.pod_ip {
                Some(pod_ip) if socket.remote.ip() == pod_ip => SocketKind::InboundDelivery,
                Some(_) => SocketKind::ProxyUpstream,
                None if socket.local.ip() == socket.remote.ip() => SocketKind::ProxyUpstream,
                None => SocketKind::InboundDelivery,
            },
            _ => SocketKind::App,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(role: ConnectionRole, local: &str, remote: &str, mark: u32) -> SocketFacts {
        SocketFacts {
            role,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            mark,
            pod_ip: Some("10.244.1.10".parse().unwrap()),
        }
    }

    #[test]
    fn ztunnel_in_pod_sockets_are_recognised() {
        use ConnectionRole::{Client, Server};
        let ports = MeshPorts::default();
        let kind = |role, local, remote, mark| ports.classify(&facts(role, local, remote, mark));
        assert_eq!(
            kind(Server, "127.0.0.1:15001", "10.244.1.10:40000", 0x539),
            SocketKind::OutboundCapture
        );
        assert_eq!(
            kind(Server, "10.244.1.10:15006", "10.0.0.9:5000", 0x539),
            SocketKind::InboundPlaintextCapture
        );
        assert_eq!(
            kind(Server, "10.244.1.10:15008", "10.244.2.20:41000", 0x539),
            SocketKind::TunnelServer
        );
        assert_eq!(
            kind(Client, "10.244.1.10:41000", "10.244.2.20:15008", 0x539),
            SocketKind::TunnelClient
        );
        assert_eq!(
            kind(Client, "10.244.2.20:42000", "10.244.1.10:8080", 0x539),
            SocketKind::InboundDelivery
        );
        assert_eq!(
            kind(Client, "10.244.1.10:43000", "93.184.216.34:443", 0x539),
            SocketKind::ProxyUpstream
        );
        assert_eq!(
            kind(Client, "10.244.1.10:44000", "10.96.0.10:80", 0),
            SocketKind::App
        );
        assert_eq!(
            kind(Server, "10.244.1.10:8080", "10.244.2.20:42000", 0),
            SocketKind::App
        );
        // Only the low 12 bits are istio-cni's.
        assert!(ports.is_proxy_mark(0x1539));
        assert!(!ports.is_proxy_mark(0x111));
    }
}
