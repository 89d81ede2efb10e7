//! The registrar with real third-party peers through a running sixgate: sipp (Debian
//! `sip-tester`) walks every REGISTER and digest rule (two contacts, 423, CSeq order, `*`,
//! another user's address-of-record, wrong password, stale nonce, the ban after repeated
//! failures); a replayed nonce-count, which no third-party client sends on purpose, is sent by
//! the test itself over a real socket; baresip (Debian `baresip-core`) registers over IPv6 and is called
//! by a carrier; bindings survive kill -9; a TCP phone's binding ends with its connection.
//!
//! The REGISTER scenarios are written by the test from [`Step`]s (one sipp run per sequence), so
//! each rule reads as one line here. sipp 3.6 builds the digest `uri` from `-auth_uri`
//! (`sip:` + it), so `-auth_uri localhost` makes it the Request-URI `sip:localhost`.

mod common;
use common::{free_port, sipp_over, tool, Sixgate, TempDir};
use std::process::{Command, Stdio};
use std::time::Duration;

const RUN: Duration = Duration::from_secs(60);

fn config(sg: u16, extra: &str) -> String {
    let mut c = String::from("[sip]\ndomains = [\"localhost\"]\n");
    for (t, a) in [("udp", "::1"), ("tcp", "::1"), ("udp", "127.0.0.1"), ("tcp", "127.0.0.1")] {
        c.push_str(&format!("[[listen]]\ntransport = \"{t}\"\naddress = \"{a}\"\nport = {sg}\n"));
    }
    c.push_str(
        "[auth]\nrealm = \"localhost\"\nnonce_lifetime_secs = 10\nban_failures = 3\n\
         [registrar]\nmin_expires = 60\nmax_expires = 3600\n\
         [[users]]\nusername = \"alice\"\npassword = \"secret\"\nnumbers = [\"+442071110000\"]\n\
         [[users]]\nusername = \"bob\"\npassword = \"bobsecret\"\nnumbers = [\"+442071110001\"]\n\
         [[carriers]]\nname = \"carrier\"\nuri = \"sip:127.0.0.1:9\"\nprefixes = [\"+1\"]\n\
         source_cidrs = [\"127.0.0.2/32\"]\nprobe_interval_secs = 0\n",
    );
    c.push_str(extra);
    c
}

/// One REGISTER of a sequence and the answer it must get.
struct Step<'a> {
    /// Send `[authentication]` computed from the last challenge (sipp's nonce-count is always 1).
    auth: bool,
    password: &'a str,
    cseq: u32,
    /// Contact header lines (without "Contact: "); empty for none.
    contacts: &'a [&'a str],
    /// Extra header lines, each ending in \r\n.
    extra: &'a str,
    to_user: &'a str,
    expect: u16,
    /// Regular expressions (POSIX, one line each) the answer must match (sipp `ereg`).
    check: &'a [&'a str],
    pause_ms: u32,
}

const fn step(auth: bool, cseq: u32, contacts: &'static [&'static str], expect: u16) -> Step<'static> {
    Step { auth, password: "secret", cseq, contacts, extra: "", to_user: "alice", expect, check: &[], pause_ms: 0 }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A sipp scenario sending the steps' REGISTERs in order (one Call-ID) and checking each answer.
fn register_scenario(dir: &TempDir, name: &str, steps: &[Step]) -> String {
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"ISO-8859-1\" ?>\n<scenario name=\"register\">\n");
    for (i, s) in steps.iter().enumerate() {
        if s.pause_ms > 0 {
            x.push_str(&format!("  <pause milliseconds=\"{}\" />\n", s.pause_ms));
        }
        let mut msg = format!(
            "REGISTER sip:localhost SIP/2.0\nVia: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport\nMax-Forwards: 70\n\
             From: <sip:alice@localhost>;tag=[pid]reg\nTo: <sip:{}@localhost>\nCall-ID: [call_id]\nCSeq: {} REGISTER\n",
            s.to_user, s.cseq
        );
        for c in s.contacts {
            msg.push_str(&format!("Contact: {c}\n"));
        }
        msg.push_str(&s.extra.replace("\r\n", "\n"));
        if s.auth {
            msg.push_str(&format!("[authentication username=alice password={}]\n", s.password));
        }
        msg.push_str("Content-Length: 0\n\n");
        // Named transactions: sipp then matches each answer by its branch, not by CSeq order
        // (the out-of-order step sends a lower CSeq on purpose).
        x.push_str(&format!("  <send retrans=\"500\" start_txn=\"t{i}\"><![CDATA[\n{msg}]]></send>\n"));
        let auth = if s.expect == 401 { " auth=\"true\"" } else { "" };
        x.push_str(&format!("  <recv response=\"{}\" response_txn=\"t{i}\"{auth}>\n", s.expect));
        if !s.check.is_empty() {
            x.push_str("    <action>\n");
            for (j, re) in s.check.iter().enumerate() {
                x.push_str(&format!("      <ereg regexp=\"{}\" search_in=\"msg\" check_it=\"true\" assign_to=\"m{i}_{j}\" />\n", xml_escape(re)));
            }
            x.push_str("    </action>\n");
        }
        x.push_str("  </recv>\n");
    }
    // Variables set by the checks only (sipp refuses a variable it sees used once).
    let vars: Vec<String> = steps.iter().enumerate().flat_map(|(i, s)| (0..s.check.len()).map(move |j| format!("m{i}_{j}"))).collect();
    if !vars.is_empty() {
        x.push_str(&format!("  <Reference variables=\"{}\" />\n", vars.join(",")));
    }
    x.push_str("</scenario>\n");
    let path = dir.0.join(name);
    std::fs::write(&path, x).unwrap();
    path.display().to_string()
}

