//! `sixgate ctl` against a running daemon: a phone registered over IPv6, a carrier's call to
//! another user in progress through the relay; every subcommand in tables and in `--json`
//! (parsed), and a clear one-line error when no daemon runs.

mod common;
use common::{free_port, loopback_config, register_digest, sipp, Sixgate, TempDir};
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
    register(sg, "alice", "secret").expect("alice registers")
}

/// `user` registers from a UDP socket on ::1 through the 401 round: the socket, or the final
/// status line.
fn register(sg: u16, user: &str, password: &str) -> Result<UdpSocket, String> {
    let s = UdpSocket::bind("[::1]:0").unwrap();
    register_digest(&s, format!("[::1]:{sg}").parse().unwrap(), "localhost", user, password).map(|()| s)
}

/// GET /metrics, parsed by the Prometheus project's own text-format parser (Debian's
/// python3-prometheus-client): every family with its type, or the parser's complaint.
fn scrape_and_parse(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).expect("metrics listener");
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).expect("HTTP answer");
    let script = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\n\
        for f in p(sys.stdin.read()):\n    for s in f.samples:\n        print(f.type, s.name, s.labels.get('reason', s.labels.get('kind', '')), s.value)\n";
    let mut py = Command::new("/usr/bin/python3").args(["-c", script]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("/usr/bin/python3");
    py.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(out.status.success(), "the Prometheus parser refused the exposition: {}\n{body}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn ctl_shows_registrations_calls_and_stats_of_a_running_daemon() {
    // No daemon: one clear line, exit 1.
    let (ok, out, err) = ctl(std::path::Path::new("/nonexistent/ctl.sock"), &["calls"]);
    assert!(!ok && out.is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("sixgate is not running"), "{err}");

    let (sg_port, bob_port, metrics_port) = (free_port(), free_port(), free_port());
    let state = TempDir::new("ctl-state");
    let extra = format!(
        "[state]\ndir = \"{}\"\n[auth]\nrealm = \"localhost\"\nalgorithms = [\"MD5\"]\n\
         [[users]]\nusername = \"alice\"\npassword = \"secret\"\nnumbers = [\"+15550100\"]\n\
         [[users]]\nusername = \"bob\"\npassword = \"x\"\nnumbers = [\"+15550200\"]\ncontacts = [\"sip:bob@[::1]:{bob_port}\"]\n\
         [[carriers]]\nname = \"c1\"\nuri = \"sip:127.0.0.2:5060\"\nprefixes = [\"+44\"]\nsource_cidrs = [\"127.0.0.2/32\"]\nprobe_interval_secs = 0\n\
         [media]\nipv6 = \"::1\"\nipv4 = \"127.0.0.1\"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
        state.0.display()
    );
    let config = loopback_config(sg_port, &extra);
    let sg = Sixgate::start(sg_port, &config);
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
    assert_eq!((r["aor"].as_str(), r["transport"].as_str(), r["user_agent"].as_str()), (Some("alice"), Some("udp"), Some("sixgate-test")));
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
    // One call by its Call-ID; an unknown one is a one-line error.
    let id = c["call_id"].as_str().unwrap().to_string();
    let one = json(&socket, &["call", &id]);
    assert_eq!(one["calls"].as_array().map(|c| c.len()), Some(1), "{one}");
    assert_eq!(one["calls"][0]["call_id"].as_str(), Some(id.as_str()));
    let (ok, _, err) = ctl(&socket, &["call", "no-such-call"]);
    assert!(!ok && err.contains("no call with Call-ID no-such-call"), "{err}");

    // Reload while the call runs: a bad file is refused by key and changes nothing; a good one
    // adds a user, who can then register; the call goes on.
    assert!(register(sg_port, "dave", "davepw").is_err(), "dave is not a user yet");
    std::fs::write(sg.config_file(), format!("{config}[limits]\nmax_dialogs = \"many\"\n")).unwrap();
    let (ok, _, err) = ctl(&socket, &["reload"]);
    assert!(!ok && err.contains("limits.max_dialogs") && err.contains("not reloaded"), "{err}");
    assert_eq!(json(&socket, &["registrations"])["registrations"].as_array().map(|r| r.len()), Some(1), "still serving");
    std::fs::write(sg.config_file(), format!("{config}[[users]]\nusername = \"dave\"\npassword = \"davepw\"\n")).unwrap();
    let reloaded = json(&socket, &["reload"]);
    assert_eq!(reloaded["kind"], "reloaded", "{reloaded}");
    assert!(reloaded["applied"].as_array().is_some_and(|a| a.iter().any(|x| x == "users")), "{reloaded}");
    assert!(reloaded["restart_needed"].as_array().is_some_and(|a| a.is_empty()), "{reloaded}");
    let _dave = register(sg_port, "dave", "davepw").expect("dave registers after the reload");
    // The packaged unit's way: root hands over the text of a file the service cannot read.
    let handed = state.0.join("handed.toml");
    std::fs::write(&handed, format!("{config}[[users]]\nusername = \"dave\"\npassword = \"davepw\"\n[[users]]\nusername = \"erin\"\npassword = \"erinpw\"\n")).unwrap();
    let reloaded = json(&socket, &["reload", handed.to_str().unwrap()]);
    assert_eq!((reloaded["kind"].as_str(), reloaded["file"].as_str()), (Some("reloaded"), handed.to_str()), "{reloaded}");
    let _erin = register(sg_port, "erin", "erinpw").expect("erin registers after the handed-over reload");
    assert_eq!(json(&socket, &["calls"])["calls"].as_array().map(|c| c.len()), Some(1), "the call survived the reload");

    // Diagnosis: alice registered from her own address (no NAT, no ALG); a stranger is refused.
    let d = json(&socket, &["diagnose", "alice"]);
    let topics: Vec<&str> = d["findings"].as_array().unwrap().iter().filter_map(|f| f["topic"].as_str()).collect();
    assert_eq!(topics, ["no-nat"], "{d}");
    let (ok, text, _) = ctl(&socket, &["diagnose", "+15550100"]);
    assert!(ok && text.starts_with("alice: registered at sip:alice@[::1]:") && text.contains("[OK] no-nat") && text.contains("what to do: nothing to do"), "{text}");
    let (ok, _, err) = ctl(&socket, &["diagnose", "mallory"]);
    assert!(!ok && err.contains("mallory is not a local user"), "{err}");

    // Metrics: the whole exposition parses with Prometheus' own parser, counters as counters.
    let parsed = scrape_and_parse(([127, 0, 0, 1], metrics_port).into());
    for line in ["counter sixgate_engine_one_way_audio_calls_total", "counter sixgate_engine_registrations_total", "gauge sixgate_relay_sessions", "counter sixgate_relay_dropped_packets_total strict_source", "counter sixgate_call_records_failed_total"] {
        assert!(parsed.lines().any(|l| l.starts_with(line)), "{line} missing from the parsed metrics:\n{parsed}");
    }

    // The engine's counters are exported about once a second: wait for them (bounded).
    let value = |stats: &serde_json::Value, name: &str| stats["counters"].as_array().and_then(|c| c.iter().find(|c| c[0] == name)).and_then(|c| c[1].as_f64());
    let mut stats = json(&socket, &["stats"]);
    for _ in 0..30 {
        if value(&stats, "sixgate_engine_registrations_total") == Some(3.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        stats = json(&socket, &["stats"]);
    }
    assert_eq!(value(&stats, "sixgate_engine_registrations_total"), Some(3.0), "alice, dave and erin: {stats}");
    assert_eq!(value(&stats, "sixgate_relay_sessions"), Some(1.0), "{stats}");
    assert_eq!(value(&stats, "sixgate_engine_active_calls{caller=\"ipv4\",callee=\"ipv6\"}"), Some(1.0), "{stats}");
    assert!(value(&stats, "sixgate_relay_dropped_packets_total{reason=\"strict_source\"}").is_some(), "{stats}");

    carrier.expect_success(Duration::from_secs(30));
    bob.expect_success(Duration::from_secs(30));
    assert!(json(&socket, &["calls"])["calls"].as_array().unwrap().is_empty(), "the BYE ended the call");
    // Its record, in the state directory.
    let mut records = String::new();
    for _ in 0..50 {
        records = std::fs::read_to_string(state.0.join("calls.jsonl")).unwrap_or_default();
        if !records.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let r: serde_json::Value = serde_json::from_str(records.lines().next().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {records}"));
    assert_eq!((r["call_id"].as_str(), r["disposition"].as_str(), r["carrier"].as_str(), r["to"].as_str().map(|t| t.contains("+15550200"))), (Some(id.as_str()), Some("answered"), Some("c1"), Some(true)), "{r}");
}
