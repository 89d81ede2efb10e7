//! The registrar (RFC 3261 §10.3): bindings per address-of-record, each remembering the flow it
//! arrived on (RFC 5626 / RFC 3581: requests to the phone go back through that flow, never to a
//! private Contact), Outbound's one-binding-per-flow rule (`+sip.instance` + `reg-id`), Path
//! (RFC 3327), and which flows need keepalives. Sans-IO: time is unix seconds passed in; every
//! change comes back as a [`Change`] for the store, which the engine makes durable before it
//! answers 200.
//!
//! Digest authentication happens before (in the engine, `src/auth/`): this room is told the
//! authenticated user and checks only what REGISTER itself says.
//! Must never: change a binding when it refuses a request, or hand out a binding whose flow it
//! knows to be dead.

pub mod diagnose;
pub mod nat;
pub mod store;

use crate::config::{RegistrarConfig, TransportKind};
use crate::message::{ContactList, HeaderName, Message};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;

/// Where a binding's requests go: our socket, the phone's source address, the transport (for
/// TCP the connection between the two).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Flow {
    pub transport: TransportKind,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// One registered contact of an address-of-record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The address-of-record: the local username.
    pub aor: String,
    /// The Contact URI as the phone wrote it (the Request-URI of requests to it).
    pub contact: String,
    /// `q` as written (`"0.5"`), if given.
    pub q: Option<String>,
    /// Unix seconds.
    pub expires_at: u64,
    pub registered_at: u64,
    pub call_id: String,
    pub cseq: u32,
    /// RFC 5626: `+sip.instance` and `reg-id`, when the phone uses Outbound.
    pub instance: Option<String>,
    pub reg_id: Option<u32>,
    pub flow: Flow,
    /// RFC 3327 Path entries (Route values for requests to this binding), top first.
    pub path: Vec<String>,
    /// Why we think the phone is behind NAT (None: it is not).
    pub nat: Option<String>,
    pub user_agent: Option<String>,
}

impl Binding {
    /// What identifies a binding within its AOR: the flow's instance and reg-id under Outbound
    /// (RFC 5626 §6), else the Contact URI (RFC 3261 §10.3 step 7; compared case-insensitively,
    /// parameters included — phones repeat their Contact byte for byte).
    pub fn key(&self) -> String {
        match (&self.instance, self.reg_id) {
            (Some(i), Some(r)) => format!("ob {i} {r}"),
            _ => format!("uri {}", self.contact.to_ascii_lowercase()),
        }
    }

    /// Whether `other` is the same binding of the same AOR ([`Binding::key`] equality, without
    /// building the keys: this runs for every contact of every REGISTER).
    pub fn same_binding(&self, other: &Binding) -> bool {
        match ((&self.instance, self.reg_id), (&other.instance, other.reg_id)) {
            ((Some(a), Some(x)), (Some(b), Some(y))) => a == b && x == y,
            ((Some(_), Some(_)), _) | (_, (Some(_), Some(_))) => false,
            _ => self.contact.eq_ignore_ascii_case(&other.contact),
        }
    }

    /// The store key: AOR and binding key.
    pub fn store_key(&self) -> String {
        format!("{}\n{}", self.aor, self.key())
    }

    pub fn outbound(&self) -> bool {
        self.instance.is_some() && self.reg_id.is_some()
    }
}

/// A change the store must make durable.
// Changes live for one commit and are mostly Puts: boxing the binding would only add an
// allocation to each.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Put(Binding),
    Delete { store_key: String },
}

/// A refused REGISTER: status, reason phrase, extra headers.
pub type Refusal = (u16, &'static str, Vec<(&'static str, String)>);

/// One Contact of a REGISTER, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ContactIn {
    uri: String,
    expires: Option<u32>,
    q: Option<String>,
    instance: Option<String>,
    reg_id: Option<u32>,
}

/// What a REGISTER asks for, decoded from the message (everything the rules need).
#[derive(Clone, Debug)]
pub struct RegisterRequest {
    pub aor: String,
    contacts: Option<Vec<ContactIn>>,
    star: bool,
    expires_header: Option<u32>,
    call_id: String,
    cseq: u32,
    /// The phone said `Supported: outbound` (RFC 5626 §5.2).
    outbound: bool,
    path: Vec<String>,
    user_agent: Option<String>,
    flow: Flow,
    nat: Option<&'static str>,
}

