//! The gRPC demo service (tonic): same behaviour as the HTTP one, failures are
//! `UNAVAILABLE`. Connections are served by hand so stop-pod can drop them all.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tonic::codegen::Service;
use tonic::{Request, Response, Status};

use super::demo_proto::demo_server::{Demo, DemoServer};
use super::demo_proto::{CallReply, CallRequest};
use super::{AppContext, child_traceparent, client};

/// The TCP peer of a request, put in the request's extensions.
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

struct DemoService {
    context: Arc<AppContext>,
}

#[tonic::async_trait]
impl Demo for DemoService {
    async fn call(&self, request: Request<CallRequest>) -> Result<Response<CallReply>, Status> {
        let context = &self.context;
        tokio::time::sleep(context.service_time()).await;
        let peer = request
            .extensions()
            .get::<Peer>()
            .map(|peer| peer.0.to_string())
            .unwrap_or_default();
        if context.should_fail() {
            return Err(Status::unavailable("injected failure"));
        }
        let incoming = request
            .metadata()
            .get("traceparent")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let (calls, propagate) = context.pod.app.as_ref().map_or((&[][..], false), |app| {
            (&app.calls[..], app.propagate_trace)
        });
        let mut downstream = Vec::new();
        let mut failed = false;
        for call in calls {
            let traceparent = propagate.then(|| child_traceparent(incoming.as_deref()));
            let outcome = client::call(
                &context.scenario,
                &context.grpc_channels,
                &context.pod.name,
                &call.to,
                call.protocol,
                traceparent,
            )
            .await;
            failed |= !outcome.is_success();
            downstream.push(format!("{}: {outcome}", call.to));
        }
        if failed {
            return Err(Status::unavailable(format!(
                "dependency failed: {}",
                downstream.join(", ")
            )));
        }
        Ok(Response::new(CallReply {
            pod: context.pod.name.clone(),
            peer,
            downstream,
        }))
    }
}

pub(crate) async fn serve(context: Arc<AppContext>, listener: TcpListener) {
    let server = DemoServer::new(DemoService { context });
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let server = server.clone();
                let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
                    request.extensions_mut().insert(Peer(peer));
                    let mut server = server.clone();
                    async move { server.call(request).await }
                });
                connections.spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
