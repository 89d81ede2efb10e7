//! Whole-relay tests over loopback (::1 and 127.0.0.1 only), run once per engine.
//!
//! No timing assertions: waits for packets and events are bounded but generous; "was not
//! forwarded" is proven by ordering (a marker sent after the intruder arrives first), not by
//! waiting for silence.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use sixgate_relay::{
    Channel, EngineChoice, EngineKind, Error, Event, EventStream, Family, LegId, LegSpec, Relay, RelayConfig,
    SessionInfo, SessionSpec,
};

const WAIT: Duration = Duration::from_secs(5);

/// Each relay in this binary gets its own port block so parallel tests never collide.
static NEXT_BLOCK: AtomicU16 = AtomicU16::new(21000);

fn port_block(pairs: u16) -> (u16, u16) {
    let first = NEXT_BLOCK.fetch_add(64, Ordering::Relaxed);
    assert!(pairs <= 32);
    (first, first + 2 * pairs - 1)
}

fn config(engine: EngineChoice) -> RelayConfig {
    RelayConfig {
        bind_v4: Some("127.0.0.1".parse().unwrap()),
        bind_v6: Some("::1".parse().unwrap()),
        ports_v4: port_block(16),
        ports_v6: port_block(16),
        port_quarantine: Duration::ZERO,
        media_timeout: Duration::from_secs(3600),
        relatch_after: Duration::from_secs(3600),
        engine,
        ..RelayConfig::default()
    }
}

fn start(cfg: RelayConfig) -> (Relay, EventStream) {
    let want = cfg.engine;
    let (relay, events) = Relay::start(cfg).expect("relay starts");
    let expected = match want {
        EngineChoice::IoUring => EngineKind::IoUring,
        EngineChoice::Epoll => EngineKind::Epoll,
        EngineChoice::Auto => relay.engine(),
    };
    assert_eq!(relay.engine(), expected);
    (relay, events)
}

fn peer(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind(format!("{ip}:0")).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// Two sockets on consecutive ports (RTP even-or-odd, RTCP = RTP + 1), bounded retries.
fn peer_pair(ip: &str) -> (UdpSocket, UdpSocket) {
    for _ in 0..200 {
        let rtp = peer(ip);
        let port = rtp.local_addr().unwrap().port();
        if port == u16::MAX {
            continue;
        }
        let mut next = addr(&rtp);
        next.set_port(port + 1);
        if let Ok(rtcp) = UdpSocket::bind(next) {
            rtcp.set_read_timeout(Some(WAIT)).unwrap();
            return (rtp, rtcp);
        }
    }
    panic!("no consecutive port pair on {ip}");
}

fn addr(s: &UdpSocket) -> SocketAddr {
    s.local_addr().unwrap()
}

fn rtp(seq: u16, ssrc: u32, fill: u8) -> Vec<u8> {
    let mut p = vec![fill; 172];
    p[0] = 0x80;
    p[1] = 0;
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p
}

fn rtcp_sr(ssrc: u32) -> Vec<u8> {
    let mut p = vec![0u8; 28];
    p[0] = 0x80;
    p[1] = 200;
    p[2..4].copy_from_slice(&6u16.to_be_bytes());
    p[4..8].copy_from_slice(&ssrc.to_be_bytes());
    p
}

/// Receives one datagram (bounded wait) and returns (payload, source).
fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 4096];
    // A blocking receive with a timeout is not restarted after an interruption (signal(7)): retry.
    for _ in 0..100 {
        match s.recv_from(&mut buf) {
            Ok((n, from)) => return (buf[..n].to_vec(), from),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("no datagram within the bounded wait: {e}"),
        }
    }
    panic!("receive interrupted 100 times in a row")
}

fn strict(family: Family, peer: SocketAddr) -> LegSpec {
    LegSpec { latch: false, ..LegSpec::new(family, Some(peer)) }
}

fn session(relay: &Relay, a: LegSpec, b: LegSpec) -> SessionInfo {
    relay.create_session(SessionSpec { legs: [a, b], media_timeout: None }).expect("session")
}

