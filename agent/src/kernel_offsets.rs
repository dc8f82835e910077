//! Resolves the kernel struct offsets the programs need from the running kernel's BTF.
//!
//! aya does not apply CO-RE relocations to Rust programs, so instead of compiling
//! offsets in, the agent reads `/sys/kernel/btf/vmlinux` and looks each field up by
//! path (anonymous unions and structs are searched, as `skc_daddr` lives in one).

use std::path::Path;

use btfparse::{Offset, Readable, TypeInformation};
use nephilia_common::KernelOffsets;

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Why offsets could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The BTF file could not be read.
    #[error(
        "cannot read kernel BTF at {path}: {source} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)"
    )]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The BTF data did not parse.
    #[error("cannot parse kernel BTF: {0}")]
    Parse(String),
    /// A struct the programs read is not in the kernel's BTF.
    #[error("struct {0} is not in the kernel's BTF")]
    MissingStruct(&'static str),
    /// A field the programs read is not in the kernel's BTF.
    #[error("field {structure}.{path} is not in the kernel's BTF: {reason}")]
    MissingField {
        structure: &'static str,
        path: &'static str,
        reason: String,
    },
    /// The field is a bitfield, which the programs cannot read at a byte offset.
    #[error("field {structure}.{path} is a bitfield")]
    Bitfield {
        structure: &'static str,
        path: &'static str,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

struct Bytes(Vec<u8>);

impl Readable for Bytes {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let start = usize::try_from(offset).ok();
        let end = start.and_then(|start| start.checked_add(buffer.len()));
        match (start, end) {
            (Some(start), Some(end)) if end <= self.0.len() => {
                buffer.copy_from_slice(&self.0[start..end]);
                Ok(())
            }
            _ => Err(btfparse::Error::new(
                btfparse::ErrorKind::IOError,
                "read past the end of the BTF data",
            )),
        }
    }
}

/// The kernel's types, parsed once.
pub struct KernelTypes {
    types: TypeInformation,
}

impl KernelTypes {
    /// Parses the running kernel's BTF.
    pub fn from_sys_fs() -> Result<Self> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let data = std::fs::read(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        let types = TypeInformation::new(&Bytes(data))
            .map_err(|error| Error::Parse(error.message().to_owned()))?;
        Ok(Self { types })
    }

    /// Byte offset of `path` (dot-separated members) inside `struct structure`.
    pub fn offset_of(&self, structure: &'static str, path: &'static str) -> Result<u32> {
        let id = self
            .types
            .id_of(structure)
            .ok_or(Error::MissingStruct(structure))?;
        match self.types.offset_of(id, path) {
            Ok((_, Offset::ByteOffset(offset))) => Ok(offset),
            Ok((_, Offset::BitOffsetAndSize(offset, size))) if offset % 8 == 0 && size % 8 == 0 => {
                Ok(offset / 8)
            }
            Ok((_, Offset::BitOffsetAndSize(..))) => Err(Error::Bitfield { structure, path }),
            Err(error) => Err(Error::MissingField {
                structure,
                path,
                reason: error.message().to_owned(),
            }),
        }
    }

    /// Every offset the connection programs read.
    pub fn connection_offsets(&self) -> Result<KernelOffsets> {
        let sock = |path| self.offset_of("sock", path);
        Ok(KernelOffsets {
            family: sock("__sk_common.skc_family")?,
            daddr: sock("__sk_common.skc_daddr")?,
            rcv_saddr: sock("__sk_common.skc_rcv_saddr")?,
            dport: sock("__sk_common.skc_dport")?,
            num: sock("__sk_common.skc_num")?,
            v6_daddr: sock("__sk_common.skc_v6_daddr")?,
            v6_rcv_saddr: sock("__sk_common.skc_v6_rcv_saddr")?,
            net: sock("__sk_common.skc_net")?,
            net_ns_inum: self.offset_of("net", "ns.inum")?,
            protocol: sock("sk_protocol")?,
            mark: sock("sk_mark")?,
            err: sock("sk_err")?,
            srtt_us: self.offset_of("tcp_sock", "srtt_us")?,
            total_retrans: self.offset_of("tcp_sock", "total_retrans")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offsets that have been stable for years and are easy to check by hand.
    #[test]
    fn resolves_sock_common_fields_from_running_kernel() {
        let Ok(types) = KernelTypes::from_sys_fs() else {
            eprintln!("skipped: {VMLINUX_BTF} is not readable here");
            return;
        };
        let offsets = types.connection_offsets().expect("all fields resolve");
        // `struct sock` starts with `struct sock_common`, which starts with the address pair.
        assert_eq!(offsets.daddr, 0);
        assert_eq!(offsets.rcv_saddr, 4);
        assert_eq!(offsets.dport, 12);
        assert_eq!(offsets.num, 14);
        assert_eq!(offsets.family, 16);
        assert!(offsets.srtt_us > offsets.mark, "tcp_sock extends sock");
    }

    #[test]
    fn unknown_field_is_named_in_the_error() {
        let Ok(types) = KernelTypes::from_sys_fs() else {
            eprintln!("skipped: {VMLINUX_BTF} is not readable here");
            return;
        };
        let error = types.offset_of("sock", "no_such_field").unwrap_err();
        assert!(error.to_string().contains("sock.no_such_field"), "{error}");
    }
}
