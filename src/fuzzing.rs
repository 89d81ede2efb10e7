//! The invariants every input must keep, shared by the property tests (`tests/fuzz_parsers.rs`)
//! and the coverage-guided libFuzzer target (`fuzz/`), so both check the same things:
//! nothing panics; an unedited message serializes to the bytes it was parsed from; a request
//! stamped with received/rport parses again with the stamp; a refused message gets a clean
//! response (never for a response or an ACK; no NUL, no bare CR/LF) or is dropped; the datagram
//! handler, the STUN responder and the stream framer take anything.

use crate::config::{Config, TransportKind};
use crate::core::Core;
use crate::message::{parse, response, Framing};
use crate::metrics::Metrics;
use crate::transport::{framing::StreamFramer, stamp_received, stun, udp, Inbound};
use bytes::Bytes;
use std::sync::{Arc, OnceLock};

/// A stand-in for the RTP relay where the engine runs without one (simulations, fuzzing): it
/// answers [`crate::engine::MediaOp`]s as the driver would, on 2001:db8::5 / 192.0.2.5, and
/// checks the engine's bookkeeping: an update or delete must name a live session.
#[derive(Default)]
pub struct FakeRelay {
    /// Sessions made and not yet deleted.
    pub live: std::collections::BTreeSet<u64>,
    /// Refuse new sessions (ports exhausted).
    pub fail: bool,
    next: u64,
}

impl FakeRelay {
    /// The answer a `Create` gets (as `Input::Media`); `None` for the others.
    pub fn answer(&mut self, op: &crate::engine::MediaOp) -> Option<Result<Vec<sixgate_relay::SessionInfo>, String>> {
        use crate::engine::MediaOp;
        use sixgate_relay::{Family, LegAddrs, SessionId, SessionInfo};
        match op {
            MediaOp::Create(specs) => {
                if self.fail {
                    return Some(Err("no free relay ports".into()));
                }
                let mut out = Vec::new();
                for spec in specs {
                    self.next += 1;
                    let base = 30000 + (self.next % 4000) as u16 * 4;
                    let leg = |f: Family, port: u16| {
                        let ip: std::net::IpAddr = if f == Family::V6 { [0x2001, 0xdb8, 0, 0, 0, 0, 0, 5].into() } else { [192, 0, 2, 5].into() };
                        LegAddrs { rtp: std::net::SocketAddr::new(ip, port), rtcp: std::net::SocketAddr::new(ip, port + 1) }
                    };
                    self.live.insert(self.next);
                    out.push(SessionInfo { id: SessionId(self.next), legs: [leg(spec.legs[0].family, base), leg(spec.legs[1].family, base + 2)] });
                }
                Some(Ok(out))
            }
            MediaOp::Update(u) => {
                assert!(self.live.contains(&u.session.0), "peer update of a session that is gone: {u:?}");
                None
            }
            MediaOp::Delete(s) => {
                assert!(self.live.remove(&s.0), "delete of a session never made or deleted twice: {s:?}");
                None
            }
            MediaOp::Stats(ids) => {
                assert!(ids.iter().all(|s| self.live.contains(&s.0)), "counters asked of a session that is gone: {ids:?}");
                None
            }
        }
    }
}

fn core() -> &'static Core {
    static CORE: OnceLock<Core> = OnceLock::new();
    CORE.get_or_init(|| Core::new(&Config::embedded(), Arc::new(Metrics::default())))
}

fn inbound() -> Inbound {
    Inbound {
        transport: TransportKind::Udp,
        local: "[::1]:5060".parse().expect("literal"),
        remote: "[2001:db8::1]:4000".parse().expect("literal"),
    }
}

