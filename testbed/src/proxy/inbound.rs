//! 15008 (HBONE) and 15006 (plaintext): connections to the pod, forwarded to its app
//! with the client's address as source.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::{
    CONNECT_TIMEOUT, Direction, EnrolledPod, FlowPath, MAX_STREAMS_PER_CONNECTION, Shared,
    TunnelEvent, socket,
};
use crate::identity::spiffe_identity;

pub(crate) async fn serve_hbone(
    shared: Arc<Shared>,
    pod: Arc<EnrolledPod>,
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) {
    let acceptor = TlsAcceptor::from(config);
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        let pod = pod.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            // Kill-tunnel fault: the whole HBONE connection is reset (RST on its TCP), so
            // the caller's proxy sees an error rather than the clean end of stream that a
            // cancelled HTTP/2 stream looks like, and resets the caller's connection.
            let mut kill = pod.kill.subscribe();
            let control = tcp
                .as_fd()
                .try_clone_to_owned()
                .ok()
                .map(socket2::Socket::from);
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(error) => {
                    tracing::debug!(pod = %pod.spec.name, %peer, %error, "hbone handshake failed");
                    return;
                }
            };
            shared
                .counters
                .hbone_accepted
                .fetch_add(1, Ordering::Relaxed);
            let source_identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(spiffe_identity);
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                let pod = pod.clone();
                let source_identity = source_identity.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        connect(shared, pod, request, peer, source_identity).await,
                    )
                }
            });
            let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION as u32)
                .serve_connection(TokioIo::new(tls), service);
            tokio::select! {
                result = connection => {
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "hbone connection ended");
                    }
                }
                _ = kill.changed() => {
                    if let Some(control) = &control {
                        let _ = control.set_linger(Some(std::time::Duration::ZERO));
                    }
                }
            }
            // The duplicate descriptor is the last one: closing it sends the RST.
            drop(control);
        });
    }
}

fn status(code: StatusCode) -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = code;
    response
}

/// One CONNECT: 400 if malformed, 503 if the target is not this pod, 401 if a policy
/// denies the caller, 503 if the app cannot be reached, else 200 and the stream is
/// joined to the upstream socket. The 200 is sent only after the upstream connect.
async fn connect(
    shared: Arc<Shared>,
    pod: Arc<EnrolledPod>,
    mut request: Request<Incoming>,
    peer: SocketAddr,
    source_identity: Option<String>,
) -> Response<Empty<Bytes>> {
    shared
        .counters
        .streams_received
        .fetch_add(1, Ordering::Relaxed);
    let target = request
        .uri()
        .authority()
        .and_then(|authority| authority.as_str().parse::<SocketAddr>().ok());
    let client_ip = forwarded_for(&request).unwrap_or(peer.ip());
    let client = SocketAddr::new(client_ip, 0);
    let record = |target: SocketAddr, code: StatusCode| TunnelEvent {
        node: shared.node.clone(),
        pod: pod.spec.name.clone(),
        direction: Direction::Inbound,
        path: FlowPath::Hbone,
        client,
        target,
        source_identity: source_identity.clone(),
        destination_identity: Some(pod.identity.clone()),
        status: code.as_u16(),
        reused: false,
    };
    let (Method::CONNECT, Some(target)) = (request.method().clone(), target) else {
        let target = SocketAddr::new(IpAddr::from(pod.spec.ip), 0);
        shared.record(record(target, StatusCode::BAD_REQUEST));
        return status(StatusCode::BAD_REQUEST);
    };
    // In-pod mode each pod's 15008 serves that pod only: another address is unknown.
    if target.ip() != IpAddr::from(pod.spec.ip) {
        shared.record(record(target, StatusCode::SERVICE_UNAVAILABLE));
        return status(StatusCode::SERVICE_UNAVAILABLE);
    }
    let denied = source_identity
        .as_deref()
        .is_none_or(|identity| shared.denied(identity, &pod.spec));
    if denied {
        shared.record(record(target, StatusCode::UNAUTHORIZED));
        return status(StatusCode::UNAUTHORIZED);
    }
    let upstream = match socket::connect(&pod.netns, target, Some(client_ip), CONNECT_TIMEOUT).await
    {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::debug!(pod = %pod.spec.name, %target, %error, "upstream connect failed");
            shared.record(record(target, StatusCode::SERVICE_UNAVAILABLE));
            return status(StatusCode::SERVICE_UNAVAILABLE);
        }
    };
    shared.record(record(target, StatusCode::OK));
    let upgrade = hyper::upgrade::on(&mut request);
    let mut kill = pod.kill.subscribe();
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let mut tunnel = TokioIo::new(upgraded);
        let mut upstream = upstream;
        tokio::select! {
            result = tokio::io::copy_bidirectional(&mut tunnel, &mut upstream) => {
                if result.is_err() {
                    socket::reset_on_close(&upstream);
                }
            }
            _ = kill.changed() => {
                // Kill-tunnel fault: RST to the app. The stream is left to die with its
                // connection (reset by `serve_hbone`): dropping it first would send a
                // CANCEL, which the caller's side reads as a clean end of stream.
                socket::reset_on_close(&upstream);
                drop(upstream);
                let _ = tokio::io::copy(&mut tunnel, &mut tokio::io::sink()).await;
            }
        }
    });
    status(StatusCode::OK)
}

/// The client address from `forwarded: for=…`, which the source proxy sets.
fn forwarded_for(request: &Request<Incoming>) -> Option<IpAddr> {
    let value = request.headers().get("forwarded")?.to_str().ok()?;
    value.split(';').find_map(|part| {
        let address = part.trim().strip_prefix("for=")?;
        address.trim_matches('"').parse().ok()
    })
}

/// 15006: plaintext from clients outside the mesh (or not enrolled), forwarded to the
/// original destination with the client's address as source.
pub(crate) async fn serve_plaintext(
    shared: Arc<Shared>,
    pod: Arc<EnrolledPod>,
    listener: TcpListener,
) {
    loop {
        let Ok((client, peer)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        let pod = pod.clone();
        tokio::spawn(async move { plaintext(&shared, &pod, client, peer).await });
    }
}

async fn plaintext(shared: &Shared, pod: &EnrolledPod, mut client: TcpStream, peer: SocketAddr) {
    let Ok(target) = socket::original_destination(&client) else {
        return;
    };
    let connected = socket::connect(&pod.netns, target, Some(peer.ip()), CONNECT_TIMEOUT).await;
    shared.record(TunnelEvent {
        node: shared.node.clone(),
        pod: pod.spec.name.clone(),
        direction: Direction::Inbound,
        path: FlowPath::Tcp,
        client: peer,
        target,
        source_identity: None,
        destination_identity: Some(pod.identity.clone()),
        status: if connected.is_ok() { 200 } else { 503 },
        reused: false,
    });
    let Ok(mut upstream) = connected else {
        // Pass the refusal on as a reset, as the app's own closed port would.
        socket::reset_on_close(&client);
        return;
    };
    if tokio::io::copy_bidirectional(&mut client, &mut upstream)
        .await
        .is_err()
    {
        socket::reset_on_close(&client);
        socket::reset_on_close(&upstream);
    }
}
