//! Starts the relay with N sessions between an IPv6 and an IPv4 address, so any external load
//! generator can drive it without the proxy.
//!
//! ```text
//! cargo run --release -p sixgate-relay --example relay_sessions -- \
//!     --v6 ::1 --v4 127.0.0.1 --sessions 100 [--peer-a '[::1]:40000'] [--peer-b 127.0.0.1:50000] \
//!     [--duration 30] [--engine auto|io_uring|epoll] [--cpus 1] [--ports 30000-39999]
//! ```
//! Leg A is IPv6, leg B IPv4. With `--peer-a`/`--peer-b`, session *i* expects its peer at that
//! address with the port plus 2·i (strict source); without, the leg latches to whoever sends
//! first. Prints one JSON line per session with its ports, events as JSON lines while running,
//! and each session's stats as JSON lines on exit (SIGINT or `--duration` seconds).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sixgate_relay::{EngineChoice, Event, Family, LegSpec, LegStats, Relay, RelayConfig, SessionSpec};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

struct Args {
    v6: Ipv6Addr,
    v4: Ipv4Addr,
    sessions: usize,
    peer_a: Option<SocketAddr>,
    peer_b: Option<SocketAddr>,
    duration: Option<Duration>,
    engine: EngineChoice,
    cpus: Vec<usize>,
    ports: (u16, u16),
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        v6: Ipv6Addr::LOCALHOST,
        v4: Ipv4Addr::LOCALHOST,
        sessions: 1,
        peer_a: None,
        peer_b: None,
        duration: None,
        engine: EngineChoice::Auto,
        cpus: Vec::new(),
        ports: (30000, 39999),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        let bad = |e: &dyn std::fmt::Display| format!("{flag}: {e}");
        match flag.as_str() {
            "--v6" => a.v6 = val()?.parse().map_err(|e| bad(&e))?,
            "--v4" => a.v4 = val()?.parse().map_err(|e| bad(&e))?,
            "--sessions" => a.sessions = val()?.parse().map_err(|e| bad(&e))?,
            "--peer-a" => a.peer_a = Some(val()?.parse().map_err(|e| bad(&e))?),
            "--peer-b" => a.peer_b = Some(val()?.parse().map_err(|e| bad(&e))?),
            "--duration" => a.duration = Some(Duration::from_secs_f64(val()?.parse().map_err(|e| bad(&e))?)),
            "--engine" => {
                a.engine = match val()?.as_str() {
                    "auto" => EngineChoice::Auto,
                    "io_uring" => EngineChoice::IoUring,
                    "epoll" => EngineChoice::Epoll,
                    other => return Err(format!("--engine: unknown engine {other}")),
                }
            }
            "--cpus" => {
                a.cpus = val()?.split(',').map(|c| c.parse().map_err(|e| bad(&e))).collect::<Result<_, _>>()?
            }
            "--ports" => {
                let v = val()?;
                let (lo, hi) = v.split_once('-').ok_or(format!("--ports: expected FIRST-LAST, got {v}"))?;
                a.ports = (lo.parse().map_err(|e| bad(&e))?, hi.parse().map_err(|e| bad(&e))?);
            }
            "-h" | "--help" => return Err("see the doc comment at the top of relay_sessions.rs".into()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if matches!(a.peer_a, Some(p) if !p.is_ipv6()) || matches!(a.peer_b, Some(p) if !p.is_ipv4()) {
        return Err("--peer-a must be IPv6 and --peer-b IPv4".into());
    }
    Ok(a)
}

fn nth_peer(base: Option<SocketAddr>, i: usize) -> Option<SocketAddr> {
    base.map(|mut p| {
        p.set_port(p.port().wrapping_add((2 * i) as u16));
        p
    })
}

fn leg(family: Family, peer: Option<SocketAddr>) -> LegSpec {
    // Given peers are strict; unknown ones latch.
    LegSpec { latch: peer.is_none(), ..LegSpec::new(family, peer) }
}

fn stats_json(s: &LegStats) -> String {
    format!(
        concat!(
            "{{\"rx_rtp\":{},\"rx_rtp_bytes\":{},\"rx_rtcp\":{},\"tx_rtp\":{},\"tx_rtcp\":{},",
            "\"drops\":{{\"strict_source\":{},\"no_destination\":{},\"truncated\":{},\"send_failed\":{}}},",
            "\"lost\":{},\"jitter_us\":{}}}"
        ),
        s.rx_rtp.packets,
        s.rx_rtp.bytes,
        s.rx_rtcp.packets,
        s.tx_rtp.packets,
        s.tx_rtcp.packets,
        s.drops.strict_source,
        s.drops.no_destination,
        s.drops.truncated,
        s.drops.send_failed,
        s.rtp.lost,
        s.rtp.jitter.as_micros()
    )
}

fn event_json(e: &Event) -> String {
    match e {
        Event::FirstPacket { session, leg, from } => {
            format!("{{\"event\":\"first_packet\",\"session\":{},\"leg\":\"{leg:?}\",\"from\":\"{from}\"}}", session.0)
        }
        Event::Latched { session, leg, channel, peer } => format!(
            "{{\"event\":\"latched\",\"session\":{},\"leg\":\"{leg:?}\",\"channel\":\"{channel:?}\",\"peer\":\"{peer}\"}}",
            session.0
        ),
        Event::Relatched { session, leg, channel, from, to } => format!(
            "{{\"event\":\"relatched\",\"session\":{},\"leg\":\"{leg:?}\",\"channel\":\"{channel:?}\",\"from\":\"{from}\",\"to\":\"{to}\"}}",
            session.0
        ),
        Event::MediaTimeout { session, leg } => {
            format!("{{\"event\":\"media_timeout\",\"session\":{},\"leg\":\"{leg:?}\"}}", session.0)
        }
        Event::Closed { session, .. } => format!("{{\"event\":\"closed\",\"session\":{}}}", session.0),
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("relay_sessions: {e}");
            std::process::exit(2);
        }
    };
    let cfg = RelayConfig {
        bind_v4: Some(args.v4),
        bind_v6: Some(args.v6),
        ports_v4: args.ports,
        ports_v6: args.ports,
        engine: args.engine,
        cpus: args.cpus.clone(),
        ..RelayConfig::default()
    };
    let (relay, events) = match Relay::start(cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("relay_sessions: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("relay_sessions: engine {:?}", relay.engine());
    let mut sessions = Vec::with_capacity(args.sessions);
    for i in 0..args.sessions {
        let spec = SessionSpec {
            legs: [leg(Family::V6, nth_peer(args.peer_a, i)), leg(Family::V4, nth_peer(args.peer_b, i))],
            media_timeout: None,
        };
        match relay.create_session(spec) {
            Ok(s) => {
                println!(
                    "{{\"session\":{},\"a\":{{\"rtp\":\"{}\",\"rtcp\":\"{}\"}},\"b\":{{\"rtp\":\"{}\",\"rtcp\":\"{}\"}}}}",
                    s.id.0, s.legs[0].rtp, s.legs[0].rtcp, s.legs[1].rtp, s.legs[1].rtcp
                );
                sessions.push(s);
            }
            Err(e) => {
                eprintln!("relay_sessions: session {i}: {e}");
                break;
            }
        }
    }
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    let started = Instant::now();
    let mut pending = Vec::new();
    while !STOP.load(Ordering::Relaxed) && !matches!(args.duration, Some(d) if started.elapsed() >= d) {
        if let Some(e) = events.recv_timeout(Duration::from_millis(100)) {
            println!("{}", event_json(&e));
        }
        events.drain(&mut pending);
        for e in pending.drain(..) {
            println!("{}", event_json(&e));
        }
    }
    for s in &sessions {
        match relay.stats(s.id).and_then(|t| t.wait(Duration::from_secs(2))) {
            Ok(st) => println!(
                "{{\"stats\":{},\"a\":{},\"b\":{}}}",
                s.id.0,
                stats_json(&st.legs[0]),
                stats_json(&st.legs[1])
            ),
            Err(e) => eprintln!("relay_sessions: stats of session {}: {e}", s.id.0),
        }
    }
}
