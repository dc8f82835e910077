//! Binds the two listeners and runs the gRPC ingest, the HTTP API, the maintenance tick
//! (OTLP span export, outage evaluation, retention, memory bound) and, with
//! `--otlp-endpoint`, the OTLP sender until shutdown.
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::api::{AppState, Clock, SeriesLimits, app};
use crate::config::ServerArgs;
use crate::ingest::IngestService;
use crate::otlp::SpanExporter;
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
    /// TLS to the OTLP collector could not be set up.
    #[error("TLS to the OTLP collector: {0}")]
    OtlpTls(tonic::transport::Error),
    /// A TLS file could not be read.
    #[error("cannot read {flag} file {path}: {source}")]
    TlsFile {
        flag: &'static str,
        path: String,
        source: std::io::Error,
    },
    /// A task that should run until shutdown (maintenance, the OTLP sender) ended: without
    /// it retention, outages or export stop, so the server stops too.
    #[error("the {task} task died: {reason}")]
    BackgroundTask { task: &'static str, reason: String },
}

/// Tasks that run until shutdown. The first to end (a panic) is a failure of the server.
#[derive(Debug, Default)]
pub struct BackgroundTasks {
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl BackgroundTasks {
    pub fn spawn(&mut self, task: &'static str, run: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push((task, tokio::spawn(run)));
    }

    /// Resolves when the first task ends, with which and why; pending while all run.
    pub async fn failure(&mut self) -> ServeError {
        std::future::poll_fn(|cx| {
            for (task, handle) in &mut self.tasks {
                if let Poll::Ready(result) = Pin::new(handle).poll(cx) {
                    let reason = match result {
                        Ok(()) => "it returned".to_owned(),
                        Err(e) if e.is_panic() => {
                            let panic = e.into_panic();
                            let message = panic
                                .downcast_ref::<&str>()
                                .map(|s| (*s).to_owned())
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .unwrap_or_else(|| "a panic without a message".to_owned());
                            format!("panicked: {message}")
                        }
                        Err(e) => e.to_string(),
                    };
                    return Poll::Ready(ServeError::BackgroundTask { task, reason });
                }
            }
            Poll::Pending
        })
        .await
    }

    pub fn abort_all(&self) {
        for (_, handle) in &self.tasks {
            handle.abort();
        }
    }
}

/// Mutual TLS for ingest: the server presents `--tls-cert`/`--tls-key` and accepts only
/// agents whose certificate `--tls-ca` signed.
pub fn ingest_tls(args: &ServerArgs) -> Result<Option<ServerTlsConfig>, ServeError> {
    let (Some(cert), Some(key), Some(ca)) = (&args.tls_cert, &args.tls_key, &args.tls_ca) else {
        return Ok(None);
    };
    let read = |flag, path: &std::path::Path| {
        std::fs::read(path).map_err(|source| ServeError::TlsFile {
            flag,
            path: path.display().to_string(),
            source,
        })
    };
    Ok(Some(
        ServerTlsConfig::new()
            .identity(Identity::from_pem(
                read("--tls-cert", cert)?,
                read("--tls-key", key)?,
            ))
            .client_ca_root(Certificate::from_pem(read("--tls-ca", ca)?)),
    ))
}

/// TLS to an https:// OTLP collector: its certificate must chain to `--otlp-ca`, else to
/// the system's trust store. `None` for plain-text http:// (or no export).
pub fn otlp_tls(args: &ServerArgs) -> Result<Option<ClientTlsConfig>, ServeError> {
    if !args.otlp_over_tls() {
        return Ok(None);
    }
    let config = ClientTlsConfig::new();
    Ok(Some(match &args.otlp_ca {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| ServeError::TlsFile {
                flag: "--otlp-ca",
                path: path.display().to_string(),
                source,
            })?;
            config.ca_certificate(Certificate::from_pem(pem))
        }
        None => config.with_native_roots(),
    }))
}

/// The state a server with these flags starts from.
pub fn state(args: &ServerArgs) -> Result<Arc<AppState>, ServeError> {
    let limits = Limits {
        retention_ns: u64::try_from(args.retention.as_nanos()).unwrap_or(u64::MAX),
        max_memory_bytes: args.max_memory,
    };
    let width = u64::try_from(args.bucket_width.as_nanos())
        .unwrap_or(10_000_000_000)
        .max(1_000_000);
    let mut store = Store::new(width, args.health, limits, args.max_flows);
    let series = SeriesLimits {
        max_edges: args.metrics_max_edges,
        max_agents: args.metrics_max_agents,
    };
    let Some(endpoint) = &args.otlp_endpoint else {
        return Ok(Arc::new(
            AppState::new(store, args.api_token.clone(), Clock::System).with_series_limits(series),
        ));
    };
    store.traces.track_export();
    let capacity = usize::try_from(args.otlp_queue).unwrap_or(usize::MAX);
    let exporter = SpanExporter::new(endpoint.clone(), otlp_tls(args)?, args.otlp_delay, capacity)
        .map_err(ServeError::OtlpTls)?;
    Ok(Arc::new(
        AppState::new(store, args.api_token.clone(), Clock::System)
            .with_series_limits(series)
            .with_otlp(Arc::new(exporter)),
    ))
}

