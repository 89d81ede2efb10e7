//! The registrar inside the engine: REGISTER requests (digest with 401, then the binding rules
//! of [`crate::registrar`]), the 200 held back until the store has made the change durable,
//! keepalives to NATed flows (OPTIONS or CRLF, RFC 5626 §3.5 / RFC 3261 §11) and the end of
//! flows (TCP closed, keepalives unanswered).

use super::{ClientOwner, Engine, Event, Hop, Output, ServerEntry, TimerRef};
use crate::config::{KeepaliveKind, TransportKind};
use crate::message::{HeaderName, Message, Method};
use crate::registrar::{self, Change, Flow, RegisterRequest};
use crate::routing::Called;
use crate::transaction::{Kind, ServerKey, ServerTxn};
use crate::transport::{self, Inbound};
use bytes::Bytes;
use std::time::{Duration, Instant};

/// Option tags we support as a registrar (RFC 5626 outbound, RFC 3327 path).
pub const REGISTRAR_SUPPORTED: &[&str] = &["outbound", "path"];

/// A 200 waiting for its store commit.
pub(super) struct PendingReply {
    sid: u64,
    bytes: Bytes,
}

impl Engine {
    /// A REGISTER for one of our domains (Route processing already left nothing foreign).
    pub(super) fn on_register(&mut self, now: Instant, msg: Message, from: Inbound, key: ServerKey) {
        let unsupported: Vec<String> = msg
            .headers_named(HeaderName::Require)
            .flat_map(|h| msg.slice(h.value).split(|&b| b == b',').map(|t| String::from_utf8_lossy(t.trim_ascii()).into_owned()).collect::<Vec<_>>())
            .filter(|t| !t.is_empty() && !REGISTRAR_SUPPORTED.iter().any(|s| s.eq_ignore_ascii_case(t)))
            .collect();
        if !unsupported.is_empty() {
            self.answer_stateless(&msg, from, 420, "Bad Extension", &[("Unsupported", unsupported.join(", "))]);
            return;
        }
        let user = match self.check_credentials(now, &msg, from.remote.ip(), super::proxy::AuthKind::Www, true) {
            Ok(u) => u,
            Err((status, reason, headers)) => {
                self.answer_stateless(&msg, from, status, reason, &headers);
                return;
            }
        };
        // The address-of-record is the To URI: ours, and the authenticated user's (by name,
        // number or alias). No registering somebody else's phone.
        let to = msg.to.uri;
        let aor_user = to
            .user
            .filter(|_| to.is_sip() && to.host.is_some_and(|h| self.host_is_ours(&msg, h)))
            .map(|u| String::from_utf8_lossy(u.of(msg.bytes())).into_owned());
        let aor = match aor_user.as_deref().map(|u| self.router.called(u)) {
            Some(Called::User(u)) if u.username == user => u.username.clone(),
            Some(Called::User(_)) => {
                self.stats.auth_failures += 1;
                self.answer_stateless(&msg, from, 403, "Forbidden (To names another user's address-of-record)", &[]);
                return;
            }
            _ => {
                self.answer_stateless(&msg, from, 404, "Not Found (To is not an address-of-record of ours)", &[]);
                return;
            }
        };
        if self.servers.len() >= self.limits.max_transactions {
            // Each accepted REGISTER holds a transaction for Timer J: the same cap as calls.
            self.answer_stateless(&msg, from, 503, "Service Unavailable (transaction limit)", &[("Retry-After", "5".into())]);
            return;
        }
        let flow = Flow { transport: from.transport, local: from.local, remote: from.remote };
        let unix = self.unix_now(now);
        let outcome = RegisterRequest::decode(&msg, &aor, flow).and_then(|req| self.registrar.register(&req, unix));
        let applied = match outcome {
            Ok(a) => a,
            Err((status, reason, headers)) => {
                self.stats.registrations_refused += 1;
                let headers: Vec<(&str, String)> = headers.into_iter().collect();
                self.answer_stateless(&msg, from, status, reason, &headers);
                return;
            }
        };
        self.stats.registrations += 1;
        let seen = crate::registrar::diagnose::Signaling::of(&msg, from.remote, from.transport != TransportKind::Udp, unix);
        self.phones.entry(aor.clone()).or_default().register = Some(seen);
        for f in &applied.new_flows {
            self.flow_started(now, *f);
        }
        // The 200: every current binding with its remaining time, the Date (§10.3 step 8).
        let mut headers: Vec<(&str, String)> = self.registrar.contact_lines(&aor, unix).into_iter().map(|c| ("Contact", c)).collect();
        headers.push(("Date", registrar::http_date(unix)));
        if applied.outbound {
            headers.push(("Require", "outbound".into()));
            headers.push(("Flow-Timer", self.registrar.config().flow_timer_secs.to_string()));
        }
        for p in msg.headers_named(HeaderName::Path) {
            headers.push(("Path", msg.text(p.value).into_owned()));
        }
        headers.push(("Supported", REGISTRAR_SUPPORTED.join(", ")));
        let bytes = self.build_answer(&msg, 200, "OK", &headers);
        for c in &applied.changes {
            if let Change::Put(b) = c {
                self.event(Event::Registered { aor: b.aor.clone(), contact: b.contact.clone(), expires_in: b.expires_at.saturating_sub(unix), nat: b.nat.clone() });
            }
        }
        // A server transaction absorbs retransmissions while the store works (a repeated
        // REGISTER with the same CSeq must not be judged out of order).
        let reply = Hop { transport: from.transport, local: from.local, dest: transport::response_destination(&msg, from) };
        let sid = self.id();
        self.server_index.insert(key.clone(), sid);
        self.servers.insert(sid, ServerEntry { txn: ServerTxn::new(Kind::NonInvite, from.transport == TransportKind::Tcp), key, request: Some(msg), from, reply, ctx: None });
        // Even a 200 that changes nothing (a query) goes through the store's queue: it is FIFO,
        // so the answer cannot list a binding whose commit is still under way.
        let id = self.id();
        self.pending_replies.insert(id, PendingReply { sid, bytes });
        self.out.push_back(Output::Store { id, changes: applied.changes });
    }

