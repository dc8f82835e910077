//! The gRPC `Ingest` service: validates each message of an agent's stream and hands whole
//! batches to the [`Store`](crate::store::Store). A bad message ends only its own stream,
//! with a status naming what was wrong; the agent reconnects and the server keeps serving.
//! With mTLS, a stream may only report for the node its client certificate names
//! ([`identity`]).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nephilia_proto::v1::{AgentMessage, Batch, Heartbeat, ReportSummary, agent_message};
use nephilia_proto::{MAX_BATCH_RECORDS, PROTOCOL_VERSION};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::api::AppState;
use crate::record::{MAX_NODE_BYTES, Record, RecordError, capped};

mod identity;

pub use identity::{IdentityError, NodeIdentity};

/// Every `reason` of `nephilia_ingest_rejected_total`: [`IngestError::reason`], and
/// `too_large` / `undecodable` for messages tonic could not decode.
pub const REJECT_REASONS: [&str; 6] = [
    "malformed",
    "version",
    "too_many_records",
    "too_large",
    "undecodable",
    "permission_denied",
];

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
    /// `node` was longer than [`MAX_NODE_BYTES`]; not shown, only its length.
    #[error("{what}: node is {len} bytes long, at most {MAX_NODE_BYTES} are accepted")]
    NodeTooLong { what: String, len: usize },
    /// The client certificate does not name one node, so the stream may report for none.
    #[error("{0}")]
    Unidentified(#[from] IdentityError),
    /// A batch, record or heartbeat named another node than the stream's certificate.
    #[error(
        "{what} names node {claimed:?}, but this stream's client certificate is for node {bound:?}"
    )]
    WrongNode {
        what: String,
        claimed: String,
        bound: String,
    },
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
            Self::EmptyMessage
            | Self::MissingNode { .. }
            | Self::NodeTooLong { .. }
            | Self::Record { .. } => "malformed",
            Self::Version { .. } => "version",
            Self::TooManyRecords { .. } => "too_many_records",
            Self::Unidentified(_) | Self::WrongNode { .. } => "permission_denied",
        }
    }
}

impl From<IngestError> for Status {
    fn from(e: IngestError) -> Self {
        let code = match e {
            IngestError::Version { .. } => Code::FailedPrecondition,
            IngestError::TooManyRecords { .. } => Code::ResourceExhausted,
            IngestError::Unidentified(_) | IngestError::WrongNode { .. } => Code::PermissionDenied,
            _ => Code::InvalidArgument,
        };
        Status::new(code, e.to_string())
    }
}

