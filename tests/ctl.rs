//! `sixgate ctl` against a running daemon: a phone registered over IPv6, a carrier's call to
//! another user in progress through the relay; every subcommand in tables and in `--json`
//! (parsed), and a clear one-line error when no daemon runs.

mod common;
use common::{free_port, loopback_config, sipp, Sixgate, TempDir};
use sixgate::auth::{answer_challenge, Challenge};
use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

fn ctl(socket: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sixgate")).arg("ctl").arg("--socket").arg(socket).args(args).output().expect("run sixgate ctl");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn json(socket: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let (ok, out, err) = ctl(socket, &a);
    assert!(ok, "ctl {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ctl {args:?} printed no JSON ({e}):\n{out}"))
}

/// alice registers from a UDP socket on ::1 through the 401 round; returns the socket.
fn register_alice(sg: u16) -> UdpSocket {
    let s = UdpSocket::bind("[::1]:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = s.local_addr().unwrap();
    let req = |cseq: u32, auth: &str| {
        format!(
            "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKctl{cseq};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:alice@localhost>;tag=ctl1\r\nTo: <sip:alice@localhost>\r\nCall-ID: ctl-reg@test\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <sip:alice@{me}>\r\n{auth}Expires: 600\r\nUser-Agent: ctl-test\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let to = format!("[::1]:{sg}");
    s.send_to(req(1, "").as_bytes(), &to).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.recv(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(text.starts_with("SIP/2.0 401"), "{text}");
    let ch = text.lines().filter_map(|l| l.strip_prefix("WWW-Authenticate: ")).find_map(|v| Challenge::parse(v.as_bytes()).filter(|c| c.algorithm == sixgate::auth::Algorithm::Md5)).expect("MD5 challenge");
    let cred = answer_challenge(&ch, "alice", "secret", b"REGISTER", "sip:localhost", "cn");
    s.send_to(req(2, &format!("Authorization: {cred}\r\n")).as_bytes(), &to).unwrap();
    let n = s.recv(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(text.starts_with("SIP/2.0 200"), "{text}");
    s
}

#[test]
fn ctl_shows_registrations_calls_and_stats_of_a_running_daemon() {
    // No daemon: one clear line, exit 1.
    let (ok, out, err) = ctl(std::path::Path::new("/nonexistent/ctl.sock"), &["calls"]);
    assert!(!ok && out.is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("sixgate is not running"), "{err}");

    let (sg_port, bob_port) = (free_port(), free_port());
    let state = TempDir::new("ctl-state");
    let extra = format!(
        "[state]\ndir = \"{}\"\n[auth]\nrealm = \"localhost\"\nalgorithms = [\"MD5\"]\n\
         [[users]]\nusername = \"alice\"\npassword = \"secret\"\nnumbers = [\"+15550100\"]\n\
         [[users]]\nusername = \"bob\"\npassword = \"x\"\nnumbers = [\"+15550200\"]\ncontacts = [\"sip:bob@[::1]:{bob_port}\"]\n\
         [[carriers]]\nname = \"c1\"\nuri = \"sip:127.0.0.2:5060\"\nprefixes = [\"+44\"]\nsource_cidrs = [\"127.0.0.2/32\"]\nprobe_interval_secs = 0\n\
         [media]\nipv6 = \"::1\"\nipv4 = \"127.0.0.1\"\n",
        state.0.display()
    );
    let _sg = Sixgate::start(sg_port, &loopback_config(sg_port, &extra));
    let socket = state.0.join("ctl.sock");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&socket).expect("control socket").permissions().mode() & 0o777;
        assert_eq!(mode, 0o660, "root and the service group only");
    }

    let _alice = register_alice(sg_port);
    let regs = json(&socket, &["registrations"]);
    let list = regs["registrations"].as_array().expect("registrations");
    assert_eq!(list.len(), 1, "{regs}");
    let r = &list[0];
    assert_eq!((r["aor"].as_str(), r["transport"].as_str(), r["user_agent"].as_str()), (Some("alice"), Some("udp"), Some("ctl-test")));
    assert!(r["nat"].is_null(), "a phone on its own address is not behind NAT: {r}");
    assert!(r["expires_in"].as_u64().is_some_and(|e| e > 500 && e <= 600), "{r}");
    assert!(json(&socket, &["registrations", "bob"])["registrations"].as_array().unwrap().is_empty());
    let (ok, table, _) = ctl(&socket, &["registrations"]);
    assert!(ok && table.starts_with("AOR") && table.contains("alice") && table.contains("udp [::1]:"), "{table}");

    // A carrier (IPv4) calls bob (IPv6): relayed; the call holds 4 s.
    let bob = sipp(None, "media_phone_answers.xml", "::1", bob_port, &[], None);
    std::thread::sleep(Duration::from_millis(300));
    let carrier = sipp(None, "media_carrier_calls.xml", "127.0.0.2", free_port(), &["-s", "+15550200"], Some(&format!("127.0.0.1:{sg_port}")));
    let mut calls = serde_json::Value::Null;
    for _ in 0..50 {
        calls = json(&socket, &["calls"]);
        if calls["calls"].as_array().is_some_and(|c| c.iter().any(|c| c["state"] == "confirmed")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let c = calls["calls"].as_array().and_then(|c| c.first()).unwrap_or_else(|| panic!("no call listed: {calls}"));
    assert_eq!((c["state"].as_str(), c["caller"]["family"].as_str(), c["callee"]["family"].as_str()), (Some("confirmed"), Some("IPv4"), Some("IPv6")), "{c}");
    assert_eq!(c["carrier"].as_str(), Some("c1"));
    let streams = c["streams"].as_array().expect("streams");
    assert_eq!(streams.len(), 1, "one relayed audio stream: {c}");
    assert!(streams[0]["caller_side"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{c}");
    assert!(streams[0]["callee_side"].as_str().is_some_and(|a| a.starts_with("[::1]:")), "{c}");
    assert!(streams[0]["from_caller"]["packets"].is_u64(), "live relay counters: {c}");
    let (ok, table, _) = ctl(&socket, &["calls"]);
    assert!(ok && table.contains("confirmed") && table.contains("udp IPv4 127.0.0.2:"), "{table}");

    // The engine's counters are exported about once a second: wait for them (bounded).
    let value = |stats: &serde_json::Value, name: &str| stats["counters"].as_array().and_then(|c| c.iter().find(|c| c[0] == name)).and_then(|c| c[1].as_f64());
    let mut stats = json(&socket, &["stats"]);
    for _ in 0..30 {
        if value(&stats, "sixgate_engine_registrations_total") == Some(1.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        stats = json(&socket, &["stats"]);
    }
    assert_eq!(value(&stats, "sixgate_engine_registrations_total"), Some(1.0), "{stats}");
    assert_eq!(value(&stats, "sixgate_relay_sessions"), Some(1.0), "{stats}");
    assert_eq!(value(&stats, "sixgate_engine_active_calls{caller=\"ipv4\",callee=\"ipv6\"}"), Some(1.0), "{stats}");
    assert!(value(&stats, "sixgate_relay_dropped_packets_total{reason=\"strict_source\"}").is_some(), "{stats}");

    carrier.expect_success(Duration::from_secs(30));
    bob.expect_success(Duration::from_secs(30));
    assert!(json(&socket, &["calls"])["calls"].as_array().unwrap().is_empty(), "the BYE ended the call");
}
