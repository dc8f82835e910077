//! The HTTP/1.1 demo service: waits its service time, fails at its error rate, calls its
//! downstream services, and answers with JSON naming the peer address it saw (which is
//! how tests check that the proxy preserved the client's address).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::{AppContext, child_traceparent, client};

/// The JSON body of every answer.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Answer {
    pub pod: String,
    /// The TCP peer of the request's connection, as the app saw it.
    pub peer: String,
    /// The `traceparent` this request carried, if any.
    pub traceparent: Option<String>,
    /// `target: outcome` of each downstream call.
    pub downstream: Vec<String>,
}

pub(crate) async fn serve(context: Arc<AppContext>, listener: TcpListener) {
    // Connections live in this set: aborting the server (stop-pod) drops them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let context = context.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let context = context.clone();
                        async move { Ok::<_, Infallible>(answer(&context, request, peer).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn answer(
    context: &AppContext,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    tokio::time::sleep(context.service_time()).await;
    let incoming = request
        .headers()
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let mut answer = Answer {
        pod: context.pod.name.clone(),
        peer: peer.to_string(),
        traceparent: incoming.clone(),
        downstream: Vec::new(),
    };
    if context.should_fail() {
        return json(StatusCode::SERVICE_UNAVAILABLE, &answer);
    }
    let (calls, propagate) = context.pod.app.as_ref().map_or((&[][..], false), |app| {
        (&app.calls[..], app.propagate_trace)
    });
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
        answer.downstream.push(format!("{}: {outcome}", call.to));
    }
    // A failed dependency makes this service fail too, the way outages spread.
    let status = if failed {
        StatusCode::BAD_GATEWAY
    } else {
        StatusCode::OK
    };
    json(status, &answer)
}

fn json(status: StatusCode, answer: &Answer) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(answer).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
