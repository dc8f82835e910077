//! The test CA and workload certificates: SPIFFE URI SANs
//! (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`), TLS 1.3 only, ALPN `h2`, no SNI — the
//! shape of ztunnel's HBONE mTLS.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// Errors issuing certificates or building TLS configurations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rcgen could not make a key or a certificate.
    #[error("issuing certificate: {0}")]
    Issue(#[from] rcgen::Error),
    /// rustls rejected a configuration.
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// ALPN of HBONE.
pub const ALPN_H2: &[u8] = b"h2";

/// A CA made fresh for each mesh; nothing outside the mesh trusts it.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

/// A workload's certificate chain and key.
#[derive(Clone)]
pub struct WorkloadCert {
    pub identity: String,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl TestCa {
    pub fn generate() -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "nephilia-testbed");
        params
            .distinguished_name
            .push(DnType::CommonName, "nephilia testbed root CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let mut roots = RootCertStore::empty();
        roots.add(issuer.der().clone())?;
        Ok(Self {
            issuer,
            roots: Arc::new(roots),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        })
    }

    /// The CA certificate, PEM (written next to the metadata file for curious humans).
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Issues a leaf for one SPIFFE identity, usable as TLS client and server.
    pub fn issue(&self, identity: &str) -> Result<WorkloadCert> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = vec![SanType::URI(identity.try_into()?)];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(WorkloadCert {
            identity: identity.to_owned(),
            chain: vec![cert.der().clone(), self.issuer.der().clone()],
            key: Arc::new(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                key.serialize_der(),
            ))),
        })
    }

    /// Server side of HBONE (15008): presents the destination workload's certificate
    /// and requires a client certificate from the same CA.
    pub fn server_config(&self, cert: &WorkloadCert) -> Result<Arc<ServerConfig>> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .build()?;
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(cert.chain.clone(), cert.key.clone_key())?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }

    /// Client side of HBONE: presents the source workload's certificate and accepts the
    /// peer only if its URI SAN is the expected destination identity (no SNI, as ztunnel).
    pub fn client_config(
        &self,
        cert: &WorkloadCert,
        expected_peer: &str,
    ) -> Result<Arc<ClientConfig>> {
        let verifier = Arc::new(IdentityVerifier {
            roots: self.roots.clone(),
            algorithms: self.provider.signature_verification_algorithms,
            expected: expected_peer.to_owned(),
        });
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(cert.chain.clone(), cert.key.clone_key())?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        config.enable_sni = false;
        Ok(Arc::new(config))
    }
}

/// The first `spiffe://` URI SAN of a DER certificate.
pub fn spiffe_identity(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
            Some((*uri).to_owned())
        }
        _ => None,
    })
}

/// Verifies the chain against the test CA and the SPIFFE identity against the one the
/// caller expects; host names play no part (ztunnel sends no SNI either).
#[derive(Debug)]
struct IdentityVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    expected: String,
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        match spiffe_identity(end_entity) {
            Some(identity) if identity == self.expected => Ok(ServerCertVerified::assertion()),
            other => Err(rustls::Error::General(format!(
                "peer identity {other:?} is not the expected {}",
                self.expected
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is offered.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    const CLIENT: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
    const SERVER: &str = "spiffe://cluster.local/ns/shop/sa/checkout";

    #[test]
    fn issued_certificate_carries_the_spiffe_identity() {
        let ca = TestCa::generate().expect("CA");
        let cert = ca.issue(CLIENT).expect("leaf");
        assert_eq!(spiffe_identity(&cert.chain[0]).as_deref(), Some(CLIENT));
    }

    /// Runs one handshake over an in-memory pipe; returns what each side saw.
    async fn handshake(
        server_ca: &TestCa,
        client_ca: &TestCa,
        expected_server: &str,
    ) -> Result<
        (
            rustls::ProtocolVersion,
            Option<Vec<u8>>,
            Option<String>,
            Option<String>,
        ),
        String,
    > {
        let server_config = server_ca
            .server_config(&server_ca.issue(SERVER).unwrap())
            .unwrap();
        let client_config = client_ca
            .client_config(&client_ca.issue(CLIENT).unwrap(), expected_server)
            .unwrap();
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let tls = TlsAcceptor::from(server_config).accept(server_io).await;
            tls.map(|tls| {
                let (_, connection) = tls.get_ref();
                let identity = connection
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(spiffe_identity);
                (identity, connection.server_name().map(str::to_owned))
            })
            .map_err(|e| e.to_string())
        });
        let name = ServerName::IpAddress(std::net::Ipv4Addr::new(10, 0, 0, 1).into());
        let client = TlsConnector::from(client_config)
            .connect(name, client_io)
            .await
            .map_err(|e| e.to_string());
        let server = server.await.unwrap();
        // The side that refused tells why; the other only saw an alert.
        let client = client?;
        let (peer_identity, sni) = server?;
        let (_, connection) = client.get_ref();
        Ok((
            connection.protocol_version().unwrap(),
            connection.alpn_protocol().map(<[u8]>::to_vec),
            peer_identity,
            sni,
        ))
    }

    #[tokio::test]
    async fn hbone_handshake_is_tls13_h2_with_both_identities() {
        let ca = TestCa::generate().unwrap();
        let (version, alpn, client_identity, sni) = handshake(&ca, &ca, SERVER).await.unwrap();
        assert_eq!(version, rustls::ProtocolVersion::TLSv1_3);
        assert_eq!(sni, None, "ztunnel sends no SNI");
        assert_eq!(alpn.as_deref(), Some(ALPN_H2));
        assert_eq!(client_identity.as_deref(), Some(CLIENT));
    }

    #[tokio::test]
    async fn wrong_identity_or_foreign_ca_is_refused() {
        let ca = TestCa::generate().unwrap();
        let error = handshake(&ca, &ca, "spiffe://cluster.local/ns/shop/sa/other")
            .await
            .unwrap_err();
        assert!(error.contains("is not the expected"), "{error}");
        let foreign = TestCa::generate().unwrap();
        assert!(handshake(&ca, &foreign, SERVER).await.is_err());
    }
}
