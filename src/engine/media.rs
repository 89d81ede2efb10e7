//! The media hand-off inside the engine: for each INVITE/UPDATE/PRACK branch, whether its media goes
//! through the relay ([`crate::media::policy`], from each leg's flow), asking the relay for the
//! sessions an offer needs ([`MediaOp::Create`], answered by [`super::Input::Media`]) while the
//! branch waits, rewriting every SDP on the way ([`crate::media::offer`]), moving the winning
//! branch's sessions into the dialog, deleting everything else, and ending a call whose media
//! stopped (a BYE to both sides, RFC 3261 §15 as a B2BUA would, with a Reason).
//!
//! Must never: forward an SDP of a relayed call unrewritten, keep a relay session that no
//! branch or dialog owns, or send media state to the relay for a party not of the call.

use super::dialog::Dialog;
use super::proxy::Candidate;
use super::{ClientOwner, Engine, Event, Hop, Output, ProxyCtx};
use crate::config::{RelayMode, TransportKind};
use crate::media::offer::{self, CallMedia, Party, PeerUpdate, Side};
use crate::media::policy::{needs_relay, LegView};
use crate::media::sdp::Sdp;
use crate::message::{HeaderName, Message, Method};
use crate::registrar::{nat, Flow};
use sixgate_relay::{Family, LegId, SessionId, SessionInfo, SessionSpec};
use std::time::Instant;

/// What the engine asks of the relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaOp {
    /// Create these sessions, all or none; answer with [`super::Input::Media`].
    Create(Vec<SessionSpec>),
    /// A leg's peer from a party's SDP (no answer expected).
    Update(PeerUpdate),
    /// The session is no longer used (no answer expected).
    Delete(SessionId),
    /// The counters of these sessions; answer with [`super::Input::MediaStats`].
    Stats(Vec<SessionId>),
}

/// `[media]` as the engine applies it.
#[derive(Clone, Debug)]
pub(super) struct MediaPolicy {
    pub mode: RelayMode,
    pub v6: bool,
    pub v4: bool,
    pub end_call_on_timeout: bool,
    /// `[media] one_way_audio_secs` (zero: not judged).
    pub one_way_after: std::time::Duration,
}

impl MediaPolicy {
    pub fn from(cfg: &crate::config::MediaConfig) -> MediaPolicy {
        MediaPolicy { mode: cfg.relay, v6: cfg.ipv6.is_some(), v4: cfg.ipv4.is_some(), end_call_on_timeout: cfg.end_call_on_timeout, one_way_after: std::time::Duration::from_secs(cfg.one_way_audio_secs) }
    }
    fn serves(&self, f: Family) -> bool {
        match f {
            Family::V6 => self.v6,
            Family::V4 => self.v4,
        }
    }
}

/// A relayed call's media, kept with its dialog: the streams (relay sessions, ports and
/// families of both legs), the versions shown, and what we know of each party.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DialogMedia {
    pub call: CallMedia,
    /// Caller, callee.
    pub parties: [Party; 2],
}

/// The media of one branch's request: the streams it uses, the sessions made for it (deleted
/// unless a 2xx adopts them), and the offerer's peers, applied once the answer comes (a
/// rejected re-INVITE leaves the call as it was, RFC 3264 §8).
#[derive(Clone, Debug)]
pub(super) struct BranchMedia {
    pub call: CallMedia,
    pub parties: [Party; 2],
    pub created: Vec<SessionId>,
    pub pending: Vec<PeerUpdate>,
    /// The request's SDP offer as parsed when the branch was planned, until it is rewritten
    /// (parsed once per branch).
    pub offer: Option<Sdp>,
}

impl BranchMedia {
    /// The body the branch's request leaves with, toward the side that receives it. Sessions
    /// made for this offer already hold the offerer's peers; those of reused streams wait for
    /// the answer.
    pub fn offer_body(&mut self, from: Side) -> Option<String> {
        let sdp = self.offer.take()?;
        let (updates, text) = offer::translate(&sdp, from, &mut self.call);
        self.pending = updates.into_iter().filter(|u| !self.created.contains(&u.session)).collect();
        Some(text)
    }
}

