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
    dir: TempDir,
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
        let mut sg = Sixgate { child, port, dir };
        sg.wait_ready();
        sg
    }

    /// The config file it runs with (rewrite it, then reload).
    pub fn config_file(&self) -> PathBuf {
        self.dir.0.join("sixgate.toml")
    }

    fn wait_ready(&mut self) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let target: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let child = &mut self.child;
        if !await_pong(&sock, target, || child.try_wait().ok().flatten().is_none()) {
            panic!("sixgate did not come up on port {} within 10 s", self.port);
        }
    }
}

/// Sends CRLF keepalive pings (RFC 5626) to `target` from `sock` until the CRLF pong comes
/// back (true), `alive` says the process died, or 10 s pass (false).
fn await_pong(sock: &UdpSocket, target: SocketAddr, mut alive: impl FnMut() -> bool) -> bool {
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && alive() {
        let _ = sock.send_to(b"\r\n\r\n", target);
        let mut buf = [0u8; 16];
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if &buf[..n] == b"\r\n" {
                return true;
            }
        }
    }
    false
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

// ----- sipp -----

use std::process::Output;

/// A scenario of `tests/sipp/` by name, or a path a test wrote.
pub fn scenario(name: &str) -> String {
    if name.starts_with('/') {
        return name.to_string();
    }
    format!("{}/tests/sipp/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A sipp process; its logs live in `dir` and are shown when a run fails.
pub struct Sipp {
    pub child: Option<Child>,
    pub dir: TempDir,
    pub what: String,
}

impl Drop for Sipp {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn sipp_cmd(netns: Option<&str>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new(tool("ip"));
            c.args(["netns", "exec", ns]).arg(tool("sipp"));
            c
        }
        None => Command::new(tool("sipp")),
    }
}

/// Starts sipp with `scenario` bound to `ip:port`, running `calls` calls (UAS: in the
/// background until they are done).
pub fn sipp(netns: Option<&str>, scenario_name: &str, ip: &str, port: u16, args: &[&str], target: Option<&str>) -> Sipp {
    sipp_over("u1", netns, scenario_name, ip, port, args, target)
}

/// [`sipp`] over sipp's transport `t` ("u1" UDP, "t1" TCP).
pub fn sipp_over(t: &str, netns: Option<&str>, scenario_name: &str, ip: &str, port: u16, args: &[&str], target: Option<&str>) -> Sipp {
    let dir = TempDir::new("sipp");
    let mut cmd = sipp_cmd(netns);
    cmd.current_dir(&dir.0)
        .args(["-sf", &scenario(scenario_name), "-i", ip, "-p", &port.to_string(), "-t", t])
        .args(["-m", "1", "-nostdin", "-timeout", "60s", "-timeout_error", "-trace_err", "-trace_msg"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(t) = target {
        cmd.arg(t);
    }
    let child = cmd.spawn().expect("spawn sipp");
    Sipp { child: Some(child), dir, what: format!("{scenario_name} on {ip}:{port}") }
}

impl Sipp {
    /// Waits (bounded) for sipp to finish; panics with its logs unless it succeeded.
    pub fn expect_success(mut self, within: Duration) {
        let out = self.wait(within);
        if !out.status.success() {
            panic!("{} failed ({}):\n{}", self.what, out.status, self.logs(&out));
        }
    }

    pub fn wait(&mut self, within: Duration) -> Output {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return child.wait_with_output().expect("sipp output");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait_with_output().expect("sipp output")
    }

    pub fn logs(&self, out: &Output) -> String {
        let mut logs = format!("{}\n{}\n", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        for e in std::fs::read_dir(&self.dir.0).into_iter().flatten().flatten() {
            logs.push_str(&format!("--- {}\n{}\n", e.path().display(), std::fs::read_to_string(e.path()).unwrap_or_default()));
        }
        logs
    }
}


/// A network namespace (`ip netns add NAME`) with its loopback up, deleted on drop, so also when
/// the test panics. Processes still inside keep it alive until they exit: drop them first.
pub struct Namespace(pub String);

extern "C" {
    /// setns(2) from the C library std already links; moves only the calling thread.
    fn setns(fd: std::os::raw::c_int, nstype: std::os::raw::c_int) -> std::os::raw::c_int;
}

impl Namespace {
    /// Creates `name` (a stale one of the same name, left by a killed run, is removed first).
    pub fn new(name: &str) -> Namespace {
        let ip = tool("ip");
        let _ = Command::new(&ip).args(["netns", "del", name]).stderr(Stdio::null()).status();
        assert!(Command::new(&ip).args(["netns", "add", name]).status().unwrap().success(), "ip netns add {name} (root needed)");
        let ns = Namespace(name.to_string());
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ARGS`; panics unless it succeeds.
    pub fn ip(&self, args: &[&str]) {
        let out = Command::new(tool("ip")).args(["-n", &self.0]).args(args).output().expect("run ip");
        assert!(out.status.success(), "ip -n {} {}: {}", self.0, args.join(" "), String::from_utf8_lossy(&out.stderr));
    }

    /// A command running `program` inside the namespace. `ip netns exec` execs it, so the
    /// child's pid is the program's and `Child::kill` reaches it.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(tool("ip"));
        c.args(["netns", "exec", &self.0]).arg(program);
        c
    }

    /// Runs `program args` inside the namespace; panics unless it succeeds; returns its stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self.command(tool(program)).args(args).output().expect("run in namespace");
        assert!(out.status.success(), "{program} {} in {}: {}", args.join(" "), self.0, String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `sysctl -w` each `key=value` inside the namespace (net.* keys are per namespace).
    pub fn sysctl(&self, settings: &[&str]) {
        let mut args = vec!["-qw"];
        args.extend_from_slice(settings);
        self.run("sysctl", &args);
    }

    /// Loads an nftables ruleset (`nft -f -`) inside the namespace.
    pub fn nft(&self, rules: &str) {
        let mut c = self.command(tool("nft")).args(["-f", "-"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn nft");
        c.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "nft in {}: {}\n{rules}", self.0, String::from_utf8_lossy(&out.stderr));
    }

    /// The namespace's connection-tracking table (/proc/net/nf_conntrack), for failure reports.
    pub fn conntrack(&self) -> String {
        let out = self.command(tool("cat")).arg("/proc/net/nf_conntrack").output().expect("cat nf_conntrack");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A UDP socket bound to `addr` inside the namespace, usable from the test process: a
    /// helper thread enters the namespace (setns(2) moves only that thread) and binds it; a
    /// socket stays in the namespace it was created in.
    pub fn udp_socket(&self, addr: SocketAddr) -> UdpSocket {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            const CLONE_NEWNET: std::os::raw::c_int = 0x4000_0000;
            // SAFETY: setns(2) with a namespace fd that lives across the call; it changes only
            // this thread, which ends right after binding.
            let rc = unsafe { setns(f.as_raw_fd(), CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr} in {path}: {e}"))
        })
        .join()
        .expect("namespace socket thread")
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new(tool("ip")).args(["netns", "del", &self.0]).status();
    }
}

/// A veth pair: `a_if` in `a`, `b_if` in `b` (names are per namespace, so they never collide
/// with another test's), both up.
pub fn veth(a: &Namespace, a_if: &str, b: &Namespace, b_if: &str) {
    a.ip(&["link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.0]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// sixgate running inside a network namespace (`ip netns exec NS sixgate run -c CONFIG`), its
/// log (stdout) kept in a file for failure reports; killed on drop.
pub struct NetnsSixgate {
    child: Child,
    pub addr: SocketAddr,
    dir: TempDir,
}

impl Drop for NetnsSixgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NetnsSixgate {
    /// Starts sixgate in `ns` with `config` and waits until it answers a CRLF keepalive on UDP
    /// at `addr` (one of its listeners), probing from inside the namespace.
    pub fn start(ns: &Namespace, addr: SocketAddr, config: &str) -> NetnsSixgate {
        let dir = TempDir::new("sg-netns");
        let cfg = dir.0.join("sixgate.toml");
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::File::create(dir.0.join("sixgate.log")).unwrap();
        let child = ns
            .command(env!("CARGO_BIN_EXE_sixgate"))
            .args(["run", "-c"])
            .arg(&cfg)
            .env("RUST_LOG", "sixgate=debug")
            // Its own registration store (a config's [state] dir wins).
            .env("STATE_DIRECTORY", dir.0.join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sixgate in the namespace");
        let mut sg = NetnsSixgate { child, addr, dir };
        let sock = ns.udp_socket(SocketAddr::new(addr.ip(), 0));
        let child = &mut sg.child;
        if !await_pong(&sock, addr, || child.try_wait().ok().flatten().is_none()) {
            panic!("sixgate did not come up on {addr} in {} within 10 s:\n{}", ns.0, sg.log());
        }
        sg
    }

    /// What sixgate has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("sixgate.log")).unwrap_or_default()
    }

    /// Its state directory (registration store, call records, control socket).
    pub fn state(&self) -> PathBuf {
        self.dir.0.join("state")
    }

    /// The call records written so far (one JSON value per line), waiting up to 5 s for at
    /// least `count` (a record waits up to 2 s for the relay's final figures).
    pub fn call_records(&self, count: usize) -> Vec<serde_json::Value> {
        let mut records = Vec::new();
        for _ in 0..50 {
            let text = std::fs::read_to_string(self.state().join("calls.jsonl")).unwrap_or_default();
            records = text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("call record is not JSON ({e}): {l}"))).collect();
            if records.len() >= count {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        records
    }
}

// ----- baresip -----

/// Writes a headless baresip 1.0 config directory into `dir`: SIP on `listen` over UDP, G.711, no
/// sound card (audio from a file of silence, to a file), the account line `account` (the
/// `accounts` file). baresip's `ausine` runs only at 48 kHz, so the source is an 8 kHz WAV the
/// codec can take as it is; with a source that fails to start, baresip cannot auto-answer.
pub fn baresip_config(dir: &Path, listen: &str, account: &str) {
    baresip_config_over(dir, "udp", listen, account)
}

/// [`baresip_config`] with SIP over `transport` ("udp" or "tcp"). The `uuid` module gives the
/// phone its `+sip.instance` (Outbound, RFC 5626, needs one).
pub fn baresip_config_over(dir: &Path, transport: &str, listen: &str, account: &str) {
    std::fs::write(
        dir.join("config"),
        format!(
            "sip_listen {listen}\nsip_trans_def {transport}\nmodule_path /usr/lib/baresip/modules\nmodule g711.so\n\
             module aufile.so\nmodule uuid.so\nmodule_app account.so\nmodule_app menu.so\n\
             audio_source aufile,{0}/in.wav\naudio_player aufile,{0}/out.wav\naudio_alert aufile,{0}/alert.wav\n",
            dir.display()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("in.wav"), silence_wav(8000, 1)).unwrap();
    std::fs::write(dir.join("accounts"), format!("{account}\n")).unwrap();
}

/// A mono 16-bit PCM WAV file of `secs` seconds of silence.
pub fn silence_wav(rate: u32, secs: u32) -> Vec<u8> {
    let data = rate * 2 * secs;
    let mut w = Vec::new();
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes()); // PCM
    w.extend_from_slice(&1u16.to_le_bytes()); // mono
    w.extend_from_slice(&rate.to_le_bytes());
    w.extend_from_slice(&(rate * 2).to_le_bytes());
    w.extend_from_slice(&2u16.to_le_bytes());
    w.extend_from_slice(&16u16.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&data.to_le_bytes());
    w.resize(w.len() + data as usize, 0);
    w
}

/// `user` registers through the 401 round from `sock` (Via and Contact name `sock`'s own
/// address, as a phone writes them), to `to` in `domain`. Ok, or the final status line.
pub fn register_digest(sock: &UdpSocket, to: SocketAddr, domain: &str, user: &str, password: &str) -> Result<(), String> {
    use sixgate::auth::{answer_challenge, Algorithm, Challenge};
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = sock.local_addr().unwrap();
    let req = |cseq: u32, auth: &str| {
        format!(
            "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKreg{user}{cseq};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:{user}@{domain}>;tag=reg1\r\nTo: <sip:{user}@{domain}>\r\nCall-ID: reg-{user}@test\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{user}@{me}>\r\n{auth}Expires: 600\r\nUser-Agent: sixgate-test\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let mut buf = [0u8; 4096];
    let mut answer = |text: String| -> Result<String, String> {
        sock.send_to(text.as_bytes(), to).map_err(|e| e.to_string())?;
        let n = recv_retrying(sock, &mut buf, "REGISTER answer");
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    let text = answer(req(1, ""))?;
    if !text.starts_with("SIP/2.0 401") {
        return Err(text.lines().next().unwrap_or_default().to_string());
    }
    let ch = text.lines().filter_map(|l| l.strip_prefix("WWW-Authenticate: ")).find_map(|v| Challenge::parse(v.as_bytes()).filter(|c| c.algorithm == Algorithm::Md5)).ok_or("no MD5 challenge")?;
    let cred = answer_challenge(&ch, user, password, b"REGISTER", &format!("sip:{domain}"), "cn");
    let text = answer(req(2, &format!("Authorization: {cred}\r\n")))?;
    if !text.starts_with("SIP/2.0 200") {
        return Err(text.lines().next().unwrap_or_default().to_string());
    }
    Ok(())
}
