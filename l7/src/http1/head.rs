//! HTTP/1.x message heads (RFC 9112 §3, §4, §5): start line and the headers that matter.

use crate::trace_context::{TraceHeaders, is_trace_header};

/// Why a head was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeadError {
    /// Start line is not `method SP target SP HTTP/1.x` or `HTTP/1.x SP 3DIGIT SP reason`.
    #[error("malformed start line")]
    StartLine,
    /// A header line without a colon or with whitespace before it (RFC 9112 §5.1).
    #[error("malformed header line")]
    HeaderLine,
    /// Two different `Content-Length` values (RFC 9112 §6.3, item 5).
    #[error("conflicting content-length")]
    ContentLength,
}

/// How the body of a message is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body at all.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked` as the final coding.
    Chunked,
    /// Response body delimited by the connection close (item 7 of §6.3).
    UntilClose,
    /// The connection stops being HTTP/1 (101 Switching Protocols, 2xx to CONNECT).
    Tunnel,
}

/// Headers common to requests and responses.
#[derive(Debug, Default)]
pub(crate) struct CommonHeaders {
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// `Transfer-Encoding` present with a final coding other than chunked.
    pub other_transfer_coding: bool,
    pub connection_close: bool,
    pub connection_keep_alive: bool,
}

#[derive(Debug)]
pub(crate) struct RequestHead {
    pub method: String,
    pub target: String,
    pub host: Option<String>,
    pub common: CommonHeaders,
    pub trace: TraceHeaders,
}

#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub status: u16,
    pub common: CommonHeaders,
}

impl RequestHead {
    /// Request bodies are never delimited by close (RFC 9112 §6.3, items 3-6).
    pub(crate) fn framing(&self) -> Framing {
        if self.common.chunked {
            Framing::Chunked
        } else {
            match self.common.content_length {
                Some(0) | None => Framing::None,
                Some(n) => Framing::Length(n),
            }
        }
    }

    /// A request whose framing cannot be known (a transfer coding that is not
    /// chunked) makes the rest of the connection unreadable (RFC 9112 §6.3, item 4).
    pub(crate) fn unreadable_body(&self) -> bool {
        self.common.other_transfer_coding
    }
}

impl ResponseHead {
    /// RFC 9112 §6.3: the request method and the status decide before any header.
    pub(crate) fn framing(&self, request_method: Option<&str>) -> Framing {
        let status = self.status;
        if status == 101 {
            return Framing::Tunnel;
        }
        if request_method == Some("CONNECT") && (200..300).contains(&status) {
            return Framing::Tunnel;
        }
        if request_method == Some("HEAD")
            || (100..200).contains(&status)
            || status == 204
            || status == 304
        {
            return Framing::None;
        }
        if self.common.chunked {
            return Framing::Chunked;
        }
        if self.common.other_transfer_coding {
            return Framing::UntilClose;
        }
        match self.common.content_length {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    }
}

fn is_tchar(b: u8) -> bool {
    // RFC 9110 §5.6.2 token characters.
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `b` begins like a request line: a method token followed by a space.
/// Used by protocol detection and resynchronisation; `None` when more bytes are needed.
pub(crate) fn looks_like_request_start(b: &[u8]) -> Option<bool> {
    const MAX_METHOD: usize = 24;
    for (i, &c) in b.iter().enumerate().take(MAX_METHOD + 1) {
        if c == b' ' {
            return Some(i > 0);
        }
        // Methods are upper case by convention (RFC 9110 §9.1); requiring it keeps
        // random binary protocols from looking like HTTP.
        if !(c.is_ascii_uppercase() || c == b'-' || c == b'_') {
            return Some(false);
        }
    }
    if b.len() > MAX_METHOD {
        Some(false)
    } else {
        None
    }
}

/// Whether `b` begins like a status line; `None` when more bytes are needed.
pub(crate) fn looks_like_response_start(b: &[u8]) -> Option<bool> {
    const PREFIX: &[u8] = b"HTTP/1.";
    let n = b.len().min(PREFIX.len());
    if b[..n] != PREFIX[..n] {
        Some(false)
    } else if n < PREFIX.len() {
        None
    } else {
        Some(true)
    }
}

/// Position just past the blank line ending a head, searching from `from`.
/// Accepts bare LF line endings as RFC 9112 §2.2 allows recipients to.
pub(crate) fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        let lf = buf[i..].iter().position(|&b| b == b'\n')? + i;
        let next = lf + 1;
        if buf.get(next) == Some(&b'\n') {
            return Some(next + 1);
        }
        if buf.get(next) == Some(&b'\r') && buf.get(next + 1) == Some(&b'\n') {
            return Some(next + 2);
        }
        i = next;
    }
    None
}

