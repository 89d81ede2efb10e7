//! The call path with real third-party peers: sipp (Debian `sip-tester`) as an IPv6 phone and as
//! IPv4 carriers, through a running sixgate. Full call with the 407 digest round and the double
//! Record-Route, CANCEL, busy, failover from a silent carrier, a carrier's call to a static
//! contact, toll-fraud refusals (407 / 403 and the carrier sees nothing), a carrier that
//! challenges us, and the same call with 10 % of packets dropped both ways inside a network
//! namespace the test builds.
//!
//! sipp 3.6 builds its digest `uri=` from the remote address and drops IPv6 brackets
//! (`uri="sip:::1:5060"`); its `-auth_uri` option makes it send the Request-URI instead, so these
//! runs keep sixgate's strict uri check. sipp reads only the first Proxy-Authenticate, so MD5 is
//! offered first here.

mod common;
use common::{free_port, sipp, sipp_over, tool, Dnsmasq, Namespace, NetnsSixgate, Sixgate, TempDir};
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A UDP port free on both loopback families.
fn port() -> u16 {
    free_port()
}

fn config(sg: u16, carriers: &str, extra: &str) -> String {
    let mut c = String::from("[sip]\ndomains = [\"localhost\"]\n");
    for (t, a) in [("udp", "::1"), ("tcp", "::1"), ("udp", "127.0.0.1"), ("tcp", "127.0.0.1")] {
        c.push_str(&format!("[[listen]]\ntransport = \"{t}\"\naddress = \"{a}\"\nport = {sg}\n"));
    }
    c.push_str(
        "[auth]\nrealm = \"localhost\"\ndigest_uri = \"strict\"\nalgorithms = [\"MD5\", \"SHA-256\"]\n\
         [[users]]\nusername = \"alice\"\npassword = \"secret\"\nnumbers = [\"+442071110000\"]\n",
    );
    c.push_str(carriers);
    c.push_str(extra);
    c
}

fn carrier(name: &str, port: u16, prefix: &str, priority: u32, extra: &str) -> String {
    format!(
        "[[carriers]]\nname = \"{name}\"\nuri = \"sip:127.0.0.1:{port}\"\nprefixes = [\"{prefix}\"]\npriority = {priority}\n\
         source_cidrs = [\"127.0.0.2/32\"]\nprobe_interval_secs = 0\n{extra}"
    )
}

/// What sipp must put in its digest `uri`: the Request-URI it sends (without the scheme).
fn auth_uri(service: &str, sg_port: u16) -> String {
    format!("{service}@[::1]:{sg_port}")
}

/// Phone alice (sipp on ::1) runs `scenario` calling `number` through sixgate on `[::1]:sg_port`
/// with digest (strict uri), optionally checking the double Record-Route; waits for success.
fn phone_calls(scenario: &str, number: &str, sg_port: u16, rr_check: bool) {
    let uri = auth_uri(number, sg_port);
    let mut args = vec!["-s", number, "-auth_uri", &uri];
    if rr_check {
        args.extend(["-set", "rr_check", "1"]);
    }
    let target = format!("[::1]:{sg_port}");
    sipp(None, scenario, "::1", port(), &args, Some(&target)).expect_success(CALL);
}

const CALL: Duration = Duration::from_secs(40);

/// Lets a UAS sipp bind before the UAC starts.
fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn ipv6_phone_calls_ipv4_carrier_with_digest_and_double_record_route() {
    let (sgp, c1) = (port(), port());
    let sg = Sixgate::start(sgp, &config(sgp, &carrier("c1", c1, "+44", 1, ""), ""));
    let uas = sipp(None, "uas_call.xml", "127.0.0.1", c1, &["-set", "rr_check", "1"], None);
    settle();
    phone_calls("uac_call_auth.xml", "+442079460000", sg.port, true);
    uas.expect_success(CALL);
}

#[test]
fn cancel_before_answer_and_busy() {
    let (sgp, c1) = (port(), port());
    let sg = Sixgate::start(sgp, &config(sgp, &carrier("c1", c1, "+44", 1, ""), ""));
    let uas = sipp(None, "uas_ring_forever.xml", "127.0.0.1", c1, &[], None);
    settle();
    phone_calls("uac_cancel.xml", "+442079460001", sg.port, false);
    uas.expect_success(CALL);
    let uas = sipp(None, "uas_busy.xml", "127.0.0.1", c1, &[], None);
    settle();
    phone_calls("uac_call_busy.xml", "+442079460002", sg.port, false);
    uas.expect_success(CALL);
}

