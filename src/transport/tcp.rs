//! SIP over TCP (RFC 3261 §18): a connection table keyed by remote address so responses (and,
//! later, requests towards a registered phone) reuse the flow; per-source and total caps; an idle
//! timeout; framing by Content-Length with CRLF keepalives answered (RFC 5626 §3.5.1).

use super::framing::{Frame, FrameError, StreamFramer};
use super::{Inbound, PONG};
use crate::config::{Limits, TransportKind};
use crate::core::Core;
use crate::message::{parse, Framing, MessageError};
use bytes::Bytes;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

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
        let n = t.per_source.get(&remote.ip()).copied().unwrap_or(0);
        if n >= limits.max_tcp_connections_per_source {
            return Err("tcp_per_source_cap");
        }
        t.per_source.insert(remote.ip(), n + 1);
        t.conns.insert(remote, tx);
        Ok(())
    }

    fn remove(&self, remote: SocketAddr) {
        if let Ok(mut t) = self.inner.lock() {
            if t.conns.remove(&remote).is_some() {
                if let Some(n) = t.per_source.get_mut(&remote.ip()) {
                    *n -= 1;
                    if *n == 0 {
                        t.per_source.remove(&remote.ip());
                    }
                }
            }
        }
    }
}

/// Accepts connections until the task is dropped.
pub async fn serve(listener: TcpListener, local: SocketAddr, core: Arc<Core>, table: Arc<ConnectionTable>, limits: Limits) {
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
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        if let Err(cap) = table.admit(remote, tx.clone(), &limits) {
            tracing::info!(%remote, cap, "tcp connection refused");
            core.metrics.inc("dropped", cap);
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let from = Inbound { transport: TransportKind::Tcp, local, remote };
        let (core, table, limits) = (core.clone(), table.clone(), limits.clone());
        tokio::spawn(async move {
            let writer = connection(stream, from, core, tx, rx, &limits).await;
            table.remove(remote); // drops the last sender: the writer flushes what is queued and ends
            let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
        });
    }
}

async fn connection(
    stream: TcpStream,
    from: Inbound,
    core: Arc<Core>,
    tx: mpsc::Sender<Bytes>,
    mut rx: mpsc::Receiver<Bytes>,
    limits: &Limits,
) -> tokio::task::JoinHandle<()> {
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let idle = Duration::from_secs(limits.tcp_idle_timeout_secs);
    let mut framer = StreamFramer::new(limits.max_message_bytes);
    let mut chunk = vec![0u8; 16384];
    'read: loop {
        let n = match tokio::time::timeout(idle, rd.read(&mut chunk)).await {
            Err(_) => {
                core.metrics.inc("tcp", "idle_timeout");
                break;
            }
            Ok(Err(_)) | Ok(Ok(0)) => break,
            Ok(Ok(n)) => n,
        };
        framer.push(&chunk[..n]);
        loop {
            match framer.next_frame() {
                Ok(None) => break,
                Ok(Some(Frame::Ping)) => {
                    core.metrics.inc("keepalive", "tcp_ping");
                    let _ = tx.send(Bytes::from_static(PONG)).await;
                }
                Ok(Some(Frame::Message(bytes))) => {
                    let reply = match parse(bytes.clone(), Framing::Stream) {
                        Ok(msg) => core.on_message(msg, from),
                        Err(e) => core.on_invalid(&bytes, &e, from),
                    };
                    if let Some(out) = reply {
                        let _ = tx.send(out.bytes).await;
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
                        let _ = tx.send(out.bytes).await;
                    }
                    break 'read;
                }
            }
        }
    }
    writer
}
