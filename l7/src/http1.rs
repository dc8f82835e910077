//! HTTP/1.0 and HTTP/1.1 (RFC 9112): requests and responses of one connection,
//! matched in order (pipelining, RFC 9112 §9.3.2).

mod body;
mod head;

use std::collections::VecDeque;

use body::{BodyError, BodyReader, GapOutcome};
use head::{Framing, HeadError, find_head_end, parse_request, parse_response};
pub(crate) use head::{is_request_line, looks_like_request_start, looks_like_response_start};

use crate::counters::ParseErrorKind;
use crate::exchange::{Direction, L7Exchange, Protocol};
use crate::output::Output;

/// Whether the connection is still HTTP/1 after some input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Continue,
    /// Not (or no longer) HTTP/1: the first request was malformed, or the
    /// connection was upgraded or tunnelled. Stop feeding this parser.
    Stop,
}

/// A request waiting for (or receiving) its response.
#[derive(Debug)]
struct Pending {
    id: u64,
    /// Placeholder for a request whose head fell into a hole: its response is dropped.
    lost: bool,
    exchange: L7Exchange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    /// Accumulating a head in `head`.
    Head,
    Body(BodyReader),
    /// Looking for the next message start after lost bytes; `line_start` when
    /// the next byte begins a line. `head` holds a candidate prefix, if any.
    Resync {
        line_start: bool,
    },
}

/// One direction's message reader.
#[derive(Debug)]
struct MessageReader {
    direction: Direction,
    state: ReadState,
    head: Vec<u8>,
    /// Where to resume looking for the blank line.
    scan_from: usize,
    /// Request id (or response's request id) whose bytes this reader is reading.
    current: Option<u64>,
    last_ts: u64,
}

impl MessageReader {
    fn new(direction: Direction) -> Self {
        Self {
            direction,
            state: ReadState::Head,
            head: Vec::new(),
            scan_from: 0,
            current: None,
            last_ts: 0,
        }
    }

    fn looks_like_start(&self, bytes: &[u8]) -> Option<bool> {
        match self.direction {
            Direction::ClientToServer => looks_like_request_start(bytes),
            Direction::ServerToClient => looks_like_response_start(bytes),
        }
    }

    fn start_resync(&mut self, line_start: bool, out: &mut Output) {
        out.skipped(self.head.len());
        self.head.clear();
        self.scan_from = 0;
        self.current = None;
        self.state = ReadState::Resync { line_start };
    }
}

/// Parser of one HTTP/1 connection.
pub(crate) struct Http1Parser {
    request: MessageReader,
    response: MessageReader,
    pending: VecDeque<Pending>,
    next_id: u64,
    /// Until a first request parses, a malformed head means "not HTTP".
    seen_request: bool,
}

impl Http1Parser {
    pub(crate) fn new() -> Self {
        Self {
            request: MessageReader::new(Direction::ClientToServer),
            response: MessageReader::new(Direction::ServerToClient),
            pending: VecDeque::new(),
            next_id: 0,
            seen_request: false,
        }
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.request.head.capacity()
            + self.response.head.capacity()
            + self.pending.capacity() * std::mem::size_of::<Pending>()
            + self
                .pending
                .iter()
                .map(|p| p.exchange.method.capacity() + p.exchange.path.capacity() + 128)
                .sum::<usize>()
    }

    fn pending_mut(&mut self, id: Option<u64>) -> Option<&mut Pending> {
        let id = id?;
        self.pending.iter_mut().find(|p| p.id == id)
    }

    fn reader(&mut self, direction: Direction) -> &mut MessageReader {
        match direction {
            Direction::ClientToServer => &mut self.request,
            Direction::ServerToClient => &mut self.response,
        }
    }

    pub(crate) fn feed(
        &mut self,
        direction: Direction,
        ts: u64,
        bytes: &[u8],
        out: &mut Output,
    ) -> Verdict {
        self.reader(direction).last_ts = ts;
        let mut rest = bytes;
        while !rest.is_empty() {
            let state = self.reader(direction).state;
            let step = match state {
                ReadState::Head => self.feed_head(direction, ts, rest, out),
                ReadState::Body(body) => self.feed_body(direction, body, ts, rest, out),
                ReadState::Resync { line_start } => {
                    Ok(self.feed_resync(direction, line_start, rest, out))
                }
            };
            match step {
                Ok(consumed) => rest = &rest[consumed..],
                Err(Verdict::Stop) => return Verdict::Stop,
                Err(Verdict::Continue) => break,
            }
        }
        Verdict::Continue
    }