/// The outcome of an accepted REGISTER.
#[derive(Debug, Default)]
pub struct Applied {
    pub changes: Vec<Change>,
    /// Outbound was used for at least one binding (the 200 then says `Require: outbound`).
    pub outbound: bool,
    /// Flows that got their first binding (the engine starts their keepalives).
    pub new_flows: Vec<Flow>,
}

/// What we know of a flow that carries bindings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowState {
    /// Store keys of the bindings on this flow (a phone has one or a few).
    pub bindings: Vec<String>,
    /// A Contact registered over it: the Request-URI of its OPTIONS keepalives.
    pub contact: String,
    /// Any binding on it is behind NAT (then UDP flows get keepalives).
    pub nat: bool,
    /// OPTIONS keepalives unanswered in a row.
    pub missed: u32,
    /// Unix seconds of the last sign of life (a request or a keepalive answer).
    pub last_seen: u64,
    /// What keepalives taught about the NAT's mapping: the longest silence (seconds since the
    /// phone's last packet) after which a keepalive was still answered, and the shortest after
    /// which one was not.
    pub survived_secs: Option<u64>,
    pub lost_after_secs: Option<u64>,
}

/// The bindings table.
#[derive(Default)]
pub struct Registrar {
    cfg: RegistrarConfig,
    by_aor: HashMap<String, Vec<Binding>>,
    flows: HashMap<Flow, FlowState>,
    /// AORs whose Outbound bindings were lost with their flow, until those would have expired:
    /// a request for them gets 430 Flow Failed (RFC 5626 §5.3) rather than 480.
    failed_flows: HashMap<String, u64>,
}

/// Header values joined by `, ` (repeated headers and comma lists alike).
fn header_text(msg: &Message, name: HeaderName) -> Vec<String> {
    msg.headers_named(name).map(|h| String::from_utf8_lossy(msg.slice(h.value)).into_owned()).collect()
}

/// Whether a comma list header names `tag` (Supported, Require).
pub fn lists_tag(msg: &Message, name: HeaderName, tag: &str) -> bool {
    msg.headers_named(name).any(|h| msg.slice(h.value).split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(tag.as_bytes())))
}

/// Splits `;a=b;c="d;e"` into (name, value) pairs, quotes kept out of the split.
fn params(text: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for ch in text.chars().chain(std::iter::once(';')) {
        match ch {
            '"' => {
                quoted = !quoted;
                cur.push(ch);
            }
            ';' if !quoted => {
                let t = cur.trim();
                if !t.is_empty() {
                    let (k, v) = match t.split_once('=') {
                        Some((k, v)) => (k.trim(), Some(v.trim().to_string())),
                        None => (t, None),
                    };
                    out.push((k.to_ascii_lowercase(), v));
                }
                cur.clear();
            }
            _ => cur.push(ch),
        }
    }
    out
}

impl RegisterRequest {
    /// Decodes a REGISTER for `aor` (the user it authenticated as and its To names) that arrived
    /// on `flow`. Refuses what the message layer lets through but the registrar cannot use.
    pub fn decode(msg: &Message, aor: &str, flow: Flow) -> Result<RegisterRequest, Refusal> {
        let bad = |why: &'static str| (400, why, Vec::new());
        let (contacts, star) = match &msg.contacts {
            ContactList::None => (None, false),
            ContactList::Star => (None, true),
            ContactList::Addrs(list) => {
                let mut out = Vec::with_capacity(list.len());
                for c in list {
                    if !c.uri.is_sip() {
                        return Err((400, "Bad Request (Contact must be a sip: or sips: URI)", Vec::new()));
                    }
                    let uri = String::from_utf8_lossy(msg.slice(c.uri.span)).into_owned();
                    let mut ci = ContactIn { uri, expires: None, q: None, instance: None, reg_id: None };
                    for (k, v) in params(&msg.text(c.params)) {
                        match (k.as_str(), v) {
                            ("expires", Some(v)) => {
                                // Past 2^32-1 is clamped like the Expires header (RFC 3261 §20.19).
                                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                                    return Err(bad("Bad Request (Contact expires is not a number)"));
                                }
                                ci.expires = Some(v.parse::<u64>().map_or(u32::MAX, |n| n.min(u64::from(u32::MAX)) as u32));
                            }
                            ("expires", None) => return Err(bad("Bad Request (Contact expires is not a number)")),
                            ("q", Some(v)) => {
                                let ok = v.parse::<f32>().is_ok_and(|q| (0.0..=1.0).contains(&q)) && v.len() <= 5;
                                if !ok {
                                    return Err(bad("Bad Request (Contact q is not a value from 0 to 1)"));
                                }
                                ci.q = Some(v);
                            }
                            ("+sip.instance", Some(v)) => ci.instance = Some(v.trim_matches('"').to_string()),
                            ("reg-id", Some(v)) => match v.parse::<u32>() {
                                Ok(n) if n > 0 => ci.reg_id = Some(n),
                                _ => return Err(bad("Bad Request (reg-id is not a positive number)")),
                            },
                            _ => {}
                        }
                    }
                    out.push(ci);
                }
                (Some(out), false)
            }
        };
        let nat = nat::request_nat(msg, flow.remote, flow.transport == TransportKind::Tcp);
        Ok(RegisterRequest {
            aor: aor.to_string(),
            contacts,
            star,
            expires_header: msg.expires,
            call_id: String::from_utf8_lossy(msg.slice(msg.call_id)).into_owned(),
            cseq: msg.cseq.seq,
            outbound: lists_tag(msg, HeaderName::Supported, "outbound") || lists_tag(msg, HeaderName::Require, "outbound"),
            path: header_text(msg, HeaderName::Path).iter().flat_map(|v| split_list(v)).collect(),
            user_agent: msg.headers.iter().find(|h| msg.slice(h.name_span).eq_ignore_ascii_case(b"User-Agent")).map(|h| msg.text(h.value).into_owned()),
            flow,
            nat,
        })
    }
}

