//! Simulation of relayed calls: an IPv6 phone and an IPv4 carrier, the fake relay of
//! [`super::tests::Sim`]; every SDP each side sees, every relay request, no session left over.

use super::tests::*;
use super::*;
use crate::auth::{answer_challenge, Challenge};
use crate::media::sdp::Sdp;

const PRIMARY: &str = "198.51.100.1:5060";
const BACKUP: &str = "198.51.100.2:5060";

const PHONE_SDP: &str = "v=0\r\no=alice 1 1 IN IP6 2001:db8::10\r\ns=-\r\nc=IN IP6 2001:db8::10\r\nt=0 0\r\n\
    m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=ice-ufrag:abcd\r\n\
    a=candidate:1 1 UDP 2130706431 2001:db8::10 4000 typ host\r\na=sendrecv\r\n";
const CARRIER_SDP: &str = "v=0\r\no=gw 9 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 20000 RTP/AVP 0\r\n";

fn relayed() -> Sim {
    Sim::with(&CFG.replace("relay = \"never\"", "relay = \"auto\"\nmedia_timeout_secs = 5"))
}

fn with_body(msg: &str, body: &str) -> String {
    let (head, _) = msg.split_once("Content-Length: ").unwrap();
    format!("{head}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}

fn body(t: &Transmit) -> String {
    text(t).split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

/// Alice's authenticated INVITE to `number` with `sdp` (empty: late offer).
fn call(sim: &mut Sim, number: &str, call: &str, sdp: &str, content_type: &str) -> Vec<Transmit> {
    let ruri = format!("sip:{number}@sixgate.test");
    let plain = |extra: &str, branch: &str, cseq: u32| {
        let m = invite(&ruri, "alice", call, branch, cseq, extra);
        let (head, _) = m.split_once("Content-Type: ").unwrap();
        format!("{head}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{sdp}", sdp.len())
    };
    let out = sim.send(PHONE, &plain("", &format!("{call}1"), 1));
    let c407 = out.iter().find(|t| status(t) == 407).expect("407");
    let ch = header(c407, "Proxy-Authenticate").iter().find_map(|v| Challenge::parse(v.as_bytes()).filter(|c| c.algorithm == crate::auth::Algorithm::Md5)).unwrap();
    let cred = answer_challenge(&ch, "alice", "secret", b"INVITE", &ruri, "cn1");
    sim.send(PHONE, &plain(&format!("Proxy-Authorization: {cred}\r\n"), &format!("{call}2"), 2))
}

/// A request inside the call from the phone (CSeq `cseq`), with an optional SDP body.
fn from_phone(method: &str, cseq: u32, branch: &str, sdp: &str) -> String {
    let m = format!(
        "{method} sip:+442079999999@198.51.100.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::10]:5062;branch=z9hG4bK{branch};rport\r\n\
         Route: <sip:[2001:db8::5]:5060;lr>\r\nRoute: <sip:192.0.2.5:5060;lr>\r\nMax-Forwards: 70\r\n\
         From: <sip:alice@sixgate.test>;tag=caller1\r\nTo: <sip:+442079999999@sixgate.test>;tag=carrier9\r\nCall-ID: m-1\r\nCSeq: {cseq} {method}\r\n\
         Contact: <sip:alice@[2001:db8::10]:5062>\r\nContent-Length: 0\r\n\r\n"
    );
    if sdp.is_empty() { m } else { with_body(&m, sdp) }
}

fn assert_only_v4(t: &Transmit) {
    let b = body(t);
    assert!(!b.contains("IP6") && !b.contains("2001:db8") && !b.contains("candidate") && !b.contains("ice-"), "{b}");
    let sdp = Sdp::parse(b.as_bytes()).unwrap();
    assert!(sdp.media.iter().all(|m| m.port == 0 || m.addr.is_unspecified() || m.addr == "192.0.2.5".parse::<std::net::IpAddr>().unwrap()), "{b}");
}

fn assert_only_v6(t: &Transmit) {
    let b = body(t);
    assert!(!b.contains("IP4") && !b.contains("198.51.100"), "{b}");
}

/// The call set up to the 200 and ACK: returns the INVITE the carrier got.
fn answered(sim: &mut Sim) -> Transmit {
    let out = call(sim, "+442079999999", "m-1", PHONE_SDP, "application/sdp");
    let inv = out.iter().find(|t| t.dest.to_string() == PRIMARY).expect("INVITE to the carrier").clone();
    assert_only_v4(&inv);
    let out = sim.send(PRIMARY, &with_body(&respond(&inv, 183, "Session Progress", Some("carrier9"), ""), CARRIER_SDP));
    assert_only_v6(&out[0]);
    let early = body(&out[0]);
    assert!(early.contains("c=IN IP6 2001:db8::5\r\n"), "early media through the relay: {early}");
    let ok = with_body(&respond(&inv, 200, "OK", Some("carrier9"), "Contact: <sip:gw@198.51.100.1:5060>\r\n"), CARRIER_SDP);
    let out = sim.send(PRIMARY, &ok);
    assert_eq!(status(&out[0]), 200);
    assert_eq!(body(&out[0]), early, "the 200 repeats the 183's answer: same ports, same version");
    sim.send(PHONE, &from_phone("ACK", 2, "ack1", ""));
    inv
}

#[test]
fn a_v6_phone_and_a_v4_carrier_each_see_only_their_family_and_the_relay_learns_both() {
    let mut sim = relayed();
    let inv = answered(&mut sim);
    // One session, made with the phone's peer on leg A and strict peers (nobody is NATed).
    let MediaOp::Create(specs) = &sim.media_ops[0] else { panic!("{:?}", sim.media_ops) };
    assert_eq!(specs.len(), 1);
    let [a, b] = specs[0].legs;
    assert_eq!((a.family, a.peer, a.latch, a.latch_from), (sixgate_relay::Family::V6, Some("[2001:db8::10]:4000".parse().unwrap()), false, Some("2001:db8::10".parse().unwrap())));
    assert_eq!((b.family, b.peer, b.latch), (sixgate_relay::Family::V4, None, false));
    assert!(sim.media_ops.iter().any(|op| matches!(op, MediaOp::Update(u) if u.leg == sixgate_relay::LegId::B && u.peer == Some("198.51.100.7:20000".parse().unwrap()))), "{:?}", sim.media_ops);
    assert!(body(&inv).contains("m=audio 30006 RTP/AVP 0 101\r\n"), "{}", body(&inv));
    let d = sim.eng.dialogs().next().unwrap();
    assert_eq!(d.media.as_ref().map(|m| m.call.streams.len()), Some(1));
    // BYE ends the call and its session.
    let out = sim.send(PHONE, &from_phone("BYE", 3, "bye1", ""));
    let bye = out.iter().find(|t| t.dest.to_string() == PRIMARY).unwrap();
    sim.send(PRIMARY, &respond(bye, 200, "OK", None, ""));
    assert!(sim.relay.live.is_empty(), "BYE deleted the session");
    sim.run_until(Duration::from_secs(120));
    assert!(sim.drained(), "{:?}", sim.eng.table_sizes());
}

#[test]
fn hold_resume_and_a_family_change_by_re_invite() {
    let mut sim = relayed();
    answered(&mut sim);
    let first = *sim.relay.live.iter().next().unwrap();
    // Hold with the legacy 0.0.0.0 and sendonly (an IPv6 phone may still send it).
    let hold = PHONE_SDP.replace("c=IN IP6 2001:db8::10", "c=IN IP4 0.0.0.0").replace("a=sendrecv", "a=sendonly").replace(" 1 1 IN", " 1 2 IN");
    let out = sim.send(PHONE, &from_phone("INVITE", 3, "hold", &hold));
    let reinv = out.iter().find(|t| t.dest.to_string() == PRIMARY).unwrap().clone();
    assert!(body(&reinv).contains("c=IN IP4 0.0.0.0\r\n") && body(&reinv).contains("a=sendonly"), "{}", body(&reinv));
    assert!(body(&reinv).contains("o=alice 1 2 IN IP4"), "version went up: {}", body(&reinv));
    let ops = sim.media_ops.len();
    let out = sim.send(PRIMARY, &with_body(&respond(&reinv, 200, "OK", None, ""), &CARRIER_SDP.replace("m=audio", "a=recvonly\r\nm=audio")));
    assert_only_v6(&out[0]);
    assert!(sim.media_ops[ops..].iter().any(|op| matches!(op, MediaOp::Update(u) if u.leg == sixgate_relay::LegId::A && u.peer.is_none())), "hold cleared the phone's peer only once answered");
    // Resume, now offering IPv4 (a dual-stack phone): a new session, the old one deleted.
    let v4 = PHONE_SDP.replace("IN IP6 2001:db8::10", "IN IP4 203.0.113.10").replace(" 1 1 IN", " 1 3 IN");
    let out = sim.send(PHONE, &from_phone("INVITE", 4, "resume", &v4));
    let reinv = out.iter().find(|t| t.dest.to_string() == PRIMARY).unwrap().clone();
    assert_only_v4(&reinv);
    assert_eq!(sim.relay.live.len(), 2, "the new session exists beside the old until the answer");
    sim.send(PRIMARY, &with_body(&respond(&reinv, 200, "OK", None, ""), CARRIER_SDP));
    assert_eq!(sim.relay.live.len(), 1);
    assert!(!sim.relay.live.contains(&first), "the old session went with the 2xx");
    let d = sim.eng.dialogs().next().unwrap();
    assert_eq!(d.media.as_ref().unwrap().call.streams[0].unwrap().family(crate::media::offer::Side::Caller), sixgate_relay::Family::V4);
}

#[test]
fn bad_sdp_gets_488_and_no_session_and_exhaustion_gets_503_with_retry_after() {
    let mut sim = relayed();
    let out = call(&mut sim, "+442079999999", "bad-1", "v=0\r\no=- 1 1 IN IP6 ::1\r\ns=-\r\nm=audio 99999 RTP/AVP 0\r\n", "application/sdp");
    assert_eq!(status(&out[1]), 488, "{}", text(&out[1]));
    assert!(text(&out[1]).contains("port out of range"), "{}", text(&out[1]));
    let out = call(&mut sim, "+442079999999", "bad-2", "hello", "text/plain");
    assert_eq!(status(&out[1]), 488);
    assert!(text(&out[1]).contains("not application/sdp"));
    assert!(sim.media_ops.is_empty(), "no relay session for a refused body");
    sim.relay.fail = true;
    let out = call(&mut sim, "+442079999999", "full-1", PHONE_SDP, "application/sdp");
    let refusal = out.iter().find(|t| status(t) == 503).expect("503");
    assert_eq!(header(refusal, "Retry-After"), ["10"]);
    assert!(out.iter().all(|t| t.dest.to_string() != PRIMARY && t.dest.to_string() != BACKUP), "nothing reached a carrier without media");
    assert_eq!(sim.eng.stats.media_failures, 2, "both carriers were tried");
    assert!(sim.relay.live.is_empty());
}

#[test]
fn failover_and_cancel_leave_no_session_behind() {
    let mut sim = relayed();
    let out = call(&mut sim, "+442079999999", "fo-1", PHONE_SDP, "application/sdp");
    let inv = out.iter().find(|t| t.dest.to_string() == PRIMARY).unwrap().clone();
    let out = sim.send(PRIMARY, &respond(&inv, 503, "Busy Here", Some("x"), ""));
    let inv2 = out.iter().find(|t| t.dest.to_string() == BACKUP).expect("failover").clone();
    assert_only_v4(&inv2);
    assert_eq!(sim.relay.live.len(), 1, "the failed branch's session went, the new branch has one");
    sim.send(BACKUP, &respond(&inv2, 180, "Ringing", Some("y"), ""));
    let c =
        "CANCEL sip:+442079999999@sixgate.test SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::10]:5062;branch=z9hG4bKfo-12;rport\r\nMax-Forwards: 70\r\n\
         From: <sip:alice@sixgate.test>;tag=caller1\r\nTo: <sip:+442079999999@sixgate.test>\r\nCall-ID: fo-1\r\nCSeq: 2 CANCEL\r\nContent-Length: 0\r\n\r\n";
    let out = sim.send(PHONE, c);
    let cancel_down = out.iter().find(|t| t.dest.to_string() == BACKUP).expect("CANCEL downstream").clone();
    sim.send(BACKUP, &respond(&cancel_down, 200, "OK", None, ""));
    sim.send(BACKUP, &respond(&inv2, 487, "Request Terminated", Some("y"), ""));
    assert!(sim.relay.live.is_empty(), "{:?}", sim.relay.live);
    sim.run_until(Duration::from_secs(120));
    assert!(sim.drained(), "{:?}", sim.eng.table_sizes());
}

#[test]
fn a_late_offer_is_answered_through_the_relay_in_the_ack() {
    let mut sim = relayed();
    let out = call(&mut sim, "+442079999999", "m-1", "", "application/sdp");
    let inv = out.iter().find(|t| t.dest.to_string() == PRIMARY).unwrap().clone();
    assert!(body(&inv).is_empty());
    assert_eq!(sim.relay.live.len(), 1, "one audio stream waits for the offer");
    let ok = with_body(&respond(&inv, 200, "OK", Some("carrier9"), "Contact: <sip:gw@198.51.100.1:5060>\r\n"), CARRIER_SDP);
    let out = sim.send(PRIMARY, &ok);
    assert_only_v6(&out[0]);
    assert!(body(&out[0]).contains("c=IN IP6 2001:db8::5"), "{}", body(&out[0]));
    let out = sim.send(PHONE, &from_phone("ACK", 2, "ack1", PHONE_SDP));
    assert_eq!(out.len(), 1);
    assert_only_v4(&out[0]);
    assert!(sim.media_ops.iter().any(|op| matches!(op, MediaOp::Update(u) if u.leg == sixgate_relay::LegId::A && u.peer == Some("[2001:db8::10]:4000".parse().unwrap()))));
}

#[test]
fn a_media_timeout_ends_the_call_with_a_bye_to_each_side() {
    let mut sim = relayed();
    answered(&mut sim);
    let session = sixgate_relay::SessionId(*sim.relay.live.iter().next().unwrap());
    sim.eng.handle(sim.now, Input::MediaTimeout { session, leg: sixgate_relay::LegId::B });
    let out = sim.drain();
    let to_carrier = out.iter().find(|t| t.dest.to_string() == PRIMARY).expect("BYE to the carrier");
    let to_phone = out.iter().find(|t| t.dest.to_string() == PHONE).expect("BYE to the phone");
    assert!(text(to_carrier).starts_with("BYE sip:gw@198.51.100.1:5060 SIP/2.0\r\n"), "{}", text(to_carrier));
    assert!(text(to_carrier).contains("From: <sip:alice@sixgate.test>;tag=caller1\r\n") && text(to_carrier).contains("CSeq: 3 BYE"), "{}", text(to_carrier));
    assert!(text(to_phone).starts_with("BYE sip:alice@[2001:db8::10]:5062 SIP/2.0\r\n"), "{}", text(to_phone));
    assert!(text(to_phone).contains(";tag=carrier9\r\nTo: <sip:alice@sixgate.test>;tag=caller1\r\n") && text(to_phone).contains("Reason: Q.850;cause=102"), "{}", text(to_phone));
    assert_eq!(sim.eng.dialogs().count(), 0);
    assert!(sim.relay.live.is_empty());
    sim.send(PRIMARY, &respond(to_carrier, 200, "OK", None, ""));
    sim.send(PHONE, &respond(to_phone, 200, "OK", None, ""));
    sim.run_until(Duration::from_secs(120));
    assert!(sim.drained(), "{:?}", sim.eng.table_sizes());
}

#[test]
fn prack_and_update_travel_in_the_early_dialog_and_its_media_becomes_the_calls() {
    let mut sim = relayed();
    let out = call(&mut sim, "+442079999999", "m-1", PHONE_SDP, "application/sdp");
    let inv = out.iter().find(|t| t.dest.to_string() == PRIMARY).unwrap().clone();
    let reliable = "Require: 100rel\r\nRSeq: 1\r\nContact: <sip:gw@198.51.100.1:5060>\r\n";
    let out = sim.send(PRIMARY, &with_body(&respond(&inv, 183, "Session Progress", Some("carrier9"), reliable), CARRIER_SDP));
    assert_only_v6(&out[0]);
    let d = sim.eng.dialogs().next().expect("the 183 made an early dialog");
    assert!(d.early && d.media.is_some());
    // PRACK (RFC 3262) in the early dialog reaches the carrier, and its 200 the phone.
    let prack = from_phone("PRACK", 3, "prack1", "").replace("Content-Length: 0", "RAck: 1 2 INVITE\r\nContent-Length: 0");
    let out = sim.send(PHONE, &prack);
    let fwd = out.iter().find(|t| t.dest.to_string() == PRIMARY).expect("PRACK forwarded, not 481").clone();
    assert!(text(&fwd).starts_with("PRACK sip:gw@198.51.100.1:5060") || text(&fwd).starts_with("PRACK sip:+442079999999@198.51.100.1:5060"), "{}", text(&fwd));
    let out = sim.send(PRIMARY, &respond(&fwd, 200, "OK", None, ""));
    assert_eq!(status(&out[0]), 200);
    // UPDATE with an offer in another family, still before the answer: a new session follows.
    let first = *sim.relay.live.iter().next().unwrap();
    let v4 = PHONE_SDP.replace("IN IP6 2001:db8::10", "IN IP4 203.0.113.10").replace(" 1 1 IN", " 1 2 IN");
    let out = sim.send(PHONE, &from_phone("UPDATE", 4, "upd1", &v4));
    let upd = out.iter().find(|t| t.dest.to_string() == PRIMARY).expect("UPDATE forwarded").clone();
    assert_only_v4(&upd);
    let out = sim.send(PRIMARY, &with_body(&respond(&upd, 200, "OK", None, ""), CARRIER_SDP));
    // The phone now takes IPv4 media: it is shown the relay's IPv4 side, never the carrier.
    assert!(body(&out[0]).contains("c=IN IP4 192.0.2.5\r\n") && !body(&out[0]).contains("198.51.100"), "{}", body(&out[0]));
    assert_eq!(sim.relay.live.len(), 1);
    assert!(!sim.relay.live.contains(&first), "the session the UPDATE replaced is gone");
    // The 200 confirms the early dialog: one call, counted once, with the UPDATE's media.
    let ok = with_body(&respond(&inv, 200, "OK", Some("carrier9"), "Contact: <sip:gw@198.51.100.1:5060>\r\n"), CARRIER_SDP);
    let out = sim.send(PRIMARY, &ok);
    assert!(body(&out[0]).contains("c=IN IP4 192.0.2.5\r\n") && body(&out[0]).contains(" 9 2 IN IP4"), "the UPDATE's media, its version (nothing changed since): {}", body(&out[0]));
    assert_eq!(sim.eng.dialogs().count(), 1);
    assert!(!sim.eng.dialogs().next().unwrap().early);
    assert_eq!(sim.eng.stats.calls_answered, 1);
    sim.send(PHONE, &from_phone("ACK", 2, "ack1", ""));
    let out = sim.send(PHONE, &from_phone("BYE", 5, "bye1", ""));
    let bye = out.iter().find(|t| t.dest.to_string() == PRIMARY).unwrap().clone();
    sim.send(PRIMARY, &respond(&bye, 200, "OK", None, ""));
    assert!(sim.relay.live.is_empty());
    sim.run_until(Duration::from_secs(120));
    assert!(sim.drained(), "{:?}", sim.eng.table_sizes());
}

#[test]
fn a_rejected_call_ends_its_early_dialog_and_its_sessions() {
    let mut sim = relayed();
    let out = call(&mut sim, "+442079999999", "m-1", PHONE_SDP, "application/sdp");
    let inv = out.iter().find(|t| t.dest.to_string() == PRIMARY).unwrap().clone();
    sim.send(PRIMARY, &with_body(&respond(&inv, 183, "Session Progress", Some("carrier9"), ""), CARRIER_SDP));
    assert_eq!(sim.eng.dialogs().count(), 1);
    let out = sim.send(PRIMARY, &respond(&inv, 486, "Busy Here", Some("carrier9"), ""));
    assert!(out.iter().any(|t| status(t) == 486));
    assert_eq!(sim.eng.dialogs().count(), 0, "the early dialog ended with the call");
    assert!(sim.relay.live.is_empty());
    assert_eq!(sim.eng.stats.calls_answered, 0);
}

#[test]
fn an_offer_in_a_reliable_183_is_answered_in_the_prack() {
    let mut sim = relayed();
    let out = call(&mut sim, "+442079999999", "m-1", "", "application/sdp");
    let inv = out.iter().find(|t| t.dest.to_string() == PRIMARY).unwrap().clone();
    let reliable = "Require: 100rel\r\nRSeq: 1\r\nContact: <sip:gw@198.51.100.1:5060>\r\n";
    let out = sim.send(PRIMARY, &with_body(&respond(&inv, 183, "Session Progress", Some("carrier9"), reliable), CARRIER_SDP));
    assert_only_v6(&out[0]);
    let ops = sim.media_ops.len();
    let prack = from_phone("PRACK", 3, "prack1", PHONE_SDP).replace("Content-Type:", "RAck: 1 2 INVITE\r\nContent-Type:");
    let out = sim.send(PHONE, &prack);
    let fwd = out.iter().find(|t| t.dest.to_string() == PRIMARY).expect("PRACK forwarded").clone();
    assert_only_v4(&fwd);
    assert!(!sim.media_ops[ops..].iter().any(|op| matches!(op, MediaOp::Update(u) if u.leg == sixgate_relay::LegId::A)), "the phone's peer waits for the PRACK's 2xx");
    sim.send(PRIMARY, &respond(&fwd, 200, "OK", None, ""));
    assert!(sim.media_ops[ops..].iter().any(|op| matches!(op, MediaOp::Update(u) if u.leg == sixgate_relay::LegId::A && u.peer == Some("[2001:db8::10]:4000".parse().unwrap()))), "{:?}", &sim.media_ops[ops..]);
}

#[test]
fn a_ringing_call_is_not_judged_by_the_media_timeout() {
    let mut sim = relayed();
    let out = call(&mut sim, "+442079999999", "m-1", PHONE_SDP, "application/sdp");
    let inv = out.iter().find(|t| t.dest.to_string() == PRIMARY).unwrap().clone();
    sim.send(PRIMARY, &respond(&inv, 180, "Ringing", Some("carrier9"), ""));
    let session = sixgate_relay::SessionId(*sim.relay.live.iter().next().unwrap());
    sim.eng.handle(sim.now, Input::MediaTimeout { session, leg: sixgate_relay::LegId::B });
    assert!(sim.drain().is_empty(), "no BYE for a call still ringing");
    assert_eq!(sim.eng.dialogs().count(), 1, "the early dialog stays");
    assert_eq!(sim.relay.live.len(), 1);
}

/// Relay counters with `caller` and `callee` RTP packets received from each side.
fn counters(caller: u64, callee: u64) -> sixgate_relay::SessionStats {
    let mut legs = [sixgate_relay::LegStats::default(); 2];
    legs[0].rx_rtp.packets = caller;
    legs[1].rx_rtp.packets = callee;
    sixgate_relay::SessionStats { legs }
}

/// Moves one second at a time for `secs` seconds; at each poll the engine asks for, the relay
/// answers with `rx(second)`. Returns the one-way warnings told.
fn poll(sim: &mut Sim, secs: u64, rx: impl Fn(u64) -> (u64, u64)) -> Vec<(String, &'static str, String)> {
    let start = sim.now;
    let mut found = Vec::new();
    for s in 1..=secs {
        sim.now = start + Duration::from_secs(s);
        sim.eng.handle_timeout(sim.now);
        let asked = sim.media_ops.len();
        sim.drain();
        let sessions: Vec<_> = sim.media_ops[asked..].iter().filter_map(|op| if let MediaOp::Stats(ids) = op { Some(ids.clone()) } else { None }).flatten().collect();
        let (a, b) = rx(s);
        let stats = sessions.into_iter().map(|id| (id, counters(a, b))).collect();
        sim.eng.handle(sim.now, Input::MediaStats { stats });
        sim.drain();
        found.extend(sim.events.drain(..).filter_map(|e| if let Event::OneWayAudio { call_id, silent, cause } = e { Some((call_id, silent, cause)) } else { None }));
    }
    found
}

#[test]
fn one_way_audio_is_told_once_per_call_names_the_silent_side_and_clears_when_media_returns() {
    let mut sim = relayed();
    answered(&mut sim);
    sim.events.clear();
    // The phone sends from the answer on; the carrier never does (media timeout 5 s is the
    // relay's business: this fake relay raises none).
    let found = poll(&mut sim, 4, |s| (s * 50, 0));
    assert!(found.is_empty(), "not before one_way_audio_secs (5 s): {found:?}");
    let found = poll(&mut sim, 3, |s| ((s + 4) * 50, 0));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].0.as_str(), found[0].1), ("m-1", "callee"));
    assert!(found[0].2.contains("no packet ever arrived from the callee"), "{}", found[0].2);
    assert_eq!(sim.eng.stats.one_way_audio_calls, 1);
    assert!(sim.eng.dialogs().next().unwrap().watch.one_way.is_some(), "the ctl marker");
    // The carrier starts sending: the marker goes, the count stays.
    poll(&mut sim, 3, |s| ((s + 7) * 50, s * 50));
    assert!(sim.eng.dialogs().next().unwrap().watch.one_way.is_none());
    assert_eq!(sim.eng.stats.one_way_audio_calls, 1);
    // BYE: the record waits for the relay's final figures.
    let session = sixgate_relay::SessionId(*sim.relay.live.iter().next().unwrap());
    let out = sim.send(PHONE, &from_phone("BYE", 3, "bye1", ""));
    let bye = out.iter().find(|t| t.dest.to_string() == PRIMARY).unwrap().clone();
    sim.send(PRIMARY, &respond(&bye, 200, "OK", None, ""));
    assert!(!sim.events.iter().any(|e| matches!(e, Event::CallRecord(_))), "waiting for the final statistics");
    sim.eng.handle(sim.now, Input::MediaClosed { session, stats: counters(520, 160) });
    sim.drain();
    let Some(Event::CallRecord(r)) = sim.events.iter().find(|e| matches!(e, Event::CallRecord(_))) else { panic!("{:?}", sim.events) };
    assert_eq!((r.call_id.as_str(), r.disposition, r.status, r.end_reason), ("m-1", "answered", 200, Some("BYE")));
    assert_eq!((r.from.as_str(), r.to.as_str()), ("sip:alice@sixgate.test", "sip:+442079999999@sixgate.test"));
    assert_eq!((r.user.as_deref(), r.carrier.as_deref()), (Some("alice"), Some("primary")));
    assert_eq!((r.caller.family, r.callee.as_ref().map(|c| c.family)), ("IPv6", Some("IPv4")));
    assert!(r.answer_ms.is_some_and(|a| a >= r.start_ms && r.end_ms - a == r.duration_ms && r.duration_ms == 10_000), "{r:?}");
    assert_eq!(r.media.len(), 1);
    assert!(r.media[0].complete);
    assert_eq!((r.media[0].from_caller.as_ref().map(|d| d.packets), r.media[0].from_callee.as_ref().map(|d| d.packets)), (Some(520), Some(160)));
    assert_eq!(r.one_way_audio.as_ref().map(|o| o.silent), Some("callee"), "the record keeps the finding");
    sim.run_until(Duration::from_secs(120));
    assert!(sim.drained(), "{:?}", sim.eng.table_sizes());
}

