//! Which node an agent may report for. With mTLS on, every agent holds a certificate of its
//! own that names its node; the stream is bound to that node, and a batch, record or
//! heartbeat naming another one is refused, so one node's key cannot speak for the others.
use x509_parser::extensions::GeneralName;

use crate::record::excerpt;

/// Why an agent's client certificate does not name exactly one node.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// The leaf certificate could not be parsed (the TLS layer accepted it, so this is rare).
    #[error("the client certificate cannot be parsed: {0}")]
    Unparsable(String),
    /// Neither a DNS subject alternative name nor a common name.
    #[error(
        "the client certificate names no node: an agent's certificate carries its node name as its one DNS name (or, without one, as its common name)"
    )]
    NoNodeName,
    /// More than one DNS name: a certificate shared by several nodes, or the server's own.
    /// `names` shows the first four, each cut short.
    #[error(
        "the client certificate names {count} DNS names ({names}); an agent's certificate names exactly its node"
    )]
    SeveralNames { count: usize, names: String },
}

/// The node named by the client certificate of an agent's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    node: String,
}

impl NodeIdentity {
    /// The node of the leaf certificate the client presented (DER, first in the chain as
    /// TLS sends it): its one DNS subject alternative name, else its subject common name.
    pub fn from_certificate(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
        let dns_names: Vec<&str> = san
            .iter()
            .flat_map(|ext| ext.value.general_names.iter())
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some(*dns),
                _ => None,
            })
            .collect();
        let node = match dns_names.as_slice() {
            [one] => *one,
            [] => cert
                .subject()
                .iter_common_name()
                .find_map(|cn| cn.as_str().ok())
                .ok_or(IdentityError::NoNodeName)?,
            several => {
                return Err(IdentityError::SeveralNames {
                    count: several.len(),
                    names: several
                        .iter()
                        .take(4)
                        .map(|name| excerpt(name))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        };
        if node.is_empty() {
            return Err(IdentityError::NoNodeName);
        }
        Ok(Self {
            node: node.to_owned(),
        })
    }

    /// The node this stream may report for.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether `claimed` (a batch's, record's or heartbeat's `node`) is this stream's node.
    pub fn allows(&self, claimed: &str) -> bool {
        self.node == claimed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(dns_names: &[&str], common_name: Option<&str>) -> Vec<u8> {
        let names = dns_names
            .iter()
            .map(|n| (*n).to_owned())
            .collect::<Vec<_>>();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = common_name {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_one_dns_name_names_the_node() {
        let identity =
            NodeIdentity::from_certificate(&certificate(&["node-a"], Some("ignored"))).unwrap();
        assert_eq!(identity.node(), "node-a");
        assert!(identity.allows("node-a"));
        assert!(!identity.allows("node-b"));
        assert!(!identity.allows("node-a "));
    }

    #[test]
    fn without_a_dns_name_the_common_name_names_the_node() {
        let identity = NodeIdentity::from_certificate(&certificate(&[], Some("node-b"))).unwrap();
        assert_eq!(identity.node(), "node-b");
    }

    #[test]
    fn a_certificate_naming_no_node_or_several_is_refused() {
        assert_eq!(
            NodeIdentity::from_certificate(&certificate(&[], None)),
            Err(IdentityError::NoNodeName)
        );
        let err = NodeIdentity::from_certificate(&certificate(
            &["node-a", "nephilia-server.nephilia-system.svc"],
            None,
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the client certificate names 2 DNS names (\"node-a\", \"nephilia-server.nephilia-system.svc\"); an agent's certificate names exactly its node"
        );
        assert!(matches!(
            NodeIdentity::from_certificate(b"not DER"),
            Err(IdentityError::Unparsable(_))
        ));
    }
}
