//! The tokio driver of the sans-IO [`Engine`]: the engine's owner task. Transports hand it
//! validated messages over a channel; it feeds them to the engine with the time, drains the
//! outputs (sends on the named socket or TCP flow, starts DNS lookups whose answers come back
//! as inputs), and sleeps until the engine's next deadline. All SIP state lives in the engine,
//! so this loop needs no locks; the engine's counters are copied out for metrics.

use crate::config::{Limits, TransportKind};
use crate::core::Core;
use crate::engine::{Engine, Event, Input, Output, Stats, Transmit};
use crate::message::Message;
use crate::routing::dns::Resolver;
use crate::transport::{tcp, Inbound};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use std::sync::atomic::{AtomicUsize, Ordering};

/// UDP sends waiting for socket buffer space, and how many may wait.
static PENDING_SENDS: AtomicUsize = AtomicUsize::new(0);
const MAX_PENDING_SENDS: usize = 4096;

/// What side work reports back to the owner task.
enum Feedback {
    Resolved(u64, Result<crate::routing::dns::Resolution, crate::routing::dns::DnsError>),
    SendFailed(u64),
}

/// Everything the owner task needs besides the engine.
pub struct Io {
    pub udp: HashMap<SocketAddr, Arc<UdpSocket>>,
    pub tcp_table: Arc<tcp::ConnectionTable>,
    pub core: Arc<Core>,
    pub limits: Limits,
    pub resolver: Option<Resolver>,
    /// Where transports send messages (for connections the driver opens).
    pub to_engine: mpsc::Sender<(Message, Inbound)>,
    /// The engine's counters, refreshed about once a second.
    pub stats: Arc<Mutex<Stats>>,
}

/// Runs the engine until the message channel closes.
pub async fn run(mut engine: Engine, mut messages: mpsc::Receiver<(Message, Inbound)>, io: Io) {
    let (fb_tx, mut feedback) = mpsc::unbounded_channel::<Feedback>();
    engine.start(Instant::now().into_std());
    let mut last_export = Instant::now();
    loop {
        drain(&mut engine, &io, &fb_tx);
        if last_export.elapsed() >= Duration::from_secs(1) {
            if let Ok(mut s) = io.stats.lock() {
                *s = engine.stats.clone();
            }
            last_export = Instant::now();
        }
        let deadline = engine.poll_timeout().map(Instant::from_std);
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            m = messages.recv() => match m {
                Some((msg, from)) => engine.handle(Instant::now().into_std(), Input::Received { msg, from }),
                None => return,
            },
            Some(f) = feedback.recv() => {
                let now = Instant::now().into_std();
                match f {
                    Feedback::Resolved(id, result) => engine.handle(now, Input::Resolved { id, result }),
                    Feedback::SendFailed(client) => engine.handle(now, Input::SendFailed { client }),
                }
            }
            _ = sleep => engine.handle_timeout(Instant::now().into_std()),
        }
    }
}

fn drain(engine: &mut Engine, io: &Io, fb: &mpsc::UnboundedSender<Feedback>) {
    // Everything: outputs only come from inputs and timers, so they are bounded by those.
    while let Some(out) = engine.poll_output() {
        match out {
            Output::Transmit(t) => send(io, t, fb),
            Output::Resolve { id, query } => match &io.resolver {
                Some(r) => {
                    let (r, fb) = (r.clone(), fb.clone());
                    tokio::spawn(async move {
                        let result = r.resolve(&query).await;
                        let _ = fb.send(Feedback::Resolved(id, result));
                    });
                }
                None => {
                    let _ = fb.send(Feedback::Resolved(id, Err(crate::routing::dns::DnsError::Failed("no resolver configured".into()))));
                }
            },
            Output::Event(e) => log_event(&e),
        }
    }
}

fn send(io: &Io, t: Transmit, fb: &mpsc::UnboundedSender<Feedback>) {
    let failed = |reason: &'static str| {
        io.core.metrics.inc("send_failed", reason);
        if let Some(c) = t.client {
            let _ = fb.send(Feedback::SendFailed(c));
        }
    };
    match t.transport {
        TransportKind::Udp => {
            let Some(sock) = io.udp.get(&t.local) else { return failed("no_udp_socket") };
            match sock.try_send_to(&t.bytes, t.dest) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // The socket buffer is full (4 MiB): finish the send off the owner task, a
                    // bounded number at a time; past that the datagram is dropped, as the
                    // network would (retransmissions recover it).
                    if PENDING_SENDS.fetch_add(1, Ordering::Relaxed) >= MAX_PENDING_SENDS {
                        PENDING_SENDS.fetch_sub(1, Ordering::Relaxed);
                        io.core.metrics.inc("dropped", "udp_send_backlog");
                        return;
                    }
                    let (sock, bytes, dest) = (sock.clone(), t.bytes.clone(), t.dest);
                    tokio::spawn(async move {
                        let _ = sock.send_to(&bytes, dest).await;
                        PENDING_SENDS.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                Err(e) => {
                    tracing::debug!(dest = %t.dest, error = %e, "udp send failed");
                    failed("udp_error");
                }
            }
        }
        TransportKind::Tcp => {
            if io.tcp_table.send(t.dest, t.bytes.clone()) {
                return;
            }
            // No flow yet: open one from our listener's address (carriers over TCP).
            let (core, table, limits, engine) = (io.core.clone(), io.tcp_table.clone(), io.limits.clone(), io.to_engine.clone());
            let (fb, client) = (fb.clone(), t.client);
            tokio::spawn(async move {
                if !tcp::connect(t.local, t.dest, t.bytes, core, table, limits, engine).await {
                    if let Some(c) = client {
                        let _ = fb.send(Feedback::SendFailed(c));
                    }
                }
            });
        }
    }
}

fn log_event(e: &Event) {
    match e {
        Event::CallAnswered { call_id, user, carrier, crosses_family } => {
            tracing::info!(%call_id, user = user.as_deref().unwrap_or("-"), carrier = carrier.as_deref().unwrap_or("-"), crosses_family, "call answered")
        }
        Event::CallEnded { call_id, reason } => tracing::info!(%call_id, reason, "call ended"),
        Event::CarrierUp { name } => tracing::info!(carrier = %name, "carrier up"),
        Event::CarrierDown { name } => tracing::warn!(carrier = %name, "carrier down"),
        Event::Refused { status, reason, source } => tracing::debug!(status, reason, %source, "request refused"),
    }
}
