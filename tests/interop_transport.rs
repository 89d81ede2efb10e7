//! Transport behaviour of a running sixgate on loopback: CRLF keepalives on UDP and TCP, STUN
//! Binding on the SIP port (checked with coturn's `turnutils_stunclient`, a third-party client,
//! and with our own request), size limits, TCP framing errors and per-source caps.

mod common;
use common::{free_port, loopback_config, recv_retrying, tool, Sixgate};
use sixgate::transport::stun;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

fn targets(port: u16) -> [SocketAddr; 2] {
    [format!("[::1]:{port}").parse().unwrap(), format!("127.0.0.1:{port}").parse().unwrap()]
}

fn udp_client(target: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind(if target.is_ipv6() { "[::1]:0" } else { "127.0.0.1:0" }).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.connect(target).unwrap();
    s
}

/// An OPTIONS to the proxy. Each call gets its own branch: sixgate is transaction-stateful, so
/// a repeated branch would be a retransmission of an earlier request.
fn options(extra: &str, pad: usize) -> Vec<u8> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "OPTIONS sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKt1-{n};rport\r\nMax-Forwards: 70\r\n\
         From: <sip:t@localhost>;tag=1\r\nTo: <sip:localhost>\r\nCall-ID: t1\r\nCSeq: 1 OPTIONS\r\nX-Pad: {}\r\n{extra}\
         Content-Length: 0\r\n\r\n",
        "p".repeat(pad)
    )
    .into_bytes()
}

fn recv_text(s: &UdpSocket) -> String {
    let mut buf = [0u8; 70000];
    let n = recv_retrying(s, &mut buf, "an answer");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn keepalive_stun_and_limits() {
    let port = free_port();
    let sg = Sixgate::start(port, &loopback_config(port, "[limits]\nmax_message_bytes = 2048\nmax_tcp_connections_per_source = 2\n"));
    for target in targets(sg.port) {
        // CRLF ping over UDP gets a single CRLF back.
        let u = udp_client(target);
        u.send(b"\r\n\r\n").unwrap();
        let mut buf = [0u8; 64];
        let n = recv_retrying(&u, &mut buf, "udp pong");
        assert_eq!(&buf[..n], b"\r\n", "udp pong from {target}");

        // STUN Binding on the SIP port returns our own address, XOR-mapped.
        let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        req.extend_from_slice(&[7u8; 12]);
        u.send(&req).unwrap();
        let n = recv_retrying(&u, &mut buf, "stun answer");
        assert_eq!(stun::decode_xor_mapped(&buf[..n]), Some(u.local_addr().unwrap()), "stun from {target}");

        // The received/rport stamp: the answer to a request from an address that differs from
        // its Via sent-by tells the phone its public address.
        u.send(&options("", 0)).unwrap();
        let a = recv_text(&u);
        assert!(a.starts_with("SIP/2.0 200 OK\r\n"), "{a}");
        let local = u.local_addr().unwrap();
        assert!(a.contains(&format!(";rport={};received={}", local.port(), local.ip())), "{a}");

        // Over the size limit: refused with 513, and the next message is served as usual.
        u.send(&options("", 3000)).unwrap();
        let a = recv_text(&u);
        assert!(a.starts_with("SIP/2.0 513 Message Too Large\r\n"), "{a}");

        // Garbage that cannot be answered is dropped; the server keeps serving.
        u.send(b"\x7f\xff garbage with no headers").unwrap();
        u.send(&options("", 0)).unwrap();
        assert!(recv_text(&u).starts_with("SIP/2.0 200 OK\r\n"));

        // CRLF ping over TCP, then an OPTIONS on the same connection.
        let mut t = TcpStream::connect(target).unwrap();
        t.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        t.write_all(b"\r\n\r\n").unwrap();
        let n = t.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"\r\n", "tcp pong from {target}");
        t.write_all(&options("", 0)).unwrap();
        let mut resp = vec![0u8; 4096];
        let n = t.read(&mut resp).unwrap();
        assert!(resp[..n].starts_with(b"SIP/2.0 200 OK\r\n"), "{}", String::from_utf8_lossy(&resp[..n]));

        // Per-source cap: with two connections open, a third is closed at once.
        let t2 = TcpStream::connect(target).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let mut t3 = TcpStream::connect(target).unwrap();
        t3.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let closed = matches!(t3.read(&mut buf), Ok(0) | Err(_));
        assert!(closed, "third connection from one source must be refused");
        drop((t2, t3));

        // A stream message without Content-Length: answered 400, then the connection is closed.
        let no_cl = String::from_utf8(options("", 0)).unwrap().replace("Content-Length: 0\r\n", "");
        t.write_all(no_cl.as_bytes()).unwrap();
        let n = t.read(&mut resp).unwrap();
        let a = String::from_utf8_lossy(&resp[..n]).into_owned();
        assert!(a.starts_with("SIP/2.0 400 Content-Length required on stream transports\r\n"), "{a}");
        assert!(matches!(t.read(&mut buf), Ok(0) | Err(_)), "connection closed after a framing error");
    }
}

#[test]
fn turnutils_stunclient_learns_its_address() {
    let port = free_port();
    let sg = Sixgate::start(port, &loopback_config(port, ""));
    for (ip, want) in [("127.0.0.1", "UDP reflexive addr: 127.0.0.1:"), ("::1", "UDP reflexive addr: ::1:")] {
        let out = Command::new("timeout")
            .arg("20")
            .arg(tool("turnutils_stunclient"))
            .args(["-p", &sg.port.to_string(), ip])
            .output()
            .expect("run turnutils_stunclient");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains(want), "stunclient against {ip}: {}\n{text}", out.status);
    }
}

/// A peer that trickles a message one byte at a time is closed once the message timeout passes
/// (slowloris), even though it is never idle.
#[test]
fn tcp_trickled_message_is_cut_off() {
    let port = free_port();
    let sg = Sixgate::start(port, &loopback_config(port, "[limits]\ntcp_message_timeout_secs = 1\n"));
    for target in targets(sg.port) {
        let mut t = TcpStream::connect(target).unwrap();
        t.set_read_timeout(Some(Duration::from_millis(250))).unwrap();
        t.write_all(b"OPTIONS sip:localhost SIP/2.0\r\nVia: ").unwrap();
        let mut buf = [0u8; 64];
        let mut closed_after = None;
        for i in 0..40 {
            // One byte every ~250 ms: never idle, never finishing the header block.
            let wrote = t.write_all(b"x").is_ok();
            let closed = match t.read(&mut buf) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            };
            if !wrote || closed {
                closed_after = Some(i);
                break;
            }
        }
        let i = closed_after.unwrap_or_else(|| panic!("{target}: a trickling peer was never closed"));
        assert!(i >= 2, "{target}: closed before the message timeout could have passed ({i} bytes)");
    }
}
