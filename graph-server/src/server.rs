//! Binds the two listeners and runs the gRPC ingest, the HTTP API and the maintenance
//! tick (outage evaluation, retention, memory bound) until shutdown.
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::api::{AppState, Clock, app};
use crate::config::ServerArgs;
use crate::ingest::IngestService;
use crate::store::{Limits, Store};

/// Why the server stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// mTLS flags were given but this build has no TLS support.
    #[error(
        "--tls-cert/--tls-key/--tls-ca: mTLS for ingest is not implemented yet; run without them"
    )]
    TlsUnsupported,
}

/// The state a server with these flags starts from.
pub fn state(args: &ServerArgs) -> Arc<AppState> {
    let limits = Limits {
        retention_ns: u64::try_from(args.retention.as_nanos()).unwrap_or(u64::MAX),
        max_memory_bytes: args.max_memory,
    };
    let width = u64::try_from(args.bucket_width.as_nanos())
        .unwrap_or(10_000_000_000)
        .max(1_000_000);
    let store = Store::new(width, args.health, limits, args.max_flows);
    Arc::new(AppState::new(store, args.api_token.clone(), Clock::System))
}

/// Serves gRPC ingest on `listener` until `shutdown` resolves.
pub async fn serve_grpc(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    tonic::transport::Server::builder()
        .add_service(IngestService::new(state).into_server())
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

/// Runs everything until `shutdown` resolves.
pub async fn run(
    args: ServerArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    if args.tls_cert.is_some() {
        return Err(ServeError::TlsUnsupported);
    }
    let state = state(&args);
    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })
    };
    let http = bind(args.http_addr).await?;
    let grpc = bind(args.grpc_addr).await?;
    tracing::info!(http = %args.http_addr, grpc = %args.grpc_addr, "nephilia-server listening");
    state.set_ready();

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let ticker = {
        let state = state.clone();
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tokio::select! {
                _ = stop => {}
                _ = async { loop { tick.tick().await; let now = state.now_ns(); state.store().maintain(now); } } => {}
            }
        })
    };
    let http_server =
        axum::serve(http, app(state.clone())).with_graceful_shutdown(stopped(stop_rx.clone()));
    let grpc_server = serve_grpc(grpc, state, stopped(stop_rx));
    let (http_result, grpc_result) = tokio::join!(http_server, grpc_server);
    ticker.abort();
    http_result.map_err(ServeError::Http)?;
    grpc_result
}
