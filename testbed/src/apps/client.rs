//! Outgoing calls of the demo apps and the load generator (HTTP/1.1 and gRPC). They run
//! on the pod's thread, so their sockets are the pod's and get captured by its rules.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use super::demo_proto::CallRequest;
use super::demo_proto::demo_client::DemoClient;
use crate::scenario::{Protocol, Scenario};

/// How long one call may take, connect included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The result of one call, as the caller saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum CallOutcome {
    /// HTTP status.
    Http(u16),
    /// gRPC status code (0 is OK).
    Grpc(i32),
    /// No answer: refused, reset, closed before a response, or timed out.
    Failed(String),
}

impl CallOutcome {
    pub fn is_success(&self) -> bool {
        matches!(self, CallOutcome::Http(200..=299) | CallOutcome::Grpc(0))
    }
}

impl std::fmt::Display for CallOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallOutcome::Http(status) => write!(f, "http {status}"),
            CallOutcome::Grpc(code) => write!(f, "grpc {code}"),
            CallOutcome::Failed(reason) => write!(f, "failed: {reason}"),
        }
    }
}

/// gRPC channels of one app, one long-lived HTTP/2 connection per destination, as a
/// real gRPC client keeps them.
#[derive(Default)]
pub struct ChannelCache {
    channels: Mutex<HashMap<String, Channel>>,
}

impl ChannelCache {
    fn get(&self, address: SocketAddr, target: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(target) {
            return Ok(channel.clone());
        }
        // Dial the resolved address (no DNS in the testbed) but name the service in
        // `:authority`, as a client resolving the hostname would.
        let origin: http::Uri = format!("http://{target}")
            .parse()
            .map_err(|error: http::uri::InvalidUri| error.to_string())?;
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|error| error.to_string())?
            .origin(origin)
            .connect_timeout(CALL_TIMEOUT)
            .timeout(CALL_TIMEOUT);
        let channel = endpoint.connect_lazy();
        channels.insert(target.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// Calls `target` (`hostname:port` or `ip:port`) once.
pub async fn call(
    scenario: &Scenario,
    channels: &ChannelCache,
    caller: &str,
    target: &str,
    protocol: Protocol,
    traceparent: Option<String>,
) -> CallOutcome {
    let Some(address) = scenario.resolve(target) else {
        return CallOutcome::Failed(format!("cannot resolve {target}"));
    };
    match protocol {
        Protocol::Http => http_get(address, target, traceparent).await,
        Protocol::Grpc => grpc_call(channels, address, target, caller, traceparent).await,
    }
}

/// One GET on a fresh connection (so each call is one mesh flow).
pub async fn http_get(address: SocketAddr, host: &str, traceparent: Option<String>) -> CallOutcome {
    let attempt = async {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(connection);
        let mut request = http::Request::get("/").header("host", host);
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("no response: {e}"))?;
        let status = response.status().as_u16();
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?;
        Ok::<_, String>(status)
    };
    match tokio::time::timeout(CALL_TIMEOUT, attempt).await {
        Ok(Ok(status)) => CallOutcome::Http(status),
        Ok(Err(reason)) => CallOutcome::Failed(reason),
        Err(_) => CallOutcome::Failed("timed out".into()),
    }
}

async fn grpc_call(
    channels: &ChannelCache,
    address: SocketAddr,
    target: &str,
    caller: &str,
    traceparent: Option<String>,
) -> CallOutcome {
    let channel = match channels.get(address, target) {
        Ok(channel) => channel,
        Err(reason) => return CallOutcome::Failed(reason),
    };
    let mut request = tonic::Request::new(CallRequest {
        caller: caller.to_owned(),
    });
    if let Some(value) = traceparent.and_then(|t| t.parse().ok()) {
        request.metadata_mut().insert("traceparent", value);
    }
    let mut client = DemoClient::new(channel);
    let attempt = client.call(request);
    match tokio::time::timeout(CALL_TIMEOUT, attempt).await {
        Ok(Ok(_)) => CallOutcome::Grpc(0),
        Ok(Err(status)) => CallOutcome::Grpc(status.code() as i32),
        Err(_) => CallOutcome::Failed("timed out".into()),
    }
}
