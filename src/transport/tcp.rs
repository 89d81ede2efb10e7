//! SIP over TCP (RFC 3261 §18): a connection table keyed by remote address so responses (and,
//! later, requests towards a registered phone) reuse the flow; per-source and total caps; an idle
//! timeout; framing by Content-Length with CRLF keepalives answered (RFC 5626 §3.5.1).
//!
//! Must never let one peer hold resources without bound: a message that has begun must finish
//! within `tcp_message_timeout_secs` (slowloris), a peer that stops reading is closed when its
//! send queue fills or a write stalls, and a closed connection's writer is aborted after a short
//! flush grace so its socket cannot outlive the table entry.

use super::framing::{Frame, FrameError, StreamFramer};
use super::{source_key, Inbound, PONG};
use crate::config::{Limits, TransportKind};
use crate::core::Core;
use crate::message::{parse, Framing, MessageError};
use bytes::Bytes;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Responses and pongs queued per connection; a peer that lets this fill up is not reading.
const SEND_QUEUE: usize = 64;
/// A write that makes no progress for this long means the peer stopped reading: close.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the reader has ended, how long the writer may take to flush what is queued.
const FLUSH_GRACE: Duration = Duration::from_secs(2);
/// Bytes read per call (on the stack, not kept per idle connection).
const READ_CHUNK: usize = 4096;

/// Open connections: remote address -> the queue of its writer task.
#[derive(Default)]
pub struct ConnectionTable {
    inner: Mutex<TableInner>,
}

#[derive(Default)]
struct TableInner {
    conns: HashMap<SocketAddr, mpsc::Sender<Bytes>>,
    per_source: HashMap<IpAddr, usize>,
}

impl ConnectionTable {
    /// Queues bytes on the connection to `remote`; false when there is none (or it is full).
    pub fn send(&self, remote: SocketAddr, bytes: Bytes) -> bool {
        let tx = self.inner.lock().ok().and_then(|t| t.conns.get(&remote).cloned());
        tx.is_some_and(|tx| tx.try_send(bytes).is_ok())
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|t| t.conns.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Admits a new connection within the caps, or says which cap refused it.
    fn admit(&self, remote: SocketAddr, tx: mpsc::Sender<Bytes>, limits: &Limits) -> Result<(), &'static str> {
        let mut t = self.inner.lock().map_err(|_| "table poisoned")?;
        if t.conns.len() >= limits.max_tcp_connections {
            return Err("tcp_total_cap");
        }
        if t.conns.contains_key(&remote) {
            // The same remote ip:port on a second listener: the table is keyed by remote
            // address (responses must find the flow), so one entry per remote.
            return Err("tcp_duplicate_flow");
        }
        let key = source_key(remote.ip());
        let n = t.per_source.get(&key).copied().unwrap_or(0);
        if n >= limits.max_tcp_connections_per_source {
            return Err("tcp_per_source_cap");
        }
        t.per_source.insert(key, n + 1);
        t.conns.insert(remote, tx);
        Ok(())
    }

    fn remove(&self, remote: SocketAddr) {
        if let Ok(mut t) = self.inner.lock() {
            if t.conns.remove(&remote).is_some() {
                let key = source_key(remote.ip());
                if let Some(n) = t.per_source.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        t.per_source.remove(&key);
                    }
                }
            }
        }
    }
}

/// Accepts connections until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    local: SocketAddr,
    core: Arc<Core>,
    table: Arc<ConnectionTable>,
    limits: Limits,
    engine: mpsc::Sender<super::Delivery>,
) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(%local, error = %e, "tcp accept failed");
                core.metrics.inc("tcp", "accept_error");
                // EMFILE and friends: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (tx, rx) = mpsc::channel::<Bytes>(SEND_QUEUE);
        if let Err(cap) = table.admit(remote, tx.clone(), &limits) {
            tracing::info!(%remote, cap, "tcp connection refused");
            core.metrics.inc("dropped", cap);
            drop(stream);
            continue;
        }
        let from = Inbound { transport: TransportKind::Tcp, local, remote };
        spawn_connection(stream, from, core.clone(), table.clone(), limits.clone(), engine.clone(), tx, rx);
    }
}

