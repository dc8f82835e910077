//! The delivery loop: one short gRPC stream after another, each acknowledged by the
//! server's summary; reconnects with jittered exponential backoff; gives up on a server
//! that stops answering after a deadline, so a silent peer (no RST: a dead node, a
//! black-holed route) is noticed within `STREAM_LIFETIME + ACK_TIMEOUT`.

use std::{
    hash::{BuildHasher as _, RandomState},
    sync::Arc,
    time::Duration,
};

use backon::BackoffBuilder as _;
use nephilia_proto::{
    IngestClient,
    v1::{AgentMessage, ReportSummary},
};
use tokio::{sync::mpsc, time::Instant};
use tonic::{Code, Status, transport::Channel};

use super::{AgentFacts, Outbox, ReporterOptions, Result, endpoint, heartbeat, outbox::SentBatch};

/// How long one stream carries batches before it is closed for acknowledgement.
pub const STREAM_LIFETIME: Duration = Duration::from_secs(2);

/// How long the agent waits for the server's summary once a stream's lifetime is over.
/// A server that stops answering is given up on after this and the agent reconnects.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Most unacknowledged batches one stream sends again (10 000 records at the default
/// batch size): a long outage's backlog is caught up over several streams, each well
/// within `ACK_TIMEOUT`, instead of one that a slow link cannot finish in time.
const MAX_RESENT_BATCHES: usize = 20;

/// HTTP/2 pings while a stream is open: a connection whose pings go unanswered for
/// `KEEPALIVE_TIMEOUT` is closed, which ends its stream with an error.
pub(super) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub(super) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Delays between reconnects: exponential from 100 ms up to 5 s, each with a random extra
/// of up to itself (so 5–10 s at most), so agents that lost the server together do not
/// come back in lockstep.
pub fn reconnect_delays() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Random per agent process: with the node and the sequence it names a batch, so the
/// server can drop one it already kept (see `Batch.agent_instance`).
fn agent_instance() -> u64 {
    // RandomState is seeded from the OS's randomness once per process.
    let instance = RandomState::new().hash_one((std::process::id(), std::time::SystemTime::now()));
    instance.max(1)
}

/// Whether the server refused the batches themselves (resending cannot help).
fn refused(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::OutOfRange
            | Code::ResourceExhausted
            | Code::FailedPrecondition
    )
}

/// Sends the outbox's records until the process ends, or, once the outbox is closed,
/// until everything in it was acknowledged.
pub async fn run(options: ReporterOptions, facts: AgentFacts, outbox: Arc<Outbox>) -> Result<()> {
    let endpoint = endpoint(&options).await?;
    let instance = agent_instance();
    let mut delays = reconnect_delays();
    let mut sequence = 0u64;
    loop {
        if outbox.is_closing() && outbox.still_queued() == 0 {
            return Ok(());
        }
        let ended = match endpoint.connect().await {
            Ok(channel) => tokio::time::timeout(
                STREAM_LIFETIME + ACK_TIMEOUT,
                stream(channel, &options, &facts, &outbox, instance, &mut sequence),
            )
            .await
            .map_err(|_| ()),
            Err(error) => {
                let retry_in = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(server = %options.server, %error, ?retry_in, "cannot reach the graph server");
                tokio::time::sleep(retry_in).await;
                continue;
            }
        };
        match ended {
            Ok(Ok(summary)) => {
                outbox.acknowledge(summary.last_sequence);
                delays = reconnect_delays();
                continue;
            }
            Ok(Err(status)) if refused(status.code()) => {
                let records = outbox.refuse_unacknowledged();
                tracing::error!(%status, records, "the graph server refused batches; counted as unsent");
            }
            Ok(Err(status)) => {
                tracing::warn!(%status, "stream to the graph server broke; reconnecting");
            }
            Err(()) => {
                tracing::warn!(
                    server = %options.server,
                    timeout = ?(STREAM_LIFETIME + ACK_TIMEOUT),
                    "the graph server stopped answering; stream abandoned, reconnecting"
                );
            }
        }
        outbox.bound_unacknowledged();
        let retry_in = delays.next().unwrap_or(Duration::from_secs(5));
        tokio::time::sleep(retry_in).await;
    }
}