/// Waits (bounded) for an event matching `pred`, returning it.
fn wait_event(events: &EventStream, pred: impl Fn(&Event) -> bool) -> Event {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some(e) = events.recv_timeout(Duration::from_millis(100)) {
            if pred(&e) {
                return e;
            }
        }
    }
    panic!("expected event did not arrive");
}

fn stats(relay: &Relay, s: &SessionInfo) -> sixgate_relay::SessionStats {
    relay.stats(s.id).unwrap().wait(WAIT).unwrap()
}

fn forwards_both_ways(cfg: RelayConfig, fa: Family, ip_a: &str, fb: Family, ip_b: &str) {
    let (relay, _ev) = start(cfg);
    let (pa, pb) = (peer(ip_a), peer(ip_b));
    let s = session(&relay, strict(fa, addr(&pa)), strict(fb, addr(&pb)));
    assert_eq!(Family::of(&s.legs[0].rtp), fa);
    assert_eq!(Family::of(&s.legs[1].rtp), fb);
    assert_eq!(s.legs[0].rtp.port() % 2, 0);
    assert_eq!(s.legs[0].rtcp.port(), s.legs[0].rtp.port() + 1);
    for i in 0..10u16 {
        let pkt = rtp(i, 0xa, i as u8);
        pa.send_to(&pkt, s.legs[0].rtp).unwrap();
        let (got, from) = recv(&pb);
        assert_eq!((got, from), (pkt, s.legs[1].rtp), "A -> B through B's socket");
        let back = rtp(i, 0xb, 0xff - i as u8);
        pb.send_to(&back, s.legs[1].rtp).unwrap();
        let (got, from) = recv(&pa);
        assert_eq!((got, from), (back, s.legs[0].rtp), "B -> A through A's socket");
    }
    let st = stats(&relay, &s);
    assert_eq!(st.legs[0].rx_rtp.packets, 10);
    assert_eq!(st.legs[0].rx_rtp.bytes, 1720);
    assert_eq!(st.legs[1].tx_rtp.packets, 10);
    assert_eq!(st.legs[1].rx_rtp.packets, 10);
    assert_eq!(st.legs[0].tx_rtp.packets, 10);
    assert_eq!(st.legs[0].drops.total() + st.legs[1].drops.total(), 0);
    assert!(st.legs[0].last_seen_ago.is_some());
}

fn forward_v6_v4(engine: EngineChoice) {
    forwards_both_ways(config(engine), Family::V6, "[::1]", Family::V4, "127.0.0.1");
}

/// The busy-polling loop (never sleeps) relays the same way.
fn busy_poll_forwards(engine: EngineChoice) {
    let cfg = RelayConfig { busy_poll: true, ..config(engine) };
    forwards_both_ways(cfg, Family::V6, "[::1]", Family::V4, "127.0.0.1");
}

fn forward_v4_v4(engine: EngineChoice) {
    forwards_both_ways(config(engine), Family::V4, "127.0.0.1", Family::V4, "127.0.0.1");
}

fn rtcp_is_relayed(engine: EngineChoice) {
    let (relay, _ev) = start(config(engine));
    let (pa, pa_rtcp) = peer_pair("[::1]");
    let (pb, pb_rtcp) = peer_pair("127.0.0.1");
    let s = session(&relay, strict(Family::V6, addr(&pa)), strict(Family::V4, addr(&pb)));
    let sr = rtcp_sr(1);
    pa_rtcp.send_to(&sr, s.legs[0].rtcp).unwrap();
    assert_eq!(recv(&pb_rtcp), (sr.clone(), s.legs[1].rtcp));
    pb_rtcp.send_to(&sr, s.legs[1].rtcp).unwrap();
    assert_eq!(recv(&pa_rtcp), (sr, s.legs[0].rtcp));
    let st = stats(&relay, &s);
    assert_eq!((st.legs[0].rx_rtcp.packets, st.legs[1].rx_rtcp.packets), (1, 1));
    assert_eq!(st.legs[0].rx_rtp.packets, 0);
}

