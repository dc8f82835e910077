//! The reporter against the real graph server's gRPC ingest on loopback: a server that
//! stops answering without a reset is given up on within the bound and the agent
//! reconnects; a closed outbox is delivered completely before the reporter ends.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use nephilia_agent::{
    record::{ConnectionRecord, ConnectionRole, Outcome, Record},
    report::{self, ACK_TIMEOUT, AgentFacts, Outbox, ReporterOptions, STREAM_LIFETIME},
};
use nephilia_graph_server::{
    api::{AppState, Clock},
    config::HealthThresholds,
    server::serve_grpc,
    store::{Limits, Store},
};

/// The graph server's ingest, in this process, on `listener`.
fn graph_server(listener: tokio::net::TcpListener) -> Arc<AppState> {
    let limits = Limits {
        retention_ns: 3_600_000_000_000,
        max_memory_bytes: 64 << 20,
    };
    let store = Store::new(10_000_000_000, HealthThresholds::default(), limits, 100_000);
    // The records below are from the first microseconds after the epoch: the server's
    // clock stands 10 s later so none is older than its retention.
    let state = Arc::new(AppState::new(store, None, Clock::Fixed(10_000_000_000)));
    tokio::spawn(serve_grpc(
        listener,
        Arc::clone(&state),
        None,
        std::future::pending(),
    ));
    state
}

fn connection(cookie: u64) -> Record {
    Record::Connection(ConnectionRecord {
        start_ns: 1_000,
        end_ns: Some(2_000),
        netns: 1,
        pid: 2,
        comm: "app".into(),
        role: ConnectionRole::Client,
        first_data_ns: Some(1_500),
        local: "10.0.0.1:40000".into(),
        remote: "10.0.0.2:80".into(),
        bytes_sent: 10,
        bytes_received: 20,
        bytes_sent_delta: 10,
        bytes_received_delta: 20,
        outcome: Outcome::Closed,
        connect_latency_us: Some(50),
        rtt_us: 30,
        retransmits: 0,
        resets_sent: 0,
        resets_received: 0,
        mark: 0,
        error: None,
        cookie,
    })
}

fn options(addr: SocketAddr) -> ReporterOptions {
    let mut options = ReporterOptions::new(format!("http://{addr}"), "node-a");
    options.flush_interval = Duration::from_millis(50);
    options
}

fn facts() -> AgentFacts {
    AgentFacts {
        attached_programs: vec!["inet_sock_set_state".into()],
        kernel_release: "6.18".into(),
    }
}

async fn wait_until(what: &str, within: Duration, check: impl Fn() -> bool) {
    let start = Instant::now();
    while start.elapsed() < within {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {within:?} waiting for {what}");
}

#[tokio::test]
async fn a_server_that_stops_answering_is_left_within_30_s_and_nothing_is_lost() {
    // A black hole: accepts connections, keeps them open, never reads or answers (no RST,
    // no FIN), as a dead node or a dropped route looks from the agent.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // 24 batches of 500: more than one stream sends again (20), so the backlog is caught
    // up over two streams once the server is back.
    let outbox = Outbox::new(20_000);
    for cookie in 0..12_000 {
        outbox.push(&connection(cookie));
    }
    let reporter = tokio::spawn(report::run(options(addr), facts(), Arc::clone(&outbox)));

    let mut held = Vec::new();
    let (first, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .expect("the agent connects")
        .unwrap();
    let first_at = Instant::now();
    held.push(first);
    let (second, _) = tokio::time::timeout(Duration::from_secs(30), listener.accept())
        .await
        .expect("the agent gives up on the silent server and reconnects within 30 s")
        .unwrap();
    let waited = first_at.elapsed();
    held.push(second);
    // Given up after the stream's lifetime and the acknowledgement deadline, plus one
    // reconnect delay (100–200 ms for the first).
    assert!(
        waited >= STREAM_LIFETIME + ACK_TIMEOUT && waited < Duration::from_secs(30),
        "reconnected after {waited:?}"
    );
    assert_eq!(
        outbox.still_queued(),
        12_000,
        "unacknowledged records are kept"
    );
    assert_eq!(outbox.sent(), 0);

    // Records keep coming during the outage.
    for cookie in 12_000..12_100 {
        outbox.push(&connection(cookie));
    }

    // The real server comes back on the same address: everything arrives, once.
    drop(listener);
    drop(held);
    let state = graph_server(tokio::net::TcpListener::bind(addr).await.unwrap());
    wait_until(
        "12 100 connections in the store",
        Duration::from_secs(40),
        || state.store().counters.connections >= 12_100,
    )
    .await;
    wait_until("the acknowledgement", Duration::from_secs(10), || {
        outbox.still_queued() == 0
    })
    .await;
    assert_eq!(state.store().counters.connections, 12_100);
    assert_eq!((outbox.sent(), outbox.unsent()), (12_100, 0));
    reporter.abort();
}

#[tokio::test]
async fn a_closed_outbox_is_delivered_completely_before_the_reporter_ends() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = graph_server(listener);
    let outbox = Outbox::new(10_000);
    let mut options = options(addr);
    // Far longer than the test: only closing the outbox makes the last batch go.
    options.flush_interval = Duration::from_secs(60);
    options.batch_records = 500;
    let reporter = tokio::spawn(report::run(options, facts(), Arc::clone(&outbox)));
    // 2 full batches and a partial one.
    for cookie in 0..1_234 {
        outbox.push(&connection(cookie));
    }
    outbox.close();
    let ended = tokio::time::timeout(report::FLUSH_TIMEOUT, reporter)
        .await
        .expect("the reporter ends once everything is acknowledged");
    ended.unwrap().unwrap();
    assert_eq!(outbox.still_queued(), 0);
    assert_eq!((outbox.sent(), outbox.unsent()), (1_234, 0));
    assert_eq!(state.store().counters.connections, 1_234);
}
