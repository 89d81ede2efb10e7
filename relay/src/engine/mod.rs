//! Engine threads: each owns its sockets and its session table ([`Core`]) and runs one IO
//! driver — io_uring ([`uring`], default) or epoll + recvmmsg/sendmmsg ([`epoll`], fallback).
//!
//! The control plane never touches a session table: it sends [`Command`]s over a channel and
//! kicks the thread's eventfd. The hot path (`Core::on_packet`) takes no lock and allocates
//! nothing; the engines only batch the resulting sends.

pub(crate) mod epoll;
pub(crate) mod uring;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::session::{Channel, LegOptions, Route, Rules, Session, SessionEvent};
use crate::stats::DropReason;
use crate::{Event, LegId, SessionId, SessionStats};

/// Receive buffer size per datagram: anything larger is counted `Truncated` and dropped.
pub(crate) const MAX_DATAGRAM: usize = 2048;
/// How often the engines scan for media timeouts.
pub(crate) const TIMEOUT_TICK: Duration = Duration::from_millis(50);

/// The engine kinds a relay can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    IoUring,
    Epoll,
}

/// A leg's sockets as handed to the engine (RTCP is `None` with rtcp-mux).
pub(crate) struct LegSockets {
    pub rtp: UdpSocket,
    pub rtcp: Option<UdpSocket>,
}

pub(crate) enum Command {
    Add { id: u64, legs: [(LegOptions, Option<SocketAddr>); 2], sockets: [LegSockets; 2], media_timeout: Duration },
    SetPeer { id: u64, leg: usize, peer: Option<SocketAddr> },
    Delete { id: u64 },
    Stats { id: u64, reply: SyncSender<Option<SessionStats>> },
}

/// Events out of an engine thread: a bounded channel plus an eventfd, written once per loop
/// iteration.
pub(crate) struct EventSink {
    tx: SyncSender<Event>,
    fd: Arc<OwnedFd>,
    pending: bool,
    /// Events refused because the queue was full (shared by all engine threads).
    dropped: Arc<AtomicU64>,
}

impl EventSink {
    pub fn new(tx: SyncSender<Event>, fd: Arc<OwnedFd>, dropped: Arc<AtomicU64>) -> EventSink {
        EventSink { tx, fd, pending: false, dropped }
    }

    /// Queues an event; false if the queue was full. A full queue means the proxy stopped
    /// draining it: the event is dropped and counted (the relay never blocks on its consumer,
    /// nor grows without bound); a media timeout is raised again on the next tick. A dropped
    /// receiver means nobody listens; the relay keeps relaying.
    pub(crate) fn send(&mut self, e: Event) -> bool {
        match self.tx.try_send(e) {
            Ok(()) => {
                self.pending = true;
                true
            }
            Err(TrySendError::Full(_)) => {
                if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!("relay event queue full: events are dropped (counted) until it is drained");
                }
                self.pending = true;
                false
            }
            Err(TrySendError::Disconnected(_)) => true,
        }
    }

    pub fn flush(&mut self) {
        if self.pending {
            self.pending = false;
            crate::sys::eventfd_wake(self.fd.as_raw_fd());
        }
    }
}

/// A datagram's verdict as the engines need it: send `len` bytes out of `fd` to `dst`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Forward {
    pub fd: RawFd,
    pub dst: SocketAddr,
    pub slot: u32,
    pub leg: u8,
    pub channel: Channel,
}

impl Forward {
    /// Filler for preallocated arrays.
    pub const NONE: Forward = Forward {
        fd: -1,
        dst: SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0)),
        slot: 0,
        leg: 0,
        channel: Channel::Rtp,
    };
}

/// End of an engine loop iteration: the media-timeout scan when its tick is due, then at most
/// one event wake-up for everything the iteration produced.
pub(crate) fn housekeeping(core: &mut Core, next_tick: &mut Instant) {
    if Instant::now() >= *next_tick {
        core.check_timeouts();
        *next_tick = Instant::now() + TIMEOUT_TICK;
    }
    core.events.flush();
}

/// Token layout (epoll data / io_uring user_data): kind(4) | generation(28) | slot(30) | leg(1) | socket(1).
pub(crate) mod token {
    pub const KIND_SHIFT: u32 = 60;
    pub fn make(kind: u64, gen: u32, slot: u32, leg: usize, socket: usize) -> u64 {
        (kind << KIND_SHIFT)
            | (u64::from(gen & 0x0fff_ffff) << 32)
            | (u64::from(slot) << 2)
            | ((leg as u64) << 1)
            | socket as u64
    }
    pub fn kind(t: u64) -> u64 {
        t >> KIND_SHIFT
    }
    pub fn gen(t: u64) -> u32 {
        ((t >> 32) & 0x0fff_ffff) as u32
    }
    pub fn slot(t: u64) -> u32 {
        ((t >> 2) & 0x3fff_ffff) as u32
    }
    pub fn leg(t: u64) -> usize {
        ((t >> 1) & 1) as usize
    }
    pub fn socket(t: u64) -> usize {
        (t & 1) as usize
    }
}

