//! Deterministic simulation of the engine: a fake clock that jumps to the next deadline, fake
//! phones and carriers that speak SIP text, and a seeded lossy network between them.

use super::*;
use crate::auth::{answer_challenge, Challenge};
use crate::message::{parse, Framing, HeaderName};

pub(super) const CFG: &str = r#"
[sip]
domains = ["sixgate.test"]
[[listen]]
transport = "udp"
address = "2001:db8::5"
port = 5060
[[listen]]
transport = "udp"
address = "192.0.2.5"
port = 5060
[[listen]]
transport = "tcp"
address = "2001:db8::5"
port = 5060
[[listen]]
transport = "tcp"
address = "192.0.2.5"
port = 5060
[auth]
realm = "sixgate.test"
algorithms = ["SHA-256", "MD5"]
[limits]
invite_rate_per_source = 5
invite_burst_per_source = 10
[[users]]
username = "alice"
password = "secret"
numbers = ["+442071234567"]
[[users]]
username = "pbx"
password = "pbxsecret"
numbers = ["+442079000000"]
contacts = ["sip:pbx@[2001:db8::77]:5060"]
[[carriers]]
name = "primary"
uri = "sip:198.51.100.1:5060"
prefixes = ["+44"]
priority = 1
source_cidrs = ["198.51.100.0/28"]
username = "trunk1"
password = "trunkpass"
probe_interval_secs = 0
[[carriers]]
name = "backup"
uri = "sip:198.51.100.2:5060"
prefixes = ["+44"]
priority = 2
probe_interval_secs = 0
[media]
relay = "never"
"#;

pub(super) const PHONE: &str = "[2001:db8::10]:5062";
const PRIMARY: &str = "198.51.100.1:5060";
const BACKUP: &str = "198.51.100.2:5060";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub(super) struct Sim {
    pub(super) eng: Engine,
    pub(super) t0: Instant,
    pub(super) now: Instant,
    /// What the store was asked to make durable (every request is acknowledged at once).
    pub(super) stored: Vec<Change>,
    /// Answer store requests with a failure.
    pub(super) store_fails: bool,
    /// Every relay request, and the relay that answers them.
    pub(super) media_ops: Vec<MediaOp>,
    pub(super) relay: crate::fuzzing::FakeRelay,
    /// Every event the engine told.
    pub(super) events: Vec<Event>,
}

impl Sim {
    pub(super) fn new() -> Sim {
        Sim::with(CFG)
    }
    pub(super) fn with(cfg: &str) -> Sim {
        let cfg = Config::from_toml(cfg).unwrap();
        let mut eng = Engine::new(&cfg, EngineParams { seed: 7, nonce_key: [3; 32], unix_time: 1_800_000_000 });
        let t0 = Instant::now();
        eng.start(t0);
        Sim { eng, t0, now: t0, stored: Vec::new(), store_fails: false, media_ops: Vec::new(), relay: Default::default(), events: Vec::new() }
    }

    pub(super) fn inbound(&self, transport: TransportKind, remote: &str) -> Inbound {
        let remote = sa(remote);
        let local = match (transport, remote.is_ipv6()) {
            (_, true) => sa("[2001:db8::5]:5060"),
            (_, false) => sa("192.0.2.5:5060"),
        };
        Inbound { transport, local, remote }
    }

    /// Delivers SIP text from `remote` over UDP and returns what the engine sent.
    pub(super) fn send(&mut self, remote: &str, text: &str) -> Vec<Transmit> {
        self.send_over(TransportKind::Udp, remote, text)
    }

    pub(super) fn send_over(&mut self, transport: TransportKind, remote: &str, text: &str) -> Vec<Transmit> {
        let framing = transport.framing();
        let msg = parse(Bytes::copy_from_slice(text.as_bytes()), framing).unwrap_or_else(|e| panic!("{e}: {text}"));
        let from = self.inbound(transport, remote);
        self.eng.handle(self.now, Input::Received { msg, from });
        self.drain()
    }

    pub(super) fn drain(&mut self) -> Vec<Transmit> {
        let mut v = Vec::new();
        // Bounded: store answers only release the replies already waiting.
        for _ in 0..1000 {
            let mut acks = Vec::new();
            let mut made = Vec::new();
            while let Some(o) = self.eng.poll_output() {
                match o {
                    Output::Transmit(t) => v.push(t),
                    Output::Store { id, changes } => {
                        self.stored.extend(changes);
                        acks.push(id);
                    }
                    Output::Media { id, op } => {
                        made.extend(self.relay.answer(&op).map(|r| (id, r)));
                        self.media_ops.push(op);
                    }
                    Output::Event(e) => self.events.push(e),
                    _ => {}
                }
            }
            if acks.is_empty() && made.is_empty() {
                break;
            }
            for id in acks {
                self.eng.handle(self.now, Input::Stored { id, ok: !self.store_fails });
            }
            for (id, result) in made {
                self.eng.handle(self.now, Input::Media { id, result });
            }
        }
        v
    }

    /// Jumps to the next deadline (at most to `limit` after t0); returns what was sent.
    pub(super) fn step(&mut self, limit: Duration) -> Option<Vec<Transmit>> {
        let at = self.eng.poll_timeout()?;
        // Housekeeping ticks forever; stop at the limit.
        if at > self.t0 + limit {
            return None;
        }
        self.now = self.now.max(at);
        self.eng.handle_timeout(self.now);
        Some(self.drain())
    }

    pub(super) fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    /// Runs every timer up to `limit`, collecting (time, transmit).
    pub(super) fn run_until(&mut self, limit: Duration) -> Vec<(Duration, Transmit)> {
        let mut out = Vec::new();
        for _ in 0..100_000 {
            let Some(sent) = self.step(limit) else { break };
            let t = self.elapsed();
            out.extend(sent.into_iter().map(|x| (t, x)));
        }
        out
    }

    /// Every transaction, context and lookup is gone (dialogs may remain).
    pub(super) fn drained(&self) -> bool {
        TableSizes { dialogs: 0, ..self.eng.table_sizes() }.is_empty()
    }
}

pub(super) fn text(t: &Transmit) -> String {
    String::from_utf8_lossy(&t.bytes).into_owned()
}

pub(super) fn status(t: &Transmit) -> u16 {
    text(t)[8..11].parse().unwrap_or(0)
}

pub(super) fn msg_of(t: &Transmit) -> Message {
    parse(t.bytes.clone(), Framing::Datagram).unwrap()
}

