//! Relay speed over loopback, side by side with a minimal raw recvmmsg/sendmmsg forwarder
//! written here as the baseline, so every figure has a ratio.
//!
//! * Latency: a criterion group pings single 172-byte packets through each forwarder
//!   (unloaded), then a fixed-rate run records every packet's one-way time and reports
//!   p50/p99; "added" = forwarder − direct loopback path (generator straight to the sink).
//! * Throughput: for 1, 100, 1000 and 10000 sessions, a stepped rate search finds the highest
//!   offered rate forwarded with < 0.1 % loss (IPv6 leg in, IPv4 leg out, 12-byte RTP header +
//!   160 bytes), for the raw forwarder, the relay's io_uring engine and its epoll engine. A
//!   packet counts as forwarded only if it reached the sink within `LATE` of the step's end:
//!   with thousands of 4 MiB input queues a one-second step fits in the queues, so "nothing
//!   lost eventually" would not show whether the forwarder keeps up (and for RTP a packet that
//!   late is lost anyway).
//! * Memory per session: RSS and kernel slab growth while 10000 sessions are created.
//! * CPU cost per packet: where one generator core cannot saturate the forwarders (many
//!   sessions), every forwarder is also run at the same fixed rate and its threads' CPU time
//!   (schedstat, ns) and its core's busy time (/proc/stat) are divided by the packets forwarded,
//!   so the forwarders can still be compared (`RELAY_BENCH_EFF_RATE` overrides the rate).
//!
//! Forwarders run pinned to CPU 1; the generator and sink run on CPU 0. The generator paces
//! with sendmmsg batches of up to 64; each step checks it really offered the target rate (a step
//! it could not offer is reported as generator-limited, never as a forwarder result).
//!
//! `RELAY_BENCH_QUICK=1` shortens every step (for a smoke run).
//!
//! rtpengine (Debian's `rtpengine-daemon`, userspace forwarding, one thread pinned to the
//! forwarders' CPU) runs in the throughput search and the CPU-per-packet step beside the others
//! when `/usr/bin/rtpengine` exists (`RTPENGINE` overrides the path): its sessions are made over
//! its ng control protocol (offer/answer, IPv6 in, IPv4 out), its forwarded count read from the
//! ng `statistics` command. Without it the rtpengine column says so.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::Criterion;
use sixgate_relay::__libc as libc;
use sixgate_relay::{
    pin_current_thread, EngineChoice, Family, LegSpec, Relay, RelayConfig, SessionInfo, SessionSpec,
};
use socket2::SockAddr;

const RELAY_CPU: usize = 1;
const GEN_CPU: usize = 0;
const PKT: usize = 172;
const BATCH: usize = 64;
const MAX_LOSS: f64 = 0.001;
/// A packet that reaches the sink later than this after the step's last send counts as lost.
const LATE: Duration = Duration::from_millis(20);
/// Bench sessions use rtcp-mux (RTP and RTCP on one port), so each takes 2 sockets, as the raw
/// forwarder does; the relay's RTCP sockets would only double the descriptors, not the work.
const SOCKETS_PER_SESSION: u64 = 2;
/// SO_RCVBUF of every forwarder input socket, relay and raw alike (the kernel doubles it).
const RCVBUF: usize = 4 << 20;

struct Plan {
    quick: bool,
    counts: Vec<usize>,
    step: Duration,
    bisect: usize,
    latency_secs: f64,
}

fn plan() -> Plan {
    let quick = std::env::var_os("RELAY_BENCH_QUICK").is_some();
    let counts = std::env::var("RELAY_BENCH_SESSIONS")
        .ok()
        .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 100, 1000, 10000]);
    Plan {
        quick,
        counts,
        step: if quick { Duration::from_millis(300) } else { Duration::from_millis(1000) },
        bisect: if quick { 2 } else { 4 },
        latency_secs: if quick { 0.5 } else { 2.0 },
    }
}

// ---------------------------------------------------------------------------------------------
// Sockets and mmsg helpers

fn udp(addr: &str, rcvbuf: Option<usize>) -> UdpSocket {
    let s = UdpSocket::bind(addr).expect("bind");
    if let Some(n) = rcvbuf {
        let sock = socket2::SockRef::from(&s);
        sock.set_recv_buffer_size(n).expect("SO_RCVBUF");
    }
    s
}

/// Preallocated mmsghdr batch over `BATCH` buffers of 2 KiB.
struct Mmsg {
    bufs: Vec<[u8; 2048]>,
    names: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    ctrl: Vec<[u64; 8]>,
}

impl Mmsg {
    fn new() -> Mmsg {
        // SAFETY: plain C structs, all-zero is valid.
        unsafe {
            Mmsg {
                bufs: vec![[0u8; 2048]; BATCH],
                names: vec![std::mem::zeroed(); BATCH],
                iovs: vec![std::mem::zeroed(); BATCH],
                hdrs: vec![std::mem::zeroed(); BATCH],
                ctrl: vec![[0u64; 8]; BATCH],
            }
        }
    }

    /// recvmmsg (non-blocking) that also collects each datagram's kernel receive time
    /// (SO_TIMESTAMPNS, CLOCK_REALTIME ns) into `ts`.
    fn recv_timestamped(&mut self, fd: RawFd, ts: &mut [u64; BATCH]) -> usize {
        for i in 0..BATCH {
            self.aim(i, 2048);
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_control = self.ctrl[i].as_mut_ptr().cast();
            h.msg_controllen = std::mem::size_of::<[u64; 8]>();
        }
        // SAFETY: headers point into self's buffers and control areas.
        let n = unsafe { libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), BATCH as u32, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        let n = n.max(0) as usize;
        for (i, t) in ts.iter_mut().enumerate().take(n) {
            *t = 0;
            let h = &self.hdrs[i].msg_hdr;
            // SAFETY: walks the control data the kernel wrote, within msg_controllen.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(h);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SO_TIMESTAMPNS {
                        let tsp = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                        *t = tsp.tv_sec as u64 * 1_000_000_000 + tsp.tv_nsec as u64;
                    }
                    c = libc::CMSG_NXTHDR(h, c);
                }
            }
        }
        n
    }

    fn aim(&mut self, i: usize, len: usize) {
        self.iovs[i] = libc::iovec { iov_base: self.bufs[i].as_mut_ptr().cast(), iov_len: len };
        let h = &mut self.hdrs[i].msg_hdr;
        h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
        h.msg_iov = &mut self.iovs[i];
        h.msg_iovlen = 1;
        h.msg_control = std::ptr::null_mut();
        h.msg_controllen = 0;
        h.msg_flags = 0;
    }

    /// recvmmsg (non-blocking); returns the count.
    fn recv(&mut self, fd: RawFd) -> usize {
        for i in 0..BATCH {
            self.aim(i, 2048);
        }
        // SAFETY: headers point into self's buffers.
        let n = unsafe { libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), BATCH as u32, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        n.max(0) as usize
    }

    /// Sets datagram `i` to go to `dst` with `len` bytes of buffer `i`.
    fn set_dst(&mut self, i: usize, dst: &SockAddr, len: usize) {
        self.aim(i, len);
        // SAFETY: SockAddr holds a valid sockaddr of `len()` bytes, ≤ sockaddr_storage.
        unsafe {
            std::ptr::copy_nonoverlapping(
                dst.as_ptr().cast::<u8>(),
                (&mut self.names[i] as *mut libc::sockaddr_storage).cast::<u8>(),
                dst.len() as usize,
            )
        };
        self.hdrs[i].msg_hdr.msg_namelen = dst.len();
    }

    /// sendmmsg of the first `n`; returns how many went out.
    fn send(&mut self, fd: RawFd, n: usize) -> usize {
        let mut done = 0;
        while done < n {
            // SAFETY: headers [done, n) point into self's buffers and names.
            let r = unsafe { libc::sendmmsg(fd, self.hdrs[done..].as_mut_ptr(), (n - done) as u32, 0) };
            if r <= 0 {
                break;
            }
            done += r as usize;
        }
        done
    }
}

