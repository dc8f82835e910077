//! HTTP/2 (RFC 9113) with HPACK (RFC 7541) and gRPC on top: interleaved streams
//! of one h2c connection become exchanges.

mod frame;
mod grpc;
mod hpack;
mod stream;

use std::collections::BTreeMap;

pub(crate) use frame::PREFACE;
use frame::{
    CONTINUATION, FLAG_ACK, FLAG_END_HEADERS, FLAG_END_STREAM, FLAG_PADDED, FLAG_PRIORITY,
    FrameError, FrameEvent, FrameHeader, FrameReader, HEADERS, PUSH_PROMISE, RST_STREAM, SETTINGS,
};
use hpack::{HpackDecoder, HpackError};
use stream::{HeaderFields, Stream};

use crate::counters::ParseErrorKind;
use crate::exchange::Direction;
use crate::output::Output;

/// Why an HTTP/2 connection is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Http2Error {
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A frame other than CONTINUATION interrupted a header block (RFC 9113 §6.10).
    #[error("header block interrupted")]
    Continuation,
    /// HEADERS or PUSH_PROMISE payload shorter than its padding and priority fields.
    #[error("malformed header-bearing frame")]
    HeaderFrame,
    /// The header block does not decode: the dynamic table is out of step for good.
    #[error("hpack: {0}")]
    Hpack(#[from] HpackError),
    /// A header block grew past the cap.
    #[error("header block too large")]
    BlockTooLarge,
    /// A hole where framing cannot be recovered.
    #[error("bytes missing outside a DATA payload")]
    Gap,
}

impl Http2Error {
    fn kind(self) -> ParseErrorKind {
        match self {
            Self::Frame(FrameError::TooLarge(_)) | Self::BlockTooLarge => {
                ParseErrorKind::HeadTooLarge
            }
            Self::Frame(_) | Self::Continuation | Self::HeaderFrame => {
                ParseErrorKind::FrameViolation
            }
            Self::Hpack(_) => ParseErrorKind::HpackError,
            Self::Gap => ParseErrorKind::Unrecoverable,
        }
    }
}

/// A header block spread over HEADERS/PUSH_PROMISE + CONTINUATION frames.
#[derive(Debug, Clone, Copy)]
struct OpenBlock {
    stream_id: u32,
    push_promise: bool,
    end_stream: bool,
    start_ts: u64,
    wire_bytes: u64,
}

/// Everything one direction needs: framing and its HPACK decoder.
struct Side {
    reader: FrameReader,
    /// Its dynamic table accepts size updates up to the peer's
    /// SETTINGS_HEADER_TABLE_SIZE capped by the parser limit (RFC 7541 §4.2).
    decoder: HpackDecoder,
    block: Vec<u8>,
    open_block: Option<OpenBlock>,
}

impl Side {
    fn new(expect_preface: bool, hard_cap: usize) -> Self {
        Self {
            reader: FrameReader::new(expect_preface),
            decoder: HpackDecoder::new(hard_cap),
            block: Vec::new(),
            open_block: None,
        }
    }
}

/// Parser of one HTTP/2 connection (prior knowledge h2c, RFC 9113 §3.3).
pub(crate) struct Http2Parser {
    sides: [Side; 2],
    streams: BTreeMap<u32, Stream>,
    last_ts: [u64; 2],
}

impl Http2Parser {
    pub(crate) fn new(max_hpack_table: usize) -> Self {
        Self {
            sides: [
                Side::new(true, max_hpack_table),
                Side::new(false, max_hpack_table),
            ],
            streams: BTreeMap::new(),
            last_ts: [0; 2],
        }
    }

