//! gRPC ingest over a real loopback connection: good batches land in the store, bad ones
//! end their stream with a status that says what was wrong, and the server keeps serving.
use std::sync::Arc;

use nephilia_graph_server::api::AppState;
use nephilia_graph_server::server::serve_grpc;
use nephilia_proto::v1::{
    AgentMessage, Heartbeat, MeshFlow, MeshPath, Outcome, Protocol, Record, Request, Role,
};
use nephilia_proto::{IngestClient, MAX_BATCH_RECORDS};
use tonic::Code;

mod support;

use support::{IngestServer, Pki, ingest_server_at, peer, state_at, tempdir};

const T0: u64 = 1_767_268_980_000_000_000;

/// 10 s after the records' `T0`.
const NOW: u64 = T0 + 10_000_000_000;

async fn server() -> IngestServer {
    ingest_server_at(NOW).await
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

/// A certificate the test CA signs for an agent, naming its node as its DNS names (and
/// `common_name` as its subject CN, if given).
fn agent_certificate(pki: &Pki, dns_names: &[&str], common_name: Option<&str>) -> (String, String) {
    let names = dns_names
        .iter()
        .map(|n| (*n).to_owned())
        .collect::<Vec<_>>();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(cn) = common_name {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &pki.ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A server with mTLS on ingest (`--tls-cert`, `--tls-key`, `--tls-ca` as `nephilia-server`
/// takes them); the temporary directory holding its files lives as long as it.
struct TlsServer {
    state: Arc<AppState>,
    port: u16,
    /// The CA (PEM) agents and server certificates chain to.
    ca: String,
    /// The name the server's certificate is valid for.
    server_name: String,
    _dir: support::TempDir,
}

/// A server with a certificate for `localhost` from a fresh test CA, and the CA.
async fn tls_server(name: &str) -> (TlsServer, Pki) {
    let pki = Pki::new("nephilia test CA");
    let (server_cert, server_key) = pki.leaf();
    let dir = tempdir(name);
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let files = [
        write("server.pem", &server_cert),
        write("server.key", &server_key),
        write("ca.pem", &pki.ca.pem()),
    ];
    (serve_tls(dir, files, "localhost").await, pki)
}

/// Serves ingest with `[cert, key, ca]` from `dir` as `--tls-cert`, `--tls-key`, `--tls-ca`.
async fn serve_tls(
    dir: support::TempDir,
    [cert, key, ca]: [std::path::PathBuf; 3],
    server_name: &str,
) -> TlsServer {
    let ca_pem = std::fs::read_to_string(&ca).unwrap();
    let args = nephilia_graph_server::config::ServerArgs {
        tls_cert: Some(cert),
        tls_key: Some(key),
        tls_ca: Some(ca),
        ..<nephilia_graph_server::config::ServerArgs as clap::Parser>::parse_from([
            "nephilia-server",
        ])
    };
    let tls = nephilia_graph_server::server::ingest_tls(&args).unwrap();
    let state = state_at(NOW);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(serve_grpc(
        listener,
        state.clone(),
        tls,
        std::future::pending(),
    ));
    TlsServer {
        state,
        port,
        ca: ca_pem,
        server_name: server_name.to_owned(),
        _dir: dir,
    }
}

/// Why a report over TLS failed: the handshake (no status) or the server's status.
#[derive(Debug)]
enum TlsReportError {
    Connect(tonic::transport::Error),
    Status(tonic::Status),
}

impl TlsReportError {
    fn status(self) -> tonic::Status {
        match self {
            Self::Status(status) => status,
            Self::Connect(e) => panic!("expected a status, the connection failed: {e}"),
        }
    }
}

impl TlsServer {
    /// One `Report` stream with `identity` as the client certificate.
    async fn report(
        &self,
        identity: Option<(String, String)>,
        messages: Vec<AgentMessage>,
    ) -> Result<nephilia_proto::v1::ReportSummary, TlsReportError> {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .domain_name(&self.server_name);
        if let Some((cert, key)) = identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        let channel = Endpoint::from_shared(format!("https://localhost:{}", self.port))
            .unwrap()
            .tls_config(config)
            .unwrap()
            .connect()
            .await
            .map_err(TlsReportError::Connect)?;
        IngestClient::new(channel)
            .report(tokio_stream::iter(messages))
            .await
            .map(tonic::Response::into_inner)
            .map_err(TlsReportError::Status)
    }
}

fn heartbeat(node: &str) -> AgentMessage {
    AgentMessage::heartbeat(Heartbeat {
        node: node.into(),
        ..Heartbeat::current()
    })
}

#[tokio::test]
async fn mutual_tls_ingest_accepts_only_agents_the_ca_signed() {
    let (server, pki) = tls_server("nephilia-tls-ca").await;
    let node_a = agent_certificate(&pki, &["node-a"], None);
    let summary = server
        .report(Some(node_a), vec![heartbeat("node-a")])
        .await
        .expect("a client the CA signed");
    assert_eq!(summary.heartbeats, 1);
    assert!(
        server
            .report(None, vec![heartbeat("node-a")])
            .await
            .is_err(),
        "a client without a certificate"
    );
    let stranger = Pki::new("another CA");
    assert!(
        server
            .report(
                Some(agent_certificate(&stranger, &["node-a"], None)),
                vec![heartbeat("node-a")]
            )
            .await
            .is_err(),
        "a client another CA signed"
    );
}

#[tokio::test]
async fn with_mtls_a_stream_reports_only_for_the_node_its_certificate_names() {
    let (server, pki) = tls_server("nephilia-tls-node").await;
    let node_a = || Some(agent_certificate(&pki, &["node-a"], None));
    let bound = "but this stream's client certificate is for node \"node-a\"";

    // node-a's key naming node-b: the batch, a record in node-a's own batch, a heartbeat.
    let status = server
        .report(
            node_a(),
            vec![AgentMessage::batch("node-b", 1, vec![good_request(0)])],
        )
        .await
        .unwrap_err()
        .status();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        format!("batch 1 names node \"node-b\", {bound}")
    );

    let mut foreign = good_request(1);
    if let Some(nephilia_proto::v1::record::Kind::Request(r)) = &mut foreign.kind {
        r.node = "node-b".into();
    }
    let status = server
        .report(
            node_a(),
            vec![AgentMessage::batch("node-a", 2, vec![good_flow(), foreign])],
        )
        .await
        .unwrap_err()
        .status();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        format!("batch 2: record 1 names node \"node-b\", {bound}")
    );

    let status = server
        .report(node_a(), vec![heartbeat("node-b")])
        .await
        .unwrap_err()
        .status();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        format!("heartbeat names node \"node-b\", {bound}")
    );
    {
        let store = server.state.store();
        assert_eq!(
            (store.counters.batches, store.counters.heartbeats),
            (0, 0),
            "nothing of a refused message is kept"
        );
        assert_eq!((store.counters.requests, store.counters.mesh_flows), (0, 0));
        assert!(store.agents().is_empty());
        assert_eq!(store.counters.rejected.get("permission_denied"), Some(&3));
    }

    // The certificate of the old layout, one key for the server and every agent, names
    // no single node; a certificate naming none is refused as well.
    let shared = agent_certificate(
        &pki,
        &["node-a", "nephilia-server.nephilia-system.svc"],
        None,
    );
    let status = server
        .report(Some(shared), vec![heartbeat("node-a")])
        .await
        .unwrap_err()
        .status();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "the client certificate names 2 DNS names (\"node-a\", \"nephilia-server.nephilia-system.svc\"); an agent's certificate names exactly its node"
    );

    // Naming its own node, the same key is served; a certificate without DNS names names
    // its node by its common name.
    let summary = server
        .report(
            node_a(),
            vec![
                heartbeat("node-a"),
                AgentMessage::batch("node-a", 3, vec![good_request(2), good_flow()]),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            summary.batches_accepted,
            summary.records_accepted,
            summary.heartbeats
        ),
        (1, 2, 1)
    );
    let by_common_name = agent_certificate(&pki, &[], Some("node-c"));
    let summary = server
        .report(Some(by_common_name), vec![heartbeat("node-c")])
        .await
        .unwrap();
    assert_eq!(summary.heartbeats, 1);
    {
        let store = server.state.store();
        assert_eq!((store.counters.batches, store.counters.requests), (1, 1));
        assert_eq!(
            store.agents().keys().collect::<Vec<_>>(),
            ["node-a", "node-c"]
        );
        assert_eq!(store.counters.rejected.get("permission_denied"), Some(&4));
    }

    // Operators see the refusals on /metrics.
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let response = nephilia_graph_server::api::app(server.state.clone())
        .oneshot(
            axum::http::Request::get("/metrics")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let metrics = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "nephilia_ingest_rejected_total{reason=\"permission_denied\"} 4"),
        "{metrics}"
    );
}

