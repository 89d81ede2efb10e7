//! The engine: the one owner of all SIP state (transactions, proxy contexts, dialogs, carrier
//! health, DNS cache, rate limits). Sans-IO, shaped after quinn-proto and str0m: the driver
//! feeds [`Input`]s with the time, drains [`Output`]s until none is left, and sleeps until
//! [`Engine::poll_timeout`]. Branches, tags and nonce keys come from a seeded generator, so a
//! simulation with the same seed replays exactly.
//!
//! Layout: this file has the I/O surface, the tables and the timer index; [`proxy`] decides and
//! forwards (RFC 3261 §16); [`edit`] changes messages; [`dialog`] holds calls.
//! Must never: read the clock, lock, sleep, touch a socket or resolver, or panic on input.

pub mod calls;
pub mod dialog;
pub mod edit;
pub mod media;
mod proxy;
mod register;
mod reload;
pub use reload::{in_force, Reloaded};
#[cfg(test)]
mod tests;
#[cfg(test)]
mod register_tests;
#[cfg(test)]
mod media_tests;

use crate::auth::{Bans, NonceCounts, Nonces};
use crate::registrar::{Change, Flow, Registrar};
use crate::config::{Config, TransportKind};
use crate::message::{response::ResponseBuilder, Message};
use crate::routing::dns::{DnsError, Query, Resolution};
use crate::routing::Router;
use crate::transaction::{ClientKey, ClientTxn, ServerKey, ServerTxn, Timing};
use crate::transport::Inbound;
use bytes::Bytes;
use dialog::{Dialog, DialogKey};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

pub use media::MediaOp;
pub use proxy::ProxyCtx;

/// Everything the engine is told.
// A message moves through here once, straight from the transport; boxing it would only add an
// allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Input {
    /// A validated message from a transport.
    Received { msg: Message, from: Inbound },
    /// The answer to an [`Output::Resolve`].
    Resolved { id: u64, result: Result<Resolution, DnsError> },
    /// A transmit that carried `client` could not be sent (no route, connection refused, no
    /// TCP flow): the client transaction fails as with a 503 (RFC 3261 §16.7 step 6 / §8.1.3.1).
    SendFailed { client: u64 },
    /// The store made the changes of [`Output::Store`] `id` durable (`ok`), or failed.
    Stored { id: u64, ok: bool },
    /// A TCP connection ended (closed by the peer, reset, idle timeout): the flow is gone.
    FlowClosed { transport: TransportKind, local: SocketAddr, remote: SocketAddr },
    /// The relay's answer to [`MediaOp::Create`] of [`Output::Media`] `id`: the sessions, in
    /// the order asked, or why none was made.
    Media { id: u64, result: Result<Vec<sixgate_relay::SessionInfo>, String> },
    /// The relay heard nothing on `leg` of `session` for the media timeout.
    MediaTimeout { session: sixgate_relay::SessionId, leg: sixgate_relay::LegId },
    /// The relay's counters asked for by [`MediaOp::Stats`] (sessions it no longer has are
    /// left out).
    MediaStats { stats: Vec<(sixgate_relay::SessionId, sixgate_relay::SessionStats)> },
    /// The first packet the relay accepted on a leg came from `from`.
    MediaFirstPacket { session: sixgate_relay::SessionId, leg: sixgate_relay::LegId, from: SocketAddr },
    /// A relay session was deleted; its final statistics.
    MediaClosed { session: sixgate_relay::SessionId, stats: sixgate_relay::SessionStats },
}

/// Bytes to send: over which transport, from which of our sockets, to where. `client` names the
/// client transaction to fail if the bytes cannot be sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub transport: TransportKind,
    pub local: SocketAddr,
    pub dest: SocketAddr,
    pub bytes: Bytes,
    pub client: Option<u64>,
}