/// A branch waiting for its sessions.
pub(super) struct MediaWait {
    pub ctx: u64,
    pub candidate: Candidate,
    pub hop: Hop,
    pub auth: Option<(String, u32)>,
    pub media: BranchMedia,
    /// The m-line each created session serves.
    pub slots: Vec<usize>,
}

/// What a branch's request needs.
pub(super) enum BranchPlan {
    /// Direct media (or no SDP in this method): forward as is.
    Direct,
    Ready(BranchMedia),
    Create { media: BranchMedia, slots: Vec<usize>, specs: Vec<SessionSpec> },
    Refuse(u16, &'static str),
}

fn view(p: &Party) -> LegView {
    LegView { ipv6: p.family == Family::V6, nat: p.nat }
}

/// Whether a message's body is SDP (`Content-Type: application/sdp`, parameters allowed).
fn is_sdp(msg: &Message) -> bool {
    msg.header_value(HeaderName::ContentType).is_some_and(|v| {
        let t = v.split(|&b| b == b';').next().unwrap_or(b"");
        t.trim_ascii().eq_ignore_ascii_case(b"application/sdp")
    })
}

impl Engine {
    /// The caller as the relay sees it: family and source of its flow, and whether it is behind
    /// NAT (its registered flow says so, or this request's Via/Contact do). Carriers never are.
    fn caller_party(&self, ctx: &ProxyCtx, req: &Message) -> Party {
        let from = ctx.from;
        let flow = Flow { transport: from.transport, local: from.local, remote: from.remote };
        let registered = self.registrar.flow(&flow).is_some_and(|f| f.nat);
        let seen = nat::request_nat(req, from.remote, from.transport == TransportKind::Tcp).is_some();
        Party { family: Family::of(&from.remote), nat: ctx.carrier_origin.is_none() && (registered || seen), signal_ip: from.remote.ip() }
    }

    /// Decides the media of a branch about to be sent: direct, ready (an in-dialog offer the
    /// call's streams already carry), sessions to create first, or a refusal (488 for a body we
    /// cannot relay).
    pub(super) fn plan_branch_media(&self, ctx: &ProxyCtx, c: &Candidate, hop: Hop) -> BranchPlan {
        let Some(req) = &ctx.request else { return BranchPlan::Direct };
        if !matches!(ctx.method, Method::Invite | Method::Update | Method::Prack) || self.media.mode == RelayMode::Never {
            return BranchPlan::Direct;
        }
        let (current, parties) = match ctx.dialog {
            Some(did) => match self.dialogs.get(&did).and_then(|d| d.media.as_ref()) {
                Some(m) => (m.call.clone(), m.parties),
                None => return BranchPlan::Direct, // a call with direct media stays direct
            },
            None if ctx.method == Method::Invite => {
                let caller = self.caller_party(ctx, req);
                let callee = Party { family: Family::of(&hop.dest), nat: c.nat, signal_ip: hop.dest.ip() };
                if !needs_relay(self.media.mode, view(&caller), view(&callee)) {
                    return BranchPlan::Direct;
                }
                (CallMedia::default(), [caller, callee])
            }
            None => return BranchPlan::Direct,
        };
        let from = ctx.side;
        let (sender, receiver) = (parties[from.index()], parties[from.other().index()]);
        let mut base = BranchMedia { call: current, parties, created: Vec::new(), pending: Vec::new(), offer: None };
        let body = req.body_bytes();
        let needed: Vec<(usize, SessionSpec)> = if body.is_empty() {
            if !base.call.streams.is_empty() || ctx.method != Method::Invite {
                return BranchPlan::Ready(base);
            }
            // Late offer (RFC 3264 via the 2xx): one audio stream waits for it; the 2xx's
            // offer is shown with it, and any further m-line there is shown disabled.
            let mine = sender.leg(sender.family, None, false, 8000);
            let theirs = receiver.leg(receiver.family, None, false, 8000);
            vec![(0, SessionSpec { legs: [mine, theirs], media_timeout: None })]
        } else {
            if !is_sdp(req) {
                return BranchPlan::Refuse(488, "Not Acceptable Here (body is not application/sdp)");
            }
            let sdp = match Sdp::parse(&body) {
                Ok(s) => s,
                Err(e) => return BranchPlan::Refuse(488, e.reason()),
            };
            if offer::active_streams(&sdp) > offer::MAX_STREAMS {
                return BranchPlan::Refuse(488, "Not Acceptable Here (too many media streams)");
            }
            let receiver_family = |i: usize| base.call.streams.get(i).copied().flatten().map_or(receiver.family, |s| s.family(from.other()));
            let needed = offer::sessions_needed(&sdp, from, &base.call, &sender, &receiver, receiver_family);
            base.offer = Some(sdp);
            needed
        };
        for (_, spec) in &needed {
            for leg in &spec.legs {
                if !self.media.serves(leg.family) {
                    return BranchPlan::Refuse(
                        488,
                        if leg.family == Family::V6 { "Not Acceptable Here (no IPv6 media relay address)" } else { "Not Acceptable Here (no IPv4 media relay address)" },
                    );
                }
            }
        }
        if needed.is_empty() {
            return BranchPlan::Ready(base);
        }
        let (slots, specs) = needed.into_iter().unzip();
        BranchPlan::Create { media: base, slots, specs }
    }