pub(crate) struct Live {
    pub id: u64,
    pub session: Session,
    /// `[leg][socket]`; the RTCP socket is `None` with rtcp-mux.
    pub sockets: [[Option<UdpSocket>; 2]; 2],
}

impl Live {
    /// Each open socket with the token its receives carry.
    pub fn receive_tokens(&self, kind: u64, gen: u32, slot: u32) -> impl Iterator<Item = (RawFd, u64)> + '_ {
        (0..2).flat_map(move |leg| {
            (0..2).filter_map(move |sock| {
                self.sockets[leg][sock].as_ref().map(|u| (u.as_raw_fd(), token::make(kind, gen, slot, leg, sock)))
            })
        })
    }

    fn fd(&self, leg: usize, socket: Channel) -> RawFd {
        self.sockets[leg][socket as usize].as_ref().map_or(-1, |s| s.as_raw_fd())
    }
}

pub(crate) struct Slot {
    pub gen: u32,
    pub live: Option<Live>,
}

/// One engine thread's sessions: the table, the hot-path routing, timeouts and stats.
pub(crate) struct Core {
    pub slots: Vec<Slot>,
    free: Vec<u32>,
    by_id: HashMap<u64, u32>,
    epoch: Instant,
    rules: Rules,
    pub events: EventSink,
}

fn leg_id(i: usize) -> LegId {
    if i == 0 {
        LegId::A
    } else {
        LegId::B
    }
}

fn public_event(id: u64, e: SessionEvent) -> Event {
    let session = SessionId(id);
    match e {
        SessionEvent::FirstPacket { leg, from } => Event::FirstPacket { session, leg: leg_id(leg), from },
        SessionEvent::Latched { leg, channel, peer } => Event::Latched { session, leg: leg_id(leg), channel, peer },
        SessionEvent::Relatched { leg, channel, from, to } => {
            Event::Relatched { session, leg: leg_id(leg), channel, from, to }
        }
        SessionEvent::MediaTimeout { leg } => Event::MediaTimeout { session, leg: leg_id(leg) },
    }
}

impl Core {
    pub fn new(rules: Rules, events: EventSink) -> Core {
        Core { slots: Vec::new(), free: Vec::new(), by_id: HashMap::new(), epoch: Instant::now(), rules, events }
    }

    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Installs a session; returns its slot and generation (for the engine's tokens).
    pub fn add(
        &mut self,
        id: u64,
        legs: [(LegOptions, Option<SocketAddr>); 2],
        sockets: [LegSockets; 2],
        media_timeout: Duration,
    ) -> (u32, u32) {
        let now = self.now_ns();
        let session = Session::new(legs, now, media_timeout.as_nanos() as u64);
        let [a, b] = sockets;
        let live = Live { id, session, sockets: [[Some(a.rtp), a.rtcp], [Some(b.rtp), b.rtcp]] };
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot { gen: 0, live: None });
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[slot as usize];
        s.gen = s.gen.wrapping_add(1) & 0x0fff_ffff;
        s.live = Some(live);
        self.by_id.insert(id, slot);
        (slot, s.gen)
    }

