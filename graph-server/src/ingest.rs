//! The gRPC `Ingest` service: validates each message of an agent's stream and hands whole
//! batches to the [`Store`](crate::store::Store). A bad message ends only its own stream,
//! with a status naming what was wrong; the agent reconnects and the server keeps serving.
use std::sync::Arc;

use nephilia_proto::v1::{AgentMessage, Batch, ReportSummary, agent_message};
use nephilia_proto::{MAX_BATCH_RECORDS, PROTOCOL_VERSION};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::api::AppState;
use crate::record::{Record, RecordError};

/// Why a message was rejected.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The message had neither a batch nor a heartbeat.
    #[error("message has no body (batch or heartbeat)")]
    EmptyMessage,
    /// The agent speaks another protocol version.
    #[error(
        "batch {sequence}: protocol_version {got} is not supported (this server speaks {PROTOCOL_VERSION})"
    )]
    Version { sequence: u64, got: u32 },
    /// `node` was empty.
    #[error("{what}: node is missing")]
    MissingNode { what: String },
    /// More records than [`MAX_BATCH_RECORDS`].
    #[error(
        "batch {sequence} from {node} has {count} records, at most {MAX_BATCH_RECORDS} are accepted"
    )]
    TooManyRecords {
        sequence: u64,
        node: String,
        count: usize,
    },
    /// One record failed validation; the whole batch is refused.
    #[error("batch {sequence} from {node}: record {index}: {source}")]
    Record {
        sequence: u64,
        node: String,
        index: usize,
        source: RecordError,
    },
}

impl IngestError {
    /// Label of `nephilia_ingest_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::EmptyMessage | Self::MissingNode { .. } | Self::Record { .. } => "malformed",
            Self::Version { .. } => "version",
            Self::TooManyRecords { .. } => "too_many_records",
        }
    }
}

impl From<IngestError> for Status {
    fn from(e: IngestError) -> Self {
        let code = match e {
            IngestError::Version { .. } => Code::FailedPrecondition,
            IngestError::TooManyRecords { .. } => Code::ResourceExhausted,
            _ => Code::InvalidArgument,
        };
        Status::new(code, e.to_string())
    }
}

/// Checks a whole batch and converts its records; nothing of a bad batch is kept.
pub fn validate(batch: Batch) -> Result<(String, Vec<Record>), IngestError> {
    if batch.protocol_version != PROTOCOL_VERSION {
        return Err(IngestError::Version {
            sequence: batch.sequence,
            got: batch.protocol_version,
        });
    }
    if batch.node.is_empty() {
        return Err(IngestError::MissingNode {
            what: format!("batch {}", batch.sequence),
        });
    }
    if batch.records.len() > MAX_BATCH_RECORDS {
        return Err(IngestError::TooManyRecords {
            sequence: batch.sequence,
            node: batch.node,
            count: batch.records.len(),
        });
    }
    let mut records = Vec::with_capacity(batch.records.len());
    for (index, record) in batch.records.into_iter().enumerate() {
        match Record::try_from(record) {
            Ok(r) => records.push(r),
            Err(source) => {
                return Err(IngestError::Record {
                    sequence: batch.sequence,
                    node: batch.node,
                    index,
                    source,
                });
            }
        }
    }
    Ok((batch.node, records))
}

pub struct IngestService {
    state: Arc<AppState>,
}

impl IngestService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    /// The tonic service with the message size limit applied.
    pub fn into_server(self) -> nephilia_proto::IngestServer<Self> {
        nephilia_proto::IngestServer::new(self)
            .max_decoding_message_size(nephilia_proto::MAX_MESSAGE_BYTES)
    }

    fn handle(
        &self,
        message: AgentMessage,
        summary: &mut ReportSummary,
    ) -> Result<(), IngestError> {
        match message.body.ok_or(IngestError::EmptyMessage)? {
            agent_message::Body::Batch(batch) => {
                let sequence = batch.sequence;
                let (node, records) = validate(batch)?;
                let now = self.state.now_ns();
                let outcome = self.state.store().ingest(&node, records, now);
                if outcome.refused.total() > 0 {
                    tracing::warn!(
                        node,
                        sequence,
                        too_old = outcome.refused.too_old,
                        in_future = outcome.refused.in_future,
                        "refused records whose time lies outside [now - retention, now + 5 min]"
                    );
                }
                summary.batches_accepted += 1;
                summary.records_accepted += outcome.accepted;
                summary.last_sequence = sequence;
            }
            agent_message::Body::Heartbeat(heartbeat) => {
                if heartbeat.protocol_version != PROTOCOL_VERSION {
                    return Err(IngestError::Version {
                        sequence: 0,
                        got: heartbeat.protocol_version,
                    });
                }
                if heartbeat.node.is_empty() {
                    return Err(IngestError::MissingNode {
                        what: "heartbeat".into(),
                    });
                }
                let now = self.state.now_ns();
                self.state.store().heartbeat(heartbeat, now);
                summary.heartbeats += 1;
            }
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl nephilia_proto::Ingest for IngestService {
    async fn report(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<ReportSummary>, Status> {
        let mut stream = request.into_inner();
        let mut summary = ReportSummary::default();
        loop {
            let message = match stream.message().await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(status) => {
                    // Oversized or undecodable: tonic already says which. Anything else is
                    // the transport (the agent went away mid-stream): it resends what was
                    // not acknowledged, so nothing was rejected.
                    let reason = match status.code() {
                        Code::OutOfRange | Code::ResourceExhausted => Some("too_large"),
                        Code::Internal | Code::InvalidArgument => Some("undecodable"),
                        _ => None,
                    };
                    match reason {
                        Some(reason) => {
                            self.state.store().reject(reason);
                            tracing::warn!(%status, "agent stream ended by a bad message");
                        }
                        None => tracing::info!(%status, "agent stream broke off"),
                    }
                    return Err(status);
                }
            };
            if let Err(e) = self.handle(message, &mut summary) {
                self.state.store().reject(e.reason());
                tracing::warn!(error = %e, "rejected agent message");
                return Err(e.into());
            }
        }
        Ok(Response::new(summary))
    }
}
