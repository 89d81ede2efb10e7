//! SIP over UDP (RFC 3261 §18), with STUN (RFC 5389) and CRLF keepalives (RFC 5626 §3.5.1) told
//! apart by their first bytes on the same port.

use super::{stun, Inbound, PING, PONG};
use crate::config::TransportKind;
use crate::core::{Core, Outbound};
use crate::message::{parse, Framing, MessageError};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::UdpSocket;

/// Largest UDP payload; one more byte of buffer tells "exactly at the limit" from "over".
const RECV_BUFFER: usize = 65536;

/// What to do with one datagram. Sans-IO, so it is unit-testable and fuzzable.
pub fn handle_datagram(core: &Core, data: &[u8], from: Inbound, max_message: usize) -> Option<Outbound> {
    if data.is_empty() {
        return None;
    }
    if stun::is_stun(data) {
        return match stun::answer(data, from.remote) {
            Ok(bytes) => {
                core.metrics.inc("stun", "binding");
                Some(Outbound { dest: from.remote, bytes: Bytes::from(bytes) })
            }
            Err(_) => {
                core.metrics.inc("dropped", "stun_not_binding_request");
                None
            }
        };
    }
    if data.iter().all(|&b| b == b'\r' || b == b'\n') {
        if data.starts_with(PING) {
            core.metrics.inc("keepalive", "udp_ping");
            return Some(Outbound { dest: from.remote, bytes: Bytes::from_static(PONG) });
        }
        core.metrics.inc("dropped", "stray_crlf");
        return None;
    }
    if data.len() > max_message {
        return core.on_invalid(data, &MessageError::TooLarge, from);
    }
    match parse(Bytes::copy_from_slice(data), Framing::Datagram) {
        Ok(msg) => core.on_message(msg, from),
        Err(e) => core.on_invalid(data, &e, from),
    }
}

/// Serves one UDP socket until the task is dropped.
pub async fn serve(sock: Arc<UdpSocket>, local: SocketAddr, core: Arc<Core>, max_message: usize) {
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
        if let Some(out) = handle_datagram(&core, &buf[..n], from, max_message) {
            if let Err(e) = sock.send_to(&out.bytes, out.dest).await {
                tracing::debug!(%local, dest = %out.dest, error = %e, "udp send failed");
                core.metrics.inc("udp", "send_error");
            }
        }
    }
}