    /// Asks the relay for a branch's sessions; the branch goes out when they exist.
    pub(super) fn create_media(&mut self, wait: MediaWait, specs: Vec<SessionSpec>) {
        let id = self.id();
        if let Some(ctx) = self.contexts.get_mut(&wait.ctx) {
            ctx.media_pending += 1;
        }
        self.media_waits.insert(id, wait);
        self.out.push_back(Output::Media { id, op: MediaOp::Create(specs) });
    }

    /// The relay's answer to [`MediaOp::Create`] `id`.
    pub(super) fn on_media(&mut self, now: Instant, id: u64, result: Result<Vec<SessionInfo>, String>) {
        let Some(mut w) = self.media_waits.remove(&id) else {
            // Nobody waits (cannot happen: waits are only removed here); free what was made.
            for s in result.into_iter().flatten() {
                self.media_op(MediaOp::Delete(s.id));
            }
            return;
        };
        let ctx_id = w.ctx;
        let alive = match self.contexts.get_mut(&ctx_id) {
            Some(ctx) => {
                ctx.media_pending = ctx.media_pending.saturating_sub(1);
                !ctx.cancelled && !ctx.final_sent
            }
            None => false,
        };
        match result {
            Ok(infos) if alive && infos.len() == w.slots.len() => {
                for (slot, info) in w.slots.iter().zip(&infos) {
                    if w.media.call.streams.len() <= *slot {
                        w.media.call.streams.resize(*slot + 1, None);
                    }
                    w.media.call.streams[*slot] = Some(offer::Stream { session: info.id, legs: info.legs });
                    w.media.created.push(info.id);
                }
                if let Some(user) = self.contexts.get(&ctx_id).filter(|c| c.side == Side::Caller).and_then(|c| c.user.clone()) {
                    for info in &infos {
                        self.latch_watch.insert(info.id, user.clone());
                    }
                }
                self.send_branch_with(now, ctx_id, w.candidate, w.hop, w.auth, Some(w.media));
            }
            Ok(infos) => {
                for s in infos {
                    self.media_op(MediaOp::Delete(s.id));
                }
                self.maybe_finish(now, ctx_id);
            }
            Err(why) => {
                self.stats.media_failures += 1;
                tracing::warn!(%why, "no relay session for a call: answered 503");
                if let Some(ctx) = self.contexts.get_mut(&ctx_id) {
                    ctx.media_refused = Some((503, "Service Unavailable (no media relay ports)"));
                }
                self.candidate_failed(now, ctx_id, 503);
            }
        }
    }

