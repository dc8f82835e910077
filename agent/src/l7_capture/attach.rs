//! Attaching the capture programs in pod namespaces, and detaching them (RAII).
//!
//! On Linux 6.6+ programs attach through TCX links: no qdisc is created, and a link is
//! a file descriptor, so nothing outlives the agent even when it is killed. Older
//! kernels get the `clsact` qdisc (added only if absent, removed on detach if the agent
//! added it) and netlink filters, removed on detach from inside the namespace. Netlink
//! filters outlive a killed agent: the next one removes them when it starts
//! ([`remove_leftovers`]).
//!
//! Which interfaces (see `CaptureMode`):
//! - `lo` egress of every enrolled pod (a listener on the mesh's outbound port, 15001,
//!   is ztunnel's in-pod listener), and of every namespace holding a pod IP;
//! - the pod interface (the one holding the pod IP) egress and ingress when the pod is
//!   not enrolled: its traffic is plaintext on the wire. An enrolled pod's interface
//!   only carries HBONE (TLS), which is not copied;
//! - with `all`, `lo` of every namespace that is not the host's as well.

use std::collections::HashMap;

use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType,
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions},
};

use super::{
    CaptureMode, TcAttachMode, clsact,
    namespaces::{self, Facts, Namespace},
};
use crate::{
    mesh_flow::MeshPorts,
    metadata::MeshMetadata,
    probes::{self, Probes},
};

/// Why a program could not be attached in a namespace.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The namespace could not be entered (it may have just gone).
    #[error("entering network namespace {inode}: {source}")]
    Enter { inode: u64, source: std::io::Error },
    /// The programs are not loaded.
    #[error(transparent)]
    Probes(Box<probes::Error>),
    /// The kernel refused the attachment.
    #[error("attaching {program} to {interface} in network namespace {inode}: {source}")]
    Attach {
        program: &'static str,
        interface: String,
        inode: u64,
        source: Box<aya::programs::ProgramError>,
    },
    /// The `clsact` qdisc could not be added.
    #[error("adding clsact to {interface} in network namespace {inode}: {source}")]
    Qdisc {
        interface: String,
        inode: u64,
        source: Box<tc::TcError>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Egress or ingress of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Egress,
    Ingress,
}

impl From<probes::Error> for Error {
    fn from(error: probes::Error) -> Self {
        Self::Probes(Box::new(error))
    }
}

impl Direction {
    /// The program that runs on this hook.
    pub fn program(self) -> &'static str {
        match self {
            Self::Egress => "l7_capture_egress",
            Self::Ingress => "l7_capture_ingress",
        }
    }

    fn tc(self) -> TcAttachType {
        match self {
            Self::Egress => TcAttachType::Egress,
            Self::Ingress => TcAttachType::Ingress,
        }
    }
}

/// One program on one hook of one interface.
struct Attached {
    interface: String,
    direction: Direction,
    link: Option<SchedClassifierLink>,
    /// Netlink mode: this agent added the interface's `clsact` qdisc.
    added_clsact: bool,
}

/// The programs attached in one namespace.
struct Attachment {
    namespace: Namespace,
    hooks: Vec<Attached>,
}

impl Attachment {
    fn has(&self, interface: &str, direction: Direction) -> bool {
        self.hooks
            .iter()
            .any(|hook| hook.interface == interface && hook.direction == direction)
    }

    /// Detaches everything. Netlink filters and qdiscs are removed from inside the
    /// namespace; if it is gone, so are they.
    fn detach(&mut self) {
        let hooks = std::mem::take(&mut self.hooks);
        let netlink = hooks.iter().any(|hook| {
            hook.added_clsact
                || hook
                    .link
                    .as_ref()
                    .is_some_and(|link| link.priority().is_ok())
        });
        if !netlink {
            drop(hooks);
            return;
        }
        let _ = namespaces::run_in(&self.namespace, move || {
            for mut hook in hooks {
                drop(hook.link.take());
                if hook.added_clsact
                    && let Err(error) = clsact::remove(&hook.interface)
                {
                    tracing::warn!(interface = hook.interface, %error, "clsact qdisc not removed");
                }
            }
        });
    }
}

/// Every attachment the agent made; dropping it detaches them all.
pub struct Attachments {
    mode: CaptureMode,
    tc_mode: TcAttachMode,
    ports: MeshPorts,
    by_namespace: HashMap<u64, Attachment>,
}