/// Runs an admitted connection until it ends, then takes it out of the table.
#[allow(clippy::too_many_arguments)]
fn spawn_connection(
    stream: TcpStream,
    from: Inbound,
    core: Arc<Core>,
    table: Arc<ConnectionTable>,
    limits: Limits,
    engine: mpsc::Sender<super::Delivery>,
    tx: mpsc::Sender<Bytes>,
    rx: mpsc::Receiver<Bytes>,
) {
    let _ = stream.set_nodelay(true);
    tokio::spawn(async move {
        let mut writer = connection(stream, from, core, tx, rx, &limits, engine.clone()).await;
        table.remove(from.remote);
        // The registrar forgets the bindings of a closed flow (RFC 5626 §5.3: requests to it
        // would fail).
        let _ = engine.send(super::Delivery::Closed(from)).await; // drops the last sender: the writer flushes what is queued and ends
        if tokio::time::timeout(FLUSH_GRACE, &mut writer).await.is_err() {
            writer.abort(); // a peer that does not read: its socket closes with the task
        }
    });
}

/// How long an outbound connection may take to establish.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a connection from our listener `local` (its address, any port) to `remote`, sends
/// `first` on it and serves it like an accepted one (responses and later requests reuse it).
/// Returns false when it could not be opened or admitted.
pub async fn connect(
    local: SocketAddr,
    remote: SocketAddr,
    first: Bytes,
    core: Arc<Core>,
    table: Arc<ConnectionTable>,
    limits: Limits,
    engine: mpsc::Sender<super::Delivery>,
) -> bool {
    let sock = match if remote.is_ipv6() { tokio::net::TcpSocket::new_v6() } else { tokio::net::TcpSocket::new_v4() } {
        Ok(s) => s,
        Err(_) => return false,
    };
    if !local.ip().is_unspecified() && sock.bind(SocketAddr::new(local.ip(), 0)).is_err() {
        return false;
    }
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(remote)).await {
        Ok(Ok(s)) => s,
        _ => {
            core.metrics.inc("tcp", "connect_failed");
            return false;
        }
    };
    let (tx, rx) = mpsc::channel::<Bytes>(SEND_QUEUE);
    if table.admit(remote, tx.clone(), &limits).is_err() {
        // Another flow to the same remote won the race: use it.
        return table.send(remote, first);
    }
    let _ = tx.try_send(first);
    let from = Inbound { transport: TransportKind::Tcp, local, remote };
    spawn_connection(stream, from, core, table, limits, engine, tx, rx);
    true
}

