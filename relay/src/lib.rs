//! sixgate-relay: the RTP/RTCP relay core. Knows nothing of SIP.
//!
//! [`Relay`] is the handle the proxy holds (share it in an `Arc`): it allocates ports and binds
//! sockets in the caller's thread (control path, a short mutex), then hands the session to an
//! engine thread over a command queue plus an eventfd wake-up. Engine threads own their sockets
//! and session tables; the forwarding path takes no lock and allocates nothing.
//! [`EventStream`] carries events back: a channel plus an eventfd that an async runtime can
//! wait on (tokio's `AsyncFd`), so nothing here ever blocks the proxy.
//!
//! Modules: [`ports`] (port pool), [`session`] (latching, strict source, routing), [`stats`]
//! (RFC 3550 loss and jitter), `engine` (io_uring and epoll drivers).

mod engine;
pub mod ports;
pub mod session;
pub mod stats;
mod sys;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use engine::EngineKind;
pub use session::Channel;
pub use stats::{Counter, DropCounts, DropReason, LegStats, RtpStreamSummary};
pub use sys::pin_current_thread;

/// libc as this crate links it, for `benches/relay.rs` (its raw recvmmsg/sendmmsg baseline and
/// generator), which lives in the root package and cannot add dependencies of its own.
#[doc(hidden)]
pub use libc as __libc;

use engine::{Command, Core, EventSink, LegSockets, WorkerParts};
use ports::PortPool;
use session::{LegOptions, Rules};
use sys::SocketOptions;

/// Events that may wait for the proxy to drain them (a few per call; a proxy that stops
/// draining loses events, counted by [`Relay::events_dropped`], rather than the relay's memory;
/// media timeouts are raised again until delivered). The queue's slots are allocated up front:
/// 4 096 × ~350 B.
pub const EVENT_QUEUE: usize = 4096;

/// Highest RTP clock rate a leg may declare.
pub const MAX_CLOCK_RATE: u32 = 192_000;

/// Which engine to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// io_uring if the probe passes, else epoll (the choice is logged).
    #[default]
    Auto,
    IoUring,
    Epoll,
}

/// The relay's configuration (the proxy maps its TOML section onto this).
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Local IPv4 address for IPv4 legs (`None`: IPv4 legs are refused).
    pub bind_v4: Option<Ipv4Addr>,
    /// Local IPv6 address for IPv6 legs (`None`: IPv6 legs are refused).
    pub bind_v6: Option<Ipv6Addr>,
    /// Inclusive port range for IPv4 legs (even RTP, odd RTCP).
    pub ports_v4: (u16, u16),
    /// Inclusive port range for IPv6 legs.
    pub ports_v6: (u16, u16),
    /// A released port is not reused before this.
    pub port_quarantine: Duration,
    /// No packet on a leg for this long raises [`Event::MediaTimeout`] (zero: never).
    pub media_timeout: Duration,
    /// The re-latch rule's silence (see [`session`]).
    pub relatch_after: Duration,
    pub engine: EngineChoice,
    /// Engine threads, one per listed CPU (pinned); empty = one unpinned thread.
    pub cpus: Vec<usize>,
    /// Mark RTP/RTCP sockets DSCP EF.
    pub dscp_ef: bool,
    /// SO_RCVBUF / SO_SNDBUF per socket (None: system default).
    pub socket_recv_buffer: Option<usize>,
    pub socket_send_buffer: Option<usize>,
    /// Engine threads poll without ever sleeping: lowest latency, but each burns its CPU at
    /// 100 % even when idle. For dedicated relay cores only.
    pub busy_poll: bool,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            bind_v4: Some(Ipv4Addr::UNSPECIFIED),
            bind_v6: Some(Ipv6Addr::UNSPECIFIED),
            ports_v4: (30000, 39999),
            ports_v6: (30000, 39999),
            port_quarantine: Duration::from_secs(30),
            media_timeout: Duration::from_secs(60),
            relatch_after: Duration::from_secs(1),
            engine: EngineChoice::Auto,
            cpus: Vec::new(),
            dscp_ef: false,
            socket_recv_buffer: None,
            socket_send_buffer: None,
            busy_poll: false,
        }
    }
}