    pub(super) fn media_op(&mut self, op: MediaOp) {
        if let MediaOp::Delete(s) = &op {
            self.latch_watch.remove(s);
        }
        self.out.push_back(Output::Media { id: 0, op });
    }

    /// An SDP in a response (an answer, or a late offer in a 2xx) on a relayed branch: the
    /// relay learns the answerer's peers (and the offerer's held ones), and the offerer is shown
    /// the rewritten body. `None`: nothing to rewrite. A body we cannot read is replaced by none
    /// at all rather than passed around the relay.
    fn answer_body(&mut self, resp: &Message, answerer: Side, media: &mut BranchMedia) -> Option<String> {
        let pending = std::mem::take(&mut media.pending);
        for u in pending {
            self.media_op(MediaOp::Update(u));
        }
        self.translate_body(resp, answerer, &mut media.call)
    }

    /// The SDP `from` sent in `msg` (an answer, a late offer in a 2xx, an answer in an ACK or a
    /// PRACK's 2xx), read against `call`: the relay learns `from`'s peers, and the body the
    /// other side is shown comes back. A body we cannot read is replaced by none at all.
    fn translate_body(&mut self, msg: &Message, from: Side, call: &mut CallMedia) -> Option<String> {
        let body = msg.body_bytes();
        if body.is_empty() {
            return None;
        }
        let Some(sdp) = Sdp::parse(&body).ok().filter(|_| is_sdp(msg)) else {
            tracing::info!("unreadable SDP in a message of a relayed call: body removed");
            return Some(String::new());
        };
        let (updates, text) = offer::translate(&sdp, from, call);
        for u in updates {
            self.media_op(MediaOp::Update(u));
        }
        Some(text)
    }

    /// The body of a response on branch `index` of `ctx_id`, read against the branch's early
    /// dialog once it has one (the dialog then owns the sessions), else the branch's media.
    pub(super) fn response_body(&mut self, ctx_id: u64, index: usize, resp: &Message, answerer: Side) -> Option<String> {
        let b = self.contexts.get_mut(&ctx_id)?.branches.get_mut(index)?;
        if let Some(did) = b.early {
            let mut m = self.dialogs.get_mut(&did).and_then(|d| d.media.take())?;
            let body = self.translate_body(resp, answerer, &mut m.call);
            if let Some(d) = self.dialogs.get_mut(&did) {
                d.media = Some(m);
            }
            return body;
        }
        let mut media = b.media.take()?;
        let body = self.answer_body(resp, answerer, &mut media);
        if let Some(b) = self.contexts.get_mut(&ctx_id).and_then(|c| c.branches.get_mut(index)) {
            b.media = Some(media);
        } else {
            self.release_branch_media(Some(media));
        }
        body
    }

    /// Deletes the sessions made for a branch that will not carry the call.
    pub(super) fn release_branch_media(&mut self, media: Option<BranchMedia>) {
        for s in media.map(|m| m.created).unwrap_or_default() {
            self.media_op(MediaOp::Delete(s));
        }
    }

    /// A 2xx adopted branch media into dialog `did`: the dialog's sessions that the new media no
    /// longer uses are deleted (a re-INVITE that changed family).
    pub(super) fn adopt_media(&mut self, did: u64, media: BranchMedia) {
        let Some(d) = self.dialogs.get_mut(&did) else {
            self.release_branch_media(Some(media));
            return;
        };
        let keep: Vec<SessionId> = media.call.streams.iter().flatten().map(|s| s.session).collect();
        let old = d.media.replace(DialogMedia { call: media.call, parties: media.parties });
        let gone: Vec<SessionId> = old.iter().flat_map(|m| m.call.streams.iter().flatten().map(|s| s.session)).filter(|s| !keep.contains(s)).collect();
        for s in gone {
            self.media_op(MediaOp::Delete(s));
        }
    }

