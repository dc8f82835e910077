//! Finding network namespaces and what is in them, without holding them open: a
//! namespace file kept open would keep a deleted pod's namespace alive.
//!
//! Namespaces come from `/var/run/netns/*` (named, as `ip netns` and CNI plugins make
//! them) and `/proc/*/ns/net` (every process's), deduplicated by inode. The agent's own
//! namespace (the host's) is left out.

use std::{
    collections::BTreeMap,
    ffi::CStr,
    fs::File,
    io,
    net::IpAddr,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

/// A network namespace and paths that name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub inode: u64,
    /// A few paths that open it (a named file first); any may vanish at any time.
    pub paths: Vec<PathBuf>,
}

/// Paths kept per namespace: enough to outlive a process or two.
const PATHS_PER_NAMESPACE: usize = 3;

/// Inode of the namespace a `/proc/PID/ns/net` link or a bind-mounted file names.
fn inode_of(path: &Path) -> Option<u64> {
    if let Ok(target) = std::fs::read_link(path) {
        // "net:[4026531840]"
        let text = target.to_str()?;
        return text.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok();
    }
    std::fs::metadata(path).ok().map(|metadata| metadata.ino())
}

/// Inode of the agent's own network namespace.
pub fn own_inode() -> Option<u64> {
    inode_of(Path::new("/proc/thread-self/ns/net"))
}

/// Every network namespace but the agent's own.
pub fn discover() -> Vec<Namespace> {
    let own = own_inode();
    let mut found: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    let mut add = |path: PathBuf| {
        let Some(inode) = inode_of(&path) else {
            return;
        };
        if Some(inode) == own {
            return;
        }
        let paths = found.entry(inode).or_default();
        if paths.len() < PATHS_PER_NAMESPACE {
            paths.push(path);
        }
    };
    if let Ok(entries) = std::fs::read_dir("/var/run/netns") {
        for entry in entries.flatten() {
            add(entry.path());
        }
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            {
                add(entry.path().join("ns/net"));
            }
        }
    }
    found
        .into_iter()
        .map(|(inode, paths)| Namespace { inode, paths })
        .collect()
}

/// Runs `f` on a thread of its own inside the namespace (setns changes only the calling
/// thread's namespace, and that thread ends with `f`). Fails if no path opens a
/// namespace with the expected inode any more.
pub fn run_in<T: Send>(namespace: &Namespace, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let file = namespace
        .paths
        .iter()
        .filter_map(|path| File::open(path).ok())
        .find(|file| file.metadata().is_ok_and(|m| m.ino() == namespace.inode))
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "network namespace is gone"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: `file` is an open namespace file; only this thread moves.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                drop(file);
                Ok(f())
            })
            .join()
            .map_err(|_| io::Error::other("namespace thread panicked"))?
    })
}

/// An interface of the calling thread's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub loopback: bool,
    pub addresses: Vec<IpAddr>,
}

/// What the capture needs to know about a namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub interfaces: Vec<Interface>,
    /// Something listens on the mesh's outbound capture port: ztunnel's in-pod listener,
    /// so the pod is enrolled.
    pub outbound_listener: bool,
}

/// The calling thread's namespace's interfaces and listeners (call through `run_in`).
pub fn facts(outbound_port: u16) -> Facts {
    Facts {
        interfaces: interfaces(),
        outbound_listener: listening(outbound_port),
    }
}

fn interfaces() -> Vec<Interface> {
    let mut by_name: BTreeMap<String, Interface> = BTreeMap::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `list` is an out pointer freed below with `freeifaddrs`.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Vec::new();
    }
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: `cursor` walks the list `getifaddrs` returned.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a NUL-terminated name owned by the list.
        let name = unsafe { CStr::from_ptr(entry.ifa_name) }
            .to_string_lossy()
            .into_owned();
        let interface = by_name.entry(name.clone()).or_insert_with(|| Interface {
            name,
            loopback: entry.ifa_flags & libc::IFF_LOOPBACK as u32 != 0,
            addresses: Vec::new(),
        });
        if entry.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: `ifa_addr` points at a sockaddr of the family it names.
        let address = unsafe {
            match i32::from((*entry.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let v4 = &*entry.ifa_addr.cast::<libc::sockaddr_in>();
                    Some(IpAddr::from(u32::from_be(v4.sin_addr.s_addr).to_be_bytes()))
                }
                libc::AF_INET6 => {
                    let v6 = &*entry.ifa_addr.cast::<libc::sockaddr_in6>();
                    Some(IpAddr::from(v6.sin6_addr.s6_addr))
                }
                _ => None,
            }
        };
        if let Some(address) = address {
            interface.addresses.push(address);
        }
    }
    // SAFETY: `list` came from `getifaddrs`.
    unsafe { libc::freeifaddrs(list) };
    by_name.into_values().collect()
}

/// Whether a TCP socket listens on `port` in the calling thread's namespace.
fn listening(port: u16) -> bool {
    ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .any(|table| listens_in(&table, port))
}

/// `/proc/net/tcp` format: `sl local_address rem_address st …`, hex `ADDR:PORT`, state
/// `0A` is LISTEN.
fn listens_in(table: &str, port: u16) -> bool {
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let (Some(_), Some(local), Some(_), Some(state)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        let local_port = local
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok());
        state == "0A" && local_port == Some(port)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_are_found_in_proc_net_tcp() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 0100007F:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0\n   \
            1: 0A01F40A:1F90 0A02F40A:A410 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1\n";
        assert!(listens_in(table, 15001));
        // Established, not listening.
        assert!(!listens_in(table, 8080));
        assert!(!listens_in(table, 15006));
    }

    #[test]
    fn own_namespace_is_not_discovered() {
        let own = own_inode().expect("own namespace");
        assert!(discover().iter().all(|namespace| namespace.inode != own));
    }
}
