//! The stateful engine's cost per message, so regressions show: an INVITE in and its forwarded
//! copy out (parse of the input excluded; the engine re-parses its own output, included), in the
//! two shapes the edge sees all day:
//! - `carrier_to_user`: from a carrier's network (trusted, no digest) to a local user's contact;
//! - `user_to_carrier_digest`: an authenticated phone to a carrier, digest check included;
//! - `user_to_carrier_relayed`: the same with an SDP offer and `[media] relay = "auto"`: the
//!   relay decision, the session request (answered at once by a fake relay, as the driver
//!   does; the relay's own bind is not included) and the SDP rewrite. The first two run with
//!   `relay = "never"`, so they stay comparable with earlier runs;
//! - `register_digest`: an authenticated REGISTER of one of 10 000 users (digest, nonce-count
//!   window, binding rules, the store request, and the 200 after the store's answer — the store
//!   itself, a redb commit on another thread, is not included).
//!
//! Each call is completed (a 486 from the callee, the ACK) so tables stay small; fake time
//! jumps 40 s every 1 000 calls so finished transactions are reaped, inside the measurement.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sixgate::auth::{answer_challenge, Algorithm, Challenge};
use sixgate::config::{Config, TransportKind};
use sixgate::engine::{Engine, EngineParams, Input, MediaOp, Output};
use sixgate::message::{parse, Framing};
use sixgate::transport::Inbound;
use std::time::{Duration, Instant};

const CFG: &str = r#"
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
[auth]
digest_uri = "strict"
[limits]
invite_rate_per_source = 1000000
invite_burst_per_source = 1000000
[[users]]
username = "alice"
password = "secret"
numbers = ["+442071234567"]
contacts = ["sip:alice@[2001:db8::10]:5062"]
[[carriers]]
name = "primary"
uri = "sip:198.51.100.1:5060"
prefixes = ["+44"]
source_cidrs = ["198.51.100.0/28"]
probe_interval_secs = 0
"#;

fn inbound(remote: &str) -> Inbound {
    let remote = remote.parse().unwrap();
    let local = if matches!(remote, std::net::SocketAddr::V6(_)) { "[2001:db8::5]:5060" } else { "192.0.2.5:5060" };
    Inbound { transport: TransportKind::Udp, local: local.parse().unwrap(), remote }
}

/// A 486 for the request in `out` (as the callee would answer), so the call ends.
fn busy(req: &Bytes) -> Bytes {
    let m = parse(req.clone(), Framing::Datagram).unwrap();
    let mut s = String::from("SIP/2.0 486 Busy Here\r\n");
    for h in &m.headers {
        let line = m.text(h.line);
        let lower = line.to_ascii_lowercase();
        if ["via:", "from:", "call-id:", "cseq:"].iter().any(|p| lower.starts_with(p)) {
            s.push_str(&line);
        } else if lower.starts_with("to:") {
            s.push_str(&format!("{};tag=busy\r\n", line.trim_end()));
        }
    }
    s.push_str("Content-Length: 0\r\n\r\n");
    Bytes::from(s)
}

const DIRECT: &str = "[media]\nrelay = \"never\"\n";
const RELAYED: &str = "[media]\nrelay = \"auto\"\n";

const OFFER: &str = "v=0\r\no=alice 1 1 IN IP6 2001:db8::10\r\ns=-\r\nc=IN IP6 2001:db8::10\r\nt=0 0\r\n\
    m=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
    a=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n";

/// The fake relay's answer to a session request: sessions on our two addresses.
fn fake_sessions(specs: &[sixgate_relay::SessionSpec], n: u64) -> Vec<sixgate_relay::SessionInfo> {
    use sixgate_relay::{Family, LegAddrs, SessionId, SessionInfo};
    specs
        .iter()
        .enumerate()
        .map(|(k, spec)| {
            let leg = |f: Family, i: u16| {
                let ip: std::net::IpAddr = if f == Family::V6 { "2001:db8::5".parse().unwrap() } else { "192.0.2.5".parse().unwrap() };
                let rtp = std::net::SocketAddr::new(ip, 30000 + i * 2);
                LegAddrs { rtp, rtcp: std::net::SocketAddr::new(ip, rtp.port() + 1) }
            };
            SessionInfo { id: SessionId(n * 8 + k as u64), legs: [leg(spec.legs[0].family, 0), leg(spec.legs[1].family, 1)] }
        })
        .collect()
}

