//! Demo apps: one thread per pod, inside the pod's namespace (so every socket it makes
//! is the pod's), running the pod's HTTP/1.1 or gRPC service and the load it generates.
//!
//! The thread is named after the workload, so a `comm` seen by eBPF tells which app a
//! socket belongs to.

mod client;
mod grpc;
mod http;
mod loadgen;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::oneshot;

use crate::netns::{self, Netns};
use crate::scenario::{AppSpec, PodSpec, Protocol, Scenario, TrafficSpec};

pub use client::{CallOutcome, call};
pub use loadgen::{TrafficCounts, TrafficReport};

/// The generated gRPC code of `proto/demo.proto`.
pub mod demo_proto {
    tonic::include_proto!("nephilia.testbed.demo");
}

/// Errors starting or stopping a pod's app.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pod's thread or runtime could not be started.
    #[error("starting app thread of pod {pod}: {source}")]
    Thread { pod: String, source: std::io::Error },
    /// The pod's namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] netns::Error),
    /// The app's port could not be bound.
    #[error("binding {port} in pod {pod}: {source}")]
    Bind {
        pod: String,
        port: u16,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Knobs faults turn at run time.
#[derive(Debug, Default)]
pub struct AppControl {
    /// Error rate override (f64 bits); `u64::MAX` means "as the scenario says".
    error_rate: AtomicU64,
    /// Added to every answer (the netem fallback).
    extra_latency_ms: AtomicU64,
}

impl AppControl {
    fn new() -> Self {
        Self {
            error_rate: AtomicU64::new(u64::MAX),
            extra_latency_ms: AtomicU64::new(0),
        }
    }
    pub fn set_error_rate(&self, rate: Option<f64>) {
        let bits = rate.map_or(u64::MAX, f64::to_bits);
        self.error_rate.store(bits, Ordering::Relaxed);
    }
    pub fn set_extra_latency(&self, millis: u64) {
        self.extra_latency_ms.store(millis, Ordering::Relaxed);
    }
}

/// What a running app needs to answer and to call onwards.
pub(crate) struct AppContext {
    pub scenario: Arc<Scenario>,
    pub pod: PodSpec,
    pub control: Arc<AppControl>,
    pub grpc_channels: client::ChannelCache,
}

impl AppContext {
    fn app(&self) -> Option<&AppSpec> {
        self.pod.app.as_ref()
    }

    /// Whether this request should fail (configured or injected error rate).
    pub fn should_fail(&self) -> bool {
        let bits = self.control.error_rate.load(Ordering::Relaxed);
        let rate = if bits == u64::MAX {
            self.app().map_or(0.0, |app| app.error_rate)
        } else {
            f64::from_bits(bits)
        };
        rate > 0.0 && rand::rng().random_bool(rate.min(1.0))
    }

    /// Service time of one request, drawn from the scenario's distribution.
    pub fn service_time(&self) -> Duration {
        let extra = self.control.extra_latency_ms.load(Ordering::Relaxed);
        let Some(app) = self.app() else {
            return Duration::from_millis(extra);
        };
        let latency = app.latency;
        let mut rng = rand::rng();
        let mut millis = latency.base_ms + extra;
        if latency.jitter_ms > 0 {
            millis += rng.random_range(0..=latency.jitter_ms);
        }
        if latency.tail_rate > 0.0 && rng.random_bool(latency.tail_rate.min(1.0)) {
            millis += latency.tail_ms;
        }
        Duration::from_millis(millis)
    }
}

/// The app thread of one pod.
pub struct PodApp {
    context: Arc<AppContext>,
    netns: Netns,
    runtime: tokio::runtime::Handle,
    server: Mutex<Option<tokio::task::AbortHandle>>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    reports: Mutex<Vec<Arc<TrafficReport>>>,
}

impl PodApp {
    /// Starts the pod's thread and, if the pod has an app, its server.
    pub fn start(scenario: Arc<Scenario>, pod: &PodSpec, namespace: &str) -> Result<Self> {
        let netns = Netns::open(namespace)?;
        let thread_netns = Netns::open(namespace)?;
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        // comm is at most 15 bytes.
        let name: String = pod.workload_name().chars().take(15).collect();
        let thread_error = |source| Error::Thread {
            pod: pod.name.clone(),
            source,
        };
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let runtime = thread_netns
                    .enter_current_thread()
                    .map_err(std::io::Error::other)
                    .and_then(|()| {
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                    });
                let runtime = match runtime {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = handle_tx.send(Err(error));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(runtime.handle().clone()));
                runtime.block_on(async {
                    let _ = shutdown_rx.await;
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(thread_error)?;
        let runtime = handle_rx
            .recv()
            .map_err(|_| thread_error(std::io::Error::other("app thread exited")))?
            .map_err(thread_error)?;
        let app = Self {
            context: Arc::new(AppContext {
                scenario,
                pod: pod.clone(),
                control: Arc::new(AppControl::new()),
                grpc_channels: client::ChannelCache::default(),
            }),
            netns,
            runtime,
            server: Mutex::new(None),
            shutdown: Some(shutdown),
            thread: Some(thread),
            reports: Mutex::new(Vec::new()),
        };
        app.start_server()?;
        Ok(app)
    }

    pub fn control(&self) -> &Arc<AppControl> {
        &self.context.control
    }

    /// (Re)starts the server; returns once its port is bound. No-op without an app or
    /// when it already runs.
    pub fn start_server(&self) -> Result<()> {
        let Some(app) = self.context.pod.app.clone() else {
            return Ok(());
        };
        let mut server = self.server.lock().unwrap_or_else(|p| p.into_inner());
        if server.is_some() {
            return Ok(());
        }
        let address = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), app.port);
        let bind_error = |source| Error::Bind {
            pod: self.context.pod.name.clone(),
            port: app.port,
            source,
        };
        let listener = self
            .netns
            .run(|| {
                let socket =
                    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
                socket.set_reuse_address(true)?;
                socket.bind(&address.into())?;
                socket.listen(1024)?;
                socket.set_nonblocking(true)?;
                Ok(std::net::TcpListener::from(socket))
            })?
            .map_err(bind_error)?;
        let context = self.context.clone();
        let task = self.runtime.spawn(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%error, "app listener");
                    return;
                }
            };
            match app.protocol {
                Protocol::Http => http::serve(context, listener).await,
                Protocol::Grpc => grpc::serve(context, listener).await,
            }
        });
        *server = Some(task.abort_handle());
        Ok(())
    }

    /// Stops the server: its port closes (connects are refused) and its open
    /// connections are dropped.
    pub fn stop_server(&self) {
        let mut server = self.server.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(task) = server.take() {
            task.abort();
        }
    }

    /// Starts bounded load from this pod; the report fills in as it runs.
    pub fn start_traffic(&self, spec: TrafficSpec) -> Arc<TrafficReport> {
        let report = Arc::new(TrafficReport::new(&spec));
        self.reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(report.clone());
        self.runtime
            .spawn(loadgen::run(self.context.clone(), spec, report.clone()));
        report
    }

    /// One call from this pod with the apps' client; blocks (do not call from the pod's
    /// own runtime).
    pub fn call(&self, target: &str, protocol: Protocol) -> CallOutcome {
        let context = self.context.clone();
        let target = target.to_owned();
        let (sender, receiver) = std::sync::mpsc::channel();
        self.runtime.spawn(async move {
            let outcome = client::call(
                &context.scenario,
                &context.grpc_channels,
                &context.pod.name,
                &target,
                protocol,
                None,
            )
            .await;
            let _ = sender.send(outcome);
        });
        receiver
            .recv_timeout(client::CALL_TIMEOUT + Duration::from_secs(1))
            .unwrap_or_else(|_| CallOutcome::Failed("no outcome".into()))
    }

    pub fn reports(&self) -> Vec<Arc<TrafficReport>> {
        self.reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for PodApp {
    fn drop(&mut self) {
        self.stop_server();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A W3C `traceparent` continuing `incoming` (same trace, new span) or starting a trace.
pub fn child_traceparent(incoming: Option<&str>) -> String {
    let mut rng = rand::rng();
    let span: u64 = rng.random::<u64>().max(1);
    let trace = incoming
        .and_then(|value| {
            let mut parts = value.split('-');
            let (_version, trace) = (parts.next()?, parts.next()?);
            (trace.len() == 32 && trace.chars().all(|c| c.is_ascii_hexdigit()))
                .then(|| trace.to_owned())
        })
        .unwrap_or_else(|| format!("{:032x}", rng.random::<u128>().max(1)));
    format!("00-{trace}-{span:016x}-01")
}

#[cfg(test)]
mod tests {
    use super::child_traceparent;

    #[test]
    fn child_traceparent_keeps_the_trace_and_changes_the_span() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let child = child_traceparent(Some(parent));
        let parts: Vec<&str> = child.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(parts[2], "00f067aa0ba902b7");
        assert_eq!(parts[2].len(), 16);
        let fresh = child_traceparent(Some("garbage"));
        assert_eq!(fresh.split('-').nth(1).map(str::len), Some(32));
    }
}