    /// Buffers, streams and both HPACK tables.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.sides
            .iter()
            .map(|s| s.reader.memory_bytes() + s.block.capacity() + s.decoder.memory_bytes())
            .sum::<usize>()
            + self
                .streams
                .values()
                .map(Stream::memory_bytes)
                .sum::<usize>()
    }

    /// Feeds bytes; `Err` means the connection cannot be followed any more.
    pub(crate) fn feed(
        &mut self,
        direction: Direction,
        ts: u64,
        mut bytes: &[u8],
        out: &mut Output,
    ) -> Result<(), ()> {
        self.last_ts[direction.index()] = ts;
        let max = out.limits.max_head_bytes;
        loop {
            let event = match self.sides[direction.index()]
                .reader
                .next(&mut bytes, ts, max)
            {
                Ok(Some(event)) => event,
                Ok(None) => return Ok(()),
                Err(e) => return self.fail(Http2Error::Frame(e), out),
            };
            if let Err(e) = self.on_event(direction, ts, event, out) {
                return self.fail(e, out);
            }
        }
    }

    fn fail(&mut self, error: Http2Error, out: &mut Output) -> Result<(), ()> {
        out.error(error.kind());
        self.close(out);
        Err(())
    }

    fn on_event(
        &mut self,
        direction: Direction,
        ts: u64,
        event: FrameEvent<'_>,
        out: &mut Output,
    ) -> Result<(), Http2Error> {
        let side = &self.sides[direction.index()];
        if let Some(open) = side.open_block {
            let header = match &event {
                FrameEvent::Buffered(h) | FrameEvent::Data(h, _) | FrameEvent::Ended(h) => h,
            };
            if header.kind != CONTINUATION || header.stream_id != open.stream_id {
                return Err(Http2Error::Continuation);
            }
        }
        match event {
            FrameEvent::Data(header, bytes) => {
                if let Some(stream) = self.streams.get_mut(&header.stream_id) {
                    stream.messages(direction).feed(bytes);
                }
                Ok(())
            }
            FrameEvent::Ended(header) => {
                self.stream_frame_done(direction, header, ts, out);
                Ok(())
            }
            FrameEvent::Buffered(header) => {
                let payload = std::mem::take(&mut self.sides[direction.index()].reader.payload);
                let result = self.on_buffered(direction, header, &payload, ts, out);
                let reader = &mut self.sides[direction.index()].reader;
                reader.payload = payload;
                reader.payload.clear();
                result
            }
        }
    }

    /// Byte accounting and END_STREAM for a frame that belongs to a stream.
    fn stream_frame_done(
        &mut self,
        direction: Direction,
        header: FrameHeader,
        ts: u64,
        out: &mut Output,
    ) {
        if header.stream_id == 0 {
            return;
        }
        let Some(stream) = self.streams.get_mut(&header.stream_id) else {
            return;
        };
        if matches!(
            header.kind,
            frame::DATA | HEADERS | CONTINUATION | RST_STREAM
        ) {
            stream.add_bytes(direction, header.wire_len(), ts);
        }
        let end_stream = header.kind == frame::DATA && header.has(FLAG_END_STREAM);
        if end_stream && direction == Direction::ServerToClient {
            stream.server_ended = true;
            self.emit(header.stream_id, false, out);
        }
    }

    fn emit(&mut self, stream_id: u32, reset: bool, out: &mut Output) {
        if let Some(stream) = self.streams.remove(&stream_id) {
            let incomplete = !stream.server_ended;
            let mut exchange = stream.into_exchange();
            exchange.incomplete = incomplete;
            exchange.error |= reset;
            out.emit(exchange);
        }
    }

    fn on_buffered(
        &mut self,
        direction: Direction,
        header: FrameHeader,
        payload: &[u8],
        ts: u64,
        out: &mut Output,
    ) -> Result<(), Http2Error> {
        match header.kind {
            HEADERS | PUSH_PROMISE => {
                let fragment = header_fragment(&header, payload)?;
                let open = OpenBlock {
                    stream_id: header.stream_id,
                    push_promise: header.kind == PUSH_PROMISE,
                    end_stream: header.kind == HEADERS && header.has(FLAG_END_STREAM),
                    start_ts: header.start_ts,
                    wire_bytes: header.wire_len(),
                };
                let side = &mut self.sides[direction.index()];
                side.block.clear();
                side.block.extend_from_slice(fragment);
                side.open_block = Some(open);
                if header.has(FLAG_END_HEADERS) {
                    self.end_block(direction, ts, out)?;
                }
            }
            CONTINUATION => {
                let side = &mut self.sides[direction.index()];
                let Some(open) = side.open_block.as_mut() else {
                    return Err(Http2Error::Continuation);
                };
                if side.block.len() + payload.len() > out.limits.max_head_bytes {
                    return Err(Http2Error::BlockTooLarge);
                }
                open.wire_bytes += header.wire_len();
                side.block.extend_from_slice(payload);
                if header.has(FLAG_END_HEADERS) {
                    self.end_block(direction, ts, out)?;
                }
            }
            SETTINGS if !header.has(FLAG_ACK) && header.stream_id == 0 => {
                for setting in payload.chunks_exact(6) {
                    let id = u16::from_be_bytes([setting[0], setting[1]]);
                    let value =
                        u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
                    // SETTINGS_HEADER_TABLE_SIZE bounds the table of the decoder that
                    // reads what the *peer* sends (RFC 9113 §6.5.2).
                    if id == 0x1 {
                        let limit = (value as usize).min(out.limits.max_hpack_table_bytes);
                        self.sides[direction.reverse().index()]
                            .decoder
                            .set_limit(limit);
                    }
                }
            }
            RST_STREAM => {
                if let Some(stream) = self.streams.get_mut(&header.stream_id) {
                    stream.add_bytes(direction, header.wire_len(), ts);
                }
                self.emit(header.stream_id, true, out);
            }
            _ => {}
        }
        Ok(())
    }

    /// A complete header block: decode it (always, to keep the dynamic table in
    /// step, RFC 7541 §2.2) and apply it to its stream.
    fn end_block(
        &mut self,
        direction: Direction,
        ts: u64,
        out: &mut Output,
    ) -> Result<(), Http2Error> {
        let max_field = out.limits.max_field_bytes;
        let side = &mut self.sides[direction.index()];
        let Some(open) = side.open_block.take() else {
            return Ok(());
        };
        let mut fields = HeaderFields::default();
        side.decoder.decode(&side.block, |name, value| {
            fields.offer(name, value, max_field)
        })?;
        side.block.clear();
        if open.push_promise {
            // Server push is never an exchange the client asked for; only the
            // table update mattered.
            return Ok(());
        }
        let id = open.stream_id;
        match direction {
            Direction::ClientToServer => {
                if let Some(stream) = self.streams.get_mut(&id) {
                    // Request trailers: only their size matters.
                    stream.add_bytes(direction, open.wire_bytes, ts);
                } else if id != 0 {
                    if self.streams.len() >= out.limits.max_streams.max(1) {
                        // Drop the oldest stream rather than grow (ids only increase).
                        self.streams.pop_first();
                        out.error(ParseErrorKind::StreamOverflow);
                    }
                    let mut stream = Stream::open(id, fields, open.start_ts);
                    stream.add_bytes(direction, open.wire_bytes, ts);
                    self.streams.insert(id, stream);
                }
            }
            Direction::ServerToClient => {
                let Some(stream) = self.streams.get_mut(&id) else {
                    out.error(ParseErrorKind::UnmatchedResponse);
                    return Ok(());
                };
                stream.response_headers(fields, open.start_ts);
                stream.add_bytes(direction, open.wire_bytes, ts);
                if open.end_stream {
                    stream.server_ended = true;
                    self.emit(id, false, out);
                }
            }
        }
        Ok(())
    }

    /// Bytes of `direction` were not captured.
    pub(crate) fn gap(
        &mut self,
        direction: Direction,
        missing: u64,
        out: &mut Output,
    ) -> Result<(), ()> {
        let reader = &mut self.sides[direction.index()].reader;
        let in_data = reader.in_data();
        match reader.gap(missing) {
            Ok(ended) => {
                if let Some(stream) = in_data.and_then(|id| self.streams.get_mut(&id)) {
                    stream.messages(direction).gap(missing);
                }
                if let Some(header) = ended {
                    let ts = self.last_ts[direction.index()];
                    self.stream_frame_done(direction, header, ts, out);
                }
                Ok(())
            }
            Err(()) => self.fail(Http2Error::Gap, out),
        }
    }

    /// Streams still open are reported incomplete; buffers are released.
    pub(crate) fn close(&mut self, out: &mut Output) {
        while let Some((_, stream)) = self.streams.pop_first() {
            let mut exchange = stream.into_exchange();
            exchange.incomplete = true;
            out.emit(exchange);
        }
        for side in &mut self.sides {
            side.block = Vec::new();
            side.reader.payload = Vec::new();
        }
    }
}

/// Strips padding and priority fields (RFC 9113 §6.2, §6.6) from HEADERS or
/// PUSH_PROMISE (whose promised stream id is skipped too).
fn header_fragment<'a>(header: &FrameHeader, payload: &'a [u8]) -> Result<&'a [u8], Http2Error> {
    let mut p = payload;
    let mut pad = 0usize;
    if header.has(FLAG_PADDED) {
        let (&len, rest) = p.split_first().ok_or(Http2Error::HeaderFrame)?;
        pad = usize::from(len);
        p = rest;
    }
    let skip = match header.kind {
        HEADERS if header.has(FLAG_PRIORITY) => 5,
        PUSH_PROMISE => 4,
        _ => 0,
    };
    if p.len() < skip + pad {
        return Err(Http2Error::HeaderFrame);
    }
    Ok(&p[skip..p.len() - pad])
}
