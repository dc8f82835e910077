//! The TCP connection lifecycle as the kernel programs record it.

/// `AF_INET`.
pub const FAMILY_IPV4: u16 = 2;
/// `AF_INET6`.
pub const FAMILY_IPV6: u16 = 10;

/// Which side of the connection the socket is.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The socket called `connect()`.
    Client = 1,
    /// The socket was accepted by a listener.
    Server = 2,
}

impl Role {
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Client),
            2 => Some(Self::Server),
            _ => None,
        }
    }
}

/// One end of a TCP connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// IPv4 address in the first 4 bytes, or the IPv6 address; network byte order.
    pub addr: [u8; 16],
    /// Port in host byte order.
    pub port: u16,
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u16,
    /// Explicit padding.
    pub _pad: u32,
}

impl Endpoint {
    /// Takes the port and address of `other` where they are known (non-zero), so values
    /// the kernel has already cleared do not overwrite what was seen earlier.
    pub fn merge(&mut self, other: &Endpoint) {
        if other.port != 0 {
            self.port = other.port;
        }
        if other.addr != [0; 16] {
            self.addr = other.addr;
        }
    }
}

/// Everything the kernel programs know about one TCP socket. Kept in the `CONNECTIONS`
/// map keyed by socket cookie while the socket lives, and copied into the ring buffer
/// when it opens and when it is destroyed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectionState {
    /// Socket cookie (`bpf_get_socket_cookie`): unique per socket for the life of the boot.
    pub cookie: u64,
    /// `bpf_ktime_get_ns` when `connect()` started (client) or the connection became
    /// established (server).
    pub start_ns: u64,
    /// When the three-way handshake completed; 0 if it never did.
    pub established_ns: u64,
    /// When the socket entered `TCP_CLOSE`; 0 while open.
    pub close_ns: u64,
    /// When the owner first sent or received payload; 0 if it never did. For a proxy's
    /// accepted socket this is when it started relaying (ztunnel only relays after the
    /// tunnel's CONNECT was answered), the end of the tunnel setup.
    pub first_data_ns: u64,
    /// Payload bytes the socket's owner sent (`sock_sendmsg` return values).
    pub bytes_sent: u64,
    /// Payload bytes the socket's owner received (`sock_recvmsg` return values, peeks excluded).
    pub bytes_received: u64,
    /// Local address of the socket.
    pub local: Endpoint,
    /// Peer address of the socket.
    pub remote: Endpoint,
    /// Inode number of the socket's network namespace (as in `/proc/PID/ns/net`).
    pub netns: u32,
    /// Thread-group id of the process that connected (client) or first read or wrote (server).
    pub pid: u32,
    /// `SO_MARK` of the socket, read at each state change.
    pub mark: u32,
    /// Smoothed round-trip time in microseconds (`tcp_sock.srtt_us >> 3`), read at close.
    pub srtt_us: u32,
    /// Retransmitted segments (`tcp_sock.total_retrans`), read at close.
    pub retransmits: u32,
    /// Last socket error reported (`sk_err`, an errno), 0 if none.
    pub error: u32,
    /// RST segments this socket sent.
    pub resets_sent: u32,
    /// RST segments this socket received.
    pub resets_received: u32,
    /// `Role` as its `u8` value.
    pub role: u8,
    /// Last recorded TCP state: `TCP_SYN_SENT` (2), `TCP_ESTABLISHED` (1) or `TCP_CLOSE` (7).
    pub tcp_state: u8,
    /// Explicit padding.
    pub _pad: [u8; 6],
    /// `comm` of the process in `pid`, NUL-padded.
    pub comm: [u8; 16],
}

/// What a ring buffer record announces.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionEventKind {
    /// A client called `connect()` or a server socket became established.
    Opened = 1,
    /// The socket was destroyed; `state` holds its final counters.
    Closed = 2,
}

/// One record of the `CONNECTION_EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectionEvent {
    /// `ConnectionEventKind` as its `u32` value.
    pub kind: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// The socket's state at the time of the event.
    pub state: ConnectionState,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` data with explicit padding and no pointers.
    unsafe impl aya::Pod for super::ConnectionState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnectionEvent {}
}
