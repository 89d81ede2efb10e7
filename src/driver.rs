//! The tokio driver of the sans-IO [`Engine`]: the engine's owner task. Transports hand it
//! validated messages over a channel; it feeds them to the engine with the time, drains the
//! outputs (sends on the named socket or TCP flow, starts DNS lookups whose answers come back
//! as inputs), asks the RTP relay for sessions (a quick control-path call, answered at once as
//! an input), and sleeps until the engine's next deadline. All SIP state lives in the engine,
//! so this loop needs no locks; the engine's counters are copied out for metrics.

use crate::config::{Limits, TransportKind};
use crate::core::Core;
use crate::engine::{Engine, Event, Input, MediaOp, Output, Stats, Transmit};
use crate::registrar::store::BindingStore;
use crate::registrar::Change;
use crate::routing::dns::Resolver;
use crate::transport::{tcp, Delivery};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What side work reports back to the owner task.
enum Feedback {
    Resolved(u64, Result<crate::routing::dns::Resolution, crate::routing::dns::DnsError>),
    SendFailed(u64),
    Stored(u64, bool),
    MediaTimeout(sixgate_relay::SessionId, sixgate_relay::LegId),
    MediaStats(Vec<(sixgate_relay::SessionId, sixgate_relay::SessionStats)>),
    MediaClosed(sixgate_relay::SessionId, Box<sixgate_relay::SessionStats>),
    MediaFirstPacket(sixgate_relay::SessionId, sixgate_relay::LegId, SocketAddr),
}

/// Where the relay's event thread hands the events the engine acts on.
#[derive(Clone)]
pub struct MediaSink(mpsc::UnboundedSender<Feedback>);

impl MediaSink {
    pub fn media_timeout(&self, session: sixgate_relay::SessionId, leg: sixgate_relay::LegId) {
        let _ = self.0.send(Feedback::MediaTimeout(session, leg));
    }

    /// A leg's first accepted packet (for `sixgate ctl diagnose`).
    pub fn first_packet(&self, session: sixgate_relay::SessionId, leg: sixgate_relay::LegId, from: SocketAddr) {
        let _ = self.0.send(Feedback::MediaFirstPacket(session, leg, from));
    }

    /// A session's final statistics (for its call record).
    pub fn closed(&self, session: sixgate_relay::SessionId, stats: sixgate_relay::SessionStats) {
        let _ = self.0.send(Feedback::MediaClosed(session, Box::new(stats)));
    }
}

/// One UDP socket's sending side. Datagrams go out at once while the socket buffer has room;
/// once it is full they wait, in order, in a queue a writer task drains — and every later
/// datagram joins the queue behind them, so nothing overtakes (a 200 never before its 180).
pub struct UdpOut {
    sock: Arc<UdpSocket>,
    queue: mpsc::Sender<(Bytes, SocketAddr)>,
    queued: Arc<AtomicUsize>,
}

/// Datagrams that may wait for one socket; past that they are dropped, as a congested network
/// would (retransmissions recover them), and counted.
const UDP_QUEUE: usize = 4096;

impl UdpOut {
    /// Must be called inside the tokio runtime (it starts the writer task).
    pub fn new(sock: Arc<UdpSocket>) -> UdpOut {
        let (queue, mut rx) = mpsc::channel::<(Bytes, SocketAddr)>(UDP_QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        let (s, q) = (sock.clone(), queued.clone());
        tokio::spawn(async move {
            while let Some((bytes, dest)) = rx.recv().await {
                let _ = s.send_to(&bytes, dest).await;
                q.fetch_sub(1, Ordering::AcqRel);
            }
        });
        UdpOut { sock, queue, queued }
    }

    /// Sends or queues; `Err` for a send error other than a full buffer, or a full queue.
    fn send(&self, bytes: Bytes, dest: SocketAddr) -> Result<(), &'static str> {
        if self.queued.load(Ordering::Acquire) == 0 {
            match self.sock.try_send_to(&bytes, dest) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::debug!(%dest, error = %e, "udp send failed");
                    return Err("udp_error");
                }
            }
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        if self.queue.try_send((bytes, dest)).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err("udp_send_backlog");
        }
        Ok(())
    }
}

