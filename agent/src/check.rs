//! `nephilia-agent check`: does this node offer every kernel feature the agent needs?

use std::path::Path;

use crate::{
    kernel_offsets,
    l7_capture::{TcAttachMode, attach},
    probes,
};

/// One feature and whether it is present.
#[derive(Clone, Debug)]
pub struct Finding {
    pub feature: String,
    /// `None` when present, otherwise what is wrong and how to fix it.
    pub problem: Option<String>,
}

impl Finding {
    fn present(feature: impl Into<String>) -> Self {
        Self {
            feature: feature.into(),
            problem: None,
        }
    }

    fn missing(feature: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            feature: feature.into(),
            problem: Some(problem.into()),
        }
    }

    fn from_result(feature: impl Into<String>, problem: Option<String>) -> Self {
        Self {
            feature: feature.into(),
            problem,
        }
    }
}

// Capability numbers (include/uapi/linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

fn capabilities() -> Finding {
    // CAP_SYS_RESOURCE (raising RLIMIT_MEMLOCK) is only needed before Linux 5.11, which
    // started charging BPF memory to the cgroup; the programs need 5.x+ BTF anyway.
    const NEEDED: [(u32, &str); 4] = [
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ];
    let feature = "privileges (root or CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_ADMIN)";
    let Some(effective) = effective_capabilities() else {
        return Finding::missing(feature, "cannot read CapEff from /proc/self/status");
    };
    let lacking: Vec<&str> = NEEDED
        .iter()
        .filter(|(bit, _)| effective & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    if lacking.is_empty() {
        Finding::present(feature)
    } else {
        Finding::missing(
            feature,
            format!(
                "missing {}: run as root, or grant these capabilities (the DaemonSet does)",
                lacking.join(", ")
            ),
        )
    }
}

fn btf() -> Finding {
    let feature = format!("kernel BTF ({})", kernel_offsets::VMLINUX_BTF);
    let problem = kernel_offsets::KernelTypes::from_sys_fs()
        .and_then(|types| types.connection_offsets())
        .err()
        .map(|error| format!("{error}: the programs read socket fields at offsets taken from BTF"));
    Finding::from_result(feature, problem)
}

fn tracefs() -> Finding {
    let roots = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
    let feature = "tracefs with the sock and tcp tracepoints";
    match roots.iter().find(|root| {
        Path::new(root)
            .join("events/sock/inet_sock_set_state")
            .exists()
    }) {
        Some(_) => Finding::present(feature),
        None => Finding::missing(
            feature,
            "tracefs is not mounted: `mount -t tracefs tracefs /sys/kernel/tracing` \
             (the DaemonSet mounts it from the host)",
        ),
    }
}

/// Where cgroup v2 is mounted, if it is.
pub fn cgroup2_mount() -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, path, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2").then(|| path.to_owned())
    })
}

fn cgroup2() -> Finding {
    let feature = "cgroup v2 (for sock_ops programs)";
    match cgroup2_mount() {
        Some(path) => Finding::present(format!("{feature} at {path}")),
        None => Finding::missing(
            feature,
            "no cgroup2 filesystem is mounted: `mount -t cgroup2 none /sys/fs/cgroup/unified`",
        ),
    }
}

/// Loading the real programs checks the ring buffer, the hash and per-CPU maps, BTF
/// tracepoints and the verifier in one go; they are detached again at once.
fn programs() -> Vec<Finding> {
    match probes::Probes::load() {
        Ok(mut probes) => {
            let mut findings = vec![Finding::present("ring buffer, hash and per-CPU array maps")];
            findings.extend(
                probes
                    .attached()
                    .iter()
                    .map(|tracepoint| Finding::present(format!("BTF tracepoint {tracepoint}"))),
            );
            findings.extend(verifier_margins(&probes));
            let feature = format!(
                "TC classifiers {} on lo of a scratch network namespace",
                probes::L7_PROGRAMS.join(", ")
            );
            findings.push(
                match attach::probe_attach(&mut probes, TcAttachMode::Auto) {
                    Ok(how) => Finding::present(format!("{feature} ({how})")),
                    Err(error) => Finding::missing(
                        feature,
                        format!("{error}; L7 capture needs TC (clsact or TCX) and CAP_NET_ADMIN"),
                    ),
                },
            );
            findings
        }
        Err(error) => {
            let hint = match &error {
                probes::Error::Load(_) => {
                    "the kernel refused the maps: it needs BPF ring buffers (5.8+) and enough \
                     locked memory"
                }
                probes::Error::Program { .. } => {
                    "the kernel refused a BTF tracepoint program (needs 5.5+ with BTF; \
                     sock_send_length/sock_recv_length need 6.3+)"
                }
                _ => "see the error",
            };
            vec![Finding::missing(
                "eBPF programs load and attach",
                format!("{error}; {hint}"),
            )]
        }
    }
}

/// One finding per program: how much room it leaves under the verifier's limits. A
/// program over the margin still loads here, but the next compiler may push it over.
fn verifier_margins(probes: &probes::Probes) -> Vec<Finding> {
    match probes.verifier_figures() {
        Ok(figures) => figures
            .into_iter()
            .map(|figures| {
                let problems = figures.problems();
                Finding::from_result(
                    format!("verifier margin {}: {}", figures.program, figures.summary()),
                    (!problems.is_empty()).then(|| problems.join("; ")),
                )
            })
            .collect(),
        Err(error) => vec![Finding::missing("verifier figures", error.to_string())],
    }
}

/// Every finding, in the order printed.
pub fn run() -> Vec<Finding> {
    let mut findings = vec![capabilities(), btf(), tracefs(), cgroup2()];
    findings.extend(programs());
    findings
}
