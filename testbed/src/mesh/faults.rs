//! Applying and reverting faults on a running mesh.

use std::sync::{Arc, Weak};

use super::{Error, MeshInner, Result, lock, upgrade};
use crate::fault::Fault;
use crate::netns;
use crate::scenario::{PolicySpec, ScheduledFault};

/// A fault in force, and how it was applied (so it can be undone the same way).
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveFault {
    pub fault: Fault,
    /// Latency only: applied by the app because the kernel has no netem.
    pub app_level_latency: bool,
}

/// iptables comment marking the blackhole rule, so revert deletes exactly that rule.
const BLACKHOLE_RULE: [&str; 8] = [
    "INPUT",
    "-i",
    "eth0",
    "-m",
    "comment",
    "--comment",
    "nephilia-blackhole",
    "-j",
];

pub(crate) fn inject(inner: &MeshInner, fault: Fault) -> Result<()> {
    fault.check(&inner.scenario)?;
    if lock(&inner.faults)
        .iter()
        .any(|active| active.fault == fault)
    {
        return Ok(());
    }
    let mut app_level_latency = false;
    match &fault {
        Fault::StopPod { pod } => {
            if let Some(app) = lock(&inner.apps).get(pod) {
                app.stop_server();
            }
        }
        Fault::Blackhole { pod } => {
            let namespace = inner.names.pod(pod);
            let mut args = vec!["-I"];
            args.extend_from_slice(&BLACKHOLE_RULE);
            args.push("DROP");
            netns::iptables(&namespace, &args)?;
        }
        Fault::Latency { pod, millis } => {
            let namespace = inner.names.pod(pod);
            let delay = format!("{millis}ms");
            let netem = netns::exec(
                &namespace,
                "tc",
                &[
                    "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", &delay,
                ],
            );
            if let Err(error) = netem {
                tracing::warn!(
                    %pod, %error,
                    "netem is not available here; the app adds the latency instead"
                );
                app_level_latency = true;
                if let Some(app) = lock(&inner.apps).get(pod) {
                    app.control().set_extra_latency(*millis);
                }
            }
        }
        Fault::ErrorRate { pod, rate } => {
            if let Some(app) = lock(&inner.apps).get(pod) {
                app.control().set_error_rate(Some(*rate));
            }
        }
        Fault::Deny { from, to } => {
            let mut policies = inner
                .context
                .policies
                .write()
                .unwrap_or_else(|p| p.into_inner());
            policies.push(PolicySpec {
                from: from.clone(),
                to: to.clone(),
            });
        }
        Fault::KillTunnel { pod } => {
            let killed = lock(&inner.proxies)
                .values()
                .any(|proxy| proxy.kill_tunnels(pod));
            if !killed {
                return Err(Error::NotEnrolled(pod.clone()));
            }
            // Instantaneous: nothing stays active.
            return Ok(());
        }
    }
    tracing::info!(?fault, "fault injected");
    lock(&inner.faults).push(ActiveFault {
        fault,
        app_level_latency,
    });
    Ok(())
}

pub(crate) fn revert(inner: &MeshInner, fault: &Fault) -> Result<()> {
    let active = {
        let mut faults = lock(&inner.faults);
        let Some(index) = faults.iter().position(|active| &active.fault == fault) else {
            return Ok(());
        };
        faults.remove(index)
    };
    match &active.fault {
        Fault::StopPod { pod } => {
            if let Some(app) = lock(&inner.apps).get(pod) {
                app.start_server()?;
            }
        }
        Fault::Blackhole { pod } => {
            let mut args = vec!["-D"];
            args.extend_from_slice(&BLACKHOLE_RULE);
            args.push("DROP");
            netns::iptables(&inner.names.pod(pod), &args)?;
        }
        Fault::Latency { pod, .. } => {
            if active.app_level_latency {
                if let Some(app) = lock(&inner.apps).get(pod) {
                    app.control().set_extra_latency(0);
                }
            } else {
                netns::exec(
                    &inner.names.pod(pod),
                    "tc",
                    &["qdisc", "del", "dev", "eth0", "root"],
                )?;
            }
        }
        Fault::ErrorRate { pod, .. } => {
            if let Some(app) = lock(&inner.apps).get(pod) {
                app.control().set_error_rate(None);
            }
        }
        Fault::Deny { from, to } => {
            let mut policies = inner
                .context
                .policies
                .write()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(index) = policies.iter().position(|p| &p.from == from && &p.to == to) {
                policies.remove(index);
            }
        }
        Fault::KillTunnel { .. } => {}
    }
    tracing::info!(fault = ?active.fault, "fault reverted");
    Ok(())
}

pub(crate) fn clear(inner: &MeshInner) -> Result<()> {
    let active: Vec<Fault> = lock(&inner.faults)
        .iter()
        .map(|a| a.fault.clone())
        .collect();
    for fault in active.iter().rev() {
        revert(inner, fault)?;
    }
    Ok(())
}

/// Runs one scheduled fault: inject at `at`, revert after `duration` (if any).
pub(crate) async fn schedule(inner: Weak<MeshInner>, scheduled: ScheduledFault) {
    tokio::time::sleep(scheduled.at).await;
    let injected = with_mesh(&inner, |mesh| inject(mesh, scheduled.fault.clone()));
    if let Some(Err(error)) = injected {
        tracing::warn!(%error, fault = ?scheduled.fault, "scheduled fault failed");
        return;
    }
    if let Some(duration) = scheduled.duration {
        revert_after(inner, scheduled.fault, duration).await;
    }
}

/// Reverts `fault` after `duration`, unless the mesh is gone by then.
pub(crate) async fn revert_after(
    inner: Weak<MeshInner>,
    fault: Fault,
    duration: std::time::Duration,
) {
    tokio::time::sleep(duration).await;
    if let Some(Err(error)) = with_mesh(&inner, |mesh| revert(mesh, &fault)) {
        tracing::warn!(%error, ?fault, "reverting fault failed");
    }
}

/// Fault application shells out and joins threads: keep it off the async workers.
fn with_mesh<T>(inner: &Weak<MeshInner>, work: impl FnOnce(&Arc<MeshInner>) -> T) -> Option<T> {
    let mesh = upgrade(inner)?;
    Some(tokio::task::block_in_place(|| work(&mesh)))
}