    /// Returns bytes consumed; `Err(Stop)` to give the connection up.
    fn feed_head(
        &mut self,
        direction: Direction,
        ts: u64,
        bytes: &[u8],
        out: &mut Output,
    ) -> Result<usize, Verdict> {
        let max = out.limits.max_head_bytes;
        let reader = self.reader(direction);
        let mut skip = 0;
        if reader.head.is_empty() {
            // Empty lines before a message are ignored (RFC 9112 §2.2).
            skip = bytes
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            if skip == bytes.len() {
                return Ok(skip);
            }
            reader.current = None;
            reader.scan_from = 0;
        }
        let bytes = &bytes[skip..];
        let old = reader.head.len();
        let take = bytes.len().min(max.saturating_sub(old));
        reader.head.extend_from_slice(&bytes[..take]);
        let Some(end) = find_head_end(&reader.head, reader.scan_from) else {
            if reader.head.len() >= max {
                out.error(ParseErrorKind::HeadTooLarge);
                if !self.seen_request {
                    return Err(Verdict::Stop);
                }
                self.head_lost(direction, out);
                self.reader(direction).start_resync(false, out);
            } else {
                // A terminator may straddle this feed and the next one.
                reader.scan_from = reader.head.len().saturating_sub(3);
            }
            return Ok(skip + take);
        };
        let consumed = skip + end - old;
        reader.head.truncate(end);
        let head = std::mem::take(&mut reader.head);
        let result = match direction {
            Direction::ClientToServer => self.on_request_head(&head, ts, out),
            Direction::ServerToClient => self.on_response_head(&head, ts, out),
        };
        // Keep the allocation: the next head on a keep-alive connection reuses it.
        let reader = self.reader(direction);
        reader.head = head;
        reader.head.clear();
        reader.scan_from = 0;
        match result {
            Ok(Verdict::Continue) => Ok(consumed),
            Ok(Verdict::Stop) => Err(Verdict::Stop),
            Err(_) => {
                out.error(ParseErrorKind::MalformedHead);
                if direction == Direction::ClientToServer && !self.seen_request {
                    return Err(Verdict::Stop);
                }
                out.skipped(end);
                self.head_lost(direction, out);
                self.reader(direction).state = ReadState::Resync { line_start: true };
                Ok(consumed)
            }
        }
    }

    fn on_request_head(
        &mut self,
        head: &[u8],
        ts: u64,
        out: &mut Output,
    ) -> Result<Verdict, HeadError> {
        let request = parse_request(head, out.limits.max_field_bytes)?;
        self.seen_request = true;
        let framing = request.framing();
        let unreadable_body = request.unreadable_body();
        let (authority, path) = split_absolute_form(&request.target);
        let exchange = L7Exchange {
            protocol: Protocol::Http1,
            method: request.method.clone(),
            path,
            authority: request.host.clone().or(authority),
            request_start_ns: ts,
            request_end_ns: ts,
            request_bytes: head.len() as u64,
            trace: request.trace.resolve(),
            ..L7Exchange::default()
        };
        let id = self.push_pending(exchange, false, out);
        if unreadable_body {
            // RFC 9112 §6.3 item 4: a request with an unknown transfer coding has
            // no knowable end; nothing after it on this connection can be framed.
            return Ok(Verdict::Stop);
        }
        self.request.current = Some(id);
        self.request.state = match framing {
            Framing::Length(n) => ReadState::Body(BodyReader::Length { remaining: n }),
            Framing::Chunked => ReadState::Body(BodyReader::chunked(out.limits.max_head_bytes)),
            Framing::None | Framing::UntilClose | Framing::Tunnel => ReadState::Head,
        };
        Ok(Verdict::Continue)
    }