/// Runs the steps with sipp from `ip` over `transport` ("u1"/"t1") against sixgate on `sg`.
fn register(sg: u16, ip: &str, transport: &str, local_port: u16, steps: &[Step]) -> common::Sipp {
    let dir = TempDir::new("regsf");
    let sf = register_scenario(&dir, "reg.xml", steps);
    let target = if ip.contains(':') { format!("[::1]:{sg}") } else { format!("127.0.0.1:{sg}") };
    let s = sipp_over(transport, None, &sf, ip, local_port, &["-auth_uri", "localhost"], Some(&target));
    // Keep the scenario file for as long as sipp runs.
    std::mem::forget(dir);
    s
}

#[test]
fn sipp_walks_every_register_and_digest_rule() {
    let sgp = free_port();
    let sg = Sixgate::start(sgp, &config(sgp, ""));
    let two: &[&str] = &["<sip:alice@[local_ip]:[local_port]>;expires=600", "<sip:alice-desk@[local_ip]:[local_port]>;q=0.5"];
    let steps = [
        step(false, 1, two, 401),
        // Two contacts in one REGISTER: both listed with their remaining time, a Date header.
        Step { check: &["Contact: <sip:alice@[^>]*>;expires=600", "Contact: <sip:alice-desk@[^>]*>;expires=3600;q=0.5", "Date: [A-Z][a-z][a-z], "], ..step(true, 2, two, 200) },
        // The same nonce again with the next nonce-count (sipp counts up): accepted. A count used
        // before is refused: see `a_replayed_nonce_count_is_challenged_again`.
        step(true, 3, two, 200),
        // Too brief: 423 with Min-Expires.
        Step { check: &["Min-Expires: 60"], ..step(true, 4, &["<sip:alice@[local_ip]:[local_port]>;expires=10"], 423) },
        step(false, 5, two, 401),
        // An older CSeq in the same Call-ID: refused (RFC 3261 §10.3 step 7).
        step(true, 1, &["<sip:alice@[local_ip]:[local_port]>"], 500),
        step(false, 6, two, 401),
        // `*` needs Expires: 0.
        Step { extra: "Expires: 60\r\n", ..step(true, 7, &["*"], 400) },
        step(false, 8, two, 401),
        // Another user's address-of-record, authenticated as alice: 403.
        Step { to_user: "bob", ..step(true, 9, two, 403) },
        step(false, 10, two, 401),
        // The nonce outlives its lifetime (10 s here): right password, stale=true.
        Step { pause_ms: 11_000, check: &["stale=true"], ..step(true, 11, two, 401) },
        // `*` with Expires: 0 removes everything (the carrier's call below finds nobody).
        Step { extra: "Expires: 0\r\n", ..step(true, 12, &["*"], 200) },
    ];
    register(sgp, "::1", "u1", free_port(), &steps).expect_success(RUN);
    let dir = TempDir::new("inv480");
    carrier_calls(sgp, &expect_480(&dir), "+442071110000").expect_success(RUN);
    drop(sg);
}

#[test]
fn repeated_wrong_passwords_ban_the_source_without_a_challenge() {
    let sgp = free_port();
    let sg = Sixgate::start(sgp, &config(sgp, ""));
    let c: &[&str] = &["<sip:alice@[local_ip]:[local_port]>"];
    let wrong = |cseq| Step { password: "guess", ..step(true, cseq, c, 403) };
    let steps = [
        step(false, 1, c, 401),
        wrong(2),
        step(false, 3, c, 401),
        wrong(4),
        step(false, 5, c, 401),
        wrong(6),
        // Banned: 403 without a challenge, even without credentials.
        Step { check: &["too many failed authentications"], ..step(false, 7, c, 403) },
    ];
    register(sgp, "127.0.0.1", "u1", free_port(), &steps).expect_success(RUN);
    // Another network (IPv6 here) is not banned.
    register(sgp, "::1", "u1", free_port(), &[step(false, 1, c, 401)]).expect_success(RUN);
    drop(sg);
}