/// Something the operator (logs, metrics, ctl) should hear about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    CallAnswered { call_id: String, user: Option<String>, carrier: Option<String>, crosses_family: bool },
    CallEnded { call_id: String, reason: &'static str },
    CarrierUp { name: String },
    CarrierDown { name: String },
    Refused { status: u16, reason: &'static str, source: SocketAddr },
    Registered { aor: String, contact: String, expires_in: u64, nat: Option<String> },
    FlowDead { remote: SocketAddr, reason: &'static str },
    /// A source network is banned after repeated failed authentications.
    Banned { network: IpAddr },
    /// A relayed call's media stopped from one side (`silent`: "caller" or "callee").
    MediaTimeout { call_id: String, silent: &'static str },
    /// An answered call's media flows one way only (`silent`: "caller" or "callee").
    OneWayAudio { call_id: String, silent: &'static str, cause: String },
    /// A call is over (see [`calls::CallRecord`]).
    CallRecord(Box<calls::CallRecord>),
}

/// Everything the engine asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Transmit(Transmit),
    /// Resolve a host (RFC 3263); answer with [`Input::Resolved`] carrying `id`.
    Resolve { id: u64, query: Query },
    /// Make these binding changes durable, all at once; answer with [`Input::Stored`] `id`.
    Store { id: u64, changes: Vec<Change> },
    /// Work for the media relay; [`MediaOp::Create`] is answered with [`Input::Media`] `id`.
    Media { id: u64, op: MediaOp },
    Event(Event),
}

/// Counters the engine keeps as plain fields; the driver exports them.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub requests_received: u64,
    pub responses_received: u64,
    pub requests_forwarded: u64,
    pub responses_forwarded: u64,
    pub retransmissions_absorbed: u64,
    pub retransmissions_sent: u64,
    pub stray_responses: u64,
    pub stray_acks: u64,
    /// ACKs of final answers we gave statelessly (407 and refusals): expected, dropped.
    pub acks_of_our_answers: u64,
    pub challenges: u64,
    pub auth_failures: u64,
    pub rate_limited: u64,
    pub transaction_timeouts: u64,
    pub send_failures: u64,
    pub calls_answered: u64,
    /// Answers not sent on UDP because they would be over 3x the request (spoofing guard).
    pub amplification_refused: u64,
    /// Responses that came from another address than the one the request went to.
    pub responses_from_elsewhere: u64,
    pub registrations: u64,
    pub registrations_refused: u64,
    /// Credentials with a nonce-count seen before (answered with a fresh challenge).
    pub digest_replays: u64,
    /// Requests refused without a challenge because their source is banned.
    pub banned_refusals: u64,
    pub bans: u64,
    pub keepalives_sent: u64,
    pub keepalive_failures: u64,
    pub flows_dead: u64,
    pub bindings_expired: u64,
    pub store_failures: u64,
    /// Calls refused for their SDP (488) and for want of relay sessions (503).
    pub media_refused: u64,
    pub media_failures: u64,
    /// Relayed calls whose media stopped on one side.
    pub media_timeouts: u64,
    /// Answered calls whose media flowed one way only (counted once per call).
    pub one_way_audio_calls: u64,
    /// Gauges the driver fills in: bindings and flows held by the registrar, and answered calls
    /// by the families of their legs (caller, callee).
    pub bindings: u64,
    pub flows: u64,
    pub active_calls: BTreeMap<(&'static str, &'static str), u64>,
    /// Responses we generated, by status code.
    pub generated: BTreeMap<u16, u64>,
}

impl Stats {
    /// The counters in Prometheus text exposition format (the operations work serves it).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let plain = [
            ("requests_received", self.requests_received),
            ("responses_received", self.responses_received),
            ("requests_forwarded", self.requests_forwarded),
            ("responses_forwarded", self.responses_forwarded),
            ("retransmissions_absorbed", self.retransmissions_absorbed),
            ("retransmissions_sent", self.retransmissions_sent),
            ("stray_responses", self.stray_responses),
            ("stray_acks", self.stray_acks),
            ("acks_of_our_answers", self.acks_of_our_answers),
            ("digest_challenges", self.challenges),
            ("digest_failures", self.auth_failures),
            ("invite_rate_limited", self.rate_limited),
            ("transaction_timeouts", self.transaction_timeouts),
            ("send_failures", self.send_failures),
            ("calls_answered", self.calls_answered),
            ("amplification_refused", self.amplification_refused),
            ("responses_from_elsewhere", self.responses_from_elsewhere),
            ("registrations", self.registrations),
            ("registrations_refused", self.registrations_refused),
            ("digest_replays", self.digest_replays),
            ("banned_refusals", self.banned_refusals),
            ("bans", self.bans),
            ("keepalives_sent", self.keepalives_sent),
            ("keepalive_failures", self.keepalive_failures),
            ("flows_dead", self.flows_dead),
            ("bindings_expired", self.bindings_expired),
            ("store_failures", self.store_failures),
            ("media_refused", self.media_refused),
            ("media_relay_failures", self.media_failures),
            ("media_timeouts", self.media_timeouts),
            ("one_way_audio_calls", self.one_way_audio_calls),
        ];
        for (name, v) in plain {
            out.push_str(&format!("sixgate_engine_{name}_total {v}\n"));
        }
        out.push_str(&format!("sixgate_registrar_bindings {}\nsixgate_registrar_flows {}\n", self.bindings, self.flows));
        for ((caller, callee), n) in &self.active_calls {
            out.push_str(&format!("sixgate_engine_active_calls{{caller=\"{caller}\",callee=\"{callee}\"}} {n}\n"));
        }
        for (code, v) in &self.generated {
            out.push_str(&format!("sixgate_engine_responses_generated_total{{code=\"{code}\"}} {v}\n"));
        }
        out
    }
}

/// See [`Engine::table_sizes`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableSizes {
    pub server_transactions: usize,
    pub client_transactions: usize,
    pub proxy_contexts: usize,
    pub dialogs: usize,
    pub dns_lookups: usize,
    /// Store commits whose 200 is waiting.
    pub pending_store: usize,
    /// Branches waiting for their relay sessions.
    pub media_waits: usize,
    /// Call records waiting for final media statistics.
    pub records: usize,
}

impl TableSizes {
    pub fn is_empty(&self) -> bool {
        *self == TableSizes::default()
    }
}

/// What a timer in the index belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum TimerRef {
    Server(u64),
    Client(u64),
    Dialog(u64),
    /// The OPTIONS probe of a carrier.
    Probe(usize),
    /// The keepalive of a NATed flow.
    Keepalive(u64),
    /// Pruning of rate-limit buckets and the DNS cache, expiry of bindings.
    Housekeeping,
    /// Reading answered calls' media counters (one-way audio).
    MediaPoll,
    /// A call record stops waiting for final media statistics.
    Record(u64),
}