#[tokio::test]
async fn multi_mib_strings_are_capped_or_refused_and_never_echoed() {
    use nephilia_graph_server::flows::FlowFilter;
    use nephilia_graph_server::record::{MAX_FIELD_BYTES, Record as Stored};
    let server = server().await;
    let three_mib = 3 << 20;
    let long = || "x".repeat(three_mib);

    // A path is kept cut to 2 KiB, as the agent cuts it; so is a heartbeat's version.
    let mut request = good_request(0);
    if let Some(nephilia_proto::v1::record::Kind::Request(r)) = &mut request.kind {
        r.path = format!("/{}", long());
    }
    let summary = report(
        &server.url,
        vec![
            AgentMessage::heartbeat(Heartbeat {
                node: "node-a".into(),
                agent_version: long(),
                ..Heartbeat::current()
            }),
            AgentMessage::batch("node-a", 1, vec![request]),
        ],
    )
    .await
    .unwrap();
    assert_eq!((summary.batches_accepted, summary.records_accepted), (1, 1));
    {
        let store = server.state.store();
        assert_eq!(
            store.agents()["node-a"].agent_version.len(),
            MAX_FIELD_BYTES
        );
        let all = FlowFilter {
            until_ns: u64::MAX,
            limit: 10,
            ..FlowFilter::default()
        };
        let stored = store.flows.query(&all);
        let [Stored::Request(r)] = stored.as_slice() else {
            panic!("one request stored: {stored:?}")
        };
        assert_eq!(r.path.len(), MAX_FIELD_BYTES);
    }

    // An address or a node name that long is refused; the status names the field and its
    // length, not the value.
    let mut request = good_request(1);
    if let Some(nephilia_proto::v1::record::Kind::Request(r)) = &mut request.kind {
        r.local = long();
    }
    let status = report(
        &server.url,
        vec![AgentMessage::batch("node-a", 2, vec![request])],
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        format!(
            "batch 2 from node-a: record 0: request.local is not \"ip:port\": \"{}…\" (3145728 bytes)",
            "x".repeat(64)
        )
    );
    assert_eq!(status.message().len(), 148);

    let status = report(
        &server.url,
        vec![AgentMessage::batch(long(), 3, vec![good_request(2)])],
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "batch 3: node is 3145728 bytes long, at most 253 are accepted"
    );
    let status = report(
        &server.url,
        vec![AgentMessage::heartbeat(Heartbeat {
            node: long(),
            ..Heartbeat::current()
        })],
    )
    .await
    .unwrap_err();
    assert_eq!(
        status.message(),
        "heartbeat: node is 3145728 bytes long, at most 253 are accepted"
    );
    let store = server.state.store();
    assert_eq!((store.counters.batches, store.counters.requests), (1, 1));
    assert_eq!(store.counters.rejected.get("malformed"), Some(&3));
    assert_eq!(store.agents().len(), 1);
}

