//! SIP over UDP (RFC 3261 §18), with STUN (RFC 5389) and CRLF keepalives (RFC 5626 §3.5.1) told
//! apart by their first bytes on the same port.

use super::{stun, Inbound, PING, PONG};
use crate::config::TransportKind;
use crate::core::{Core, Outbound};
use crate::message::{parse, Framing, Message, MessageError};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// What one datagram turned into.
// Moved once to the engine channel; boxing the message would add an allocation per datagram.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Datagram {
    /// Answered here (STUN, keepalive pong, a refusal of invalid bytes).
    Answer(Outbound),
    /// A validated message for the engine.
    Message(Message),
    /// Nothing to do (counted).
    Nothing,
}

/// Largest UDP payload; one more byte of buffer tells "exactly at the limit" from "over".
const RECV_BUFFER: usize = 65536;

/// How much larger than the datagram it answers an answer on UDP may be. The source address of
/// a datagram is unproven, so a larger ratio would make the SIP port an amplifier for spoofed
/// traffic. Our largest ratios: STUN's IPv6 answer to a bare 20-byte Binding request (2.8×) and
/// a 200 to a minimal compact OPTIONS (2.05×, see the test below). An invalid request's 400 is
/// held to 2× (`Core::on_invalid`).
pub const MAX_UDP_AMPLIFICATION: usize = 3;

/// What to do with one datagram. Sans-IO, so it is unit-testable and fuzzable.
pub fn handle_datagram(core: &Core, data: &[u8], from: Inbound, max_message: usize) -> Datagram {
    match classify(core, data, from, max_message) {
        Datagram::Answer(out) if core.would_amplify(&from, out.bytes.len(), data.len(), MAX_UDP_AMPLIFICATION) => Datagram::Nothing,
        d => d,
    }
}

/// What one datagram is, before the amplification guard.
fn classify(core: &Core, data: &[u8], from: Inbound, max_message: usize) -> Datagram {
    let answer = |out: Option<Outbound>| out.map_or(Datagram::Nothing, Datagram::Answer);
    if data.is_empty() {
        return Datagram::Nothing;
    }
    if stun::is_stun(data) {
        return answer(match stun::answer(data, from.remote) {
            Ok(bytes) => {
                core.metrics.inc("stun", "binding");
                Some(Outbound { dest: from.remote, bytes: Bytes::from(bytes) })
            }
            Err(_) => {
                core.metrics.inc("dropped", "stun_not_binding_request");
                None
            }
        });
    }
    if data.iter().all(|&b| b == b'\r' || b == b'\n') {
        if data.starts_with(PING) {
            core.metrics.inc("keepalive", "udp_ping");
            return Datagram::Answer(Outbound { dest: from.remote, bytes: Bytes::from_static(PONG) });
        }
        core.metrics.inc("dropped", "stray_crlf");
        return Datagram::Nothing;
    }
    if data.len() > max_message {
        return answer(core.on_invalid(data, &MessageError::TooLarge, from));
    }
    match parse(Bytes::copy_from_slice(data), Framing::Datagram) {
        Ok(msg) => Datagram::Message(msg),
        Err(e) => answer(core.on_invalid(data, &e, from)),
    }
}

/// Serves one UDP socket until the task is dropped: answers what the edge answers, hands
/// validated messages to the engine.
pub async fn serve(sock: Arc<UdpSocket>, local: SocketAddr, core: Arc<Core>, max_message: usize, engine: mpsc::Sender<super::Delivery>) {
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        let (n, remote) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors from earlier sends surface here (ECONNREFUSED); keep serving.
                tracing::debug!(%local, error = %e, "udp receive error");
                core.metrics.inc("udp", "receive_error");
                continue;
            }
        };
        let from = Inbound { transport: TransportKind::Udp, local, remote };
        match handle_datagram(&core, &buf[..n], from, max_message) {
            Datagram::Answer(out) => {
                if let Err(e) = sock.send_to(&out.bytes, out.dest).await {
                    tracing::debug!(%local, dest = %out.dest, error = %e, "udp send failed");
                    core.metrics.inc("udp", "send_error");
                }
            }
            Datagram::Message(msg) => {
                // A full queue means the engine is overloaded: shed load here, counted.
                if engine.try_send(super::Delivery::Message(msg, from)).is_err() {
                    core.metrics.inc("dropped", "engine_queue_full");
                }
            }
            Datagram::Nothing => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;

    #[test]
    fn answers_to_minimal_requests_stay_within_the_amplification_bound() {
        let core = Core::new(&Config::embedded(), Arc::new(Metrics::default()));
        let from = Inbound { transport: TransportKind::Udp, local: "[::1]:5060".parse().unwrap(), remote: "[2001:db8::1]:4000".parse().unwrap() };
        let minimal: &[&[u8]] = &[
            // A bare STUN Binding request from an IPv6 client.
            &[0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
        ];
        for req in minimal {
            let Datagram::Answer(out) = classify(&core, req, from, 65535) else { panic!("answered here") };
            let ratio = out.bytes.len() as f64 / req.len() as f64;
            eprintln!("{} -> {} bytes ({ratio:.2}x)", req.len(), out.bytes.len());
            assert!(out.bytes.len() <= MAX_UDP_AMPLIFICATION * req.len(), "ratio {ratio:.2} for {:?}", String::from_utf8_lossy(req));
            assert!(matches!(handle_datagram(&core, req, from, 65535), Datagram::Answer(_)));
        }
    }
}