struct ServerEntry {
    txn: ServerTxn,
    key: ServerKey,
    /// The request, until our final response is sent (then only its retransmissions matter;
    /// dropping it early halves what an answered call holds through RFC 6026's 32 s).
    request: Option<Message>,
    from: Inbound,
    /// Where its responses go (RFC 3261 §18.2.2).
    reply: Hop,
    ctx: Option<u64>,
}

/// Who is waiting for a client transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientOwner {
    /// Branch `branch` of proxy context `ctx`.
    Branch { ctx: u64, branch: usize },
    /// The OPTIONS probe of carrier `carrier`.
    Probe { carrier: usize },
    /// A request of our own whose answer nobody needs: a CANCEL, a media-timeout BYE.
    Ours,
    /// The OPTIONS keepalive of a registered flow.
    Keepalive { flow: u64 },
}

struct ClientEntry {
    txn: ClientTxn,
    key: ClientKey,
    /// The request as sent (parsed again, so ACK/CANCEL can be built from it), until a final
    /// response arrives; after that only the ACK (kept below) is ever sent again.
    request: Option<Message>,
    hop: Hop,
    owner: ClientOwner,
    /// The ACK we sent for a non-2xx answer, sent again for each retransmission of it.
    ack: Option<Bytes>,
    /// Timer C (INVITE branches of a proxy); after our CANCEL, the wait for the INVITE's answer.
    timer_c: Option<Instant>,
    /// We sent a CANCEL for this INVITE.
    cancel_sent: bool,
}

impl ClientEntry {
    fn deadline(&self) -> Option<Instant> {
        match (self.txn.deadline(), self.timer_c) {
            (Some(a), Some(c)) if self.txn.is_pending() => Some(a.min(c)),
            (None, Some(c)) if self.txn.is_pending() => Some(c),
            (a, _) => a,
        }
    }
}

/// A next hop: transport, our socket, destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hop {
    pub transport: TransportKind,
    pub local: SocketAddr,
    pub dest: SocketAddr,
}

/// A token bucket of new INVITEs for one source.
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A DNS answer kept for its TTL.
struct Cached {
    resolution: Resolution,
    until: Instant,
}

/// The engine's random numbers: SHA-256 of a secret key and a counter. Branches must be
/// unguessable (a guessed branch lets a third party forge responses to our client
/// transactions), and the same key replays the same sequence in a simulation.
#[derive(Clone, Debug)]
pub struct Rng {
    key: [u8; 32],
    counter: u64,
    buffered: [u64; 4],
    left: usize,
}

impl Rng {
    pub fn new(key: [u8; 32]) -> Rng {
        Rng { key, counter: 0, buffered: [0; 4], left: 0 }
    }

    pub fn next_u64(&mut self) -> u64 {
        use sha2::{Digest, Sha256};
        if self.left == 0 {
            let block = Sha256::new().chain_update(self.key).chain_update(self.counter.to_le_bytes()).finalize();
            self.counter += 1;
            for (i, chunk) in block.chunks_exact(8).enumerate() {
                self.buffered[i] = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
            }
            self.left = 4;
        }
        self.left -= 1;
        self.buffered[self.left]
    }
}

/// What the engine needs to start: the config, a seed, and a key for nonces.
pub struct EngineParams {
    pub seed: u64,
    pub nonce_key: [u8; 32],
    /// The wall clock (unix seconds) at the engine's first instant: binding expiry is stored
    /// in wall time, so it means the same after a restart.
    pub unix_time: u64,
}

pub struct Engine {
    timing: Timing,
    timer_c: Duration,
    listeners: Vec<(TransportKind, SocketAddr)>,
    /// `[advertise]` per family, and whether the config set it (see [`Engine::advertised`]).
    advertise_v6: (Option<IpAddr>, bool),
    advertise_v4: (Option<IpAddr>, bool),
    own_ips: Vec<IpAddr>,
    domains: Vec<String>,
    server_header: String,
    limits: crate::config::Limits,
    auth: crate::config::AuthConfig,
    max_branches: usize,
    media: media::MediaPolicy,
    /// Branches waiting for the relay, by [`Output::Media`] id.
    media_waits: HashMap<u64, media::MediaWait>,
    router: Router,
    nonces: Nonces,
    nonce_counts: NonceCounts,
    bans: Bans,
    registrar: Registrar,
    /// 200s waiting for their store commit, by store request id.
    pending_replies: HashMap<u64, register::PendingReply>,
    /// Flows with keepalives, both ways.
    keepalive_flows: HashMap<u64, Flow>,
    flow_ids: HashMap<Flow, u64>,
    /// Flows whose OPTIONS keepalive awaits its answer.
    /// Flows whose OPTIONS keepalive awaits its answer, with the seconds of silence from the
    /// phone when it was sent (what an answer proves about its NAT).
    keepalives_in_flight: HashMap<u64, u64>,
    unix_at_epoch: u64,
    /// The first instant the engine saw: nonce timestamps count seconds from it.
    epoch: Option<Instant>,
    rng: Rng,
    next_id: u64,