    /// The store finished commit `id`: the 200 goes out, or a 500 when it failed (the phone
    /// retries; the binding stays in memory and is written with the next change).
    pub(super) fn on_stored(&mut self, now: Instant, id: u64, ok: bool) {
        let Some(p) = self.pending_replies.remove(&id) else { return };
        if ok {
            self.send_response(now, p.sid, 200, p.bytes);
        } else {
            self.stats.store_failures += 1;
            self.answer(now, p.sid, 500, "Server Internal Error (registration store unavailable)", &[("Retry-After", "5".into())]);
        }
    }

    /// Loads stored bindings at start; expired ones are deleted from the store.
    pub fn load_bindings(&mut self, now: Instant, bindings: Vec<registrar::Binding>) {
        let unix = self.unix_now(now);
        let gone = self.registrar.load(bindings, unix);
        let flows: Vec<Flow> = self.registrar.all().map(|b| b.flow).collect();
        for f in flows {
            if !self.flow_ids.contains_key(&f) {
                self.flow_started(now, f);
            }
        }
        self.persist(gone);
    }

    /// Changes nobody waits for (expiry, dead flows) still go to the store.
    fn persist(&mut self, changes: Vec<Change>) {
        if !changes.is_empty() {
            let id = self.id();
            self.out.push_back(Output::Store { id, changes });
        }
    }

    /// A flow got its first binding: NATed UDP flows get keepalives.
    fn flow_started(&mut self, now: Instant, flow: Flow) {
        let interval = self.registrar.config().keepalive_interval_secs;
        let nat = self.registrar.flow(&flow).is_some_and(|f| f.nat);
        if flow.transport != TransportKind::Udp || interval == 0 || !nat {
            return;
        }
        let id = self.id();
        self.flow_ids.insert(flow, id);
        self.keepalive_flows.insert(id, flow);
        // Spread the pings over the interval so a restart does not ping every phone at once.
        let jitter = Duration::from_millis(self.rng.next_u64() % (interval * 1000));
        self.schedule(TimerRef::Keepalive(id), Some(now + jitter.max(Duration::from_secs(1)).min(Duration::from_secs(interval))));
    }