/// What one rescan did.
#[derive(Debug, Default)]
pub struct Rescan {
    pub attached: Vec<(u64, String, Direction)>,
    pub detached_namespaces: Vec<u64>,
    pub errors: Vec<Error>,
}

impl Attachments {
    pub fn new(mode: CaptureMode, tc_mode: TcAttachMode, ports: MeshPorts) -> Self {
        Self {
            mode,
            tc_mode,
            ports,
            by_namespace: HashMap::new(),
        }
    }

    /// (namespace inode, interface, hook) of every attachment.
    pub fn hooks(&self) -> Vec<(u64, String, Direction)> {
        let mut hooks: Vec<_> = self
            .by_namespace
            .iter()
            .flat_map(|(inode, attachment)| {
                attachment
                    .hooks
                    .iter()
                    .map(|hook| (*inode, hook.interface.clone(), hook.direction))
            })
            .collect();
        hooks.sort();
        hooks
    }

    /// Attaches in namespaces that appeared (or changed), detaches from those that went.
    pub fn rescan(&mut self, probes: &mut Probes, metadata: &MeshMetadata) -> Rescan {
        let mut report = Rescan::default();
        if self.mode == CaptureMode::Off {
            return report;
        }
        let present = namespaces::discover();
        let gone: Vec<u64> = self
            .by_namespace
            .keys()
            .filter(|inode| !present.iter().any(|n| n.inode == **inode))
            .copied()
            .collect();
        for inode in gone {
            if let Some(mut attachment) = self.by_namespace.remove(&inode) {
                attachment.detach();
                report.detached_namespaces.push(inode);
            }
        }
        for namespace in present {
            let outbound = self.ports.outbound;
            let facts = match namespaces::run_in(&namespace, move || namespaces::facts(outbound)) {
                Ok(facts) => facts,
                // Gone between the listing and now.
                Err(_) => continue,
            };
            for (interface, direction) in targets(self.mode, &facts, metadata) {
                let attachment =
                    self.by_namespace
                        .entry(namespace.inode)
                        .or_insert_with(|| Attachment {
                            namespace: namespace.clone(),
                            hooks: Vec::new(),
                        });
                attachment.namespace.paths = namespace.paths.clone();
                if attachment.has(&interface, direction) {
                    continue;
                }
                match attach(probes, &namespace, &interface, direction, self.tc_mode) {
                    Ok(attached) => {
                        attachment.hooks.push(attached);
                        report
                            .attached
                            .push((namespace.inode, interface, direction));
                    }
                    Err(error) => report.errors.push(error),
                }
            }
        }
        report
    }

    /// Detaches everything now.
    pub fn detach_all(&mut self) {
        for (_, mut attachment) in self.by_namespace.drain() {
            attachment.detach();
        }
    }
}

impl Drop for Attachments {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// A capture filter a killed agent left, removed by [`remove_leftovers`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leftover {
    pub netns: u64,
    pub interface: String,
    pub direction: Direction,
    /// The `clsact` qdisc was left empty by the removal and went too.
    pub removed_clsact: bool,
}

/// Removes the capture filters a killed agent left in every namespace (netlink mode:
/// filters live in the kernel, not in the agent's descriptors, so SIGKILL leaves them
/// copying traffic into a ring buffer nobody reads). A `clsact` qdisc they leave empty is
/// removed too: an agent that attached there had added it when absent. Only one agent
/// runs per node, so any filter of these names belongs to a dead one.
pub fn remove_leftovers() -> Vec<Leftover> {
    let mut removed = Vec::new();
    for namespace in namespaces::discover() {
        let inode = namespace.inode;
        let found = namespaces::run_in(&namespace, move || {
            let mut found = Vec::new();
            for interface in namespaces::facts(0).interfaces {
                let mut any = false;
                for direction in [Direction::Egress, Direction::Ingress] {
                    if tc::qdisc_detach_program(
                        &interface.name,
                        direction.tc(),
                        direction.program(),
                    )
                    .is_ok()
                    {
                        any = true;
                        found.push(Leftover {
                            netns: inode,
                            interface: interface.name.clone(),
                            direction,
                            removed_clsact: false,
                        });
                    }
                }
                if any
                    && clsact::has_filters(&interface.name).is_ok_and(|has| !has)
                    && clsact::remove(&interface.name).is_ok()
                    && let Some(last) = found.last_mut()
                {
                    last.removed_clsact = true;
                }
            }
            found
        });
        removed.extend(found.unwrap_or_default());
    }
    removed
}