/// Runs `data` through every parser and handler; panics if an invariant breaks.
pub fn exercise(data: &[u8]) {
    for framing in [Framing::Datagram, Framing::Stream] {
        match parse(Bytes::copy_from_slice(data), framing) {
            Ok(m) => {
                // Serializing an unedited message reproduces its bytes (minus any trailing extra).
                assert!(data.starts_with(&m.to_bytes()), "unedited message must serialize byte-exact");
                if m.is_request() {
                    let mut m = m;
                    let src: std::net::SocketAddr = "[2001:db8::99]:4999".parse().expect("literal");
                    stamp_received(&mut m, src);
                    let again = parse(m.to_bytes(), framing).expect("a stamped message parses again");
                    let r = again.top_via().received.expect("received present");
                    assert_eq!(again.slice(r), b"2001:db8::99");
                }
            }
            Err(e) => {
                if let Some(answer) = response::reject(data, &e) {
                    // Whatever the input, an answer is never for a response or an ACK, and
                    // its lines are clean: no NUL, every CR and LF part of a CRLF.
                    let first = data.iter().position(|&c| c != b'\r' && c != b'\n').unwrap_or(data.len());
                    let start = &data[first..];
                    assert!(!(start.len() >= 4 && start[..4].eq_ignore_ascii_case(b"SIP/")), "a response was answered");
                    assert!(!start.starts_with(b"ACK "), "an ACK was answered");
                    assert!(!answer.contains(&0), "NUL in an answer");
                    for (i, &c) in answer.iter().enumerate() {
                        let ok = match c {
                            b'\r' => answer.get(i + 1) == Some(&b'\n'),
                            b'\n' => i > 0 && answer[i - 1] == b'\r',
                            _ => true,
                        };
                        assert!(ok, "bare CR or LF in an answer");
                    }
                    assert!(answer.ends_with(b"\r\n\r\n"));
                }
            }
        }
    }
    let _ = udp::handle_datagram(core(), data, inbound(), 65535);
    let _ = stun::answer(data, inbound().remote);
    let mut f = StreamFramer::new(4096);
    for chunk in data.chunks(7) {
        f.push(chunk);
        for _ in 0..64 {
            match f.next_frame() {
                Ok(Some(_)) => continue,
                _ => break,
            }
        }
    }
}

/// The config the engine invariants run against: a user with a static contact, two carriers,
/// every address a literal (no DNS), small limits so they are reached.
const ENGINE_CFG: &str = r#"
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
address = "192.0.2.5"
port = 5060
[limits]
max_transactions = 64
max_dialogs = 16
dialog_idle_secs = 600
invite_rate_per_source = 20
invite_burst_per_source = 20
[[users]]
username = "alice"
password = "secret"
numbers = ["+442071234567"]
contacts = ["sip:alice@[2001:db8::10]:5062", "sip:alice@192.0.2.10:5062;transport=tcp"]
[[carriers]]
name = "primary"
uri = "sip:198.51.100.1:5060"
prefixes = ["+44"]
source_cidrs = ["198.51.100.0/28"]
username = "t"
password = "p"
probe_interval_secs = 20
[[carriers]]
name = "backup"
uri = "sip:198.51.100.2:5060;transport=tcp"
prefixes = ["+"]
priority = 5
probe_interval_secs = 0
"#;

/// Peers the engine fuzz input may speak as: a phone (v6), a NATed phone (v4), two carriers.
const ENGINE_PEERS: [(&str, TransportKind); 5] = [
    ("[2001:db8::10]:5062", TransportKind::Udp),
    ("192.0.2.10:5062", TransportKind::Udp),
    ("198.51.100.1:5060", TransportKind::Udp),
    ("198.51.100.2:5060", TransportKind::Tcp),
    ("192.0.2.10:5062", TransportKind::Tcp),
];