#[tokio::test]
async fn certificates_from_the_deploy_script_bind_each_agent_to_its_node() {
    let dir = tempdir("nephilia-tls-script");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/tls/issue-certificates.sh"
    );
    let output = std::process::Command::new(script)
        .arg("-d")
        .arg(&*dir)
        .args(["node-a", "node-b"])
        .output()
        .expect("running deploy/tls/issue-certificates.sh (it needs openssl)");
    assert!(output.status.success(), "{output:?}");
    let pem = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let [node_a, node_b] = ["node-a", "node-b"].map(|node| {
        (
            pem(&format!("agent-{node}.crt")),
            pem(&format!("agent-{node}.key")),
        )
    });
    let files = ["server.crt", "server.key", "ca.crt"].map(|name| dir.join(name));
    let server = serve_tls(dir, files, "nephilia-server.nephilia-system.svc").await;

    let summary = server
        .report(
            Some(node_a),
            vec![
                heartbeat("node-a"),
                AgentMessage::batch("node-a", 1, vec![good_request(0)]),
            ],
        )
        .await
        .expect("node-a's certificate reports for node-a");
    assert_eq!((summary.heartbeats, summary.records_accepted), (1, 1));
    let status = server
        .report(
            Some(node_b),
            vec![AgentMessage::batch("node-a", 2, vec![good_request(1)])],
        )
        .await
        .unwrap_err()
        .status();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "batch 2 names node \"node-a\", but this stream's client certificate is for node \"node-b\""
    );
    let store = server.state.store();
    assert_eq!((store.counters.batches, store.counters.requests), (1, 1));
}

