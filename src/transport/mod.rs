//! Transports (RFC 3261 §18): UDP and TCP listeners, stream framing, CRLF keepalives
//! (RFC 5626 §3.5.1) and STUN Binding on the SIP port (RFC 5389).
//!
//! Bytes in, [`crate::message::Message`] out: this room turns what arrives on a socket into a
//! validated message (or a precise refusal, answered when possible) and hands it to the core;
//! it sends what the core returns. Must never: pass unvalidated bytes inward, block the runtime,
//! or let one source exhaust shared resources (connection caps, size limits).

pub mod framing;
pub mod socket;
pub mod stun;
pub mod tcp;
pub mod udp;

use crate::config::TransportKind;
use std::net::SocketAddr;

/// Where a message came from: enough to answer it on the same flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inbound {
    pub transport: TransportKind,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// The CRLF keepalive ping and its pong (RFC 5626 §3.5.1).
pub const PING: &[u8] = b"\r\n\r\n";
pub const PONG: &[u8] = b"\r\n";

use crate::message::{Host, Message};
use bytes::Bytes;

/// RFC 3261 §18.2.1 + RFC 3581 §4: on receipt of a request, note where it really came from in
/// the top Via: `received` when the sent-by differs from the source address (always with rport),
/// and the source port into an empty `rport`.
pub fn stamp_received(msg: &mut Message, src: SocketAddr) {
    let via = *msg.top_via();
    let same_host = match via.host {
        Host::V4(a) => std::net::IpAddr::V4(a) == src.ip(),
        Host::V6(a) => std::net::IpAddr::V6(a) == src.ip(),
        Host::Name(_) => false,
    };
    if let Some(rport) = via.rport {
        msg.patch(rport, Bytes::from(format!("rport={}", src.port())));
    }
    if !same_host || via.rport.is_some() {
        let ip = src.ip().to_string();
        match via.received {
            Some(r) => msg.patch(r, Bytes::from(ip)),
            None => msg.patch(crate::message::Span::new(via.span.end as usize, via.span.end as usize), Bytes::from(format!(";received={ip}"))),
        }
    }
}

/// Where a response to `req` goes (RFC 3261 §18.2.2, RFC 3581 §4): back over the same connection
/// on TCP; on UDP to the source address, at the source port when the client asked for rport,
/// otherwise at the sent-by port (default 5060).
pub fn response_destination(req: &Message, from: Inbound) -> SocketAddr {
    match from.transport {
        TransportKind::Tcp => from.remote,
        TransportKind::Udp => {
            let via = req.top_via();
            if via.rport.is_some() {
                from.remote
            } else {
                SocketAddr::new(from.remote.ip(), via.port.unwrap_or(5060))
            }
        }
    }
}