/// Drives the stateful engine with `data`: a sequence of steps separated by `\0\0`; each step's
/// first byte picks the peer and a time jump, the rest is a SIP message from that peer (parsed
/// first, as the transports do; unparsable steps only move the clock). Answers the engine's
/// own transmits back now and then by reflecting requests as responses, so transactions and
/// dialogs really form; relay sessions come from a [`FakeRelay`] that now and then is out of
/// ports. Invariants: nothing panics, and once an hour of fake time has passed every
/// transaction, context, lookup and relay session is gone (dialogs too after their idle timeout).
pub fn exercise_engine(data: &[u8]) {
    use crate::engine::{Engine, EngineParams, Input, Output};
    use std::time::{Duration, Instant};
    let cfg = Config::from_toml(ENGINE_CFG).expect("engine fuzz config");
    let mut eng = Engine::new(&cfg, EngineParams { seed: 1, nonce_key: [9; 32], unix_time: 1_800_000_000 });
    let t0 = Instant::now();
    let mut now = t0;
    eng.start(now);
    let mut outbox: Vec<bytes::Bytes> = Vec::new();
    let mut relay = FakeRelay::default();
    // Everything the engine asks for: transmits kept for replay, relay requests answered.
    let drain = |eng: &mut Engine, now: Instant, relay: &mut FakeRelay, outbox: &mut Vec<Bytes>| {
        // Bounded: each answer only releases branches already waiting.
        for _ in 0..1000 {
            let mut answers = Vec::new();
            while let Some(o) = eng.poll_output() {
                match o {
                    Output::Transmit(t) if outbox.len() < 64 => outbox.push(t.bytes),
                    Output::Media { id, op } => answers.extend(relay.answer(&op).map(|r| (id, r))),
                    _ => {}
                }
            }
            if answers.is_empty() {
                return;
            }
            for (id, result) in answers {
                eng.handle(now, Input::Media { id, result });
            }
        }
    };
    for step in data.split(|&b| b == 0).filter(|s| !s.is_empty()).take(256) {
        let (ctl, body) = (step[0], &step[1..]);
        let (peer, transport) = ENGINE_PEERS[usize::from(ctl & 7) % ENGINE_PEERS.len()];
        now += Duration::from_millis(u64::from(ctl >> 3) * 250);
        relay.fail = ctl & 7 == 7;
        eng.handle_timeout(now);
        drain(&mut eng, now, &mut relay, &mut outbox);
        let remote: std::net::SocketAddr = peer.parse().expect("literal");
        let local = if remote.is_ipv6() { "[2001:db8::5]:5060" } else { "192.0.2.5:5060" }.parse().expect("literal");
        let from = Inbound { transport, local, remote };
        let framing = if transport == TransportKind::Tcp { Framing::Stream } else { Framing::Datagram };
        // A step may also replay one of the engine's own messages back at it.
        let bytes = if body.len() == 1 && !outbox.is_empty() {
            outbox[usize::from(body[0]) % outbox.len()].clone()
        } else {
            Bytes::copy_from_slice(body)
        };
        if let Ok(msg) = parse(bytes, framing) {
            eng.handle(now, Input::Received { msg, from });
        }
        drain(&mut eng, now, &mut relay, &mut outbox);
    }
    // Time passes: every table must drain (dialogs after their idle timeout).
    // Past the dialog idle timeout, plus Timer C (181 s) and the longest transaction timers.
    let end = now + Duration::from_secs(cfg.limits.dialog_idle_secs + 600);
    for _ in 0..100_000 {
        match eng.poll_timeout() {
            Some(at) if at <= end => {
                now = at.max(now);
                eng.handle_timeout(now);
                drain(&mut eng, now, &mut relay, &mut outbox);
            }
            _ => break,
        }
    }
    let sizes = eng.table_sizes();
    assert!(sizes.is_empty(), "engine tables did not drain: {sizes:?}");
    assert!(relay.live.is_empty(), "relay sessions left behind: {:?}", relay.live);
    // One probing carrier, every 20 s, each probe over by Timer F (32 s): never more than two.
    assert!(eng.probes_in_flight() <= 2, "probes pile up: {}", eng.probes_in_flight());
}