#[tokio::test]
async fn agent_drop_counters_reach_the_heartbeat_and_metrics() {
    use http_body_util::BodyExt;
    use nephilia_agent::{
        observe::Summary,
        report::{self, AgentFacts, Outbox, ReporterOptions},
    };
    use tower::ServiceExt;

    let server = server().await;
    // What the observe loop hands the reporter at a tick: the agent's own drops.
    let mut summary = Summary {
        undecodable_events: 1,
        undecodable_segments: 2,
        ..Summary::default()
    };
    summary.l7.evicted_connection_limit = 3;
    summary.l7.evicted_memory_budget = 6;
    // `l7_parser.errors` is indexed as `ParseErrorKind::ALL`: 6 is stream_overflow.
    summary.l7_parser.errors[6] = 20;
    summary.flows.forgotten_idle = 4;
    summary.flows.forgotten_capacity = 5;
    let outbox = Outbox::new(100);
    outbox.set_agent_drops(summary.drop_counters());
    let reporter = tokio::spawn(report::run(
        ReporterOptions::new(server.url.clone(), "node-a"),
        AgentFacts::default(),
        Arc::clone(&outbox),
    ));
    let mut heard = false;
    for _ in 0..100 {
        if server.state.store().agents().contains_key("node-a") {
            heard = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    reporter.abort();
    assert!(heard, "no heartbeat from node-a within 5 s");
    {
        let store = server.state.store();
        let counters = &store.agents()["node-a"].drop_counters;
        assert_eq!(counters["l7_evicted_memory_budget"], 6);
        assert_eq!(counters["l7_parser_stream_overflow"], 20);
        assert_eq!(counters["mesh_flow_forgotten_idle"], 4);
    }

    let response = nephilia_graph_server::api::app(server.state.clone())
        .oneshot(
            axum::http::Request::get("/metrics")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), axum::http::StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let metrics = String::from_utf8(body.to_vec()).unwrap();
    let drops: Vec<&str> = metrics
        .lines()
        .filter(|line| line.starts_with("nephilia_agent_drops_total{"))
        .filter(|line| !line.ends_with(" 0"))
        .collect();
    assert_eq!(
        drops,
        [
            r#"nephilia_agent_drops_total{node="node-a",counter="l7_evicted_connection_limit"} 3"#,
            r#"nephilia_agent_drops_total{node="node-a",counter="l7_evicted_memory_budget"} 6"#,
            r#"nephilia_agent_drops_total{node="node-a",counter="l7_parser_stream_overflow"} 20"#,
            r#"nephilia_agent_drops_total{node="node-a",counter="l7_undecodable_segments"} 2"#,
            r#"nephilia_agent_drops_total{node="node-a",counter="mesh_flow_forgotten_capacity"} 5"#,
            r#"nephilia_agent_drops_total{node="node-a",counter="mesh_flow_forgotten_idle"} 4"#,
            r#"nephilia_agent_drops_total{node="node-a",counter="undecodable_events"} 1"#,
        ]
    );
    // Every counter is there, zeros included: the parser's other 11 error kinds.
    assert!(metrics.contains(
        "nephilia_agent_drops_total{node=\"node-a\",counter=\"l7_parser_hpack_error\"} 0"
    ));
}
