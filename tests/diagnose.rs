//! `sixgate ctl diagnose` against real NAT and a fake SIP ALG, in network namespaces: three
//! phones register with digest through one home router to sixgate.
//!
//! ```text
//!  lan 192.168.50.10 ── l0 ═ r0 ── 192.168.50.1 ┐ router                  ┌ 198.51.100.1:5060 edge (sixgate)
//!   alice :5060 → router :5060   (ALG: rewrites Contact, sends from WAN :40000) ═ r1 198.51.100.20 ═ e0 ┘
//!   bob   :5062 → router :5061   (plain NAT, sends from WAN :40001)
//!  carol on the router's WAN address itself, :5070 (no NAT)
//! ```
//!
//! The router forwards nothing in the kernel; a small userspace translator per port does, in
//! the test process (sockets bound inside the namespaces). The ALG one rewrites the Contact to
//! the public address and port as consumer routers' "SIP ALG" does, and leaves the Via alone.
//! Diagnose must report the ALG for alice, NAT without ALG for bob, and no NAT for carol.
//! Needs root (network namespaces).

mod common;
use common::{register_digest, veth, Namespace, NetnsSixgate};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const LAN_PHONE: &str = "192.168.50.10";
const ROUTER_LAN: &str = "192.168.50.1";
const ROUTER_WAN: &str = "198.51.100.20";
const EDGE: &str = "198.51.100.1";

/// A userspace NAT for one phone: what the phone sends to `lan` leaves from `wan` to sixgate,
/// answers go back to the phone. With `alg`, the Contact's address is rewritten to `wan` on
/// the way out (and Content-Length is left alone, as a REGISTER has no body).
struct Translator {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Translator {
    fn start(lan: UdpSocket, wan: UdpSocket, server: SocketAddr, alg: bool) -> Translator {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        lan.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        wan.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let thread = std::thread::spawn(move || {
            let public = wan.local_addr().unwrap().to_string();
            let mut phone: Option<SocketAddr> = None;
            let mut buf = [0u8; 8192];
            // Bounded: stopped by the test, which ends within a minute.
            for _ in 0..3000 {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok((n, from)) = lan.recv_from(&mut buf) {
                    phone = Some(from);
                    let mut text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if alg {
                        text = text.replace(&format!("@{from}>"), &format!("@{public}>"));
                    }
                    let _ = wan.send_to(text.as_bytes(), server);
                }
                if let (Ok((n, _)), Some(p)) = (wan.recv_from(&mut buf), phone) {
                    let _ = lan.send_to(&buf[..n], p);
                }
            }
        });
        Translator { stop, thread: Some(thread) }
    }
}

impl Drop for Translator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn diagnose(sg: &NetnsSixgate, user: &str) -> (Vec<String>, String) {
    let socket = sg.state().join("ctl.sock");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sixgate")).args(["ctl", "--json", "--socket"]).arg(&socket).args(["diagnose", user]).output().unwrap();
    assert!(out.status.success(), "ctl diagnose {user}: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let topics = v["findings"].as_array().unwrap().iter().map(|f| f["topic"].as_str().unwrap().to_string()).collect();
    let text = std::process::Command::new(env!("CARGO_BIN_EXE_sixgate")).args(["ctl", "--socket"]).arg(&socket).args(["diagnose", user]).output().unwrap();
    (topics, String::from_utf8_lossy(&text.stdout).into_owned())
}

#[test]
fn diagnose_tells_a_sip_alg_from_plain_nat_and_from_no_nat() {
    let pid = std::process::id();
    let lan = Namespace::new(&format!("sg-dlan-{pid}"));
    let router = Namespace::new(&format!("sg-drtr-{pid}"));
    let edge = Namespace::new(&format!("sg-dedge-{pid}"));
    veth(&lan, "l0", &router, "r0");
    veth(&router, "r1", &edge, "e0");
    lan.ip(&["addr", "add", &format!("{LAN_PHONE}/24"), "dev", "l0"]);
    router.ip(&["addr", "add", &format!("{ROUTER_LAN}/24"), "dev", "r0"]);
    router.ip(&["addr", "add", &format!("{ROUTER_WAN}/24"), "dev", "r1"]);
    edge.ip(&["addr", "add", &format!("{EDGE}/24"), "dev", "e0"]);
    router.sysctl(&["net.ipv4.ip_forward=0"]);
    let config = format!(
        "[sip]\ndomains = [\"sixgate.test\"]\n[[listen]]\ntransport = \"udp\"\naddress = \"{EDGE}\"\nport = 5060\n\
         [auth]\nrealm = \"sixgate.test\"\nalgorithms = [\"MD5\"]\n[media]\nrelay = \"never\"\n\
         [[users]]\nusername = \"alice\"\npassword = \"a-secret\"\n[[users]]\nusername = \"bob\"\npassword = \"b-secret\"\n\
         [[users]]\nusername = \"carol\"\npassword = \"c-secret\"\n[[users]]\nusername = \"dan\"\npassword = \"d-secret\"\n"
    );
    let server: SocketAddr = format!("{EDGE}:5060").parse().unwrap();
    let sg = NetnsSixgate::start(&edge, server, &config);
    let at = |ns: &Namespace, a: String| ns.udp_socket(a.parse().unwrap());
    let _alg = Translator::start(at(&router, format!("{ROUTER_LAN}:5060")), at(&router, format!("{ROUTER_WAN}:40000")), server, true);
    let _nat = Translator::start(at(&router, format!("{ROUTER_LAN}:5061")), at(&router, format!("{ROUTER_WAN}:40001")), server, false);

    let alice = at(&lan, format!("{LAN_PHONE}:5060"));
    register_digest(&alice, format!("{ROUTER_LAN}:5060").parse().unwrap(), "sixgate.test", "alice", "a-secret").expect("alice registers through the ALG");
    let bob = at(&lan, format!("{LAN_PHONE}:5062"));
    register_digest(&bob, format!("{ROUTER_LAN}:5061").parse().unwrap(), "sixgate.test", "bob", "b-secret").expect("bob registers through the NAT");
    let carol = at(&router, format!("{ROUTER_WAN}:5070"));
    register_digest(&carol, server, "sixgate.test", "carol", "c-secret").expect("carol registers directly");

    let (topics, text) = diagnose(&sg, "alice");
    assert!(topics.contains(&"sip-alg".to_string()) && topics.contains(&"nat".to_string()), "{topics:?}\n{text}");
    assert!(text.contains(&format!("Contact names {ROUTER_WAN}:40000")) && text.contains(&format!("Via still names {LAN_PHONE}:5060")) && text.contains("turn off \"SIP ALG\""), "{text}");
    let (topics, text) = diagnose(&sg, "bob");
    // No keepalive has had time to go out: the mapping lifetime is not known yet.
    assert_eq!(topics, ["nat", "nat-lifetime"], "{text}");
    assert!(text.contains("not known yet"), "{text}");
    assert!(text.contains(&format!("packets come from {ROUTER_WAN}:40001")) && text.contains("(a private address): it is behind NAT"), "{text}");
    let (topics, text) = diagnose(&sg, "carol");
    assert_eq!(topics, ["no-nat"], "{text}");
    let (topics, _) = diagnose(&sg, "dan");
    assert_eq!(topics, ["no-registration"]);
}
