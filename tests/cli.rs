//! The `sixgate` command line: check-config on the documented example and on broken files.

mod common;
use common::TempDir;
use std::process::Command;

fn sixgate(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sixgate")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/sixgate.toml");
    let (code, out) = sixgate(&["check-config", path]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn broken_configs_name_the_key() {
    let dir = TempDir::new("cli");
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/sixgate.toml")).unwrap();
    let cases = [
        (example.replacen("port = 5060", "port = 70000", 1), "listen[0].port: out of range 1..=65535 (got: 70000)"),
        (example.replace("level = \"info\"", "level = \"chatty\""), "log.level: must be one of"),
        (example.replace("[limits]", "[limits]\nmax_mesage_bytes = 10"), "limits.max_mesage_bytes: unknown key"),
        (example.replacen("address = \"::1\"", "address = \"::1:\"", 1), "listen[0].address: not an IP address literal (got: \"::1:\")"),
        (example.replace("ipv4 = \"127.0.0.1\"", "ipv4 = \"::1\""), "advertise.ipv4: must be a specific IPv4 address"),
        ("[sip\n".to_string(), "TOML syntax"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let p = dir.0.join(format!("broken{i}.toml"));
        std::fs::write(&p, text).unwrap();
        let (code, out) = sixgate(&["check-config", p.to_str().unwrap()]);
        assert_eq!(code, 1, "case {i}: {out}");
        assert!(out.contains(want), "case {i}: want {want:?} in:\n{out}");
        let (code, out) = sixgate(&["run", "-c", p.to_str().unwrap()]);
        assert_eq!(code, 1, "run must refuse an invalid config (case {i}): {out}");
    }
    let (code, _) = sixgate(&["check-config", "/nonexistent/sixgate.toml"]);
    assert_eq!(code, 1);
}

#[test]
fn print_defaults_is_the_example() {
    let (code, out) = sixgate(&["print-defaults"]);
    assert_eq!(code, 0);
    assert_eq!(out, std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/sixgate.toml")).unwrap());
}