fn run_calls(c: &mut Criterion, name: &str, media: &str, make: impl Fn(&mut Engine, Instant, u64) -> (Bytes, Inbound)) {
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let cfg = Config::from_toml(&format!("{CFG}{media}")).unwrap();
            let mut eng = Engine::new(&cfg, EngineParams { seed: 1, nonce_key: [1; 32], unix_time: 1_800_000_000 });
            let t0 = Instant::now();
            let mut now = t0;
            eng.start(now);
            let mut elapsed = Duration::ZERO;
            for i in 0..iters {
                // Each message is built (and its nonce fetched) outside the timed part.
                let (bytes, from) = make(&mut eng, now, i);
                let msg = parse(bytes, Framing::Datagram).unwrap();
                let start = Instant::now();
                eng.handle(now, Input::Received { msg, from });
                let mut forwarded = None;
                while let Some(o) = eng.poll_output() {
                    match o {
                        Output::Transmit(t) if t.client.is_some() => forwarded = Some(t.bytes),
                        Output::Media { id, op: MediaOp::Create(specs) } => {
                            eng.handle(now, Input::Media { id, result: Ok(fake_sessions(&specs, i)) });
                        }
                        _ => {}
                    }
                }
                elapsed += start.elapsed();
                // End the call outside the measurement.
                let fwd = forwarded.expect("forwarded");
                let callee = if name == "carrier_to_user" { "[2001:db8::10]:5062" } else { "198.51.100.1:5060" };
                eng.handle(now, Input::Received { msg: parse(busy(&fwd), Framing::Datagram).unwrap(), from: inbound(callee) });
                while eng.poll_output().is_some() {}
                if i % 1000 == 999 {
                    now += Duration::from_secs(40);
                    let start = Instant::now();
                    eng.handle_timeout(now);
                    while eng.poll_output().is_some() {}
                    elapsed += start.elapsed();
                }
            }
            elapsed
        })
    });
    g.finish();
}

fn bench_engine(c: &mut Criterion) {
    run_calls(c, "carrier_to_user", DIRECT, |_, _, i| {
        let text = format!(
            "INVITE sip:+442071234567@sixgate.test SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKc{i}\r\nMax-Forwards: 70\r\n\
             From: <sip:+441632960000@198.51.100.1>;tag=f{i}\r\nTo: <sip:+442071234567@sixgate.test>\r\nCall-ID: c{i}@carrier\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:+441632960000@198.51.100.1:5060>\r\nContent-Type: application/sdp\r\nContent-Length: 0\r\n\r\n"
        );
        (Bytes::from(text), inbound("198.51.100.1:5060"))
    });
    run_calls(c, "user_to_carrier_digest", DIRECT, |eng, now, i| user_to_carrier(eng, now, i, ""));
    run_calls(c, "user_to_carrier_relayed", RELAYED, |eng, now, i| user_to_carrier(eng, now, i, OFFER));
}

/// An authenticated INVITE from alice's IPv6 phone to a carrier number, with `sdp` as its body.
fn user_to_carrier(eng: &mut Engine, now: Instant, i: u64, sdp: &str) -> (Bytes, Inbound) {
    {
        // A valid nonce: ask the engine for a challenge once per call (outside the timing).
        let ruri = "sip:+442079999999@sixgate.test";
        let base = format!(
            "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::10]:5062;branch=z9hG4bKu{i}x;rport\r\nMax-Forwards: 70\r\n\
             From: <sip:alice@sixgate.test>;tag=f{i}\r\nTo: <{ruri}>\r\nCall-ID: u{i}@phone\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:alice@[2001:db8::10]:5062>\r\nContent-Type: application/sdp\r\nContent-Length: 0\r\n\r\n"
        );
        eng.handle(now, Input::Received { msg: parse(Bytes::from(base.clone()), Framing::Datagram).unwrap(), from: inbound("[2001:db8::10]:5062") });
        let mut ch = None;
        while let Some(o) = eng.poll_output() {
            if let Output::Transmit(t) = o {
                let s = String::from_utf8_lossy(&t.bytes).into_owned();
                ch = ch.or_else(|| s.lines().filter_map(|l| l.strip_prefix("Proxy-Authenticate: ")).find_map(|v| Challenge::parse(v.as_bytes()).filter(|c| c.algorithm == Algorithm::Md5)));
            }
        }
        let ch = ch.expect("challenge");
        let cred = answer_challenge(&ch, "alice", "secret", b"INVITE", ruri, "cnonce");
        let text = base.replace(&format!("z9hG4bKu{i}x"), &format!("z9hG4bKu{i}y")).replace("CSeq: 1 INVITE", &format!("CSeq: 2 INVITE\r\nProxy-Authorization: {cred}"));
        let text = text.replace("Content-Length: 0\r\n\r\n", &format!("Content-Length: {}\r\n\r\n{sdp}", sdp.len()));
        (Bytes::from(text), inbound("[2001:db8::10]:5062"))
    }
}

