//! A batch that reached the store on a stream that then broke (the agent never saw the
//! summary, so it sends the batch again on its next stream) is acknowledged but counted
//! once: the server remembers the last sequence per node and agent instance.
use std::time::Duration;

use nephilia_proto::IngestClient;
use nephilia_proto::v1::{AgentMessage, Heartbeat, Protocol, Record, Request, Role};

mod support;

use support::peer;

const T0: u64 = 1_767_268_980_000_000_000;
const INSTANCE: u64 = 0x5eed_0001;

fn request(i: u64) -> Record {
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

fn batch(instance: u64, sequence: u64, first: u64, count: u64) -> AgentMessage {
    let records = (first..first + count).map(request).collect();
    AgentMessage::batch("node-a", sequence, records).with_agent_instance(instance)
}

fn heartbeat() -> AgentMessage {
    AgentMessage::heartbeat(Heartbeat {
        node: "node-a".into(),
        ..Heartbeat::current()
    })
}

#[tokio::test]
async fn a_batch_resent_after_its_stream_broke_is_acknowledged_and_counted_once() {
    let server = support::ingest_server_at(T0 + 10_000_000_000).await;
    let (state, url) = (&server.state, &server.url);
    let requests = || state.store().counters.requests;

    // Stream 1 delivers batches 1 and 2, then breaks before the agent closes its side: the
    // server kept both, the agent never got a summary.
    let mut client = IngestClient::connect(url.clone()).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let call = tokio::spawn(async move {
        client
            .report(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    for message in [
        heartbeat(),
        batch(INSTANCE, 1, 0, 3),
        batch(INSTANCE, 2, 3, 2),
    ] {
        tx.send(message).await.unwrap();
    }
    for _ in 0..200 {
        if requests() == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(requests(), 5, "stream 1 reached the store");
    call.abort();
    let _ = call.await;

    // Stream 2 sends both again, then a new one.
    let mut client = IngestClient::connect(url.clone()).await.unwrap();
    let summary = client
        .report(tokio_stream::iter(vec![
            heartbeat(),
            batch(INSTANCE, 1, 0, 3),
            batch(INSTANCE, 2, 3, 2),
            batch(INSTANCE, 3, 5, 1),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            summary.batches_accepted,
            summary.records_accepted,
            summary.batches_duplicate,
            summary.last_sequence
        ),
        (1, 1, 2, 3),
        "the resent batches are acknowledged (last_sequence 3) without being counted"
    );
    {
        let store = state.store();
        assert_eq!(store.counters.requests, 6);
        assert_eq!(store.counters.batches, 3);
        assert_eq!(store.agents()["node-a"].records_received, 6);
    }

    // A restarted agent (another instance) starts its sequence again at 1: new data.
    let summary = client
        .report(tokio_stream::iter(vec![
            heartbeat(),
            batch(INSTANCE + 1, 1, 10, 4),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (summary.batches_accepted, summary.batches_duplicate),
        (1, 0)
    );
    assert_eq!(state.store().counters.requests, 10);
}