fn batch_message(node: &str, instance: u64, batch: SentBatch) -> AgentMessage {
    AgentMessage::batch(node, batch.sequence, batch.records).with_agent_instance(instance)
}

/// One stream: a heartbeat, the batches not acknowledged yet, then new batches for
/// `STREAM_LIFETIME` (or until the outbox is closed and empty); then the server's summary.
async fn stream(
    channel: Channel,
    options: &ReporterOptions,
    facts: &AgentFacts,
    outbox: &Outbox,
    instance: u64,
    sequence: &mut u64,
) -> Result<ReportSummary, Status> {
    let mut client = IngestClient::new(channel);
    let (tx, rx) = mpsc::channel::<AgentMessage>(64);
    let call = client.report(tokio_stream::wrappers::ReceiverStream::new(rx));
    let send = async move {
        // Every stream starts with a heartbeat, so the server hears from the node at least
        // every `STREAM_LIFETIME`.
        if tx.send(heartbeat(options, facts, outbox)).await.is_err() {
            return;
        }
        let backlog = outbox.unacknowledged();
        let caught_up = backlog.len() <= MAX_RESENT_BATCHES;
        for batch in backlog.into_iter().take(MAX_RESENT_BATCHES) {
            if tx
                .send(batch_message(&options.node, instance, batch))
                .await
                .is_err()
            {
                return;
            }
        }
        if !caught_up {
            // No new batch on this stream: the summary's `last_sequence` acknowledges
            // everything up to it, so it must not pass a batch left for the next stream.
            return;
        }
        let deadline = Instant::now() + STREAM_LIFETIME;
        while Instant::now() < deadline {
            let closing = outbox.is_closing();
            if !closing && outbox.len() < options.batch_records {
                let wait = options
                    .flush_interval
                    .min(deadline.saturating_duration_since(Instant::now()));
                let _ = tokio::time::timeout(wait, outbox.ready.notified()).await;
            }
            let Some(batch) = outbox.take(options.batch_records, *sequence + 1) else {
                if closing {
                    // Everything is sent: close the stream now for the summary.
                    break;
                }
                continue;
            };
            *sequence = batch.sequence;
            if tx
                .send(batch_message(&options.node, instance, batch))
                .await
                .is_err()
            {
                return;
            }
        }
        // Dropping `tx` closes the agent's side; the server answers with its summary.
    };
    tokio::pin!(call);
    tokio::select! {
        // The server ended the stream early (a refused batch): stop taking records.
        response = &mut call => return response.map(tonic::Response::into_inner),
        () = send => {}
    }
    call.await.map(tonic::Response::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_grow_exponentially_with_jitter() {
        let first: Vec<Duration> = reconnect_delays().take(12).collect();
        let second: Vec<Duration> = reconnect_delays().take(12).collect();
        for (attempt, delay) in first.iter().chain(&second).enumerate() {
            let attempt = attempt % 12;
            let base =
                (Duration::from_millis(100) * 2u32.pow(attempt as u32)).min(Duration::from_secs(5));
            // backon scales with f32: allow it a microsecond either way.
            let slack = Duration::from_micros(1);
            assert!(
                *delay + slack >= base && *delay < base * 2 + slack,
                "attempt {attempt}: {delay:?} outside [{base:?}, {:?})",
                base * 2
            );
        }
        assert_ne!(
            first, second,
            "two agents that lost the server together reconnect at different times"
        );
    }

    #[test]
    fn agent_instances_differ_and_are_never_zero() {
        let (a, b) = (agent_instance(), agent_instance());
        assert_ne!(a, b);
        assert!(a != 0 && b != 0);
    }
}