    /// Time for flow `id`'s keepalive.
    pub(super) fn keepalive_timer(&mut self, now: Instant, id: u64) {
        let Some(&flow) = self.keepalive_flows.get(&id) else { return };
        let Some(state) = self.registrar.flow(&flow) else {
            // Its bindings are gone: no more pings.
            self.keepalive_flows.remove(&id);
            self.flow_ids.remove(&flow);
            return;
        };
        let (nat, contact) = (state.nat, state.contact.clone());
        let silence = self.unix_now(now).saturating_sub(state.last_seen);
        let interval = self.registrar.config().keepalive_interval_secs;
        if !nat || interval == 0 {
            self.keepalive_flows.remove(&id);
            self.flow_ids.remove(&flow);
            return;
        }
        self.schedule(TimerRef::Keepalive(id), Some(now + Duration::from_secs(interval)));
        let hop = Hop { transport: flow.transport, local: flow.local, dest: flow.remote };
        self.stats.keepalives_sent += 1;
        match self.registrar.config().keepalive {
            KeepaliveKind::Crlf => self.transmit(hop, Bytes::from_static(transport::PING), None),
            KeepaliveKind::Options => {
                // One ping in flight per flow: a slow answer is not two misses.
                if self.keepalives_in_flight.contains_key(&id) {
                    return;
                }
                self.keepalives_in_flight.insert(id, silence);
                self.send_options(now, hop, &contact, ClientOwner::Keepalive { flow: id });
            }
        }
    }

    /// The answer (or silence) to an OPTIONS keepalive. Any final answer, even an error, proves
    /// the phone and its NAT mapping are there.
    pub(super) fn keepalive_outcome(&mut self, now: Instant, id: u64, answered: bool) {
        let silence = self.keepalives_in_flight.remove(&id);
        let Some(&flow) = self.keepalive_flows.get(&id) else { return };
        let unix = self.unix_now(now);
        if let Some(s) = silence {
            self.registrar.flow_learned(&flow, s, answered);
        }
        if answered {
            self.registrar.flow_alive(&flow, unix);
            return;
        }
        self.stats.keepalive_failures += 1;
        if self.registrar.flow_missed(&flow) {
            self.end_flow(flow, "keepalives unanswered");
        }
    }

    /// A flow is gone (TCP closed by either side, keepalives unanswered): its bindings go too.
    pub(super) fn end_flow(&mut self, flow: Flow, reason: &'static str) {
        let changes = self.registrar.flow_dead(&flow);
        if changes.is_empty() {
            return;
        }
        self.stats.flows_dead += 1;
        tracing::info!(remote = %flow.remote, transport = ?flow.transport, bindings = changes.len(), reason, "flow dead: its bindings are removed");
        self.event(Event::FlowDead { remote: flow.remote, reason });
        if let Some(id) = self.flow_ids.remove(&flow) {
            self.keepalive_flows.remove(&id);
            self.schedule(TimerRef::Keepalive(id), None);
        }
        self.persist(changes);
    }

    /// Bindings whose time is up leave the table and the store.
    pub(super) fn purge_bindings(&mut self, now: Instant) {
        let unix = self.unix_now(now);
        let gone = self.registrar.purge_expired(unix);
        self.stats.bindings_expired += gone.len() as u64;
        self.persist(gone);
    }

    /// A request arriving over a flow that carries bindings shows it is alive.
    pub(super) fn note_flow_traffic(&mut self, now: Instant, from: Inbound) {
        let flow = Flow { transport: from.transport, local: from.local, remote: from.remote };
        if self.registrar.flow(&flow).is_some() {
            let unix = self.unix_now(now);
            self.registrar.flow_alive(&flow, unix);
        }
    }

    /// Whether a request is a REGISTER for us (not one to relay elsewhere).
    pub(super) fn is_register_for_us(&self, msg: &Message) -> bool {
        msg.method() == Some(Method::Register)
            && msg.request_uri().is_some_and(|u| u.is_sip() && u.host.is_some_and(|h| self.host_is_ours(msg, h)))
    }

    /// Unix seconds at `now` (the wall clock given at start plus the monotonic time since).
    pub fn unix_now(&self, now: Instant) -> u64 {
        self.unix_at_epoch + self.now_secs(now)
    }

    pub fn registrar(&self) -> &registrar::Registrar {
        &self.registrar
    }
}