/// Serves gRPC ingest on `listener` until `shutdown` resolves.
pub async fn serve_grpc(
    listener: TcpListener,
    state: Arc<AppState>,
    tls: Option<ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .add_service(IngestService::new(state).into_server())
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

/// Binds the listeners of `args` and runs everything until `shutdown` resolves.
pub async fn run(
    args: ServerArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let tls = ingest_tls(&args)?;
    let state = state(&args)?;
    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })
    };
    let http = bind(args.http_addr).await?;
    let grpc = bind(args.grpc_addr).await?;
    tracing::info!(http = %args.http_addr, grpc = %args.grpc_addr, "nephilia-server listening");
    if let Some(exporter) = state.otlp() {
        tracing::info!(endpoint = %exporter.endpoint(), "exporting trace spans over OTLP/gRPC");
    }
    serve(state, http, grpc, tls, shutdown).await
}

/// One maintenance tick: hands the spans of quiet traces to the OTLP sender, then judges
/// outages and applies retention and the memory bound (which would evict held spans).
fn tick(state: &AppState) {
    let now = state.now_ns();
    if let Some(exporter) = state.otlp() {
        let settled = state.store().traces.take_settled(now, exporter.quiet_ns());
        exporter.enqueue(&settled);
    }
    state.store().maintain(now);
    release_free_memory();
}

/// Hands the pages of freed allocations back to the kernel. glibc keeps what retention
/// and the memory bound freed in its arenas' free lists, resident; under churn that was as
/// much again as `--max-memory`. Called once per tick, without the store's lock.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    // SAFETY: malloc_trim only returns free memory to the kernel; no pointer is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

/// Runs the HTTP API on `http`, gRPC ingest on `grpc`, the maintenance tick and the OTLP
/// sender until `shutdown` resolves.
pub async fn serve(
    state: Arc<AppState>,
    http: TcpListener,
    grpc: TcpListener,
    tls: Option<ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    state.set_ready();
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut background = BackgroundTasks::default();
    {
        let state = state.clone();
        background.spawn("maintenance", async move {
            let mut interval = tokio::time::interval(Duration::from_secs(1));
            loop {
                interval.tick().await;
                tick(&state);
            }
        });
    }
    if let Some(exporter) = state.otlp().cloned() {
        background.spawn("OTLP sender", async move { exporter.run().await });
    }
    let http_server =
        axum::serve(http, app(state.clone())).with_graceful_shutdown(stopped(stop_rx.clone()));
    let grpc_server = serve_grpc(grpc, state.clone(), tls, stopped(stop_rx));
    let servers = async { tokio::join!(http_server, grpc_server) };
    let (http_result, grpc_result) = tokio::select! {
        results = servers => results,
        failure = background.failure() => {
            // /readyz says why until the process is gone; the exit status says it failed.
            state.fail(failure.to_string());
            tracing::error!(error = %failure, "stopping");
            background.abort_all();
            return Err(failure);
        }
    };
    background.abort_all();
    if let Some(exporter) = state.otlp() {
        let queued = exporter.stats().queued;
        let held = state.store().traces.pending_export();
        if queued + held > 0 {
            tracing::warn!(
                queued,
                held,
                "stopping with spans not yet exported over OTLP"
            );
        }
    }
    http_result.map_err(ServeError::Http)?;
    grpc_result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HealthThresholds;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_background_task_fails_readyz_with_its_reason() {
        let limits = Limits {
            retention_ns: 3_600_000_000_000,
            max_memory_bytes: 64 << 20,
        };
        let store = Store::new(10_000_000_000, HealthThresholds::default(), limits, 10);
        let state = Arc::new(AppState::new(store, None, Clock::Fixed(1)));
        state.set_ready();
        let mut tasks = BackgroundTasks::default();
        tasks.spawn("OTLP sender", std::future::pending());
        tasks.spawn("maintenance", async {
            panic!("bucket arithmetic overflowed")
        });
        let failure = tasks.failure().await;
        assert_eq!(
            failure.to_string(),
            "the maintenance task died: panicked: bucket arithmetic overflowed"
        );
        tasks.abort_all();
        state.fail(failure.to_string());
        let response = app(state)
            .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            body,
            "failed: the maintenance task died: panicked: bucket arithmetic overflowed\n"
        );
    }
}