/// Everything the owner task needs besides the engine.
pub struct Io {
    pub udp: HashMap<SocketAddr, UdpOut>,
    pub tcp_table: Arc<tcp::ConnectionTable>,
    pub core: Arc<Core>,
    pub limits: Limits,
    pub resolver: Option<Resolver>,
    /// Where transports send messages (for connections the driver opens).
    pub to_engine: mpsc::Sender<Delivery>,
    /// The engine's counters, refreshed about once a second.
    pub stats: Arc<Mutex<Stats>>,
    /// The store thread's queue (see [`spawn_store`]).
    pub store: std::sync::mpsc::Sender<(u64, Vec<Change>)>,
    /// The RTP relay, unless media is never relayed.
    pub relay: Option<Arc<sixgate_relay::Relay>>,
    /// The call record writer's queue (see [`spawn_records`]), unless records are off.
    pub records: Option<std::sync::mpsc::Sender<String>>,
    /// The config in force, and the file it came from (`None`: the embedded defaults, which
    /// cannot be reloaded).
    pub config: crate::config::Config,
    pub config_file: Option<std::path::PathBuf>,
}

/// Appends call records (one JSON line each) to `path` on their own thread: every line queued
/// when a write starts goes in one `write`, and the file is opened for each batch, so a log
/// rotation that moves it needs no signal. Failures are logged and counted.
pub fn spawn_records(path: std::path::PathBuf, counters: Arc<StoreCounters>) -> std::sync::mpsc::Sender<String> {
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let spawned = std::thread::Builder::new().name("sixgate-records".into()).spawn(move || {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        while let Ok(first) = rx.recv() {
            let mut text = first;
            text.push('\n');
            // Bounded by what is queued right now.
            for line in rx.try_iter().take(10_000) {
                text.push_str(&line);
                text.push('\n');
            }
            let written = std::fs::OpenOptions::new().create(true).append(true).mode(0o640).open(&path).and_then(|mut f| f.write_all(text.as_bytes()));
            if let Err(e) = written {
                tracing::error!(file = %path.display(), error = %e, "cannot write call records");
                counters.record_failures.fetch_add(text.lines().count() as u64, Ordering::Relaxed);
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the call record thread");
    }
    tx
}

/// Store commits done and binding changes in them (their ratio is the grouping under load).
#[derive(Default)]
pub struct StoreCounters {
    pub commits: std::sync::atomic::AtomicU64,
    pub changes: std::sync::atomic::AtomicU64,
    pub failures: std::sync::atomic::AtomicU64,
    /// Call record lines that could not be written.
    pub record_failures: std::sync::atomic::AtomicU64,
}

/// Runs the binding store on its own thread (its commits block on fsync). Every request waiting
/// when a commit starts joins it: under load many REGISTERs share one fsync. Each request's
/// outcome goes back to the engine as [`crate::engine::Input::Stored`].
fn spawn_store(
    mut store: Box<dyn BindingStore>,
    counters: Arc<StoreCounters>,
    done: mpsc::UnboundedSender<Feedback>,
) -> std::sync::mpsc::Sender<(u64, Vec<Change>)> {
    let (tx, rx) = std::sync::mpsc::channel::<(u64, Vec<Change>)>();
    std::thread::Builder::new()
        .name("sixgate-store".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut ids = vec![first.0];
                let mut changes = first.1;
                // Bounded by what is queued right now (a few thousand under heavy load).
                while let Ok((id, more)) = rx.try_recv() {
                    ids.push(id);
                    changes.extend(more);
                    if ids.len() >= 10_000 {
                        break;
                    }
                }
                // Answers that change nothing only wait for the commits queued before them.
                let ok = changes.is_empty() || match store.commit(&changes) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!(error = %e, "registration store commit failed");
                        counters.failures.fetch_add(1, Ordering::Relaxed);
                        false
                    }
                };
                counters.commits.fetch_add(u64::from(!changes.is_empty()), Ordering::Relaxed);
                counters.changes.fetch_add(changes.len() as u64, Ordering::Relaxed);
                for id in ids {
                    let _ = done.send(Feedback::Stored(id, ok));
                }
            }
        })
        .map(|_| ())
        .unwrap_or_else(|e| tracing::error!(error = %e, "cannot start the store thread"));
    tx
}

/// The parts of [`Io`] the driver makes itself.
pub struct Started {
    feedback: (mpsc::UnboundedSender<Feedback>, mpsc::UnboundedReceiver<Feedback>),
}

impl Started {
    /// A sink for the relay's events (media timeouts) into the engine.
    pub fn media_sink(&self) -> MediaSink {
        MediaSink(self.feedback.0.clone())
    }
}

/// Starts the store thread; returns its queue for [`Io::store`] and what [`run`] needs.
pub fn start_store(store: Box<dyn BindingStore>, counters: Arc<StoreCounters>) -> (std::sync::mpsc::Sender<(u64, Vec<Change>)>, Started) {
    let (fb_tx, fb_rx) = mpsc::unbounded_channel::<Feedback>();
    let tx = spawn_store(store, counters, fb_tx.clone());
    (tx, Started { feedback: (fb_tx, fb_rx) })
}

