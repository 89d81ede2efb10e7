//! The stateless edge: what the transports answer without asking the engine — refusals of bytes
//! that failed validation (400 with a reason phrase, 513, 505) and the amplification guard for
//! every answer on UDP. Validated messages go on to the stateful [`crate::engine`].
//!
//! Sans-IO. Must never: answer an ACK or a response, or answer UDP with more than a bounded
//! multiple of what arrived (spoofed sources).

use crate::config::{Config, TransportKind};
use crate::message::MessageError;
use crate::metrics::Metrics;
use crate::transport::Inbound;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;

/// Bytes to send and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub dest: SocketAddr,
    pub bytes: Bytes,
}

pub struct Core {
    pub metrics: Arc<Metrics>,
}

impl Core {
    pub fn new(_cfg: &Config, metrics: Arc<Metrics>) -> Core {
        Core { metrics }
    }

    /// Bytes that failed validation: answered when a response can be built, otherwise dropped.
    pub fn on_invalid(&self, buf: &[u8], err: &MessageError, from: Inbound) -> Option<Outbound> {
        tracing::debug!(remote = %from.remote, error = %err, "refused message");
        self.metrics.inc("invalid", err.label());
        match crate::message::response::reject(buf, err) {
            // A real request is larger than its 400 (which copies only five of its headers);
            // one built to be tiny is not answered.
            Some(bytes) if self.would_amplify(&from, bytes.len(), buf.len(), 2) => None,
            Some(bytes) => {
                self.metrics.inc("responses", status_label(err.status()));
                Some(Outbound { dest: from.remote, bytes })
            }
            None => {
                self.metrics.inc("dropped", "unanswerable");
                None
            }
        }
    }

    /// Whether an answer of `answer_len` bytes to a `request_len`-byte message must not be sent:
    /// on UDP the source address is unproven, so an answer more than `factor` times larger would
    /// make us an amplifier for spoofed traffic. Counted when it is refused.
    pub fn would_amplify(&self, from: &Inbound, answer_len: usize, request_len: usize, factor: usize) -> bool {
        let refused = from.transport == TransportKind::Udp && answer_len > factor * request_len;
        if refused {
            self.metrics.inc("dropped", "answer_larger_than_request");
        }
        refused
    }

}

fn status_label(code: u16) -> &'static str {
    match code {
        200 => "200",
        400 => "400",
        403 => "403",
        404 => "404",
        405 => "405",
        416 => "416",
        420 => "420",
        481 => "481",
        483 => "483",
        501 => "501",
        505 => "505",
        513 => "513",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::parse;
    use crate::message::Framing;

    fn core() -> Core {
        Core::new(&Config::embedded(), Arc::new(Metrics::default()))
    }

    fn inbound() -> Inbound {
        Inbound { transport: TransportKind::Udp, local: "[::1]:5060".parse().unwrap(), remote: "[::1]:40000".parse().unwrap() }
    }

    fn request(method: &str, ruri: &str, extra: &str) -> String {
        format!(
            "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP [::1]:40000;branch=z9hG4bK1;rport\r\nMax-Forwards: 70\r\n\
             From: <sip:a@localhost>;tag=1\r\nTo: <{ruri}>\r\nCall-ID: c1\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
        )
    }

    #[test]
    fn invalid_requests_get_a_400_but_never_an_amplified_one_on_udp() {
        let core = core();
        let bad = request("OPTIONS", "sip:localhost", "").replace("Max-Forwards: 70", "Max-Forwards: 300");
        let err = parse(Bytes::copy_from_slice(bad.as_bytes()), Framing::Datagram).unwrap_err();
        let out = core.on_invalid(bad.as_bytes(), &err, inbound()).unwrap();
        assert!(out.bytes.starts_with(b"SIP/2.0 400 Bad Max-Forwards header"));
        // The bare minimum a 400 can be built from, with a long reason: larger than the request.
        let tiny = "X a:b SIP/2.0\r\nv:c\r\nf:d\r\nt:e\r\ni:f\r\nCSeq:1 X\r\n\r\n";
        let err = MessageError::BadRequestUri("not a valid URI of any scheme we know of");
        assert!(crate::message::response::reject(tiny.as_bytes(), &err).unwrap().len() > 2 * tiny.len());
        assert!(core.on_invalid(tiny.as_bytes(), &err, inbound()).is_none(), "UDP: not sent");
        let tcp = Inbound { transport: TransportKind::Tcp, ..inbound() };
        assert!(core.on_invalid(tiny.as_bytes(), &err, tcp).is_some(), "TCP: the handshake proved the address");
    }
}
