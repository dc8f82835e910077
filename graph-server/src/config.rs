//! Server flags and the thresholds that decide health (documented in graph-server/README.md).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Server certificate (PEM) for gRPC mTLS.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// Server key (PEM) for gRPC mTLS.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that agents' client certificates must chain to.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
}

impl ServerArgs {
    /// Cross-flag checks clap cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let given = [&self.tls_cert, &self.tls_key, &self.tls_ca]
            .iter()
            .filter(|f| f.is_some())
            .count();
        if given != 0 && given != 3 {
            return Err(ConfigError::PartialTls);
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
    fn partial_tls_flags_are_refused() {
        use clap::Parser;
        let args = ServerArgs::parse_from(["nephilia-server", "--tls-cert", "c.pem"]);
        assert_eq!(args.validate(), Err(ConfigError::PartialTls));
        let args = ServerArgs::parse_from(["nephilia-server"]);
        assert_eq!(args.validate(), Ok(()));
        assert_eq!(args.http_addr.to_string(), "0.0.0.0:9696");
        assert_eq!(args.grpc_addr.to_string(), "0.0.0.0:9697");
    }
}