fn realtime_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn rtp_header(buf: &mut [u8], seq: u32) {
    buf[0] = 0x80;
    buf[1] = 0;
    buf[2..4].copy_from_slice(&(seq as u16).to_be_bytes());
    buf[4..8].copy_from_slice(&(seq.wrapping_mul(160)).to_be_bytes());
    buf[8..12].copy_from_slice(&0x5157_4e44u32.to_be_bytes());
}

// ---------------------------------------------------------------------------------------------
// The baseline: a minimal raw forwarder (epoll + recvmmsg + sendmmsg, no checks, no stats)

struct RawForwarder {
    targets: Vec<SocketAddr>,
    forwarded: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RawForwarder {
    fn start(sessions: usize, sink: SocketAddr) -> RawForwarder {
        let inputs: Vec<UdpSocket> = (0..sessions).map(|_| udp("[::1]:0", Some(RCVBUF))).collect();
        let outputs: Vec<UdpSocket> = (0..sessions).map(|_| udp("127.0.0.1:0", None)).collect();
        let targets = inputs.iter().map(|s| s.local_addr().unwrap()).collect();
        let forwarded = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, st) = (forwarded.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(RAW_THREAD.into())
            .spawn(move || raw_loop(inputs, outputs, sink, f, st))
            .expect("spawn raw forwarder");
        RawForwarder { targets, forwarded, stop, thread: Some(thread) }
    }
}

impl Drop for RawForwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn raw_loop(inputs: Vec<UdpSocket>, outputs: Vec<UdpSocket>, sink: SocketAddr, fwd: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    pin_current_thread(RELAY_CPU).expect("pin raw forwarder");
    // SAFETY: plain syscalls on fds this function owns.
    let ep = unsafe { libc::epoll_create1(0) };
    for (i, s) in inputs.iter().enumerate() {
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: i as u64 };
        // SAFETY: valid epoll fd, socket fd and event.
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) };
    }
    let sink = SockAddr::from(sink);
    let mut m = Mmsg::new();
    // SAFETY: plain data.
    let mut events: Vec<libc::epoll_event> = vec![unsafe { std::mem::zeroed() }; 256];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: valid buffer.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), 256, 20) };
        for ev in &events[..n.max(0) as usize] {
            let i = ev.u64 as usize;
            for _ in 0..4 {
                let got = m.recv(inputs[i].as_raw_fd());
                if got == 0 {
                    break;
                }
                for k in 0..got {
                    let len = m.hdrs[k].msg_len as usize;
                    m.set_dst(k, &sink, len);
                }
                let sent = m.send(outputs[i].as_raw_fd(), got);
                fwd.fetch_add(sent as u64, Ordering::Relaxed);
                if got < BATCH {
                    break;
                }
            }
        }
    }
    // SAFETY: closing our epoll fd.
    unsafe { libc::close(ep) };
}

// ---------------------------------------------------------------------------------------------
// The relay under test

struct RelayUnderTest {
    relay: Relay,
    sessions: Vec<SessionInfo>,
    targets: Vec<SocketAddr>,
}

fn relay_config(engine: EngineChoice) -> RelayConfig {
    RelayConfig {
        bind_v4: Some("127.0.0.1".parse().unwrap()),
        bind_v6: Some("::1".parse().unwrap()),
        ports_v4: (10000, 29999),
        ports_v6: (10000, 29999),
        port_quarantine: Duration::ZERO,
        media_timeout: Duration::ZERO,
        engine,
        cpus: vec![RELAY_CPU],
        socket_recv_buffer: Some(RCVBUF),
        ..RelayConfig::default()
    }
}

impl RelayUnderTest {
    fn start(engine: EngineChoice, sessions: usize, gen: SocketAddr, sink: SocketAddr) -> RelayUnderTest {
        Self::start_with(relay_config(engine), sessions, gen, sink)
    }

    fn start_with(cfg: RelayConfig, sessions: usize, gen: SocketAddr, sink: SocketAddr) -> RelayUnderTest {
        let (relay, _events) = Relay::start(cfg).expect("relay starts");
        let spec = SessionSpec {
            legs: [
                LegSpec { latch: false, rtcp_mux: true, ..LegSpec::new(Family::V6, Some(gen)) },
                LegSpec { latch: false, rtcp_mux: true, ..LegSpec::new(Family::V4, Some(sink)) },
            ],
            media_timeout: None,
        };
        let sessions: Vec<SessionInfo> = (0..sessions).map(|_| relay.create_session(spec).expect("session")).collect();
        // A stats round trip per engine thread: every Add has been applied after it.
        if let Some(last) = sessions.last() {
            relay.stats(last.id).unwrap().wait(Duration::from_secs(10)).unwrap();
        }
        let targets = sessions.iter().map(|s| s.legs[0].rtp).collect();
        RelayUnderTest { relay, sessions, targets }
    }

    /// (packets forwarded A -> B, packets the relay dropped) so far, summed over sessions.
    fn counts(&self) -> (u64, u64) {
        let tickets: Vec<_> = self.sessions.iter().map(|s| self.relay.stats(s.id).unwrap()).collect();
        tickets.into_iter().fold((0, 0), |(f, d), t| {
            let st = t.wait(Duration::from_secs(10)).unwrap();
            (f + st.legs[1].tx_rtp.packets, d + st.legs[0].drops.total() + st.legs[1].drops.total())
        })
    }
}

/// rtpengine as a separate process, driven over its ng protocol (bencode over UDP).
struct RtpengineUnderTest {
    child: std::process::Child,
    ng: UdpSocket,
    targets: Vec<SocketAddr>,
}

/// The rtpengine binary, if installed.
fn rtpengine_bin() -> Option<std::path::PathBuf> {
    let p = std::env::var_os("RTPENGINE").map_or_else(|| std::path::PathBuf::from("/usr/bin/rtpengine"), Into::into);
    p.exists().then_some(p)
}