    servers: HashMap<u64, ServerEntry>,
    server_index: HashMap<ServerKey, u64>,
    clients: HashMap<u64, ClientEntry>,
    client_index: HashMap<ClientKey, u64>,
    contexts: HashMap<u64, ProxyCtx>,
    dialogs: HashMap<u64, Dialog>,
    dialog_index: HashMap<DialogKey, u64>,
    /// Pending DNS lookups: id -> the query (results are cached) and who waits.
    lookups: HashMap<u64, (Query, proxy::LookupWaiter)>,
    dns_cache: HashMap<Query, Cached>,
    /// Call records waiting for their sessions' final statistics, and who waits for which.
    records: HashMap<u64, calls::PendingRecord>,
    record_of_session: HashMap<sixgate_relay::SessionId, u64>,
    /// What each local user's phone showed of its addresses (`sixgate ctl diagnose`); at most
    /// one entry per configured user.
    phones: HashMap<String, crate::registrar::diagnose::Evidence>,
    /// Relay sessions of calls placed by a local user: whose RTP their leg A latches to.
    latch_watch: HashMap<sixgate_relay::SessionId, String>,
    buckets: HashMap<IpAddr, Bucket>,

    timers: BTreeSet<(Instant, TimerRef)>,
    scheduled: HashMap<TimerRef, Instant>,
    out: VecDeque<Output>,
    pub stats: Stats,
}

/// The most rate-limit buckets kept; past it the oldest idle ones are pruned at once.
const MAX_BUCKETS: usize = 100_000;
const HOUSEKEEPING: Duration = Duration::from_secs(10);