/// A REGISTER captured in flight and sent again (same nonce, same nc) gets a fresh challenge
/// with stale=true, never a second 200: an eavesdropper cannot re-register with it.
#[test]
fn a_replayed_nonce_count_is_challenged_again() {
    use std::net::UdpSocket;
    let sgp = free_port();
    let _sg = Sixgate::start(sgp, &config(sgp, ""));
    let sock = UdpSocket::bind("[::1]:0").unwrap();
    sock.connect(("::1", sgp)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let me = sock.local_addr().unwrap();
    let req = |cseq: u32, auth: &str| {
        format!(
            "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-replay{cseq};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:alice@localhost>;tag=r1\r\nTo: <sip:alice@localhost>\r\nCall-ID: replay-1\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <sip:alice@{me}>\r\n{auth}Content-Length: 0\r\n\r\n"
        )
    };
    let mut buf = [0u8; 4096];
    let mut ask = |text: String| {
        sock.send(text.as_bytes()).unwrap();
        let n = common::recv_retrying(&sock, &mut buf, "an answer to REGISTER");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let c401 = ask(req(1, ""));
    assert!(c401.starts_with("SIP/2.0 401"), "{c401}");
    let ch = c401.lines().find_map(|l| l.strip_prefix("WWW-Authenticate: ")).and_then(|v| sixgate::auth::Challenge::parse(v.as_bytes())).unwrap();
    let cred = sixgate::auth::answer_challenge(&ch, "alice", "secret", b"REGISTER", "sip:localhost", "abc");
    let ok = ask(req(2, &format!("Authorization: {cred}\r\n")));
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    // The same Authorization (nonce and nc=00000001) in a new request: replay.
    let again = ask(req(3, &format!("Authorization: {cred}\r\n")));
    assert!(again.starts_with("SIP/2.0 401") && again.contains("stale=true"), "{again}");
}

/// A carrier (127.0.0.2, trusted by source) calls `number`; `scenario` decides the outcome.
fn carrier_calls(sgp: u16, scenario: &str, number: &str) -> common::Sipp {
    let target = format!("127.0.0.1:{sgp}");
    common::sipp(None, scenario, "127.0.0.2", free_port(), &["-s", number], Some(&target))
}

#[test]
fn bindings_survive_kill_9_and_calls_reach_the_phone_after_restart() {
    let sgp = free_port();
    let state = TempDir::new("state");
    let cfg = config(sgp, &format!("[state]\ndir = \"{}\"\n", state.0.display()));
    let phone = free_port();
    let c: &[&str] = &["<sip:alice@[local_ip]:[local_port]>;expires=3600"];
    {
        let _sg = Sixgate::start(sgp, &cfg);
        register(sgp, "::1", "u1", phone, &[step(false, 1, c, 401), step(true, 2, c, 200)]).expect_success(RUN);
        // Dropped here: SIGKILL, no shutdown path runs.
    }
    let _sg = Sixgate::start(sgp, &cfg);
    let uas = common::sipp(None, "uas_phone.xml", "::1", phone, &[], None);
    std::thread::sleep(Duration::from_millis(300));
    carrier_calls(sgp, "uac_call_from_carrier.xml", "+442071110000").expect_success(RUN);
    uas.expect_success(RUN);
}

#[test]
fn a_tcp_phone_that_hangs_up_its_connection_loses_its_binding() {
    let sgp = free_port();
    let _sg = Sixgate::start(sgp, &config(sgp, ""));
    let c: &[&str] = &["<sip:alice@[local_ip]:[local_port];transport=tcp>;expires=3600"];
    // Registered over TCP; sipp exits and its connection closes.
    register(sgp, "::1", "t1", free_port(), &[step(false, 1, c, 401), step(true, 2, c, 200)]).expect_success(RUN);
    std::thread::sleep(Duration::from_millis(500));
    let dir = TempDir::new("inv480");
    carrier_calls(sgp, &expect_480(&dir), "+442071110000").expect_success(RUN);
}

/// A carrier UAC scenario that expects 480 (nobody registered) and ACKs it.
fn expect_480(dir: &TempDir) -> String {
    expect_status(dir, 480)
}

/// A carrier UAC scenario that expects final answer `code` to its INVITE and ACKs it.
fn expect_status(dir: &TempDir, code: u16) -> String {
    let sf = dir.0.join(format!("uac_{code}.xml"));
    std::fs::write(
        &sf,
        format!(
        "<?xml version=\"1.0\" encoding=\"ISO-8859-1\" ?>\n<scenario name=\"expect-{code}\">\n<send retrans=\"500\"><![CDATA[\n\
         INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0\nVia: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport\n\
         Max-Forwards: 70\nFrom: <sip:+15550100200@[local_ip]>;tag=[pid]c\nTo: <sip:[service]@[remote_ip]:[remote_port]>\nCall-ID: [call_id]\n\
         CSeq: 1 INVITE\nContact: <sip:+15550100200@[local_ip]:[local_port]>\nContent-Length: 0\n\n]]></send>\n\
         <recv response=\"100\" optional=\"true\" />\n<recv response=\"{code}\" />\n<send><![CDATA[\n\
         ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0\nVia: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport\n\
         Max-Forwards: 70\nFrom: <sip:+15550100200@[local_ip]>;tag=[pid]c\n[last_To:]\nCall-ID: [call_id]\nCSeq: 1 ACK\nContent-Length: 0\n\n]]></send>\n\
         </scenario>\n"
        ),
    )
    .unwrap();
    sf.display().to_string()
}

/// baresip registers with Outbound (RFC 5626: `+sip.instance`, `reg-id`, `Supported: outbound`)
/// over a TCP connection; a carrier's call reaches it over that connection; once baresip dies
/// and its connection closes, the next call gets 430 Flow Failed (not 480): the binding was an
/// Outbound one and its flow is gone.
#[test]
fn baresip_with_outbound_over_tcp_is_reached_on_its_flow_then_430_when_it_dies() {
    let (sgp, phone) = (free_port(), free_port());
    let sg = Sixgate::start(sgp, &config(sgp, ""));
    let dir = TempDir::new("baresip-ob");
    common::baresip_config_over(
        &dir.0,
        "tcp",
        &format!("[::1]:{phone}"),
        &format!("<sip:alice@localhost;transport=tcp>;auth_pass=secret;outbound=\"sip:[::1]:{};transport=tcp\";sipnat=outbound;regint=600;answermode=auto", sg.port),
    );
    let mut baresip = Command::new(tool("baresip"))
        .arg("-s")
        .arg("-f")
        .arg(&dir.0)
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::fs::File::create(dir.0.join("baresip.log")).unwrap()))
        .stderr(Stdio::null())
        .spawn()
        .expect("run baresip");
    let log = || std::fs::read_to_string(dir.0.join("baresip.log")).unwrap_or_default();
    // Registered with Outbound: the 200 says so.
    let mut registered = false;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(100));
        if log().contains("Require: outbound") {
            registered = true;
            break;
        }
    }
    assert!(registered, "no Outbound registration:\n{}", log());
    carrier_calls(sgp, "uac_call_from_carrier.xml", "+442071110000").expect_success(RUN);
    // SIGKILL: no un-REGISTER; the kernel closes the TCP connection.
    let _ = baresip.kill();
    let _ = baresip.wait();
    std::thread::sleep(Duration::from_millis(500));
    let sf = TempDir::new("inv430");
    carrier_calls(sgp, &expect_status(&sf, 430), "+442071110000").expect_success(RUN);
}

