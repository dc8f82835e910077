//! Server flags and the thresholds that decide health (documented in graph-server/README.md).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::http::Uri;

/// A flag value that could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A size was not a number with an optional unit (B, KiB, MiB, GiB, KB, MB, GB).
    #[error("invalid size {0:?}: expected e.g. 512MiB, 2GiB or 1000000")]
    BadSize(String),
    /// A ratio was not a number between 0 and 1.
    #[error("invalid ratio {0:?}: expected a number between 0 and 1, e.g. 0.05")]
    BadRatio(String),
    /// Only some of the TLS flags were given.
    #[error("--tls-cert, --tls-key and --tls-ca go together")]
    PartialTls,
    /// `--otlp-endpoint` was not an `http://host:port` URL.
    #[error(
        "invalid --otlp-endpoint {value:?}: {reason}; expected http://host:port or https://host:port, e.g. http://jaeger-collector:4317"
    )]
    BadOtlpEndpoint { value: String, reason: &'static str },
    /// `--otlp-ca` verifies a TLS collector; the endpoint was not https://.
    #[error("--otlp-ca is given but --otlp-endpoint is not an https:// URL")]
    OtlpCaWithoutHttps,
}

/// `nephilia-server` flags.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "nephilia-server", version, about = "Nephilia graph server")]
pub struct ServerArgs {
    /// HTTP API, /metrics and health.
    #[arg(long, env = "NEPHILIA_HTTP_ADDR", default_value = "0.0.0.0:9696")]
    pub http_addr: SocketAddr,
    /// gRPC ingest from the agents.
    #[arg(long, env = "NEPHILIA_GRPC_ADDR", default_value = "0.0.0.0:9697")]
    pub grpc_addr: SocketAddr,
    /// How long buckets, spans and records are kept.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// Upper bound of the in-memory estimate; the oldest data is dropped to stay under it.
    #[arg(long, default_value = "512MiB", value_parser = parse_size)]
    pub max_memory: usize,
    /// Bearer token required for /api and /metrics (health endpoints stay open).
    #[arg(long, env = "NEPHILIA_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Width of one aggregation bucket.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub bucket_width: Duration,
    #[command(flatten)]
    pub health: HealthThresholds,
    /// Most recent records kept for /api/v1/flows.
    #[arg(long, default_value_t = 50_000)]
    pub max_flows: usize,
    /// Edges /metrics renders series for at most: the busiest (most requests and
    /// connections); `nephilia_metrics_omitted{what="edges"}` counts the others.
    #[arg(long, default_value_t = 1000)]
    pub metrics_max_edges: usize,
    /// Agents /metrics renders series for at most: the most recently seen;
    /// `nephilia_metrics_omitted{what="agents"}` counts the others.
    #[arg(long, default_value_t = 5000)]
    pub metrics_max_agents: usize,
    /// Server certificate (PEM) for gRPC mTLS.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// Server key (PEM) for gRPC mTLS.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that agents' client certificates must chain to.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// OTLP/gRPC collector trace spans are exported to (Jaeger, Tempo, an OpenTelemetry
    /// Collector), e.g. http://jaeger-collector:4317, or https:// for TLS; no export unless
    /// given.
    #[arg(long, env = "NEPHILIA_OTLP_ENDPOINT", value_parser = parse_otlp_endpoint)]
    pub otlp_endpoint: Option<Uri>,
    /// CA certificates (PEM) the https:// collector's certificate must chain to; without
    /// it, the system's trust store.
    #[arg(long, env = "NEPHILIA_OTLP_CA")]
    pub otlp_ca: Option<PathBuf>,
    /// How long a trace must have had no new span before its spans are exported.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub otlp_delay: Duration,
    /// Spans waiting for the collector, the batch being sent included; when full, the
    /// oldest waiting span is dropped and counted.
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u64).range(1..))]
    pub otlp_queue: u64,
}

impl ServerArgs {
    /// Whether spans are exported to an https:// collector.
    pub fn otlp_over_tls(&self) -> bool {
        self.otlp_endpoint
            .as_ref()
            .is_some_and(|uri| uri.scheme_str() == Some("https"))
    }

    /// Cross-flag checks clap cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let given = [&self.tls_cert, &self.tls_key, &self.tls_ca]
            .iter()
            .filter(|f| f.is_some())
            .count();
        if given != 0 && given != 3 {
            return Err(ConfigError::PartialTls);
        }
        if self.otlp_ca.is_some() && !self.otlp_over_tls() {
            return Err(ConfigError::OtlpCaWithoutHttps);
        }
        Ok(())
    }
}