#[test]
fn a_silent_first_carrier_fails_over_to_the_second() {
    let (sgp, silent, c2) = (port(), port(), port());
    // A socket that swallows everything: the first carrier never answers.
    let _black_hole = UdpSocket::bind(("127.0.0.1", silent)).unwrap();
    let carriers = carrier("silent", silent, "+44", 1, "") + &carrier("second", c2, "+44", 2, "");
    // T1 = 100 ms: Timer B fires after 6.4 s instead of 32 s.
    let sg = Sixgate::start(sgp, &config(sgp, &carriers, "[timers]\nt1_ms = 100\nt2_ms = 4000\n"));
    let uas = sipp(None, "uas_call.xml", "127.0.0.1", c2, &["-set", "rr_check", "1"], None);
    settle();
    phone_calls("uac_call_auth.xml", "+442079460003", sg.port, false);
    uas.expect_success(CALL);
}

#[test]
fn a_carrier_calls_a_static_contact_user() {
    let (sgp, phone) = (port(), port());
    let extra = format!("[[users]]\nusername = \"pbx\"\npassword = \"x\"\nnumbers = [\"+442079000000\"]\ncontacts = [\"sip:pbx@[::1]:{phone}\"]\n");
    let sg = Sixgate::start(sgp, &config(sgp, &carrier("c1", port(), "+44", 1, ""), &extra));
    let uas = sipp(None, "uas_phone.xml", "::1", phone, &["-set", "rr_check", "1"], None);
    settle();
    // From the carrier's source address (127.0.0.2 is in its CIDR): trusted, no digest.
    let target = format!("127.0.0.1:{}", sg.port);
    sipp(None, "uac_call_from_carrier.xml", "127.0.0.2", port(), &["-s", "+442079000000", "-set", "rr_check", "1"], Some(&target)).expect_success(CALL);
    uas.expect_success(CALL);
}