/// Authenticated REGISTERs, users in turn (each refreshes its binding after the first round).
fn bench_register(c: &mut Criterion) {
    const USERS: u64 = 10_000;
    let mut cfg_text = format!("{CFG}{DIRECT}");
    for u in 0..USERS {
        cfg_text.push_str(&format!("[[users]]\nusername = \"u{u}\"\npassword = \"pw{u}\"\n"));
    }
    let cfg = Config::from_toml(&cfg_text).unwrap();
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));
    g.bench_function("register_digest", |b| {
        b.iter_custom(|iters| {
            let mut eng = Engine::new(&cfg, EngineParams { seed: 1, nonce_key: [1; 32], unix_time: 1_800_000_000 });
            let now = Instant::now();
            eng.start(now);
            let mut elapsed = Duration::ZERO;
            for i in 0..iters {
                let u = i % USERS;
                let from = inbound(&format!("[2001:db8:{:x}::10]:5062", u + 1));
                let reg = |cseq: u64, auth: &str| {
                    format!(
                        "REGISTER sip:sixgate.test SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKr{i}-{cseq};rport\r\nMax-Forwards: 70\r\n\
                         From: <sip:u{u}@sixgate.test>;tag=t{u}\r\nTo: <sip:u{u}@sixgate.test>\r\nCall-ID: reg{u}\r\nCSeq: {cseq} REGISTER\r\n\
                         Contact: <sip:u{u}@{}>\r\n{auth}Expires: 3600\r\nContent-Length: 0\r\n\r\n",
                        from.remote, from.remote
                    )
                };
                // The 401 round, outside the timing.
                eng.handle(now, Input::Received { msg: parse(Bytes::from(reg(2 * i + 1, "")), Framing::Datagram).unwrap(), from });
                let mut ch = None;
                while let Some(o) = eng.poll_output() {
                    if let Output::Transmit(t) = o {
                        let s = String::from_utf8_lossy(&t.bytes).into_owned();
                        ch = ch.or_else(|| s.lines().filter_map(|l| l.strip_prefix("WWW-Authenticate: ")).find_map(|v| Challenge::parse(v.as_bytes())));
                    }
                }
                let cred = answer_challenge(&ch.expect("401"), &format!("u{u}"), &format!("pw{u}"), b"REGISTER", "sip:sixgate.test", "cn");
                let msg = parse(Bytes::from(reg(2 * i + 2, &format!("Authorization: {cred}\r\n"))), Framing::Datagram).unwrap();
                let start = Instant::now();
                eng.handle(now, Input::Received { msg, from });
                let mut sent = false;
                for _ in 0..4 {
                    let mut stored = Vec::new();
                    while let Some(o) = eng.poll_output() {
                        match o {
                            Output::Store { id, .. } => stored.push(id),
                            Output::Transmit(_) => sent = true,
                            _ => {}
                        }
                    }
                    if stored.is_empty() {
                        break;
                    }
                    for id in stored {
                        eng.handle(now, Input::Stored { id, ok: true });
                    }
                }
                elapsed += start.elapsed();
                assert!(sent, "the 200 went out");
            }
            elapsed
        })
    });
    g.finish();
}

criterion_group!(benches, bench_engine, bench_register);
criterion_main!(benches);
