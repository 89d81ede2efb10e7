//! Two phones behind one home NAT register and then stay silent; a carrier calls each of them
//! after 75 s. The home router (a network namespace) masquerades its LAN onto its WAN address
//! with the UDP conntrack timeouts set to 30 s, so a mapping idle for 30 s is gone. Both phones
//! (baresip, Debian `baresip-core`, each in its own namespace) use local port 5060, so the NAT
//! gives the second one another public port, and they register for an hour: only sixgate's
//! keepalives can hold the mappings open.
//!
//! ```text
//!  p1 192.168.L.10:5060 ─┐                                  ┌ sixgate  EDGE:5060 (edge ns)
//!                        ├ br "lan" 192.168.L.1 │ home │ "wan" WAN ═══ "wan" EDGE
//!  p2 192.168.L.11:5060 ─┘        masquerade, udp conntrack 30 s      └ carrier CARRIER (sipp, lo)
//! ```
//!
//! With `keepalive_interval_secs = 20` both calls must be answered by the right phone (sipp
//! checks the 200's Contact names that phone's LAN address); with keepalives off the same calls
//! must fail and neither phone may see an INVITE, which shows the test can fail.
//!
//! Needs root (network namespaces). The two tests run in parallel: each has its own namespaces
//! (names carry the test's tag and the process id) and its own subnets.

mod common;
use common::{tool, veth, Namespace, NetnsSixgate, TempDir};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// How long the phones stay silent before the carrier calls: more than twice the 30 s
/// conntrack timeout, so a mapping nobody refreshes is surely gone.
const IDLE: Duration = Duration::from_secs(75);

/// The carrier's call (sipp UAC): INVITE to `[service]` (a user's number), 200 whose Contact
/// must match CONTACT_RE (the answering phone's LAN address), ACK and BYE along the recorded
/// route. Written per run with CONTACT_RE filled in (sipp does not expand variables in a regexp).
const CARRIER_CALL: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="carrier-calls-a-phone-behind-nat">
  <send retrans="500">
    <![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      Max-Forwards: 70
      From: <sip:+15550100200@[local_ip]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:+15550100200@[local_ip]:[local_port];transport=[transport]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=carrier 53655765 2353687637 IN IP[media_ip_type] [media_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000

    ]]>
  </send>
  <recv response="100" optional="true" />
  <recv response="180" optional="true" />
  <recv response="183" optional="true" />
  <recv response="200" rrs="true">
    <action>
      <ereg regexp="CONTACT_RE" search_in="hdr" header="Contact:" check_it="true" assign_to="contact_ok" />
    </action>
  </recv>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      [routes]
      Max-Forwards: 70
      From: <sip:+15550100200@[local_ip]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Content-Length: 0

    ]]>
  </send>
  <pause milliseconds="500" />
  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      [routes]
      Max-Forwards: 70
      From: <sip:+15550100200@[local_ip]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" />
  <Reference variables="contact_ok" />
</scenario>
"#;

/// The users: (username, password, number).
const USERS: [(&str, &str, &str); 2] = [("alice", "alicepw", "1001"), ("bob", "bobpw", "1002")];

/// The namespaces of one run. Field order is drop order: phones, then home, then edge.
struct Nat {
    phones: Vec<Namespace>,
    home: Namespace,
    edge: Namespace,
    /// First three octets of the LAN, e.g. "192.168.10".
    lan: String,
    edge_ip: String,
    wan_ip: String,
    carrier_ip: String,
}