    fn push_pending(&mut self, exchange: L7Exchange, lost: bool, out: &mut Output) -> u64 {
        if self.pending.len() >= out.limits.max_pending_requests.max(1) {
            self.pending.pop_front();
            out.error(ParseErrorKind::PendingOverflow);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.pending.push_back(Pending { id, lost, exchange });
        id
    }

    fn on_response_head(
        &mut self,
        head: &[u8],
        ts: u64,
        out: &mut Output,
    ) -> Result<Verdict, HeadError> {
        let response = parse_response(head)?;
        // Responses answer requests in order (RFC 9112 §9.3.2); drop the
        // placeholders of requests lost to holes along with their responses.
        let front = match self.pending.front() {
            Some(p) if p.lost && !(100..200).contains(&response.status) => {
                self.pending.pop_front();
                None
            }
            Some(p) if p.lost => None,
            Some(p) => Some(p.id),
            None => {
                out.error(ParseErrorKind::UnmatchedResponse);
                None
            }
        };
        let method = self.pending_mut(front).map(|p| p.exchange.method.clone());
        let framing = response.framing(method.as_deref());
        let informational = (100..200).contains(&response.status) && response.status != 101;
        self.response.current = front;
        if let Some(pending) = self.pending_mut(front) {
            let e = &mut pending.exchange;
            e.response_start_ns.get_or_insert(ts);
            e.response_bytes += head.len() as u64;
            e.response_end_ns = Some(ts);
            if !informational {
                e.status = Some(response.status);
            }
        }
        if informational {
            // 1xx precede the final response of the same request (RFC 9110 §15.2).
            return Ok(Verdict::Continue);
        }
        match framing {
            Framing::None => self.finish_response(ts, out),
            Framing::Length(n) => {
                self.response.state = ReadState::Body(BodyReader::Length { remaining: n })
            }
            Framing::Chunked => {
                self.response.state =
                    ReadState::Body(BodyReader::chunked(out.limits.max_head_bytes));
            }
            Framing::UntilClose => self.response.state = ReadState::Body(BodyReader::UntilClose),
            Framing::Tunnel => {
                self.finish_response(ts, out);
                return Ok(Verdict::Stop);
            }
        }
        Ok(Verdict::Continue)
    }

    fn finish_response(&mut self, ts: u64, out: &mut Output) {
        self.response.state = ReadState::Head;
        let Some(id) = self.response.current.take() else {
            return;
        };
        if let Some(pos) = self.pending.iter().position(|p| p.id == id)
            && let Some(mut pending) = self.pending.remove(pos)
        {
            pending.exchange.response_end_ns = Some(ts);
            out.emit(pending.exchange);
        }
    }

    fn feed_body(
        &mut self,
        direction: Direction,
        mut body: BodyReader,
        ts: u64,
        bytes: &[u8],
        out: &mut Output,
    ) -> Result<usize, Verdict> {
        let progress = body.feed(bytes);
        let current = self.reader(direction).current;
        let (consumed, done) = match progress {
            Ok(p) => (p.consumed, p.done),
            Err(e) => {
                out.error(match e {
                    BodyError::Chunk => ParseErrorKind::MalformedChunk,
                    BodyError::TrailerTooLarge => ParseErrorKind::HeadTooLarge,
                });
                self.message_cut(direction, ts, out);
                self.reader(direction).start_resync(false, out);
                return Ok(0);
            }
        };
        if let Some(pending) = self.pending_mut(current) {
            let e = &mut pending.exchange;
            match direction {
                Direction::ClientToServer => {
                    e.request_bytes += consumed as u64;
                    e.request_end_ns = ts;
                }
                Direction::ServerToClient => {
                    e.response_bytes += consumed as u64;
                    e.response_end_ns = Some(ts);
                }
            }
        }
        if done {
            match direction {
                Direction::ClientToServer => self.request.state = ReadState::Head,
                Direction::ServerToClient => self.finish_response(ts, out),
            }
        } else {
            self.reader(direction).state = ReadState::Body(body);
        }
        Ok(consumed)
    }

    /// A body whose end cannot be found any more: the request is as complete as it
    /// will get; the response is emitted with what was seen (status known).
    fn message_cut(&mut self, direction: Direction, ts: u64, out: &mut Output) {
        match direction {
            Direction::ClientToServer => self.request.state = ReadState::Head,
            Direction::ServerToClient => self.finish_response(ts, out),
        }
    }

    /// A head fell (partly) into a hole or was unreadable.
    fn head_lost(&mut self, direction: Direction, out: &mut Output) {
        match direction {
            // Keep the response order: a placeholder eats the lost request's response.
            Direction::ClientToServer => {
                self.push_pending(L7Exchange::default(), true, out);
            }
            // The oldest request lost its response: report it incomplete now.
            Direction::ServerToClient => match self.pending.pop_front() {
                Some(pending) if !pending.lost => {
                    let mut exchange = pending.exchange;
                    exchange.incomplete = true;
                    out.emit(exchange);
                }
                _ => {}
            },
        }
    }

    fn feed_resync(
        &mut self,
        direction: Direction,
        line_start: bool,
        bytes: &[u8],
        out: &mut Output,
    ) -> usize {
        let reader = self.reader(direction);
        if !reader.head.is_empty() {
            // A candidate prefix is pending from the previous feed.
            let mut probe = reader.head.clone();
            probe.extend_from_slice(&bytes[..bytes.len().min(32)]);
            match reader.looks_like_start(&probe) {
                Some(true) => {
                    reader.state = ReadState::Head;
                    reader.scan_from = 0;
                    return 0;
                }
                Some(false) => {
                    out.skipped(reader.head.len());
                    reader.head.clear();
                }
                None => {
                    reader.head.extend_from_slice(bytes);
                    return bytes.len();
                }
            }
        }
        let mut pos = if line_start {
            Some(0)
        } else {
            next_line(bytes, 0)
        };
        while let Some(p) = pos {
            match reader.looks_like_start(&bytes[p..]) {
                Some(true) => {
                    out.skipped(p);
                    reader.state = ReadState::Head;
                    reader.scan_from = 0;
                    return p;
                }
                Some(false) => pos = next_line(bytes, p),
                None => {
                    out.skipped(p);
                    reader.head.extend_from_slice(&bytes[p..]);
                    return bytes.len();
                }
            }
        }
        out.skipped(bytes.len());
        reader.state = ReadState::Resync {
            line_start: bytes.last() == Some(&b'\n'),
        };
        bytes.len()
    }

    pub(crate) fn gap(&mut self, direction: Direction, missing: u64, out: &mut Output) {
        let reader = self.reader(direction);
        let ts = reader.last_ts;
        match reader.state {
            ReadState::Head => {
                // A hole at or in a head: the message it starts is lost.
                out.error(ParseErrorKind::LostSync);
                out.skipped(reader.head.len());
                reader.head.clear();
                self.head_lost(direction, out);
                self.reader(direction).start_resync(true, out);
            }
            ReadState::Body(mut body) => {
                let current = reader.current;
                let outcome = body.gap(missing);
                let counted = match outcome {
                    GapOutcome::Absorbed => missing,
                    GapOutcome::Ended { rest } => missing - rest,
                    GapOutcome::Lost => missing,
                };
                if let Some(pending) = self.pending_mut(current) {
                    match direction {
                        Direction::ClientToServer => pending.exchange.request_bytes += counted,
                        Direction::ServerToClient => pending.exchange.response_bytes += counted,
                    }
                }
                match outcome {
                    GapOutcome::Absorbed => self.reader(direction).state = ReadState::Body(body),
                    GapOutcome::Ended { rest } => {
                        self.message_cut(direction, ts, out);
                        if rest > 0 {
                            self.gap(direction, rest, out);
                        }
                    }
                    GapOutcome::Lost => {
                        out.error(ParseErrorKind::LostSync);
                        self.message_cut(direction, ts, out);
                        self.reader(direction).start_resync(true, out);
                    }
                }
            }
            ReadState::Resync { .. } => {
                out.skipped(reader.head.len());
                reader.head.clear();
                reader.state = ReadState::Resync { line_start: true };
            }
        }
    }

    /// The connection closed: a body delimited by close is complete; everything
    /// else still waiting is reported incomplete.
    pub(crate) fn close(&mut self, out: &mut Output) {
        if self.response.state == ReadState::Body(BodyReader::UntilClose) {
            let ts = self.response.last_ts;
            self.finish_response(ts, out);
        }
        for pending in self.pending.drain(..) {
            if !pending.lost {
                let mut exchange = pending.exchange;
                exchange.incomplete = true;
                out.emit(exchange);
            }
        }
        self.request.head = Vec::new();
        self.response.head = Vec::new();
    }
}

fn next_line(bytes: &[u8], from: usize) -> Option<usize> {
    bytes[from..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| from + i + 1)
        .filter(|&p| p < bytes.len())
}

/// `http://host/path` (absolute-form, RFC 9112 §3.2.2, sent to proxies) → (host, path).
fn split_absolute_form(target: &str) -> (Option<String>, String) {
    let rest = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"));
    match rest {
        Some(rest) => {
            let slash = rest.find(['/', '?']).unwrap_or(rest.len());
            let path = if slash == rest.len() {
                "/".to_owned()
            } else {
                rest[slash..].to_owned()
            };
            (Some(rest[..slash].to_owned()), path)
        }
        None => (None, target.to_owned()),
    }
}
