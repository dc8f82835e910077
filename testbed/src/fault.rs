//! Faults injected on purpose, each with the symptom it produces on the wire.

use serde::{Deserialize, Serialize};

use crate::scenario::{Principal, Scenario};

/// A fault, as written in a scenario or sent by `nephilia-testbed fault …`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", deny_unknown_fields)]
pub enum Fault {
    /// Stop the pod's app: its port is closed, so connects are refused and the inbound
    /// proxy answers CONNECT with 503.
    StopPod { pod: String },
    /// Drop every packet arriving on the pod's `eth0`: callers time out.
    Blackhole { pod: String },
    /// Delay packets leaving the pod's `eth0` with netem. Where the kernel has no netem
    /// the app adds the delay to every answer instead (logged as a warning).
    Latency {
        pod: String,
        #[serde(rename = "ms")]
        millis: u64,
    },
    /// Answer this share of requests with 503 / gRPC UNAVAILABLE.
    ErrorRate { pod: String, rate: f64 },
    /// A DENY policy: the destination's proxy answers CONNECT from `from` with 401.
    Deny { from: Principal, to: String },
    /// Reset every tunnelled connection to the pod that is open now: the inbound proxy
    /// aborts its upstream socket (RST to the app) and the HBONE stream, and the caller's
    /// proxy resets the caller's connection.
    KillTunnel { pod: String },
}

/// A fault that does not fit the scenario.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The fault names a pod the scenario does not have.
    #[error("fault names unknown pod {0}")]
    UnknownPod(String),
    /// The fault names a workload no pod runs.
    #[error("fault names unknown workload {0}")]
    UnknownWorkload(String),
    /// A rate outside 0..1.
    #[error("fault rate {0} is not within 0..1")]
    Rate(f64),
    /// The pod runs no app, so there is nothing to stop or to make fail.
    #[error("pod {0} runs no app")]
    NoApp(String),
}

impl Fault {
    /// The pod this fault acts on, if it acts on one.
    pub fn pod(&self) -> Option<&str> {
        match self {
            Fault::StopPod { pod }
            | Fault::Blackhole { pod }
            | Fault::Latency { pod, .. }
            | Fault::ErrorRate { pod, .. }
            | Fault::KillTunnel { pod } => Some(pod),
            Fault::Deny { .. } => None,
        }
    }

    /// Checks the fault's references against the scenario.
    pub fn check(&self, scenario: &Scenario) -> Result<(), Error> {
        if let Some(name) = self.pod() {
            let pod = scenario
                .pod(name)
                .ok_or_else(|| Error::UnknownPod(name.to_owned()))?;
            if matches!(self, Fault::StopPod { .. } | Fault::ErrorRate { .. }) && pod.app.is_none()
            {
                return Err(Error::NoApp(name.to_owned()));
            }
        }
        match self {
            Fault::ErrorRate { rate, .. } if !(0.0..=1.0).contains(rate) => Err(Error::Rate(*rate)),
            Fault::Deny { to, .. } if !scenario.pods.iter().any(|p| p.workload_name() == to) => {
                Err(Error::UnknownWorkload(to.clone()))
            }
            _ => Ok(()),
        }
    }
}
