//! Unix-nanosecond timestamps, the unit every record uses.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// "2026-01-01T12:03:10.123Z" (UTC, milliseconds).
pub fn rfc3339(ns: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}

/// "12:03:10" (UTC), for evidence sentences.
pub fn clock(ns: u64) -> String {
    let secs = ns / 1_000_000_000 % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc() {
        let t = crate::fixture::T0 + 10_123_000_000;
        assert_eq!(rfc3339(t), "2026-01-01T12:03:10.123Z");
        assert_eq!(clock(t), "12:03:10");
    }
}