/// When an edge or node is degraded or failing. The error rate of an edge is the larger
/// of its request error rate (5xx + gRPC non-OK over requests) and its connection error
/// rate (refused + reset + timeout + unreachable + tunnel_failed over connections).
#[derive(Debug, Clone, Copy, PartialEq, clap::Args)]
pub struct HealthThresholds {
    /// Error rate at or above which health is `degraded`.
    #[arg(long, default_value = "0.01", value_parser = parse_ratio)]
    pub degraded_error_rate: f64,
    /// Error rate at or above which health is `failing` (and an outage opens).
    #[arg(long, default_value = "0.1", value_parser = parse_ratio)]
    pub failing_error_rate: f64,
    /// Request (or connection) p95 latency at or above which health is `degraded`; off
    /// unless given.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub degraded_p95_latency: Option<Duration>,
    /// Fewer attempts (requests or connections) than this in a window say nothing about
    /// health: the edge stays `healthy` and cannot open an outage.
    #[arg(long, default_value_t = 3)]
    pub min_attempts: u64,
    /// Evaluations (buckets) without failure before an outage closes.
    #[arg(long, default_value_t = 2)]
    pub recovery_buckets: u32,
}

impl Default for HealthThresholds {
    fn default() -> Self {
        Self {
            degraded_error_rate: 0.01,
            failing_error_rate: 0.1,
            degraded_p95_latency: None,
            min_attempts: 3,
            recovery_buckets: 2,
        }
    }
}

/// "512MiB", "2GiB", "100MB", "1000000".
pub fn parse_size(text: &str) -> Result<usize, ConfigError> {
    let bad = || ConfigError::BadSize(text.to_owned());
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let number: usize = digits.parse().map_err(|_| bad())?;
    let factor: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(bad()),
    };
    number.checked_mul(factor).ok_or_else(bad)
}

/// "http://jaeger-collector:4317" (plain-text gRPC) or "https://…" (TLS) to a host and
/// port, no path.
pub fn parse_otlp_endpoint(text: &str) -> Result<Uri, ConfigError> {
    let bad = |reason| ConfigError::BadOtlpEndpoint {
        value: text.to_owned(),
        reason,
    };
    let uri: Uri = text.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("the scheme must be http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if uri.port_u16().is_none() {
        return Err(bad("no port (OTLP/gRPC listens on 4317)"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(bad("OTLP/gRPC takes no path"));
    }
    Ok(uri)
}

fn parse_ratio(text: &str) -> Result<f64, ConfigError> {
    match text.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(ConfigError::BadRatio(text.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("512MiB"), Ok(512 * 1024 * 1024));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("12XB"), Err(ConfigError::BadSize("12XB".into())));
    }

    #[test]
    fn otlp_ca_needs_an_https_endpoint() {
        use clap::Parser;
        let args = |endpoint: &str| {
            ServerArgs::parse_from([
                "nephilia-server",
                "--otlp-endpoint",
                endpoint,
                "--otlp-ca",
                "ca.pem",
            ])
        };
        assert_eq!(
            args("http://jaeger-collector:4317").validate(),
            Err(ConfigError::OtlpCaWithoutHttps)
        );
        assert_eq!(args("https://jaeger-collector:4317").validate(), Ok(()));
        let no_endpoint = ServerArgs::parse_from(["nephilia-server", "--otlp-ca", "ca.pem"]);
        assert_eq!(no_endpoint.validate(), Err(ConfigError::OtlpCaWithoutHttps));
    }

    #[test]
    fn partial_tls_flags_are_refused() {
        use clap::Parser;
        let args = ServerArgs::parse_from(["nephilia-server", "--tls-cert", "c.pem"]);
        assert_eq!(args.validate(), Err(ConfigError::PartialTls));
        let args = ServerArgs::parse_from(["nephilia-server"]);
        assert_eq!(args.validate(), Ok(()));
        assert_eq!(args.http_addr.to_string(), "0.0.0.0:9696");
        assert_eq!(args.grpc_addr.to_string(), "0.0.0.0:9697");
        assert_eq!(args.otlp_endpoint, None);
    }

    #[test]
    fn otlp_endpoint_must_be_http_or_https_host_and_port() {
        let uri = parse_otlp_endpoint("http://jaeger-collector:4317").unwrap();
        assert_eq!(uri.to_string(), "http://jaeger-collector:4317/");
        let uri = parse_otlp_endpoint("https://tempo.example:4317").unwrap();
        assert_eq!(uri.to_string(), "https://tempo.example:4317/");
        for (text, reason) in [
            (
                "jaeger-collector:4317",
                "the scheme must be http:// or https://",
            ),
            ("ftp://tempo:4317", "the scheme must be http:// or https://"),
            ("http://tempo", "no port (OTLP/gRPC listens on 4317)"),
            ("http://tempo:4317/v1/traces", "OTLP/gRPC takes no path"),
            ("http://", "not a URL"),
        ] {
            assert_eq!(
                parse_otlp_endpoint(text),
                Err(ConfigError::BadOtlpEndpoint {
                    value: text.into(),
                    reason
                }),
                "{text}"
            );
        }
        use clap::Parser;
        let err = ServerArgs::try_parse_from(["nephilia-server", "--otlp-endpoint", "tempo:4317"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--otlp-endpoint")
                && err.contains("expected http://host:port or https://host:port"),
            "{err}"
        );
        let err = ServerArgs::try_parse_from(["nephilia-server", "--otlp-queue", "0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--otlp-queue"), "{err}");
    }
}