#[test]
fn a_normal_call_and_a_held_call_never_raise_one_way_audio() {
    let mut sim = relayed();
    answered(&mut sim);
    assert!(poll(&mut sim, 20, |s| (s * 50, s * 50)).is_empty(), "both sides send");
    // The phone holds (sendonly, answered recvonly): only the phone sends, which is expected.
    let hold = PHONE_SDP.replace("a=sendrecv", "a=sendonly").replace(" 1 1 IN", " 1 2 IN");
    let out = sim.send(PHONE, &from_phone("INVITE", 3, "hold", &hold));
    let reinv = out.iter().find(|t| t.dest.to_string() == PRIMARY).unwrap().clone();
    sim.send(PRIMARY, &with_body(&respond(&reinv, 200, "OK", None, ""), &CARRIER_SDP.replace("m=audio", "a=recvonly\r\nm=audio")));
    sim.send(PHONE, &from_phone("ACK", 3, "hold-ack", ""));
    assert!(poll(&mut sim, 20, |s| (1000 + s * 50, 1000)).is_empty(), "on hold");
    assert_eq!(sim.eng.stats.one_way_audio_calls, 0);
    // The relay's media timeout ends it (BYE both ways): recorded with the last polled figures
    // when the relay's final ones never come (a lost event).
    sim.events.clear();
    let session = sixgate_relay::SessionId(*sim.relay.live.iter().next().unwrap());
    sim.eng.handle(sim.now, Input::MediaTimeout { session, leg: sixgate_relay::LegId::B });
    sim.drain();
    assert!(!sim.events.iter().any(|e| matches!(e, Event::CallRecord(_))), "waits for the final figures");
    sim.run_until(sim.elapsed() + Duration::from_secs(3));
    let Some(Event::CallRecord(r)) = sim.events.iter().find(|e| matches!(e, Event::CallRecord(_))) else { panic!("{:?}", sim.events) };
    assert_eq!(r.end_reason, Some("media timeout"));
    assert!(!r.media[0].complete && r.media[0].from_caller.as_ref().is_some_and(|d| d.packets == 2000), "{r:?}");
    sim.run_until(sim.elapsed() + Duration::from_secs(120));
    assert!(sim.drained(), "{:?}", sim.eng.table_sizes());
}

#[test]
fn an_unanswered_call_is_recorded_with_its_disposition() {
    let mut sim = relayed();
    let out = call(&mut sim, "+442079999999", "m-1", PHONE_SDP, "application/sdp");
    let inv = out.iter().find(|t| t.dest.to_string() == PRIMARY).unwrap().clone();
    sim.send(PRIMARY, &respond(&inv, 486, "Busy Here", Some("carrier9"), ""));
    let records: Vec<_> = sim.events.iter().filter_map(|e| if let Event::CallRecord(r) = e { Some(r) } else { None }).collect();
    assert_eq!(records.len(), 1, "{:?}", sim.events);
    let r = records[0];
    assert_eq!((r.disposition, r.status, r.answer_ms, r.duration_ms, r.end_reason), ("busy", 486, None, 0, None));
    assert_eq!(r.callee.as_ref().map(|c| c.address.as_str()), Some(PRIMARY));
    assert_eq!(r.carrier.as_deref(), Some("primary"));
}
