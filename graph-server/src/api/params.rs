//! Query parameters, parsed by name so every error names the parameter.
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;

use super::AppError;

pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn new(
        query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    ) -> Result<Self, AppError> {
        query
            .map(|Query(pairs)| Self(pairs))
            .map_err(|e| AppError::BadQuery(e.body_text()))
    }

    /// Removes and returns the (first) value of `name`; empty values count as absent.
    pub fn take(&mut self, name: &str) -> Option<String> {
        let values = self.take_all(name);
        values.into_iter().next()
    }

    pub fn take_all(&mut self, name: &str) -> Vec<String> {
        let mut taken = Vec::new();
        self.0.retain(|(k, v)| {
            if k == name {
                if !v.is_empty() {
                    taken.push(v.clone());
                }
                false
            } else {
                true
            }
        });
        taken
    }

    /// A duration like "30s", "5m", "1h30m", "250ms" in nanoseconds.
    pub fn optional_duration(&mut self, name: &'static str) -> Result<Option<u64>, AppError> {
        self.take(name)
            .map(|text| {
                humantime::parse_duration(&text)
                    .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
                    .map_err(|e| {
                        AppError::bad(
                            name,
                            format!("{text:?} is not a duration like 5m or 250ms ({e})"),
                        )
                    })
            })
            .transpose()
    }

    pub fn duration(&mut self, name: &'static str, default_ns: u64) -> Result<u64, AppError> {
        match self.optional_duration(name)? {
            Some(0) => Err(AppError::bad(name, "must be longer than zero")),
            Some(ns) => Ok(ns),
            None => Ok(default_ns),
        }
    }

    /// RFC 3339 ("2026-01-01T12:03:10Z"), unix nanoseconds, or a duration ago ("15m").
    pub fn time(
        &mut self,
        name: &'static str,
        now_ns: u64,
        default_ns: u64,
    ) -> Result<u64, AppError> {
        let Some(text) = self.take(name) else {
            return Ok(default_ns);
        };
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return text.parse().map_err(|_| {
                AppError::bad(name, format!("{text:?} is too large for unix nanoseconds"))
            });
        }
        if let Ok(ago) = humantime::parse_duration(&text) {
            return Ok(now_ns.saturating_sub(u64::try_from(ago.as_nanos()).unwrap_or(u64::MAX)));
        }
        humantime::parse_rfc3339_weak(&text)
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .ok_or_else(|| {
                AppError::bad(
                    name,
                    format!("{text:?} is not an RFC 3339 time, unix nanoseconds or a duration ago like 15m"),
                )
            })
    }

    /// `since` (default: the beginning) and `until` (default: the end), as [`Self::time`]
    /// reads them; `until` before `since` is refused rather than answered with nothing.
    pub fn time_range(&mut self, now_ns: u64) -> Result<(u64, u64), AppError> {
        let since = self.time("since", now_ns, 0)?;
        let until = self.time("until", now_ns, u64::MAX)?;
        if until < since {
            let rfc3339 =
                |ns: u64| humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(ns));
            return Err(AppError::bad(
                "until",
                format!("{} is before since ({})", rfc3339(until), rfc3339(since)),
            ));
        }
        Ok((since, until))
    }

    pub fn bool(&mut self, name: &'static str) -> Result<Option<bool>, AppError> {
        match self.take(name).as_deref() {
            None => Ok(None),
            Some("true" | "1") => Ok(Some(true)),
            Some("false" | "0") => Ok(Some(false)),
            Some(other) => Err(AppError::bad(
                name,
                format!("{other:?} is not true or false"),
            )),
        }
    }

    pub fn limit(
        &mut self,
        name: &'static str,
        default: usize,
        max: usize,
    ) -> Result<usize, AppError> {
        match self.take(name) {
            None => Ok(default),
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(AppError::bad(
                    name,
                    format!("{text:?} is not a number from 1 to {max}"),
                )),
            },
        }
    }

    pub fn one_of(
        &mut self,
        name: &'static str,
        allowed: &[&str],
    ) -> Result<Option<String>, AppError> {
        match self.take(name) {
            Some(v) if !allowed.contains(&v.as_str()) => Err(AppError::bad(
                name,
                format!("{v:?} is not one of {}", allowed.join(", ")),
            )),
            other => Ok(other),
        }
    }

    /// Fails on the first parameter nobody took.
    pub fn finish(self) -> Result<(), AppError> {
        match self.0.into_iter().next() {
            Some((name, _)) => Err(AppError::UnknownParameter(name)),
            None => Ok(()),
        }
    }
}