/// Address family of a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: &SocketAddr) -> Family {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// One side of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegSpec {
    pub family: Family,
    /// The peer the SDP announced, if known yet.
    pub peer: Option<SocketAddr>,
    /// Learn the peer from the first packet (symmetric RTP / NAT); else accept only `peer`.
    pub latch: bool,
    /// RTP and RTCP on one port (RFC 5761); no RTCP socket is opened.
    pub rtcp_mux: bool,
    /// RTP clock rate, for jitter (8000 for G.711); 1..=[`MAX_CLOCK_RATE`].
    pub clock_rate: u32,
    /// With `latch`: only sources with this IP address may latch or re-latch — set it to the
    /// address the leg's signaling came from, so nobody else can win the race to a fresh port
    /// ("RTP bleed"). `None`: any source may latch (plain comedia).
    pub latch_from: Option<IpAddr>,
}

impl LegSpec {
    /// A latching leg of `family` with an optional SDP peer, separate RTCP, 8 kHz clock.
    pub fn new(family: Family, peer: Option<SocketAddr>) -> LegSpec {
        LegSpec { family, peer, latch: true, rtcp_mux: false, clock_rate: 8000, latch_from: None }
    }
}

/// What to create: legs A and B, and an optional media timeout override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSpec {
    pub legs: [LegSpec; 2],
    pub media_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegId {
    A,
    B,
}

impl LegId {
    fn index(self) -> usize {
        match self {
            LegId::A => 0,
            LegId::B => 1,
        }
    }
}

/// A leg's local addresses (to write into that side's SDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegAddrs {
    pub rtp: SocketAddr,
    /// `rtp` itself with rtcp-mux, else the port above.
    pub rtcp: SocketAddr,
}

#[derive(Debug, Clone, Copy)]
pub struct SessionInfo {
    pub id: SessionId,
    pub legs: [LegAddrs; 2],
}

/// Statistics of both legs (index 0 = A).
#[derive(Debug, Clone, Copy)]
pub struct SessionStats {
    pub legs: [LegStats; 2],
}

/// What the relay tells the proxy.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // a handful per call; boxing would not pay
pub enum Event {
    FirstPacket { session: SessionId, leg: LegId, from: SocketAddr },
    Latched { session: SessionId, leg: LegId, channel: Channel, peer: SocketAddr },
    Relatched { session: SessionId, leg: LegId, channel: Channel, from: SocketAddr, to: SocketAddr },
    MediaTimeout { session: SessionId, leg: LegId },
    /// The session was deleted; its final statistics.
    Closed { session: SessionId, stats: SessionStats },
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no free {family:?} relay ports (range holds {capacity} pairs; the rest are in use or in quarantine)")]
    PortsExhausted { family: Family, capacity: usize },
    #[error("no bind address configured for {0:?} legs")]
    FamilyDisabled(Family),
    #[error("binding relay socket {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("no such session {0:?}")]
    NoSuchSession(SessionId),
    #[error("io_uring engine forced by config but unavailable: {0}")]
    IoUringUnavailable(String),
    #[error("starting the relay: {0}")]
    Start(io::Error),
    #[error("the engine thread is gone")]
    EngineGone,
    #[error("the engine did not answer in time")]
    Timeout,
    #[error("invalid relay config: {0}")]
    Config(String),
}

struct Worker {
    commands: Sender<Command>,
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn send(&self, cmd: Command) -> Result<(), Error> {
        self.commands.send(cmd).map_err(|_| Error::EngineGone)?;
        sys::eventfd_wake(self.wake.as_raw_fd());
        Ok(())
    }
}

struct Record {
    worker: usize,
    ports: [(Family, u16); 2],
}

