//! Loads Nephilia's kernel programs, hands them the kernel's struct offsets and attaches
//! them. Dropping `Probes` detaches everything: the programs are never pinned, so no
//! Nephilia program outlives the agent.

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, ProgramError, SchedClassifier},
};
use nephilia_common::{ConnectionState, ProbeFailure};

use crate::{
    kernel_offsets::{self, KernelTypes},
    verifier_figures::{self, ProgramFigures},
};

/// The compiled programs of `ebpf/`, built by `build.rs`.
pub(crate) static PROGRAMS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nephilia"));

/// (program, BTF tracepoint) pairs; see `ebpf/src/connection.rs`.
pub const CONNECTION_HOOKS: [(&str, &str); 8] = [
    ("on_inet_sock_set_state", "inet_sock_set_state"),
    ("on_sock_send_length", "sock_send_length"),
    ("on_sock_recv_length", "sock_recv_length"),
    ("on_inet_sk_error_report", "inet_sk_error_report"),
    ("on_tcp_receive_reset", "tcp_receive_reset"),
    ("on_tcp_send_reset", "tcp_send_reset"),
    ("on_tcp_retransmit_skb", "tcp_retransmit_skb"),
    ("on_tcp_destroy_sock", "tcp_destroy_sock"),
];

/// TC classifiers of `ebpf/src/l7.rs`, loaded with the rest and attached per namespace
/// by `l7_capture::attach`.
pub const L7_PROGRAMS: [&str; 2] = ["l7_capture_egress", "l7_capture_ingress"];

/// Why the programs could not be loaded or read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Struct offsets could not be resolved from the kernel's BTF.
    #[error(transparent)]
    Offsets(#[from] kernel_offsets::Error),
    /// aya could not read the kernel's BTF.
    #[error("cannot read kernel BTF: {0}")]
    Btf(#[from] aya::BtfError),
    /// The object could not be loaded (maps created, globals patched).
    #[error("cannot load the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// The object lacks a program the agent expects; the build is inconsistent.
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    /// The kernel refused to load or attach a program.
    #[error("program {program} ({tracepoint}): {source}")]
    Program {
        program: &'static str,
        tracepoint: &'static str,
        source: ProgramError,
    },
    /// The object lacks a map the agent expects.
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    /// A map operation failed.
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: MapError },
    /// The object's stack use could not be computed.
    #[error(transparent)]
    Figures(#[from] verifier_figures::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The loaded and attached programs with their maps.
pub struct Probes {
    ebpf: Ebpf,
    attached: Vec<&'static str>,
}

impl Probes {
    /// Resolves offsets, loads the object and attaches every hook.
    pub fn load() -> Result<Self> {
        let offsets = KernelTypes::from_sys_fs()?.connection_offsets()?;
        let mut ebpf = EbpfLoader::new()
            .override_global("KERNEL_OFFSETS", &offsets, true)
            .load(PROGRAMS_OBJECT)?;
        let btf = Btf::from_sys_fs()?;
        let mut attached = Vec::new();
        for (program, tracepoint) in CONNECTION_HOOKS {
            let failed = |source| Error::Program {
                program,
                tracepoint,
                source,
            };
            let hook: &mut BtfTracePoint = ebpf
                .program_mut(program)
                .ok_or(Error::MissingProgram(program))?
                .try_into()
                .map_err(failed)?;
            hook.load(tracepoint, &btf).map_err(failed)?;
            hook.attach().map_err(failed)?;
            attached.push(tracepoint);
        }
        for program in L7_PROGRAMS {
            let failed = |source| Error::Program {
                program,
                tracepoint: "tc",
                source,
            };
            let classifier: &mut SchedClassifier = ebpf
                .program_mut(program)
                .ok_or(Error::MissingProgram(program))?
                .try_into()
                .map_err(failed)?;
            classifier.load().map_err(failed)?;
        }
        Ok(Self { ebpf, attached })
    }

    /// Every loaded program's verifier figures: its stack (from the object) and the
    /// instructions the verifier processed (from the kernel).
    pub fn verifier_figures(&self) -> Result<Vec<ProgramFigures>> {
        let stack = verifier_figures::stack_depths(PROGRAMS_OBJECT)?;
        let programs = CONNECTION_HOOKS
            .iter()
            .map(|(program, tracepoint)| (*program, *tracepoint))
            .chain(L7_PROGRAMS.iter().map(|program| (*program, "tc")));
        programs
            .map(|(program, tracepoint)| {
                let failed = |source| Error::Program {
                    program,
                    tracepoint,
                    source,
                };
                let info = self
                    .ebpf
                    .program(program)
                    .ok_or(Error::MissingProgram(program))?
                    .info()
                    .map_err(failed)?;
                Ok(ProgramFigures {
                    program: program.to_string(),
                    // A program the analysis did not find must not pass as 0 bytes.
                    stack_bytes: *stack.get(program).ok_or(Error::MissingProgram(program))?,
                    instructions: info.verified_instruction_count(),
                })
            })
            .collect()
    }

    /// Tracepoints with an attached program.
    pub fn attached(&self) -> &[&'static str] {
        &self.attached
    }

    /// The ring buffer of `ConnectionEvent`s; can be taken once.
    pub fn take_connection_events(&mut self) -> Result<RingBuf<MapData>> {
        const NAME: &str = "CONNECTION_EVENTS";
        let map = self.ebpf.take_map(NAME).ok_or(Error::MissingMap(NAME))?;
        RingBuf::try_from(map).map_err(|source| Error::Map { map: NAME, source })
    }

    /// The ring buffer of `L7Segment` records; can be taken once.
    pub fn take_l7_segments(&mut self) -> Result<RingBuf<MapData>> {
        const NAME: &str = "L7_SEGMENTS";
        let map = self.ebpf.take_map(NAME).ok_or(Error::MissingMap(NAME))?;
        RingBuf::try_from(map).map_err(|source| Error::Map { map: NAME, source })
    }

    /// A loaded L7 capture classifier (one of `L7_PROGRAMS`), to attach.
    pub fn l7_program(&mut self, name: &'static str) -> Result<&mut SchedClassifier> {
        self.ebpf
            .program_mut(name)
            .ok_or(Error::MissingProgram(name))?
            .try_into()
            .map_err(|source| Error::Program {
                program: name,
                tracepoint: "tc",
                source,
            })
    }

    /// The kernel's table of tracked connections.
    pub fn connections(&self) -> Result<HashMap<&MapData, u64, ConnectionState>> {
        const NAME: &str = "CONNECTIONS";
        let map = self.ebpf.map(NAME).ok_or(Error::MissingMap(NAME))?;
        HashMap::try_from(map).map_err(|source| Error::Map { map: NAME, source })
    }

    /// Each in-kernel failure counter, summed over CPUs.
    pub fn failures(&self) -> Result<Vec<(ProbeFailure, u64)>> {
        const NAME: &str = "PROBE_FAILURES";
        let failed = |source| Error::Map { map: NAME, source };
        let map = self.ebpf.map(NAME).ok_or(Error::MissingMap(NAME))?;
        let counters: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).map_err(failed)?;
        ProbeFailure::ALL
            .into_iter()
            .map(|failure| {
                let per_cpu = counters.get(&(failure as u32), 0).map_err(failed)?;
                Ok((failure, per_cpu.iter().sum()))
            })
            .collect()
    }
}
