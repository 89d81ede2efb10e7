//! The proxy core (RFC 3261 §16): request validation, Route processing, the routing decision
//! with digest authentication, forwarding on one or more branches with Record-Route, response
//! selection and forwarding, CANCEL, failover between carriers, and carrier digest answers.
//!
//! The security rule lives here: a request reaches a carrier only when a local user
//! authenticated it, or when it belongs to a dialog such a request created — and then it comes
//! from a party of that dialog and goes to the other party's stored target, never to where its
//! own Route or Request-URI points. Everything we refuse is answered statelessly.

use super::dialog::{same_network, Dialog, DialogKey, Leg};
use super::edit::{self, Forward};
use super::{ClientOwner, Engine, Event, Hop, Output, ServerEntry, TimerRef};
use crate::auth::{self, Challenge, Verdict};
use crate::config::{Secret, TargetUri, TransportKind};
use crate::message::{parse, HeaderName, Host, Message, Method, Scheme, Span};
use crate::routing::dns::{DnsError, Query, Resolution};
use crate::routing::Called;
use crate::transaction::{Kind, ServerKey, ServerState, ServerTxn};
use crate::media::offer::Side;
use crate::transport::{self, Inbound};
use bytes::Bytes;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// Methods the proxy forwards and answers (OPTIONS to itself).
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK, MESSAGE, REFER, NOTIFY, SUBSCRIBE, REGISTER";
/// Option tags a proxy-required extension may name (none: Outbound and Path are the
/// registrar's, see [`super::register::REGISTRAR_SUPPORTED`]).
pub const SUPPORTED: &[&str] = &[];
pub const ACCEPT: &str = "application/sdp";
/// The prefix of every branch we generate; what follows it is the loop-detection hash.
const BRANCH_PREFIX: &str = "z9hG4bK-sg";

/// Where a branch goes before DNS.
#[derive(Clone, Debug)]
pub(super) enum Dest {
    Hop(Hop),
    Lookup(Query),
}

/// One place to try.
#[derive(Clone, Debug)]
pub(super) struct Candidate {
    /// A new Request-URI, or keep the request's.
    ruri: Option<String>,
    /// Route header lines to add (a registered binding's Path, RFC 3327 §5.3).
    route: Vec<String>,
    dest: Dest,
    carrier: Option<usize>,
    /// The destination is a phone behind NAT (its binding says so): its media leg latches.
    pub(super) nat: bool,
}

#[derive(Debug)]
pub(super) struct Branch {
    client: Option<u64>,
    candidate: Candidate,
    hop: Hop,
    final_status: Option<u16>,
    provisional: bool,
    /// A provisional answer beyond 100 arrived (the callee was alerted): no failover after that,
    /// or the callee's phone would ring on a second route.
    alerted: bool,
    cancel_pending: bool,
    auth_retried: bool,
    /// The CSeq number this branch's request carried.
    cseq: u32,
    /// Its relay sessions, when its media is relayed (until an early dialog takes them).
    pub(super) media: Option<super::media::BranchMedia>,
    /// The early dialog a provisional answer with a To tag made (RFC 3261 §12.1): PRACK and
    /// UPDATE travel in it before the 2xx, and it owns the branch's relay sessions.
    pub(super) early: Option<u64>,
}

/// RFC 3261 §16 "response context": one per forwarded request.
#[derive(Debug)]
pub struct ProxyCtx {
    server: u64,
    /// The request as received, while a branch may still need it (new branches, carrier
    /// credentials, a dialog from a 2xx); dropped once every branch has its final answer.
    pub(super) request: Option<Message>,
    pub(super) method: Method,
    /// The CSeq number the caller used (responses are set back to it).
    original_cseq: u32,
    pub(super) from: Inbound,
    is_invite: bool,
    /// Dialog-creating requests get Record-Route.
    record_route: bool,
    pop_routes: usize,
    pop_last_route: bool,
    drop_lines: Vec<Span>,
    pub(super) branches: Vec<Branch>,
    serial: VecDeque<Candidate>,
    /// The best final response so far: status, bytes to send upstream (our Via popped), or
    /// `None` bytes when we must generate it.
    best: Option<(u16, Option<Bytes>)>,
    pub(super) final_sent: bool,
    pub(super) cancelled: bool,
    lookups_pending: usize,
    /// Branches waiting for their relay sessions.
    pub(super) media_pending: usize,
    /// Why the relay could not take the call (answered when nothing better came back).
    pub(super) media_refused: Option<(u16, &'static str)>,
    /// Which side of the call sent this request (the caller for a new INVITE).
    pub(super) side: Side,
    pub(super) user: Option<String>,
    pub(super) carrier_origin: Option<usize>,
    /// The dialog an in-dialog request belongs to; BYE ends it.
    pub(super) dialog: Option<u64>,
    /// Added to the CSeq of this request on every branch (in-dialog toward a carrier that took
    /// one CSeq number for its digest round).
    cseq_offset: u32,
    /// When the request arrived (a call record's start).
    started: Instant,
}

impl ProxyCtx {
    /// The carrier branch `index` went to, if it went to one.
    pub(super) fn branch_carrier(&self, index: usize) -> Option<usize> {
        self.branches.get(index).and_then(|b| b.candidate.carrier)
    }
}

/// Which digest exchange: a proxy's (407) or a registrar's (401), RFC 3261 §22.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AuthKind {
    Proxy,
    Www,
}

/// An admitted in-dialog request: its dialog and where it goes.
struct InDialog {
    id: u64,
    target: Hop,
    /// The carrier on the receiving side (its challenges are answered with its credentials).
    carrier: Option<usize>,
    cseq_offset: u32,
    side: Side,
}

/// Who waits for a DNS lookup.
#[derive(Debug)]
pub(super) enum LookupWaiter {
    Branch { ctx: u64, candidate: Candidate },
    Probe { carrier: usize },
}

/// What the proxy decided for a new request.
enum Decision {
    Answer(u16, &'static str, Vec<(&'static str, String)>),
    Forward(Plan),
}

struct Plan {
    parallel: Vec<Candidate>,
    serial: VecDeque<Candidate>,
    record_route: bool,
    user: Option<String>,
    carrier_origin: Option<usize>,
    dialog: Option<u64>,
    cseq_offset: u32,
    side: Side,
}

/// Route processing of one request (§16.4): how many of our own Route entries lead it, and
/// whether a strict router put our URI into the Request-URI.
struct Routing {
    pop_routes: usize,
    pop_last_route: bool,
    /// Route entries that are not ours remain (a preloaded route).
    foreign_routes: bool,
    /// Strict-router compatibility: the Request-URI to use instead.
    new_ruri: Option<String>,
}