struct Control {
    v4: Option<PortPool>,
    v6: Option<PortPool>,
    sessions: HashMap<u64, Record>,
    next_id: u64,
    next_worker: usize,
}

impl Control {
    /// Removes a session's record and puts its ports into quarantine.
    fn forget(&mut self, id: u64, now: Instant) -> Option<Record> {
        let rec = self.sessions.remove(&id)?;
        for (family, port) in rec.ports {
            if let Some(p) = self.pool(family) {
                p.release(port, now);
            }
        }
        Some(rec)
    }

    fn pool(&mut self, f: Family) -> Option<&mut PortPool> {
        match f {
            Family::V4 => self.v4.as_mut(),
            Family::V6 => self.v6.as_mut(),
        }
    }
}

/// The relay handle. Every method is control path: quick, never waits on packet processing.
pub struct Relay {
    control: Mutex<Control>,
    workers: Vec<Worker>,
    engine: EngineKind,
    cfg: RelayConfig,
    sockopts: SocketOptions,
    events_dropped: Arc<AtomicU64>,
}

/// Events from all engine threads. Wait for [`EventStream::as_raw_fd`] to become readable
/// (e.g. tokio `AsyncFd`), then call [`EventStream::drain`].
pub struct EventStream {
    rx: Receiver<Event>,
    fd: Arc<OwnedFd>,
}

impl EventStream {
    /// Clears the wake-up and returns every pending event (call after readiness; never blocks).
    pub fn drain(&self, out: &mut Vec<Event>) {
        sys::eventfd_clear(self.fd.as_raw_fd());
        loop {
            match self.rx.try_recv() {
                Ok(e) => out.push(e),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }

    /// Waits up to `timeout` for one event (for tests, tools and non-async callers).
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        self.rx.recv_timeout(timeout).ok()
    }
}

impl AsRawFd for EventStream {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A pending stats answer (the engine thread replies on its next loop iteration).
pub struct StatsTicket(Receiver<Option<SessionStats>>, SessionId);

impl StatsTicket {
    /// The answer if it is there already.
    pub fn try_get(&self) -> Option<Result<SessionStats, Error>> {
        match self.0.try_recv() {
            Ok(s) => Some(s.ok_or(Error::NoSuchSession(self.1))),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err(Error::EngineGone)),
        }
    }