/// The hooks a namespace gets.
pub fn targets(
    mode: CaptureMode,
    facts: &Facts,
    metadata: &MeshMetadata,
) -> Vec<(String, Direction)> {
    if mode == CaptureMode::Off {
        return Vec::new();
    }
    let pod_interface = facts.interfaces.iter().find(|interface| {
        !interface.loopback
            && interface
                .addresses
                .iter()
                .any(|ip| metadata.workload(*ip).is_some())
    });
    let mut hooks = Vec::new();
    let loopback = facts.interfaces.iter().find(|interface| interface.loopback);
    if let Some(lo) = loopback
        && (mode == CaptureMode::All || facts.outbound_listener || pod_interface.is_some())
    {
        hooks.push((lo.name.clone(), Direction::Egress));
    }
    if let Some(pod) = pod_interface
        && !facts.outbound_listener
    {
        hooks.push((pod.name.clone(), Direction::Egress));
        hooks.push((pod.name.clone(), Direction::Ingress));
    }
    hooks
}

fn attach(
    probes: &mut Probes,
    namespace: &Namespace,
    interface: &str,
    direction: Direction,
    mode: TcAttachMode,
) -> Result<Attached> {
    let program = probes.l7_program(direction.program())?;
    let inode = namespace.inode;
    let netlink = match mode {
        TcAttachMode::Netlink => true,
        TcAttachMode::Tcx => false,
        TcAttachMode::Auto => !tcx_supported(),
    };
    let name = interface.to_owned();
    namespaces::run_in(namespace, move || {
        attach_here(program, &name, direction, netlink, inode)
    })
    .map_err(|source| Error::Enter { inode, source })?
}

/// TCX links exist from Linux 6.6.
fn tcx_supported() -> bool {
    aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
}

/// Attaches on the calling thread's namespace.
fn attach_here(
    program: &mut SchedClassifier,
    interface: &str,
    direction: Direction,
    netlink: bool,
    inode: u64,
) -> Result<Attached> {
    let failed = |source| Error::Attach {
        program: direction.program(),
        interface: interface.to_owned(),
        inode,
        source: Box::new(source),
    };
    let mut added_clsact = false;
    let options = if netlink {
        match tc::qdisc_add_clsact(interface) {
            Ok(()) => added_clsact = true,
            Err(tc::TcError::NetlinkError(error)) if error.raw_os_error() == Some(libc::EEXIST) => {
            }
            Err(source) => {
                return Err(Error::Qdisc {
                    interface: interface.to_owned(),
                    inode,
                    source: Box::new(source),
                });
            }
        }
        TcAttachOptions::Netlink(NlOptions::default())
    } else {
        TcAttachOptions::TcxOrder(LinkOrder::default())
    };
    let attached = program
        .attach_with_options(interface, direction.tc(), options)
        .and_then(|id| program.take_link(id));
    match attached {
        Ok(link) => Ok(Attached {
            interface: interface.to_owned(),
            direction,
            link: Some(link),
            added_clsact,
        }),
        Err(source) => {
            if added_clsact {
                let _ = clsact::remove(interface);
            }
            Err(failed(source))
        }
    }
}

/// Attaches the egress program to `lo` of a scratch namespace and detaches it again:
/// what `nephilia-agent check` uses to prove the kernel takes the programs.
pub fn probe_attach(probes: &mut Probes, mode: TcAttachMode) -> Result<&'static str> {
    let netlink = match mode {
        TcAttachMode::Netlink => true,
        TcAttachMode::Tcx => false,
        TcAttachMode::Auto => !tcx_supported(),
    };
    for direction in [Direction::Egress, Direction::Ingress] {
        let program = probes.l7_program(direction.program())?;
        let result = std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: only this thread moves to the new namespace, which goes
                    // away when the thread ends.
                    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                        return Err(Error::Enter {
                            inode: 0,
                            source: std::io::Error::last_os_error(),
                        });
                    }
                    let mut attached = attach_here(program, "lo", direction, netlink, 0)?;
                    drop(attached.link.take());
                    Ok(())
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(Error::Enter {
                        inode: 0,
                        source: std::io::Error::other("thread panicked"),
                    })
                })
        });
        result?;
    }
    Ok(if netlink { "netlink clsact" } else { "TCX" })
}