impl Engine {
    pub fn new(cfg: &Config, params: EngineParams) -> Engine {
        let mut own_ips: Vec<IpAddr> = cfg.listen.iter().map(|l| l.addr.ip()).filter(|a| !a.is_unspecified()).collect();
        own_ips.extend(cfg.advertise.ipv6.map(IpAddr::V6));
        own_ips.extend(cfg.advertise.ipv4.map(IpAddr::V4));
        own_ips.sort();
        own_ips.dedup();
        Engine {
            timing: Timing::from(&cfg.timers),
            timer_c: cfg.timers.timer_c,
            listeners: cfg.listen.iter().map(|l| (l.transport, l.addr)).collect(),
            advertise_v6: (cfg.advertise.ipv6.map(IpAddr::V6), cfg.advertise.ipv6_configured),
            advertise_v4: (cfg.advertise.ipv4.map(IpAddr::V4), cfg.advertise.ipv4_configured),
            own_ips,
            domains: cfg.sip.domains.clone(),
            server_header: cfg.sip.server_header.clone(),
            limits: cfg.limits.clone(),
            auth: cfg.auth.clone(),
            max_branches: cfg.routing.max_branches,
            media: media::MediaPolicy::from(&cfg.media),
            media_waits: HashMap::new(),
            router: Router::new(cfg),
            nonces: Nonces::new(params.nonce_key, cfg.auth.nonce_lifetime_secs),
            nonce_counts: NonceCounts::default(),
            bans: Bans::new(cfg.auth.ban_failures, Duration::from_secs(cfg.auth.ban_window_secs), Duration::from_secs(cfg.auth.ban_secs)),
            registrar: Registrar::new(cfg.registrar.clone()),
            pending_replies: HashMap::new(),
            keepalive_flows: HashMap::new(),
            flow_ids: HashMap::new(),
            keepalives_in_flight: HashMap::new(),
            unix_at_epoch: params.unix_time,
            epoch: None,
            rng: Rng::new({
                // Branch key: from both secrets the driver took from the OS.
                use sha2::{Digest, Sha256};
                Sha256::new().chain_update(params.nonce_key).chain_update(params.seed.to_le_bytes()).finalize().into()
            }),
            next_id: 1,
            servers: HashMap::new(),
            server_index: HashMap::new(),
            clients: HashMap::new(),
            client_index: HashMap::new(),
            contexts: HashMap::new(),
            dialogs: HashMap::new(),
            dialog_index: HashMap::new(),
            lookups: HashMap::new(),
            dns_cache: HashMap::new(),
            records: HashMap::new(),
            record_of_session: HashMap::new(),
            phones: HashMap::new(),
            latch_watch: HashMap::new(),
            buckets: HashMap::new(),
            timers: BTreeSet::new(),
            scheduled: HashMap::new(),
            out: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// Starts the periodic work (carrier probes, housekeeping). Call once with the start time.
    pub fn start(&mut self, now: Instant) {
        self.epoch.get_or_insert(now);
        let probed: Vec<usize> = self.router.carriers().iter().enumerate().filter(|(_, c)| c.probe_interval_secs > 0).map(|(i, _)| i).collect();
        for i in probed {
            {
                // Spread the first probes a little so carriers are not probed in one burst.
                let jitter = Duration::from_millis(self.rng.next_u64() % 1000);
                self.schedule(TimerRef::Probe(i), Some(now + jitter));
            }
        }
        self.schedule(TimerRef::Housekeeping, Some(now + HOUSEKEEPING));
        if self.media.one_way_after > Duration::ZERO && self.media.mode != crate::config::RelayMode::Never {
            self.schedule(TimerRef::MediaPoll, Some(now + calls::MEDIA_POLL));
        }
    }

    /// Feeds one input. Outputs queue up for [`Engine::poll_output`].
    pub fn handle(&mut self, now: Instant, input: Input) {
        self.epoch.get_or_insert(now);
        match input {
            Input::Received { msg, from } => {
                if msg.is_request() {
                    self.stats.requests_received += 1;
                    self.on_request(now, msg, from);
                } else {
                    self.stats.responses_received += 1;
                    self.on_response(now, msg, from);
                }
            }
            Input::Resolved { id, result } => self.on_resolved(now, id, result),
            Input::SendFailed { client } => {
                self.stats.send_failures += 1;
                self.client_failed(now, client, 503);
            }
            Input::Stored { id, ok } => self.on_stored(now, id, ok),
            Input::FlowClosed { transport, local, remote } => self.end_flow(Flow { transport, local, remote }, "connection closed"),
            Input::Media { id, result } => self.on_media(now, id, result),
            Input::MediaTimeout { session, leg } => self.on_media_timeout(now, session, leg),
            Input::MediaStats { stats } => self.on_media_stats(now, stats),
            Input::MediaClosed { session, stats } => self.on_media_closed(session, stats),
            Input::MediaFirstPacket { session, leg, from } => self.on_media_first_packet(now, session, leg, from),
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Engine::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Bounded: each firing either removes its entry or moves it into the future.
        for _ in 0..1_000_000 {
            let Some(&(at, which)) = self.timers.first() else { return };
            if at > now {
                return;
            }
            self.timers.remove(&(at, which));
            self.scheduled.remove(&which);
            match which {
                TimerRef::Server(id) => self.server_timer(now, id),
                TimerRef::Client(id) => self.client_timer(now, id),
                TimerRef::Dialog(id) => self.dialog_timer(now, id),
                TimerRef::Probe(i) => self.probe_carrier(now, i),
                TimerRef::Keepalive(id) => self.keepalive_timer(now, id),
                TimerRef::Housekeeping => self.housekeeping(now),
                TimerRef::MediaPoll => self.poll_media(now),
                TimerRef::Record(id) => self.record_due(id),
            }
        }
    }

    /// How much state the engine holds. Empty once every call is over and time has passed;
    /// carrier probes run forever by design and are counted apart
    /// ([`Engine::probes_in_flight`]).
    pub fn table_sizes(&self) -> TableSizes {
        let probes = self.probes_in_flight();
        TableSizes {
            server_transactions: self.servers.len(),
            client_transactions: self.clients.len() - probes,
            proxy_contexts: self.contexts.len(),
            dialogs: self.dialogs.len(),
            dns_lookups: self.lookups.values().filter(|(_, w)| !matches!(w, proxy::LookupWaiter::Probe { .. })).count(),
            pending_store: self.pending_replies.len(),
            media_waits: self.media_waits.len(),
            records: self.records.len(),
        }
    }

    /// Carrier OPTIONS probes and keepalives of registered flows waiting for an answer: at
    /// most one per carrier or flow per Timer F.
    pub fn probes_in_flight(&self) -> usize {
        self.clients.values().filter(|c| matches!(c.owner, ClientOwner::Probe { .. } | ClientOwner::Keepalive { .. })).count()
    }

    pub fn dialogs(&self) -> impl Iterator<Item = &Dialog> {
        self.dialogs.values()
    }

    /// The username a user part names (username, alias or number), if a local user.
    pub fn local_user(&self, name: &str) -> Option<String> {
        match self.router.called(name) {
            crate::routing::Called::User(u) => Some(u.username.clone()),
            _ => None,
        }
    }

    /// What a local user's phone showed of its addresses (`sixgate ctl diagnose`).
    pub fn phone_evidence(&self, username: &str) -> Option<&crate::registrar::diagnose::Evidence> {
        self.phones.get(username)
    }

    pub fn carrier_up(&self, name: &str) -> Option<bool> {
        self.router.carriers().iter().position(|c| c.name == name).map(|i| self.router.is_up(i))
    }

    // ----- timer index -----

    fn schedule(&mut self, which: TimerRef, at: Option<Instant>) {
        if let Some(old) = self.scheduled.remove(&which) {
            self.timers.remove(&(old, which));
        }
        if let Some(at) = at {
            self.timers.insert((at, which));
            self.scheduled.insert(which, at);
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn now_secs(&self, now: Instant) -> u64 {
        self.epoch.map_or(0, |e| now.saturating_duration_since(e).as_secs())
    }

    fn transmit(&mut self, hop: Hop, bytes: Bytes, client: Option<u64>) {
        self.out.push_back(Output::Transmit(Transmit { transport: hop.transport, local: hop.local, dest: hop.dest, bytes, client }));
    }

    fn event(&mut self, e: Event) {
        self.out.push_back(Output::Event(e));
    }

    // ----- server transactions -----

    /// Sends `bytes` (a response with `status`) on server transaction `sid`, if its state
    /// allows. Removes the transaction when that ends it (reliable non-INVITE).
    fn send_response(&mut self, now: Instant, sid: u64, status: u16, bytes: Bytes) -> bool {
        let Some(e) = self.servers.get_mut(&sid) else { return false };
        if !e.txn.respond(now, status, bytes.clone(), &self.timing) {
            return false;
        }
        if status >= 200 {
            e.request = None;
        }
        let reply = e.reply;
        self.transmit(reply, bytes, None);
        self.server_rescheduled(sid);
        true
    }

    /// Builds and sends our own response to the request of server transaction `sid` (a
    /// request we forward: 100 Trying, or the final answer when no branch gave one).
    fn answer(&mut self, now: Instant, sid: u64, status: u16, reason: &'static str, headers: &[(&str, String)]) {
        let Some(e) = self.servers.get(&sid) else { return };
        let Some(request) = &e.request else { return }; // a final answer went out already
        let bytes = self.build_answer(request, status, reason, headers);
        let source = e.from.remote;
        self.count_answer(status, reason, source);
        self.send_response(now, sid, status, bytes);
    }

    /// Answers `req` without a transaction (RFC 3261 §16.11 / §8.2.6): refusals, challenges and
    /// answers to requests for us. On UDP the source is unproven, so no answer more than 3x the
    /// request is sent (a spoofed tiny request must not buy a large 407 for its victim); real
    /// requests are far larger than our answers (an INVITE carries SDP).
    fn answer_stateless(&mut self, req: &Message, from: Inbound, status: u16, reason: &'static str, headers: &[(&str, String)]) {
        let bytes = self.build_answer(req, status, reason, headers);
        if from.transport == TransportKind::Udp && bytes.len() > crate::transport::udp::MAX_UDP_AMPLIFICATION * req.bytes().len() {
            self.stats.amplification_refused += 1;
            return;
        }
        self.count_answer(status, reason, from.remote);
        let reply = Hop { transport: from.transport, local: from.local, dest: crate::transport::response_destination(req, from) };
        self.transmit(reply, bytes, None);
    }

    fn build_answer(&self, req: &Message, status: u16, reason: &str, headers: &[(&str, String)]) -> Bytes {
        let mut r = ResponseBuilder::to(req, status, reason);
        for (n, v) in headers {
            r = r.header(n, v);
        }
        if !self.server_header.is_empty() {
            r = r.header("Server", &self.server_header);
        }
        r.finish()
    }

    fn count_answer(&mut self, status: u16, reason: &'static str, source: SocketAddr) {
        if status >= 300 {
            *self.stats.generated.entry(status).or_insert(0) += 1;
            if status != 487 {
                self.event(Event::Refused { status, reason, source });
            }
        }
    }

    /// After a server transaction changed: re-index its deadline, or drop it when it ended.
    fn server_rescheduled(&mut self, sid: u64) {
        let Some(e) = self.servers.get(&sid) else { return };
        if e.txn.is_terminated() {
            self.remove_server(sid);
        } else {
            // A deadline already due (Timer J/I of 0 over TCP) fires at the next timeout call.
            let d = e.txn.deadline();
            self.schedule(TimerRef::Server(sid), d);
        }
    }

    fn remove_server(&mut self, sid: u64) {
        self.schedule(TimerRef::Server(sid), None);
        if let Some(e) = self.servers.remove(&sid) {
            if self.server_index.get(&e.key) == Some(&sid) {
                self.server_index.remove(&e.key);
            }
            if let Some(ctx) = e.ctx {
                self.server_gone(ctx);
            }
        }
    }

    fn server_timer(&mut self, now: Instant, sid: u64) {
        use crate::transaction::ServerFired;
        let Some(e) = self.servers.get_mut(&sid) else { return };
        match e.txn.on_timer(now, &self.timing) {
            ServerFired::Resend(bytes) => {
                let reply = e.reply;
                self.stats.retransmissions_sent += 1;
                self.transmit(reply, bytes, None);
            }
            ServerFired::AckTimeout => {
                self.stats.transaction_timeouts += 1;
                tracing::debug!(sid, "no ACK for our final response (Timer H)");
            }
            ServerFired::Done | ServerFired::Nothing => {}
        }
        self.server_rescheduled(sid);
    }

    // ----- client transactions -----

    /// Sends `request` (bytes we built, parsed again as `parsed`) to `hop` as a new client
    /// transaction. Returns its id.
    fn start_client(&mut self, now: Instant, parsed: Message, bytes: Bytes, hop: Hop, owner: ClientOwner, with_timer_c: bool) -> Option<u64> {
        let key = ClientKey::of(&parsed)?;
        let kind = if parsed.method() == Some(crate::message::Method::Invite) {
            crate::transaction::Kind::Invite
        } else {
            crate::transaction::Kind::NonInvite
        };
        let reliable = hop.transport == TransportKind::Tcp;
        let txn = ClientTxn::new(kind, reliable, now, &self.timing);
        let id = self.id();
        let timer_c = (with_timer_c && kind == crate::transaction::Kind::Invite).then(|| now + self.timer_c);
        self.client_index.insert(key.clone(), id);
        self.clients.insert(id, ClientEntry { txn, key, request: Some(parsed), hop, owner, ack: None, timer_c, cancel_sent: false });
        self.transmit(hop, bytes, Some(id));
        self.client_rescheduled(id);
        Some(id)
    }

    fn client_rescheduled(&mut self, cid: u64) {
        let Some(e) = self.clients.get(&cid) else { return };
        if e.txn.is_terminated() {
            self.schedule(TimerRef::Client(cid), None);
            if let Some(e) = self.clients.remove(&cid) {
                if self.client_index.get(&e.key) == Some(&cid) {
                    self.client_index.remove(&e.key);
                }
            }
        } else {
            let d = e.deadline();
            self.schedule(TimerRef::Client(cid), d);
        }
    }

    fn client_timer(&mut self, now: Instant, cid: u64) {
        use crate::transaction::ClientFired;
        let Some(e) = self.clients.get_mut(&cid) else { return };
        if e.txn.is_pending() && e.timer_c.is_some_and(|c| now >= c) {
            e.timer_c = None;
            self.timer_c_fired(now, cid);
            self.client_rescheduled(cid);
            return;
        }
        match e.txn.on_timer(now, &self.timing) {
            ClientFired::Resend => {
                if let Some(bytes) = e.request.as_ref().map(Message::to_bytes) {
                    let hop = e.hop;
                    self.stats.retransmissions_sent += 1;
                    self.transmit(hop, bytes, Some(cid));
                }
            }
            ClientFired::Timeout => {
                self.stats.transaction_timeouts += 1;
                let owner = e.owner;
                self.client_rescheduled(cid);
                self.client_outcome(now, cid, owner, 408, None);
                return;
            }
            ClientFired::Done | ClientFired::Nothing => {}
        }
        self.client_rescheduled(cid);
    }

    /// A client transaction ended without a response (transport error).
    fn client_failed(&mut self, now: Instant, cid: u64, status: u16) {
        let Some(e) = self.clients.get_mut(&cid) else { return };
        if !e.txn.is_pending() {
            return;
        }
        e.txn.terminate();
        let owner = e.owner;
        self.client_rescheduled(cid);
        self.client_outcome(now, cid, owner, status, None);
    }

    /// A response matched a client transaction (or it timed out: `resp` is `None` with 408/503).
    fn client_outcome(&mut self, now: Instant, cid: u64, owner: ClientOwner, status: u16, resp: Option<Message>) {
        match owner {
            ClientOwner::Branch { ctx, branch } => self.branch_response(now, ctx, branch, cid, status, resp),
            ClientOwner::Probe { carrier } => {
                // Any final answer, even an error, shows the carrier is alive; only silence
                // (Timer F) or a transport failure marks it down.
                if status >= 200 {
                    self.carrier_health(carrier, resp.is_some());
                }
            }
            ClientOwner::Ours => {}
            ClientOwner::Keepalive { flow } => {
                if status >= 200 {
                    self.keepalive_outcome(now, flow, resp.is_some());
                }
            }
        }
    }

    /// A response must come from the address we sent the request to, or, for a carrier, from
    /// one of its source CIDRs (an SBC cluster may answer from another node).
    fn response_source_ok(&self, cid: u64, src: IpAddr) -> bool {
        let Some(e) = self.clients.get(&cid) else { return false };
        // The same address, or for IPv6 the same /64 (a phone may answer from a privacy
        // address; branches are unguessable, so this admits no forgery from afar).
        if dialog::same_network(src, e.hop.dest.ip()) {
            return true;
        }
        let carrier = match e.owner {
            ClientOwner::Probe { carrier } => Some(carrier),
            ClientOwner::Branch { ctx, branch } => self.contexts.get(&ctx).and_then(|c| c.branch_carrier(branch)),
            ClientOwner::Ours | ClientOwner::Keepalive { .. } => None,
        };
        carrier.is_some_and(|c| self.router.carriers()[c].source_cidrs.iter().any(|n| n.contains(src)))
    }

    fn carrier_health(&mut self, carrier: usize, up: bool) {
        if self.router.set_up(carrier, up) {
            let name = self.router.carriers()[carrier].name.clone();
            tracing::info!(carrier = %name, up, "carrier health changed");
            self.event(if up { Event::CarrierUp { name } } else { Event::CarrierDown { name } });
        }
    }

    fn on_response(&mut self, now: Instant, msg: Message, from: Inbound) {
        use crate::transaction::ClientReceived;
        let Some(status) = msg.status() else { return };
        let Some(key) = ClientKey::of(&msg) else {
            self.stats.stray_responses += 1;
            return;
        };
        let Some(&cid) = self.client_index.get(&key) else {
            self.stats.stray_responses += 1;
            tracing::debug!(status, "response matches no transaction: dropped");
            return;
        };
        if !self.response_source_ok(cid, from.remote.ip()) {
            // Someone else answering for the hop we sent to: a forged response. (Branches are
            // unguessable, so this takes an on-path attacker; counted apart.)
            self.stats.responses_from_elsewhere += 1;
            return;
        }
        let Some(e) = self.clients.get_mut(&cid) else { return };
        let was_pending = e.txn.is_pending();
        match e.txn.on_response(now, status, &self.timing) {
            ClientReceived::Absorbed => {
                self.stats.retransmissions_absorbed += 1;
                if let Some(ack) = e.ack.clone() {
                    let hop = e.hop;
                    self.transmit(hop, ack, None);
                }
                return;
            }
            ClientReceived::PassUp => {}
        }
        // A non-2xx final answer to an INVITE is acknowledged hop by hop (§17.1.1.3).
        let mut ack_out = None;
        if was_pending && status >= 300 && e.txn.kind == crate::transaction::Kind::Invite {
            if let Some(request) = &e.request {
                let ack = edit::ack_for(request, &msg);
                e.ack = Some(ack.clone());
                ack_out = Some((e.hop, ack));
            }
        }
        if status >= 200 {
            e.timer_c = None;
            e.request = None;
        } else if e.timer_c.is_some() && status > 100 {
            // §16.7 step 2: a provisional answer restarts Timer C.
            e.timer_c = Some(now + self.timer_c);
        }
        let owner = e.owner;
        if let Some((hop, ack)) = ack_out {
            self.transmit(hop, ack, None);
        }
        self.client_rescheduled(cid);
        // Only the first final response (and, for INVITE, every 2xx) reaches the owner.
        if was_pending || (200..300).contains(&status) {
            self.client_outcome(now, cid, owner, status, Some(msg));
        }
    }

    // ----- dialogs -----

    fn dialog_timer(&mut self, now: Instant, did: u64) {
        let Some(d) = self.dialogs.get(&did) else { return };
        let idle_until = d.last_activity + Duration::from_secs(self.limits.dialog_idle_secs);
        if now >= idle_until {
            self.end_call(now, did, "idle timeout");
        } else {
            self.schedule(TimerRef::Dialog(did), Some(idle_until));
        }
    }

    /// Ends a dialog: its relay sessions go, and a confirmed call's end is told and recorded.
    fn end_call(&mut self, now: Instant, did: u64, reason: &'static str) {
        if let Some(d) = self.remove_dialog(did, reason) {
            if !d.early {
                self.record_dialog(now, &d, reason);
            }
        }
    }

    /// Forgets a dialog and deletes its relay sessions; the dialog, if there was one.
    fn remove_dialog(&mut self, did: u64, reason: &'static str) -> Option<Dialog> {
        self.schedule(TimerRef::Dialog(did), None);
        let d = self.dialogs.remove(&did)?;
        for k in DialogKey::both(&d) {
            if self.dialog_index.get(&k) == Some(&did) {
                self.dialog_index.remove(&k);
            }
        }
        for s in d.media.iter().flat_map(|m| m.call.streams.iter().flatten()) {
            self.media_op(MediaOp::Delete(s.session));
        }
        if !d.early {
            self.event(Event::CallEnded { call_id: String::from_utf8_lossy(&d.call_id).into_owned(), reason });
        }
        Some(d)
    }

    // ----- housekeeping -----

    fn housekeeping(&mut self, now: Instant) {
        let rate = f64::from(self.limits.invite_rate_per_source);
        let burst = f64::from(self.limits.invite_burst_per_source);
        // A bucket that would be full again is the same as no bucket.
        self.buckets.retain(|_, b| b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst);
        self.dns_cache.retain(|_, c| c.until > now);
        self.bans.prune(now);
        let oldest = self.now_secs(now).saturating_sub(self.auth.nonce_lifetime_secs);
        self.nonce_counts.prune(oldest);
        self.purge_bindings(now);
        self.schedule(TimerRef::Housekeeping, Some(now + HOUSEKEEPING));
    }

    /// Takes one INVITE token for `source`; false when its rate is exceeded.
    fn take_invite_token(&mut self, now: Instant, source: IpAddr) -> bool {
        let key = crate::transport::source_key(source);
        let rate = f64::from(self.limits.invite_rate_per_source);
        let burst = f64::from(self.limits.invite_burst_per_source);
        if self.buckets.len() >= MAX_BUCKETS && !self.buckets.contains_key(&key) {
            self.housekeeping(now);
            if self.buckets.len() >= MAX_BUCKETS {
                return false; // a flood from very many sources: refuse new ones until pruned
            }
        }
        let b = self.buckets.entry(key).or_insert(Bucket { tokens: burst, last: now });
        b.tokens = (b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    // ----- DNS -----

    /// A cached answer for `q`, if fresh.
    fn cached(&self, now: Instant, q: &Query) -> Option<Resolution> {
        self.dns_cache.get(q).filter(|c| c.until > now).map(|c| c.resolution.clone())
    }

    fn on_resolved(&mut self, now: Instant, id: u64, result: Result<Resolution, DnsError>) {
        let Some((query, waiter)) = self.lookups.remove(&id) else { return };
        if let Ok(r) = &result {
            let ttl = r.ttl.clamp(Duration::from_secs(1), Duration::from_secs(3600));
            self.dns_cache.insert(query, Cached { resolution: r.clone(), until: now + ttl });
        }
        self.lookup_done(now, waiter, result);
    }

    /// A hop for `target` from one of our listeners of the same family and transport.
    fn hop_to(&self, transport: TransportKind, dest: SocketAddr) -> Option<Hop> {
        let (_, local) = self.listeners.iter().find(|(t, a)| *t == transport && a.is_ipv6() == dest.is_ipv6())?;
        Some(Hop { transport, local: *local, dest })
    }

    /// The address we put in Via and Record-Route on the side of `hop`: the advertised address
    /// of its family and the port of its listener.
    /// A configured `[advertise]` of that family wins (1:1 NAT: listen on a private address,
    /// advertise the public one); otherwise each listener names its own address, and the
    /// defaulted advertise address only stands in for an unspecified (wildcard) listener.
    fn advertised(&self, hop: &Hop) -> String {
        let (adv, configured) = if hop.local.is_ipv6() { self.advertise_v6 } else { self.advertise_v4 };
        let ip = adv.filter(|_| configured || hop.local.ip().is_unspecified()).unwrap_or(hop.local.ip());
        match ip {
            IpAddr::V6(a) => format!("[{a}]:{}", hop.local.port()),
            IpAddr::V4(a) => format!("{a}:{}", hop.local.port()),
        }
    }

    fn is_own(&self, ip: IpAddr) -> bool {
        self.own_ips.contains(&ip)
    }
}
