//! Calls across address families, end to end: an IPv6-only phone and an IPv4-only carrier, each
//! in its own network namespace, and sixgate in a dual-stack `edge` namespace between them with
//! IP forwarding off, so only sixgate's relay can carry media from one family to the other.
//!
//! ```text
//!  phone6  2001:db8:6::10 ── p6 ═ e6 ── 2001:db8:6::1 ┐ edge (sixgate, relay)   ┌ 203.0.113.1 ── e4 ═ c4 ── 203.0.113.10  carrier4
//!          sipp UAC + the test's RTP socket :40000    └ forwarding off ─────────┘        sipp UAS + the test's RTP echo :20000
//! ```
//!
//! SIP is spoken by sipp (Debian `sip-tester`) on both ends; RTP by the test's own sockets in
//! the namespaces (a sender on the phone, an echo on the carrier), so every packet counted
//! really crossed the relay both ways. The SDP each side was shown is read from sipp's message
//! log. Needs root (network namespaces).

mod common;
use common::{sipp, veth, Namespace, NetnsSixgate, Sipp};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PHONE: &str = "2001:db8:6::10";
const EDGE6: &str = "2001:db8:6::1";
const EDGE4: &str = "203.0.113.1";
const CARRIER: &str = "203.0.113.10";

/// The three hosts; dropped in reverse order of need (processes inside are gone by then).
struct Net {
    phone: Namespace,
    edge: Namespace,
    carrier: Namespace,
}

fn net(tag: &str) -> Net {
    let pid = std::process::id();
    let phone = Namespace::new(&format!("sg-ph6-{tag}-{pid}"));
    let edge = Namespace::new(&format!("sg-edge-{tag}-{pid}"));
    let carrier = Namespace::new(&format!("sg-c4-{tag}-{pid}"));
    veth(&phone, "p6", &edge, "e6");
    veth(&carrier, "c4", &edge, "e4");
    phone.ip(&["-6", "addr", "add", &format!("{PHONE}/64"), "dev", "p6", "nodad"]);
    edge.ip(&["-6", "addr", "add", &format!("{EDGE6}/64"), "dev", "e6", "nodad"]);
    edge.ip(&["addr", "add", &format!("{EDGE4}/24"), "dev", "e4"]);
    carrier.ip(&["addr", "add", &format!("{CARRIER}/24"), "dev", "c4"]);
    // Only the relay may carry media across: the edge routes nothing.
    edge.sysctl(&["net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0"]);
    Net { phone, edge, carrier }
}

fn config(media_timeout_secs: u64) -> String {
    format!(
        r#"
[sip]
domains = ["sixgate.test", "localhost"]
[[listen]]
transport = "udp"
address = "{EDGE6}"
port = 5060
[[listen]]
transport = "udp"
address = "{EDGE4}"
port = 5060
[auth]
realm = "sixgate.test"
algorithms = ["MD5"]
[[users]]
username = "alice"
password = "secret"
numbers = ["+15550100"]
[[users]]
username = "bob"
password = "secret2"
numbers = ["+15550200"]
contacts = ["sip:bob@[{PHONE}]:5070"]
[[carriers]]
name = "carrier4"
uri = "sip:{CARRIER}:5060"
prefixes = ["+44"]
source_cidrs = ["{CARRIER}/32"]
probe_interval_secs = 0
[media]
ipv6 = "{EDGE6}"
ipv4 = "{EDGE4}"
media_timeout_secs = {media_timeout_secs}
one_way_audio_secs = 2
"#
    )
}

/// An RTP packet (PCMU, 20 ms of silence).
fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&0x5678_1234u32.to_be_bytes());
    p.extend(std::iter::repeat_n(0xff, 160));
    p
}

