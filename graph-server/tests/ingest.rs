//! gRPC ingest over a real loopback connection: good batches land in the store, bad ones
//! end their stream with a status that says what was wrong, and the server keeps serving.
use std::sync::Arc;

use nephilia_graph_server::api::{AppState, Clock};
use nephilia_graph_server::config::HealthThresholds;
use nephilia_graph_server::server::serve_grpc;
use nephilia_graph_server::store::{Limits, Store};
use nephilia_proto::v1::{
    AgentMessage, Heartbeat, MeshFlow, MeshPath, Outcome, Peer, Protocol, Record, Request, Role,
};
use nephilia_proto::{IngestClient, MAX_BATCH_RECORDS};
use tonic::Code;

mod support;

use support::{Pki, tempdir};

const T0: u64 = 1_767_268_980_000_000_000;

struct Server {
    state: Arc<AppState>,
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn server() -> Server {
    let limits = Limits {
        retention_ns: 3_600_000_000_000,
        max_memory_bytes: 64 << 20,
    };
    let store = Store::new(10_000_000_000, HealthThresholds::default(), limits, 1000);
    let state = Arc::new(AppState::new(
        store,
        None,
        Clock::Fixed(T0 + 10_000_000_000),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel();
    tokio::spawn(serve_grpc(listener, state.clone(), None, async {
        let _ = stopped.await;
    }));
    Server {
        state,
        url,
        stop: Some(stop),
    }
}

fn peer(workload: &str, ip: &str) -> Option<Peer> {
    Some(Peer {
        workload: workload.into(),
        namespace: "shop".into(),
        ip: ip.into(),
        ..Peer::default()
    })
}

fn good_request(i: u64) -> Record {
    Request {
        side: Role::Client as i32,
        protocol: Protocol::Http1 as i32,
        method: "GET".into(),
        path: "/cart".into(),
        status: Some(200),
        start_ns: T0 + i * 1_000_000,
        end_ns: T0 + i * 1_000_000 + 500_000,
        latency_us: 500,
        source: peer("frontend", "10.0.1.10"),
        destination: peer("checkout", "10.0.1.20"),
        local: "10.0.1.10:40000".into(),
        remote: "10.0.1.20:8080".into(),
        node: "node-a".into(),
        ..Request::default()
    }
    .into()
}

fn good_flow() -> Record {
    MeshFlow {
        start_ns: T0,
        end_ns: Some(T0 + 1_000_000),
        side: Role::Client as i32,
        source: peer("checkout", "10.0.1.20"),
        original_destination: "10.0.2.30:9090".into(),
        destination: peer("payments", "10.0.2.30"),
        path: MeshPath::Hbone as i32,
        mtls: true,
        outcome: Outcome::Refused as i32,
        node: "node-a".into(),
        ..MeshFlow::default()
    }
    .into()
}

async fn report(
    url: &str,
    messages: Vec<AgentMessage>,
) -> Result<nephilia_proto::v1::ReportSummary, tonic::Status> {
    let mut client = IngestClient::connect(url.to_owned()).await.unwrap();
    client
        .report(tokio_stream::iter(messages))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn malformed_batch_ends_its_stream_with_a_clear_status_and_the_server_keeps_serving() {
    let server = server().await;
    let heartbeat = AgentMessage::heartbeat(Heartbeat {
        node: "node-a".into(),
        agent_version: "0.1.0".into(),
        drop_counters: [("ring_buffer_full".to_owned(), 3)].into(),
        ..Heartbeat::current()
    });
    let mut bad = good_request(1);
    if let Some(nephilia_proto::v1::record::Kind::Request(r)) = &mut bad.kind {
        r.method.clear();
    }
    let status = report(
        &server.url,
        vec![
            heartbeat.clone(),
            AgentMessage::batch("node-a", 1, vec![good_request(0), good_flow()]),
            AgentMessage::batch("node-a", 2, vec![good_request(2), bad]),
            AgentMessage::batch("node-a", 3, vec![good_request(3)]),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "batch 2 from node-a: record 1: request.method is missing"
    );
    {
        let store = server.state.store();
        assert_eq!(store.counters.batches, 1, "only batch 1 was accepted");
        assert_eq!(store.counters.requests, 1);
        assert_eq!(store.counters.mesh_flows, 1);
        assert_eq!(store.counters.rejected.get("malformed"), Some(&1));
        assert_eq!(
            store.agents()["node-a"].drop_counters["ring_buffer_full"],
            3
        );
        assert_eq!(store.agents()["node-a"].records_received, 2);
    }

    // The same server takes the agent's next stream.
    let summary = report(
        &server.url,
        vec![
            heartbeat,
            AgentMessage::batch("node-a", 4, vec![good_request(4), good_request(5)]),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        (
            summary.batches_accepted,
            summary.records_accepted,
            summary.heartbeats,
            summary.last_sequence
        ),
        (1, 2, 1, 4)
    );
    assert_eq!(server.state.store().counters.requests, 3);
}

#[tokio::test]
async fn wrong_version_too_many_records_and_oversized_messages_are_refused() {
    let server = server().await;
    let mut old = AgentMessage::batch("node-a", 7, vec![good_request(0)]);
    if let Some(nephilia_proto::v1::agent_message::Body::Batch(b)) = &mut old.body {
        b.protocol_version = 2;
    }
    let status = report(&server.url, vec![old]).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        "batch 7: protocol_version 2 is not supported (this server speaks 1)"
    );

    let many = vec![Record::default(); MAX_BATCH_RECORDS + 1];
    let status = report(&server.url, vec![AgentMessage::batch("node-a", 8, many)])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.message(),
        "batch 8 from node-a has 10001 records, at most 10000 are accepted"
    );

    let mut huge = good_request(0);
    if let Some(nephilia_proto::v1::record::Kind::Request(r)) = &mut huge.kind {
        r.path = "x".repeat(5 << 20);
    }
    let status = report(
        &server.url,
        vec![AgentMessage::batch("node-a", 9, vec![huge])],
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    assert!(
        status
            .message()
            .starts_with("Error, decoded message length too large"),
        "{}",
        status.message()
    );

    let empty = AgentMessage { body: None };
    let status = report(&server.url, vec![empty]).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "message has no body (batch or heartbeat)");

    let store = server.state.store();
    assert_eq!(store.counters.batches, 0);
    let rejected: Vec<(&str, u64)> = store
        .counters
        .rejected
        .iter()
        .map(|(k, v)| (*k, *v))
        .collect();
    assert_eq!(
        rejected,
        [
            ("malformed", 1),
            ("too_large", 1),
            ("too_many_records", 1),
            ("version", 1)
        ]
    );
}

#[tokio::test]
async fn mutual_tls_ingest_accepts_only_agents_the_ca_signed() {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let pki = Pki::new("nephilia test CA");
    let (server_cert, server_key) = pki.leaf();
    let dir = tempdir("nephilia-tls");
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let args = nephilia_graph_server::config::ServerArgs {
        tls_cert: Some(write("server.pem", &server_cert)),
        tls_key: Some(write("server.key", &server_key)),
        tls_ca: Some(write("ca.pem", &pki.ca.pem())),
        ..<nephilia_graph_server::config::ServerArgs as clap::Parser>::parse_from([
            "nephilia-server",
        ])
    };
    let tls = nephilia_graph_server::server::ingest_tls(&args).unwrap();
    let state = nephilia_graph_server::server::state(&args).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(serve_grpc(listener, state, tls, std::future::pending()));

    let connect = |identity: Option<(String, String)>| {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pki.ca.pem()))
            .domain_name("localhost");
        if let Some((cert, key)) = identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        let endpoint = Endpoint::from_shared(format!("https://localhost:{port}"))
            .unwrap()
            .tls_config(config)
            .unwrap();
        async move {
            let channel = endpoint.connect().await?;
            let mut client = IngestClient::new(channel);
            let messages = vec![AgentMessage::heartbeat(Heartbeat {
                node: "node-a".into(),
                ..Heartbeat::current()
            })];
            Ok::<_, Box<dyn std::error::Error>>(
                client
                    .report(tokio_stream::iter(messages))
                    .await?
                    .into_inner(),
            )
        }
    };
    let summary = connect(Some(pki.leaf()))
        .await
        .expect("a client the CA signed");
    assert_eq!(summary.heartbeats, 1);
    assert!(
        connect(None).await.is_err(),
        "a client without a certificate"
    );
    let stranger = Pki::new("another CA");
    assert!(
        connect(Some(stranger.leaf())).await.is_err(),
        "a client another CA signed"
    );
}