pub(super) fn header(t: &Transmit, name: &str) -> Vec<String> {
    text(t).lines().filter_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string)).collect()
}

pub(super) fn invite(ruri: &str, from_user: &str, call: &str, branch: &str, cseq: u32, extra: &str) -> String {
    format!(
        "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::10]:5062;branch=z9hG4bK{branch};rport\r\nMax-Forwards: 70\r\n\
         From: <sip:{from_user}@sixgate.test>;tag=caller1\r\nTo: <{ruri}>\r\nCall-ID: {call}\r\nCSeq: {cseq} INVITE\r\n\
         Contact: <sip:{from_user}@[2001:db8::10]:5062>\r\n{extra}Content-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n"
    )
}

/// The response a fake UA sends to the request it received in `t`: Vias, From, To (+ tag),
/// Call-ID and CSeq copied.
pub(super) fn respond(t: &Transmit, code: u16, reason: &str, to_tag: Option<&str>, extra: &str) -> String {
    let m = msg_of(t);
    let mut s = format!("SIP/2.0 {code} {reason}\r\n");
    for h in m.headers.iter() {
        let line = m.text(h.line);
        match h.name {
            HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq | HeaderName::RecordRoute => s.push_str(&line),
            HeaderName::To => {
                s.push_str(line.trim_end());
                if let (Some(tag), None) = (to_tag, m.to.tag) {
                    s.push_str(&format!(";tag={tag}"));
                }
                s.push_str("\r\n");
            }
            _ => {}
        }
    }
    s.push_str(extra);
    s.push_str("Content-Length: 0\r\n\r\n");
    s
}

/// Alice's INVITE through the 407 round: returns the transmits after the authenticated INVITE.
fn authed_invite(sim: &mut Sim, number: &str, call: &str) -> Vec<Transmit> {
    let ruri = format!("sip:{number}@sixgate.test");
    let out = sim.send(PHONE, &invite(&ruri, "alice", call, &format!("{call}a1"), 1, ""));
    let c407 = out.iter().find(|t| status(t) == 407).expect("407");
    let ch = header(c407, "Proxy-Authenticate").iter().find_map(|v| Challenge::parse(v.as_bytes()).filter(|c| c.algorithm == crate::auth::Algorithm::Md5)).unwrap();
    sim.send(PHONE, &format!("ACK {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::10]:5062;branch=z9hG4bK{call}a1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:alice@sixgate.test>;tag=caller1\r\nTo: <{ruri}>;tag={}\r\nCall-ID: {call}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n", msg_of(c407).text(msg_of(c407).to.tag.unwrap())));
    let cred = answer_challenge(&ch, "alice", "secret", b"INVITE", &ruri, "cn1");
    let claim = "P-Asserted-Identity: <sip:+19999@sixgate.test>\r\n";
    sim.send(PHONE, &invite(&ruri, "alice", call, &format!("{call}a2"), 2, &format!("Proxy-Authorization: {cred}\r\n{claim}")))
}

#[test]
fn options_to_the_proxy_itself_and_refusals_carry_the_right_status() {
    let mut sim = Sim::new();
    let n = std::cell::Cell::new(0);
    let req = |method: &str, ruri: &str, extra: &str| {
        n.set(n.get() + 1);
        format!(
            "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::10]:5062;branch=z9hG4bK{}{method};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:x@elsewhere.example>;tag=1\r\nTo: <{ruri}>\r\nCall-ID: c-{ruri}\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n",
            n.get()
        )
    };
    let out = sim.send(PHONE, &req("OPTIONS", "sip:sixgate.test", ""));
    assert_eq!(status(&out[0]), 200);
    assert!(text(&out[0]).contains("\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS"), "{}", text(&out[0]));
    assert_eq!(out[0].dest, sa(PHONE), "rport: back to the source port");
    let cases = [
        (req("OPTIONS", "sip:bob@elsewhere.example", ""), 403),
        (req("OPTIONS", "sip:nobody@sixgate.test", ""), 403), // not a local user: nothing to challenge
        (req("OPTIONS", "sip:sixgate.test", "Proxy-Require: foo\r\n"), 420),
        (req("OPTIONS", "sip:sixgate.test", "Require: foo\r\n"), 420),
        (req("OPTIONS", "nobodyknowsthisscheme:x", ""), 416),
        (req("REGISTER", "sip:sixgate.test", ""), 401), // the registrar challenges
        (req("REGISTER", "sip:elsewhere.example", ""), 403),
        (req("BYE", "sip:sixgate.test", ""), 481),
        (req("FOO", "sip:sixgate.test", ""), 501),
        (req("INVITE", "sip:bob@elsewhere.example", "").replace("Max-Forwards: 70", "Max-Forwards: 0"), 483),
        (req("BYE", "sip:+442079999999@198.51.100.1", "").replace("To: <sip:+442079999999@198.51.100.1>", "To: <sip:+442079999999@198.51.100.1>;tag=x"), 481),
    ];
    for (r, code) in cases {
        let out = sim.send(PHONE, &r);
        let last = out.last().unwrap_or_else(|| panic!("no answer to {r}"));
        assert_eq!(status(last), code, "{r}\n->\n{}\n{out:?}", text(last));
        assert!(out.iter().all(|t| t.dest == sa(PHONE)), "nothing may go anywhere else");
    }
}