    /// Waits for the answer (microseconds normally; bounded by `timeout`).
    pub fn wait(self, timeout: Duration) -> Result<SessionStats, Error> {
        match self.0.recv_timeout(timeout) {
            Ok(s) => s.ok_or(Error::NoSuchSession(self.1)),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(Error::Timeout),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(Error::EngineGone),
        }
    }
}

fn select_engine(choice: EngineChoice) -> Result<EngineKind, Error> {
    match choice {
        EngineChoice::Epoll => {
            tracing::info!(engine = "epoll", "relay engine forced by config");
            Ok(EngineKind::Epoll)
        }
        EngineChoice::IoUring => match engine::probe_io_uring() {
            Ok(()) => {
                tracing::info!(engine = "io_uring", "relay engine forced by config");
                Ok(EngineKind::IoUring)
            }
            Err(e) => Err(Error::IoUringUnavailable(e)),
        },
        EngineChoice::Auto => match engine::probe_io_uring() {
            Ok(()) => {
                tracing::info!(engine = "io_uring", "relay engine selected (io_uring probe passed)");
                Ok(EngineKind::IoUring)
            }
            Err(e) => {
                tracing::warn!(engine = "epoll", reason = %e, "io_uring unavailable; relay falls back to epoll");
                Ok(EngineKind::Epoll)
            }
        },
    }
}

impl Relay {
    /// Probes and picks the engine, starts its threads. Returns the handle and the event stream.
    pub fn start(cfg: RelayConfig) -> Result<(Relay, EventStream), Error> {
        for (name, (lo, hi)) in [("ports_v4", cfg.ports_v4), ("ports_v6", cfg.ports_v6)] {
            if PortPool::pairs_in(lo, hi) == 0 {
                return Err(Error::Config(format!("{name}: range {lo}..={hi} holds no even/odd pair")));
            }
        }
        let engine = select_engine(cfg.engine)?;
        let (ev_tx, ev_rx) = mpsc::sync_channel(EVENT_QUEUE);
        let ev_fd = Arc::new(sys::eventfd().map_err(Error::Start)?);
        let events_dropped = Arc::new(AtomicU64::new(0));
        let rules = Rules { relatch_after_ns: cfg.relatch_after.as_nanos() as u64 };
        let cpus: Vec<Option<usize>> =
            if cfg.cpus.is_empty() { vec![None] } else { cfg.cpus.iter().map(|&c| Some(c)).collect() };
        let mut workers = Vec::with_capacity(cpus.len());
        let (ready_tx, ready_rx) = mpsc::sync_channel(cpus.len());
        let may_fall_back = cfg.engine == EngineChoice::Auto;
        let mut spawn_error = None;
        for (i, cpu) in cpus.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel();
            let wake = Arc::new(sys::eventfd().map_err(Error::Start)?);
            let parts = WorkerParts {
                core: Core::new(rules, EventSink::new(ev_tx.clone(), ev_fd.clone(), events_dropped.clone())),
                commands: rx,
                wake: wake.clone(),
                cpu,
                busy_poll: cfg.busy_poll,
                ready: engine::Ready::new(ready_tx.clone()),
            };
            match std::thread::Builder::new().name(format!("relay-{i}")).spawn(move || run_worker(engine, parts, may_fall_back)) {
                Ok(thread) => workers.push(Worker { commands: tx, wake, thread: Some(thread) }),
                Err(e) => {
                    spawn_error = Some(e);
                    break;
                }
            }
        }
        drop(ready_tx);
        let q = cfg.port_quarantine;
        let control = Control {
            v4: cfg.bind_v4.map(|_| PortPool::new(cfg.ports_v4.0, cfg.ports_v4.1, q)),
            v6: cfg.bind_v6.map(|_| PortPool::new(cfg.ports_v6.0, cfg.ports_v6.1, q)),
            sessions: HashMap::new(),
            next_id: 1,
            next_worker: 0,
        };
        let sockopts = SocketOptions {
            dscp_ef: cfg.dscp_ef,
            recv_buffer: cfg.socket_recv_buffer,
            send_buffer: cfg.socket_send_buffer,
        };
        let forced = cfg.engine;
        // Built before the handshake so that an early return stops (drops and joins) the threads.
        let mut relay = Relay { control: Mutex::new(control), workers, engine, cfg, sockopts, events_dropped };
        if let Some(e) = spawn_error {
            return Err(Error::Start(e));
        }
        // Every thread reports once its IO driver is set up (ring built, buffers registered).
        let mut kinds = Vec::with_capacity(relay.workers.len());
        let deadline = Instant::now() + Duration::from_secs(10);
        for _ in 0..relay.workers.len() {
            match ready_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Ok(kind)) => kinds.push(kind),
                Ok(Err(why)) if forced == EngineChoice::IoUring => return Err(Error::IoUringUnavailable(why)),
                Ok(Err(why)) => return Err(Error::Start(io::Error::other(why))),
                Err(_) => {
                    // A thread stuck in its set-up would also hang the join in `Drop`: detach
                    // them all (the running ones still stop when their command queue closes).
                    for w in &mut relay.workers {
                        w.thread.take();
                    }
                    return Err(Error::Start(io::Error::other("a relay engine thread did not report ready within 10 s")));
                }
            }
        }
        if kinds.iter().any(|&k| k != engine) {
            relay.engine = EngineKind::Epoll;
        }
        Ok((relay, EventStream { rx: ev_rx, fd: ev_fd }))
    }

    /// Events dropped because the event queue was full (the consumer stopped draining it).
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped.load(Ordering::Relaxed)
    }

    /// The engine in use: `IoUring` only if every engine thread runs it (`Epoll` as soon as one
    /// thread had to fall back; the log names it).
    pub fn engine(&self) -> EngineKind {
        self.engine
    }

    fn bind_ip(&self, f: Family) -> Option<IpAddr> {
        match f {
            Family::V4 => self.cfg.bind_v4.map(IpAddr::V4),
            Family::V6 => self.cfg.bind_v6.map(IpAddr::V6),
        }
    }

    /// Allocates a port pair and binds the leg's sockets; ports busy elsewhere are skipped.
    fn open_leg(&self, ctl: &mut Control, spec: &LegSpec, now: Instant) -> Result<(u16, LegSockets), Error> {
        let ip = self.bind_ip(spec.family).ok_or(Error::FamilyDisabled(spec.family))?;
        let pool = ctl.pool(spec.family).ok_or(Error::FamilyDisabled(spec.family))?;
        let capacity = pool.capacity();
        for _ in 0..capacity {
            let Some(port) = pool.allocate(now) else { break };
            let rtp_addr = SocketAddr::new(ip, port);
            let bound = sys::bind_udp(rtp_addr, &self.sockopts).and_then(|rtp| {
                let rtcp = if spec.rtcp_mux {
                    None
                } else {
                    Some(sys::bind_udp(SocketAddr::new(ip, port + 1), &self.sockopts)?)
                };
                Ok(LegSockets { rtp, rtcp })
            });
            match bound {
                Ok(s) => return Ok((port, s)),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    tracing::debug!(port, "relay port busy outside the relay; skipped");
                    pool.release(port, now);
                }
                Err(source) => {
                    pool.release(port, now);
                    return Err(Error::Bind { addr: rtp_addr, source });
                }
            }
        }
        Err(Error::PortsExhausted { family: spec.family, capacity })
    }

    /// Creates a session: binds both legs and hands them to an engine thread.
    pub fn create_session(&self, spec: SessionSpec) -> Result<SessionInfo, Error> {
        for leg in &spec.legs {
            // RTP clocks in use run from 8 kHz to 90 kHz (video); the cap keeps the jitter
            // arithmetic in range whatever an SDP claims.
            if !(1..=MAX_CLOCK_RATE).contains(&leg.clock_rate) {
                return Err(Error::Config(format!("clock rate {} outside 1..={MAX_CLOCK_RATE} Hz", leg.clock_rate)));
            }
            if let Some(p) = leg.peer {
                if Family::of(&p) != leg.family {
                    return Err(Error::Config(format!("peer {p} is not of the leg's family {:?}", leg.family)));
                }
            }
        }
        let now = Instant::now();
        let mut ctl = self.control.lock().unwrap_or_else(|p| p.into_inner());
        let (port_a, sock_a) = self.open_leg(&mut ctl, &spec.legs[0], now)?;
        let (port_b, sock_b) = match self.open_leg(&mut ctl, &spec.legs[1], now) {
            Ok(x) => x,
            Err(e) => {
                drop(sock_a);
                if let Some(p) = ctl.pool(spec.legs[0].family) {
                    p.release(port_a, now);
                }
                return Err(e);
            }
        };
        let addrs = |s: &LegSockets| -> Result<LegAddrs, Error> {
            let rtp = s.rtp.local_addr().map_err(Error::Start)?;
            let rtcp = match &s.rtcp {
                Some(r) => r.local_addr().map_err(Error::Start)?,
                None => rtp,
            };
            Ok(LegAddrs { rtp, rtcp })
        };
        let legs = [addrs(&sock_a)?, addrs(&sock_b)?];
        let id = ctl.next_id;
        ctl.next_id += 1;
        let worker = ctl.next_worker % self.workers.len();
        ctl.next_worker = ctl.next_worker.wrapping_add(1);
        ctl.sessions.insert(id, Record { worker, ports: [(spec.legs[0].family, port_a), (spec.legs[1].family, port_b)] });
        drop(ctl);
        let opts = |l: &LegSpec| {
            let o = LegOptions { latch: l.latch, rtcp_mux: l.rtcp_mux, clock_rate: l.clock_rate, latch_from: l.latch_from };
            (o, l.peer)
        };
        let sent = self.workers[worker].send(Command::Add {
            id,
            legs: [opts(&spec.legs[0]), opts(&spec.legs[1])],
            sockets: [sock_a, sock_b],
            media_timeout: spec.media_timeout.unwrap_or(self.cfg.media_timeout),
        });
        if let Err(e) = sent {
            // The engine thread is gone (the sockets went down with the command): forget the
            // session and give its ports back rather than leak them.
            self.control.lock().unwrap_or_else(|p| p.into_inner()).forget(id, now);
            return Err(e);
        }
        Ok(SessionInfo { id: SessionId(id), legs })
    }

    fn worker_of(&self, id: SessionId) -> Result<usize, Error> {
        let ctl = self.control.lock().unwrap_or_else(|p| p.into_inner());
        ctl.sessions.get(&id.0).map(|r| r.worker).ok_or(Error::NoSuchSession(id))
    }

    /// A new expected peer for a leg (SDP answer, re-INVITE). A different address clears the
    /// leg's latch; the same address again keeps it.
    pub fn update_peer(&self, id: SessionId, leg: LegId, peer: Option<SocketAddr>) -> Result<(), Error> {
        let w = self.worker_of(id)?;
        self.workers[w].send(Command::SetPeer { id: id.0, leg: leg.index(), peer })
    }

    /// Deletes a session; its ports go into quarantine, its final stats arrive as
    /// [`Event::Closed`].
    pub fn delete_session(&self, id: SessionId) -> Result<(), Error> {
        let rec = self.control.lock().unwrap_or_else(|p| p.into_inner()).forget(id.0, Instant::now());
        let rec = rec.ok_or(Error::NoSuchSession(id))?;
        self.workers[rec.worker].send(Command::Delete { id: id.0 })
    }

    /// Asks the owning engine thread for a snapshot of the session's statistics.
    pub fn stats(&self, id: SessionId) -> Result<StatsTicket, Error> {
        let w = self.worker_of(id)?;
        let (tx, rx) = mpsc::sync_channel(1);
        self.workers[w].send(Command::Stats { id: id.0, reply: tx })?;
        Ok(StatsTicket(rx, id))
    }

    /// Number of live sessions.
    pub fn session_count(&self) -> usize {
        self.control.lock().unwrap_or_else(|p| p.into_inner()).sessions.len()
    }

    /// Free port pairs per family right now (after quarantine).
    pub fn free_ports(&self, family: Family) -> usize {
        let mut ctl = self.control.lock().unwrap_or_else(|p| p.into_inner());
        ctl.pool(family).map_or(0, |p| p.available(Instant::now()))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for w in &mut self.workers {
            // Disconnecting the queue and waking the thread makes it exit.
            let (dead, _) = mpsc::channel();
            drop(std::mem::replace(&mut w.commands, dead));
            sys::eventfd_wake(w.wake.as_raw_fd());
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

fn run_worker(kind: EngineKind, mut parts: WorkerParts, may_fall_back: bool) {
    if let Some(cpu) = parts.cpu {
        if let Err(e) = sys::pin_current_thread(cpu) {
            tracing::warn!(cpu, error = %e, "could not pin relay thread");
        }
    }
    let mut r = match kind {
        EngineKind::Epoll => engine::epoll::run(&mut parts),
        EngineKind::IoUring => engine::uring::run(&mut parts),
    };
    let mut ran = kind;
    if let Err(e) = &r {
        // The probe passed but this thread's ring could not be set up (memory accounting, a
        // seccomp policy that differs per thread): with engine = auto, run epoll instead.
        if kind == EngineKind::IoUring && parts.ready.pending() && may_fall_back {
            tracing::warn!(error = %e, engine = "epoll", "io_uring set-up failed in the engine thread; falling back to epoll");
            ran = EngineKind::Epoll;
            r = engine::epoll::run(&mut parts);
        }
    }
    if let Err(e) = r {
        if parts.ready.pending() {
            parts.ready.fail(format!("{ran:?} engine set-up: {e}"));
        } else {
            tracing::error!(error = %e, kind = ?ran, "relay engine thread stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    fn v4_config(engine: EngineChoice) -> RelayConfig {
        RelayConfig {
            bind_v4: Some(Ipv4Addr::LOCALHOST),
            bind_v6: None,
            ports_v4: (47000, 47031),
            port_quarantine: Duration::ZERO,
            engine,
            ..RelayConfig::default()
        }
    }

    #[test]
    fn a_clock_rate_out_of_range_is_refused() {
        let (relay, _events) = Relay::start(v4_config(EngineChoice::Epoll)).unwrap();
        for rate in [0, MAX_CLOCK_RATE + 1, u32::MAX] {
            let leg = LegSpec { clock_rate: rate, ..LegSpec::new(Family::V4, None) };
            let spec = SessionSpec { legs: [leg, leg], media_timeout: None };
            assert!(matches!(relay.create_session(spec), Err(Error::Config(_))), "{rate}");
        }
        assert_eq!(relay.session_count(), 0);
    }

    #[test]
    fn a_port_range_without_an_even_odd_pair_is_refused() {
        for range in [(40001, 40002), (40000, 40000), (40002, 40001)] {
            let cfg = RelayConfig { ports_v4: range, ..v4_config(EngineChoice::Epoll) };
            assert!(matches!(Relay::start(cfg), Err(Error::Config(_))), "{range:?}");
        }
    }

    #[test]
    fn ring_setup_failure_in_the_engine_thread_falls_back_or_fails_start() {
        // The case under test is "the probe passed, the thread's own ring failed"; where the
        // probe fails, both starts are decided by the probe instead and the test says so.
        if let Err(why) = engine::probe_io_uring() {
            eprintln!("io_uring probe fails here ({why}): testing the probe-time decision instead");
        }
        engine::uring::FAIL_RING_SETUP.store(true, Ordering::Relaxed);
        let forced = Relay::start(v4_config(EngineChoice::IoUring));
        let auto = Relay::start(v4_config(EngineChoice::Auto));
        engine::uring::FAIL_RING_SETUP.store(false, Ordering::Relaxed);
        assert!(matches!(forced, Err(Error::IoUringUnavailable(_))), "forced io_uring must not start half-dead");
        let (relay, _events) = auto.expect("auto falls back to epoll");
        assert_eq!(relay.engine(), EngineKind::Epoll);
        // And the fallen-back engine relays.
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let leg = |peer: &UdpSocket| LegSpec { latch: false, rtcp_mux: true, ..LegSpec::new(Family::V4, Some(peer.local_addr().unwrap())) };
        let s = relay.create_session(SessionSpec { legs: [leg(&a), leg(&b)], media_timeout: None }).unwrap();
        let mut pkt = [0u8; 172];
        pkt[0] = 0x80;
        a.send_to(&pkt, s.legs[0].rtp).unwrap();
        let mut buf = [0u8; 256];
        let n = loop {
            match b.recv(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r.expect("relayed by the epoll fallback"),
            }
        };
        assert_eq!(&buf[..n], &pkt[..]);
    }

    #[test]
    fn a_full_event_queue_drops_and_counts_instead_of_growing() {
        let (tx, rx) = mpsc::sync_channel(2);
        let dropped = Arc::new(AtomicU64::new(0));
        let mut sink = EventSink::new(tx, Arc::new(sys::eventfd().unwrap()), dropped.clone());
        for leg in [LegId::A, LegId::B, LegId::A] {
            sink.send(Event::MediaTimeout { session: SessionId(1), leg });
        }
        assert_eq!(dropped.load(Ordering::Relaxed), 1);
        assert_eq!(rx.try_iter().count(), 2);
    }
}