impl Nat {
    /// Builds the topology for run `k` (0, 1, ...): LAN 192.168.(10+k).0/24, WAN
    /// 198.51.100.16k/28 (edge .16k+1, home router .16k+2, carrier .16k+9 on the edge's loopback).
    fn build(tag: &str, k: u8) -> Nat {
        let name = |role: &str| format!("sg-{tag}-{}-{role}", std::process::id());
        let base = 16 * k;
        let nat = Nat {
            phones: vec![Namespace::new(&name("p1")), Namespace::new(&name("p2"))],
            home: Namespace::new(&name("home")),
            edge: Namespace::new(&name("edge")),
            lan: format!("192.168.{}", 10 + k),
            edge_ip: format!("198.51.100.{}", base + 1),
            wan_ip: format!("198.51.100.{}", base + 2),
            carrier_ip: format!("198.51.100.{}", base + 9),
        };
        let (home, edge) = (&nat.home, &nat.edge);
        veth(home, "wan", edge, "wan");
        home.ip(&["addr", "add", &format!("{}/28", nat.wan_ip), "dev", "wan"]);
        edge.ip(&["addr", "add", &format!("{}/28", nat.edge_ip), "dev", "wan"]);
        edge.ip(&["addr", "add", &format!("{}/32", nat.carrier_ip), "dev", "lo"]);
        home.ip(&["link", "add", "lan", "type", "bridge"]);
        home.ip(&["addr", "add", &format!("{}.1/24", nat.lan), "dev", "lan"]);
        home.ip(&["link", "set", "lan", "up"]);
        for (i, phone) in nat.phones.iter().enumerate() {
            let port = format!("p{}", i + 1);
            veth(home, &port, phone, "eth0");
            home.ip(&["link", "set", &port, "master", "lan"]);
            phone.ip(&["addr", "add", &format!("{}/24", nat.phone_ip(i)), "dev", "eth0"]);
            phone.ip(&["route", "add", "default", "via", &format!("{}.1", nat.lan)]);
        }
        // The NAT table first: where conntrack is a module, loading it makes the sysctls exist.
        home.nft(
            "table ip home_nat {\n chain postrouting {\n  type nat hook postrouting priority srcnat; policy accept;\n  \
             oifname \"wan\" masquerade\n }\n}\n",
        );
        // Per-namespace sysctls: the host's conntrack timeouts are untouched. The unreplied and
        // the replied ("stream") timeouts both, as a flow that has seen replies uses the latter.
        home.sysctl(&[
            "net.ipv4.ip_forward=1",
            "net.netfilter.nf_conntrack_udp_timeout=30",
            "net.netfilter.nf_conntrack_udp_timeout_stream=30",
        ]);
        nat
    }

    fn phone_ip(&self, i: usize) -> String {
        format!("{}.{}", self.lan, 10 + i)
    }

    fn sixgate_config(&self, state: &std::path::Path, keepalive_secs: u32) -> String {
        let mut c = format!(
            "[sip]\ndomains = [\"sixgate.test\"]\n\
             [[listen]]\ntransport = \"udp\"\naddress = \"{edge}\"\nport = 5060\n\
             [state]\ndir = \"{state}\"\n\
             [registrar]\nkeepalive_interval_secs = {keepalive_secs}\nkeepalive = \"options\"\n\
             [auth]\nrealm = \"sixgate.test\"\n",
            edge = self.edge_ip,
            state = state.display(),
        );
        for (user, password, number) in USERS {
            c.push_str(&format!("[[users]]\nusername = \"{user}\"\npassword = \"{password}\"\nnumbers = [\"{number}\"]\n"));
        }
        c.push_str(&format!(
            "[[carriers]]\nname = \"carrier\"\nuri = \"sip:{ip}\"\nprefixes = [\"+\"]\nsource_cidrs = [\"{ip}/32\"]\nprobe_interval_secs = 0\n",
            ip = self.carrier_ip
        ));
        c
    }
}

/// A baresip phone in its own namespace, its output (with `-s`, every SIP message) in a file;
/// killed (SIGKILL: on SIGTERM baresip first unregisters and waits for the answer) on drop.
struct Phone {
    child: Child,
    dir: TempDir,
    user: &'static str,
}