#[test]
fn no_unauthenticated_request_reaches_a_carrier() {
    let mut sim = Sim::new();
    // A local user without credentials: 100 then 407 with SHA-256 and MD5 challenges.
    let out = sim.send(PHONE, &invite("sip:+442079999999@sixgate.test", "alice", "c1", "x1", 1, ""));
    assert_eq!(out.iter().map(status).collect::<Vec<_>>(), vec![407]);
    assert!(sim.eng.table_sizes().is_empty(), "a challenge holds no state");
    let challenges = header(&out[0], "Proxy-Authenticate");
    assert!(challenges[0].contains("algorithm=SHA-256") && challenges[1].contains("algorithm=MD5"), "{challenges:?}");
    // Somebody else's From: 403 straight away.
    let out = sim.send(PHONE, &invite("sip:+442079999999@sixgate.test", "mallory", "c2", "x2", 1, "").replace("mallory@sixgate.test", "mallory@evil.example"));
    assert_eq!(status(out.last().unwrap()), 403);
    // Wrong password: 403.
    let out = sim.send(PHONE, &invite("sip:+442079999999@sixgate.test", "alice", "c3", "x3", 1, "Proxy-Authorization: Digest username=\"alice\", realm=\"sixgate.test\", nonce=\"0.abc\", uri=\"sip:+442079999999@sixgate.test\", response=\"00\"\r\n"));
    assert_eq!(status(out.last().unwrap()), 403);
    // A made-up in-dialog INVITE straight at a carrier: no such dialog.
    let fake = invite("sip:+442079999999@198.51.100.1", "alice", "c4", "x4", 1, "").replace("To: <sip:+442079999999@198.51.100.1>", "To: <sip:+442079999999@198.51.100.1>;tag=zz");
    let out = sim.send(PHONE, &fake);
    assert_eq!(status(out.last().unwrap()), 481);
    // From a carrier's network to a number that is not local: 404.
    let out = sim.send("198.51.100.3:5060", &invite("sip:+442079999999@sixgate.test", "x", "c5", "x5", 1, "").replace("[2001:db8::10]:5062", "198.51.100.3:5060"));
    assert_eq!(status(out.last().unwrap()), 404);
    let all: Vec<_> = [&out].into_iter().flatten().collect();
    assert!(all.iter().all(|t| t.dest != sa(PRIMARY) && t.dest != sa(BACKUP)));
    assert_eq!(sim.eng.stats.requests_forwarded, 0, "nothing was forwarded");
}

#[test]
fn a_full_call_from_an_ipv6_phone_to_an_ipv4_carrier() {
    let mut sim = Sim::new();
    let out = authed_invite(&mut sim, "+442079999999", "call-1");
    assert_eq!(out.len(), 2, "100 upstream + INVITE to the carrier");
    assert_eq!(status(&out[0]), 100);
    let inv = &out[1];
    assert_eq!(inv.dest, sa(PRIMARY));
    assert_eq!(inv.local, sa("192.0.2.5:5060"), "leaves on the IPv4 socket");
    let t = text(inv);
    assert!(t.starts_with("INVITE sip:+442079999999@198.51.100.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.5:5060;branch=z9hG4bK-sg"), "{t}");
    assert_eq!(header(inv, "Record-Route"), vec!["<sip:192.0.2.5:5060;lr>", "<sip:[2001:db8::5]:5060;lr>"], "two Record-Routes, outbound side on top");
    assert!(t.contains("Max-Forwards: 69\r\n") && !t.contains("Proxy-Authorization"), "{t}");
    // We assert the caller's identity from the credentials; the phone's own claim is dropped.
    assert!(t.contains("\r\nP-Asserted-Identity: <sip:+442071234567@sixgate.test>\r\n"), "{t}");
    assert!(!t.contains("+19999"), "{t}");
    assert!(t.ends_with("\r\n\r\nv=0\n"), "body untouched");
    // The carrier rings and answers.
    let out = sim.send(PRIMARY, &respond(inv, 180, "Ringing", Some("carrier9"), ""));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dest, sa(PHONE));
    assert_eq!(header(&out[0], "Via").len(), 1, "our Via popped");
    let ok = respond(inv, 200, "OK", Some("carrier9"), "Contact: <sip:+442079999999@198.51.100.1:5060>\r\n");
    let out = sim.send(PRIMARY, &ok);
    assert_eq!(status(&out[0]), 200);
    assert_eq!(header(&out[0], "Record-Route").len(), 2);
    assert_eq!(sim.eng.dialogs().count(), 1);
    let d = sim.eng.dialogs().next().unwrap();
    assert!(d.crosses_family() && d.carrier.as_deref() == Some("primary") && d.user.as_deref() == Some("alice"));
    // A retransmitted 200 is passed on too (the UAC's ACK stops it end to end).
    let out = sim.send(PRIMARY, &ok);
    assert_eq!(out.len(), 1);
    // ACK and BYE from the phone along the route set [v6 side, v4 side].
    let in_dialog = |method: &str, cseq: u32, branch: &str| {
        format!(
            "{method} sip:+442079999999@198.51.100.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::10]:5062;branch=z9hG4bK{branch};rport\r\n\
             Route: <sip:[2001:db8::5]:5060;lr>\r\nRoute: <sip:192.0.2.5:5060;lr>\r\nMax-Forwards: 70\r\n\
             From: <sip:alice@sixgate.test>;tag=caller1\r\nTo: <sip:+442079999999@sixgate.test>;tag=carrier9\r\nCall-ID: call-1\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        )
    };
    // Phones repeat their credentials on the ACK (baresip does): our realm's never leave.
    let ack = in_dialog("ACK", 2, "ack").replace("Max-Forwards: 70\r\n", "Max-Forwards: 70\r\nProxy-Authorization: Digest username=\"alice\", realm=\"sixgate.test\", nonce=\"x\", uri=\"y\", response=\"z\"\r\n");
    let out = sim.send(PHONE, &ack);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dest, sa(PRIMARY));
    assert!(!text(&out[0]).contains("Route:"), "both of our Route entries popped:\n{}", text(&out[0]));
    assert!(!text(&out[0]).contains("Proxy-Authorization"), "{}", text(&out[0]));
    let out = sim.send(PHONE, &in_dialog("BYE", 3, "bye"));
    let bye = out.iter().find(|t| t.dest == sa(PRIMARY)).expect("BYE forwarded");
    let out = sim.send(PRIMARY, &respond(bye, 200, "OK", None, ""));
    assert_eq!(status(&out[0]), 200);
    assert_eq!(sim.eng.dialogs().count(), 0, "BYE ended the dialog");
    sim.run_until(Duration::from_secs(120));
    assert!(sim.drained(), "{:?}", sim.eng.table_sizes());
}

