//! The `clsact` qdisc over rtnetlink, without the `tc` binary (the agent image has none):
//! removing it, and telling whether any filter is left on it. aya adds the qdisc and
//! attaches and detaches filters, but has no call that removes a qdisc.
//!
//! Messages are `nlmsghdr` + `tcmsg` (+ a `TCA_KIND` attribute), as `tc qdisc del dev IF
//! clsact` and `tc filter show dev IF egress` send them:
//! <https://man7.org/linux/man-pages/man7/rtnetlink.7.html>.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// `TCA_KIND` (linux/rtnetlink.h).
const TCA_KIND: u16 = 1;
/// `TC_H_CLSACT` (= `TC_H_INGRESS`): the parent the qdisc hangs from.
const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
/// The qdisc's own handle, `TC_H_MAKE(TC_H_CLSACT, 0)`.
const CLSACT_HANDLE: u32 = 0xFFFF_0000;
/// Parents of the filters on its hooks, `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)` and
/// `…TC_H_MIN_EGRESS`.
const HOOK_PARENTS: [u32; 2] = [0xFFFF_FFF2, 0xFFFF_FFF3];

const NLMSG_HEADER: usize = 16;

/// An rtnetlink socket of the calling thread's network namespace.
struct Rtnetlink(OwnedFd);

impl Rtnetlink {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor nobody else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Sends one request and collects the payloads of the replies of type `wanted`,
    /// until the kernel's acknowledgement (or the end of a dump).
    fn request(&self, message: &[u8], wanted: u16) -> io::Result<Vec<Vec<u8>>> {
        // SAFETY: `message` is a valid buffer of its length.
        let sent = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut replies = Vec::new();
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            // SAFETY: `buffer` is writable for its length.
            let received = unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                )
            };
            let received = match usize::try_from(received) {
                Ok(n) => n,
                Err(_) => {
                    let error = io::Error::last_os_error();
                    if error.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(error);
                }
            };
            let mut data = &buffer[..received];
            while data.len() >= NLMSG_HEADER {
                let length = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
                let kind = u16::from_ne_bytes([data[4], data[5]]);
                if length < NLMSG_HEADER || length > data.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "netlink message of {length} bytes in {} received",
                            data.len()
                        ),
                    ));
                }
                let payload = &data[NLMSG_HEADER..length];
                let code = payload
                    .get(..4)
                    .map_or(0, |c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
                match i32::from(kind) {
                    libc::NLMSG_ERROR | libc::NLMSG_DONE if code < 0 => {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    libc::NLMSG_ERROR | libc::NLMSG_DONE => return Ok(replies),
                    _ if kind == wanted => replies.push(payload.to_vec()),
                    _ => {}
                }
                data = &data[length.next_multiple_of(4).min(data.len())..];
            }
        }
    }
}

/// An `nlmsghdr` + `tcmsg` (+ `TCA_KIND`) request.
fn tc_message(
    kind: u16,
    flags: i32,
    ifindex: u32,
    handle: u32,
    parent: u32,
    qdisc: &str,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(32);
    body.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    body.extend_from_slice(&ifindex.to_ne_bytes());
    body.extend_from_slice(&handle.to_ne_bytes());
    body.extend_from_slice(&parent.to_ne_bytes());
    body.extend_from_slice(&0u32.to_ne_bytes());
    if !qdisc.is_empty() {
        let value = [qdisc.as_bytes(), b"\0"].concat();
        body.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        body.extend_from_slice(&TCA_KIND.to_ne_bytes());
        body.extend_from_slice(&value);
        body.resize(body.len().next_multiple_of(4), 0);
    }
    let mut message = Vec::with_capacity(NLMSG_HEADER + body.len());
    message.extend_from_slice(&((NLMSG_HEADER + body.len()) as u32).to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(&(flags as u16).to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    message.extend_from_slice(&body);
    message
}

fn ifindex(interface: &str) -> io::Result<u32> {
    let name = CString::new(interface)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name with NUL"))?;
    // SAFETY: `name` is NUL-terminated.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        index => Ok(index),
    }
}

/// Removes the `clsact` qdisc of `interface` (and any filter on it) in the calling
/// thread's namespace.
pub fn remove(interface: &str) -> io::Result<()> {
    let message = tc_message(
        libc::RTM_DELQDISC,
        libc::NLM_F_REQUEST | libc::NLM_F_ACK,
        ifindex(interface)?,
        CLSACT_HANDLE,
        TC_H_CLSACT,
        "clsact",
    );
    Rtnetlink::open()?.request(&message, 0).map(drop)
}

/// Whether any filter sits on the ingress or egress hook of `interface`'s `clsact` qdisc
/// (none when there is no such qdisc).
pub fn has_filters(interface: &str) -> io::Result<bool> {
    let index = ifindex(interface)?;
    let socket = Rtnetlink::open()?;
    for parent in HOOK_PARENTS {
        let message = tc_message(
            libc::RTM_GETTFILTER,
            libc::NLM_F_REQUEST | libc::NLM_F_DUMP,
            index,
            0,
            parent,
            "",
        );
        if !socket.request(&message, libc::RTM_NEWTFILTER)?.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}