/// Checks a `node` a batch or heartbeat names: present, no longer than a Kubernetes node
/// name, and, on a stream bound to a certificate, that certificate's node.
fn check_node(
    what: impl Fn() -> String,
    node: &str,
    identity: Option<&NodeIdentity>,
) -> Result<(), IngestError> {
    if node.is_empty() {
        return Err(IngestError::MissingNode { what: what() });
    }
    if node.len() > MAX_NODE_BYTES {
        return Err(IngestError::NodeTooLong {
            what: what(),
            len: node.len(),
        });
    }
    match identity {
        Some(identity) if !identity.allows(node) => Err(IngestError::WrongNode {
            what: what(),
            claimed: node.to_owned(),
            bound: identity.node().to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Checks a whole batch and converts its records; nothing of a bad batch is kept. With an
/// `identity` (mTLS), the batch and each of its records must name that identity's node.
pub fn validate(
    batch: Batch,
    identity: Option<&NodeIdentity>,
) -> Result<(String, Vec<Record>), IngestError> {
    if batch.protocol_version != PROTOCOL_VERSION {
        return Err(IngestError::Version {
            sequence: batch.sequence,
            got: batch.protocol_version,
        });
    }
    check_node(
        || format!("batch {}", batch.sequence),
        &batch.node,
        identity,
    )?;
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
            Ok(r) => {
                let claimed = match &r {
                    Record::Connection(_) => None,
                    Record::MeshFlow(f) => Some(&f.node),
                    Record::Request(r) => Some(&r.node),
                };
                if let (Some(identity), Some(claimed)) = (identity, claimed)
                    && !identity.allows(claimed)
                {
                    return Err(IngestError::WrongNode {
                        what: format!("batch {}: record {index}", batch.sequence),
                        claimed: claimed.clone(),
                        bound: identity.node().to_owned(),
                    });
                }
                records.push(r);
            }
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

/// Checks a heartbeat and caps its strings (a broken agent's version string, program
/// names or drop counter names are no reason to refuse its counters).
fn heartbeat(
    mut heartbeat: Heartbeat,
    identity: Option<&NodeIdentity>,
) -> Result<Heartbeat, IngestError> {
    if heartbeat.protocol_version != PROTOCOL_VERSION {
        return Err(IngestError::Version {
            sequence: 0,
            got: heartbeat.protocol_version,
        });
    }
    check_node(|| "heartbeat".to_owned(), &heartbeat.node, identity)?;
    heartbeat.agent_version = capped(heartbeat.agent_version);
    heartbeat.kernel_release = capped(heartbeat.kernel_release);
    heartbeat.attached_programs = heartbeat
        .attached_programs
        .into_iter()
        .map(capped)
        .collect();
    heartbeat.drop_counters = heartbeat
        .drop_counters
        .into_iter()
        .map(|(name, count)| (capped(name), count))
        .collect();
    Ok(heartbeat)
}

/// The last batch kept from each node's agent. An agent sends every batch it has no
/// acknowledgement for again on its next stream; when the stream broke after the server
/// had kept some of them, those are acknowledged again but not counted twice.
#[derive(Debug, Default)]
pub struct BatchLedger {
    /// node → (agent instance, last sequence kept). One entry per node: a new instance
    /// is a restarted agent, whose sequence starts again.
    last: Mutex<HashMap<String, (u64, u64)>>,
}

impl BatchLedger {
    /// Whether batch `sequence` of agent `instance` on `node` is new, recording it as kept
    /// if so. Agents that do not give an instance (0) are not deduplicated.
    pub fn admit(&self, node: &str, instance: u64, sequence: u64) -> bool {
        if instance == 0 {
            return true;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match last.get_mut(node) {
            Some((kept_instance, kept)) if *kept_instance == instance => {
                if sequence <= *kept {
                    return false;
                }
                *kept = sequence;
            }
            _ => {
                last.insert(node.to_owned(), (instance, sequence));
            }
        }
        true
    }
}

pub struct IngestService {
    state: Arc<AppState>,
    ledger: BatchLedger,
}

impl IngestService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self {
            state,
            ledger: BatchLedger::default(),
        }
    }

    /// The tonic service with the message size limit applied.
    pub fn into_server(self) -> nephilia_proto::IngestServer<Self> {
        nephilia_proto::IngestServer::new(self)
            .max_decoding_message_size(nephilia_proto::MAX_MESSAGE_BYTES)
    }

    /// Counts and logs a refused message (or certificate); the status ends the stream.
    /// Every value an error shows is short (capped or excerpted), so neither the status
    /// nor the log line carries what a hostile agent stuffed into a field.
    fn reject(&self, e: IngestError, identity: Option<&NodeIdentity>) -> Status {
        self.state.store().reject(e.reason());
        match identity {
            Some(identity) => {
                tracing::warn!(error = %e, certificate_node = identity.node(), "rejected agent message");
            }
            None => tracing::warn!(error = %e, "rejected agent message"),
        }
        e.into()
    }

    fn handle(
        &self,
        message: AgentMessage,
        identity: Option<&NodeIdentity>,
        summary: &mut ReportSummary,
    ) -> Result<(), IngestError> {
        match message.body.ok_or(IngestError::EmptyMessage)? {
            agent_message::Body::Batch(batch) => {
                let (sequence, instance) = (batch.sequence, batch.agent_instance);
                let (node, records) = validate(batch, identity)?;
                if !self.ledger.admit(&node, instance, sequence) {
                    tracing::debug!(node, sequence, "batch already kept; acknowledged again");
                    summary.batches_duplicate += 1;
                    summary.last_sequence = sequence;
                    return Ok(());
                }
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
            agent_message::Body::Heartbeat(message) => {
                let heartbeat = heartbeat(message, identity)?;
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
        // With mTLS the client had to present a certificate our CA signed; its leaf names
        // the one node this stream may report for. Without TLS there is no identity.
        let identity = request
            .peer_certs()
            .map(|chain| match chain.first() {
                Some(leaf) => NodeIdentity::from_certificate(leaf),
                None => Err(IdentityError::NoNodeName),
            })
            .transpose();
        let identity = match identity {
            Ok(identity) => identity,
            Err(e) => return Err(self.reject(e.into(), None)),
        };
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
            if let Err(e) = self.handle(message, identity.as_ref(), &mut summary) {
                return Err(self.reject(e, identity.as_ref()));
            }
        }
        Ok(Response::new(summary))
    }
}