/// Lines of a complete head, without their line endings.
fn lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    head.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .take_while(|l| !l.is_empty())
}

fn lossy(bytes: &[u8], max: usize) -> String {
    let bytes = &bytes[..bytes.len().min(max)];
    String::from_utf8_lossy(bytes).into_owned()
}

/// Applies the header fields after the start line to `common` and hands every
/// field to `other` (lower-case name, trimmed value).
fn parse_fields<'a>(
    mut fields: impl Iterator<Item = &'a [u8]>,
    common: &mut CommonHeaders,
    mut other: impl FnMut(&[u8], &[u8]),
) -> Result<(), HeadError> {
    let mut name_buf = [0u8; 32];
    fields.try_for_each(|line| {
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(HeadError::HeaderLine)?;
        let name = &line[..colon];
        // No whitespace between name and colon (RFC 9112 §5.1): a smuggling vector.
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(HeadError::HeaderLine);
        }
        let value = line[colon + 1..].trim_ascii();
        if name.len() > name_buf.len() {
            return Ok(());
        }
        let lower = &mut name_buf[..name.len()];
        lower.copy_from_slice(name);
        lower.make_ascii_lowercase();
        match &*lower {
            b"content-length" => {
                let n = parse_content_length(value).ok_or(HeadError::ContentLength)?;
                if common.content_length.is_some_and(|old| old != n) {
                    return Err(HeadError::ContentLength);
                }
                common.content_length = Some(n);
            }
            b"transfer-encoding" => {
                // The final coding decides (RFC 9112 §6.3, items 3-4); an empty
                // element list is an error we treat as "not chunked".
                let last = value
                    .rsplit(|&b| b == b',')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii();
                let chunked = last.eq_ignore_ascii_case(b"chunked");
                common.chunked = chunked;
                common.other_transfer_coding = !chunked;
            }
            b"connection" => {
                for token in value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    common.connection_close |= token.eq_ignore_ascii_case(b"close");
                    common.connection_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            name => other(name, value),
        }
        Ok(())
    })
}

/// `Content-Length` is 1*DIGIT; a list of identical values is tolerated (RFC 9110 §8.6).
fn parse_content_length(value: &[u8]) -> Option<u64> {
    let mut result = None;
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || part.len() > 18 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part
            .iter()
            .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'));
        if result.is_some_and(|r| r != n) {
            return None;
        }
        result = Some(n);
    }
    result
}

/// HTTP/1.0 and HTTP/1.1 frame messages alike for what the parser reads.
fn parse_version(v: &[u8]) -> Option<()> {
    matches!(v, b"HTTP/1.1" | b"HTTP/1.0").then_some(())
}

/// `method SP request-target SP HTTP-version` (RFC 9112 §3), without line ending.
fn split_request_line(line: &[u8]) -> Result<(&[u8], &[u8]), HeadError> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::StartLine);
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) || target.is_empty() {
        return Err(HeadError::StartLine);
    }
    if target.iter().any(|&b| b.is_ascii_control()) {
        return Err(HeadError::StartLine);
    }
    parse_version(version).ok_or(HeadError::StartLine)?;
    Ok((method, target))
}

/// Whether `line` (CR allowed at its end) is an HTTP/1.x request line.
pub(crate) fn is_request_line(line: &[u8]) -> bool {
    split_request_line(line.strip_suffix(b"\r").unwrap_or(line)).is_ok()
}