/// Its pid while one runs, for [`forwarder_cpu_ns`].
static RTPENGINE_PID: AtomicU64 = AtomicU64::new(0);

fn bencode(out: &mut Vec<u8>, pairs: &[(&str, &str)], direction: bool) {
    out.push(b'd');
    let mut all: Vec<(&str, &str)> = pairs.to_vec();
    all.sort();
    for (k, v) in all {
        if k == "direction" {
            continue;
        }
        out.extend_from_slice(format!("{}:{k}{}:{v}", k.len(), v.len()).as_bytes());
    }
    if direction {
        out.extend_from_slice(b"9:directionl2:v62:v4e");
    }
    out.push(b'e');
}

impl RtpengineUnderTest {
    fn start(bin: &std::path::Path, sessions: usize, gen: SocketAddr, sink: SocketAddr) -> RtpengineUnderTest {
        let ng = udp("127.0.0.1:0", None);
        let probe = udp("127.0.0.1:0", None);
        let ng_port = probe.local_addr().unwrap().port();
        drop(probe);
        let child = std::process::Command::new("taskset")
            .args(["-c", &RELAY_CPU.to_string()])
            .arg(bin)
            .args(["--foreground", "--log-stderr", "--log-level=6", "--table=-1", "--num-threads=1"])
            .args(["--interface=v6/::1", "--interface=v4/127.0.0.1", "--port-min=20000", "--port-max=65000"])
            .args(["--timeout=3600", "--delete-delay=0"])
            .arg(format!("--listen-ng=127.0.0.1:{ng_port}"))
            .stdout(std::process::Stdio::null())
            .stderr(match std::env::var_os("RTPENGINE_LOG") {
                Some(path) => std::fs::File::create(path).map_or_else(|_| std::process::Stdio::null(), Into::into),
                None => std::process::Stdio::null(),
            })
            .spawn()
            .expect("start rtpengine (taskset from util-linux)");
        RTPENGINE_PID.store(u64::from(child.id()), Ordering::Relaxed);
        ng.connect(("127.0.0.1", ng_port)).unwrap();
        ng.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut r = RtpengineUnderTest { child, ng, targets: Vec::new() };
        // Until it listens, a ping is refused at once (ICMP): pace the tries, 10 s in all.
        let up = (0..100).any(|_| {
            let pong = r.call(&[("command", "ping")], false).is_some_and(|a| a.contains("pong"));
            if !pong {
                std::thread::sleep(Duration::from_millis(100));
            }
            pong
        });
        assert!(up, "rtpengine does not answer ng ping on 127.0.0.1:{ng_port}");
        let sdp = |a: SocketAddr| {
            let (fam, ip) = if a.is_ipv6() { ("IP6", "::1") } else { ("IP4", "127.0.0.1") };
            format!("v=0\r\no=- 1 1 IN {fam} {ip}\r\ns=-\r\nc=IN {fam} {ip}\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\n", a.port())
        };
        let (offer, answer) = (sdp(gen), sdp(sink));
        for i in 0..sessions {
            let call = format!("bench-{i}");
            r.call(&[("command", "offer"), ("call-id", &call), ("from-tag", "a"), ("sdp", &offer), ("ICE", "remove")], true).expect("ng offer");
            let a = r.call(&[("command", "answer"), ("call-id", &call), ("from-tag", "a"), ("to-tag", "b"), ("sdp", &answer)], false).expect("ng answer");
            let port: u16 = a.split("m=audio ").nth(1).and_then(|x| x.split(' ').next()).and_then(|p| p.parse().ok()).expect("port in the answer");
            r.targets.push(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)));
        }
        r
    }

    /// One ng request and its answer (text, cookie removed).
    fn call(&self, pairs: &[(&str, &str)], direction: bool) -> Option<String> {
        let cookie = format!("{:x}", realtime_ns());
        let mut msg = format!("{cookie} ").into_bytes();
        bencode(&mut msg, pairs, direction);
        self.ng.send(&msg).ok()?;
        let mut buf = vec![0u8; 65536];
        for _ in 0..10 {
            let n = self.ng.recv(&mut buf).ok()?;
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if let Some(rest) = text.strip_prefix(&format!("{cookie} ")) {
                return Some(rest.to_string());
            }
        }
        None
    }

    /// Packets rtpengine relayed so far (all its calls, userspace).
    fn forwarded(&self) -> u64 {
        let Some(a) = self.call(&[("command", "statistics")], false) else { return 0 };
        a.split("19:relayedpackets_useri").nth(1).and_then(|x| x.split('e').next()).and_then(|n| n.parse().ok()).unwrap_or(0)
    }
}

impl Drop for RtpengineUnderTest {
    fn drop(&mut self) {
        RTPENGINE_PID.store(0, Ordering::Relaxed);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(clippy::large_enum_variant)] // three values per bench run
enum Forwarder {
    Direct(Vec<SocketAddr>),
    Raw(RawForwarder),
    Relay(RelayUnderTest),
    Rtpengine(RtpengineUnderTest),
}

impl Forwarder {
    fn targets(&self) -> &[SocketAddr] {
        match self {
            Forwarder::Direct(t) => t,
            Forwarder::Raw(r) => &r.targets,
            Forwarder::Relay(r) => &r.targets,
            Forwarder::Rtpengine(r) => &r.targets,
        }
    }

    fn forwarded(&self) -> u64 {
        self.counts().0
    }

    /// (forwarded, dropped by the forwarder's own rules); the raw forwarder drops nothing.
    fn counts(&self) -> (u64, u64) {
        match self {
            Forwarder::Direct(_) => (0, 0),
            Forwarder::Raw(r) => (r.forwarded.load(Ordering::Relaxed), 0),
            Forwarder::Relay(r) => r.counts(),
            Forwarder::Rtpengine(r) => (r.forwarded(), 0),
        }
    }

