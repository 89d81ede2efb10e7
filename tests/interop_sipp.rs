//! sipp (Debian `sip-tester`), a real third-party SIP peer, against a running sixgate: OPTIONS to
//! the proxy itself over UDP and TCP on ::1 and 127.0.0.1, and a malformed request answered 400.

mod common;
use common::{free_port, loopback_config, tool, Sixgate, TempDir};
use std::process::Command;

fn sipp_fg(scenario: &str, transport: &str, local_ip: &str, target: &str) {
    let dir = TempDir::new("sipp");
    let sf = format!("{}/tests/sipp/{scenario}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("timeout")
        .arg("30")
        .arg(tool("sipp"))
        .current_dir(&dir.0)
        .args(["-sf", &sf, "-m", "1", "-l", "1", "-t", transport, "-i", local_ip, "-p", &free_port().to_string()])
        .args(["-timeout", "15s", "-timeout_error", "-recv_timeout", "5000", "-nostdin", "-trace_err", "-trace_msg"])
        .arg(target)
        .output()
        .expect("run sipp");
    if !out.status.success() {
        let mut logs = String::new();
        for e in std::fs::read_dir(&dir.0).unwrap().flatten() {
            logs.push_str(&format!("--- {}\n{}\n", e.path().display(), std::fs::read_to_string(e.path()).unwrap_or_default()));
        }
        panic!(
            "sipp {scenario} over {transport} to {target} failed ({}):\n{}\n{}\n{logs}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn sipp_options_and_malformed_over_udp_tcp_v6_v4() {
    let port = free_port();
    let sg = Sixgate::start(port, &loopback_config(port, ""));
    for (transport, ip, target) in [
        ("u1", "::1", format!("[::1]:{}", sg.port)),
        ("t1", "::1", format!("[::1]:{}", sg.port)),
        ("u1", "127.0.0.1", format!("127.0.0.1:{}", sg.port)),
        ("t1", "127.0.0.1", format!("127.0.0.1:{}", sg.port)),
    ] {
        sipp_fg("options.xml", transport, ip, &target);
        sipp_fg("malformed.xml", transport, ip, &target);
    }
}