impl Drop for Phone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Phone {
    /// Starts baresip listening on `ip:5060`, registering `user` for an hour through the
    /// outbound proxy `edge_ip:5060`, answering every call at once; headless
    /// ([`common::baresip_config`]).
    fn start(ns: &Namespace, user: &'static str, password: &str, ip: &str, edge_ip: &str) -> Phone {
        let dir = TempDir::new(&format!("baresip-{user}"));
        common::baresip_config(
            &dir.0,
            &format!("{ip}:5060"),
            &format!("<sip:{user}@sixgate.test;transport=udp>;auth_pass={password};outbound=\"sip:{edge_ip}:5060;transport=udp\";regint=3600;answermode=auto"),
        );
        let log = std::fs::File::create(dir.0.join("log")).unwrap();
        let child = ns
            .command(tool("baresip"))
            .arg("-s")
            .arg("-f")
            .arg(&dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn baresip");
        Phone { child, dir, user }
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.dir.0.join("log")).unwrap_or_default()).into_owned()
    }

    /// Waits (bounded) for baresip to report its registration answered with 200.
    fn wait_registered(&mut self, sg: &NetnsSixgate) {
        let done = format!("{}@sixgate.test: {{0/UDP/v4}} 200 ", self.user);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.log().contains(&done) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("baresip {} exited ({status}):\n{}", self.user, self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{} did not register within 20 s:\n{}\n--- sixgate log\n{}", self.user, self.log(), sg.log());
    }
}

/// One carrier call (sipp in the edge namespace, from the carrier's address); its logs and
/// output stay in `dir`.
struct CarrierCall {
    child: Option<Child>,
    dir: TempDir,
    number: &'static str,
}