    /// Waits (bounded, 5 s) until the forwarder's input queues are empty and the forwarded
    /// count has stopped moving.
    fn settle(&self) {
        let mut ports: Vec<u16> = self.targets().iter().map(|a| a.port()).collect();
        ports.sort_unstable();
        let mut last = self.forwarded();
        for _ in 0..250 {
            std::thread::sleep(Duration::from_millis(20));
            let now = self.forwarded();
            if now == last && udp6_queued_bytes(&ports) == 0 {
                return;
            }
            last = now;
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Direct,
    Raw,
    Uring,
    Epoll,
    /// The io_uring engine with `busy_poll` (never sleeps).
    UringBusy,
    Rtpengine,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Raw => "raw",
            Kind::Uring => "relay io_uring",
            Kind::Epoll => "relay epoll",
            Kind::UringBusy => "relay io_uring busy-poll",
            Kind::Rtpengine => "rtpengine 10 (userspace)",
        }
    }
}

fn make(kind: Kind, sessions: usize, gen: SocketAddr, sink: SocketAddr) -> Forwarder {
    match kind {
        Kind::Direct => Forwarder::Direct(vec![sink]),
        Kind::Raw => Forwarder::Raw(RawForwarder::start(sessions, sink)),
        Kind::Uring => Forwarder::Relay(RelayUnderTest::start(EngineChoice::IoUring, sessions, gen, sink)),
        Kind::Epoll => Forwarder::Relay(RelayUnderTest::start(EngineChoice::Epoll, sessions, gen, sink)),
        Kind::UringBusy => Forwarder::Relay(RelayUnderTest::start_with(
            RelayConfig { busy_poll: true, ..relay_config(EngineChoice::IoUring) },
            sessions,
            gen,
            sink,
        )),
        Kind::Rtpengine => Forwarder::Rtpengine(RtpengineUnderTest::start(&rtpengine_bin().expect("rtpengine installed"), sessions, gen, sink)),
    }
}

// ---------------------------------------------------------------------------------------------
// Generator

/// Datagrams per GSO send (UDP_SEGMENT): the kernel walks its stack once per message, so one
/// generator core can offer far more than one forwarder core can relay.
const SEG: usize = 16;

/// `BATCH` messages of `SEG` 172-byte datagrams each, every message with its UDP_SEGMENT cmsg.
struct GsoBatch {
    bufs: Vec<[u8; SEG * PKT]>,
    names: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    cmsgs: Vec<[u64; 4]>,
    hdrs: Vec<libc::mmsghdr>,
}

impl GsoBatch {
    fn new() -> GsoBatch {
        // SAFETY: plain C structs, all-zero is valid.
        unsafe {
            GsoBatch {
                bufs: vec![[0u8; SEG * PKT]; BATCH],
                names: vec![std::mem::zeroed(); BATCH],
                iovs: vec![std::mem::zeroed(); BATCH],
                cmsgs: vec![[0u64; 4]; BATCH],
                hdrs: vec![std::mem::zeroed(); BATCH],
            }
        }
    }

    fn set(&mut self, i: usize, dst: &SockAddr, seq: &mut u32) {
        for k in 0..SEG {
            *seq = seq.wrapping_add(1);
            rtp_header(&mut self.bufs[i][k * PKT..], *seq);
        }
        // SAFETY: copies a valid sockaddr into storage large enough for any.
        unsafe {
            std::ptr::copy_nonoverlapping(
                dst.as_ptr().cast::<u8>(),
                (&mut self.names[i] as *mut libc::sockaddr_storage).cast::<u8>(),
                dst.len() as usize,
            )
        };
        self.iovs[i] = libc::iovec { iov_base: self.bufs[i].as_mut_ptr().cast(), iov_len: SEG * PKT };
        let h = &mut self.hdrs[i].msg_hdr;
        h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = dst.len();
        h.msg_iov = &mut self.iovs[i];
        h.msg_iovlen = 1;
        h.msg_control = self.cmsgs[i].as_mut_ptr().cast();
        // SAFETY: CMSG_* only compute sizes and pointers inside the 32-byte, 8-aligned buffer.
        unsafe {
            h.msg_controllen = libc::CMSG_SPACE(2) as usize;
            let c = libc::CMSG_FIRSTHDR(h);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), PKT as u16);
        }
    }
}

const UDP_SEGMENT: libc::c_int = 103;

struct Generator {
    sock: UdpSocket,
    m: Mmsg,
    gso: GsoBatch,
    seq: u32,
}

struct Offered {
    sent: u64,
    elapsed: Duration,
}

impl Generator {
    /// A generator on ::1 (to forwarders' IPv6 legs) or 127.0.0.1 (straight to the sink).
    fn new(v6: bool) -> Generator {
        let sock = udp(if v6 { "[::1]:0" } else { "127.0.0.1:0" }, None);
        socket2::SockRef::from(&sock).set_send_buffer_size(4 << 20).expect("SO_SNDBUF");
        Generator { sock, m: Mmsg::new(), gso: GsoBatch::new(), seq: 0 }
    }

    fn addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    /// Fills single-datagram slot `i` for target `dst` with a fresh sequence number and send time.
    fn fill(&mut self, i: usize, dst: &SockAddr) {
        self.seq = self.seq.wrapping_add(1);
        rtp_header(&mut self.m.bufs[i], self.seq);
        self.m.bufs[i][12..20].copy_from_slice(&realtime_ns().to_le_bytes());
        self.m.set_dst(i, dst, PKT);
    }

    /// Offers `rate` packets/s round-robin over `targets` for `dur`: sendmmsg batches of GSO
    /// messages, `SEG` datagrams per target in turn.
    fn offer(&mut self, targets: &[SockAddr], rate: f64, dur: Duration) -> Offered {
        let total = (rate * dur.as_secs_f64()) as u64 / SEG as u64 * SEG as u64;
        let start = Instant::now();
        let mut sent = 0u64;
        let mut next = 0usize;
        let fd = self.sock.as_raw_fd();
        while sent < total && start.elapsed() < dur + Duration::from_millis(500) {
            let due = ((start.elapsed().as_secs_f64() * rate) as u64).min(total).saturating_sub(sent);
            // At most 64 datagrams per target per call: a paced stream, not a queue-filling burst.
            let msgs = (due as usize / SEG).min(BATCH).min(targets.len() * (64 / SEG));
            if msgs == 0 {
                std::hint::spin_loop();
                continue;
            }
            for i in 0..msgs {
                self.gso.set(i, &targets[next], &mut self.seq);
                next = (next + 1) % targets.len();
            }
            let mut done = 0;
            while done < msgs {
                // SAFETY: headers [done, msgs) point into the batch's buffers, names and cmsgs.
                let r = unsafe { libc::sendmmsg(fd, self.gso.hdrs[done..].as_mut_ptr(), (msgs - done) as u32, 0) };
                if r <= 0 {
                    break;
                }
                done += r as usize;
            }
            sent += (done * SEG) as u64;
        }
        Offered { sent, elapsed: start.elapsed() }
    }
}

// ---------------------------------------------------------------------------------------------
// Latency

struct Latency {
    p50_us: f64,
    p99_us: f64,
    received: usize,
    sent: usize,
}

