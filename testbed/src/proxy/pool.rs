//! HBONE connection pooling as ztunnel does it: one HTTP/2 connection carries up to 100
//! CONNECT streams, and connections are shared only between flows with the same key
//! (source identity, destination identities, source address, destination address).
//! See istio/ztunnel `src/proxy/pool.rs` (`WorkloadKey`, `pool_max_streams_per_conn`).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;

/// Most CONNECT streams one pooled HTTP/2 connection carries (ztunnel's default).
pub const MAX_STREAMS_PER_CONNECTION: usize = 100;

/// What makes two flows share a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub source_identity: String,
    pub destination_identities: Vec<String>,
    pub source: IpAddr,
    pub destination: SocketAddr,
}

/// The client half of one HBONE connection.
pub type Sender = SendRequest<Empty<Bytes>>;

struct PooledConnection {
    sender: Sender,
    streams: Arc<AtomicUsize>,
}

/// Pooled HBONE connections of one proxy.
#[derive(Default)]
pub struct ConnectPool {
    slots: std::sync::Mutex<HashMap<PoolKey, Arc<tokio::sync::Mutex<Vec<PooledConnection>>>>>,
}

/// A claim on one stream of a pooled connection; released on drop.
pub struct StreamLease {
    streams: Arc<AtomicUsize>,
}

impl Drop for StreamLease {
    fn drop(&mut self) {
        self.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream slot on a connection, and whether that connection already existed.
pub struct Checkout {
    pub sender: Sender,
    pub lease: StreamLease,
    pub reused: bool,
}

impl ConnectPool {
    /// Returns a connection for `key` with a free stream, dialling one with `dial` when
    /// none has room. The key's slot stays locked while dialling, so concurrent flows
    /// wait for the new connection and share it instead of each opening their own.
    pub async fn checkout<E, F>(
        &self,
        key: PoolKey,
        dial: impl FnOnce() -> F,
    ) -> Result<Checkout, E>
    where
        F: Future<Output = Result<Sender, E>>,
    {
        let slot = {
            let mut slots = self
                .slots
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            slots.entry(key).or_default().clone()
        };
        let mut connections = slot.lock().await;
        connections.retain(|connection| !connection.sender.is_closed());
        for connection in connections.iter() {
            let claimed =
                connection
                    .streams
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |streams| {
                        (streams < MAX_STREAMS_PER_CONNECTION).then_some(streams + 1)
                    });
            if claimed.is_ok() {
                return Ok(Checkout {
                    sender: connection.sender.clone(),
                    lease: StreamLease {
                        streams: connection.streams.clone(),
                    },
                    reused: true,
                });
            }
        }
        let sender = dial().await?;
        let streams = Arc::new(AtomicUsize::new(1));
        connections.push(PooledConnection {
            sender: sender.clone(),
            streams: streams.clone(),
        });
        Ok(Checkout {
            sender,
            lease: StreamLease { streams },
            reused: false,
        })
    }

    /// Number of open pooled connections.
    pub fn connections(&self) -> usize {
        let slots = self
            .slots
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        slots
            .values()
            .filter_map(|slot| slot.try_lock().ok())
            .map(|connections| connections.iter().filter(|c| !c.sender.is_closed()).count())
            .sum()
    }
}