fn rtcp_mux_leg(engine: EngineChoice) {
    let (relay, _ev) = start(config(engine));
    let pa = peer("[::1]");
    let (pb, pb_rtcp) = peer_pair("127.0.0.1");
    let a = LegSpec { rtcp_mux: true, ..strict(Family::V6, addr(&pa)) };
    let s = session(&relay, a, strict(Family::V4, addr(&pb)));
    assert_eq!(s.legs[0].rtcp, s.legs[0].rtp);
    // RTCP multiplexed on A's single port leaves B's RTCP socket towards B's RTCP port, and back.
    let sr = rtcp_sr(5);
    pa.send_to(&sr, s.legs[0].rtp).unwrap();
    assert_eq!(recv(&pb_rtcp), (sr.clone(), s.legs[1].rtcp));
    pb_rtcp.send_to(&sr, s.legs[1].rtcp).unwrap();
    assert_eq!(recv(&pa), (sr, s.legs[0].rtp));
    let pkt = rtp(1, 5, 1);
    pa.send_to(&pkt, s.legs[0].rtp).unwrap();
    assert_eq!(recv(&pb), (pkt, s.legs[1].rtp));
}

fn latches_to_unannounced_source(engine: EngineChoice) {
    let (relay, events) = start(config(engine));
    let nat = peer("127.0.0.1"); // the phone's real (NAT) address, never announced
    let pb = peer("[::1]");
    let announced: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let s = session(&relay, LegSpec::new(Family::V4, Some(announced)), strict(Family::V6, addr(&pb)));
    let pkt = rtp(1, 77, 3);
    nat.send_to(&pkt, s.legs[0].rtp).unwrap();
    assert_eq!(recv(&pb).0, pkt);
    let e = wait_event(&events, |e| matches!(e, Event::Latched { .. }));
    match e {
        Event::Latched { session, leg, channel, peer } => {
            assert_eq!((session, leg, channel, peer), (s.id, LegId::A, Channel::Rtp, addr(&nat)));
        }
        _ => unreachable!(),
    }
    wait_event(&events, |e| matches!(e, Event::FirstPacket { leg: LegId::A, .. }));
    // Media towards A now goes to the latched NAT address, not the SDP one.
    let back = rtp(1, 88, 4);
    pb.send_to(&back, s.legs[1].rtp).unwrap();
    assert_eq!(recv(&nat), (back, s.legs[0].rtp));
}

/// An intruder's packets are dropped and counted; the first thing B receives is the marker the
/// real peer sent after them.
fn strict_drops_intruder(engine: EngineChoice) {
    let (relay, _ev) = start(config(engine));
    let (pa, pb) = (peer("127.0.0.1"), peer("[::1]"));
    let (intruder_v4, intruder_v6) = (peer("127.0.0.1"), peer("[::1]"));
    let s = session(&relay, strict(Family::V4, addr(&pa)), strict(Family::V6, addr(&pb)));
    for i in 0..5 {
        intruder_v4.send_to(&rtp(i, 666, 0xee), s.legs[0].rtp).unwrap();
        intruder_v6.send_to(&rtp(i, 666, 0xee), s.legs[1].rtp).unwrap();
    }
    let marker = rtp(1, 1, 0x11);
    pa.send_to(&marker, s.legs[0].rtp).unwrap();
    assert_eq!(recv(&pb).0, marker, "the intruder's packets were not forwarded to B");
    let marker_b = rtp(1, 2, 0x22);
    pb.send_to(&marker_b, s.legs[1].rtp).unwrap();
    assert_eq!(recv(&pa).0, marker_b, "nor to A");
    let st = stats(&relay, &s);
    assert_eq!(st.legs[0].drops.strict_source, 5);
    assert_eq!(st.legs[1].drops.strict_source, 5);
    assert_eq!((st.legs[1].tx_rtp.packets, st.legs[0].tx_rtp.packets), (1, 1));
    // Nothing else is queued for the parties.
    pa.set_nonblocking(true).unwrap();
    pb.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    assert!(pa.recv_from(&mut buf).is_err() && pb.recv_from(&mut buf).is_err());
}

