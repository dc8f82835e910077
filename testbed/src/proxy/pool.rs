//! HBONE connection pooling as ztunnel does it: one HTTP/2 connection carries up to 100
//! CONNECT streams, and connections are shared only between flows with the same key
//! (source identity, destination identities, source address, destination address).
//! See istio/ztunnel `src/proxy/pool.rs` (`WorkloadKey`, `pool_max_streams_per_conn`).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;

/// Most CONNECT streams one pooled HTTP/2 connection carries (ztunnel's default).
pub const MAX_STREAMS_PER_CONNECTION: usize = 100;
/// A pooled connection without streams for this long is closed (ztunnel's
/// `POOL_UNUSED_RELEASE_TIMEOUT`, 5 minutes by default).
pub const UNUSED_RELEASE_TIMEOUT: Duration = Duration::from_secs(300);

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
    /// When the last stream ended (or the connection opened).
    idle_since: Arc<std::sync::Mutex<Instant>>,
}

impl PooledConnection {
    fn lease(&self) -> StreamLease {
        StreamLease {
            streams: self.streams.clone(),
            idle_since: self.idle_since.clone(),
        }
    }

    fn unused_for(&self, now: Instant) -> Option<Duration> {
        if self.streams.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = *self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
        Some(now.saturating_duration_since(since))
    }
}

/// Pooled HBONE connections of one proxy.
#[derive(Default)]
pub struct ConnectPool {
    slots: std::sync::Mutex<HashMap<PoolKey, Arc<tokio::sync::Mutex<Vec<PooledConnection>>>>>,
}

/// A claim on one stream of a pooled connection; released on drop.
pub struct StreamLease {
    streams: Arc<AtomicUsize>,
    idle_since: Arc<std::sync::Mutex<Instant>>,
}

impl Drop for StreamLease {
    fn drop(&mut self) {
        if self.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
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
                    lease: connection.lease(),
                    reused: true,
                });
            }
        }
        let sender = dial().await?;
        let connection = PooledConnection {
            sender: sender.clone(),
            streams: Arc::new(AtomicUsize::new(1)),
            idle_since: Arc::new(std::sync::Mutex::new(Instant::now())),
        };
        let lease = connection.lease();
        connections.push(connection);
        Ok(Checkout {
            sender,
            lease,
            reused: false,
        })
    }

    /// Closes connections unused for `timeout` (dropping the last sender ends the
    /// HTTP/2 connection) and forgets closed ones.
    pub fn release_unused(&self, timeout: Duration) {
        let now = Instant::now();
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        slots.retain(|_, slot| {
            // A slot being dialled is busy, not unused.
            let Ok(mut connections) = slot.try_lock() else {
                return true;
            };
            connections.retain(|connection| {
                !connection.sender.is_closed()
                    && connection
                        .unused_for(now)
                        .is_none_or(|unused| unused < timeout)
            });
            !connections.is_empty()
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    /// An HTTP/2 client over an in-memory pipe to a server that answers nothing.
    async fn connection() -> Result<Sender, hyper::Error> {
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_request| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Empty::<Bytes>::new()))
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(server), service)
                .await;
        });
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(client))
            .await?;
        tokio::spawn(connection);
        Ok(sender)
    }

    fn key(destination: &str) -> PoolKey {
        PoolKey {
            source_identity: "spiffe://cluster.local/ns/a/sa/a".into(),
            destination_identities: vec!["spiffe://cluster.local/ns/b/sa/b".into()],
            source: "10.0.0.1".parse().unwrap(),
            destination: destination.parse().unwrap(),
        }
    }

    #[tokio::test]
    async fn flows_with_one_key_share_a_connection_up_to_the_stream_limit() {
        let pool = ConnectPool::default();
        let mut leases = Vec::new();
        for _ in 0..MAX_STREAMS_PER_CONNECTION {
            leases.push(
                pool.checkout(key("10.0.0.2:15008"), connection)
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(leases.iter().filter(|c| !c.reused).count(), 1);
        assert_eq!(pool.connections(), 1);
        // Stream 101 needs a second connection; another destination needs its own.
        let extra = pool
            .checkout(key("10.0.0.2:15008"), connection)
            .await
            .unwrap();
        assert!(!extra.reused);
        let other = pool
            .checkout(key("10.0.0.3:15008"), connection)
            .await
            .unwrap();
        assert!(!other.reused);
        assert_eq!(pool.connections(), 3);
        // A freed stream is reused before anything new is dialled.
        leases.pop();
        let again = pool
            .checkout(key("10.0.0.2:15008"), connection)
            .await
            .unwrap();
        assert!(again.reused);
    }

    #[tokio::test]
    async fn unused_connections_are_released() {
        let pool = ConnectPool::default();
        let busy = pool
            .checkout(key("10.0.0.2:15008"), connection)
            .await
            .unwrap();
        let idle = pool
            .checkout(key("10.0.0.3:15008"), connection)
            .await
            .unwrap();
        drop(idle);
        pool.release_unused(Duration::ZERO);
        assert_eq!(
            pool.connections(),
            1,
            "only the connection with a stream stays"
        );
        drop(busy);
        pool.release_unused(Duration::from_secs(60));
        assert_eq!(pool.connections(), 1, "not unused for long enough yet");
        pool.release_unused(Duration::ZERO);
        assert_eq!(pool.connections(), 0);
    }
}