/// Paces `rate` packets/s through the forwarder for `secs`, draining the sink in the same
/// thread, and returns one-way time percentiles: from the send time the generator writes into
/// the payload just before `sendmmsg` to the kernel's receive timestamp at the sink socket
/// (SO_TIMESTAMPNS), so how fast this thread drains the sink does not count.
fn measure_latency(gen: &mut Generator, sink: &UdpSocket, targets: &[SockAddr], rate: f64, secs: f64) -> Latency {
    let total = (rate * secs) as usize;
    let mut lat: Vec<u64> = Vec::with_capacity(total);
    let mut rx = Mmsg::new();
    let mut rx_ts = [0u64; BATCH];
    let on: libc::c_int = 1;
    // SAFETY: valid socket and option value.
    unsafe {
        libc::setsockopt(
            sink.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    let fd = gen.sock.as_raw_fd();
    let start = Instant::now();
    let mut sent = 0usize;
    let mut next = 0usize;
    let drain_until = |sent_all: bool, t: Instant| sent_all && t.elapsed() > Duration::from_millis(300);
    let mut finished_at = None;
    loop {
        if sent < total {
            let due = ((start.elapsed().as_secs_f64() * rate) as usize).min(total).saturating_sub(sent);
            let k = due.min(8);
            for i in 0..k {
                gen.fill(i, &targets[next]);
                next = (next + 1) % targets.len();
            }
            if k > 0 {
                sent += gen.m.send(fd, k);
            }
        } else if finished_at.is_none() {
            finished_at = Some(Instant::now());
        }
        let n = rx.recv_timestamped(sink.as_raw_fd(), &mut rx_ts);
        for (buf, &ts) in rx.bufs[..n].iter().zip(&rx_ts[..n]) {
            let sent_at = u64::from_le_bytes(buf[12..20].try_into().unwrap());
            lat.push(ts.saturating_sub(sent_at));
        }
        if lat.len() >= total || finished_at.is_some_and(|t| drain_until(true, t)) {
            break;
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() {
            f64::NAN
        } else {
            lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0
        }
    };
    Latency { p50_us: pct(0.50), p99_us: pct(0.99), received: lat.len(), sent }
}

/// Sends one packet and busy-waits for it at the sink: one unloaded one-way time.
fn ping(gen: &mut Generator, sink: &UdpSocket, target: &SockAddr, rx: &mut Mmsg) -> Duration {
    gen.fill(0, target);
    let t0 = Instant::now();
    gen.m.send(gen.sock.as_raw_fd(), 1);
    let deadline = t0 + Duration::from_secs(1);
    while Instant::now() < deadline {
        if rx.recv(sink.as_raw_fd()) > 0 {
            return t0.elapsed();
        }
        std::hint::spin_loop();
    }
    Duration::from_secs(1)
}

/// Drains the throughput sink on CPU 0 (blocking recvmmsg with a timeout, so it sleeps when idle).
struct SinkReader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SinkReader {
    fn start(sink: &UdpSocket) -> SinkReader {
        let sock = sink.try_clone().expect("clone sink");
        sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            pin_current_thread(GEN_CPU).expect("pin sink reader");
            let mut m = Mmsg::new();
            while !st.load(Ordering::Relaxed) {
                for i in 0..BATCH {
                    m.aim(i, 2048);
                }
                // SAFETY: headers point into m's buffers; blocks until one datagram or the timeout.
                unsafe {
                    libc::recvmmsg(
                        sock.as_raw_fd(),
                        m.hdrs.as_mut_ptr(),
                        BATCH as u32,
                        libc::MSG_WAITFORONE,
                        std::ptr::null_mut(),
                    )
                };
            }
        });
        SinkReader { stop, thread: Some(thread) }
    }
}

impl Drop for SinkReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CPU accounting of the forwarder under test

/// The raw forwarder's thread name; the relay's engine threads are `relay-N`, and io_uring's
/// kernel workers for this process (if any) `iou-wrk-*` / `iou-sqp-*`.
const RAW_THREAD: &str = "raw-fwd";

/// CPU time (ns, from schedstat) of this process's forwarder threads, or of the rtpengine
/// process while one runs: only one forwarder exists at a time, so this is the one under test.
fn forwarder_cpu_ns() -> u64 {
    let pid = RTPENGINE_PID.load(Ordering::Relaxed);
    if pid != 0 {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
        return dir
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
    }
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return 0 };
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            let comm = comm.trim_end();
            // Not `starts_with("relay-")`: this bench's own binary (main thread) is `relay-<hash>`.
            let engine = comm.strip_prefix("relay-").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            comm == RAW_THREAD || engine || comm.starts_with("iou-")
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Busy clock ticks (everything but idle and iowait, softirq included) of `cpu`, /proc/stat.
fn cpu_busy_ticks(cpu: usize) -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let name = format!("cpu{cpu} ");
    stat.lines()
        .find_map(|l| l.strip_prefix(&name))
        .map(|rest| {
            rest.split_whitespace()
                .enumerate()
                .filter(|&(i, _)| i != 3 && i != 4)
                .filter_map(|(_, v)| v.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

// ---------------------------------------------------------------------------------------------
// Throughput search

#[derive(Clone, Copy, Default)]
struct Step {
    offered_pps: f64,
    forwarded_pps: f64,
    /// Share of the offered packets not at the sink within `LATE` of the step's end.
    loss: f64,
    /// Packets forwarded, but later than `LATE` after the step (queued in the forwarder's input).
    late: u64,
    gen_ok: bool,
    /// Datagrams the kernel dropped at full IPv6 receive queues (only forwarder inputs receive
    /// IPv6 here): loss at the forwarder's door, i.e. the forwarder was too slow.
    input_queue_drops: u64,
    /// Datagrams the forwarder itself dropped (relay drop counters).
    forwarder_drops: u64,
    /// CPU time of the forwarder's threads during the step, ns.
    fwd_cpu_ns: u64,
    /// Busy time of the forwarder's core during the step (softirq included), ns.
    core_busy_ns: u64,
    forwarded: u64,
}

/// Bytes waiting in the receive queues of the IPv6 UDP sockets on `ports` (sorted), from
/// /proc/net/udp6 (local_address column 1, tx_queue:rx_queue column 4, both hex).
fn udp6_queued_bytes(ports: &[u16]) -> u64 {
    std::fs::read_to_string("/proc/net/udp6")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            let local = cols.nth(1)?;
            let queues = cols.nth(2)?;
            let port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
            ports.binary_search(&port).ok()?;
            u64::from_str_radix(queues.split_once(':')?.1, 16).ok()
        })
        .sum()
}

/// IPv4 UDP datagrams that arrived at a socket on this host, queued or dropped at a full queue
/// (Udp InDatagrams + InErrors, /proc/net/snmp). Only the sink receives IPv4 UDP in this bench,
/// so this counts what the forwarders delivered, independently of their own counters.
fn udp4_arrived() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter(|(n, _)| *n == "InDatagrams" || *n == "InErrors")
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum()
}

/// Udp6 RcvbufErrors from /proc/net/snmp6.
fn udp6_rcvbuf_errors() -> u64 {
    std::fs::read_to_string("/proc/net/snmp6")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Udp6RcvbufErrors"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// One step. A step that lost ≥ 0.1 % or that the generator could not offer (preempted on its
/// core) is tried up to twice more, so a single scheduling hiccup on the forwarder's core (shared
/// with whatever else the machine runs) does not end a search; forwarders are treated alike.
fn run_step(gen: &mut Generator, fwd: &Forwarder, targets: &[SockAddr], rate: f64, dur: Duration) -> Step {
    let mut s = one_step(gen, fwd, targets, rate, dur);
    for _ in 0..2 {
        if s.gen_ok && s.loss < MAX_LOSS {
            break;
        }
        s = one_step(gen, fwd, targets, rate, dur);
    }
    s
}

fn one_step(gen: &mut Generator, fwd: &Forwarder, targets: &[SockAddr], rate: f64, dur: Duration) -> Step {
    let (before, dropped_before) = fwd.counts();
    let q_before = udp6_rcvbuf_errors();
    let (cpu_before, busy_before) = (forwarder_cpu_ns(), cpu_busy_ticks(RELAY_CPU));
    let arrived_before = udp4_arrived();
    let o = gen.offer(targets, rate, dur);
    std::thread::sleep(LATE);
    let in_time = udp4_arrived() - arrived_before;
    fwd.settle();
    let (cpu_after, busy_after) = (forwarder_cpu_ns(), cpu_busy_ticks(RELAY_CPU));
    let (after, dropped_after) = fwd.counts();
    let forwarded = after - before;
    let secs = o.elapsed.as_secs_f64();
    let target_total = rate * dur.as_secs_f64();
    Step {
        offered_pps: o.sent as f64 / secs,
        forwarded_pps: forwarded as f64 / secs,
        loss: if o.sent == 0 { 1.0 } else { 1.0 - in_time.min(forwarded) as f64 / o.sent as f64 },
        late: forwarded.saturating_sub(in_time),
        gen_ok: o.sent as f64 >= 0.99 * target_total && secs <= dur.as_secs_f64() * 1.10,
        input_queue_drops: udp6_rcvbuf_errors() - q_before,
        forwarder_drops: dropped_after - dropped_before,
        fwd_cpu_ns: cpu_after.saturating_sub(cpu_before),
        core_busy_ns: (busy_after.saturating_sub(busy_before) as f64 * 1e9 / ticks_per_sec()) as u64,
        forwarded,
    }
}

struct SearchResult {
    best: Step,
    /// The step just above the best (what failed, and whether the generator offered it).
    fail: Option<Step>,
    gen_limited: bool,
}

/// Geometric steps (×1.5 from 25 kpps) until a step loses ≥ 0.1 %, then bisection. Steps are
/// capped at 95 % of the generator's measured ceiling: a forwarder still loss-free there is
/// reported as generator-limited (its real maximum is higher).
fn search(gen: &mut Generator, fwd: &Forwarder, plan: &Plan, ceiling: f64) -> SearchResult {
    let targets: Vec<SockAddr> = fwd.targets().iter().map(|&a| SockAddr::from(a)).collect();
    // Warm-up at a low rate (caches, first-packet paths).
    run_step(gen, fwd, &targets, 5000.0, Duration::from_millis(200));
    search_with(gen, plan, ceiling, |gen, rate, dur| run_step(gen, fwd, &targets, rate, dur))
}

/// rtpengine stops reading a socket for good once it found more than 50 datagrams queued on
/// five wake-ups (MAX_RECV_ITERS / MAX_RECV_LOOP_STRIKES in its media_socket.c; its poller is
/// edge-triggered, so a struck socket is never drained again). A step above its capacity would
/// therefore kill every later step: each step gets a fresh rtpengine with fresh sessions, warmed
/// up at 5 kpps like the others.
fn search_fresh_rtpengine(gen: &mut Generator, n: usize, sink: SocketAddr, plan: &Plan, ceiling: f64) -> SearchResult {
    search_with(gen, plan, ceiling, |gen, rate, dur| fresh_rtpengine_step(gen, n, sink, rate, dur))
}

fn fresh_rtpengine_step(gen: &mut Generator, n: usize, sink: SocketAddr, rate: f64, dur: Duration) -> Step {
    let fwd = make(Kind::Rtpengine, n, gen.addr(), sink);
    let targets: Vec<SockAddr> = fwd.targets().iter().map(|&a| SockAddr::from(a)).collect();
    one_step(gen, &fwd, &targets, 5000.0, Duration::from_millis(200));
    one_step(gen, &fwd, &targets, rate, dur)
}

fn search_with(gen: &mut Generator, plan: &Plan, ceiling: f64, mut run_step: impl FnMut(&mut Generator, f64, Duration) -> Step) -> SearchResult {
    let mut lo: Option<(f64, Step)> = None;
    let mut hi: Option<(f64, Step)> = None;
    let mut gen_limited = false;
    let cap = 0.95 * ceiling;
    let mut rate: f64 = 25_000.0;
    loop {
        let capped = rate >= cap;
        rate = rate.min(cap);
        let s = run_step(gen, rate, plan.step);
        if !s.gen_ok {
            gen_limited = true;
            break;
        }
        if s.loss < MAX_LOSS {
            lo = Some((rate, s));
            if capped {
                gen_limited = true;
                break;
            }
            rate *= 1.5;
        } else {
            hi = Some((rate, s));
            break;
        }
    }
    if let Some((mut hi_rate, _)) = hi {
        let mut lo_rate = lo.map_or(hi_rate / 4.0, |l| l.0);
        for _ in 0..plan.bisect {
            let mid = (lo_rate + hi_rate) / 2.0;
            let s = run_step(gen, mid, plan.step);
            if !s.gen_ok {
                gen_limited = true;
                break;
            }
            if s.loss < MAX_LOSS {
                lo = Some((mid, s));
                lo_rate = mid;
            } else {
                hi = Some((mid, s));
                hi_rate = mid;
            }
        }
    }
    SearchResult { best: lo.map(|l| l.1).unwrap_or_default(), fail: hi.map(|h| h.1), gen_limited }
}

/// The generator's own ceiling against these targets: unpaced, for one step.
fn generator_ceiling(gen: &mut Generator, fwd: &Forwarder, dur: Duration) -> f64 {
    let targets: Vec<SockAddr> = fwd.targets().iter().map(|&a| SockAddr::from(a)).collect();
    let o = gen.offer(&targets, 50_000_000.0, dur);
    std::thread::sleep(Duration::from_millis(50));
    o.sent as f64 / o.elapsed.as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// Memory

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn slab_bytes() -> u64 {
    let mi = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    mi.lines()
        .find(|l| l.starts_with("Slab:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Raises the soft fd limit to the hard one (and the hard one too, where permitted); returns
/// the limit in force.
fn raise_fd_limit() -> u64 {
    let want = libc::rlimit { rlim_cur: 200_000, rlim_max: 200_000 };
    // SAFETY: valid rlimit structs.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
            let mut cur = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur);
            cur.rlim_cur = cur.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &cur);
        }
        let mut cur = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur);
        cur.rlim_cur
    }
}

/// The machine is shared: other work on either core shows up here (and in the figures).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string()
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string()
}