/// The carrier's media: echoes every datagram to its source until stopped; keeps the sources.
struct Echo {
    stop: Arc<AtomicBool>,
    sources: Arc<Mutex<Vec<SocketAddr>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Echo {
    fn start(sock: UdpSocket, echo: bool) -> Echo {
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let sources = Arc::new(Mutex::new(Vec::new()));
        let (s, src) = (stop.clone(), sources.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            // Bounded: stops when told, and the test ends within minutes.
            for _ in 0..6000 {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    src.lock().unwrap().push(from);
                    if echo {
                        let _ = sock.send_to(&buf[..n], from);
                    }
                }
            }
        });
        Echo { stop, sources, thread: Some(thread) }
    }
    fn received(&self) -> Vec<SocketAddr> {
        self.sources.lock().unwrap().clone()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends `n` packets (20 ms apart) to `to` and returns the sources of what came back within
/// 300 ms of the last one.
fn talk(sock: &UdpSocket, to: SocketAddr, first_seq: u16, n: u16) -> Vec<SocketAddr> {
    sock.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut back = Vec::new();
    let mut buf = [0u8; 2048];
    for i in 0..n {
        sock.send_to(&rtp(first_seq + i), to).unwrap();
        while let Ok((_, from)) = sock.recv_from(&mut buf) {
            back.push(from);
        }
    }
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        if let Ok((_, from)) = sock.recv_from(&mut buf) {
            back.push(from);
        }
    }
    back
}

/// Phone alice (sipp in `ns`, on `ip`:5062) runs `scenario`, calling `number` through sixgate at
/// `edge`:5060 with digest (strict uri: sipp sends the Request-URI as the digest uri).
fn alice_calls(ns: &Namespace, scenario: &str, ip: &str, edge: IpAddr, number: &str) -> Sipp {
    let target = SocketAddr::new(edge, 5060).to_string();
    sipp(Some(&ns.0), scenario, ip, 5062, &["-s", number, "-auth_uri", &format!("{number}@{target}")], Some(&target))
}

/// The messages sipp logged as received (`-trace_msg`), oldest first.
fn received(s: &Sipp) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(&s.dir.0).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().ends_with("_messages.log") {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            for chunk in text.split("----------------------------------------------- ") {
                if let Some((_, msg)) = chunk.split_once("message received") {
                    out.push(msg.split_once(":\n").map_or(msg, |(_, m)| m).trim().to_string());
                }
            }
        }
    }
    out
}

