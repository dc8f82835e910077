//! The control socket: `nephilia-testbed fault …` talks to the process running `up`
//! (where proxies and apps live) with one JSON request and one JSON response per line.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::Weak;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use super::{MeshInner, faults, lock, upgrade};
use crate::fault::Fault;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ControlRequest {
    /// Inject a fault, reverted after `seconds` if given.
    Inject { fault: Fault, seconds: Option<u64> },
    /// Revert one active fault.
    Revert { fault: Fault },
    /// Revert every active fault.
    Clear,
    /// List active faults.
    Status,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlResponse {
    pub ok: bool,
    pub message: String,
    pub active_faults: Vec<Fault>,
}

pub(crate) async fn serve(inner: Weak<MeshInner>, listener: UnixListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = tokio::io::BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let response = match serde_json::from_str::<ControlRequest>(&line) {
                    Ok(request) => handle(&inner, request),
                    Err(error) => reply(&inner, Err(format!("bad request: {error}"))),
                };
                let mut text = serde_json::to_string(&response).unwrap_or_default();
                text.push('\n');
                if write.write_all(text.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

fn handle(inner: &Weak<MeshInner>, request: ControlRequest) -> ControlResponse {
    let Some(mesh) = upgrade(inner) else {
        return reply(inner, Err("mesh is going down".into()));
    };
    let result = tokio::task::block_in_place(|| match request {
        ControlRequest::Inject { fault, seconds } => {
            let result = faults::inject(&mesh, fault.clone()).map_err(|e| e.to_string());
            if let (Ok(()), Some(seconds)) = (&result, seconds) {
                tokio::spawn(faults::revert_after(
                    inner.clone(),
                    fault,
                    Duration::from_secs(seconds),
                ));
            }
            result.map(|()| "injected".to_owned())
        }
        ControlRequest::Revert { fault } => faults::revert(&mesh, &fault)
            .map(|()| "reverted".to_owned())
            .map_err(|e| e.to_string()),
        ControlRequest::Clear => faults::clear(&mesh)
            .map(|()| "cleared".to_owned())
            .map_err(|e| e.to_string()),
        ControlRequest::Status => Ok("ok".to_owned()),
    });
    reply(inner, result)
}

fn reply(inner: &Weak<MeshInner>, result: Result<String, String>) -> ControlResponse {
    let active_faults = upgrade(inner)
        .map(|mesh| lock(&mesh.faults).iter().map(|a| a.fault.clone()).collect())
        .unwrap_or_default();
    match result {
        Ok(message) => ControlResponse {
            ok: true,
            message,
            active_faults,
        },
        Err(message) => ControlResponse {
            ok: false,
            message,
            active_faults,
        },
    }
}

/// Sends one request to the mesh behind `socket` and waits for its answer.
pub fn send(socket: &Path, request: &ControlRequest) -> std::io::Result<ControlResponse> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_string(request).map_err(std::io::Error::other)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    serde_json::from_str(&answer).map_err(std::io::Error::other)
}
