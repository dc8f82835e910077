//! `nephilia-server`: the graph server. Flags are documented in graph-server/README.md.
use clap::Parser;
use nephilia_graph_server::config::ServerArgs;
use tracing_subscriber::EnvFilter;

fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

/// One glibc malloc arena rather than up to eight per core. Memory freed into a thread's
/// arena stays there for that thread, so under churn (records aged out while others
/// arrive on every gRPC worker) resident memory grew to twice `--max-memory`; with one
/// arena (and [`malloc_trim`] each maintenance tick) it stays within about 40 MiB of it.
/// The store is behind one lock anyway, so the arenas bought little concurrency.
///
/// [`malloc_trim`]: https://man7.org/linux/man-pages/man3/malloc_trim.3.html
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    init_logging();
    let args = ServerArgs::parse();
    args.validate()?;
    nephilia_graph_server::server::run(args, shutdown_signal()).await?;
    Ok(())
}
