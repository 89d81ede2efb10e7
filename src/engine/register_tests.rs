//! The registrar in the engine, simulated: every REGISTER rule, digest with replay and bans,
//! NAT flows and keepalives, Outbound and Path, durability before the 200.

use super::tests::{header, msg_of, status, text, Sim, CFG, PHONE};
use super::*;
use crate::auth::{answer_challenge, Algorithm, Challenge};

/// A phone behind a home NAT: public source, private Via and Contact.
const NATTED: &str = "198.51.100.77:40001";
const CARRIER: &str = "198.51.100.1:5060";

fn cfg(extra: &str) -> String {
    let with_bans = CFG.replace("algorithms = [\"SHA-256\", \"MD5\"]\n", "algorithms = [\"SHA-256\", \"MD5\"]\nban_failures = 3\n");
    format!("{with_bans}\n[registrar]\nmin_expires = 60\nmax_expires = 3600\nkeepalive_interval_secs = 20\nkeepalive_failures = 2\n{extra}")
}

struct Reg<'a> {
    transport: TransportKind,
    remote: &'a str,
    via: String,
    contacts: Vec<String>,
    extra: String,
    call_id: &'a str,
    user: &'a str,
    password: &'a str,
    to_user: &'a str,
}

impl<'a> Reg<'a> {
    fn new(remote: &'a str, contact: &str) -> Reg<'a> {
        let sock: SocketAddr = remote.parse().unwrap();
        let host = match sock {
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
            SocketAddr::V4(a) => a.to_string(),
        };
        Reg {
            transport: TransportKind::Udp,
            remote,
            via: format!("SIP/2.0/UDP {host};rport"),
            contacts: vec![contact.to_string()],
            extra: String::new(),
            call_id: "reg-call-1",
            user: "alice",
            password: "secret",
            to_user: "alice",
        }
    }

    fn text(&self, cseq: u32, auth: Option<&str>) -> String {
        let proto = if self.transport == TransportKind::Tcp { "TCP" } else { "UDP" };
        let mut s = format!(
            "REGISTER sip:sixgate.test SIP/2.0\r\nVia: {};branch=z9hG4bK-r{cseq}-{}\r\nMax-Forwards: 70\r\n\
             From: <sip:{}@sixgate.test>;tag=f1\r\nTo: <sip:{}@sixgate.test>\r\nCall-ID: {}\r\nCSeq: {cseq} REGISTER\r\n",
            self.via.replace("UDP", proto),
            self.call_id,
            self.to_user,
            self.to_user,
            self.call_id
        );
        for c in &self.contacts {
            s.push_str(&format!("Contact: {c}\r\n"));
        }
        s.push_str(&self.extra);
        if let Some(a) = auth {
            s.push_str(&format!("Authorization: {a}\r\n"));
        }
        s.push_str("Content-Length: 0\r\n\r\n");
        s
    }

    /// The 401 round, then the authenticated REGISTER (CSeq `cseq` and `cseq + 1`); returns what
    /// the authenticated one got, and the credentials used.
    fn run(&self, sim: &mut Sim, cseq: u32) -> (Vec<Transmit>, String) {
        let out = sim.send_over(self.transport, self.remote, &self.text(cseq, None));
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(status(&out[0]), 401, "{}", text(&out[0]));
        let ch = header(&out[0], "WWW-Authenticate").iter().find_map(|v| Challenge::parse(v.as_bytes()).filter(|c| c.algorithm == Algorithm::Md5)).unwrap();
        let cred = answer_challenge(&ch, self.user, self.password, b"REGISTER", "sip:sixgate.test", "cn");
        (sim.send_over(self.transport, self.remote, &self.text(cseq + 1, Some(&cred))), cred)
    }
}

fn only(out: &[Transmit]) -> &Transmit {
    assert_eq!(out.len(), 1, "{out:?}");
    &out[0]
}

/// An INVITE from the carrier to alice's number; returns what sixgate sent.
fn call_alice(sim: &mut Sim, call: &str) -> Vec<Transmit> {
    sim.send(
        CARRIER,
        &format!(
            "INVITE sip:+442071234567@sixgate.test SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bK{call}\r\nMax-Forwards: 70\r\n\
             From: <sip:+15550001@carrier.example>;tag=c1\r\nTo: <sip:+442071234567@sixgate.test>\r\nCall-ID: {call}\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:+15550001@198.51.100.1>\r\nContent-Length: 0\r\n\r\n"
        ),
    )
}

#[test]
fn register_with_digest_stores_before_200_and_inbound_calls_reach_the_flow() {
    let mut sim = Sim::with(&cfg(""));
    let reg = Reg::new(PHONE, "<sip:alice@[2001:db8::10]:5062>;expires=600");
    let out = sim.send(PHONE, &reg.text(1, None));
    let c401 = only(&out);
    assert_eq!(status(c401), 401);
    let algs: Vec<String> = header(c401, "WWW-Authenticate").iter().map(|v| v.split("algorithm=").nth(1).unwrap().split(',').next().unwrap().to_string()).collect();
    assert_eq!(algs, ["SHA-256", "MD5"], "RFC 8760: SHA-256 first, both in one 401");
    assert!(sim.stored.is_empty(), "a challenge changes nothing");

    // SHA-256 credentials are as good as MD5 ones.
    let ch = header(c401, "WWW-Authenticate").iter().find_map(|v| Challenge::parse(v.as_bytes()).filter(|c| c.algorithm == Algorithm::Sha256)).unwrap();
    let cred = answer_challenge(&ch, "alice", "secret", b"REGISTER", "sip:sixgate.test", "cn");
    let out = sim.send(PHONE, &reg.text(2, Some(&cred)));
    let ok = only(&out);
    assert_eq!(status(ok), 200, "{}", text(ok));
    assert_eq!(header(ok, "Contact"), ["<sip:alice@[2001:db8::10]:5062>;expires=600"]);
    assert!(header(ok, "Date")[0].ends_with(" GMT"));
    assert!(matches!(&sim.stored[..], [Change::Put(b)] if b.aor == "alice" && b.nat.is_none()), "{:?}", sim.stored);

    // The 200 waits for the store: with a failing store the phone gets 500 instead.
    let mut failing = Sim::with(&cfg(""));
    failing.store_fails = true;
    let (out, _) = reg.run(&mut failing, 1);
    assert_eq!(status(only(&out)), 500);

    // A retransmission of the REGISTER is absorbed (same answer, not judged out of order).
    let again = sim.send(PHONE, &reg.text(2, Some(&cred)));
    assert_eq!(status(only(&again)), 200);

    let out = call_alice(&mut sim, "in1");
    let inv = out.iter().find(|t| text(t).starts_with("INVITE ")).expect("forwarded");
    assert_eq!(inv.dest, PHONE.parse().unwrap(), "to the flow the REGISTER came from");
    assert!(text(inv).starts_with("INVITE sip:alice@[2001:db8::10]:5062 SIP/2.0"), "{}", text(inv));
}

#[test]
fn register_rules_each_refusal_changes_nothing() {
    let mut sim = Sim::with(&cfg(""));
    let mut reg = Reg::new(PHONE, "<sip:alice@[2001:db8::10]:5062>;expires=30");
    let (out, _) = reg.run(&mut sim, 1);
    let r = only(&out);
    assert_eq!((status(r), header(r, "Min-Expires")), (423, vec!["60".to_string()]));
    // Over max_expires: clamped.
    reg.contacts = vec!["<sip:alice@[2001:db8::10]:5062>".into()];
    reg.extra = "Expires: 99999\r\n".into();
    let (out, _) = reg.run(&mut sim, 3);
    assert_eq!(header(only(&out), "Contact"), ["<sip:alice@[2001:db8::10]:5062>;expires=3600"]);
    // Two contacts, one with q: both listed; the older CSeq of the same Call-ID is refused.
    reg.contacts = vec!["<sip:alice@[2001:db8::10]:5062>".into(), "<sip:alice@[2001:db8::11]:5060>;q=0.5".into()];
    reg.extra = "Expires: 600\r\n".into();
    let (out, _) = reg.run(&mut sim, 5);
    assert_eq!(header(only(&out), "Contact").len(), 2);
    let before = sim.stored.len();
    let (out, _) = reg.run(&mut sim, 2);
    assert_eq!(status(only(&out)), 500, "CSeq 3 after 6 in the same Call-ID");
    assert_eq!(sim.stored.len(), before);
    // A bad Contact expires, * with a non-zero Expires: 400.
    reg.contacts = vec!["<sip:alice@[2001:db8::10]:5062>;expires=soon".into()];
    let (out, _) = reg.run(&mut sim, 7);
    assert_eq!(status(only(&out)), 400);
    reg.contacts = vec!["*".into()];
    let (out, _) = reg.run(&mut sim, 9);
    assert_eq!(status(only(&out)), 400);
    // Another user's AOR: 403 after authenticating as alice.
    let mut other = Reg::new(PHONE, "<sip:bob@[2001:db8::10]:5062>");
    other.to_user = "pbx";
    other.call_id = "other";
    let (out, _) = other.run(&mut sim, 1);
    assert_eq!(status(only(&out)), 403);
    assert_eq!(sim.stored.len(), before, "no refusal touched the store");
    // * with Expires: 0 removes every binding; the 200 lists none.
    reg.extra = "Expires: 0\r\n".into();
    let (out, _) = reg.run(&mut sim, 11);
    assert_eq!((status(only(&out)), header(only(&out), "Contact").len()), (200, 0));
    assert_eq!(sim.stored[before..].iter().filter(|c| matches!(c, Change::Delete { .. })).count(), 2);
    assert_eq!(status(only(&call_alice(&mut sim, "gone"))), 480, "no binding left");
}

#[test]
fn digest_refusals_replays_and_bans() {
    let mut sim = Sim::with(&cfg(""));
    let mut reg = Reg::new(PHONE, "<sip:alice@[2001:db8::10]:5062>");
    let (out, cred) = reg.run(&mut sim, 1);
    assert_eq!(status(only(&out)), 200);
    // The same credentials again (nc 1 reused): a fresh challenge, stale=true.
    let out = sim.send(PHONE, &reg.text(3, Some(&cred)));
    let r = only(&out);
    assert_eq!(status(r), 401);
    assert!(header(r, "WWW-Authenticate")[0].contains("stale=true"), "{}", text(r));
    // Another realm's credentials are ignored: challenged.
    let foreign = cred.replace("realm=\"sixgate.test\"", "realm=\"elsewhere\"");
    assert_eq!(status(only(&sim.send(PHONE, &reg.text(4, Some(&foreign))))), 401);
    // A missing field: 400.
    let cut = cred.replace("response=", "x-response=");
    assert_eq!(status(only(&sim.send(PHONE, &reg.text(5, Some(&cut))))), 400);
    // Wrong password: 403; the third failure from the /64 bans it: 403 without a challenge,
    // even for a request without credentials and from another address of the /64.
    reg.password = "guess";
    let (out, _) = reg.run(&mut sim, 6);
    assert_eq!(status(only(&out)), 403);
    let (out, _) = reg.run(&mut sim, 8);
    assert_eq!(status(only(&out)), 403, "third failure (the 400 counted)");
    let out = sim.send("[2001:db8::99]:5062", &reg.text(10, None));
    let r = only(&out);
    assert_eq!(status(r), 403, "banned: no challenge");
    assert!(header(r, "WWW-Authenticate").is_empty());
    assert_eq!(sim.eng.stats.bans, 1);
    // Another network is not affected; the ban ends after ban_secs (900 by default).
    assert_eq!(status(only(&sim.send("[2001:db8:1::10]:5062", &reg.text(10, None)))), 401);
    sim.now += Duration::from_secs(901);
    assert_eq!(status(only(&sim.send(PHONE, &reg.text(12, None)))), 401);
}

#[test]
fn a_natted_phone_is_reached_through_its_mapping_kept_open_and_dropped_when_silent() {
    let mut sim = Sim::with(&cfg(""));
    let mut reg = Reg::new(NATTED, "<sip:alice@192.168.1.10:5060>");
    reg.via = "SIP/2.0/UDP 192.168.1.10:5060;rport".into();
    let (out, _) = reg.run(&mut sim, 1);
    assert_eq!(status(only(&out)), 200);
    assert!(matches!(&sim.stored[..], [Change::Put(b)] if b.nat.as_deref() == Some("Via names a private address")));
    // Inbound calls go to the public mapping, never to the private Contact.
    let out = call_alice(&mut sim, "nat1");
    let inv = out.iter().find(|t| text(t).starts_with("INVITE ")).unwrap();
    assert_eq!(inv.dest, NATTED.parse().unwrap());
    assert_eq!(inv.local, "192.0.2.5:5060".parse().unwrap(), "from the socket the REGISTER reached");
    // Keepalives: OPTIONS to the mapping at most every 20 s; answered ones keep the binding.
    let t_reg = sim.elapsed();
    let sent = sim.run_until(t_reg + Duration::from_secs(25));
    let ping = sent.iter().find(|(_, t)| text(t).starts_with("OPTIONS sip:alice@192.168.1.10:5060 ")).expect("a keepalive").1.clone();
    assert_eq!(ping.dest, NATTED.parse().unwrap());
    sim.send(NATTED, &super::tests::respond(&ping, 200, "OK", Some("p1"), ""));
    assert_eq!(sim.eng.registrar().sizes().0, 1);
    // Then the phone goes silent: two unanswered keepalives end the flow and its binding.
    let sent = sim.run_until(t_reg + Duration::from_secs(200));
    assert!(sent.iter().filter(|(_, t)| text(t).starts_with("OPTIONS ")).count() >= 2);
    assert_eq!(sim.eng.registrar().sizes(), (0, 0));
    assert_eq!(sim.eng.stats.flows_dead, 1);
    assert!(matches!(sim.stored.last(), Some(Change::Delete { .. })));
    // The INVITE from before gets its answer later; a new call finds nobody.
    assert_eq!(status(only(&call_alice(&mut sim, "nat2"))), 480);
}

#[test]
fn outbound_flows_path_and_a_closed_tcp_connection() {
    let mut sim = Sim::with(&cfg(""));
    let mut reg = Reg::new("[2001:db8::10]:49152", "<sip:alice@[2001:db8::10]:49152;transport=tcp;ob>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\";reg-id=1");
    reg.transport = TransportKind::Tcp;
    reg.extra = "Supported: outbound, path\r\nPath: <sip:edge1.example;lr>\r\n".into();
    let (out, _) = reg.run(&mut sim, 1);
    let ok = only(&out);
    assert_eq!(status(ok), 200, "{}", text(ok));
    assert_eq!(header(ok, "Require"), ["outbound"]);
    assert_eq!(header(ok, "Flow-Timer"), ["120"]);
    assert_eq!(header(ok, "Path"), ["<sip:edge1.example;lr>"]);
    assert!(header(ok, "Contact")[0].contains("reg-id=1"));
    // A second registration of the same instance and reg-id from a new connection replaces
    // the first (one binding per flow, RFC 5626 §6).
    reg.remote = "[2001:db8::10]:49153";
    reg.call_id = "reg-call-2";
    let (out, _) = reg.run(&mut sim, 1);
    assert_eq!(header(only(&out), "Contact").len(), 1);
    let out = call_alice(&mut sim, "ob1");
    let inv = out.iter().find(|t| text(t).starts_with("INVITE ")).unwrap();
    assert_eq!((inv.transport, inv.dest), (TransportKind::Tcp, "[2001:db8::10]:49153".parse().unwrap()));
    assert!(text(inv).contains("Route: <sip:edge1.example;lr>\r\n"), "the Path becomes the Route");
    // The connection closes: the binding goes, and a call gets 430 Flow Failed.
    sim.eng.handle(sim.now, Input::FlowClosed { transport: TransportKind::Tcp, local: "[2001:db8::5]:5060".parse().unwrap(), remote: "[2001:db8::10]:49153".parse().unwrap() });
    sim.drain();
    assert_eq!(sim.eng.registrar().sizes(), (0, 0));
    assert_eq!(status(only(&call_alice(&mut sim, "ob2"))), 430);
    // A Require we do not know: 420.
    reg.extra = "Require: gruu\r\n".into();
    let out = sim.send_over(TransportKind::Tcp, reg.remote, &reg.text(9, None));
    assert_eq!(status(only(&out)), 420);
}

#[test]
fn bindings_expire_and_load_from_the_store_after_a_restart() {
    let mut sim = Sim::with(&cfg(""));
    let mut reg = Reg::new(PHONE, "<sip:alice@[2001:db8::10]:5062>");
    reg.extra = "Expires: 60\r\n".into();
    reg.run(&mut sim, 1);
    let stored: Vec<crate::registrar::Binding> = sim.stored.iter().filter_map(|c| if let Change::Put(b) = c { Some(b.clone()) } else { None }).collect();
    assert_eq!(stored.len(), 1);
    // A "restart": a new engine loads what was stored and reaches the phone.
    let mut fresh = Sim::with(&cfg(""));
    let t = fresh.now;
    fresh.eng.load_bindings(t, stored.clone());
    let out = call_alice(&mut fresh, "after");
    assert!(out.iter().any(|t| t.dest == PHONE.parse().unwrap()));
    // Loaded past their expiry, they are deleted, not used.
    let mut late = Sim::with(&cfg(""));
    let later = late.now + Duration::from_secs(61);
    late.now = later;
    late.eng.load_bindings(later, stored);
    late.drain();
    assert!(matches!(&late.stored[..], [Change::Delete { .. }]));
    // And in the running engine, housekeeping purges it after 60 s.
    let t_reg = sim.elapsed();
    sim.run_until(t_reg + Duration::from_secs(75));
    assert_eq!(sim.eng.registrar().sizes().0, 0);
    assert_eq!(sim.eng.stats.bindings_expired, 1);
    let _ = msg_of;
}