#[test]
fn invite_to_a_silent_carrier_retransmits_on_timer_a_then_fails_over() {
    let mut sim = Sim::new();
    let out = authed_invite(&mut sim, "+442079999999", "call-2");
    assert_eq!(out[1].dest, sa(PRIMARY));
    let sent = sim.run_until(Duration::from_secs(31) + Duration::from_millis(900));
    let to_primary: Vec<u64> = sent.iter().filter(|(_, t)| t.dest == sa(PRIMARY)).map(|(d, _)| d.as_millis() as u64).collect();
    assert_eq!(to_primary, vec![500, 1500, 3500, 7500, 15500, 31500], "Timer A doubles from T1");
    // Timer B at 32 s: the next carrier gets the call, the primary is marked down.
    let sent = sim.run_until(Duration::from_secs(32));
    assert!(sent.iter().any(|(d, t)| *d == Duration::from_secs(32) && t.dest == sa(BACKUP)), "{sent:?}");
    // Not probed (probe_interval_secs = 0): a call's timeout never marks it down, or nothing
    // would bring it back (the probe test covers marking down).
    assert_eq!(sim.eng.carrier_up("primary"), Some(true));
    // The backup answers 503: the best of 408 (primary) and 503 is the 408 (§16.7 step 6).
    let inv = sent.iter().find(|(_, t)| t.dest == sa(BACKUP)).unwrap().1.clone();
    let out = sim.send(BACKUP, &respond(&inv, 503, "Service Unavailable", Some("b1"), ""));
    assert!(out.iter().any(|t| t.dest == sa(BACKUP) && text(t).starts_with("ACK ")), "hop-by-hop ACK for the 503");
    let up = out.iter().find(|t| t.dest == sa(PHONE)).unwrap();
    assert_eq!(status(up), 408);
    // Final response retransmitted until the phone ACKs (it doesn't): then everything drains.
    sim.run_until(Duration::from_secs(200));
    assert!(sim.drained(), "{:?}", sim.eng.table_sizes());
}

#[test]
fn non_invite_retransmits_half_one_two_four_four_and_times_out_at_32_s() {
    let mut sim = Sim::new();
    // The PBX user's static contact; a MESSAGE from a carrier (trusted source).
    let req = "MESSAGE sip:+442079000000@sixgate.test SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKm1\r\nMax-Forwards: 70\r\n\
               From: <sip:+441@198.51.100.1>;tag=m\r\nTo: <sip:+442079000000@sixgate.test>\r\nCall-ID: m1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n";
    let out = sim.send(PRIMARY, req);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dest, sa("[2001:db8::77]:5060"));
    assert_eq!(out[0].local, sa("[2001:db8::5]:5060"));
    let sent = sim.run_until(Duration::from_secs(40));
    let times: Vec<u64> = sent.iter().filter(|(_, t)| t.dest == sa("[2001:db8::77]:5060")).map(|(d, _)| d.as_millis() as u64).collect();
    let gaps: Vec<u64> = times.iter().scan(0, |p, &t| {
        let g = t - *p;
        *p = t;
        Some(g)
    }).collect();
    assert_eq!(&gaps[..5], &[500, 1000, 2000, 4000, 4000]);
    let answer = sent.iter().find(|(_, t)| t.dest == sa(PRIMARY)).expect("answered upstream");
    assert_eq!((answer.0, status(&answer.1)), (Duration::from_secs(32), 408));
    sim.run_until(Duration::from_secs(100));
    assert!(sim.drained(), "{:?}", sim.eng.table_sizes());
}

#[test]
fn nothing_retransmits_over_tcp() {
    let cfg = CFG.replace("uri = \"sip:198.51.100.1:5060\"", "uri = \"sip:198.51.100.1:5060;transport=tcp\"");
    let mut sim = Sim::with(&cfg);
    let out = authed_invite(&mut sim, "+442079999999", "call-t");
    assert_eq!(out[1].transport, TransportKind::Tcp);
    assert!(text(&out[1]).contains("Via: SIP/2.0/TCP 192.0.2.5:5060;"));
    assert_eq!(header(&out[1], "Record-Route"), vec!["<sip:192.0.2.5:5060;transport=tcp;lr>", "<sip:[2001:db8::5]:5060;lr>"]);
    let sent = sim.run_until(Duration::from_secs(31));
    assert!(sent.iter().all(|(_, t)| t.dest != sa(PRIMARY)), "no retransmission over TCP: {sent:?}");
}

#[test]
fn cancel_before_answer_and_busy_are_relayed_hop_by_hop() {
    let mut sim = Sim::new();
    let out = authed_invite(&mut sim, "+442079999999", "call-3");
    let inv = out[1].clone();
    sim.send(PRIMARY, &respond(&inv, 180, "Ringing", Some("r"), ""));
    let cancel = "CANCEL sip:+442079999999@sixgate.test SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::10]:5062;branch=z9hG4bKcall-3a2;rport\r\nMax-Forwards: 70\r\n\
                  From: <sip:alice@sixgate.test>;tag=caller1\r\nTo: <sip:+442079999999@sixgate.test>\r\nCall-ID: call-3\r\nCSeq: 2 CANCEL\r\nContent-Length: 0\r\n\r\n";
    let out = sim.send(PHONE, cancel);
    assert_eq!(status(&out[0]), 200, "CANCEL answered at once");
    let c = out.iter().find(|t| t.dest == sa(PRIMARY)).expect("CANCEL forwarded");
    assert!(text(c).starts_with("CANCEL sip:+442079999999@198.51.100.1:5060 SIP/2.0\r\n"));
    assert_eq!(msg_of(c).slice(msg_of(c).top_via().branch.unwrap()), msg_of(&inv).slice(msg_of(&inv).top_via().branch.unwrap()), "same branch as the INVITE");
    sim.send(PRIMARY, &respond(c, 200, "OK", Some("r"), ""));
    let out = sim.send(PRIMARY, &respond(&inv, 487, "Request Terminated", Some("r"), ""));
    assert!(out.iter().any(|t| t.dest == sa(PRIMARY) && text(t).starts_with("ACK ")));
    assert_eq!(status(out.iter().find(|t| t.dest == sa(PHONE)).unwrap()), 487);

    // 486 from the carrier goes up as it is.
    let out = authed_invite(&mut sim, "+442079999999", "call-4");
    let out = sim.send(PRIMARY, &respond(&out[1], 486, "Busy Here", Some("b"), ""));
    assert_eq!(status(out.iter().find(|t| t.dest == sa(PHONE)).unwrap()), 486);
    assert!(out.iter().all(|t| t.dest != sa(BACKUP)), "4xx is not failed over");
    sim.run_until(Duration::from_secs(120));
    assert!(sim.drained(), "{:?}", sim.eng.table_sizes());
}