impl Drop for CarrierCall {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl CarrierCall {
    /// Calls `number` through sixgate from `carrier_ip:port`, expecting the answer from the
    /// phone at `phone_ip`.
    fn start(nat: &Nat, sg: SocketAddr, port: u16, number: &'static str, phone_ip: &str) -> CarrierCall {
        let dir = TempDir::new("carrier");
        let scenario: PathBuf = dir.0.join("carrier_call.xml");
        // @LAN.ADDR followed by the end of the host: port, parameter or the closing bracket.
        let contact_re = format!("@{}[:;>]", phone_ip.replace('.', "\\."));
        std::fs::write(&scenario, CARRIER_CALL.replace("CONTACT_RE", &contact_re)).unwrap();
        let out = std::fs::File::create(dir.0.join("sipp.out")).unwrap();
        let child = nat
            .edge
            .command(tool("sipp"))
            .current_dir(&dir.0)
            .arg("-sf")
            .arg(&scenario)
            .args(["-i", &nat.carrier_ip, "-p", &port.to_string(), "-mp", &(port + 1000).to_string(), "-t", "u1"])
            .args(["-m", "1", "-nostdin", "-timeout", "60s", "-timeout_error", "-trace_err", "-trace_msg"])
            .args(["-s", number])
            .arg(sg.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("spawn sipp");
        CarrierCall { child: Some(child), dir, number }
    }

    /// Waits (bounded) for sipp to finish: whether the call succeeded, and sipp's logs.
    fn finish(&mut self) -> (bool, String) {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut status = None;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = child.try_wait() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if status.is_none() {
            let _ = child.kill();
        }
        // Reaped in every case (after try_wait this returns at once).
        let _ = child.wait();
        let mut logs = format!("sipp call to {}: {status:?}\n", self.number);
        for e in std::fs::read_dir(&self.dir.0).into_iter().flatten().flatten() {
            if e.path().extension().is_some_and(|x| x == "xml") {
                continue;
            }
            logs.push_str(&format!("--- {}\n{}\n", e.path().display(), std::fs::read_to_string(e.path()).unwrap_or_default()));
        }
        (status.is_some_and(|s| s.success()), logs)
    }
}

/// What one run saw, per phone: the carrier call's result and logs, and the phone's log.
struct Outcome {
    calls: Vec<(bool, String)>,
    phone_logs: Vec<String>,
    sixgate_log: String,
    conntrack_before_calls: String,
    /// `sixgate ctl diagnose` of the first phone, taken after the idle time.
    diagnosis: serde_json::Value,
}

impl Outcome {
    fn report(&self) -> String {
        let mut r = String::new();
        for (i, ((ok, sipp), phone)) in self.calls.iter().zip(&self.phone_logs).enumerate() {
            r.push_str(&format!("===== phone {} ({}): call ok = {ok}\n{sipp}\n--- baresip\n{phone}\n", i + 1, USERS[i].0));
        }
        r.push_str(&format!("===== home conntrack just before the calls\n{}\n", self.conntrack_before_calls));
        r.push_str(&format!("===== sixgate log\n{}\n", self.sixgate_log));
        r
    }
}

/// Builds the NAT, starts sixgate with the given keepalive interval, registers both phones,
/// waits IDLE, then the carrier calls both numbers at once.
fn run(tag: &str, k: u8, keepalive_secs: u32) -> Outcome {
    let nat = Nat::build(tag, k);
    let state = TempDir::new(&format!("{tag}-state"));
    let sg_addr: SocketAddr = format!("{}:5060", nat.edge_ip).parse().unwrap();
    let sg = NetnsSixgate::start(&nat.edge, sg_addr, &nat.sixgate_config(&state.0.join("state"), keepalive_secs));
    let mut phones: Vec<Phone> = USERS
        .into_iter()
        .enumerate()
        .map(|(i, (user, password, _))| Phone::start(&nat.phones[i], user, password, &nat.phone_ip(i), &nat.edge_ip))
        .collect();
    for p in &mut phones {
        p.wait_registered(&sg);
    }
    std::thread::sleep(IDLE);
    let conntrack_before_calls = nat.home.conntrack();
    // What `sixgate ctl diagnose` learned about the first phone's NAT while it idled.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sixgate"))
        .args(["ctl", "--json", "--socket"])
        .arg(state.0.join("state").join("ctl.sock"))
        .args(["diagnose", USERS[0].0])
        .output()
        .expect("sixgate ctl");
    let diagnosis: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("ctl diagnose: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    let mut sipps: Vec<CarrierCall> =
        USERS.into_iter().enumerate().map(|(i, (_, _, number))| CarrierCall::start(&nat, sg_addr, 5071 + i as u16, number, &nat.phone_ip(i))).collect();
    let calls = sipps.iter_mut().map(CarrierCall::finish).collect();
    Outcome { calls, phone_logs: phones.iter().map(Phone::log).collect(), sixgate_log: sg.log(), conntrack_before_calls, diagnosis }
}

#[test]
fn keepalives_hold_the_nat_open_and_a_carrier_reaches_both_phones_after_idling() {
    let o = run("nat-ka", 0, 20);
    for (i, (ok, _)) in o.calls.iter().enumerate() {
        let phone = &o.phone_logs[i];
        assert!(
            *ok && phone.contains("Call established"),
            "the carrier's call to {} ({}) was not answered by that phone:\n{}",
            USERS[i].2,
            USERS[i].0,
            o.report()
        );
        // The NAT stayed open because sixgate pinged the phone, not by chance.
        assert!(phone.contains("\nOPTIONS sip:"), "{} never received a keepalive OPTIONS:\n{}", USERS[i].0, o.report());
    }
    // Diagnosis: behind NAT, no ALG, and the mapping held through the keepalives' silences.
    let findings = o.diagnosis["findings"].as_array().cloned().unwrap_or_default();
    let topic = |t: &str| findings.iter().find(|f| f["topic"] == t).cloned();
    assert!(topic("nat").is_some() && topic("sip-alg").is_none(), "{}", o.diagnosis);
    let lifetime = topic("nat-lifetime").unwrap_or_else(|| panic!("{}", o.diagnosis));
    assert_eq!(lifetime["level"], "ok", "{}", o.diagnosis);
    assert!(lifetime["seen"].as_str().is_some_and(|s| s.contains("keepalives every 20 s were all answered")), "{}", o.diagnosis);
}

#[test]
fn without_keepalives_the_nat_forgets_the_phones_and_the_carrier_calls_fail() {
    let o = run("nat-noka", 1, 0);
    for (i, (ok, _)) in o.calls.iter().enumerate() {
        assert!(!*ok, "the call to {} succeeded with keepalives off: the NAT did not expire:\n{}", USERS[i].2, o.report());
        assert!(
            !o.phone_logs[i].contains("\nINVITE sip:"),
            "{} received an INVITE through an expired NAT mapping:\n{}",
            USERS[i].0,
            o.report()
        );
    }
    // Without keepalives nothing was learned about the mapping.
    let findings = o.diagnosis["findings"].as_array().cloned().unwrap_or_default();
    assert!(findings.iter().any(|f| f["topic"] == "nat-lifetime" && f["seen"].as_str().is_some_and(|s| s.contains("not known yet"))), "{}", o.diagnosis);
}