/// Parses a complete request head (start line through the blank line).
pub(crate) fn parse_request(head: &[u8], max_field: usize) -> Result<RequestHead, HeadError> {
    let mut lines = lines(head);
    let start = lines.next().ok_or(HeadError::StartLine)?;
    let (method, target) = split_request_line(start)?;
    let mut common = CommonHeaders::default();
    let mut host = None;
    let mut trace = TraceHeaders::default();
    parse_fields(lines, &mut common, |name, value| {
        if name == b"host" {
            host = Some(lossy(value, max_field));
        } else if is_trace_header(name) {
            trace.offer(name, value);
        }
    })?;
    Ok(RequestHead {
        method: lossy(method, max_field),
        target: lossy(target, max_field),
        host,
        common,
        trace,
    })
}

/// Parses a complete response head.
pub(crate) fn parse_response(head: &[u8]) -> Result<ResponseHead, HeadError> {
    let mut lines = lines(head);
    let start = lines.next().ok_or(HeadError::StartLine)?;
    // status-line = HTTP-version SP status-code SP [ reason-phrase ] (RFC 9112 §4).
    if start.len() < 12 || parse_version(&start[..8]).is_none() || start[8] != b' ' {
        return Err(HeadError::StartLine);
    }
    let code = &start[9..12];
    if !code.iter().all(u8::is_ascii_digit) || start.get(12).is_some_and(|&b| b != b' ') {
        return Err(HeadError::StartLine);
    }
    let status = code
        .iter()
        .fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
    if status < 100 {
        return Err(HeadError::StartLine);
    }
    let mut common = CommonHeaders::default();
    parse_fields(lines, &mut common, |_, _| {})?;
    Ok(ResponseHead { status, common })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_head_fields() {
        let head = b"GET /a?b=1 HTTP/1.1\r\nHost: svc:8080\r\nContent-Length: 3\r\n\
                     traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";
        assert_eq!(find_head_end(head, 0), Some(head.len()));
        let r = parse_request(head, 100).expect("valid");
        assert_eq!((r.method.as_str(), r.target.as_str()), ("GET", "/a?b=1"));
        assert_eq!(r.host.as_deref(), Some("svc:8080"));
        assert_eq!(r.framing(), Framing::Length(3));
        assert_eq!(
            r.trace.resolve().map(|t| t.span_id),
            Some("00f067aa0ba902b7".into())
        );
    }

    #[test]
    fn rejects_smuggling_shapes() {
        assert_eq!(
            parse_request(
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                100
            )
            .err(),
            Some(HeadError::ContentLength)
        );
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 100).err(),
            Some(HeadError::HeaderLine)
        );
        assert_eq!(
            parse_request(b"GET  / HTTP/1.1\r\n\r\n", 100).err(),
            Some(HeadError::StartLine)
        );
        assert_eq!(
            parse_request(b"GET / HTTP/2.0\r\n\r\n", 100).err(),
            Some(HeadError::StartLine)
        );
    }

    #[test]
    fn response_framing_rules() {
        let ok = |h: &[u8]| parse_response(h).expect("valid");
        let r =
            ok(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(r.framing(Some("GET")), Framing::Chunked);
        assert_eq!(r.framing(Some("HEAD")), Framing::None);
        assert_eq!(
            ok(b"HTTP/1.1 204 No Content\r\n\r\n").framing(Some("GET")),
            Framing::None
        );
        assert_eq!(
            ok(b"HTTP/1.0 200\r\n\r\n").framing(Some("GET")),
            Framing::UntilClose
        );
        assert_eq!(
            ok(b"HTTP/1.1 101 Switching\r\n\r\n").framing(Some("GET")),
            Framing::Tunnel
        );
        assert_eq!(
            ok(b"HTTP/1.1 200 OK\n\n").framing(Some("CONNECT")),
            Framing::Tunnel
        );
        assert!(parse_response(b"HTTP/1.1 20x OK\r\n\r\n").is_err());
    }

    #[test]
    fn start_detection() {
        assert_eq!(looks_like_request_start(b"GET /"), Some(true));
        assert_eq!(looks_like_request_start(b"GE"), None);
        assert_eq!(looks_like_request_start(b"\x16\x03\x01"), Some(false));
        assert_eq!(looks_like_response_start(b"HTTP/1.1 200"), Some(true));
        assert_eq!(looks_like_response_start(b"HTT"), None);
        assert_eq!(looks_like_response_start(b"{\"a\""), Some(false));
    }
}
