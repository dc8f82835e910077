//! Sockets the proxy makes inside a pod's namespace, with the options ztunnel sets on
//! them in in-pod mode: `SO_MARK` 0x539 on every socket, `IP_TRANSPARENT` on the
//! inbound upstream socket that keeps the client's source address.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::netns::Netns;
use crate::topology::PROXY_MARK;

/// Listen backlog of the proxy's listeners.
const BACKLOG: i32 = 1024;

fn marked_socket() -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_mark(PROXY_MARK)?;
    // ztunnel sets TCP_NODELAY on its sockets (accepted ones inherit it from the
    // listener); without it a CONNECT round trip waits out the peer's delayed ACK (~40 ms).
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// A marked listener on `0.0.0.0:port` inside `ns`. Accepted sockets inherit the mark.
/// Must be called inside a tokio runtime.
pub fn listen(ns: &Netns, port: u16) -> io::Result<TcpListener> {
    let socket = ns.run(|| -> io::Result<Socket> {
        let socket = marked_socket()?;
        socket.set_reuse_address(true)?;
        socket.bind(&SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port).into())?;
        socket.listen(BACKLOG)?;
        Ok(socket)
    });
    let socket = socket.map_err(io::Error::other)??;
    TcpListener::from_std(socket.into())
}

/// Connects from inside `ns` with the proxy's mark. With `source`, the socket is
/// transparent and bound to that (foreign) address, so the app sees the original client.
pub async fn connect(
    ns: &Netns,
    destination: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = ns
        .run(|| -> io::Result<Socket> {
            let socket = marked_socket()?;
            if let Some(source) = source {
                socket.set_ip_transparent_v4(true)?;
                socket.bind(&SocketAddr::new(source, 0).into())?;
            }
            Ok(socket)
        })
        .map_err(io::Error::other)??;
    let socket = TcpSocket::from_std_stream(socket.into());
    match tokio::time::timeout(timeout, socket.connect(destination)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect to {destination} timed out"),
        )),
    }
}

/// The destination the app dialled before the REDIRECT rule sent it here.
pub fn original_destination(stream: &TcpStream) -> io::Result<SocketAddr> {
    let address = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::OriginalDst)
        .map_err(io::Error::from)?;
    Ok(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr))),
        u16::from_be(address.sin_port),
    ))
}

/// Makes the next close send RST instead of FIN (how a proxy passes a reset along).
pub fn reset_on_close(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}
