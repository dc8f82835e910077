//! Nephilia's graph server: joins what every node's agent reports (connections, mesh flows,
//! requests) into a live topology with RED and tunnel metrics, outages with their probable
//! root cause, and traces, and serves them over an HTTP API.

pub mod api;
pub mod config;
pub mod flows;
pub mod ingest;
pub mod otlp;
pub mod outage;
pub mod record;
pub mod server;
pub mod store;
pub mod time;
pub mod topology;
pub mod trace;
pub mod ui;

#[cfg(test)]
pub(crate) mod fixture;