/// Splits a comma list of name-addrs (`<sip:a;lr>, <sip:b;lr>`), commas inside `<>` or quotes kept.
fn split_list(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut cur) = (0i32, false, String::new());
    for ch in v.chars() {
        match ch {
            '"' => quoted = !quoted,
            '<' if !quoted => depth += 1,
            '>' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                out.push(std::mem::take(&mut cur).trim().to_string());
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out.retain(|s| !s.is_empty());
    out
}

impl Registrar {
    pub fn new(cfg: RegistrarConfig) -> Registrar {
        Registrar { cfg, ..Registrar::default() }
    }

    /// Applies a REGISTER at unix time `now` (RFC 3261 §10.3 steps 6–8). Nothing changes when it
    /// is refused. A REGISTER without Contact is a query: no change, the bindings are listed.
    pub fn register(&mut self, req: &RegisterRequest, now: u64) -> Result<Applied, Refusal> {
        let existing = self.by_aor.get(&req.aor).map(Vec::as_slice).unwrap_or_default();
        let mut applied = Applied::default();
        if req.star {
            // `*` only with Expires: 0 (§10.3 step 6), and alone (the message layer refuses a
            // `*` mixed with addresses).
            if req.expires_header != Some(0) {
                return Err((400, "Bad Request (Contact: * needs Expires: 0)", Vec::new()));
            }
            for b in existing {
                if b.call_id == req.call_id && req.cseq <= b.cseq {
                    return Err((500, "Server Internal Error (out-of-order REGISTER: CSeq not newer)", Vec::new()));
                }
            }
            applied.changes = existing.iter().map(|b| Change::Delete { store_key: b.store_key() }).collect();
            self.apply(&applied.changes);
            return Ok(applied);
        }
        let Some(contacts) = &req.contacts else { return Ok(applied) };
        let mut next: Vec<Binding> = existing.iter().filter(|b| b.expires_at > now).cloned().collect();
        for c in contacts {
            let asked = c.expires.or(req.expires_header).unwrap_or(self.cfg.default_expires);
            if asked != 0 && asked < self.cfg.min_expires {
                return Err((423, "Interval Too Brief", vec![("Min-Expires", self.cfg.min_expires.to_string())]));
            }
            let expires = asked.min(self.cfg.max_expires);
            // Outbound only when the phone asked for it and gave both instance and reg-id
            // (RFC 5626 §6); otherwise the reg-id is ignored.
            let ob = req.outbound && c.instance.is_some() && c.reg_id.is_some();
            let b = Binding {
                aor: req.aor.clone(),
                contact: c.uri.clone(),
                q: c.q.clone(),
                expires_at: now + u64::from(expires),
                registered_at: now,
                call_id: req.call_id.clone(),
                cseq: req.cseq,
                instance: if ob { c.instance.clone() } else { None },
                reg_id: if ob { c.reg_id } else { None },
                flow: req.flow,
                path: req.path.clone(),
                nat: req.nat.map(str::to_string),
                user_agent: req.user_agent.clone(),
            };
            applied.outbound |= ob;
            match next.iter().position(|x| x.same_binding(&b)) {
                Some(i) => {
                    let old = &next[i];
                    if old.call_id == b.call_id && b.cseq <= old.cseq {
                        return Err((500, "Server Internal Error (out-of-order REGISTER: CSeq not newer)", Vec::new()));
                    }
                    if expires == 0 {
                        next.remove(i);
                    } else {
                        next[i] = b;
                    }
                }
                None if expires == 0 => {}
                None => next.push(b),
            }
        }
        if next.len() > self.cfg.max_bindings_per_aor {
            return Err((403, "Forbidden (too many contacts for this address-of-record)", Vec::new()));
        }
        // The changes: deletes for bindings gone (expired ones too), puts for new or refreshed.
        for old in existing {
            if !next.iter().any(|b| b.same_binding(old)) {
                applied.changes.push(Change::Delete { store_key: old.store_key() });
            }
        }
        for b in &next {
            if !existing.contains(b) {
                if !self.flows.contains_key(&b.flow) && !applied.new_flows.contains(&b.flow) {
                    applied.new_flows.push(b.flow);
                }
                applied.changes.push(Change::Put(b.clone()));
            }
        }
        self.apply(&applied.changes);
        if let Some(f) = self.flows.get_mut(&req.flow) {
            f.last_seen = now;
            f.missed = 0;
        }
        Ok(applied)
    }

    /// Applies changes to the tables (also used when loading from the store).
    fn apply(&mut self, changes: &[Change]) {
        for c in changes {
            match c {
                Change::Put(b) => {
                    let list = self.by_aor.entry(b.aor.clone()).or_default();
                    match list.iter().position(|x| x.same_binding(b)) {
                        Some(i) => {
                            let old = std::mem::replace(&mut list[i], b.clone());
                            self.flow_unref(&old);
                        }
                        None => list.push(b.clone()),
                    }
                    let f = self.flows.entry(b.flow).or_insert_with(|| FlowState {
                        bindings: Vec::new(),
                        contact: b.contact.clone(),
                        nat: false,
                        missed: 0,
                        last_seen: b.registered_at,
                        survived_secs: None,
                        lost_after_secs: None,
                    });
                    f.bindings.push(b.store_key());
                    f.nat |= b.nat.is_some();
                    self.failed_flows.remove(&b.aor);
                }
                Change::Delete { store_key } => {
                    let Some((aor, _)) = store_key.split_once('\n') else { continue };
                    let Some(list) = self.by_aor.get_mut(aor) else { continue };
                    if let Some(i) = list.iter().position(|b| &b.store_key() == store_key) {
                        let old = list.remove(i);
                        if list.is_empty() {
                            self.by_aor.remove(aor);
                        }
                        self.flow_unref(&old);
                    }
                }
            }
        }
    }

    fn flow_unref(&mut self, b: &Binding) {
        if let Some(f) = self.flows.get_mut(&b.flow) {
            let key = b.store_key();
            if let Some(i) = f.bindings.iter().position(|k| *k == key) {
                f.bindings.swap_remove(i);
            }
            if f.bindings.is_empty() {
                self.flows.remove(&b.flow);
            }
        }
    }

    /// Loads bindings from the store at start; returns deletes for those already expired.
    pub fn load(&mut self, bindings: Vec<Binding>, now: u64) -> Vec<Change> {
        let (live, dead): (Vec<Binding>, Vec<Binding>) = bindings.into_iter().partition(|b| b.expires_at > now);
        let puts: Vec<Change> = live.into_iter().map(Change::Put).collect();
        self.apply(&puts);
        dead.iter().map(|b| Change::Delete { store_key: b.store_key() }).collect()
    }

    /// The live bindings of `aor`, best first (highest q, then most recent).
    pub fn lookup(&self, aor: &str, now: u64) -> Vec<&Binding> {
        let mut v: Vec<&Binding> = self.by_aor.get(aor).map(|l| l.iter().filter(|b| b.expires_at > now).collect()).unwrap_or_default();
        let q = |b: &Binding| b.q.as_deref().and_then(|q| q.parse::<f32>().ok()).unwrap_or(1.0);
        v.sort_by(|a, b| q(b).total_cmp(&q(a)).then(b.registered_at.cmp(&a.registered_at)));
        v
    }

    /// Whether `aor` lost Outbound flows recently (430 rather than 480 when nothing is left).
    pub fn flow_failed(&self, aor: &str, now: u64) -> bool {
        self.failed_flows.get(aor).is_some_and(|&until| until > now)
    }

    /// Removes every binding whose lifetime ended.
    pub fn purge_expired(&mut self, now: u64) -> Vec<Change> {
        let changes: Vec<Change> =
            self.by_aor.values().flatten().filter(|b| b.expires_at <= now).map(|b| Change::Delete { store_key: b.store_key() }).collect();
        self.apply(&changes);
        self.failed_flows.retain(|_, until| *until > now);
        changes
    }

    /// A flow died (TCP closed, keepalives unanswered): its bindings go.
    pub fn flow_dead(&mut self, flow: &Flow) -> Vec<Change> {
        let Some(f) = self.flows.get(flow) else { return Vec::new() };
        let changes: Vec<Change> = f.bindings.iter().map(|k| Change::Delete { store_key: k.clone() }).collect();
        for k in &f.bindings {
            let Some((aor, _)) = k.split_once('\n') else { continue };
            if let Some(b) = self.by_aor.get(aor).and_then(|l| l.iter().find(|b| b.store_key() == *k)).filter(|b| b.outbound()) {
                let until = self.failed_flows.entry(b.aor.clone()).or_insert(b.expires_at);
                *until = (*until).max(b.expires_at);
            }
        }
        self.apply(&changes);
        self.flows.remove(flow);
        changes
    }

    pub fn flow(&self, flow: &Flow) -> Option<&FlowState> {
        self.flows.get(flow)
    }

    /// A keepalive on `flow` was answered, or a request came over it.
    pub fn flow_alive(&mut self, flow: &Flow, now: u64) {
        if let Some(f) = self.flows.get_mut(flow) {
            f.missed = 0;
            f.last_seen = now;
        }
    }

    /// A keepalive sent after `silence` seconds without a packet from the phone was answered
    /// (the NAT kept its mapping that long) or not.
    pub fn flow_learned(&mut self, flow: &Flow, silence: u64, answered: bool) {
        if let Some(f) = self.flows.get_mut(flow) {
            if answered {
                f.survived_secs = Some(f.survived_secs.map_or(silence, |s| s.max(silence)));
            } else {
                f.lost_after_secs = Some(f.lost_after_secs.map_or(silence, |s| s.min(silence)));
            }
        }
    }

    /// A keepalive went unanswered; true when that makes `keepalive_failures` in a row.
    pub fn flow_missed(&mut self, flow: &Flow) -> bool {
        match self.flows.get_mut(flow) {
            Some(f) => {
                f.missed += 1;
                f.missed >= self.cfg.keepalive_failures
            }
            None => false,
        }
    }

    /// New settings (a reload): they judge the next REGISTERs; bindings stay as they are.
    pub fn set_config(&mut self, cfg: RegistrarConfig) {
        self.cfg = cfg;
    }

    pub fn config(&self) -> &RegistrarConfig {
        &self.cfg
    }

    /// How many bindings and flows are held.
    pub fn sizes(&self) -> (usize, usize) {
        (self.by_aor.values().map(Vec::len).sum(), self.flows.len())
    }

    /// Every binding (for ctl and tests), in no particular order.
    pub fn all(&self) -> impl Iterator<Item = &Binding> {
        self.by_aor.values().flatten()
    }

    /// The `Contact` values for a 200 OK: every current binding of `aor` with its remaining
    /// lifetime (§10.3 step 8).
    pub fn contact_lines(&self, aor: &str, now: u64) -> Vec<String> {
        self.lookup(aor, now)
            .into_iter()
            .map(|b| {
                let mut s = format!("<{}>;expires={}", b.contact, b.expires_at - now);
                if let Some(q) = &b.q {
                    s.push_str(&format!(";q={q}"));
                }
                if let (Some(i), Some(r)) = (&b.instance, b.reg_id) {
                    s.push_str(&format!(";+sip.instance=\"{i}\";reg-id={r}"));
                }
                s
            })
            .collect()
    }
}

/// An HTTP-date (RFC 7231 §7.1.1.1, which SIP's Date uses: RFC 3261 §20.17) for unix seconds.
pub fn http_date(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let days = unix / 86_400;
    let secs = unix % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests;
