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
use std::net::{IpAddr, SocketAddr};

/// The network a source address stands for: an IPv4 address, or an IPv6 /64 — one host can hold
/// a whole /64 (SLAAC privacy addresses), so counting /128s would cap or recognise nothing.
/// Per-source caps (TCP connections, INVITE rate), nonce binding and dialog parties all use it.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(a) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(a) & !u128::from(u64::MAX))),
    }
}

impl TransportKind {
    /// How messages on this transport are framed.
    pub fn framing(self) -> crate::message::Framing {
        match self {
            TransportKind::Udp => crate::message::Framing::Datagram,
            TransportKind::Tcp => crate::message::Framing::Stream,
        }
    }
}

/// Where a message came from: enough to answer it on the same flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inbound {
    pub transport: TransportKind,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// What transports hand to the engine's owner task.
// Nearly every delivery is a message, moved once through the channel: boxing it would only add
// an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Delivery {
    /// A validated message and where it came from.
    Message(crate::message::Message, Inbound),
    /// A TCP connection ended.
    Closed(Inbound),
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
    // A `received` the client wrote itself is replaced too: only we say where it came from.
    if !same_host || via.rport.is_some() || via.received.is_some() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{parse, Framing};

    fn stamped(via: &str, src: &str) -> String {
        let text = format!(
            "OPTIONS sip:x SIP/2.0\r\nVia: {via}\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:x>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n"
        );
        let mut m = parse(Bytes::from(text), Framing::Datagram).unwrap();
        stamp_received(&mut m, src.parse().unwrap());
        let out = m.to_bytes();
        let s = std::str::from_utf8(&out).unwrap();
        s.lines().find(|l| l.starts_with("Via: ")).unwrap()[5..].to_string()
    }

    #[test]
    fn received_and_rport_say_where_the_request_came_from() {
        // RFC 3261 §18.2.1: received only when the sent-by differs.
        assert_eq!(stamped("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1", "192.0.2.1:5060"), "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1");
        assert_eq!(
            stamped("SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK1", "203.0.113.7:5060"),
            "SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK1;received=203.0.113.7"
        );
        // RFC 3581 §4: rport filled, received always added with it.
        assert_eq!(
            stamped("SIP/2.0/UDP [2001:db8::1]:5060;rport;branch=z9hG4bK1", "[2001:db8::1]:40000"),
            "SIP/2.0/UDP [2001:db8::1]:5060;rport=40000;branch=z9hG4bK1;received=2001:db8::1"
        );
        // A received the client wrote itself never survives, even when the sent-by matches.
        assert_eq!(
            stamped("SIP/2.0/UDP 192.0.2.1;received=198.51.100.1;branch=z9hG4bK1", "192.0.2.1:5060"),
            "SIP/2.0/UDP 192.0.2.1;received=192.0.2.1;branch=z9hG4bK1"
        );
    }
}