#[test]
fn a_carrier_challenge_is_answered_with_the_carriers_credentials() {
    let mut sim = Sim::new();
    let out = authed_invite(&mut sim, "+442079999999", "call-5");
    let inv = out[1].clone();
    let out = sim.send(PRIMARY, &respond(&inv, 401, "Unauthorized", Some("u"), "WWW-Authenticate: Digest realm=\"carrier\", nonce=\"n1\", qop=\"auth\", algorithm=MD5\r\n"));
    let retry = out.iter().find(|t| t.dest == sa(PRIMARY) && text(t).starts_with("INVITE ")).expect("retried");
    let t = text(retry);
    assert!(t.contains("CSeq: 3 INVITE\r\n"), "CSeq one up: {t}");
    let auth = header(retry, "Authorization");
    assert!(auth[0].contains("username=\"trunk1\"") && auth[0].contains("realm=\"carrier\""), "{auth:?}");
    assert!(out.iter().all(|t| t.dest != sa(PHONE)), "the caller never sees the carrier's challenge");
    let out = sim.send(PRIMARY, &respond(retry, 200, "OK", Some("u2"), "Contact: <sip:x@198.51.100.1>\r\n"));
    let up = out.iter().find(|t| t.dest == sa(PHONE)).unwrap();
    assert!(text(up).contains("CSeq: 2 INVITE\r\n"), "the caller's CSeq restored: {}", text(up));
    assert_eq!(sim.eng.dialogs().next().unwrap().cseq_offset, 1);
}

#[test]
fn a_lost_ack_makes_the_final_response_retransmit_until_timer_h() {
    let mut sim = Sim::new();
    let out = authed_invite(&mut sim, "+442079999999", "call-6");
    let o = sim.send(PRIMARY, &respond(&out[1], 486, "Busy Here", Some("b"), ""));
    assert!(o.iter().any(|t| t.dest == sa(PHONE) && status(t) == 486));
    let sent = sim.run_until(Duration::from_secs(40));
    let to_phone: Vec<u64> = sent.iter().filter(|(_, t)| t.dest == sa(PHONE) && status(t) == 486).map(|(d, _)| d.as_millis() as u64).collect();
    assert_eq!(&to_phone[..5], &[500, 1500, 3500, 7500, 11500], "Timer G, capped at T2");
    assert!(to_phone.iter().all(|&t| t < 32_000), "Timer H ends it at 32 s");
    sim.run_until(Duration::from_secs(100));
    assert!(sim.drained(), "{:?}", sim.eng.table_sizes());
}

#[test]
fn calls_from_a_carrier_reach_a_static_contact_without_digest() {
    let mut sim = Sim::new();
    let out = sim.send(PRIMARY, &invite("sip:+442079000000@sixgate.test", "x", "in-1", "i1", 1, "").replace("[2001:db8::10]:5062", "198.51.100.1:5060").replace("x@sixgate.test", "+441@198.51.100.1"));
    assert_eq!(status(&out[0]), 100);
    let fwd = out.iter().find(|t| t.dest == sa("[2001:db8::77]:5060")).expect("to the PBX over IPv6");
    assert!(text(fwd).starts_with("INVITE sip:pbx@[2001:db8::77]:5060 SIP/2.0\r\n"));
    assert_eq!(header(fwd, "Record-Route"), vec!["<sip:[2001:db8::5]:5060;lr>", "<sip:192.0.2.5:5060;lr>"]);
}