    /// The ACK of a 2xx with a body (the answer to a late offer): the relay learns the caller's
    /// peers and the callee is shown the rewritten answer.
    pub(super) fn ack_body(&mut self, did: u64, ack: &Message, from: Side) -> Option<String> {
        let mut m = self.dialogs.get_mut(&did)?.media.take()?;
        let text = self.translate_body(ack, from, &mut m.call);
        if let Some(d) = self.dialogs.get_mut(&did) {
            d.media = Some(m);
        }
        text
    }

    /// A leg's first accepted packet: for a call a local user placed, where its phone's RTP
    /// really comes from (`sixgate ctl diagnose`).
    pub(super) fn on_media_first_packet(&mut self, now: Instant, session: SessionId, leg: LegId, from: std::net::SocketAddr) {
        if leg != LegId::A {
            return;
        }
        let Some(user) = self.latch_watch.get(&session) else { return };
        let at = self.unix_now(now);
        if let Some(e) = self.phones.get_mut(user) {
            e.media = Some(crate::registrar::diagnose::MediaSeen { at, latched: from });
        }
    }

    /// The relay heard nothing on a leg for the media timeout. A call that has not been
    /// answered yet (ringing without early media) is not judged.
    pub(super) fn on_media_timeout(&mut self, now: Instant, session: SessionId, leg: LegId) {
        let ours = |d: &&Dialog| !d.early && d.media.as_ref().is_some_and(|m| m.call.streams.iter().flatten().any(|s| s.session == session));
        let Some((&did, d)) = self.dialogs.iter().find(|(_, d)| ours(d)) else {
            return;
        };
        let call_id = String::from_utf8_lossy(&d.call_id).into_owned();
        let silent = if leg == LegId::A { "caller" } else { "callee" };
        self.stats.media_timeouts += 1;
        tracing::warn!(%call_id, silent, end_call = self.media.end_call_on_timeout, "no media from the {silent} for the media timeout");
        self.event(Event::MediaTimeout { call_id, silent });
        if self.media.end_call_on_timeout {
            self.teardown(now, did);
        }
    }

    /// Ends a dialog from the middle: a BYE to each side as the other side would send it, with
    /// a Reason (RFC 3326), then the dialog and its media go.
    fn teardown(&mut self, now: Instant, did: u64) {
        let Some(d) = self.dialogs.get(&did) else { return };
        let byes = [(bye_for(d, Side::Callee), d.callee_target), (bye_for(d, Side::Caller), d.caller_target)];
        for (parts, hop) in byes {
            let branch = format!("z9hG4bK-sgb-{:x}", self.rng.next_u64());
            let via = self.via_line(&hop, &branch);
            let text = format!("{}{via}{}", parts.0, parts.1);
            let bytes = bytes::Bytes::from(text);
            if let Ok(parsed) = crate::message::parse(bytes.clone(), hop.transport.framing()) {
                self.start_client(now, parsed, bytes, hop, ClientOwner::Ours, false);
            }
        }
        self.end_call(now, did, "media timeout");
    }
}

/// The BYE toward `to` (start line, then the rest after our Via), as the other party would
/// send it: its From/To, the next CSeq of its side, the route set toward `to`.
fn bye_for(d: &Dialog, to: Side) -> (String, String) {
    let t = &d.teardown;
    let (ruri, routes, from, to_hdr, cseq) = match to {
        Side::Callee => (&t.callee_uri, &t.callee_routes, &t.caller_from, &t.callee_to, t.caller_cseq.wrapping_add(d.cseq_offset).wrapping_add(1)),
        Side::Caller => (&t.caller_uri, &t.caller_routes, &t.callee_to, &t.caller_from, t.callee_cseq.wrapping_add(1)),
    };
    let mut rest = String::new();
    for r in routes {
        rest.push_str(&format!("Route: {r}\r\n"));
    }
    rest.push_str(&format!(
        "Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to_hdr}\r\nCall-ID: {}\r\nCSeq: {cseq} BYE\r\n\
         Reason: Q.850;cause=102;text=\"media timeout\"\r\nContent-Length: 0\r\n\r\n",
        String::from_utf8_lossy(&d.call_id)
    ));
    (format!("BYE {ruri} SIP/2.0\r\n"), rest)
}
