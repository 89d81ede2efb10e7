//! Shared helpers for whole-system tests: start a real `sixgate` process on free loopback ports
//! with a config written for the test, and find the third-party tools the tests drive.
#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port free for UDP and TCP on both ::1 and 127.0.0.1 (checked by binding all four).
pub fn free_port() -> u16 {
    for _ in 0..200 {
        let probe = UdpSocket::bind("127.0.0.1:0").expect("bind probe");
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let ok = UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("::1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("::1", port)).is_ok();
        if ok {
            return port;
        }
    }
    panic!("no free loopback port found in 200 tries");
}

/// A tool the tests need; missing tools fail the test loudly (the test command installs them).
pub fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin", "/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed: run ./scripts/test.sh, which installs the test peers (apt-get)");
}

pub struct Sixgate {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

impl Drop for Sixgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("sixgate-test-{tag}-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

/// The loopback config of the embedded defaults, moved to `port`, plus `extra` TOML.
pub fn loopback_config(port: u16, extra: &str) -> String {
    let mut c = String::from("[sip]\ndomains = [\"localhost\"]\n");
    for (t, a) in [("udp", "::1"), ("tcp", "::1"), ("udp", "127.0.0.1"), ("tcp", "127.0.0.1")] {
        c.push_str(&format!("[[listen]]\ntransport = \"{t}\"\naddress = \"{a}\"\nport = {port}\n"));
    }
    c.push_str(extra);
    c
}

impl Sixgate {
    /// Starts sixgate with `config` (TOML) and waits until it answers on UDP at 127.0.0.1:port.
    pub fn start(port: u16, config: &str) -> Sixgate {
        let dir = TempDir::new("sg");
        let cfg = dir.0.join("sixgate.toml");
        std::fs::File::create(&cfg).unwrap().write_all(config.as_bytes()).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sixgate"))
            .args(["run", "-c"])
            .arg(&cfg)
            .env("RUST_LOG", "sixgate=debug")
            // Each instance its own registration store (a config's [state] dir wins).
            .env("STATE_DIRECTORY", dir.0.join("state"))
            .current_dir(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sixgate");
        let sg = Sixgate { child, port, _dir: dir };
        sg.wait_ready();
        sg
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let target: SocketAddr = ([127, 0, 0, 1], self.port).into();
        while Instant::now() < deadline {
            let _ = sock.send_to(b"\r\n\r\n", target);
            let mut buf = [0u8; 16];
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                if &buf[..n] == b"\r\n" {
                    return;
                }
            }
        }
        panic!("sixgate did not come up on port {} within 10 s", self.port);
    }
}

/// `recv` on a socket with a read timeout, retrying interruptions (a blocking receive with a
/// timeout is not restarted after one, signal(7)); panics with `what` when nothing arrives.
pub fn recv_retrying(s: &UdpSocket, buf: &mut [u8], what: &str) -> usize {
    for _ in 0..100 {
        match s.recv(buf) {
            Ok(n) => return n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("{what}: {e}"),
        }
    }
    panic!("{what}: receive interrupted 100 times in a row")
}

/// A dnsmasq (Debian `dnsmasq-base`) answering `records` (its `--srv-host=`, `--naptr-record=`,
/// `--host-record=` options) for `*.sixgate.test` on 127.0.0.1; killed on drop.
pub struct Dnsmasq {
    child: Child,
    pub addr: SocketAddr,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dnsmasq {
    pub fn start(records: &[String]) -> Dnsmasq {
        let bin = tool("dnsmasq");
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(&bin)
                .args(["--no-daemon", "--no-resolv", "--no-hosts", "--bind-interfaces", "--listen-address=127.0.0.1"])
                .args(["--conf-file=/dev/null", "--pid-file=", "--local=/sixgate.test/", "--local-ttl=60"])
                .arg(format!("--port={port}"))
                .args(records)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn dnsmasq");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // lost the port race: try another
                }
                if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return Dnsmasq { child, addr };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("dnsmasq did not start in 5 tries");
    }
}