// ---------------------------------------------------------------------------------------------

fn criterion_latency(c: &mut Criterion, plan: &Plan) {
    let mut group = c.benchmark_group("relay_latency_unloaded");
    group.sample_size(if plan.quick { 10 } else { 30 });
    group.warm_up_time(Duration::from_millis(if plan.quick { 200 } else { 500 }));
    group.measurement_time(Duration::from_millis(if plan.quick { 500 } else { 2000 }));
    for kind in [Kind::Direct, Kind::Raw, Kind::Uring, Kind::Epoll, Kind::UringBusy] {
        let mut gen = Generator::new(kind != Kind::Direct);
        let sink = udp("127.0.0.1:0", Some(4 << 20));
        let fwd = make(kind, 1, gen.addr(), sink.local_addr().unwrap());
        let target = SockAddr::from(fwd.targets()[0]);
        let mut rx = Mmsg::new();
        group.bench_function(kind.name(), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| ping(&mut gen, &sink, &target, &mut rx)).sum())
        });
    }
    group.finish();
}

struct LatencyRow {
    label: String,
    results: Vec<(Kind, Latency)>,
}

fn latency_rows(sessions: usize, rate: f64, plan: &Plan, label: String) -> LatencyRow {
    let mut results = Vec::new();
    for kind in [Kind::Direct, Kind::Raw, Kind::Uring, Kind::Epoll, Kind::UringBusy] {
        let mut gen = Generator::new(kind != Kind::Direct);
        let sink = udp("127.0.0.1:0", Some(4 << 20));
        sink.set_nonblocking(true).unwrap();
        let fwd = make(kind, sessions, gen.addr(), sink.local_addr().unwrap());
        let targets: Vec<SockAddr> = fwd.targets().iter().map(|&a| SockAddr::from(a)).collect();
        measure_latency(&mut gen, &sink, &targets, rate.min(5000.0), 0.2); // warm-up
        let l = measure_latency(&mut gen, &sink, &targets, rate, plan.latency_secs);
        results.push((kind, l));
    }
    LatencyRow { label, results }
}