/// Messages taken from the transports' channel per wake-up of the owner task.
const BATCH: usize = 64;

/// Runs the engine until the message channel closes.
pub async fn run(mut engine: Engine, mut messages: mpsc::Receiver<Delivery>, mut io: Io, started: Started, mut ctl: mpsc::Receiver<crate::ctl::Ask>) {
    let (fb_tx, mut feedback) = started.feedback;
    engine.start(Instant::now().into_std());
    let mut last_export = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        drain(&mut engine, &io, &fb_tx);
        if last_export.elapsed() >= Duration::from_secs(1) {
            if let Ok(mut s) = io.stats.lock() {
                *s = engine.stats.clone();
                let (bindings, flows) = engine.registrar().sizes();
                (s.bindings, s.flows) = (bindings as u64, flows as u64);
                s.active_calls.clear();
                let family = |l: &crate::engine::dialog::Leg| if l.remote.is_ipv6() { "ipv6" } else { "ipv4" };
                for d in engine.dialogs().filter(|d| !d.early) {
                    *s.active_calls.entry((family(&d.caller), family(&d.callee))).or_insert(0) += 1;
                }
            }
            last_export = Instant::now();
        }
        // Wake at least once a second, so the exported counters (metrics, `ctl stats`) stay
        // fresh while nothing happens (a call on hold sends no signaling for minutes).
        let export_due = last_export + Duration::from_secs(1);
        let deadline = Some(engine.poll_timeout().map_or(export_due, |d| Instant::from_std(d).min(export_due)));
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            n = messages.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    return;
                }
                // Everything queued at this moment, with one clock reading: under load the
                // owner task wakes once per batch, not once per datagram.
                let now = Instant::now().into_std();
                for d in batch.drain(..) {
                    match d {
                        Delivery::Message(msg, from) => engine.handle(now, Input::Received { msg, from }),
                        Delivery::Closed(f) => engine.handle(now, Input::FlowClosed { transport: f.transport, local: f.local, remote: f.remote }),
                    }
                }
            }
            Some(f) = feedback.recv() => {
                let now = Instant::now().into_std();
                match f {
                    Feedback::Resolved(id, result) => engine.handle(now, Input::Resolved { id, result }),
                    Feedback::SendFailed(client) => engine.handle(now, Input::SendFailed { client }),
                    Feedback::Stored(id, ok) => engine.handle(now, Input::Stored { id, ok }),
                    Feedback::MediaTimeout(session, leg) => engine.handle(now, Input::MediaTimeout { session, leg }),
                    Feedback::MediaStats(stats) => engine.handle(now, Input::MediaStats { stats }),
                    Feedback::MediaFirstPacket(session, leg, from) => engine.handle(now, Input::MediaFirstPacket { session, leg, from }),
                    Feedback::MediaClosed(session, stats) => engine.handle(now, Input::MediaClosed { session, stats: *stats }),
                }
            }
            // `sixgate ctl`: a snapshot of the tables, taken between two inputs.
            Some(ask) = ctl.recv() => {
                let now = Instant::now().into_std();
                let reply = match ask.request {
                    crate::ctl::Request::Reload { file, config } => reload(&mut engine, &mut io, now, file, config),
                    _ => crate::ctl::snapshot(&engine, now, &ask.request),
                };
                let _ = ask.reply.send(reply);
            }
            _ = sleep => engine.handle_timeout(Instant::now().into_std()),
        }
    }
}