    /// The sockets of a slot with their receive tokens (`kind` goes in the token's top bits).
    pub fn sockets(&self, slot: u32, kind: u64) -> impl Iterator<Item = (RawFd, u64)> + '_ {
        let s = &self.slots[slot as usize];
        s.live.iter().flat_map(move |l| l.receive_tokens(kind, s.gen, slot))
    }

    /// Removes a session, emits `Closed` with its final stats and returns it with its slot and
    /// generation (sockets still open: the engine closes them once it has dealt with their IO).
    pub fn remove(&mut self, id: u64) -> Option<(u32, u32, Live)> {
        let slot = self.by_id.remove(&id)?;
        let s = &mut self.slots[slot as usize];
        let live = s.live.take()?;
        let gen = s.gen;
        self.free.push(slot);
        let stats = self.snapshot(&live.session);
        self.events.send(Event::Closed { session: SessionId(id), stats });
        Some((slot, gen, live))
    }

    pub fn set_peer(&mut self, id: u64, leg: usize, peer: Option<SocketAddr>) {
        if let Some(l) = self.by_id.get(&id).and_then(|&s| self.slots[s as usize].live.as_mut()) {
            l.session.set_peer(leg, peer);
        }
    }

    fn snapshot(&self, s: &Session) -> SessionStats {
        let now = self.now_ns();
        SessionStats { legs: [s.stats(0, now), s.stats(1, now)] }
    }

    pub fn stats(&self, id: u64) -> Option<SessionStats> {
        let slot = *self.by_id.get(&id)?;
        self.slots[slot as usize].live.as_ref().map(|l| self.snapshot(&l.session))
    }

    pub fn handle(&mut self, cmd: Command) -> Applied {
        match cmd {
            Command::Add { id, legs, sockets, media_timeout } => {
                let (slot, _) = self.add(id, legs, sockets, media_timeout);
                return Applied::Added(slot);
            }
            Command::SetPeer { id, leg, peer } => self.set_peer(id, leg, peer),
            Command::Delete { id } => {
                if let Some((slot, gen, live)) = self.remove(id) {
                    return Applied::Removed { slot, gen, live };
                }
            }
            Command::Stats { id, reply } => {
                let _ = reply.try_send(self.stats(id));
            }
        }
        Applied::Nothing
    }

    /// The hot path: routes one received datagram. `None` means dropped (and counted) or stale.
    #[inline]
    pub fn on_packet(&mut self, tok: u64, src: SocketAddr, pkt: &[u8], truncated: bool, now_ns: u64) -> Option<Forward> {
        let slot = token::slot(tok);
        let s = self.slots.get_mut(slot as usize)?;
        if s.gen != token::gen(tok) {
            return None;
        }
        let live = s.live.as_mut()?;
        let leg = token::leg(tok);
        if truncated {
            live.session.count_drop(leg, DropReason::Truncated);
            return None;
        }
        let socket = if token::socket(tok) == 0 { Channel::Rtp } else { Channel::Rtcp };
        let id = live.id;
        let events = &mut self.events;
        let route = live.session.on_packet(leg, socket, src, pkt, now_ns, &self.rules, &mut |e| {
            events.send(public_event(id, e));
        });
        match route {
            Route::Forward { leg: out, socket, dst } => {
                Some(Forward { fd: live.fd(out, socket), dst, slot, leg: out as u8, channel: socket_channel(pkt, socket) })
            }
            Route::Drop(_) => None,
        }
    }

    /// The kernel refused a forwarded datagram.
    pub fn send_failed(&mut self, f: &Forward, len: usize) {
        if let Some(l) = self.slots.get_mut(f.slot as usize).and_then(|s| s.live.as_mut()) {
            l.session.send_failed(usize::from(f.leg), f.channel, len);
        }
    }

    pub fn check_timeouts(&mut self) {
        let now = self.now_ns();
        let events = &mut self.events;
        for l in self.slots.iter_mut().filter_map(|s| s.live.as_mut()) {
            let id = l.id;
            l.session.check_timeout(now, &mut |e| events.send(public_event(id, e)));
        }
    }
}

/// Which counter a forwarded datagram was charged to (rtcp-mux sends RTCP on the RTP socket).
fn socket_channel(pkt: &[u8], socket: Channel) -> Channel {
    if socket == Channel::Rtp && crate::stats::is_rtcp(pkt) {
        Channel::Rtcp
    } else {
        socket
    }
}

#[allow(clippy::large_enum_variant)] // one per command, never on the hot path
pub(crate) enum Applied {
    Nothing,
    Added(u32),
    Removed { slot: u32, gen: u32, live: Live },
}

/// Start-up handshake: an engine thread reports once that its IO driver is set up (or why it
/// could not be), so `Relay::start` fails or falls back instead of handing out a dead relay.
pub(crate) struct Ready {
    tx: Option<SyncSender<Result<EngineKind, String>>>,
}

impl Ready {
    pub fn new(tx: SyncSender<Result<EngineKind, String>>) -> Ready {
        Ready { tx: Some(tx) }
    }

    /// The engine is set up and about to enter its loop.
    pub fn done(&mut self, kind: EngineKind) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Ok(kind));
        }
    }

    /// Whether the engine has not reported yet (a failure now is a start-up failure).
    pub fn pending(&self) -> bool {
        self.tx.is_some()
    }

    pub fn fail(&mut self, why: String) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Err(why));
        }
    }
}

/// Everything an engine thread starts with.
pub(crate) struct WorkerParts {
    pub core: Core,
    pub commands: Receiver<Command>,
    pub wake: Arc<OwnedFd>,
    pub cpu: Option<usize>,
    /// Poll without sleeping (the thread spins on its core; no wake-up latency).
    pub busy_poll: bool,
    pub ready: Ready,
}

impl WorkerParts {
    /// How long the engine may block waiting for IO: until the next tick, or not at all.
    pub fn wait_budget(&self, next_tick: Instant) -> Duration {
        if self.busy_poll {
            Duration::ZERO
        } else {
            next_tick.saturating_duration_since(Instant::now())
        }
    }
}

/// Whether this kernel (and any seccomp policy) lets us run the io_uring engine: a ring can be
/// built, RECVMSG/SENDMSG are supported, a provided-buffer ring can be registered (5.19+), and
/// the kernel is recent enough for multishot recvmsg (6.0+).
pub(crate) fn probe_io_uring() -> Result<(), String> {
    uring::probe()
}

/// Drains this thread's command queue, letting the engine (de)register sockets.
pub(crate) fn drain_commands(parts: &mut WorkerParts, mut on: impl FnMut(&mut Core, Applied)) -> bool {
    crate::sys::eventfd_clear(parts.wake.as_raw_fd());
    loop {
        match parts.commands.try_recv() {
            Ok(cmd) => {
                let applied = parts.core.handle(cmd);
                on(&mut parts.core, applied);
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => return true,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => return false,
        }
    }
}