#[test]
fn no_unauthenticated_call_reaches_a_carrier() {
    let (sgp, c1) = (port(), port());
    let watch = UdpSocket::bind(("127.0.0.1", c1)).unwrap();
    watch.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    let sg = Sixgate::start(sgp, &config(sgp, &carrier("c1", c1, "+44", 1, ""), ""));
    let target = format!("[::1]:{}", sg.port);
    sipp(None, "uac_unauth_expect_407.xml", "::1", port(), &["-s", "+442079460004"], Some(&target)).expect_success(CALL);
    sipp(None, "uac_spoof_expect_403.xml", "::1", port(), &["-s", "+442079460005"], Some(&target)).expect_success(CALL);
    let mut buf = [0u8; 2048];
    match watch.recv_from(&mut buf) {
        Ok((n, from)) => panic!("the carrier received {n} bytes from {from}: {}", String::from_utf8_lossy(&buf[..n])),
        Err(e) => assert!(matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{e}"),
    }
}

#[test]
fn a_carrier_challenge_is_answered_with_its_credentials() {
    let (sgp, c1) = (port(), port());
    let sg = Sixgate::start(sgp, &config(sgp, &carrier("c1", c1, "+33", 1, "username = \"trunk1\"\npassword = \"trunksecret\"\n"), ""));
    let uas = sipp(None, "uas_carrier_challenge.xml", "127.0.0.1", c1, &["-set", "rr_check", "1"], None);
    settle();
    phone_calls("uac_call_auth.xml", "+33144556677", sg.port, false);
    uas.expect_success(CALL);
}

#[test]
fn a_carrier_over_tcp_gets_a_connection_opened_and_reused_in_dialog() {
    let (sgp, c1) = (port(), port());
    let sg = Sixgate::start(sgp, &config(sgp, &carrier("c1", c1, "+44", 1, "").replace(&format!("127.0.0.1:{c1}\""), &format!("127.0.0.1:{c1};transport=tcp\"")), ""));
    // rr_check: two Record-Route entries, UDP/IPv6 side and TCP/IPv4 side.
    let uas = sipp_over("t1", None, "uas_call.xml", "127.0.0.1", c1, &["-set", "rr_check", "1"], None);
    settle();
    phone_calls("uac_call_auth.xml", "+442079460007", sg.port, true);
    uas.expect_success(CALL);
}

#[test]
fn a_carrier_by_name_is_found_by_rfc_3263_and_fails_over_across_srv_targets() {
    let (sgp, silent, live) = (port(), port(), port());
    let _black_hole = UdpSocket::bind(("127.0.0.1", silent)).unwrap();
    // NAPTR -> SRV with two targets: the preferred one never answers.
    let dns = Dnsmasq::start(&[
        "--naptr-record=carrier.sixgate.test,10,50,s,SIP+D2U,,_sip._udp.carrier.sixgate.test".into(),
        format!("--srv-host=_sip._udp.carrier.sixgate.test,dead.sixgate.test,{silent},10,0"),
        format!("--srv-host=_sip._udp.carrier.sixgate.test,live.sixgate.test,{live},20,0"),
        "--host-record=dead.sixgate.test,127.0.0.1".into(),
        "--host-record=live.sixgate.test,127.0.0.1".into(),
    ]);
    let carriers = "[[carriers]]\nname = \"named\"\nuri = \"sip:carrier.sixgate.test\"\nprefixes = [\"+44\"]\nprobe_interval_secs = 0\n";
    let extra = format!("[timers]\nt1_ms = 100\nt2_ms = 4000\n[dns]\nservers = [\"{}\"]\n", dns.addr);
    let sg = Sixgate::start(sgp, &config(sgp, carriers, &extra));
    let uas = sipp(None, "uas_call.xml", "127.0.0.1", live, &["-set", "rr_check", "1"], None);
    settle();
    phone_calls("uac_call_auth.xml", "+442079460008", sg.port, true);
    uas.expect_success(CALL);
}

/// baresip (Debian `baresip-core`), a real phone stack, places the call: it answers the 407 with
/// the Request-URI as digest `uri`, so the strict check is exercised by a client other than sipp.
/// It plays a file of silence (no sound card here) and hangs up when it exits (`-t 8`), which
/// the callee's scenario takes as a complete call (INVITE, 200, ACK, BYE).
#[test]
fn baresip_calls_through_the_strict_digest_check() {
    let (sgp, c1, phone) = (port(), port(), port());
    // baresip 1.0 gives up on any SHA-256 challenge: MD5 only (the default).
    let cfg = config(sgp, &carrier("c1", c1, "+44", 1, ""), "").replace("algorithms = [\"MD5\", \"SHA-256\"]\n", "");
    assert!(cfg.contains("digest_uri = \"strict\""));
    let sg = Sixgate::start(sgp, &cfg);
    let uas = sipp(None, "uas_call.xml", "127.0.0.1", c1, &["-set", "rr_check", "1"], None);
    settle();
    let dir = TempDir::new("baresip");
    common::baresip_config(
        &dir.0,
        &format!("[::1]:{phone}"),
        &format!("<sip:alice@localhost;transport=udp>;auth_pass=secret;outbound=\"sip:[::1]:{};transport=udp\";regint=0", sg.port),
    );
    let out = Command::new("timeout")
        .arg("30")
        .arg(tool("baresip"))
        .arg("-f")
        .arg(&dir.0)
        .args(["-e", "/dial sip:+442079460009@localhost", "-t", "8"])
        .stdin(Stdio::null())
        .output()
        .expect("run baresip");
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(log.contains("Progress: 100 Trying") && !log.contains("403") && !log.contains("407 Proxy"), "baresip:\n{log}");
    uas.expect_success(CALL);
}

/// Drops `percent` % of the UDP packets arriving at any socket in `ns`, at random (nftables
/// `numgen random` on the input hook: every packet crosses it once, so both directions of every
/// exchange lose that share, and the sender sees no error, as on a real network; a drop on the
/// output hook would fail the sender's sendto with EPERM). The kernel here has no sch_netem, so
/// `tc netem` is not available.
fn lose(ns: &Namespace, percent: u32) {
    ns.nft(&format!(
        "table inet sixgate_loss {{\n chain inbound {{\n  type filter hook input priority 0; policy accept;\n  \
         meta l4proto udp numgen random mod 100 < {percent} counter drop\n }}\n}}\n"
    ));
}

/// The loss rule's counter line.
fn dropped(ns: &Namespace) -> String {
    ns.run("nft", &["list", "table", "inet", "sixgate_loss"]).lines().find(|l| l.contains("counter")).unwrap_or("").trim().to_string()
}

#[test]
fn the_call_completes_with_ten_percent_loss_both_ways() {
    let ns = Namespace::new(&format!("sg-loss-{}", std::process::id()));
    lose(&ns, 10);
    let (sgp, c1) = (5060, 5070);
    let sg = NetnsSixgate::start(&ns, ([127, 0, 0, 1], sgp).into(), &config(sgp, &carrier("c1", c1, "+44", 1, ""), ""));
    // Several calls in a row: each must complete through retransmissions alone.
    let mut results = Vec::new();
    for call in 0..3 {
        let uas = sipp(Some(&ns.0), "uas_call.xml", "127.0.0.1", c1, &["-d", "4000"], None);
        settle();
        let mut uac = sipp(Some(&ns.0), "uac_call_auth.xml", "::1", 6000 + call, &["-s", "+442079460006", "-auth_uri", &auth_uri("+442079460006", 5060)], Some("[::1]:5060"));
        let out = uac.wait(Duration::from_secs(90));
        let mut uas = uas;
        let uas_out = uas.wait(Duration::from_secs(60));
        results.push((out.status.success(), uac.logs(&out), uas_out.status.success()));
    }
    let log = sg.log();
    drop(sg);
    let dropped = dropped(&ns);
    let ok = results.iter().filter(|r| r.0).count();
    eprintln!("lossy calls: {ok}/3 completed; {dropped}");
    assert!(dropped.contains("packets") && !dropped.contains("packets 0 "), "the loss rule dropped nothing: {dropped}");
    for (i, r) in results.iter().enumerate() {
        assert!(r.0, "call {i} failed with 10 % loss:\n{}\n--- sixgate log\n{log}", r.1);
    }
}