fn print_latency(rows: &[LatencyRow]) {
    println!("\n### One-way latency (µs; added = forwarder − direct at the same percentile)\n");
    println!("| load | path | p50 | p99 | added p50 | added p99 | received/sent |");
    println!("|---|---|---|---|---|---|---|");
    for row in rows {
        let direct = &row.results[0].1;
        for (kind, l) in &row.results {
            let (a50, a99) = if *kind == Kind::Direct {
                ("–".to_string(), "–".to_string())
            } else {
                (format!("{:.1}", l.p50_us - direct.p50_us), format!("{:.1}", l.p99_us - direct.p99_us))
            };
            println!(
                "| {} | {} | {:.1} | {:.1} | {} | {} | {}/{} |",
                row.label,
                kind.name(),
                l.p50_us,
                l.p99_us,
                a50,
                a99,
                l.received,
                l.sent
            );
        }
    }
}

/// The common rate of the CPU-per-packet step: below every forwarder's maximum at every session
/// count on the 2-vCPU machine the README figures come from (so nothing queues up).
fn efficiency_rate(sessions: usize) -> f64 {
    if let Some(r) = std::env::var("RELAY_BENCH_EFF_RATE").ok().and_then(|v| v.parse().ok()) {
        return r;
    }
    let _ = sessions;
    150_000.0
}

fn print_efficiency(rows: &[(usize, Kind, f64, Step)]) {
    println!("\n### CPU per forwarded packet at a fixed rate (same rate for every forwarder)\n");
    println!("Thread = the forwarder's own threads (schedstat); core = its whole CPU, softirq included.");
    println!("Ratio = raw ÷ relay (above 1: the relay spends less CPU per packet than the baseline).\n");
    println!("| sessions | rate (pps) | forwarder | loss | thread ns/pkt | ratio | core ns/pkt | ratio |");
    println!("|---|---|---|---|---|---|---|---|");
    for &(n, kind, rate, s) in rows {
        let per = |ns: u64| if s.forwarded == 0 { f64::NAN } else { ns as f64 / s.forwarded as f64 };
        let raw = rows.iter().find(|r| r.0 == n && r.1 == Kind::Raw).map(|r| r.3);
        let ratio = |f: fn(&Step) -> u64| {
            raw.map_or("–".to_string(), |r| {
                let raw_per = f(&r) as f64 / r.forwarded.max(1) as f64;
                format!("{:.2}", raw_per / (f(&s) as f64 / s.forwarded.max(1) as f64))
            })
        };
        println!(
            "| {n} | {rate:.0}{} | {} | {:.3} % | {:.0} | {} | {:.0} | {} |",
            if s.gen_ok { "" } else { " (generator short)" },
            kind.name(),
            s.loss * 100.0,
            per(s.fwd_cpu_ns),
            ratio(|x| x.fwd_cpu_ns),
            per(s.core_busy_ns),
            ratio(|x| x.core_busy_ns),
        );
    }
}

