//! gRPC over HTTP/2 (grpc/grpc doc/PROTOCOL-HTTP2.md): service and method from the
//! path, length-prefixed message counting, `grpc-message` percent-decoding.

/// Counts length-prefixed messages (1 byte compressed flag + 4 bytes big-endian
/// length + message) in one direction of one stream.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct MessageCounter {
    prefix_have: u8,
    length: u32,
    remaining: u32,
    pub(crate) messages: u32,
    /// A hole hit a prefix: counting stopped for this stream.
    lost: bool,
}

impl MessageCounter {
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.lost {
            if self.remaining > 0 {
                let n = bytes.len().min(self.remaining as usize);
                self.remaining -= n as u32;
                bytes = &bytes[n..];
                continue;
            }
            let b = bytes[0];
            bytes = &bytes[1..];
            if self.prefix_have > 0 {
                self.length = (self.length << 8) | u32::from(b);
            } else {
                self.length = 0;
            }
            self.prefix_have += 1;
            if self.prefix_have == 5 {
                self.prefix_have = 0;
                self.messages = self.messages.saturating_add(1);
                self.remaining = self.length;
            }
        }
    }

    pub(crate) fn gap(&mut self, missing: u64) {
        if self.prefix_have == 0 && missing <= u64::from(self.remaining) {
            self.remaining -= missing as u32;
        } else {
            self.lost = true;
        }
    }
}

/// `/package.Service/Method` → (`package.Service`, `Method`).
pub(crate) fn split_path(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    Some((service.to_owned(), method.to_owned()))
}

/// `grpc-message` is percent-encoded UTF-8; invalid escapes are kept as sent.
pub(crate) fn percent_decode(value: &[u8]) -> String {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'%'
            && let Some(hex) = value.get(i + 1..i + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(value[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_messages_split_anywhere() {
        let mut wire = vec![0, 0, 0, 0, 3, b'a', b'b', b'c', 1, 0, 0, 0, 0];
        wire.extend([0, 0, 0, 1, 0]);
        wire.extend(vec![7u8; 256]);
        for step in 1..wire.len() {
            let mut counter = MessageCounter::default();
            wire.chunks(step).for_each(|c| counter.feed(c));
            assert_eq!(counter.messages, 3, "step {step}");
            assert_eq!(counter.remaining, 0);
        }
    }

    #[test]
    fn paths_and_messages() {
        assert_eq!(
            split_path("/helloworld.Greeter/SayHello"),
            Some(("helloworld.Greeter".into(), "SayHello".into()))
        );
        assert_eq!(split_path("/nope"), None);
        assert_eq!(
            percent_decode(b"not%20found%3A%20x%zz%"),
            "not found: x%zz%"
        );
    }
}
