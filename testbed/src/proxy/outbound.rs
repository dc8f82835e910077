//! 15001: connections the pod's apps make, captured by the REDIRECT rule.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use super::pool::{PoolKey, Sender};
use super::{
    CONNECT_TIMEOUT, Destination, Direction, EnrolledPod, FlowPath, HBONE_PORT, Shared,
    TunnelEvent, socket,
};

/// Why an outbound tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// TCP connect to the peer's 15008 (or to a plain destination) failed.
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    /// TLS handshake with the peer failed (identity mismatch included).
    #[error("tls with {0}: {1}")]
    Tls(SocketAddr, std::io::Error),
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Identity(#[from] crate::identity::Error),
    /// HTTP/2 failed (handshake or stream).
    #[error("http/2: {0}")]
    Http(#[from] hyper::Error),
}

pub(crate) async fn serve(shared: Arc<Shared>, pod: Arc<EnrolledPod>, listener: TcpListener) {
    loop {
        let Ok((app, peer)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        let pod = pod.clone();
        tokio::spawn(async move {
            if let Err(error) = handle(&shared, &pod, app, peer).await {
                tracing::debug!(pod = %pod.spec.name, %error, "outbound flow failed");
            }
        });
    }
}

async fn handle(
    shared: &Shared,
    pod: &EnrolledPod,
    app: TcpStream,
    peer: SocketAddr,
) -> Result<(), Error> {
    // On any error below the app's connection is dropped, i.e. closed: nothing more
    // useful can be told to it.
    let original = socket::original_destination(&app).map_err(|e| Error::Connect(peer, e))?;
    match shared.directory.destination(original) {
        Destination::Hbone { identity, target } => {
            hbone(shared, pod, app, peer, identity, target).await
        }
        Destination::Tcp { target } => plain(shared, pod, app, peer, target, FlowPath::Tcp).await,
        Destination::Passthrough { target } => {
            plain(shared, pod, app, peer, target, FlowPath::Passthrough).await
        }
    }
}

/// Plain TCP from the pod (marked, so not captured again), as ztunnel does for
/// destinations that are not enrolled and for passthrough.
async fn plain(
    shared: &Shared,
    pod: &EnrolledPod,
    mut app: TcpStream,
    peer: SocketAddr,
    target: SocketAddr,
    path: FlowPath,
) -> Result<(), Error> {
    let event = |status| TunnelEvent {
        node: shared.node.clone(),
        pod: pod.spec.name.clone(),
        direction: Direction::Outbound,
        path,
        client: peer,
        target,
        source_identity: Some(pod.identity.clone()),
        destination_identity: None,
        status,
        reused: false,
    };
    let mut upstream = match socket::connect(&pod.netns, target, None, CONNECT_TIMEOUT).await {
        Ok(upstream) => upstream,
        Err(error) => {
            shared.record(event(503));
            return Err(Error::Connect(target, error));
        }
    };
    shared.record(event(200));
    if tokio::io::copy_bidirectional(&mut app, &mut upstream)
        .await
        .is_err()
    {
        socket::reset_on_close(&app);
    }
    Ok(())
}

async fn hbone(
    shared: &Shared,
    pod: &EnrolledPod,
    mut app: TcpStream,
    peer: SocketAddr,
    destination_identity: String,
    target: SocketAddr,
) -> Result<(), Error> {
    let key = PoolKey {
        source_identity: pod.identity.clone(),
        destination_identities: vec![destination_identity.clone()],
        source: pod.spec.ip.into(),
        destination: SocketAddr::new(target.ip(), HBONE_PORT),
    };
    let destination = key.destination;
    let event = |status: StatusCode, reused: bool| TunnelEvent {
        node: shared.node.clone(),
        pod: pod.spec.name.clone(),
        direction: Direction::Outbound,
        path: FlowPath::Hbone,
        client: peer,
        target,
        source_identity: Some(pod.identity.clone()),
        destination_identity: Some(destination_identity.clone()),
        status: status.as_u16(),
        reused,
    };
    let checkout = shared
        .pool
        .checkout(key, || {
            dial(shared, pod, destination, &destination_identity)
        })
        .await;
    let checkout = match checkout {
        Ok(checkout) => checkout,
        Err(error) => {
            // No HBONE connection (peer blackholed, TLS refused…): the flow fails as
            // an upstream connect failure would.
            shared.record(event(StatusCode::SERVICE_UNAVAILABLE, false));
            return Err(error);
        }
    };
    let mut sender = checkout.sender;
    let request = Request::builder()
        .method(Method::CONNECT)
        .uri(target.to_string())
        .header("baggage", shared.directory.baggage(&pod.spec))
        .header("forwarded", format!("for={}", peer.ip()))
        .header("traceparent", random_traceparent())
        .body(Empty::<Bytes>::new())
        .expect("CONNECT request is well-formed");
    shared.counters.streams_sent.fetch_add(1, Ordering::Relaxed);
    let response = sender.send_request(request).await;
    let status = match &response {
        Ok(response) => response.status(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    shared.record(event(status, checkout.reused));
    let response = response?;
    if status != StatusCode::OK {
        // ztunnel closes the app's connection on a non-200; the app never got a byte.
        return Ok(());
    }
    // Only now are the app's bytes read: ztunnel does not read before the 200.
    let upgraded = hyper::upgrade::on(response).await?;
    let mut tunnel = TokioIo::new(upgraded);
    if tokio::io::copy_bidirectional(&mut app, &mut tunnel)
        .await
        .is_err()
    {
        // The stream was reset (upstream killed): pass the reset on to the app.
        socket::reset_on_close(&app);
    }
    drop(checkout.lease);
    Ok(())
}

/// Opens one HBONE connection: TCP from the source pod to `peer:15008` with the mark,
/// TLS 1.3 with the source workload's certificate, ALPN h2, then HTTP/2.
async fn dial(
    shared: &Shared,
    pod: &EnrolledPod,
    peer: SocketAddr,
    expected_identity: &str,
) -> Result<Sender, Error> {
    let tcp = socket::connect(&pod.netns, peer, None, CONNECT_TIMEOUT)
        .await
        .map_err(|error| Error::Connect(peer, error))?;
    let config = shared.ca.client_config(&pod.cert, expected_identity)?;
    let server_name = rustls::pki_types::ServerName::IpAddress(peer.ip().into());
    let tls = TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|error| Error::Tls(peer, error))?;
    shared.counters.hbone_dialed.fetch_add(1, Ordering::Relaxed);
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tls))
        .await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "hbone connection ended");
        }
    });
    Ok(sender)
}

/// ztunnel sends a fresh random `traceparent` on every CONNECT.
fn random_traceparent() -> String {
    let mut rng = rand::rng();
    let trace: u128 = rng.random::<u128>().max(1);
    let span: u64 = rng.random::<u64>().max(1);
    format!("00-{trace:032x}-{span:016x}-00")
}
