//! The agent → graph server protocol, generated from `proto/nephilia/v1/*.proto`.
//!
//! An agent opens one client stream (`Ingest/Report`) and sends heartbeats and batches:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use nephilia_proto::v1::{AgentMessage, Heartbeat, Record, record};
//! let mut client = nephilia_proto::IngestClient::connect("http://127.0.0.1:9697").await?;
//! let (tx, rx) = tokio::sync::mpsc::channel::<AgentMessage>(64);
//! let call = tokio::spawn(async move {
//!     client.report(tokio_stream::wrappers::ReceiverStream::new(rx)).await
//! });
//! tx.send(AgentMessage::heartbeat(Heartbeat { node: "node-a".into(), ..Heartbeat::current() })).await?;
//! let records = vec![Record { kind: Some(record::Kind::Connection(Default::default())) }];
//! tx.send(AgentMessage::batch("node-a", 1, records)).await?;
//! drop(tx); // closing the stream makes the server answer with a summary
//! let summary = call.await??.into_inner();
//! # let _ = summary; Ok(()) }
//! ```

/// Version 1 of the protocol.
pub mod v1 {
    tonic::include_proto!("nephilia.v1");
}

pub use v1::ingest_client::IngestClient;
pub use v1::ingest_server::{Ingest, IngestServer};

/// The value of `protocol_version` in batches and heartbeats of this crate's version.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default size limit of one `AgentMessage` on both sides (4 MiB, tonic's default): a
/// batch of a few thousand records fits with room to spare.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Most records one batch may carry; larger batches are rejected as malformed.
pub const MAX_BATCH_RECORDS: usize = 10_000;

impl v1::AgentMessage {
    /// A batch of records from `node`, stamped with this protocol version.
    pub fn batch(node: impl Into<String>, sequence: u64, records: Vec<v1::Record>) -> Self {
        Self {
            body: Some(v1::agent_message::Body::Batch(v1::Batch {
                protocol_version: PROTOCOL_VERSION,
                node: node.into(),
                sequence,
                records,
                agent_instance: 0,
            })),
        }
    }

    /// The same batch stamped with the sending agent's `instance` (random per process),
    /// which lets the server drop a batch it already kept; other messages are unchanged.
    pub fn with_agent_instance(mut self, instance: u64) -> Self {
        if let Some(v1::agent_message::Body::Batch(batch)) = &mut self.body {
            batch.agent_instance = instance;
        }
        self
    }

    /// A heartbeat message; `protocol_version` is forced to this crate's version.
    pub fn heartbeat(mut heartbeat: v1::Heartbeat) -> Self {
        heartbeat.protocol_version = PROTOCOL_VERSION;
        Self {
            body: Some(v1::agent_message::Body::Heartbeat(heartbeat)),
        }
    }
}

impl v1::Heartbeat {
    /// A heartbeat with this protocol version and nothing else filled in.
    pub fn current() -> Self {
        Self {
            protocol_version: PROTOCOL_VERSION,
            ..Self::default()
        }
    }
}

impl From<v1::Connection> for v1::Record {
    fn from(record: v1::Connection) -> Self {
        Self {
            kind: Some(v1::record::Kind::Connection(record)),
        }
    }
}

impl From<v1::MeshFlow> for v1::Record {
    fn from(record: v1::MeshFlow) -> Self {
        Self {
            kind: Some(v1::record::Kind::MeshFlow(record)),
        }
    }
}

impl From<v1::Request> for v1::Record {
    fn from(record: v1::Request) -> Self {
        Self {
            kind: Some(v1::record::Kind::Request(record)),
        }
    }
}