/// baresip, a real phone stack, registers over IPv6 with MD5 digest (strict uri check) and
/// answers a carrier's call that sixgate forks to its binding.
#[test]
fn baresip_registers_over_ipv6_and_receives_a_call() {
    let (sgp, phone) = (free_port(), free_port());
    let sg = Sixgate::start(sgp, &config(sgp, ""));
    let dir = TempDir::new("baresip-reg");
    common::baresip_config(
        &dir.0,
        &format!("[::1]:{phone}"),
        &format!("<sip:alice@localhost;transport=udp>;auth_pass=secret;outbound=\"sip:[::1]:{};transport=udp\";regint=600;answermode=auto", sg.port),
    );
    let baresip = Command::new("timeout")
        .arg("40")
        .arg(tool("baresip"))
        .arg("-f")
        .arg(&dir.0)
        .args(["-t", "25"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run baresip");
    // Wait (bounded) until the registration is in: the carrier's call then reaches baresip.
    let mut called = None;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(500));
        let mut c = carrier_calls(sgp, "uac_call_from_carrier.xml", "+442071110000");
        let out = c.wait(RUN);
        if out.status.success() {
            called = Some(());
            break;
        }
    }
    let _ = Command::new("pkill").args(["-f", &dir.0.display().to_string()]).status();
    let out = baresip.wait_with_output().expect("baresip output");
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(called.is_some(), "the carrier's call never completed; baresip:\n{log}");
    assert!(log.contains("200 OK") || log.to_ascii_lowercase().contains("registered"), "baresip did not register:\n{log}");
}
