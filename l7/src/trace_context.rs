//! Trace context carried by request headers: W3C `traceparent` and Zipkin B3.

/// Trace identifiers of the span that sent the request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TraceContext {
    /// 32 lower-case hex digits (64-bit B3 ids are left-padded with zeros).
    pub trace_id: String,
    /// 16 lower-case hex digits: the caller's span (`parent-id` of `traceparent`).
    pub span_id: String,
    /// The caller's parent span, known only from B3.
    pub parent_span_id: Option<String>,
    /// Sampled flag when the header carries one.
    pub sampled: Option<bool>,
}

/// Collects the trace headers of one request and picks the best source.
#[derive(Debug, Default)]
pub(crate) struct TraceHeaders {
    traceparent: Option<TraceContext>,
    b3_single: Option<TraceContext>,
    b3_trace: Option<String>,
    b3_span: Option<String>,
    b3_parent: Option<String>,
}

impl TraceHeaders {
    /// Offers one header; `name` must be lower case.
    pub(crate) fn offer(&mut self, name: &[u8], value: &[u8]) {
        let Ok(value) = std::str::from_utf8(value) else {
            return;
        };
        let value = value.trim();
        match name {
            b"traceparent" => self.traceparent = parse_traceparent(value),
            b"b3" => self.b3_single = parse_b3_single(value),
            b"x-b3-traceid" => self.b3_trace = normalise_trace_id(value),
            b"x-b3-spanid" => self.b3_span = hex_id(value, 16),
            b"x-b3-parentspanid" => self.b3_parent = hex_id(value, 16),
            _ => {}
        }
    }

    /// `traceparent` first (the W3C standard wins when both are present), then
    /// the single `b3` header, then the multi-header B3 form.
    pub(crate) fn resolve(self) -> Option<TraceContext> {
        if self.traceparent.is_some() {
            return self.traceparent;
        }
        if self.b3_single.is_some() {
            return self.b3_single;
        }
        Some(TraceContext {
            trace_id: self.b3_trace?,
            span_id: self.b3_span?,
            parent_span_id: self.b3_parent,
            sampled: None,
        })
    }
}

/// Whether `name` is one of the trace headers (lower case).
pub(crate) fn is_trace_header(name: &[u8]) -> bool {
    matches!(
        name,
        b"traceparent" | b"b3" | b"x-b3-traceid" | b"x-b3-spanid" | b"x-b3-parentspanid"
    )
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn all_zero(s: &str) -> bool {
    s.bytes().all(|b| b == b'0')
}

/// Parses `traceparent` per W3C Trace Context §3.2: `version-traceid-parentid-flags`,
/// lower-case hex, version `ff` and all-zero ids invalid. Version 00 must be exactly
/// 55 characters; a higher version may append `-fields` (§3.2.4, forward compatibility).
pub fn parse_traceparent(value: &str) -> Option<TraceContext> {
    let bytes = value.as_bytes();
    if bytes.len() < 55 || !value.is_char_boundary(55) {
        return None;
    }
    let version = &value[0..2];
    if !is_lower_hex(version) || version == "ff" {
        return None;
    }
    if version == "00" && bytes.len() != 55 {
        return None;
    }
    if bytes.len() > 55 && bytes[55] != b'-' {
        return None;
    }
    if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    let trace_id = &value[3..35];
    let span_id = &value[36..52];
    let flags = &value[53..55];
    if !is_lower_hex(trace_id) || !is_lower_hex(span_id) || !is_lower_hex(flags) {
        return None;
    }
    if all_zero(trace_id) || all_zero(span_id) {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(TraceContext {
        trace_id: trace_id.to_owned(),
        span_id: span_id.to_owned(),
        parent_span_id: None,
        sampled: Some(flags & 1 == 1),
    })
}

/// Parses the single `b3` header: `{TraceId}-{SpanId}[-{Sampling}[-{ParentSpanId}]]`
/// (openzipkin/b3-propagation). A bare sampling decision (`0`, `1`, `d`) carries no ids.
pub fn parse_b3_single(value: &str) -> Option<TraceContext> {
    let mut parts = value.split('-');
    let trace_id = normalise_trace_id(parts.next()?)?;
    let span_id = hex_id(parts.next()?, 16)?;
    let sampled = match parts.next() {
        None => None,
        Some("1" | "d") => Some(true),
        Some("0") => Some(false),
        Some(_) => return None,
    };
    let parent_span_id = match parts.next() {
        None => None,
        Some(p) => Some(hex_id(p, 16)?),
    };
    if parts.next().is_some() {
        return None;
    }
    Some(TraceContext {
        trace_id,
        span_id,
        parent_span_id,
        sampled,
    })
}

/// B3 trace ids are 64 or 128 bits; 64-bit ids are left-padded to 32 digits so
/// that records compare equal across propagation formats.
fn normalise_trace_id(value: &str) -> Option<String> {
    let value = value.trim();
    match value.len() {
        16 => hex_id(value, 16).map(|id| format!("{:0>32}", id)),
        32 => hex_id(value, 32),
        _ => None,
    }
}

fn hex_id(value: &str, len: usize) -> Option<String> {
    let value = value.trim();
    if value.len() != len || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = value.to_ascii_lowercase();
    (!all_zero(&id)).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_valid_and_invalid() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = parse_traceparent(tp).expect("valid");
        assert_eq!(ctx.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.span_id, "00f067aa0ba902b7");
        assert_eq!(ctx.sampled, Some(true));
        // Upper case, all-zero ids, version ff, wrong length, wrong separators.
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        // A future version may append fields.
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what";
        assert_eq!(
            parse_traceparent(future).map(|c| c.sampled),
            Some(Some(false))
        );
    }

    #[test]
    fn b3_single_and_multi() {
        let ctx =
            parse_b3_single("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")
                .expect("valid");
        assert_eq!(ctx.trace_id, "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(ctx.span_id, "e457b5a2e4d86bd1");
        assert_eq!(ctx.parent_span_id.as_deref(), Some("05e3ac9a4f6e3b90"));
        assert_eq!(ctx.sampled, Some(true));
        assert_eq!(parse_b3_single("0"), None);
        assert_eq!(
            parse_b3_single("64fe8b2a57d3eff7-e457b5a2e4d86bd1").map(|c| c.trace_id),
            Some("000000000000000064fe8b2a57d3eff7".to_owned())
        );

        let mut headers = TraceHeaders::default();
        headers.offer(b"x-b3-traceid", b"463AC35C9F6413AD");
        headers.offer(b"x-b3-spanid", b"a2fb4a1d1a96d312");
        headers.offer(b"x-b3-parentspanid", b"0020000000000001");
        let ctx = headers.resolve().expect("multi-header b3");
        assert_eq!(ctx.trace_id, "0000000000000000463ac35c9f6413ad");
        assert_eq!(ctx.span_id, "a2fb4a1d1a96d312");
        assert_eq!(ctx.parent_span_id.as_deref(), Some("0020000000000001"));
    }

    #[test]
    fn traceparent_wins_over_b3_and_invalid_is_ignored() {
        let mut headers = TraceHeaders::default();
        headers.offer(b"b3", b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1");
        headers.offer(
            b"traceparent",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        assert_eq!(
            headers.resolve().map(|c| c.span_id),
            Some("00f067aa0ba902b7".to_owned())
        );
        let mut headers = TraceHeaders::default();
        headers.offer(b"traceparent", b"garbage");
        assert_eq!(headers.resolve(), None);
    }
}
