//! Graph nodes and the levels the graph is drawn at.
use std::fmt;

use serde::Serialize;

/// A node of the topology. Ids are `workload:<ns>:<name>`, `service:<ns>:<hostname>`,
/// `namespace:<ns>` and `external:<ip>` — no `/`, so they fit in one URL path segment.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeKey {
    Workload {
        namespace: String,
        name: String,
    },
    /// A service whose backing workload is unknown, or the service level's node.
    Service {
        namespace: String,
        hostname: String,
    },
    Namespace {
        name: String,
    },
    /// An endpoint no agent could identify, keyed by ip.
    External {
        address: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    Workload,
    Service,
    Namespace,
    External,
}

impl NodeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Workload => "workload",
            Self::Service => "service",
            Self::Namespace => "namespace",
            Self::External => "external",
        }
    }
}

impl NodeKey {
    pub fn kind(&self) -> NodeKind {
        match self {
            Self::Workload { .. } => NodeKind::Workload,
            Self::Service { .. } => NodeKind::Service,
            Self::Namespace { .. } => NodeKind::Namespace,
            Self::External { .. } => NodeKind::External,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Self::Workload { name, .. } | Self::Namespace { name } => name,
            Self::Service { hostname, .. } => hostname,
            Self::External { address } => address,
        }
    }

    /// The namespace, if the node belongs to one.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Self::Workload { namespace, .. } | Self::Service { namespace, .. } => Some(namespace)
                .filter(|ns| !ns.is_empty())
                .map(String::as_str),
            Self::Namespace { name } => Some(name),
            Self::External { .. } => None,
        }
    }

    /// Parses an id made by `Display`.
    pub fn parse(id: &str) -> Option<Self> {
        let (kind, rest) = id.split_once(':')?;
        let two = || {
            rest.split_once(':')
                .filter(|(ns, name)| !ns.contains(':') && !name.is_empty())
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
        };
        match kind {
            "workload" => two().map(|(namespace, name)| Self::Workload { namespace, name }),
            "service" => two().map(|(namespace, hostname)| Self::Service {
                namespace,
                hostname,
            }),
            "namespace" if !rest.is_empty() && !rest.contains(':') => Some(Self::Namespace {
                name: rest.to_owned(),
            }),
            "external" if !rest.is_empty() => Some(Self::External {
                address: rest.to_owned(),
            }),
            _ => None,
        }
    }
}

impl fmt::Display for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Workload { namespace, name } => write!(f, "workload:{namespace}:{name}"),
            Self::Service {
                namespace,
                hostname,
            } => write!(f, "service:{namespace}:{hostname}"),
            Self::Namespace { name } => write!(f, "namespace:{name}"),
            Self::External { address } => write!(f, "external:{address}"),
        }
    }
}

/// The level the graph is drawn at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Workload,
    Service,
    Namespace,
}

impl Level {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "workload" => Some(Self::Workload),
            "service" => Some(Self::Service),
            "namespace" => Some(Self::Namespace),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for key in [
            NodeKey::Workload {
                namespace: "shop".into(),
                name: "frontend".into(),
            },
            NodeKey::Service {
                namespace: "shop".into(),
                hostname: "payments.shop.svc.cluster.local".into(),
            },
            NodeKey::Namespace {
                name: "shop".into(),
            },
            NodeKey::External {
                address: "fd00::1".into(),
            },
        ] {
            assert_eq!(NodeKey::parse(&key.to_string()), Some(key));
        }
        assert_eq!(NodeKey::parse("pod:x"), None);
        assert_eq!(NodeKey::parse("workload:shop"), None);
    }
}
