//! The reporter against a real gRPC ingest server on loopback: records arrive, survive a
//! server crash within the buffer bound, and what cannot be kept is counted and reported
//! in the next heartbeat.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use nephilia_agent::{
    record::{ConnectionRecord, ConnectionRole, Outcome, Record},
    report::{self, AgentFacts, Outbox, ReporterOptions},
};
use nephilia_proto::{
    Ingest, IngestServer,
    v1::{AgentMessage, ReportSummary, agent_message::Body, record::Kind},
};
use tonic::{Request, Response, Status, Streaming};

/// What the fake server received, across restarts.
#[derive(Default)]
struct Received {
    cookies: HashSet<u64>,
    records: usize,
    heartbeats: Vec<HashMap<String, u64>>,
    nodes: HashSet<String>,
    attached: Vec<String>,
}

#[derive(Clone, Default)]
struct FakeIngest {
    received: Arc<Mutex<Received>>,
}

#[tonic::async_trait]
impl Ingest for FakeIngest {
    async fn report(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<ReportSummary>, Status> {
        let mut stream = request.into_inner();
        let mut summary = ReportSummary::default();
        while let Some(message) = stream.message().await? {
            let mut received = self.received.lock().unwrap();
            match message.body {
                Some(Body::Batch(batch)) => {
                    received.nodes.insert(batch.node);
                    for record in batch.records {
                        if let Some(Kind::Connection(connection)) = record.kind {
                            received.cookies.insert(connection.cookie);
                            received.records += 1;
                        }
                    }
                    summary.batches_accepted += 1;
                    summary.last_sequence = batch.sequence;
                }
                Some(Body::Heartbeat(heartbeat)) => {
                    received.attached = heartbeat.attached_programs;
                    received
                        .heartbeats
                        .push(heartbeat.drop_counters.into_iter().collect());
                    summary.heartbeats += 1;
                }
                None => return Err(Status::invalid_argument("empty message")),
            }
        }
        Ok(Response::new(summary))
    }
}

/// Serves on `addr` until the returned task is aborted (a crash: connections drop).
async fn serve(ingest: FakeIngest, addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(IngestServer::new(ingest))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    })
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

async fn wait_until(what: &str, check: impl Fn() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test]
async fn records_survive_a_server_crash_and_overflow_is_reported() {
    let addr = free_port();
    let ingest = FakeIngest::default();
    let server = serve(ingest.clone(), addr).await;
    let outbox = Outbox::new(1_000);
    let mut options = ReporterOptions::new(format!("http://{addr}"), "node-a");
    options.buffer_records = 1_000;
    options.flush_interval = Duration::from_millis(50);
    let facts = AgentFacts {
        attached_programs: vec!["inet_sock_set_state".into()],
        kernel_release: "6.18".into(),
    };
    let reporter = tokio::spawn(report::run(options, facts, Arc::clone(&outbox)));

    for cookie in 0..300 {
        outbox.push(&connection(cookie));
    }
    let received = Arc::clone(&ingest.received);
    wait_until("300 records", || {
        received.lock().unwrap().cookies.len() == 300
    })
    .await;
    {
        let received = received.lock().unwrap();
        assert_eq!(received.nodes, HashSet::from(["node-a".to_owned()]));
        assert_eq!(received.attached, ["inet_sock_set_state"]);
        assert_eq!(received.heartbeats[0].get("unsent_records"), Some(&0));
    }

    // The server crashes; records keep coming and wait in the outbox.
    server.abort();
    let _ = server.await;
    for cookie in 300..500 {
        outbox.push(&connection(cookie));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let server = serve(ingest.clone(), addr).await;
    wait_until("all 500 records after the restart", || {
        received.lock().unwrap().cookies.len() == 500
    })
    .await;
    assert_eq!(outbox.unsent(), 0, "nothing lost within the buffer bound");

    // Beyond the bound, records are counted and the count reaches the server.
    server.abort();
    let _ = server.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for cookie in 1_000..2_500 {
        outbox.push(&connection(cookie));
    }
    assert_eq!(outbox.unsent(), 500, "1 500 records into a buffer of 1 000");
    let _server = serve(ingest.clone(), addr).await;
    wait_until("the unsent count in a heartbeat", || {
        received
            .lock()
            .unwrap()
            .heartbeats
            .iter()
            .any(|counters| counters.get("unsent_records") == Some(&500))
    })
    .await;
    wait_until("the 1 000 buffered records", || {
        received.lock().unwrap().cookies.len() == 1_500
    })
    .await;
    reporter.abort();
}

#[tokio::test]
async fn a_bad_server_url_is_named() {
    let error = report::validate(&ReporterOptions::new("not a url", "n"))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("--server \"not a url\""),
        "{error}"
    );
}