fn reason_of(status: u16) -> &'static str {
    match status {
        408 => "Request Timeout",
        480 => "Temporarily Unavailable",
        487 => "Request Terminated",
        500 => "Server Internal Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Which final response wins (§16.7 step 6): 6xx, else the lowest class, preferring 401/407
/// and 415/420/484 within 4xx as they can be fixed by the caller; lower is better.
fn rank(status: u16) -> (u16, u16) {
    let class = status / 100;
    match class {
        6 => (0, status),
        4 if matches!(status, 401 | 407 | 415 | 420 | 484) => (4, 0),
        _ => (class, status),
    }
}

impl crate::auth::Credentials for crate::routing::Router {
    fn secret(&self, username: &str) -> Option<&Secret> {
        self.user(username).map(|u| &u.secret)
    }
}

impl Engine {
    pub(super) fn on_request(&mut self, now: Instant, mut msg: Message, from: Inbound) {
        transport::stamp_received(&mut msg, from.remote);
        let method = msg.method().unwrap_or(Method::Extension);
        if method == Method::Ack {
            self.on_ack(now, msg, from);
            return;
        }
        let key = ServerKey::of(&msg, from.transport);
        if let Some(&sid) = self.server_index.get(&key) {
            self.stats.retransmissions_absorbed += 1;
            if let Some(e) = self.servers.get(&sid) {
                if let Some(bytes) = e.txn.on_request_retransmission() {
                    let reply = e.reply;
                    self.transmit(reply, bytes, None);
                }
            }
            return;
        }
        if method == Method::Cancel {
            self.on_cancel(now, &msg, from, &key);
            return;
        }
        self.note_flow_traffic(now, from);
        // Only requests we forward get a server transaction. Everything we answer ourselves
        // (refusals, challenges, OPTIONS to us) is answered statelessly (RFC 3261 §16.11): a
        // spoofed request then holds no memory and buys exactly one answer, with no Timer G
        // retransmissions towards its victim. A retransmission is simply answered again.
        // Route processing (§16.4) once: the decision and the forwarding both use it.
        let routing = self.route_processing(&msg);
        if !routing.foreign_routes && routing.new_ruri.is_none() && self.is_register_for_us(&msg) {
            self.on_register(now, msg, from, key);
            return;
        }
        match self.decide(now, &msg, from, &routing) {
            Decision::Answer(status, reason, headers) => self.answer_stateless(&msg, from, status, reason, &headers),
            Decision::Forward(plan) => {
                if self.servers.len() >= self.limits.max_transactions {
                    let retry = [("Retry-After", "5".to_string())];
                    self.answer_stateless(&msg, from, 503, "Service Unavailable (transaction limit)", &retry);
                    return;
                }
                let kind = if method == Method::Invite { Kind::Invite } else { Kind::NonInvite };
                let reply = Hop { transport: from.transport, local: from.local, dest: transport::response_destination(&msg, from) };
                let sid = self.id();
                let txn = ServerTxn::new(kind, from.transport == TransportKind::Tcp);
                self.server_index.insert(key.clone(), sid);
                self.servers.insert(sid, ServerEntry { txn, key, request: Some(msg.clone()), from, reply, ctx: None });
                if kind == Kind::Invite {
                    // §16.2 / §17.2.1: 100 Trying at once, so the caller stops retransmitting.
                    self.answer(now, sid, 100, "Trying", &[]);
                }
                self.forward(now, sid, msg, from, plan, &routing);
            }
        }
    }

    /// The routing decision for a new request (§16.3 validation, §16.4 Route processing,
    /// then local user / carrier / refusal).
    fn decide(&mut self, now: Instant, req: &Message, from: Inbound, routing: &Routing) -> Decision {
        use Decision::Answer;
        let method = req.method().unwrap_or(Method::Extension);
        let Some(uri) = req.request_uri() else { return Answer(400, "Bad Request", vec![]) };
        if !matches!(uri.scheme, Scheme::Sip | Scheme::Sips | Scheme::Tel) {
            return Answer(416, "Unsupported URI Scheme", vec![]);
        }
        // §16.3 step 6: Proxy-Require names extensions the proxy must support; none are.
        let unsupported = unsupported_tags(req, HeaderName::ProxyRequire);
        if !unsupported.is_empty() {
            return Answer(420, "Bad Extension", vec![("Unsupported", unsupported.join(", "))]);
        }
        let for_us = routing.new_ruri.is_none() && !routing.foreign_routes && self.addressed_to_us(req);
        // RFC 3261 §11 / §16.3 step 3: an OPTIONS that cannot go further is answered by us.
        let options_here = method == Method::Options && req.max_forwards == Some(0) && req.to.tag.is_none();
        if req.max_forwards == Some(0) && !for_us && !options_here {
            return Answer(483, "Too Many Hops", vec![]);
        }
        if self.is_loop(req) {
            return Answer(482, "Loop Detected", vec![]);
        }
        if req.to.tag.is_some() {
            return self.decide_in_dialog(now, req, from, routing);
        }
        if for_us || options_here {
            return self.answer_for_us(req, method);
        }
        if routing.foreign_routes {
            // A preloaded route would let a caller choose where we send: refused out of dialog.
            return Answer(403, "Forbidden (preloaded Route not allowed)", vec![]);
        }
        // The called party: the user part of a sip: URI of our domain, or a tel: number.
        let buf = req.bytes();
        let user_part = match uri.scheme {
            Scheme::Tel => {
                let s = String::from_utf8_lossy(uri.span.of(buf));
                s.split_once(':').map(|(_, n)| n.split(';').next().unwrap_or("").to_string()).unwrap_or_default()
            }
            _ => {
                if !uri.host.is_some_and(|h| self.host_is_ours(req, h)) {
                    return Answer(403, "Relaying Denied", vec![]);
                }
                match uri.user {
                    Some(u) => String::from_utf8_lossy(u.of(buf)).into_owned(),
                    None => return Answer(404, "Not Found", vec![]),
                }
            }
        };

        // Calls from a carrier's network: trusted, but only towards local users.
        if let Some(carrier) = self.router.carrier_by_source(from.remote.ip()) {
            return match self.router.called(&user_part) {
                Called::User(u) => {
                    let name = u.username.clone();
                    self.plan_user(now, &name, method, None, Some(carrier))
                }
                _ => Answer(404, "Not Found", vec![]),
            };
        }

        if method == Method::Invite && !self.take_invite_token(now, from.remote.ip()) {
            self.stats.rate_limited += 1;
            return Answer(503, "Service Unavailable (rate limit)", vec![("Retry-After", "2".into())]);
        }
        let user = match self.authenticate(now, req, from.remote.ip()) {
            Ok(u) => u,
            Err(d) => return d,
        };
        if creates_dialog(method) && self.dialogs.len() >= self.limits.max_dialogs {
            return Answer(503, "Service Unavailable (call limit)", vec![("Retry-After", "10".into())]);
        }
        match self.router.called(&user_part) {
            Called::User(u) => {
                let name = u.username.clone();
                self.plan_user(now, &name, method, Some(user), None)
            }
            Called::Number(number) => {
                let order = {
                    let rng = &mut self.rng;
                    self.router.carriers_for(&number, || rng.next_u64())
                };
                if order.is_empty() {
                    let any = self.router.carriers().iter().any(|c| c.prefixes.iter().any(|p| p == "+" || number.starts_with(p.as_str())));
                    return if any {
                        Answer(503, "Service Unavailable (no carrier available)", vec![])
                    } else {
                        Answer(404, "Not Found (no route to this number)", vec![])
                    };
                }
                let mut serial: VecDeque<Candidate> = order
                    .into_iter()
                    .filter_map(|c| {
                        let ruri = self.router.carrier_request_uri(c, &number);
                        let dest = self.dest_of(&self.router.carriers()[c].uri)?;
                        Some(Candidate { ruri: Some(ruri), route: Vec::new(), dest, carrier: Some(c), nat: false })
                    })
                    .collect();
                let Some(first) = serial.pop_front() else {
                    return Answer(503, "Service Unavailable (no carrier reachable from our listeners)", vec![]);
                };
                Decision::Forward(Plan {
                    parallel: vec![first],
                    serial,
                    record_route: record_routes(method),
                    user: Some(user),
                    carrier_origin: None,
                    dialog: None,
                    cseq_offset: 0,
                    side: Side::Caller,
                })
            }
            Called::Unknown => Answer(404, "Not Found", vec![]),
        }
    }

    /// Forks to every live registered binding of `username`, each over its own flow, plus the
    /// user's static contacts; 480 when there is none (430 when Outbound flows just failed).
    fn plan_user(&self, now: Instant, username: &str, method: Method, user: Option<String>, carrier_origin: Option<usize>) -> Decision {
        let unix = self.unix_now(now);
        let registered = self.registrar.lookup(username, unix).into_iter().map(|b| Candidate {
            ruri: Some(b.contact.clone()),
            route: b.path.clone(),
            dest: Dest::Hop(Hop { transport: b.flow.transport, local: b.flow.local, dest: b.flow.remote }),
            carrier: None,
            nat: b.nat.is_some(),
        });
        let configured = self.router.user(username).map(|u| u.contacts.clone()).unwrap_or_default();
        let configured = configured.iter().filter_map(|c| Some(Candidate { ruri: Some(c.text.clone()), route: Vec::new(), dest: self.dest_of(c)?, carrier: None, nat: false }));
        let parallel: Vec<Candidate> = registered.chain(configured).take(self.max_branches).collect();
        if parallel.is_empty() {
            return if self.registrar.flow_failed(username, unix) {
                Decision::Answer(430, "Flow Failed", vec![])
            } else {
                Decision::Answer(480, "Temporarily Unavailable", vec![])
            };
        }
        if creates_dialog(method) && self.dialogs.len() >= self.limits.max_dialogs {
            return Decision::Answer(503, "Service Unavailable (call limit)", vec![("Retry-After", "10".into())]);
        }
        Decision::Forward(Plan { parallel, serial: VecDeque::new(), record_route: record_routes(method), user, carrier_origin, dialog: None, cseq_offset: 0, side: Side::Caller })
    }

    /// Checks the caller's digest credentials: the authenticated username, or the answer that
    /// refuses or challenges the request.
    fn authenticate(&mut self, now: Instant, req: &Message, source: IpAddr) -> Result<String, Decision> {
        let from_user = self.local_user_in_from(req);
        // Neither a carrier nor one of our users: nothing to challenge.
        let user = self.check_credentials(now, req, source, AuthKind::Proxy, from_user.is_some()).map_err(|(s, r, h)| Decision::Answer(s, r, h))?;
        // The From must name the user who authenticated (no calling as somebody else, no tel:
        // or foreign-domain From to dodge the check).
        if from_user.as_deref() != Some(user.as_str()) {
            self.stats.auth_failures += 1;
            return Err(Decision::Answer(403, "Forbidden (From does not match the authenticated user)", vec![]));
        }
        Ok(user)
    }

    /// Digest authentication shared by the proxy (407, Proxy-Authorization) and the registrar
    /// (401, Authorization): bans first, then each credentials value of our realm; a replayed
    /// nonce-count or an old nonce gets a fresh challenge with stale=true. `challenge` false:
    /// a request without good credentials is refused rather than challenged.
    pub(super) fn check_credentials(
        &mut self,
        now: Instant,
        req: &Message,
        source: IpAddr,
        kind: AuthKind,
        challenge: bool,
    ) -> Result<String, crate::registrar::Refusal> {
        if self.bans.is_banned(now, source) {
            self.stats.banned_refusals += 1;
            return Err((403, "Forbidden (too many failed authentications)", vec![]));
        }
        let realm = self.auth.realm.clone();
        let now_secs = self.now_secs(now);
        let mut stale = false;
        let ruri = req.request_uri().map(|u| req.slice(u.span)).unwrap_or_default();
        let (credentials, challenge_name, status, reason) = match kind {
            AuthKind::Proxy => (HeaderName::ProxyAuthorization, "Proxy-Authenticate", 407, "Proxy Authentication Required"),
            AuthKind::Www => (HeaderName::Authorization, "WWW-Authenticate", 401, "Unauthorized"),
        };
        for h in req.headers_named(credentials) {
            let verdict = auth::verify(req.slice(h.value), req.method_bytes(), ruri, &realm, self.auth.digest_uri, &self.nonces, now_secs, source, &self.router);
            let refusal = match verdict {
                Verdict::Ok { user, nonce, nc } => {
                    let fresh = match (nc, auth::nonce_time(&nonce)) {
                        (Some(nc), Some(issued)) => self.nonce_counts.accept(&nonce, issued, nc),
                        // Without qop there is no count to check (RFC 2069 clients).
                        _ => true,
                    };
                    if fresh {
                        return Ok(user);
                    }
                    self.stats.digest_replays += 1;
                    tracing::info!(%source, user, "digest nonce-count replayed: challenged again");
                    stale = true;
                    continue;
                }
                Verdict::Stale => {
                    stale = true;
                    continue;
                }
                Verdict::OtherRealm => continue,
                Verdict::Denied(why) => (403, "Forbidden (bad credentials)", why),
                Verdict::Malformed(why) => (400, "Bad Request (malformed credentials)", why),
            };
            self.stats.auth_failures += 1;
            tracing::info!(%source, why = refusal.2, "digest credentials refused");
            if let Some(network) = self.bans.failed(now, source) {
                self.stats.bans += 1;
                tracing::warn!(%network, secs = self.auth.ban_secs, "source banned after repeated failed authentications");
                self.event(Event::Banned { network });
            }
            return Err((refusal.0, refusal.1, vec![]));
        }
        if !challenge && !stale {
            return Err((403, "Forbidden (not a local user or carrier)", vec![]));
        }
        self.stats.challenges += 1;
        let salt = self.rng.next_u64();
        let nonce = self.nonces.issue(now_secs, salt, source);
        let headers = auth::challenge_headers(&realm, &nonce, stale, &self.auth.algorithms).into_iter().map(|v| (challenge_name, v)).collect();
        Err((status, reason, headers))
    }

    /// The local user the From header names (user part of a From URI in our domain).
    fn local_user_in_from(&self, req: &Message) -> Option<String> {
        let uri = req.from.uri;
        let buf = req.bytes();
        if !uri.is_sip() || !uri.host.is_some_and(|h| self.host_is_ours(req, h)) {
            return None;
        }
        let user = String::from_utf8_lossy(uri.user?.of(buf)).into_owned();
        match self.router.called(&user) {
            Called::User(u) => Some(u.username.clone()),
            _ => None,
        }
    }

    /// In-dialog requests (To tag present): only within a dialog we hold, only from one of its
    /// parties, and only to the other party's stored target (see [`Engine::in_dialog`]).
    fn decide_in_dialog(&mut self, now: Instant, req: &Message, from: Inbound, routing: &Routing) -> Decision {
        match self.in_dialog(now, req, from) {
            Err((status, reason)) => Decision::Answer(status, reason, vec![]),
            Ok(d) => Decision::Forward(Plan {
                parallel: vec![Candidate { ruri: routing.new_ruri.clone(), route: Vec::new(), dest: Dest::Hop(d.target), carrier: d.carrier, nat: false }],
                serial: VecDeque::new(),
                record_route: false,
                user: None,
                carrier_origin: None,
                dialog: Some(d.id),
                cseq_offset: d.cseq_offset,
                side: d.side,
            }),
        }
    }

    /// The dialog of an in-dialog request and where it goes, or why it is refused: no such
    /// dialog (481), a sender that is neither party (403), a target that is ourselves (482).
    fn in_dialog(&mut self, now: Instant, req: &Message, from: Inbound) -> Result<InDialog, (u16, &'static str)> {
        let key = DialogKey::of(req);
        let &id = self.dialog_index.get(&key).ok_or((481, "Call/Transaction Does Not Exist"))?;
        let d = self.dialogs.get(&id).ok_or((481, "Call/Transaction Does Not Exist"))?;
        let from_caller = key.from_tag == d.caller_tag;
        let (sender, sender_target, sender_contact, sender_carrier) = if from_caller {
            (d.caller, d.caller_target, d.caller_contact, d.caller_carrier)
        } else {
            (d.callee, d.callee_target, d.callee_contact, d.callee_carrier)
        };
        let src = from.remote.ip();
        let party = same_network(src, sender.remote.ip())
            || same_network(src, sender_target.dest.ip())
            || sender_contact.is_some_and(|c| same_network(src, c))
            || sender_carrier.is_some_and(|c| self.router.carriers()[c].source_cidrs.iter().any(|n| n.contains(src)));
        if !party {
            return Err((403, "Forbidden (not a party of this dialog)"));
        }
        let (target, carrier, cseq_offset) =
            if from_caller { (d.callee_target, d.callee_carrier, d.cseq_offset) } else { (d.caller_target, d.caller_carrier, 0) };
        if self.listeners.iter().any(|(_, a)| *a == target.dest) {
            return Err((482, "Loop Detected"));
        }
        let seq = req.cseq.seq;
        if let Some(d) = self.dialogs.get_mut(&id) {
            d.last_activity = now;
            // The CSeq each side used last: a BYE we send for a side continues from it.
            let last = if from_caller { &mut d.teardown.caller_cseq } else { &mut d.teardown.callee_cseq };
            *last = (*last).max(seq);
        }
        let side = if from_caller { Side::Caller } else { Side::Callee };
        Ok(InDialog { id, target, carrier, cseq_offset, side })
    }

    /// Where a party's in-dialog requests go, and the address its Contact names (admitted as a
    /// source of that party's requests too). A phone or PBX is reached over the flow the dialog
    /// was made on: its TCP connection or NAT binding, which a new connection to its Contact
    /// could not pass (home routers drop inbound IPv6). A carrier is reached at its Contact when
    /// that lies in its source CIDRs (another node of its cluster), else at the hop we used.
    fn party_target(&self, msg: &Message, flow: Hop, carrier: Option<usize>) -> (Hop, Option<IpAddr>) {
        let contact = match &msg.contacts {
            crate::message::ContactList::Addrs(v) => v.first(),
            _ => None,
        };
        let uri = contact.and_then(|c| std::str::from_utf8(msg.slice(c.uri.span)).ok()).and_then(|u| TargetUri::parse(u).ok());
        let contact_ip = uri.as_ref().and_then(|u| u.ip);
        let (Some(u), Some(c)) = (uri, carrier) else { return (flow, contact_ip) };
        let in_cidrs = u.ip.is_some_and(|ip| self.router.carriers()[c].source_cidrs.iter().any(|n| n.contains(ip)));
        let hop = u.ip.filter(|_| in_cidrs && !u.secure).and_then(|ip| self.hop_to(u.transport.unwrap_or(flow.transport), SocketAddr::new(ip, u.port.unwrap_or(5060))));
        (hop.unwrap_or(flow), contact_ip)
    }

    /// §16.4: removes our own Route entries from the top; strict-router compatibility when the
    /// Request-URI is one of our Record-Route URIs.
    fn route_processing(&self, req: &Message) -> Routing {
        let routes = edit::routes(req);
        let buf = req.bytes();
        let mut pop = 0;
        while pop < routes.len() && self.uri_is_ours(req, &routes[pop].addr.uri) {
            pop += 1;
        }
        let mut r = Routing { pop_routes: pop, pop_last_route: false, foreign_routes: false, new_ruri: None };
        let ruri_ours = req.request_uri().is_some_and(|u| u.user.is_none() && self.uri_is_ours(req, u));
        if ruri_ours && routes.len() > pop {
            // The previous hop was a strict router: the real target is the last Route.
            if let Some(last) = routes.last() {
                r.new_ruri = Some(String::from_utf8_lossy(last.addr.uri.span.of(buf)).into_owned());
                r.pop_last_route = true;
            }
        }
        // Counted, not parsed: a Route we cannot read (transport=sctp, tel:) is still foreign.
        r.foreign_routes = routes.len() > pop + usize::from(r.pop_last_route);
        r
    }

    /// A SIP URI naming this proxy: one of our addresses (or domains) at one of our ports.
    fn uri_is_ours(&self, req: &Message, uri: &crate::message::Uri) -> bool {
        uri.is_sip()
            && uri.host.is_some_and(|h| self.host_is_ours(req, h))
            && uri.port.is_none_or(|p| self.listeners.iter().any(|(_, a)| a.port() == p))
    }

    pub(super) fn host_is_ours(&self, msg: &Message, host: Host) -> bool {
        match host {
            Host::Name(s) => {
                let name = msg.slice(s);
                self.domains.iter().any(|d| d.as_bytes().eq_ignore_ascii_case(name))
            }
            Host::V4(a) => self.is_own(IpAddr::V4(a)) || self.domains.iter().any(|d| d == &a.to_string()),
            Host::V6(a) => self.is_own(IpAddr::V6(a)) || self.domains.iter().any(|d| d.parse() == Ok(IpAddr::V6(a))),
        }
    }

    /// A Request-URI of one of our domains/addresses with no user part: for the proxy itself.
    fn addressed_to_us(&self, msg: &Message) -> bool {
        msg.request_uri().is_some_and(|u| u.is_sip() && u.user.is_none() && u.host.is_some_and(|h| self.host_is_ours(msg, h)))
    }

    fn answer_for_us(&self, req: &Message, method: Method) -> Decision {
        let unsupported = unsupported_tags(req, HeaderName::Require);
        if !unsupported.is_empty() && method != Method::Cancel {
            return Decision::Answer(420, "Bad Extension", vec![("Unsupported", unsupported.join(", "))]);
        }
        match method {
            Method::Options => Decision::Answer(
                200,
                "OK",
                vec![("Allow", ALLOW.into()), ("Supported", super::register::REGISTRAR_SUPPORTED.join(", ")), ("Accept", ACCEPT.into())],
            ),
            Method::Bye => Decision::Answer(481, "Call/Transaction Does Not Exist", vec![]),
            Method::Extension => Decision::Answer(501, "Not Implemented", vec![("Allow", ALLOW.into())]),
            _ => Decision::Answer(405, "Method Not Allowed", vec![("Allow", ALLOW.into())]),
        }
    }

    /// §16.3 step 4: a request that already passed us with the same loop hash is looping.
    fn is_loop(&self, req: &Message) -> bool {
        let mine = format!("{BRANCH_PREFIX}{:016x}-", loop_hash(req));
        let buf = req.bytes();
        req.vias.iter().any(|v| {
            v.host.ip().is_some_and(|ip| self.is_own(ip)) && v.branch.is_some_and(|b| b.of(buf).starts_with(mine.as_bytes()))
        })
    }

    /// A destination for a configured or routed URI: a hop for IP literals, a lookup otherwise.
    /// `None` when we cannot reach it: a `sips:` URI (no TLS transport yet) or no listener of
    /// its family and transport.
    pub(super) fn dest_of(&self, t: &TargetUri) -> Option<Dest> {
        if t.secure {
            return None;
        }
        match t.ip {
            Some(ip) => self.hop_to(t.transport.unwrap_or(TransportKind::Udp), SocketAddr::new(ip, t.port.unwrap_or(5060))).map(Dest::Hop),
            None => Some(Dest::Lookup(Query { host: t.host.clone(), port: t.port, transport: t.transport, secure: false })),
        }
    }

    // ----- forwarding -----

    fn forward(&mut self, now: Instant, sid: u64, req: Message, from: Inbound, plan: Plan, routing: &Routing) {
        let drop_lines = self.lines_to_drop(&req, self.router.carrier_by_source(from.remote.ip()).is_some());
        let ctx_id = self.id();
        let is_invite = req.method() == Some(Method::Invite);
        if let Some(user) = plan.user.as_ref().filter(|_| is_invite && plan.dialog.is_none()) {
            let seen = crate::registrar::diagnose::Signaling::of(&req, from.remote, from.transport != TransportKind::Udp, self.unix_now(now));
            self.phones.entry(user.clone()).or_default().invite = Some(seen);
        }
        self.contexts.insert(
            ctx_id,
            ProxyCtx {
                server: sid,
                method: req.method().unwrap_or(Method::Extension),
                original_cseq: req.cseq.seq,
                request: Some(req),
                from,
                is_invite,
                record_route: plan.record_route,
                pop_routes: routing.pop_routes,
                pop_last_route: routing.pop_last_route,
                drop_lines,
                branches: Vec::new(),
                serial: plan.serial,
                best: None,
                final_sent: false,
                cancelled: false,
                lookups_pending: 0,
                media_pending: 0,
                media_refused: None,
                side: plan.side,
                user: plan.user,
                carrier_origin: plan.carrier_origin,
                dialog: plan.dialog,
                cseq_offset: plan.cseq_offset,
                started: now,
            },
        );
        if let Some(e) = self.servers.get_mut(&sid) {
            e.ctx = Some(ctx_id);
        }
        for c in plan.parallel {
            self.start_branch(now, ctx_id, c);
        }
        self.maybe_finish(now, ctx_id);
    }

    /// Header lines that stop here: our realm's Proxy-Authorization (RFC 3261 §22.3; phones
    /// repeat it on ACK and BYE, so this runs for every request), and — unless a carrier sent
    /// the request — any identity a phone asserts about itself (P-Asserted-Identity,
    /// P-Preferred-Identity, Remote-Party-ID): only we assert identities, from the credentials.
    fn lines_to_drop(&self, req: &Message, from_carrier: bool) -> Vec<Span> {
        let realm = self.auth.realm.as_str();
        let ours = |h: &&crate::message::Header| {
            h.name == HeaderName::ProxyAuthorization
                && auth::parse_params(req.slice(h.value)).is_some_and(|(_, p)| p.iter().any(|(k, v)| k == "realm" && v == realm))
        };
        let asserted = |h: &&crate::message::Header| {
            let n = req.slice(h.name_span);
            !from_carrier && ["P-Asserted-Identity", "P-Preferred-Identity", "Remote-Party-ID"].iter().any(|x| n.eq_ignore_ascii_case(x.as_bytes()))
        };
        req.headers.iter().filter(|h| ours(h) || asserted(h)).map(|h| h.line).collect()
    }

    fn start_branch(&mut self, now: Instant, ctx_id: u64, c: Candidate) {
        match c.dest.clone() {
            Dest::Hop(hop) => self.send_branch(now, ctx_id, c, hop, None),
            Dest::Lookup(q) => {
                if let Some(r) = self.cached(now, &q) {
                    self.expand(now, ctx_id, c, Ok(r));
                    return;
                }
                let id = self.id();
                if let Some(ctx) = self.contexts.get_mut(&ctx_id) {
                    ctx.lookups_pending += 1;
                }
                self.lookups.insert(id, (q.clone(), LookupWaiter::Branch { ctx: ctx_id, candidate: c }));
                self.out.push_back(Output::Resolve { id, query: q });
            }
        }
    }

    pub(super) fn lookup_done(&mut self, now: Instant, waiter: LookupWaiter, result: Result<Resolution, DnsError>) {
        match waiter {
            LookupWaiter::Branch { ctx, candidate } => {
                let Some(c) = self.contexts.get_mut(&ctx) else { return };
                c.lookups_pending = c.lookups_pending.saturating_sub(1);
                if c.cancelled || c.final_sent {
                    self.maybe_finish(now, ctx);
                    return;
                }
                self.expand(now, ctx, candidate, result);
                self.maybe_finish(now, ctx);
            }
            LookupWaiter::Probe { carrier } => match result {
                Ok(r) => self.send_probe(now, carrier, Some(r)),
                Err(_) => self.carrier_health(carrier, false),
            },
        }
    }

    /// A resolved candidate: the first usable target now, the others first in the failover list.
    fn expand(&mut self, now: Instant, ctx_id: u64, c: Candidate, result: Result<Resolution, DnsError>) {
        let hops: Vec<Hop> = match &result {
            Ok(r) => r.targets.iter().filter_map(|t| self.hop_to(t.transport, t.addr)).collect(),
            Err(e) => {
                tracing::info!(error = %e, "DNS lookup for a branch failed");
                Vec::new()
            }
        };
        let Some((first, rest)) = hops.split_first() else {
            // Nothing to send to: counts as a 503 from this candidate (§16.7 failover).
            self.candidate_failed(now, ctx_id, 503);
            return;
        };
        if let Some(ctx) = self.contexts.get_mut(&ctx_id) {
            for h in rest.iter().rev() {
                ctx.serial.push_front(Candidate { ruri: c.ruri.clone(), route: c.route.clone(), dest: Dest::Hop(*h), carrier: c.carrier, nat: c.nat });
            }
        }
        self.send_branch(now, ctx_id, c, *first, None);
    }

    /// A candidate that could not even be tried (no address, no listener, no relay session):
    /// record the failure and move on to the next one.
    pub(super) fn candidate_failed(&mut self, now: Instant, ctx_id: u64, status: u16) {
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else { return };
        record_best(ctx, status, None);
        if let Some(next) = ctx.serial.pop_front() {
            self.start_branch(now, ctx_id, next);
        }
        self.maybe_finish(now, ctx_id);
    }

    /// Sends a branch once its media is settled: at once for direct media or streams the call
    /// already has, after the relay made its sessions otherwise; a body we cannot relay fails
    /// the candidate with 488.
    fn send_branch(&mut self, now: Instant, ctx_id: u64, c: Candidate, hop: Hop, auth: Option<(String, u32)>) {
        use super::media::{BranchPlan, MediaWait};
        let Some(ctx) = self.contexts.get(&ctx_id) else { return };
        match self.plan_branch_media(ctx, &c, hop) {
            BranchPlan::Direct => self.send_branch_with(now, ctx_id, c, hop, auth, None),
            BranchPlan::Ready(media) => self.send_branch_with(now, ctx_id, c, hop, auth, Some(media)),
            BranchPlan::Create { media, slots, specs } => {
                self.create_media(MediaWait { ctx: ctx_id, candidate: c, hop, auth, media, slots }, specs);
            }
            BranchPlan::Refuse(status, reason) => {
                self.stats.media_refused += 1;
                if let Some(ctx) = self.contexts.get_mut(&ctx_id) {
                    ctx.media_refused = Some((status, reason));
                }
                self.candidate_failed(now, ctx_id, status);
            }
        }
    }

    /// Builds the branch request and starts its client transaction. `auth` is a credentials line
    /// for a carrier's challenge (then the CSeq goes up by one).
    pub(super) fn send_branch_with(&mut self, now: Instant, ctx_id: u64, c: Candidate, hop: Hop, auth: Option<(String, u32)>, mut media: Option<super::media::BranchMedia>) {
        let Some((ctx, request)) = self.contexts.get(&ctx_id).and_then(|c| Some((c, c.request.as_ref()?))) else {
            self.release_branch_media(media);
            return;
        };
        let body = media.as_mut().and_then(|m| m.offer_body(ctx.side));
        let inbound_hop = Hop { transport: ctx.from.transport, local: ctx.from.local, dest: ctx.from.remote };
        let loop_tag = loop_hash(request);
        let branch = format!("{BRANCH_PREFIX}{loop_tag:016x}-{:x}", self.rng.next_u64());
        let mut top = self.via_line(&hop, &branch);
        if ctx.record_route {
            // One entry per side when the request crosses family or transport (RFC 5658), the
            // outbound side on top: each side's route set then names an address it can reach.
            top.push_str(&self.record_route_line(&hop));
            if hop.local.is_ipv6() != inbound_hop.local.is_ipv6() || hop.transport != inbound_hop.transport {
                top.push_str(&self.record_route_line(&inbound_hop));
            }
        }
        let Some(cseq) = checked_cseq(ctx.original_cseq, ctx.cseq_offset + u32::from(auth.is_some())) else {
            self.release_branch_media(media);
            self.candidate_failed(now, ctx_id, 500);
            return;
        };
        for r in &c.route {
            // A binding registered through an edge proxy is reached through it (RFC 3327).
            top.push_str(&format!("Route: {r}\r\n"));
        }
        let mut bottom = auth.as_ref().map(|(line, _)| line.clone()).unwrap_or_default();
        if let (Some(user), Some(_)) = (&ctx.user, c.carrier) {
            // Toward a carrier we assert who called: the user's first number (RFC 3325).
            if let Some(n) = self.router.user(user).and_then(|u| u.numbers.first()) {
                let domain = self.domains.first().map_or("invalid", String::as_str);
                bottom.push_str(&format!("P-Asserted-Identity: <sip:{}@{domain}>\r\n", self.router.normalise(n)));
            }
        }
        let bytes = edit::forward_request(
            request,
            &Forward {
                request_uri: c.ruri.as_deref(),
                top: &top,
                bottom: &bottom,
                pop_routes: ctx.pop_routes,
                pop_last_route: ctx.pop_last_route,
                drop_lines: &ctx.drop_lines,
                cseq: (cseq != ctx.original_cseq).then_some(cseq),
                body: body.as_deref(),
            },
        );
        let framing = hop.transport.framing();
        let parsed = match parse(bytes.clone(), framing) {
            Ok(m) => m,
            Err(e) => {
                // Our edits made something unparsable: a bug, never the caller's fault.
                tracing::error!(error = %e, "forwarded request does not parse");
                self.release_branch_media(media);
                self.candidate_failed(now, ctx_id, 500);
                return;
            }
        };
        let is_invite = ctx.is_invite;
        let index = ctx.branches.len();
        let auth_retried = auth.is_some();
        if let Some(ctx) = self.contexts.get_mut(&ctx_id) {
            ctx.branches.push(Branch { client: None, candidate: c, hop, final_status: None, provisional: false, alerted: false, cancel_pending: false, auth_retried, cseq, media, early: None });
        }
        let cid = self.start_client(now, parsed, bytes, hop, ClientOwner::Branch { ctx: ctx_id, branch: index }, is_invite);
        self.stats.requests_forwarded += 1;
        if let Some(b) = self.contexts.get_mut(&ctx_id).and_then(|x| x.branches.get_mut(index)) {
            b.client = cid;
            if cid.is_none() {
                b.final_status = Some(500);
            }
        }
    }

    /// Our Via for a request leaving on `hop` (RFC 3261 §16.6 step 8, with `rport`: RFC 3581).
    pub(super) fn via_line(&self, hop: &Hop, branch: &str) -> String {
        let proto = if hop.transport == TransportKind::Tcp { "TCP" } else { "UDP" };
        format!("Via: SIP/2.0/{proto} {};branch={branch};rport\r\n", self.advertised(hop))
    }

    fn record_route_line(&self, side: &Hop) -> String {
        let t = if side.transport == TransportKind::Tcp { ";transport=tcp" } else { "" };
        format!("Record-Route: <sip:{}{t};lr>\r\n", self.advertised(side))
    }

    /// A response (or a timeout/transport failure as `status` with no message) on a branch.
    pub(super) fn branch_response(&mut self, now: Instant, ctx_id: u64, index: usize, cid: u64, status: u16, resp: Option<Message>) {
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else { return };
        // A relayed branch: the answer's SDP (or a late offer in the 2xx) is shown rewritten.
        let answerer = ctx.side.other();
        let body = match resp.as_ref() {
            Some(r) if (101..300).contains(&status) => self.response_body(ctx_id, index, r, answerer),
            _ => None,
        };
        if let Some(r) = resp.as_ref().filter(|r| (101..200).contains(&status) && r.to.tag.is_some()) {
            self.early_dialog(now, ctx_id, index, r);
        }
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else { return };
        let original_cseq = ctx.original_cseq;
        let Some(b) = ctx.branches.get_mut(index) else { return };
        let upstream = |resp: &Message, b: &Branch| edit::pop_via_and_cseq(resp, (b.cseq != original_cseq).then_some(original_cseq), body.as_deref());
        if status < 200 {
            b.provisional = true;
            b.alerted |= status > 100;
            let cancel_now = std::mem::take(&mut b.cancel_pending);
            let forward = status > 100 && !ctx.final_sent;
            let bytes = resp.as_ref().filter(|_| forward).map(|r| upstream(r, b));
            let server = ctx.server;
            if cancel_now {
                self.send_cancel(now, cid);
            }
            if let Some(bytes) = bytes {
                self.stats.responses_forwarded += u64::from(self.send_response(now, server, status, bytes));
            }
            return;
        }
        let first_final = b.final_status.is_none();
        b.final_status = Some(status);
        let carrier = b.candidate.carrier;
        let hop = b.hop;
        if (200..300).contains(&status) {
            let Some(resp) = resp else { return };
            let bytes = upstream(&resp, b);
            let server = ctx.server;
            let is_invite = ctx.is_invite;
            let dialog_of_request = ctx.dialog;
            let is_bye = ctx.method == Method::Bye;
            // Subscriptions are dialogs too (RFC 6665): their NOTIFYs come in-dialog.
            let creates_subscription = matches!(ctx.method, Method::Subscribe | Method::Refer);
            let already_final = ctx.final_sent;
            if !already_final || is_invite {
                ctx.final_sent = true;
                ctx.serial.clear();
                self.stats.responses_forwarded += u64::from(self.send_response(now, server, status, bytes));
            }
            let early = self.contexts.get(&ctx_id).and_then(|c| c.branches.get(index)).and_then(|b| b.early);
            let dialog = match dialog_of_request {
                None if first_final && (is_invite || creates_subscription) => self.create_dialog(now, ctx_id, index, &resp, false),
                Some(did) if first_final => Some(did),
                _ => None,
            };
            if let (Some(did), Some(e)) = (dialog, early) {
                // The early dialog becomes the call; should the 2xx carry another tag, its
                // sessions move to the dialog the 2xx made.
                if did != e {
                    let media = self.dialogs.get_mut(&e).and_then(|d| d.media.take());
                    self.remove_dialog(e, "replaced by the 2xx's dialog");
                    if let Some(d) = self.dialogs.get_mut(&did) {
                        d.media = media;
                    }
                }
            } else if let Some(did) = dialog {
                // The call's media is now this branch's (a copy stays for 2xx retransmissions;
                // its sessions are the dialog's to delete from here on).
                let adopted = self.contexts.get_mut(&ctx_id).and_then(|c| c.branches.get_mut(index)).and_then(|b| b.media.as_mut()).map(|m| {
                    let copy = m.clone();
                    m.created.clear();
                    copy
                });
                if let Some(m) = adopted {
                    self.adopt_media(did, m);
                }
            }
            if is_invite && first_final {
                // §16.7 step 10: a 2xx ends the other branches.
                self.cancel_pending_branches(now, ctx_id);
            }
            if is_bye {
                if let Some(did) = dialog_of_request {
                    self.end_call(now, did, "BYE");
                }
            }
            if let Some(c) = carrier {
                self.carrier_health(c, true);
            }
            self.retire_if_answered(ctx_id);
            return;
        }
        // A branch that failed carries no media, and its early dialog ends.
        let media = b.media.take();
        let auth_retried = b.auth_retried;
        let early = b.early.take();
        self.release_branch_media(media);
        if let Some(e) = early.filter(|e| self.dialogs.get(e).is_some_and(|d| d.early)) {
            self.remove_dialog(e, "early dialog ended");
        }
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else { return };
        if !first_final || ctx.final_sent {
            // A late answer (a cancelled branch's 487): maybe the last one we waited for.
            self.retire_if_answered(ctx_id);
            return;
        }
        // A carrier asks for credentials we hold: answer once (RFC 3261 §22.2, as a UAC would).
        if matches!(status, 401 | 407) && !auth_retried && !ctx.cancelled {
            if let (Some(c), Some(r)) = (carrier, resp.as_ref()) {
                if let Some(line) = self.carrier_credentials(c, status, r, ctx_id, index) {
                    let Some(ctx) = self.contexts.get(&ctx_id) else { return };
                    let cand = ctx.branches[index].candidate.clone();
                    // In a dialog the retry took one CSeq number toward the carrier for good:
                    // the caller's later requests (and this request's ACK) shift by one more.
                    if let Some(did) = ctx.dialog {
                        if let Some(d) = self.dialogs.get_mut(&did) {
                            d.cseq_offset += 1;
                        }
                    }
                    self.send_branch(now, ctx_id, cand, hop, Some((line, 1)));
                    return;
                }
            }
        }
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else { return };
        if ctx.method == Method::Bye {
            if let Some(did) = ctx.dialog {
                // A BYE that failed still ends our record of the call: the caller hung up.
                self.end_call(now, did, "BYE failed");
            }
        }
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else { return };
        let b = &ctx.branches[index];
        let alerted = b.alerted;
        // A carrier's challenge we cannot answer means the carrier refused us, not the caller.
        let (status, bytes) = match (carrier, status) {
            (Some(_), 401 | 407) => (503, None),
            _ => (status, resp.as_ref().map(|r| upstream(r, b))),
        };
        if let Some(c) = carrier.filter(|_| resp.is_none() && status == 408 && !alerted) {
            // The carrier did not answer at all: skip it until its probe answers again — only
            // when it is probed, or nothing would ever bring it back.
            if self.router.carriers()[c].probe_interval_secs > 0 {
                self.carrier_health(c, false);
            }
        }
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else { return };
        record_best(ctx, status, bytes);
        if status >= 600 && ctx.is_invite {
            ctx.serial.clear();
            self.cancel_pending_branches(now, ctx_id);
        } else if failover(status) && !ctx.cancelled && !alerted {
            if let Some(next) = ctx.serial.pop_front() {
                self.start_branch(now, ctx_id, next);
            }
        } else {
            // A definite answer (4xx): the next carrier would give the same; stop here.
            ctx.serial.clear();
        }
        self.maybe_finish(now, ctx_id);
    }

    /// The credentials line answering a carrier's 401/407, if it has credentials configured.
    fn carrier_credentials(&mut self, carrier: usize, status: u16, resp: &Message, ctx_id: u64, index: usize) -> Option<String> {
        let (user, pass) = self.router.carriers()[carrier].credentials.clone()?;
        let header = if status == 401 { HeaderName::WwwAuthenticate } else { HeaderName::ProxyAuthenticate };
        let ch = resp.headers_named(header).find_map(|h| Challenge::parse(resp.slice(h.value)))?;
        let ctx = self.contexts.get(&ctx_id)?;
        let request = ctx.request.as_ref()?;
        let b = ctx.branches.get(index)?;
        let uri = match &b.candidate.ruri {
            Some(u) => u.clone(),
            None => String::from_utf8_lossy(request.request_uri().map(|u| request.slice(u.span))?).into_owned(),
        };
        let method = request.method_bytes().to_vec();
        let cnonce = format!("{:016x}", self.rng.next_u64());
        let value = auth::answer_challenge(&ch, &user, &pass, &method, &uri, &cnonce);
        let name = if status == 401 { "Authorization" } else { "Proxy-Authorization" };
        Some(format!("{name}: {value}\r\n"))
    }

    /// Sends CANCEL on every branch still waiting (or marks it to be cancelled on its first
    /// provisional answer, §9.1), and drops the failover list.
    fn cancel_pending_branches(&mut self, now: Instant, ctx_id: u64) {
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else { return };
        ctx.serial.clear();
        let mut to_cancel = Vec::new();
        for b in ctx.branches.iter_mut().filter(|b| b.final_status.is_none()) {
            match b.client {
                Some(cid) if b.provisional => to_cancel.push(cid),
                Some(_) => b.cancel_pending = true,
                None => {}
            }
        }
        for cid in to_cancel {
            self.send_cancel(now, cid);
        }
    }

    /// CANCEL for the INVITE of client transaction `cid` (its own non-INVITE transaction).
    fn send_cancel(&mut self, now: Instant, cid: u64) {
        let Some(e) = self.clients.get_mut(&cid) else { return };
        if !e.txn.is_pending() || e.cancel_sent {
            return;
        }
        let Some(bytes) = e.request.as_ref().map(edit::cancel_for) else { return };
        let hop = e.hop;
        e.cancel_sent = true;
        // If the callee never answers the INVITE after our CANCEL, give up 64*T1 later.
        e.timer_c = Some(now + self.timing.long());
        self.client_rescheduled(cid);
        let framing = hop.transport.framing();
        if let Ok(parsed) = parse(bytes.clone(), framing) {
            self.start_client(now, parsed, bytes, hop, ClientOwner::Ours, false);
        }
    }

    /// Timer C of an INVITE branch (§16.8): CANCEL it if it is ringing, else treat it as 408.
    pub(super) fn timer_c_fired(&mut self, now: Instant, cid: u64) {
        let Some(e) = self.clients.get(&cid) else { return };
        if e.txn.is_proceeding() && !e.cancel_sent {
            self.send_cancel(now, cid);
        } else {
            self.client_failed(now, cid, 408);
        }
    }

    /// Sends the best response once every branch has answered and nothing is left to try.
    pub(super) fn maybe_finish(&mut self, now: Instant, ctx_id: u64) {
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else { return };
        if ctx.final_sent {
            return;
        }
        let waiting = ctx.branches.iter().any(|b| b.final_status.is_none()) || ctx.lookups_pending > 0 || ctx.media_pending > 0 || !ctx.serial.is_empty();
        if waiting {
            return;
        }
        ctx.final_sent = true;
        let server = ctx.server;
        let best = ctx.best.take();
        let cancelled = ctx.cancelled;
        let media_refused = ctx.media_refused;
        let status = match best {
            // Nothing better than our own media refusal: say why (a 503 for want of relay
            // ports is passed on as such, with Retry-After, unlike a downstream 503).
            Some((status, None)) if !cancelled && media_refused.is_some_and(|(s, _)| s == status) => {
                let (status, reason) = media_refused.unwrap_or((status, "Not Acceptable Here"));
                let retry = [("Retry-After", "10".to_string())];
                self.answer(now, server, status, reason, if status == 503 { &retry[..] } else { &[] });
                status
            }
            _ if cancelled => {
                match best {
                    Some((487, Some(bytes))) => {
                        self.send_response(now, server, 487, bytes);
                    }
                    _ => self.answer(now, server, 487, "Request Terminated", &[]),
                }
                487
            }
            // §16.7 step 6: a 503 is not passed on (it would make the caller fail over away
            // from us); a 500 says the same about the call.
            Some((503, _)) => {
                self.answer(now, server, 500, "Server Internal Error (no destination could take the call)", &[]);
                500
            }
            Some((status, Some(bytes))) => {
                self.stats.responses_forwarded += u64::from(self.send_response(now, server, status, bytes));
                status
            }
            Some((status, None)) => {
                self.answer(now, server, status, reason_of(status), &[]);
                status
            }
            None => {
                self.answer(now, server, 408, "Request Timeout", &[]);
                408
            }
        };
        if let Some(record) = self.unanswered(now, ctx_id, status) {
            self.event(Event::CallRecord(Box::new(record)));
        }
        self.retire_if_answered(ctx_id);
    }

    /// A new INVITE's call record at its final non-2xx answer (`None` for other requests).
    fn unanswered(&self, now: Instant, ctx_id: u64, status: u16) -> Option<super::calls::CallRecord> {
        let ctx = self.contexts.get(&ctx_id)?;
        let request = ctx.request.as_ref().filter(|_| ctx.is_invite && ctx.dialog.is_none())?;
        let last = ctx.branches.last();
        let carrier = last.and_then(|b| b.candidate.carrier).or(ctx.carrier_origin);
        Some(super::calls::CallRecord {
            call_id: request.text(request.call_id).into_owned(),
            start_ms: self.unix_ms(ctx.started),
            answer_ms: None,
            end_ms: self.unix_ms(now),
            duration_ms: 0,
            from: request.text(request.from.uri.span).into_owned(),
            to: request.text(request.to.uri.span).into_owned(),
            user: ctx.user.clone(),
            carrier: carrier.map(|c| self.router.carriers()[c].name.clone()),
            caller: super::calls::RecordLeg::of(&super::dialog::Leg { transport: ctx.from.transport, local: ctx.from.local, remote: ctx.from.remote }),
            callee: last.map(|b| super::calls::RecordLeg::of(&super::dialog::Leg { transport: b.hop.transport, local: b.hop.local, remote: b.hop.dest })),
            disposition: super::calls::disposition(status, ctx.cancelled),
            status,
            end_reason: None,
            one_way_audio: None,
            media: Vec::new(),
        })
    }

    /// A non-INVITE context is of no use once its final answer is out (its other branches
    /// cannot be cancelled and their answers are dropped): forget it now rather than keep its
    /// request through the server transaction's 32 s of Timer J.
    ///
    /// An INVITE context stays (its server transaction forwards 2xx retransmissions for 32 s),
    /// but lets go of its request once every branch has its final answer.
    fn retire_if_answered(&mut self, ctx_id: u64) {
        let Some(ctx) = self.contexts.get_mut(&ctx_id) else { return };
        if !ctx.final_sent {
            return;
        }
        if ctx.is_invite {
            if ctx.lookups_pending == 0 && ctx.branches.iter().all(|b| b.final_status.is_some()) {
                ctx.request = None;
            }
            return;
        }
        let server = ctx.server;
        self.drop_context(ctx_id);
        if let Some(e) = self.servers.get_mut(&server) {
            e.ctx = None;
        }
    }

    /// The server transaction of context `ctx_id` ended: the context goes too.
    pub(super) fn server_gone(&mut self, ctx_id: u64) {
        self.drop_context(ctx_id);
    }

    /// Forgets a context, with the relay sessions of branches no dialog adopted.
    fn drop_context(&mut self, ctx_id: u64) {
        if let Some(ctx) = self.contexts.remove(&ctx_id) {
            for b in ctx.branches {
                self.release_branch_media(b.media);
                if let Some(e) = b.early.filter(|e| self.dialogs.get(e).is_some_and(|d| d.early)) {
                    self.remove_dialog(e, "early dialog ended");
                }
            }
        }
    }

    /// A provisional answer with a To tag on an INVITE branch makes an early dialog (once per
    /// branch), which takes over the branch's relay sessions.
    fn early_dialog(&mut self, now: Instant, ctx_id: u64, index: usize, resp: &Message) {
        let Some(ctx) = self.contexts.get(&ctx_id) else { return };
        let Some(b) = ctx.branches.get(index) else { return };
        if !ctx.is_invite || ctx.dialog.is_some() || b.early.is_some() {
            return;
        }
        let Some(did) = self.create_dialog(now, ctx_id, index, resp, true) else { return };
        let Some(b) = self.contexts.get_mut(&ctx_id).and_then(|c| c.branches.get_mut(index)) else { return };
        b.early = Some(did);
        if let Some(m) = b.media.take() {
            if let Some(d) = self.dialogs.get_mut(&did) {
                d.media = Some(super::media::DialogMedia { call: m.call, parties: m.parties });
            }
        }
    }

    /// The dialog a 2xx creates, or (`early`) a provisional answer with a To tag: its id, also
    /// when it exists already (a retransmission; a 2xx confirming the early dialog).
    fn create_dialog(&mut self, now: Instant, ctx_id: u64, index: usize, resp: &Message, early: bool) -> Option<u64> {
        let ctx = self.contexts.get(&ctx_id)?;
        let b = ctx.branches.get(index)?;
        let (hop, carrier, branch_cseq) = (b.hop, b.candidate.carrier, b.cseq);
        let request = ctx.request.as_ref()?;
        let (Some(ftag), Some(ttag)) = (request.from.tag, resp.to.tag) else { return None };
        let caller_flow = Hop { transport: ctx.from.transport, local: ctx.from.local, dest: ctx.from.remote };
        let caller_carrier = ctx.carrier_origin;
        let caller_target = self.party_target(request, caller_flow, caller_carrier);
        let callee_target = self.party_target(resp, hop, carrier);
        let d = Dialog {
            caller_target: caller_target.0,
            callee_target: callee_target.0,
            caller_contact: caller_target.1,
            callee_contact: callee_target.1,
            caller_carrier,
            callee_carrier: carrier,
            call_id: Bytes::copy_from_slice(request.slice(request.call_id)),
            caller_tag: Bytes::copy_from_slice(request.slice(ftag)),
            callee_tag: Bytes::copy_from_slice(resp.slice(ttag)),
            caller: Leg { transport: ctx.from.transport, local: ctx.from.local, remote: ctx.from.remote },
            callee: Leg { transport: hop.transport, local: hop.local, remote: hop.dest },
            user: ctx.user.clone(),
            carrier: carrier.or(ctx.carrier_origin).map(|c| self.router.carriers()[c].name.clone()),
            created: now,
            last_activity: now,
            cseq_offset: branch_cseq.wrapping_sub(ctx.original_cseq),
            teardown: self.teardown_info(request, resp, caller_flow, hop),
            media: None,
            early,
            call: ctx.is_invite.then(|| super::calls::CallInfo {
                started: ctx.started,
                answered: (!early).then_some(now),
                from: request.text(request.from.uri.span).into_owned(),
                to: request.text(request.to.uri.span).into_owned(),
            }),
            watch: Default::default(),
        };
        let keys = DialogKey::both(&d);
        if let Some(&did) = keys.iter().find_map(|k| self.dialog_index.get(k)) {
            // A retransmission, or the 2xx of an early dialog: now confirmed, with the 2xx's
            // Contact and route set.
            let confirm = !early && self.dialogs.get(&did).is_some_and(|x| x.early);
            if confirm {
                if let Some(x) = self.dialogs.get_mut(&did) {
                    x.early = false;
                    if let Some(c) = &mut x.call {
                        c.answered = Some(now);
                    }
                    (x.callee_target, x.callee_contact, x.teardown) = (d.callee_target, d.callee_contact, d.teardown.clone());
                }
                self.call_answered(ctx_id, did);
            }
            return Some(did);
        }
        let did = self.id();
        for k in keys {
            self.dialog_index.insert(k, did);
        }
        self.dialogs.insert(did, d);
        self.schedule(TimerRef::Dialog(did), Some(now + std::time::Duration::from_secs(self.limits.dialog_idle_secs)));
        if !early {
            self.call_answered(ctx_id, did);
        }
        Some(did)
    }

    /// An INVITE's dialog is confirmed: counted and told.
    fn call_answered(&mut self, ctx_id: u64, did: u64) {
        let Some(d) = self.dialogs.get(&did) else { return };
        if self.contexts.get(&ctx_id).is_some_and(|c| c.is_invite) {
            self.stats.calls_answered += 1;
            self.event(Event::CallAnswered {
                call_id: String::from_utf8_lossy(&d.call_id).into_owned(),
                user: d.user.clone(),
                carrier: d.carrier.clone(),
                crosses_family: d.crosses_family(),
            });
        }
    }

    /// What a BYE of ours needs to end the dialog on each side: both parties' From/To and
    /// Contact, and the route set toward each — the Record-Route entries of the 2xx above ours
    /// lead to the callee (reversed), those below lead to the caller (RFC 3261 §12.1).
    fn teardown_info(&self, request: &Message, resp: &Message, caller_flow: Hop, callee_flow: Hop) -> super::dialog::Teardown {
        let value = |m: &Message, n: HeaderName| m.header_value(n).map(|v| String::from_utf8_lossy(v).trim().to_string()).unwrap_or_default();
        let contact = |m: &Message, flow: Hop| match &m.contacts {
            crate::message::ContactList::Addrs(v) if !v.is_empty() => m.text(v[0].uri.span).into_owned(),
            _ => format!("sip:{}", flow.dest),
        };
        let rr = edit::elements(resp, HeaderName::RecordRoute);
        let text = |e: &edit::RouteEntry| resp.text(e.element).into_owned();
        let ours: Vec<usize> = rr.iter().enumerate().filter(|(_, e)| self.uri_is_ours(resp, &e.addr.uri)).map(|(i, _)| i).collect();
        let (callee_routes, caller_routes) = match (ours.first(), ours.last()) {
            (Some(&first), Some(&last)) => (rr[..first].iter().rev().map(text).collect(), rr[last + 1..].iter().map(text).collect()),
            _ => (Vec::new(), Vec::new()),
        };
        super::dialog::Teardown {
            caller_from: value(request, HeaderName::From),
            callee_to: value(resp, HeaderName::To),
            caller_uri: contact(request, caller_flow),
            callee_uri: contact(resp, callee_flow),
            caller_routes,
            callee_routes,
            caller_cseq: request.cseq.seq,
            callee_cseq: 0,
        }
    }

    // ----- CANCEL and ACK -----

    /// A CANCEL (its own server transaction `sid`): 200 for it, then the INVITE's branches are
    /// cancelled and the INVITE answered 487 (§16.10).
    fn on_cancel(&mut self, now: Instant, cancel: &Message, from: Inbound, key: &ServerKey) {
        // The INVITE it cancels: same branch, sent-by and transport — only its sender knows them.
        let Some(inv) = self.server_index.get(&key.invite_of_cancel()).copied() else {
            self.answer_stateless(cancel, from, 481, "Call/Transaction Does Not Exist", &[]);
            return;
        };
        // Answered statelessly: a retransmitted CANCEL gets another 200 and cancels nothing new.
        self.answer_stateless(cancel, from, 200, "OK", &[]);
        let Some(e) = self.servers.get(&inv) else { return };
        if e.txn.final_sent() {
            return;
        }
        match e.ctx {
            Some(ctx_id) => {
                if let Some(ctx) = self.contexts.get_mut(&ctx_id) {
                    ctx.cancelled = true;
                }
                self.cancel_pending_branches(now, ctx_id);
                self.maybe_finish(now, ctx_id);
            }
            None => self.answer(now, inv, 487, "Request Terminated", &[]),
        }
    }

    /// ACK: absorbed by the INVITE transaction it completes (non-2xx), or forwarded end to end
    /// along the dialog's route (2xx). Stateless: never answered.
    fn on_ack(&mut self, now: Instant, msg: Message, from: Inbound) {
        // Matched by the transport it arrived on, like every request (transaction::key).
        let key = ServerKey::of(&msg, from.transport);
        if let Some(&sid) = self.server_index.get(&key) {
            if let Some(e) = self.servers.get_mut(&sid) {
                if !matches!(e.txn.state, ServerState::Accepted { .. }) {
                    if !e.txn.on_ack(now, &self.timing) {
                        self.stats.retransmissions_absorbed += 1;
                    }
                    self.server_rescheduled(sid);
                    return;
                }
            }
        }
        if msg.to.tag.is_none() || msg.max_forwards == Some(0) {
            self.stats.stray_acks += 1;
            return;
        }
        if msg.to.tag.is_some_and(|t| msg.slice(t) == crate::message::response::stable_tag(&msg).as_bytes()) {
            // The ACK of a final answer we gave statelessly (a 407, a refusal): nothing to do.
            self.stats.acks_of_our_answers += 1;
            return;
        }
        let routing = self.route_processing(&msg);
        let Ok(InDialog { target: hop, cseq_offset, id, side, .. }) = self.in_dialog(now, &msg, from) else {
            self.stats.stray_acks += 1;
            return;
        };
        // The same branch for every retransmission of this ACK.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        msg.top_via().branch.map(|b| msg.slice(b)).hash(&mut h);
        let branch = format!("{BRANCH_PREFIX}{:016x}-a{:x}", loop_hash(&msg), h.finish());
        let top = self.via_line(&hop, &branch);
        let Some(cseq) = checked_cseq(msg.cseq.seq, cseq_offset) else {
            self.stats.stray_acks += 1;
            return;
        };
        let drop_lines = self.lines_to_drop(&msg, self.router.carrier_by_source(from.remote.ip()).is_some());
        // The answer to a late offer (RFC 3264 in the ACK) of a relayed call.
        let body = self.ack_body(id, &msg, side);
        let bytes = edit::forward_request(
            &msg,
            &Forward {
                request_uri: routing.new_ruri.as_deref(),
                top: &top,
                pop_routes: routing.pop_routes,
                pop_last_route: routing.pop_last_route,
                drop_lines: &drop_lines,
                cseq: (cseq != msg.cseq.seq).then_some(cseq),
                body: body.as_deref(),
                ..Default::default()
            },
        );
        self.stats.requests_forwarded += 1;
        self.transmit(hop, bytes, None);
    }

    // ----- carrier probes -----

    pub(super) fn probe_carrier(&mut self, now: Instant, carrier: usize) {
        let Some(c) = self.router.carriers().get(carrier).filter(|c| c.probe_interval_secs > 0) else { return };
        let interval = std::time::Duration::from_secs(c.probe_interval_secs);
        let uri = c.uri.clone();
        self.schedule(TimerRef::Probe(carrier), Some(now + interval));
        match self.dest_of(&uri) {
            Some(Dest::Hop(h)) => self.send_probe_to(now, carrier, h),
            Some(Dest::Lookup(q)) => match self.cached(now, &q) {
                Some(r) => self.send_probe(now, carrier, Some(r)),
                None => {
                    let id = self.id();
                    self.lookups.insert(id, (q.clone(), LookupWaiter::Probe { carrier }));
                    self.out.push_back(Output::Resolve { id, query: q });
                }
            },
            None => self.carrier_health(carrier, false),
        }
    }

    fn send_probe(&mut self, now: Instant, carrier: usize, r: Option<Resolution>) {
        let hop = r.and_then(|r| r.targets.iter().find_map(|t| self.hop_to(t.transport, t.addr)));
        match hop {
            Some(h) => self.send_probe_to(now, carrier, h),
            None => self.carrier_health(carrier, false),
        }
    }

    fn send_probe_to(&mut self, now: Instant, carrier: usize, hop: Hop) {
        let ruri = self.router.carriers()[carrier].uri.text.clone();
        self.send_options(now, hop, &ruri, ClientOwner::Probe { carrier });
    }

    /// An OPTIONS of our own (carrier probe, keepalive of a registered flow) as a client
    /// transaction: its answer, or Timer F, goes to `owner`.
    pub(super) fn send_options(&mut self, now: Instant, hop: Hop, ruri: &str, owner: ClientOwner) {
        let me = self.advertised(&hop);
        let branch = format!("{BRANCH_PREFIX}p-{:x}", self.rng.next_u64());
        let via = self.via_line(&hop, &branch);
        let tag = format!("{:x}", self.rng.next_u64());
        let call_id = format!("{:x}{:x}@sixgate", self.rng.next_u64(), self.rng.next_u64());
        let text = format!(
            "OPTIONS {ruri} SIP/2.0\r\n{via}Max-Forwards: 70\r\n\
             From: <sip:sixgate@{me}>;tag={tag}\r\nTo: <{ruri}>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\n\
             User-Agent: {}\r\nContent-Length: 0\r\n\r\n",
            if self.server_header.is_empty() { "sixgate" } else { &self.server_header }
        );
        let bytes = Bytes::from(text);
        if let Ok(parsed) = parse(bytes.clone(), hop.transport.framing()) {
            self.start_client(now, parsed, bytes, hop, owner, false);
        }
    }
}

/// `seq + offset` if it stays a valid CSeq number (below 2^31, RFC 3261 §8.1.1.5).
fn checked_cseq(seq: u32, offset: u32) -> Option<u32> {
    seq.checked_add(offset).filter(|&n| n < 1 << 31)
}

/// Whether a final answer lets us try the next destination (§16.7 / RFC 3263 failover).
fn failover(status: u16) -> bool {
    status == 408 || (500..600).contains(&status)
}

fn record_best(ctx: &mut ProxyCtx, status: u16, bytes: Option<Bytes>) {
    let better = ctx.best.as_ref().is_none_or(|(s, _)| rank(status) < rank(*s));
    if better {
        ctx.best = Some((status, bytes));
    }
}

/// Methods that create dialogs and so get Record-Route.
fn record_routes(m: Method) -> bool {
    matches!(m, Method::Invite | Method::Subscribe | Method::Refer | Method::Notify)
}

/// Methods whose 2xx creates a dialog record here (and so count against `max_dialogs`).
fn creates_dialog(m: Method) -> bool {
    matches!(m, Method::Invite | Method::Subscribe | Method::Refer)
}

/// The loop-detection hash (§16.6 step 8): what identifies the request as it arrived.
fn loop_hash(req: &Message) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    req.request_uri().map(|u| req.slice(u.span)).hash(&mut h);
    req.from.tag.map(|t| req.slice(t)).hash(&mut h);
    req.to.tag.map(|t| req.slice(t)).hash(&mut h);
    req.slice(req.call_id).hash(&mut h);
    req.cseq.seq.hash(&mut h);
    for p in req.headers_named(HeaderName::ProxyRequire) {
        req.slice(p.value).hash(&mut h);
    }
    h.finish()
}

fn unsupported_tags(msg: &Message, name: HeaderName) -> Vec<String> {
    let mut out = Vec::new();
    for h in msg.headers_named(name) {
        for tag in msg.slice(h.value).split(|&b| b == b',') {
            let t = tag.trim_ascii();
            if !t.is_empty() && !SUPPORTED.iter().any(|s| s.as_bytes().eq_ignore_ascii_case(t)) {
                out.push(String::from_utf8_lossy(t).into_owned());
            }
        }
    }
    out
}