#[test]
fn an_invite_flood_from_one_64_is_limited_before_any_digest_work() {
    let mut sim = Sim::new();
    let mut codes = Vec::new();
    for i in 0..14 {
        // Different addresses of one /64: one bucket.
        let src = format!("[2001:db8::{:x}]:5062", 0x100 + i);
        let out = sim.send(&src, &invite("sip:+442079999999@sixgate.test", "alice", &format!("f{i}"), &format!("f{i}"), 1, ""));
        codes.push(status(out.last().unwrap()));
    }
    assert_eq!(codes.iter().filter(|&&c| c == 407).count(), 10, "burst of 10: {codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 503).count(), 4);
    assert_eq!(sim.eng.stats.challenges, 10);
}

/// A seeded lossy network between a phone, the engine and a carrier. The fake phone
/// retransmits its INVITE on T1 doubling (like a UAC transaction), ACKs every final response
/// and the carrier re-sends its final response until it sees an ACK.
fn lossy_call(seed: u64, loss: f64) -> (bool, TableSizes) {
    let mut rng = Rng::new([seed as u8; 32]);
    let mut chance = move || (rng.next_u64() % 10_000) as f64 / 10_000.0;
    let mut sim = Sim::new();
    // Authenticate without loss first (the nonce round is not the point here).
    let first = authed_invite(&mut sim, "+442079999999", &format!("lossy-{seed}"));
    let mut in_flight: Vec<(Instant, Transmit)> = first.into_iter().map(|t| (sim.now, t)).collect();
    let ruri = "sip:+442079999999@sixgate.test";
    let mut phone_final = None;
    let mut carrier_invite: Option<Transmit> = None;
    let mut carrier_ack = false;
    let limit = Duration::from_secs(300);
    for _round in 0..20_000 {
        // Deliver (or lose, or duplicate) everything in flight after a 10 ms hop.
        let deliveries = std::mem::take(&mut in_flight);
        for (_, t) in deliveries {
            if chance() < loss {
                continue;
            }
            let copies = if chance() < 0.05 { 2 } else { 1 };
            for _ in 0..copies {
                if t.dest == sa(PRIMARY) {
                    let s = text(&t);
                    if s.starts_with("INVITE ") {
                        carrier_invite = Some(t.clone());
                        // The carrier answers busy every time it sees the INVITE.
                        let r = respond(&t, 486, "Busy Here", Some("lossy"), "");
                        let out = sim.send(PRIMARY, &r);
                        in_flight.extend(out.into_iter().map(|x| (sim.now, x)));
                    } else if s.starts_with("ACK ") {
                        carrier_ack = true;
                    }
                } else if t.dest == sa(PHONE) && status(&t) >= 300 {
                    phone_final = Some(status(&t));
                    let ack = format!("ACK {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::10]:5062;branch=z9hG4bKlossy-{seed}a2;rport\r\nMax-Forwards: 70\r\nFrom: <sip:alice@sixgate.test>;tag=caller1\r\nTo: <{ruri}>;tag=lossy\r\nCall-ID: lossy-{seed}\r\nCSeq: 2 ACK\r\nContent-Length: 0\r\n\r\n");
                    let out = sim.send(PHONE, &ack);
                    in_flight.extend(out.into_iter().map(|x| (sim.now, x)));
                }
            }
        }
        // The carrier keeps re-sending its 486 until the ACK arrives (its own Timer G).
        if let Some(inv) = carrier_invite.as_ref().filter(|_| !carrier_ack && chance() < 0.3) {
            let r = respond(inv, 486, "Busy Here", Some("lossy"), "");
            if chance() >= loss {
                let out = sim.send(PRIMARY, &r);
                in_flight.extend(out.into_iter().map(|x| (sim.now, x)));
            }
        }
        if in_flight.is_empty() {
            match sim.step(limit) {
                Some(out) => in_flight.extend(out.into_iter().map(|x| (sim.now, x))),
                None => break,
            }
        }
    }
    (phone_final.is_some(), sim.eng.table_sizes())
}

#[test]
fn under_heavy_loss_every_transaction_terminates_and_every_table_drains() {
    for seed in 0..40 {
        let loss = [0.0, 0.1, 0.3, 0.5][(seed % 4) as usize];
        let (_, sizes) = lossy_call(seed, loss);
        assert!(sizes.is_empty(), "seed {seed} loss {loss}: tables not drained: {sizes:?}");
    }
    // With 10 % loss the caller learns the outcome.
    let answered = (100..120).filter(|&s| lossy_call(s, 0.1).0).count();
    assert!(answered >= 18, "{answered}/20 calls got their final response through 10 % loss");
}

#[test]
fn carrier_probes_mark_a_silent_carrier_down_and_an_answering_one_up_again() {
    let cfg = CFG.replacen("probe_interval_secs = 0", "probe_interval_secs = 30", 1);
    let mut sim = Sim::with(&cfg);
    // The first probe goes out within a second of start.
    let sent = sim.run_until(Duration::from_secs(1));
    let probe = sent.iter().find(|(_, t)| t.dest == sa(PRIMARY)).expect("probe").1.clone();
    assert!(text(&probe).starts_with("OPTIONS sip:198.51.100.1:5060 SIP/2.0\r\n"), "{}", text(&probe));
    // Unanswered: down after Timer F; calls skip it and go to the backup at once.
    sim.run_until(Duration::from_secs(34));
    assert_eq!(sim.eng.carrier_up("primary"), Some(false));
    let out = authed_invite(&mut sim, "+442079999999", "call-p");
    assert!(out.iter().any(|t| t.dest == sa(BACKUP)) && out.iter().all(|t| t.dest != sa(PRIMARY)));
    // The next probe is answered (any answer will do): up again.
    let sent = sim.run_until(Duration::from_secs(62));
    let probe = sent.iter().rev().find(|(_, t)| t.dest == sa(PRIMARY) && text(t).starts_with("OPTIONS")).expect("second probe").1.clone();
    sim.send(PRIMARY, &respond(&probe, 200, "OK", Some("p"), ""));
    assert_eq!(sim.eng.carrier_up("primary"), Some(true));
}

#[test]
fn parallel_fork_a_2xx_cancels_the_other_branch_and_a_6xx_ends_the_fork() {
    let cfg = CFG.replace(
        "contacts = [\"sip:pbx@[2001:db8::77]:5060\"]",
        "contacts = [\"sip:pbx@[2001:db8::77]:5060\", \"sip:pbx@[2001:db8::78]:5060\"]",
    );
    let from_carrier = |call: &str| {
        invite("sip:+442079000000@sixgate.test", "x", call, call, 1, "")
            .replace("[2001:db8::10]:5062", "198.51.100.1:5060")
            .replace("x@sixgate.test", "+441@198.51.100.1")
    };
    for (answer, reason) in [(200u16, "OK"), (603, "Decline")] {
        let mut sim = Sim::with(&cfg);
        let out = sim.send(PRIMARY, &from_carrier(&format!("fork-{answer}")));
        let a = out.iter().find(|t| t.dest == sa("[2001:db8::77]:5060")).expect("branch a").clone();
        let b = out.iter().find(|t| t.dest == sa("[2001:db8::78]:5060")).expect("branch b").clone();
        sim.send("[2001:db8::78]:5060", &respond(&b, 180, "Ringing", Some("b"), ""));
        let out = sim.send("[2001:db8::77]:5060", &respond(&a, answer, reason, Some("a"), "Contact: <sip:pbx@[2001:db8::77]:5060>\r\n"));
        // A 2xx goes upstream at once; a 6xx waits for the cancelled branches (§16.7 step 5).
        assert_eq!(out.iter().any(|t| t.dest == sa(PRIMARY) && status(t) == answer), answer == 200);
        let cancel = out.iter().find(|t| t.dest == sa("[2001:db8::78]:5060")).expect("CANCEL to the ringing branch");
        assert!(text(cancel).starts_with("CANCEL sip:pbx@[2001:db8::78]:5060 SIP/2.0"), "{}", text(cancel));
        sim.send("[2001:db8::78]:5060", &respond(cancel, 200, "OK", Some("b"), ""));
        let out = sim.send("[2001:db8::78]:5060", &respond(&b, 487, "Request Terminated", Some("b"), ""));
        let up: Vec<u16> = out.iter().filter(|t| t.dest == sa(PRIMARY)).map(status).collect();
        // The 487 of the cancelled branch never goes up; the 603 does once every branch is done.
        assert_eq!(up, if answer == 200 { vec![] } else { vec![603] }, "{out:?}");
        sim.run_until(Duration::from_secs(200));
        assert!(sim.drained(), "{:?}", sim.eng.table_sizes());
    }
}

#[test]
fn strict_router_compatibility_loop_detection_and_rfc_2543_peers() {
    let mut sim = Sim::new();
    let out = authed_invite(&mut sim, "+442079999999", "call-s");
    let inv = out[1].clone();
    sim.send(PRIMARY, &respond(&inv, 200, "OK", Some("s9"), "Contact: <sip:+442079999999@198.51.100.1:5060>\r\n"));
    // A strict router put our Record-Route URI into the Request-URI and the target into Route.
    let bye = "BYE sip:192.0.2.5:5060;lr SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::10]:5062;branch=z9hG4bKstrict;rport\r\n\
               Route: <sip:+442079999999@198.51.100.1:5060>\r\nMax-Forwards: 70\r\n\
               From: <sip:alice@sixgate.test>;tag=caller1\r\nTo: <sip:+442079999999@sixgate.test>;tag=s9\r\nCall-ID: call-s\r\nCSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n";
    let out = sim.send(PHONE, bye);
    let fwd = out.iter().find(|t| t.dest == sa(PRIMARY)).expect("forwarded");
    assert!(text(fwd).starts_with("BYE sip:+442079999999@198.51.100.1:5060 SIP/2.0\r\n"), "{}", text(fwd));
    assert!(!text(fwd).contains("Route:"), "{}", text(fwd));
    // The same BYE coming back to us (a loop through the carrier): 482.
    let looped = text(fwd).replacen("BYE sip:+442079999999@198.51.100.1:5060", "BYE sip:192.0.2.5:5060;lr", 1).replacen(
        "Max-Forwards: 69\r\n",
        "Route: <sip:+442079999999@198.51.100.1:5060>\r\nMax-Forwards: 68\r\n",
        1,
    );
    let out = sim.send(PRIMARY, &looped);
    assert_eq!(status(out.last().unwrap()), 482, "{}", text(out.last().unwrap()));

    // RFC 2543 peer (no magic cookie): its retransmission and its ACK match its transaction.
    let old = "OPTIONS sip:sixgate.test SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::10]:5062;branch=old1\r\n\
               From: <sip:alice@sixgate.test>;tag=o\r\nTo: <sip:sixgate.test>\r\nCall-ID: old\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    let first = sim.send(PHONE, old);
    let again = sim.send(PHONE, old);
    assert_eq!(first.len(), 1);
    assert_eq!(again.len(), 1, "the retransmission gets the same answer again");
    assert_eq!(first[0].bytes, again[0].bytes);
}

#[test]
fn transaction_and_dialog_limits_answer_503() {
    let cfg = CFG.replace("invite_burst_per_source = 10", "invite_burst_per_source = 10\nmax_transactions = 3\nmax_dialogs = 1");
    let mut sim = Sim::with(&cfg);
    // Refusals hold no transaction: any number of them.
    for i in 0..5 {
        let out = sim.send(PHONE, &invite("sip:+442079999999@sixgate.test", "alice", &format!("l{i}"), &format!("l{i}"), 1, ""));
        assert_eq!(status(out.last().unwrap()), 407);
    }
    // Forwarded calls hold one each: the fourth is refused.
    let mut codes = Vec::new();
    for i in 0..4 {
        let inv = invite("sip:+442079000000@sixgate.test", "x", &format!("t{i}"), &format!("t{i}"), 1, "")
            .replace("[2001:db8::10]:5062", "198.51.100.1:5060")
            .replace("x@sixgate.test", "+441@198.51.100.1");
        let out = sim.send(PRIMARY, &inv);
        codes.push(status(out.iter().find(|t| t.dest == sa(PRIMARY)).unwrap()));
    }
    assert_eq!(codes, vec![100, 100, 100, 503]);
    let mut sim = Sim::with(&cfg.replace("max_transactions = 3", "max_transactions = 100"));
    let out = authed_invite(&mut sim, "+442079999999", "d1");
    sim.send(PRIMARY, &respond(&out[1], 200, "OK", Some("d"), "Contact: <sip:x@198.51.100.1>\r\n"));
    assert_eq!(sim.eng.dialogs().count(), 1);
    let out = authed_invite(&mut sim, "+442079999999", "d2");
    let last = out.last().unwrap();
    assert_eq!((status(last), last.dest), (503, sa(PHONE)), "{}", text(last));
}

#[test]
fn no_amplified_answer_on_udp_and_options_with_max_forwards_zero_is_ours() {
    let mut sim = Sim::new();
    // A tiny compact INVITE from a spoofable UDP source: its 407 would be over 3x its size.
    let tiny = "INVITE sip:+44@sixgate.test SIP/2.0\r\nv:SIP/2.0/UDP a;branch=z9hG4bKt\r\nf:<sip:alice@sixgate.test>;tag=1\r\nt:<sip:+44@sixgate.test>\r\ni:c\r\nCSeq:1 INVITE\r\n\r\n";
    let out = sim.send(PHONE, tiny);
    assert!(out.iter().all(|t| status(t) == 100), "{out:?}");
    assert_eq!(sim.eng.stats.amplification_refused, 1);
    // Over TCP the handshake proved the source: answered.
    let out = sim.send_over(TransportKind::Tcp, PHONE, &tiny.replace("z9hG4bKt", "z9hG4bKt2").replace("SIP/2.0/UDP", "SIP/2.0/TCP").replace("\r\n\r\n", "\r\nl:0\r\n\r\n"));
    assert_eq!(status(out.last().unwrap()), 407);
    // RFC 3261 §11: an OPTIONS that may go no further is answered by the proxy.
    let opt = "OPTIONS sip:bob@elsewhere.example SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::10]:5062;branch=z9hG4bKmf0\r\nMax-Forwards: 0\r\n\
               From: <sip:x@elsewhere.example>;tag=1\r\nTo: <sip:bob@elsewhere.example>\r\nCall-ID: mf0\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(status(&sim.send(PHONE, opt)[0]), 200);
}

#[test]
fn timer_c_cancels_a_branch_that_rings_too_long() {
    let mut sim = Sim::new();
    let out = authed_invite(&mut sim, "+442079999999", "call-c");
    let inv = out[1].clone();
    sim.send(PRIMARY, &respond(&inv, 180, "Ringing", Some("c"), ""));
    let sent = sim.run_until(Duration::from_secs(300));
    let cancel = sent.iter().find(|(_, t)| t.dest == sa(PRIMARY) && text(t).starts_with("CANCEL ")).expect("CANCEL on Timer C");
    assert_eq!(cancel.0, Duration::from_secs(181), "Timer C (timer_c_secs) from the last provisional answer");
    // The carrier answers neither: 64*T1 later the caller gets a final answer and all drains.
    let up = sent.iter().find(|(_, t)| t.dest == sa(PHONE) && status(t) >= 300).expect("final answer upstream");
    assert_eq!((up.0, status(&up.1)), (Duration::from_secs(181 + 32), 408));
    sim.run_until(Duration::from_secs(400));
    assert!(sim.drained(), "{:?}", sim.eng.table_sizes());
}

#[test]
fn in_dialog_requests_go_only_to_the_other_party_and_only_from_a_party() {
    let mut sim = Sim::new();
    let out = authed_invite(&mut sim, "+442079999999", "call-d");
    sim.send(PRIMARY, &respond(&out[1], 200, "OK", Some("d9"), "Contact: <sip:+442079999999@198.51.100.1:5060>\r\n"));
    let in_dialog = |ruri: &str, branch: &str| {
        format!(
            "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::10]:5062;branch=z9hG4bK{branch};rport\r\n\
             Route: <sip:[2001:db8::5]:5060;lr>\r\nRoute: <sip:192.0.2.5:5060;lr>\r\nMax-Forwards: 70\r\n\
             From: <sip:alice@sixgate.test>;tag=caller1\r\nTo: <sip:+442079999999@sixgate.test>;tag=d9\r\nCall-ID: call-d\r\nCSeq: 5 INVITE\r\nContent-Length: 0\r\n\r\n"
        )
    };
    // A re-INVITE whose Request-URI names another carrier (or an internal host) still goes to the
    // dialog's callee, never where the request points.
    for (i, ruri) in ["sip:+19005550000@198.51.100.2:5060", "sip:x@10.0.0.1:6379;transport=tcp"].iter().enumerate() {
        let out = sim.send(PHONE, &in_dialog(ruri, &format!("re{i}")));
        let fwd: Vec<_> = out.iter().filter(|t| t.dest != sa(PHONE)).collect();
        assert_eq!(fwd.len(), 1, "{out:?}");
        assert_eq!((fwd[0].dest, fwd[0].transport), (sa(PRIMARY), TransportKind::Udp));
    }
    // From an address that is neither party: refused.
    let out = sim.send("[2001:db8:bad::1]:5062", &in_dialog("sip:+442079999999@198.51.100.1:5060", "spoof"));
    assert_eq!(status(out.last().unwrap()), 403);
    assert!(out.iter().all(|t| t.dest != sa(PRIMARY)));
}

#[test]
fn a_subscription_is_a_dialog_its_notify_follows() {
    let mut sim = Sim::new();
    let sub = invite("sip:+442079000000@sixgate.test", "x", "sub-1", "s1", 1, "")
        .replace("INVITE sip:", "SUBSCRIBE sip:")
        .replace("CSeq: 1 INVITE", "CSeq: 1 SUBSCRIBE\r\nEvent: message-summary\r\nExpires: 600")
        .replace("[2001:db8::10]:5062", "198.51.100.1:5060")
        .replace("x@sixgate.test", "+441@198.51.100.1");
    let out = sim.send(PRIMARY, &sub);
    let fwd = out.iter().find(|t| t.dest == sa("[2001:db8::77]:5060")).expect("SUBSCRIBE to the PBX").clone();
    assert_eq!(header(&fwd, "Record-Route").len(), 2, "dialog-creating: record-routed");
    sim.send("[2001:db8::77]:5060", &respond(&fwd, 200, "OK", Some("n1"), "Contact: <sip:pbx@[2001:db8::77]:5060>\r\nExpires: 600\r\n"));
    assert_eq!(sim.eng.dialogs().count(), 1);
    assert_eq!(sim.eng.stats.calls_answered, 0, "a subscription is not a call");
    // The PBX's NOTIFY comes in the dialog and goes to the carrier that subscribed.
    let notify = "NOTIFY sip:+441@198.51.100.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::77]:5060;branch=z9hG4bKn1\r\n\
                  Route: <sip:[2001:db8::5]:5060;lr>, <sip:192.0.2.5:5060;lr>\r\nMax-Forwards: 70\r\n\
                  From: <sip:+442079000000@sixgate.test>;tag=n1\r\nTo: <sip:+441@198.51.100.1>;tag=caller1\r\nCall-ID: sub-1\r\nCSeq: 1 NOTIFY\r\n\
                  Event: message-summary\r\nSubscription-State: active\r\nContent-Length: 0\r\n\r\n";
    let out = sim.send("[2001:db8::77]:5060", notify);
    assert!(out.iter().any(|t| t.dest == sa(PRIMARY) && text(t).starts_with("NOTIFY ")), "{out:?}");
}

#[test]
fn a_reload_keeps_the_call_applies_users_and_carriers_and_names_what_needs_a_restart() {
    let mut sim = Sim::new();
    let out = authed_invite(&mut sim, "+442079999999", "call-r");
    let inv = out.iter().find(|t| t.dest == sa(PRIMARY)).unwrap().clone();
    sim.send(PRIMARY, &respond(&inv, 200, "OK", Some("carrier9"), "Contact: <sip:gw@198.51.100.1:5060>\r\n"));
    assert_eq!(sim.eng.dialogs().count(), 1);
    // The primary carrier goes, a user arrives, a listener moves.
    let old = Config::from_toml(CFG).unwrap();
    let file = CFG.replacen("name = \"primary\"", "name = \"gone\"", 1).replace("port = 5060\n[[listen]]\ntransport = \"tcp\"\naddress = \"192.0.2.5\"", "port = 5070\n[[listen]]\ntransport = \"tcp\"\naddress = \"192.0.2.5\"")
        + "[[users]]\nusername = \"dave\"\npassword = \"davesecret\"\n";
    let new = Config::from_toml(&file).unwrap();
    let r = sim.eng.reconfigure(sim.now, &old, &new);
    assert!(r.applied.contains(&"users".to_string()) && r.applied.contains(&"carriers".to_string()), "{r:?}");
    assert_eq!(r.restart_needed, ["listen"], "{r:?}");
    assert_eq!(sim.eng.dialogs().count(), 1, "the call survives the reload");
    assert_eq!(sim.eng.local_user("dave").as_deref(), Some("dave"));
    // The call still ends normally through the retired carrier's slot.
    let bye = "BYE sip:gw@198.51.100.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::10]:5062;branch=z9hG4bKbye-r;rport\r\n\
        Route: <sip:[2001:db8::5]:5060;lr>\r\nRoute: <sip:192.0.2.5:5060;lr>\r\nMax-Forwards: 70\r\nFrom: <sip:alice@sixgate.test>;tag=caller1\r\n\
        To: <sip:+442079999999@sixgate.test>;tag=carrier9\r\nCall-ID: call-r\r\nCSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n";
    let out = sim.send(PHONE, bye);
    assert!(out.iter().any(|t| t.dest == sa(PRIMARY) && text(t).starts_with("BYE ")), "{out:?}");
    // New calls to +44 go to the carriers still configured ("gone" replaced "primary" at the
    // same address: the new carrier is tried, the retired slot never).
    let out = authed_invite(&mut sim, "+442079999998", "call-s");
    let inv = out.iter().find(|t| text(t).starts_with("INVITE ")).expect("forwarded");
    assert_eq!(inv.dest, sa(PRIMARY), "the new carrier \"gone\" (priority 1) at that address");
    assert_eq!(sim.eng.router.carriers().len(), 3, "primary retired in place, gone appended");
    assert!(sim.eng.router.carriers()[0].prefixes.is_empty() && !sim.eng.router.is_up(0));
}