fn main() {
    let plan = plan();
    let mut plan = plan;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let fd_limit = raise_fd_limit();
    // Every session needs SOCKETS_PER_SESSION descriptors (relay or raw); keep 500 spare.
    let fit = (fd_limit.saturating_sub(500) / SOCKETS_PER_SESSION) as usize;
    if plan.counts.iter().any(|&n| n > fit) {
        println!(
            "relay bench: RLIMIT_NOFILE is {fd_limit} and cannot be raised here: runs above {fit} sessions use {fit}"
        );
        plan.counts.retain(|&n| n < fit);
        plan.counts.push(fit);
    }
    let latency = std::env::var_os("RELAY_BENCH_NO_LATENCY").is_none();
    let read_sink = std::env::var_os("RELAY_BENCH_READ_SINK").is_some();
    if read_sink {
        println!("relay bench: throughput sink is read (RELAY_BENCH_READ_SINK)");
    }
    pin_current_thread(GEN_CPU).expect("pin generator to CPU 0");
    println!("relay bench: load average at start: {}", loadavg());
    println!(
        "relay bench: kernel {}, {} cores; forwarders pinned to CPU {RELAY_CPU}, generator+sink to CPU {GEN_CPU}{}",
        kernel_release(),
        cores,
        if plan.quick { " (QUICK mode)" } else { "" }
    );

    let mut c = Criterion::default().configure_from_args();
    if latency {
        criterion_latency(&mut c, &plan);
    }

    // Throughput search per session count, and memory at the largest count.
    let mut table = Vec::new();
    let mut efficiency = Vec::new();
    let mut memory = None;
    for &n in &plan.counts {
        let mut row = Vec::new();
        let with_rtpengine = rtpengine_bin().is_some();
        let kinds = [Kind::Raw, Kind::Uring, Kind::Epoll, Kind::Rtpengine];
        for kind in kinds.into_iter().filter(|&k| k != Kind::Rtpengine || with_rtpengine) {
            let mut gen = Generator::new(true);
            // By default the sink is never read: the forwarders' cost ends at handing datagrams
            // to the kernel (delivery into a full queue is a cheap drop). RELAY_BENCH_READ_SINK=1
            // drains it from a thread on CPU 0 (real enqueue cost; competes with the generator).
            let sink = udp("127.0.0.1:0", if read_sink { Some(4 << 20) } else { None });
            let _reader = read_sink.then(|| SinkReader::start(&sink));
            if kind == Kind::Rtpengine {
                // Its own process and fd table: 4 sockets per session.
                let n = n.min((fd_limit.saturating_sub(500) / 4) as usize);
                let ceiling = row.iter().map(|r: &(Kind, SearchResult, f64)| r.2).fold(f64::INFINITY, f64::min);
                let sink_addr = sink.local_addr().unwrap();
                let r = search_fresh_rtpengine(&mut gen, n, sink_addr, &plan, ceiling);
                let eff_rate = efficiency_rate(n);
                let eff = fresh_rtpengine_step(&mut gen, n, sink_addr, eff_rate, plan.step);
                eprintln!(
                    "  {n:>5} sessions, {:<15} max {:>9.0} pps (loss {:.4}%), at {eff_rate:.0} pps: loss {:.2}%, thread CPU {:.1} ms (a fresh rtpengine per step)",
                    kind.name(),
                    r.best.forwarded_pps,
                    r.best.loss * 100.0,
                    eff.loss * 100.0,
                    eff.fwd_cpu_ns as f64 / 1e6
                );
                efficiency.push((n, kind, eff_rate, eff));
                row.push((kind, r, ceiling));
                continue;
            }
            let (rss0, slab0) = (rss_bytes(), slab_bytes());
            let fwd = make(kind, n, gen.addr(), sink.local_addr().unwrap());
            if n == *plan.counts.last().unwrap() && kind == Kind::Uring {
                let (rss1, slab1) = (rss_bytes(), slab_bytes());
                memory = Some((n, rss1.saturating_sub(rss0) as f64 / n as f64, slab1.saturating_sub(slab0) as f64 / n as f64));
            }
            let ceiling = generator_ceiling(&mut gen, &fwd, plan.step / 2);
            let r = search(&mut gen, &fwd, &plan, ceiling);
            // The same fixed rate for every forwarder at this session count: CPU per packet.
            let eff_rate = efficiency_rate(n);
            let targets: Vec<SockAddr> = fwd.targets().iter().map(|&a| SockAddr::from(a)).collect();
            let eff = one_step(&mut gen, &fwd, &targets, eff_rate, plan.step);
            eprintln!(
                "  {n:>5} sessions, {:<15} at {eff_rate:.0} pps: forwarded {} (loss {:.4}%, gen_ok {}), thread CPU {:.1} ms, core busy {:.1} ms",
                kind.name(),
                eff.forwarded,
                eff.loss * 100.0,
                eff.gen_ok,
                eff.fwd_cpu_ns as f64 / 1e6,
                eff.core_busy_ns as f64 / 1e6
            );
            efficiency.push((n, kind, eff_rate, eff));
            eprintln!(
                "  {n:>5} sessions, {:<15} max {:>9.0} pps (loss {:.4}%), next step {} ; generator ceiling {:.0} pps{}",
                kind.name(),
                r.best.forwarded_pps,
                r.best.loss * 100.0,
                r.fail.map_or("none".into(), |f| format!(
                    "offered {:.0} forwarded {:.0} loss {:.2}% (late {}, input queue drops {}, forwarder drops {}) gen_ok {}",
                    f.offered_pps,
                    f.forwarded_pps,
                    f.loss * 100.0,
                    f.late,
                    f.input_queue_drops,
                    f.forwarder_drops,
                    f.gen_ok
                )),
                ceiling,
                if r.gen_limited { " [GENERATOR-LIMITED]" } else { "" }
            );
            row.push((kind, r, ceiling));
        }
        table.push((n, row));
    }

    println!("\n### Max forwarded packets/s with < 0.1 % loss (172-byte packets, IPv6 in -> IPv4 out)\n");
    println!("Ratios: relay ÷ raw; last column relay io_uring ÷ rtpengine (same generator, same core).\n");
    println!("| sessions | raw recvmmsg/sendmmsg | relay io_uring | ratio | relay epoll | ratio | rtpengine | io_uring ÷ rtpengine | lowest generator ceiling |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut half_rate_100 = None;
    for (n, row) in &table {
        let raw = &row[0].1;
        let fmt = |r: &SearchResult| {
            format!("{}{:.0}", if r.gen_limited { "≥ " } else { "" }, r.best.forwarded_pps)
        };
        // A generator-limited figure is a lower bound, so the ratio is a bound or unknown.
        let ratio = |r: &SearchResult| {
            let v = r.best.forwarded_pps / raw.best.forwarded_pps;
            match (r.gen_limited, raw.gen_limited) {
                (false, false) => format!("{v:.2}"),
                (true, false) => format!("≥ {v:.2}"),
                (false, true) => format!("≤ {v:.2}"),
                (true, true) => "n/a (both ≥ generator cap)".to_string(),
            }
        };
        let ceiling = row.iter().map(|r| r.2).fold(f64::INFINITY, f64::min);
        let (rtpe, vs_rtpe) = match row.iter().find(|r| r.0 == Kind::Rtpengine) {
            Some((_, r, _)) => {
                let relay = &row[1].1;
                let v = relay.best.forwarded_pps / r.best.forwarded_pps;
                let bound = match (relay.gen_limited, r.gen_limited) {
                    (false, false) => format!("{v:.2}"),
                    (true, false) => format!("≥ {v:.2}"),
                    (false, true) => format!("≤ {v:.2}"),
                    (true, true) => "n/a (both ≥ generator cap)".to_string(),
                };
                (fmt(r), bound)
            }
            None => ("not installed".to_string(), "–".to_string()),
        };
        println!(
            "| {n} | {} | {} | {} | {} | {} | {rtpe} | {vs_rtpe} | {:.0} |",
            fmt(raw),
            fmt(&row[1].1),
            ratio(&row[1].1),
            fmt(&row[2].1),
            ratio(&row[2].1),
            ceiling
        );
        if *n == 100 {
            half_rate_100 = Some(row[1].1.best.forwarded_pps / 2.0);
        }
    }
    print_efficiency(&efficiency);
    if let Some((n, rss, slab)) = memory {
        println!("\n### Memory per session ({n} sessions, io_uring engine)\n");
        println!("| user space (RSS growth) | kernel (slab growth: 2 sockets) |");
        println!("|---|---|");
        println!("| {:.0} B | {:.0} B |", rss, slab);
    }

    if !latency {
        return;
    }
    let mut rows = vec![latency_rows(1, 10_000.0, &plan, "1 session, 10 kpps".into())];
    rows.push(latency_rows(100, 10_000.0, &plan, "100 sessions, 10 kpps".into()));
    rows.push(latency_rows(100, 100_000.0, &plan, "100 sessions, 100 kpps".into()));
    if let Some(half) = half_rate_100 {
        rows.push(latency_rows(100, half, &plan, format!("100 sessions, {:.0} pps (½ relay max)", half)));
    }
    print_latency(&rows);
    println!("\nrelay bench: load average at end: {}", loadavg());
    c.final_summary();
}