/// Re-reads the config file and applies it (`sixgate ctl reload`, SIGHUP); a bad file changes
/// nothing and the answer names every problem.
fn reload(engine: &mut Engine, io: &mut Io, now: std::time::Instant, named: Option<String>, text: Option<String>) -> crate::ctl::Reply {
    use crate::ctl::Reply;
    let file = match (&text, named, &io.config_file) {
        (Some(_), Some(f), _) => std::path::PathBuf::from(f),
        (Some(_), None, _) => std::path::PathBuf::from("(config handed over)"),
        (None, _, Some(f)) => f.clone(),
        (None, _, None) => return Reply::Error { error: "sixgate runs on its embedded defaults (started without -c FILE): there is no file to reload".into() },
    };
    let parsed = match &text {
        Some(t) => crate::config::Config::from_toml(t),
        None => crate::config::Config::from_file(&file),
    };
    let new = match parsed {
        Ok(c) => c,
        Err(errs) => {
            let list: Vec<String> = errs.0.iter().map(|i| format!("  {i}")).collect();
            tracing::error!(file = %file.display(), problems = errs.0.len(), "reload refused: the file is invalid; the running config stays");
            return Reply::Error { error: format!("{}: invalid configuration, not reloaded (the running config stays):\n{}", file.display(), list.join("\n")) };
        }
    };
    // The engine sees the ports actually bound, as at start.
    let mut new = new;
    if new.listen.len() == io.config.listen.len() && new.listen.iter().zip(&io.config.listen).all(|(n, o)| n.transport == o.transport && n.addr.ip() == o.addr.ip() && (n.addr.port() == 0 || n.addr.port() == o.addr.port())) {
        new.listen = io.config.listen.clone();
    }
    let r = engine.reconfigure(now, &io.config, &new);
    tracing::info!(file = %file.display(), applied = ?r.applied, restart_needed = ?r.restart_needed, "config reloaded");
    io.limits = new.limits.clone();
    io.config = crate::engine::in_force(&io.config, &new);
    Reply::Reloaded { file: file.display().to_string(), applied: r.applied, restart_needed: r.restart_needed }
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
            Output::Store { id, changes } => {
                if io.store.send((id, changes)).is_err() {
                    let _ = fb.send(Feedback::Stored(id, false));
                }
            }
            Output::Media { op: MediaOp::Stats(sessions), .. } => {
                // Every session's engine thread is asked first, then the answers collected off
                // the engine's task: one round trip for all calls.
                if let Some(relay) = &io.relay {
                    let tickets: Vec<_> = sessions.into_iter().filter_map(|id| relay.stats(id).ok().map(|t| (id, t))).collect();
                    let fb = fb.clone();
                    tokio::task::spawn_blocking(move || {
                        let stats = tickets.into_iter().filter_map(|(id, t)| t.wait(Duration::from_secs(1)).ok().map(|s| (id, s))).collect();
                        let _ = fb.send(Feedback::MediaStats(stats));
                    });
                }
            }
            Output::Event(Event::CallRecord(record)) => {
                if let Some(records) = &io.records {
                    match serde_json::to_string(&record) {
                        Ok(line) => {
                            let _ = records.send(line);
                        }
                        Err(e) => tracing::error!(error = %e, "call record not serialisable"),
                    }
                }
            }
            Output::Media { id, op } => {
                // Control-path calls (a short lock, a bind, a queue push): answered in place.
                if let Some(result) = media(io.relay.as_deref(), op) {
                    engine.handle(Instant::now().into_std(), Input::Media { id, result });
                }
            }
            Output::Event(e) => log_event(&e),
        }
    }
}

/// Carries out one relay request; the result of a [`MediaOp::Create`].
fn media(relay: Option<&sixgate_relay::Relay>, op: MediaOp) -> Option<Result<Vec<sixgate_relay::SessionInfo>, String>> {
    let Some(relay) = relay else {
        return matches!(op, MediaOp::Create(_)).then(|| Err("no media relay is running ([media] relay = \"never\")".to_string()));
    };
    match op {
        MediaOp::Create(specs) => {
            let mut made = Vec::with_capacity(specs.len());
            for spec in specs {
                match relay.create_session(spec) {
                    Ok(info) => made.push(info),
                    Err(e) => {
                        // All or none: the call cannot use half its streams.
                        for info in made {
                            let _ = relay.delete_session(info.id);
                        }
                        return Some(Err(e.to_string()));
                    }
                }
            }
            Some(Ok(made))
        }
        MediaOp::Update(u) => {
            if let Err(e) = relay.update_peer(u.session, u.leg, u.peer) {
                tracing::debug!(session = u.session.0, error = %e, "relay peer update failed");
            }
            None
        }
        MediaOp::Delete(session) => {
            if let Err(e) = relay.delete_session(session) {
                tracing::debug!(session = session.0, error = %e, "relay session delete failed");
            }
            None
        }
        // Answered off the engine's task (see `drain`).
        MediaOp::Stats(_) => None,
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
            let Some(out) = io.udp.get(&t.local) else { return failed("no_udp_socket") };
            match out.send(t.bytes.clone(), t.dest) {
                Ok(()) => {}
                // A full backlog is congestion, not a dead destination: retransmissions recover.
                Err("udp_send_backlog") => io.core.metrics.inc("dropped", "udp_send_backlog"),
                Err(reason) => failed(reason),
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
        Event::Registered { aor, contact, expires_in, nat } => {
            tracing::debug!(%aor, %contact, expires_in, nat = nat.as_deref().unwrap_or("no"), "registered")
        }
        // Logged where they happen (with more context).
        Event::FlowDead { .. } | Event::Banned { .. } | Event::MediaTimeout { .. } | Event::OneWayAudio { .. } => {}
        Event::CallRecord(_) => {}
    }
}