/// Once latched, a latching leg is as strict as an announced one.
fn latched_leg_drops_intruder(engine: EngineChoice) {
    let (relay, _ev) = start(config(engine));
    let (pa, pb, intruder) = (peer("127.0.0.1"), peer("127.0.0.1"), peer("127.0.0.1"));
    let s = session(&relay, LegSpec::new(Family::V4, None), strict(Family::V4, addr(&pb)));
    pa.send_to(&rtp(1, 1, 1), s.legs[0].rtp).unwrap();
    assert_eq!(recv(&pb).0, rtp(1, 1, 1));
    intruder.send_to(&rtp(9, 9, 9), s.legs[0].rtp).unwrap();
    pa.send_to(&rtp(2, 1, 2), s.legs[0].rtp).unwrap();
    assert_eq!(recv(&pb).0, rtp(2, 1, 2));
    assert_eq!(stats(&relay, &s).legs[0].drops.strict_source, 1);
}

/// Polls the session's stats (bounded) until `pred` holds.
fn wait_stats(relay: &Relay, s: &SessionInfo, what: &str, pred: impl Fn(&sixgate_relay::SessionStats) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !pred(&stats(relay, s)) {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// With `latch_from`, only the leg's signaling address may latch: a stranger who reaches the
/// fresh port first neither latches nor receives the other side's media.
fn latch_scope_keeps_strangers_out(engine: EngineChoice) {
    let (relay, events) = start(config(engine));
    let (phone, stranger, pb) = (peer("127.0.0.1"), peer("127.0.0.2"), peer("[::1]"));
    let a = LegSpec { latch_from: Some("127.0.0.1".parse().unwrap()), ..LegSpec::new(Family::V4, None) };
    let s = session(&relay, a, strict(Family::V6, addr(&pb)));
    for i in 0..5 {
        stranger.send_to(&rtp(i, 666, 0xee), s.legs[0].rtp).unwrap();
    }
    wait_stats(&relay, &s, "the stranger's packets were not dropped", |st| st.legs[0].drops.strict_source == 5);
    // B's media has nowhere to go yet: counted, and not sent to the stranger.
    pb.send_to(&rtp(1, 2, 2), s.legs[1].rtp).unwrap();
    wait_stats(&relay, &s, "B's packet was not counted", |st| st.legs[1].drops.no_destination == 1);
    // The phone, from its signaling address, latches and the call's media flows both ways.
    phone.send_to(&rtp(1, 1, 1), s.legs[0].rtp).unwrap();
    assert_eq!(recv(&pb).0, rtp(1, 1, 1));
    let e = wait_event(&events, |e| matches!(e, Event::Latched { .. }));
    assert!(matches!(e, Event::Latched { leg: LegId::A, peer, .. } if peer == addr(&phone)), "{e:?}");
    pb.send_to(&rtp(2, 2, 2), s.legs[1].rtp).unwrap();
    assert_eq!(recv(&phone).0, rtp(2, 2, 2));
    let st = stats(&relay, &s);
    assert_eq!((st.legs[1].tx_rtp.packets, st.legs[0].tx_rtp.packets), (1, 1));
    stranger.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    assert!(stranger.recv_from(&mut buf).is_err(), "the stranger received media");
}

fn relatch_rule(engine: EngineChoice) {
    let cfg = RelayConfig { relatch_after: Duration::from_millis(1500), ..config(engine) };
    let (relay, events) = start(cfg);
    let (old, new, pb) = (peer("127.0.0.1"), peer("127.0.0.1"), peer("[::1]"));
    let s = session(&relay, LegSpec::new(Family::V4, None), strict(Family::V6, addr(&pb)));
    old.send_to(&rtp(1, 1, 1), s.legs[0].rtp).unwrap();
    assert_eq!(recv(&pb).0, rtp(1, 1, 1));
    // The old source is alive: a new one (even with valid RTP) is refused.
    new.send_to(&rtp(1, 2, 2), s.legs[0].rtp).unwrap();
    old.send_to(&rtp(2, 1, 1), s.legs[0].rtp).unwrap();
    assert_eq!(recv(&pb).0, rtp(2, 1, 1));
    let silent_since = Instant::now();
    // After the old source has been silent for relatch_after, the new source takes over.
    std::thread::sleep(Duration::from_millis(1700).saturating_sub(silent_since.elapsed()));
    new.send_to(&rtp(2, 2, 2), s.legs[0].rtp).unwrap();
    assert_eq!(recv(&pb).0, rtp(2, 2, 2));
    let e = wait_event(&events, |e| matches!(e, Event::Relatched { .. }));
    assert!(matches!(e, Event::Relatched { leg: LegId::A, from, to, .. } if from == addr(&old) && to == addr(&new)));
    // Media towards A follows; the old source is now the stranger.
    pb.send_to(&rtp(3, 3, 3), s.legs[1].rtp).unwrap();
    assert_eq!(recv(&new).0, rtp(3, 3, 3));
    old.send_to(&rtp(3, 1, 1), s.legs[0].rtp).unwrap();
    new.send_to(&rtp(3, 2, 2), s.legs[0].rtp).unwrap();
    assert_eq!(recv(&pb).0, rtp(3, 2, 2));
    assert_eq!(stats(&relay, &s).legs[0].drops.strict_source, 2);
}

fn update_peer_moves_the_party(engine: EngineChoice) {
    let (relay, _ev) = start(config(engine));
    let (pa, pa2, pb) = (peer("[::1]"), peer("[::1]"), peer("127.0.0.1"));
    let s = session(&relay, strict(Family::V6, addr(&pa)), strict(Family::V4, addr(&pb)));
    relay.update_peer(s.id, LegId::A, Some(addr(&pa2))).unwrap();
    // Commands are processed in order, so a stats round trip proves the update is applied.
    stats(&relay, &s);
    pa.send_to(&rtp(1, 1, 1), s.legs[0].rtp).unwrap();
    pa2.send_to(&rtp(1, 2, 2), s.legs[0].rtp).unwrap();
    assert_eq!(recv(&pb).0, rtp(1, 2, 2));
    pb.send_to(&rtp(1, 3, 3), s.legs[1].rtp).unwrap();
    assert_eq!(recv(&pa2).0, rtp(1, 3, 3));
}

fn media_timeout_event(engine: EngineChoice) {
    let (relay, events) = start(config(engine));
    let (pa, pb) = (peer("127.0.0.1"), peer("127.0.0.1"));
    let s = relay
        .create_session(SessionSpec {
            legs: [strict(Family::V4, addr(&pa)), strict(Family::V4, addr(&pb))],
            media_timeout: Some(Duration::from_millis(300)),
        })
        .unwrap();
    let e = wait_event(&events, |e| matches!(e, Event::MediaTimeout { .. }));
    assert!(matches!(e, Event::MediaTimeout { session, .. } if session == s.id));
    wait_event(&events, |e| matches!(e, Event::MediaTimeout { .. }));
}

fn port_exhaustion(engine: EngineChoice) {
    let cfg = RelayConfig { ports_v4: port_block(2), ..config(engine) };
    let (relay, _ev) = start(cfg);
    let pb = peer("127.0.0.1");
    let _s = session(&relay, strict(Family::V4, addr(&pb)), strict(Family::V4, addr(&pb)));
    let err = relay
        .create_session(SessionSpec {
            legs: [strict(Family::V4, addr(&pb)), strict(Family::V6, "[::1]:9".parse().unwrap())],
            media_timeout: None,
        })
        .unwrap_err();
    assert!(matches!(err, Error::PortsExhausted { family: Family::V4, capacity: 2 }), "{err}");
    assert!(err.to_string().contains("no free V4 relay ports"));
    // A failed create leaks nothing: the v6 side is still fully free.
    assert_eq!(relay.free_ports(Family::V6), 16);
}

fn delete_frees_ports_after_quarantine(engine: EngineChoice) {
    let quarantine = Duration::from_secs(2);
    let cfg = RelayConfig { ports_v4: port_block(1), ports_v6: port_block(1), port_quarantine: quarantine, ..config(engine) };
    let (relay, events) = start(cfg);
    let (pa, pb) = (peer("[::1]"), peer("127.0.0.1"));
    let spec = SessionSpec { legs: [strict(Family::V6, addr(&pa)), strict(Family::V4, addr(&pb))], media_timeout: None };
    let s = relay.create_session(spec).unwrap();
    assert!(matches!(relay.create_session(spec), Err(Error::PortsExhausted { .. })));
    relay.delete_session(s.id).unwrap();
    let deleted = Instant::now();
    let e = wait_event(&events, |e| matches!(e, Event::Closed { .. }));
    assert!(matches!(e, Event::Closed { session, .. } if session == s.id));
    assert!(matches!(relay.delete_session(s.id), Err(Error::NoSuchSession(_))));
    if deleted.elapsed() < quarantine / 2 {
        assert!(matches!(relay.create_session(spec), Err(Error::PortsExhausted { .. })), "quarantined");
    }
    let deadline = Instant::now() + quarantine + WAIT;
    let again = loop {
        match relay.create_session(spec) {
            Ok(s) => break s,
            Err(Error::PortsExhausted { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(deleted.elapsed() >= quarantine);
    assert_eq!(again.legs[0].rtp, s.legs[0].rtp);
    assert_eq!(again.legs[1].rtp, s.legs[1].rtp);
    // And the reused ports relay for the new session.
    pa.send_to(&rtp(1, 1, 1), again.legs[0].rtp).unwrap();
    assert_eq!(recv(&pb).0, rtp(1, 1, 1));
}

fn loss_stats_through_the_relay(engine: EngineChoice) {
    let (relay, _ev) = start(config(engine));
    let (pa, pb) = (peer("127.0.0.1"), peer("[::1]"));
    let s = session(&relay, strict(Family::V4, addr(&pa)), strict(Family::V6, addr(&pb)));
    let sent: Vec<u16> = (0..30u16).filter(|i| ![4, 5, 17].contains(i)).collect();
    for &seq in &sent {
        pa.send_to(&rtp(seq, 42, 0), s.legs[0].rtp).unwrap();
        recv(&pb);
    }
    let st = stats(&relay, &s);
    let rtp_a = st.legs[0].rtp;
    assert_eq!(rtp_a.ssrc, Some(42));
    assert_eq!((rtp_a.expected, rtp_a.received, rtp_a.lost), (30, 27, 3));
    assert_eq!(st.legs[1].tx_rtp.packets, 27);
}

fn no_destination_is_counted(engine: EngineChoice) {
    let (relay, _ev) = start(config(engine));
    let (pa, pb) = (peer("127.0.0.1"), peer("127.0.0.1"));
    let s = session(&relay, strict(Family::V4, addr(&pa)), LegSpec::new(Family::V4, None));
    pa.send_to(&rtp(1, 1, 1), s.legs[0].rtp).unwrap();
    let deadline = Instant::now() + WAIT;
    while stats(&relay, &s).legs[0].drops.no_destination == 0 {
        assert!(Instant::now() < deadline, "the packet towards an unknown B was not counted");
        std::thread::sleep(Duration::from_millis(10));
    }
    // B latches on its first packet; from then on A's media reaches it.
    pb.send_to(&rtp(1, 2, 2), s.legs[1].rtp).unwrap();
    assert_eq!(recv(&pa).0, rtp(1, 2, 2));
    pa.send_to(&rtp(2, 1, 1), s.legs[0].rtp).unwrap();
    assert_eq!(recv(&pb).0, rtp(2, 1, 1));
    assert_eq!(stats(&relay, &s).legs[0].drops.no_destination, 1);
}

fn many_sessions_on_several_threads(engine: EngineChoice) {
    let cfg = RelayConfig { cpus: vec![0, 1], ..config(engine) };
    let (relay, events) = start(cfg);
    let (pa, pb) = (peer("127.0.0.1"), peer("[::1]"));
    let sessions: Vec<SessionInfo> =
        (0..8).map(|_| session(&relay, LegSpec::new(Family::V4, None), LegSpec::new(Family::V6, None))).collect();
    assert_eq!(relay.session_count(), 8);
    for (i, s) in sessions.iter().enumerate() {
        pa.send_to(&rtp(i as u16, 1, 1), s.legs[0].rtp).unwrap();
        wait_event(&events, |e| matches!(e, Event::Latched { session, leg: LegId::A, .. } if *session == s.id));
        pb.send_to(&rtp(i as u16, 2, 2), s.legs[1].rtp).unwrap();
        assert_eq!(recv(&pa), (rtp(i as u16, 2, 2), s.legs[0].rtp));
        pa.send_to(&rtp(i as u16, 1, 3), s.legs[0].rtp).unwrap();
        assert_eq!(recv(&pb), (rtp(i as u16, 1, 3), s.legs[1].rtp));
    }
    for s in &sessions {
        relay.delete_session(s.id).unwrap();
    }
    assert_eq!(relay.session_count(), 0);
}

/// A burst far larger than the engine's buffers (io_uring: the provided-buffer ring runs dry and
/// the multishot receive must be re-armed) must not stop the session.
fn keeps_relaying_after_a_burst(engine: EngineChoice) {
    let (relay, _ev) = start(config(engine));
    let (pa, pb) = (peer("127.0.0.1"), peer("127.0.0.1"));
    let s = session(&relay, strict(Family::V4, addr(&pa)), strict(Family::V4, addr(&pb)));
    for i in 0..20_000u32 {
        let _ = pa.send_to(&rtp(i as u16, 1, 0), s.legs[0].rtp);
    }
    // Drain whatever made it, then prove the session still relays with fresh markers.
    pb.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let marker = rtp(7, 0x4d4d, 0x4d);
    let mut buf = [0u8; 2048];
    let mut seen = false;
    for _ in 0..50 {
        pa.send_to(&marker, s.legs[0].rtp).unwrap();
        for _ in 0..25_000 {
            match pb.recv_from(&mut buf) {
                Ok((n, _)) if buf[..n] == marker[..] => {
                    seen = true;
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if seen {
            break;
        }
    }
    assert!(seen, "the session stopped relaying after the burst");
    let st = stats(&relay, &s);
    assert!(st.legs[0].rx_rtp.packets > 0);
}

macro_rules! engine_suite {
    ($name:ident, $engine:expr) => {
        mod $name {
            use super::*;
            const E: EngineChoice = $engine;
            #[test]
            fn forward_v6_v4() {
                super::forward_v6_v4(E)
            }
            #[test]
            fn busy_poll_forwards() {
                super::busy_poll_forwards(E)
            }
            #[test]
            fn forward_v4_v4() {
                super::forward_v4_v4(E)
            }
            #[test]
            fn rtcp_is_relayed() {
                super::rtcp_is_relayed(E)
            }
            #[test]
            fn rtcp_mux_leg() {
                super::rtcp_mux_leg(E)
            }
            #[test]
            fn latches_to_unannounced_source() {
                super::latches_to_unannounced_source(E)
            }
            #[test]
            fn strict_drops_intruder() {
                super::strict_drops_intruder(E)
            }
            #[test]
            fn latched_leg_drops_intruder() {
                super::latched_leg_drops_intruder(E)
            }
            #[test]
            fn latch_scope_keeps_strangers_out() {
                super::latch_scope_keeps_strangers_out(E)
            }
            #[test]
            fn relatch_rule() {
                super::relatch_rule(E)
            }
            #[test]
            fn update_peer_moves_the_party() {
                super::update_peer_moves_the_party(E)
            }
            #[test]
            fn media_timeout_event() {
                super::media_timeout_event(E)
            }
            #[test]
            fn port_exhaustion() {
                super::port_exhaustion(E)
            }
            #[test]
            fn delete_frees_ports_after_quarantine() {
                super::delete_frees_ports_after_quarantine(E)
            }
            #[test]
            fn loss_stats_through_the_relay() {
                super::loss_stats_through_the_relay(E)
            }
            #[test]
            fn no_destination_is_counted() {
                super::no_destination_is_counted(E)
            }
            #[test]
            fn keeps_relaying_after_a_burst() {
                super::keeps_relaying_after_a_burst(E)
            }
            #[test]
            fn many_sessions_on_several_threads() {
                super::many_sessions_on_several_threads(E)
            }
        }
    };
}

engine_suite!(epoll, EngineChoice::Epoll);
engine_suite!(io_uring, EngineChoice::IoUring);