async fn connection(
    stream: TcpStream,
    from: Inbound,
    core: Arc<Core>,
    tx: mpsc::Sender<Bytes>,
    mut rx: mpsc::Receiver<Bytes>,
    limits: &Limits,
    engine: mpsc::Sender<super::Delivery>,
) -> tokio::task::JoinHandle<()> {
    let (rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if !matches!(tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&b)).await, Ok(Ok(()))) {
                break; // error, or a peer that stopped reading
            }
        }
        let _ = tokio::time::timeout(WRITE_TIMEOUT, wr.shutdown()).await;
    });
    // Queues an answer; false when the peer is not draining its queue (or the writer gave up).
    let queue = |bytes: Bytes| {
        let ok = tx.try_send(bytes).is_ok();
        if !ok {
            core.metrics.inc("tcp", "send_queue_full");
        }
        ok
    };
    let idle = Duration::from_secs(limits.tcp_idle_timeout_secs);
    let message_timeout = Duration::from_secs(limits.tcp_message_timeout_secs);
    let mut framer = StreamFramer::new(limits.max_message_bytes);
    // When the first byte of the message still being received arrived.
    let mut partial_since: Option<Instant> = None;
    'read: loop {
        let wait = partial_since.map_or(idle, |t| message_timeout.saturating_sub(t.elapsed()).min(idle));
        match tokio::time::timeout(wait, rd.readable()).await {
            Err(_) => {
                let slow = partial_since.is_some_and(|t| t.elapsed() >= message_timeout);
                core.metrics.inc("tcp", if slow { "message_timeout" } else { "idle_timeout" });
                break;
            }
            Ok(Err(_)) => break,
            Ok(Ok(())) => {}
        }
        let mut chunk = [0u8; READ_CHUNK];
        match rd.try_read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => framer.push(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => break,
        }
        let mut framed = false;
        loop {
            match framer.next_frame() {
                Ok(None) => break,
                Ok(Some(Frame::Ping)) => {
                    framed = true;
                    core.metrics.inc("keepalive", "tcp_ping");
                    if !queue(Bytes::from_static(PONG)) {
                        break 'read;
                    }
                }
                Ok(Some(Frame::Message(bytes))) => {
                    framed = true;
                    let reply = match parse(bytes.clone(), Framing::Stream) {
                        Ok(msg) => {
                            // TCP has no retransmissions: wait for room rather than drop (the
                            // peer's window fills and it slows down).
                            if engine.send(super::Delivery::Message(msg, from)).await.is_err() {
                                break 'read; // the engine is gone: shutting down
                            }
                            None
                        }
                        Err(e) => core.on_invalid(&bytes, &e, from),
                    };
                    if let Some(out) = reply {
                        if !queue(out.bytes) {
                            break 'read;
                        }
                    }
                }
                Err(e) => {
                    // The stream is out of step: answer what can be answered, then close.
                    let err = match e {
                        FrameError::TooLarge(_) => MessageError::TooLarge,
                        FrameError::MissingContentLength => MessageError::MissingContentLength,
                        FrameError::BadContentLength => MessageError::BadContentLength("not a number in range"),
                    };
                    if let Some(out) = core.on_invalid(framer.head(), &err, from) {
                        queue(out.bytes);
                    }
                    break 'read;
                }
            }
        }
        partial_since = match (framer.pending(), partial_since) {
            (0, _) => None,
            (_, Some(t)) if !framed => Some(t),
            _ => Some(Instant::now()),
        };
    }
    writer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_source: usize) -> Limits {
        Limits {
            max_message_bytes: 65535,
            max_tcp_connections: 100,
            max_tcp_connections_per_source: per_source,
            tcp_idle_timeout_secs: 600,
            tcp_message_timeout_secs: 30,
            ..Limits::default()
        }
    }

    #[test]
    fn ipv6_sources_are_counted_per_64() {
        let t = ConnectionTable::default();
        let l = limits(2);
        let (tx, _rx) = mpsc::channel(1);
        let a: SocketAddr = "[2001:db8:1:2::10]:5000".parse().unwrap();
        let b: SocketAddr = "[2001:db8:1:2:ffff::99]:5000".parse().unwrap();
        let c: SocketAddr = "[2001:db8:1:2:abcd::1]:5000".parse().unwrap();
        let other: SocketAddr = "[2001:db8:1:3::10]:5000".parse().unwrap();
        assert!(t.admit(a, tx.clone(), &l).is_ok());
        assert!(t.admit(b, tx.clone(), &l).is_ok());
        assert_eq!(t.admit(c, tx.clone(), &l), Err("tcp_per_source_cap"), "same /64");
        assert!(t.admit(other, tx.clone(), &l).is_ok(), "another /64");
        t.remove(a);
        assert!(t.admit(c, tx, &l).is_ok(), "a slot of the /64 came free");
    }

    #[test]
    fn a_second_flow_from_the_same_remote_is_refused_and_counts_stay_right() {
        let t = ConnectionTable::default();
        let l = limits(2);
        let (tx, _rx) = mpsc::channel(1);
        let a: SocketAddr = "192.0.2.7:5060".parse().unwrap();
        assert!(t.admit(a, tx.clone(), &l).is_ok());
        assert_eq!(t.admit(a, tx.clone(), &l), Err("tcp_duplicate_flow"));
        t.remove(a);
        t.remove(a);
        assert!(t.is_empty());
        // The per-source count went back to zero: two new flows fit again.
        assert!(t.admit("192.0.2.7:5061".parse().unwrap(), tx.clone(), &l).is_ok());
        assert!(t.admit("192.0.2.7:5062".parse().unwrap(), tx, &l).is_ok());
    }
}
