//! Socket builders (socket2): every SIP socket is made here, so options are set in one place.
//! IPv6 sockets are IPV6_V6ONLY: IPv4 and IPv6 are separate, deliberate listeners.

use std::io;
use std::net::SocketAddr;
use socket2::{Domain, Protocol, Socket, Type};

/// Socket buffer size asked for; the kernel may cap it (net.core.rmem_max).
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;

fn new_socket(addr: SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    // Generous buffers absorb bursts (REGISTER storms after an outage); failures are not fatal.
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    Ok(sock)
}

pub fn udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let sock = new_socket(addr, Type::DGRAM, Protocol::UDP)?;
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

pub fn tcp_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let sock = new_socket(addr, Type::STREAM, Protocol::TCP)?;
    sock.set_nodelay(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(sock.into())
}