/// Waits (bounded) until sipp logged a received message starting with `start` `count` times;
/// returns the last such.
fn await_received(s: &Sipp, start: &str, count: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let got: Vec<String> = received(s).into_iter().filter(|m| m.starts_with(start)).collect();
        if got.len() >= count {
            return got[count - 1].clone();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("sipp ({}) did not receive '{start}' #{count} within 20 s; it got:\n{:#?}", s.what, received(s));
}

/// The relay address an SDP points at (c= and the first m= port).
fn media_target(msg: &str) -> SocketAddr {
    let body = msg.split_once("\r\n\r\n").or_else(|| msg.split_once("\n\n")).map_or("", |(_, b)| b);
    let c = body.lines().find_map(|l| l.trim().strip_prefix("c=IN ")).unwrap_or_else(|| panic!("no c= in {msg}"));
    let ip: IpAddr = c.split_whitespace().nth(1).unwrap().parse().unwrap();
    let port: u16 = body.lines().find_map(|l| l.trim().strip_prefix("m=audio ")).and_then(|m| m.split_whitespace().next()).unwrap().parse().unwrap();
    SocketAddr::new(ip, port)
}

/// Every SDP body among `msgs` (the part after the blank line).
fn bodies(msgs: &[String]) -> String {
    msgs.iter().filter_map(|m| m.split_once("\r\n\r\n").or_else(|| m.split_once("\n\n")).map(|(_, b)| b.to_string())).collect::<Vec<_>>().join("\n")
}

#[test]
fn an_ipv6_phone_calls_an_ipv4_carrier_early_media_hold_and_resume_with_audio_both_ways() {
    let n = net("call");
    let sg = NetnsSixgate::start(&n.edge, format!("[{EDGE6}]:5060").parse().unwrap(), &config(60));
    let echo = Echo::start(n.carrier.udp_socket(format!("{CARRIER}:20000").parse().unwrap()), true);
    let mic = n.phone.udp_socket(format!("[{PHONE}]:40000").parse().unwrap());
    let carrier = sipp(Some(&n.carrier.0), "media_carrier_hold.xml", CARRIER, 5060, &[], None);
    let phone = alice_calls(&n.phone, "media_phone_hold.xml", PHONE, EDGE6.parse().unwrap(), "+442071234567");

    // Early media: the 183 points the phone at the relay's IPv6 side; audio crosses both ways
    // before the 200 (the carrier holds it back for 2 s).
    let early = await_received(&phone, "SIP/2.0 183", 1);
    let relay6 = media_target(&early);
    assert_eq!(relay6.ip(), EDGE6.parse::<IpAddr>().unwrap(), "{early}");
    let back = talk(&mic, relay6, 1, 20);
    let answered_yet = received(&phone).iter().any(|m| m.starts_with("SIP/2.0 200"));
    assert!(back.len() >= 15, "early media echoed back through the relay: {} of 20\n{}", back.len(), sg.log());
    assert!(!answered_yet, "the echoes came before the 200");

    // Answered: audio both ways.
    await_received(&phone, "SIP/2.0 200", 1);
    let answered = talk(&mic, relay6, 100, 25);
    assert!(answered.len() >= 20, "audio after the answer: {} of 25", answered.len());
    // Hold (sendonly) then resume: audio flows again after the resume.
    await_received(&phone, "SIP/2.0 200", 3);
    let resumed = talk(&mic, relay6, 200, 25);
    assert!(resumed.len() >= 20, "audio after resume: {} of 25\n{}", resumed.len(), sg.log());

    let mut phone = phone;
    let out = phone.wait(Duration::from_secs(30));
    assert!(out.status.success(), "phone: {}", phone.logs(&out));
    let phone_msgs = received(&phone);
    let carrier_msgs = received(&carrier);
    carrier.expect_success(Duration::from_secs(30));

    // Each side only ever saw its own family: packets (sources) and SDP.
    let relay4: IpAddr = EDGE4.parse().unwrap();
    let at_carrier = echo.received();
    assert!(at_carrier.len() >= 55, "RTP reached the carrier: {}", at_carrier.len());
    assert!(at_carrier.iter().all(|s| s.ip() == relay4), "the carrier heard only the relay's IPv4 side: {at_carrier:?}");
    assert!(back.iter().chain(&answered).chain(&resumed).all(|s| *s == relay6), "the phone heard only the relay's IPv6 side");
    let phone_sdp = bodies(&phone_msgs);
    assert!(phone_sdp.contains("c=IN IP6 2001:db8:6::1") && !phone_sdp.contains("IP4") && !phone_sdp.contains("203.0.113"), "{phone_sdp}");
    let carrier_sdp = bodies(&carrier_msgs);
    assert!(carrier_sdp.contains("c=IN IP4 203.0.113.1") && !carrier_sdp.contains("IP6") && !carrier_sdp.contains("2001:db8"), "{carrier_sdp}");
    assert!(carrier_sdp.contains("a=sendonly") && carrier_sdp.contains("a=sendrecv"), "hold and resume reached the carrier: {carrier_sdp}");
    // Audio flowed both ways (or was on hold): never one-way. The call record has both
    // directions' final figures.
    assert!(!sg.log().contains("one-way audio"), "{}", sg.log());
    let records = sg.call_records(1);
    let r = records.iter().find(|r| r["disposition"] == "answered").unwrap_or_else(|| panic!("no record of the answered call: {records:?}"));
    assert_eq!((r["caller"]["family"].as_str(), r["callee"]["family"].as_str(), r["carrier"].as_str(), r["end_reason"].as_str()), (Some("IPv6"), Some("IPv4"), Some("carrier4"), Some("BYE")), "{r}");
    assert!(r["one_way_audio"].is_null() && r["answer_ms"].as_u64() > r["start_ms"].as_u64(), "{r}");
    let m = &r["media"][0];
    assert_eq!(m["final"], true, "{r}");
    assert!(m["from_caller"]["packets"].as_u64().is_some_and(|p| p >= 55) && m["from_callee"]["packets"].as_u64().is_some_and(|p| p >= 40), "{r}");
    drop(sg);
}

#[test]
fn an_ipv4_carrier_calls_an_ipv6_phone_with_audio_both_ways() {
    let n = net("in");
    let sg = NetnsSixgate::start(&n.edge, format!("[{EDGE6}]:5060").parse().unwrap(), &config(60));
    // Now the phone echoes and the carrier talks.
    let echo = Echo::start(n.phone.udp_socket(format!("[{PHONE}]:40000").parse().unwrap()), true);
    let mic = n.carrier.udp_socket(format!("{CARRIER}:20000").parse().unwrap());
    let phone = sipp(Some(&n.phone.0), "media_phone_answers.xml", PHONE, 5070, &[], None);
    std::thread::sleep(Duration::from_millis(300));
    let mut carrier = sipp(Some(&n.carrier.0), "media_carrier_calls.xml", CARRIER, 5060, &["-s", "+15550200"], Some(&format!("{EDGE4}:5060")));
    let ok = await_received(&carrier, "SIP/2.0 200", 1);
    let relay4 = media_target(&ok);
    assert_eq!(relay4.ip(), EDGE4.parse::<IpAddr>().unwrap(), "{ok}");
    let back = talk(&mic, relay4, 1, 40);
    assert!(back.len() >= 30, "audio both ways: {} of 40 echoed\n{}", back.len(), sg.log());
    assert!(back.iter().all(|s| *s == relay4), "the carrier heard only the relay's IPv4 side: {back:?}");
    let out = carrier.wait(Duration::from_secs(30));
    assert!(out.status.success(), "carrier: {}", carrier.logs(&out));
    let carrier_sdp = bodies(&received(&carrier));
    let phone_msgs = received(&phone);
    phone.expect_success(Duration::from_secs(30));
    let relay6: IpAddr = EDGE6.parse().unwrap();
    let at_phone = echo.received();
    assert!(at_phone.len() >= 30 && at_phone.iter().all(|s| s.ip() == relay6), "the phone heard the carrier only from the relay's IPv6 side: {at_phone:?}");
    let phone_sdp = bodies(&phone_msgs);
    assert!(phone_sdp.contains("c=IN IP6 2001:db8:6::1") && !phone_sdp.contains("IP4") && !phone_sdp.contains("203.0.113"), "{phone_sdp}");
    assert!(carrier_sdp.contains("c=IN IP4 203.0.113.1") && !carrier_sdp.contains("IP6") && !carrier_sdp.contains("2001:db8"), "{carrier_sdp}");
}

#[test]
fn a_call_whose_far_end_stops_sending_is_ended_by_the_media_timeout() {
    let n = net("tmo");
    let sg = NetnsSixgate::start(&n.edge, format!("[{EDGE6}]:5060").parse().unwrap(), &config(6));
    // The carrier answers and stays silent; the phone keeps talking.
    let silent = Echo::start(n.carrier.udp_socket(format!("{CARRIER}:20000").parse().unwrap()), false);
    let mic = n.phone.udp_socket(format!("[{PHONE}]:40000").parse().unwrap());
    let carrier = sipp(Some(&n.carrier.0), "media_carrier_wait_bye.xml", CARRIER, 5060, &[], None);
    let phone = alice_calls(&n.phone, "media_phone_wait_bye.xml", PHONE, EDGE6.parse().unwrap(), "+442071234567");
    let ok = await_received(&phone, "SIP/2.0 200", 1);
    let relay6 = media_target(&ok);
    // Talk until the BYE comes (at most 20 s: the timeout is 6 s).
    let start = Instant::now();
    let mut seq = 1;
    while start.elapsed() < Duration::from_secs(20) && !received(&phone).iter().any(|m| m.starts_with("BYE ")) {
        talk(&mic, relay6, seq, 10);
        seq += 10;
    }
    let bye = received(&phone).into_iter().find(|m| m.starts_with("BYE ")).unwrap_or_else(|| panic!("no BYE reached the phone\n{}", sg.log()));
    assert!(bye.contains("Reason: Q.850;cause=102;text=\"media timeout\""), "{bye}");
    phone.expect_success(Duration::from_secs(20));
    carrier.expect_success(Duration::from_secs(20));
    assert!(!silent.received().is_empty(), "the phone's audio reached the carrier while the call lasted");
    assert!(sg.log().contains("media timeout"), "{}", sg.log());
    // Before the timeout, one-way audio was found (2 s) and recorded with the call.
    let log = sg.log();
    assert!(log.contains("one-way audio: nothing heard from the callee") && log.contains("no packet ever arrived from the callee"), "{log}");
    let records = sg.call_records(1);
    let r = records.iter().find(|r| r["disposition"] == "answered").unwrap_or_else(|| panic!("{records:?}"));
    assert_eq!((r["end_reason"].as_str(), r["one_way_audio"]["silent"].as_str()), (Some("media timeout"), Some("callee")), "{r}");
    assert_eq!(r["media"][0]["from_callee"]["packets"], 0, "{r}");
}

/// A phone behind a home NAT (IPv4, private LAN, masquerade), the IPv6 phone bob, and a
/// stranger on another IPv4 network, all around one edge.
///
/// ```text
///  phone4 192.168.77.10 ─ home (masquerade) 198.51.100.20 ═ 198.51.100.1 ┐ edge  ┌ 2001:db8:6::1 ═ 2001:db8:6::10 phone6 (bob)
///                                           stranger 203.0.113.66 ═ 203.0.113.1 ┘
/// ```
struct NatNet {
    phone4: Namespace,
    home: Namespace,
    edge: Namespace,
    phone6: Namespace,
    stranger: Namespace,
}

const EDGE4_NAT: &str = "198.51.100.1";
const HOME_WAN: &str = "198.51.100.20";
const LAN_PHONE: &str = "192.168.77.10";
const STRANGER: &str = "203.0.113.66";

fn nat_net() -> NatNet {
    let pid = std::process::id();
    let ns = |n: &str| Namespace::new(&format!("sg-{n}-nat-{pid}"));
    let n = NatNet { phone4: ns("ph4"), home: ns("home"), edge: ns("edge"), phone6: ns("ph6"), stranger: ns("str") };
    veth(&n.phone4, "eth0", &n.home, "lan");
    veth(&n.home, "wan", &n.edge, "h4");
    veth(&n.phone6, "p6", &n.edge, "e6");
    veth(&n.stranger, "s", &n.edge, "s4");
    n.phone4.ip(&["addr", "add", &format!("{LAN_PHONE}/24"), "dev", "eth0"]);
    n.phone4.ip(&["route", "add", "default", "via", "192.168.77.1"]);
    n.home.ip(&["addr", "add", "192.168.77.1/24", "dev", "lan"]);
    n.home.ip(&["addr", "add", &format!("{HOME_WAN}/24"), "dev", "wan"]);
    n.edge.ip(&["addr", "add", &format!("{EDGE4_NAT}/24"), "dev", "h4"]);
    n.edge.ip(&["addr", "add", "203.0.113.1/24", "dev", "s4"]);
    n.edge.ip(&["-6", "addr", "add", &format!("{EDGE6}/64"), "dev", "e6", "nodad"]);
    n.phone6.ip(&["-6", "addr", "add", &format!("{PHONE}/64"), "dev", "p6", "nodad"]);
    n.stranger.ip(&["addr", "add", &format!("{STRANGER}/24"), "dev", "s"]);
    n.stranger.ip(&["route", "add", "default", "via", "203.0.113.1"]);
    n.home.nft("table ip home_nat {\n chain postrouting {\n  type nat hook postrouting priority srcnat; policy accept;\n  oifname \"wan\" masquerade\n }\n}\n");
    n.home.sysctl(&["net.ipv4.ip_forward=1"]);
    n.edge.sysctl(&["net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0"]);
    n
}

#[test]
fn a_phone_behind_nat_calls_an_ipv6_phone_through_latching_and_a_stranger_gets_nothing() {
    let n = nat_net();
    let cfg = config(60).replace(&format!("address = \"{EDGE4}\""), &format!("address = \"{EDGE4_NAT}\"")).replace(&format!("ipv4 = \"{EDGE4}\""), &format!("ipv4 = \"{EDGE4_NAT}\""));
    let sg = NetnsSixgate::start(&n.edge, format!("[{EDGE6}]:5060").parse().unwrap(), &cfg);
    let bob_echo = Echo::start(n.phone6.udp_socket(format!("[{PHONE}]:40000").parse().unwrap()), true);
    let mic = n.phone4.udp_socket(format!("{LAN_PHONE}:40000").parse().unwrap());
    let stranger = n.stranger.udp_socket(format!("{STRANGER}:40000").parse().unwrap());
    let bob = sipp(Some(&n.phone6.0), "media_phone_answers.xml", PHONE, 5070, &[], None);
    std::thread::sleep(Duration::from_millis(300));
    let alice = alice_calls(&n.phone4, "media_phone_call.xml", LAN_PHONE, EDGE4_NAT.parse().unwrap(), "+15550200");
    let ok = await_received(&alice, "SIP/2.0 200", 1);
    let relay4 = media_target(&ok);
    assert_eq!(relay4.ip(), EDGE4_NAT.parse::<IpAddr>().unwrap(), "{ok}");
    // The stranger guesses the port and sends first: nothing may reach bob, nothing come back.
    let stolen = talk(&stranger, relay4, 1000, 20);
    assert!(stolen.is_empty(), "the stranger got media: {stolen:?}");
    assert!(bob_echo.received().is_empty(), "the stranger's packets reached bob: {:?}", bob_echo.received());
    // Alice, from behind the NAT (her SDP names 192.168.77.10): the relay latches onto her
    // public mapping and audio flows both ways.
    let back = talk(&mic, relay4, 1, 30);
    assert!(back.len() >= 20 && back.iter().all(|s| *s == relay4), "audio back through the NAT: {back:?}\n{}", sg.log());
    let at_bob = bob_echo.received();
    assert!(at_bob.len() >= 20 && at_bob.len() <= 30, "bob heard alice (30 sent) and nobody else: {}", at_bob.len());
    assert!(at_bob.iter().all(|s| s.ip() == EDGE6.parse::<IpAddr>().unwrap()));
    // The stranger still hears nothing once the call flows.
    stranger.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut buf = [0u8; 2048];
    assert!(stranger.recv_from(&mut buf).is_err(), "the stranger received media");
    alice.expect_success(Duration::from_secs(30));
    bob.expect_success(Duration::from_secs(30));
}

#[test]
fn a_reliable_183_is_pracked_through_the_early_dialog_and_carries_early_media() {
    let n = net("prack");
    let sg = NetnsSixgate::start(&n.edge, format!("[{EDGE6}]:5060").parse().unwrap(), &config(60));
    let echo = Echo::start(n.carrier.udp_socket(format!("{CARRIER}:20000").parse().unwrap()), true);
    let mic = n.phone.udp_socket(format!("[{PHONE}]:40000").parse().unwrap());
    let carrier = sipp(Some(&n.carrier.0), "media_carrier_prack.xml", CARRIER, 5060, &[], None);
    let phone = alice_calls(&n.phone, "media_phone_prack.xml", PHONE, EDGE6.parse().unwrap(), "+442071234567");
    let early = await_received(&phone, "SIP/2.0 183", 1);
    assert!(early.contains("RSeq: 1"), "{early}");
    let relay6 = media_target(&early);
    assert_eq!(relay6.ip(), EDGE6.parse::<IpAddr>().unwrap(), "{early}");
    // The PRACK's 200 came back through sixgate (before, a PRACK got 481).
    let prack_ok = await_received(&phone, "SIP/2.0 200", 1);
    assert!(prack_ok.contains("PRACK"), "the first 200 answers the PRACK: {prack_ok}\n{}", sg.log());
    let back = talk(&mic, relay6, 1, 20);
    assert!(back.len() >= 15, "early media both ways in the early dialog: {} of 20", back.len());
    phone.expect_success(Duration::from_secs(30));
    carrier.expect_success(Duration::from_secs(30));
    assert!(echo.received().iter().all(|s| s.ip() == EDGE4.parse::<IpAddr>().unwrap()));
}
