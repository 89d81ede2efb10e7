//! A relay session: two legs, each with an RTP and an RTCP channel; which source is a party
//! (strict source, latching, re-latching), where an accepted datagram goes, per-leg statistics
//! and the media timeout.
//!
//! Sans-IO: the engine hands in (leg, socket, source, bytes, now) and gets a [`Route`] back;
//! events come out through a callback. It never allocates, and never forwards a datagram from a
//! non-party or to an address that is not the other leg's party ("RTP bleed").
//!
//! # Latching and the re-latch rule
//! * A leg with `latch = false` accepts only datagrams from the announced peer (RTCP: the
//!   announced port + 1, or the same port with rtcp-mux).
//! * A leg with `latch = true` (symmetric RTP / comedia) locks each channel to the source of the
//!   first well-formed packet (RTP v2 on the RTP channel, RTCP on the RTCP channel) and from
//!   then on drops everything else as `StrictSource`. Until it latches, media towards the leg
//!   goes to the announced address, if any.
//! * **Re-latch rule**: a latched channel moves to a new source only if that source sends a
//!   well-formed packet *and* the current source has been silent for at least
//!   `relatch_after` (default 1 s). An intruder can therefore never take over a live stream;
//!   a phone whose NAT binding changed, or a new media source after a transfer, is followed
//!   once the old source has stopped. [`Session::set_peer`] with a *different* SDP address clears
//!   the latch (the same address again, e.g. a session refresh or hold, keeps it).
//! * **RTCP follows RTP**: on an rtcp-mux leg RTCP is accepted only from the RTP party (one
//!   5-tuple; RTCP may make the first latch but only RTP re-latches); on a leg with a separate
//!   RTCP port, once RTP has latched, RTCP is accepted, latched and re-latched only from the RTP
//!   party's IP address, and an RTCP latch on another IP is dropped when RTP (re)latches. RTCP
//!   is sparse (one packet every few seconds), so its own channel is "silent" most of the time
//!   and would otherwise be easy to take over mid-call.
//! * **Latch scope**: with `latch_from = Some(ip)`, latching and re-latching accept only sources
//!   with that IP address (any port). The proxy sets it to the address the leg's signaling came
//!   from (a NATed phone's public address, RFC 3581 `received`), so a stranger who guesses a
//!   fresh relay port cannot latch before the real party and receive its media (the "RTP bleed"
//!   race). `None` lets any source latch, as plain comedia does.

use std::net::{IpAddr, SocketAddr};

use crate::stats::{is_rtcp, Counter, DropCounts, DropReason, LegStats, RtpHeader, RtpRxStats};

/// Which of a leg's two sockets (or, with rtcp-mux, which kind of packet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Rtp = 0,
    Rtcp = 1,
}

/// Rules shared by every session of a relay.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub relatch_after_ns: u64,
}

/// What the session wants known (emitted through the engine's event queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    FirstPacket { leg: usize, from: SocketAddr },
    Latched { leg: usize, channel: Channel, peer: SocketAddr },
    Relatched { leg: usize, channel: Channel, from: SocketAddr, to: SocketAddr },
    MediaTimeout { leg: usize },
}

/// Where an arriving datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Send it out of `leg`'s `socket` to `dst`.
    Forward { leg: usize, socket: Channel, dst: SocketAddr },
    Drop(DropReason),
}

/// A leg's static choices.
#[derive(Debug, Clone, Copy)]
pub struct LegOptions {
    pub latch: bool,
    pub rtcp_mux: bool,
    /// RTP timestamp clock rate for jitter (8000 for G.711).
    pub clock_rate: u32,
    /// Only sources with this IP address may latch or re-latch (see the module docs).
    pub latch_from: Option<IpAddr>,
}

impl LegOptions {
    #[inline]
    fn may_latch(&self, src: SocketAddr) -> bool {
        self.latch && self.latch_from.is_none_or(|ip| ip == src.ip())
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Peer {
    announced: Option<SocketAddr>,
    latched: Option<SocketAddr>,
    last_rx_ns: Option<u64>,
}

impl Peer {
    fn current(&self) -> Option<SocketAddr> {
        self.latched.or(self.announced)
    }
}

fn same(a: Option<SocketAddr>, b: SocketAddr) -> bool {
    matches!(a, Some(a) if a.ip() == b.ip() && a.port() == b.port())
}

#[derive(Debug, Clone)]
struct Leg {
    opts: LegOptions,
    peers: [Peer; 2],
    rx: [Counter; 2],
    tx: [Counter; 2],
    drops: DropCounts,
    rtp: RtpRxStats,
    last_rx_ns: Option<u64>,
    timed_out: bool,
}

impl Leg {
    fn new(opts: LegOptions, peer: Option<SocketAddr>) -> Leg {
        let mut leg = Leg {
            opts,
            peers: [Peer::default(); 2],
            rx: [Counter::default(); 2],
            tx: [Counter::default(); 2],
            drops: DropCounts::default(),
            rtp: RtpRxStats::new(opts.clock_rate),
            last_rx_ns: None,
            timed_out: false,
        };
        leg.announce(peer);
        leg
    }

    fn announce(&mut self, peer: Option<SocketAddr>) {
        self.peers[0].announced = peer;
        self.peers[1].announced = peer.map(|mut a| {
            if !self.opts.rtcp_mux {
                a.set_port(a.port().wrapping_add(1));
            }
            a
        });
    }

    /// Where RTCP for this leg goes: (rtcp-mux) the RTP party; else the latched RTCP source,
    /// else the port above a latched RTP source, else the announced RTCP address.
    fn destination(&self, channel: Channel) -> Option<SocketAddr> {
        match channel {
            Channel::Rtp => self.peers[0].current(),
            Channel::Rtcp if self.opts.rtcp_mux => self.peers[0].current(),
            // `on_packet` keeps an RTCP latch on the RTP party's IP (RTCP follows RTP).
            Channel::Rtcp => self.peers[1].latched.or_else(|| {
                self.peers[0].latched.map(|mut a| {
                    a.set_port(a.port().wrapping_add(1));
                    a
                })
            }).or(self.peers[1].announced),
        }
    }
}

/// One relayed call: legs 0 (A) and 1 (B).
#[derive(Debug, Clone)]
pub struct Session {
    legs: [Leg; 2],
    created_ns: u64,
    media_timeout_ns: u64,
}

impl Session {
    pub fn new(legs: [(LegOptions, Option<SocketAddr>); 2], now_ns: u64, media_timeout_ns: u64) -> Session {
        Session {
            legs: [Leg::new(legs[0].0, legs[0].1), Leg::new(legs[1].0, legs[1].1)],
            created_ns: now_ns,
            media_timeout_ns,
        }
    }

    pub fn rtcp_mux(&self, leg: usize) -> bool {
        self.legs[leg].opts.rtcp_mux
    }

    /// A new SDP address for `leg` (answer, re-INVITE). A different address clears the latch so
    /// the leg re-learns; the same address again (session refresh, hold) keeps the latched party,
    /// so media never falls back to an SDP address behind a NAT.
    pub fn set_peer(&mut self, leg: usize, peer: Option<SocketAddr>) {
        let l = &mut self.legs[leg];
        if l.peers[0].announced == peer {
            return;
        }
        l.announce(peer);
        for p in &mut l.peers {
            p.latched = None;
        }
    }

    /// Decides what to do with a datagram that arrived on `leg`'s `socket` from `src`.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn on_packet(
        &mut self,
        leg: usize,
        socket: Channel,
        src: SocketAddr,
        pkt: &[u8],
        now_ns: u64,
        rules: &Rules,
        emit: &mut impl FnMut(SessionEvent),
    ) -> Route {
        let other = 1 - leg;
        let this = &mut self.legs[leg];
        let channel = match socket {
            Channel::Rtp if this.opts.rtcp_mux && is_rtcp(pkt) => Channel::Rtcp,
            s => s,
        };
        let rtp = if channel == Channel::Rtp { RtpHeader::parse(pkt) } else { None };
        let well_formed = match channel {
            Channel::Rtp => rtp.is_some(),
            Channel::Rtcp => is_rtcp(pkt),
        };
        // With rtcp-mux, RTP and RTCP share one party; without, RTCP latches only from the IP
        // its RTP party has latched to (see the module docs).
        let mux = this.opts.rtcp_mux;
        let rtp_ip = this.peers[0].latched.map(|a| a.ip());
        let follows_rtp = channel == Channel::Rtp || mux || rtp_ip.is_none_or(|ip| ip == src.ip());
        if !follows_rtp {
            // Separate RTCP port, RTP latched elsewhere: whoever this is (even an earlier RTCP
            // latch, made before RTP latched), it is not the RTP party.
            this.drops.add(DropReason::StrictSource);
            return Route::Drop(DropReason::StrictSource);
        }
        let may_latch = this.opts.may_latch(src);
        let peer = &mut this.peers[if mux { 0 } else { channel as usize }];
        let mut relatched_rtp = false;
        if !same(peer.latched, src) {
            let accepted = match peer.latched {
                None if !this.opts.latch => same(peer.announced, src),
                None if well_formed && may_latch => {
                    peer.latched = Some(src);
                    emit(SessionEvent::Latched { leg, channel, peer: src });
                    true
                }
                Some(old)
                    if may_latch
                        && well_formed
                        && !(mux && channel == Channel::Rtcp)
                        && !matches!(peer.last_rx_ns, Some(t) if now_ns.saturating_sub(t) < rules.relatch_after_ns) =>
                {
                    peer.latched = Some(src);
                    emit(SessionEvent::Relatched { leg, channel, from: old, to: src });
                    true
                }
                _ => false,
            };
            if !accepted {
                this.drops.add(DropReason::StrictSource);
                return Route::Drop(DropReason::StrictSource);
            }
            relatched_rtp = channel == Channel::Rtp && !mux;
        }
        peer.last_rx_ns = Some(now_ns);
        if relatched_rtp && this.peers[1].latched.is_some_and(|r| r.ip() != src.ip()) {
            // RTP (re)latched to another host: an RTCP latch elsewhere is not its party's.
            this.peers[1].latched = None;
        }
        if this.last_rx_ns.is_none() {
            emit(SessionEvent::FirstPacket { leg, from: src });
        }
        this.last_rx_ns = Some(now_ns);
        this.timed_out = false;
        this.rx[channel as usize].add(pkt.len());
        if let Some(h) = rtp {
            this.rtp.on_packet(&h, now_ns);
        }
        let out = &mut self.legs[other];
        match out.destination(channel) {
            Some(dst) => {
                out.tx[channel as usize].add(pkt.len());
                let socket = if out.opts.rtcp_mux { Channel::Rtp } else { channel };
                Route::Forward { leg: other, socket, dst }
            }
            None => {
                self.legs[leg].drops.add(DropReason::NoDestination);
                Route::Drop(DropReason::NoDestination)
            }
        }
    }

    /// Charges a drop that the engine noticed (truncated receive) to the arrival leg.
    pub fn count_drop(&mut self, leg: usize, reason: DropReason) {
        self.legs[leg].drops.add(reason);
    }

    /// A forwarded datagram the kernel refused: undo its `tx` count on the destination leg and
    /// charge a `SendFailed` drop there.
    pub fn send_failed(&mut self, out_leg: usize, channel: Channel, len: usize) {
        let l = &mut self.legs[out_leg];
        let c = &mut l.tx[channel as usize];
        c.packets = c.packets.saturating_sub(1);
        c.bytes = c.bytes.saturating_sub(len as u64);
        l.drops.add(DropReason::SendFailed);
    }

    /// Raises `MediaTimeout` once per silence for each leg that received nothing for the
    /// timeout (counted from creation if it never received anything).
    /// `emit` returns whether the event was delivered; one that was not is raised again on the
    /// next check.
    pub fn check_timeout(&mut self, now_ns: u64, emit: &mut impl FnMut(SessionEvent) -> bool) {
        if self.media_timeout_ns == 0 {
            return;
        }
        for (i, leg) in self.legs.iter_mut().enumerate() {
            let since = leg.last_rx_ns.unwrap_or(self.created_ns);
            if !leg.timed_out && now_ns.saturating_sub(since) >= self.media_timeout_ns {
                leg.timed_out = emit(SessionEvent::MediaTimeout { leg: i });
            }
        }
    }

    /// The current party of `leg`'s channel (latched, else announced).
    pub fn peer(&self, leg: usize, channel: Channel) -> Option<SocketAddr> {
        self.legs[leg].peers[channel as usize].current()
    }

    pub fn stats(&self, leg: usize, now_ns: u64) -> LegStats {
        let l = &self.legs[leg];
        LegStats {
            rx_rtp: l.rx[0],
            rx_rtcp: l.rx[1],
            tx_rtp: l.tx[0],
            tx_rtcp: l.tx[1],
            drops: l.drops,
            last_seen_ago: l.last_rx_ns.map(|t| std::time::Duration::from_nanos(now_ns.saturating_sub(t))),
            rtp: (&l.rtp).into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const RULES: Rules = Rules { relatch_after_ns: 1000 * MS };

    fn rtp(seq: u16, ssrc: u32) -> [u8; 172] {
        let mut p = [0u8; 172];
        p[0] = 0x80;
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        p
    }

    const RTCP: [u8; 8] = [0x80, 200, 0, 1, 0, 0, 0, 1];

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn opts(latch: bool, rtcp_mux: bool) -> LegOptions {
        LegOptions { latch, rtcp_mux, clock_rate: 8000, latch_from: None }
    }

    fn session(a: (bool, Option<&str>), b: (bool, Option<&str>)) -> Session {
        Session::new(
            [(opts(a.0, false), a.1.map(addr)), (opts(b.0, false), b.1.map(addr))],
            0,
            5000 * MS,
        )
    }

    fn run(s: &mut Session, leg: usize, ch: Channel, src: &str, pkt: &[u8], now: u64) -> (Route, Vec<SessionEvent>) {
        let mut ev = Vec::new();
        let r = s.on_packet(leg, ch, addr(src), pkt, now, &RULES, &mut |e| ev.push(e));
        (r, ev)
    }

    #[test]
    fn announced_peers_forward_both_ways_without_latching() {
        let mut s = session((false, Some("[2001:db8::1]:4000")), (false, Some("192.0.2.1:5000")));
        let (r, _) = run(&mut s, 0, Channel::Rtp, "[2001:db8::1]:4000", &rtp(1, 1), 0);
        assert_eq!(r, Route::Forward { leg: 1, socket: Channel::Rtp, dst: addr("192.0.2.1:5000") });
        let (r, _) = run(&mut s, 1, Channel::Rtcp, "192.0.2.1:5001", &RTCP, 0);
        assert_eq!(r, Route::Forward { leg: 0, socket: Channel::Rtcp, dst: addr("[2001:db8::1]:4001") });
    }

    #[test]
    fn strict_leg_drops_anyone_else() {
        let mut s = session((false, Some("192.0.2.1:4000")), (false, Some("192.0.2.2:5000")));
        let (r, _) = run(&mut s, 0, Channel::Rtp, "192.0.2.66:4000", &rtp(1, 1), 0);
        assert_eq!(r, Route::Drop(DropReason::StrictSource));
        assert_eq!(s.stats(0, 0).drops.strict_source, 1);
        assert_eq!(s.stats(1, 0).tx_rtp.packets, 0);
    }

    #[test]
    fn latching_leg_learns_first_source_then_locks() {
        let mut s = session((true, Some("10.0.0.5:4000")), (false, Some("192.0.2.2:5000")));
        // Before latching, media towards leg A goes to the SDP address.
        let (r, _) = run(&mut s, 1, Channel::Rtp, "192.0.2.2:5000", &rtp(1, 7), 0);
        assert_eq!(r, Route::Forward { leg: 0, socket: Channel::Rtp, dst: addr("10.0.0.5:4000") });
        // The NATed phone's first packet comes from its public address and latches.
        let (r, ev) = run(&mut s, 0, Channel::Rtp, "203.0.113.7:61000", &rtp(1, 9), MS);
        assert!(matches!(r, Route::Forward { leg: 1, .. }));
        assert!(ev.contains(&SessionEvent::Latched { leg: 0, channel: Channel::Rtp, peer: addr("203.0.113.7:61000") }));
        assert!(ev.contains(&SessionEvent::FirstPacket { leg: 0, from: addr("203.0.113.7:61000") }));
        // Now media towards A follows the latched address; an intruder is dropped.
        let (r, _) = run(&mut s, 1, Channel::Rtp, "192.0.2.2:5000", &rtp(2, 7), 2 * MS);
        assert_eq!(r, Route::Forward { leg: 0, socket: Channel::Rtp, dst: addr("203.0.113.7:61000") });
        let (r, ev) = run(&mut s, 0, Channel::Rtp, "198.51.100.9:1234", &rtp(1, 666), 3 * MS);
        assert_eq!((r, ev.len()), (Route::Drop(DropReason::StrictSource), 0));
        // RTCP towards A goes to the port above the latched RTP source until RTCP latches.
        let (r, _) = run(&mut s, 1, Channel::Rtcp, "192.0.2.2:5001", &RTCP, 4 * MS);
        assert_eq!(r, Route::Forward { leg: 0, socket: Channel::Rtcp, dst: addr("203.0.113.7:61001") });
    }

    #[test]
    fn garbage_does_not_latch() {
        let mut s = session((true, None), (false, Some("192.0.2.2:5000")));
        let (r, ev) = run(&mut s, 0, Channel::Rtp, "198.51.100.9:1234", b"hello", 0);
        assert_eq!((r, ev.len()), (Route::Drop(DropReason::StrictSource), 0));
        let (r, ev) = run(&mut s, 0, Channel::Rtcp, "198.51.100.9:1235", &rtp(1, 1), 0);
        assert_eq!((r, ev.len()), (Route::Drop(DropReason::StrictSource), 0), "RTP is not RTCP");
    }

    #[test]
    fn relatch_only_after_the_old_source_is_silent() {
        let mut s = session((true, None), (false, Some("192.0.2.2:5000")));
        run(&mut s, 0, Channel::Rtp, "203.0.113.7:61000", &rtp(1, 1), 0);
        // A new source while the old one is alive (999 ms silence): dropped.
        run(&mut s, 0, Channel::Rtp, "203.0.113.7:61000", &rtp(2, 1), 100 * MS);
        let (r, _) = run(&mut s, 0, Channel::Rtp, "203.0.113.7:62000", &rtp(1, 2), 1099 * MS);
        assert_eq!(r, Route::Drop(DropReason::StrictSource));
        // Malformed from the new source after the silence: still dropped.
        let (r, _) = run(&mut s, 0, Channel::Rtp, "203.0.113.7:62000", b"xx", 1100 * MS);
        assert_eq!(r, Route::Drop(DropReason::StrictSource));
        // Old source silent for 1 s: the new one takes over.
        let (r, ev) = run(&mut s, 0, Channel::Rtp, "203.0.113.7:62000", &rtp(2, 2), 1100 * MS);
        assert!(matches!(r, Route::Forward { .. }));
        assert_eq!(
            ev,
            vec![SessionEvent::Relatched {
                leg: 0,
                channel: Channel::Rtp,
                from: addr("203.0.113.7:61000"),
                to: addr("203.0.113.7:62000")
            }]
        );
        // And the old one is now the stranger.
        let (r, _) = run(&mut s, 0, Channel::Rtp, "203.0.113.7:61000", &rtp(3, 1), 1101 * MS);
        assert_eq!(r, Route::Drop(DropReason::StrictSource));
    }

    #[test]
    fn latch_scope_limits_who_may_latch_and_relatch() {
        let mut o = opts(true, false);
        o.latch_from = Some("203.0.113.7".parse().unwrap());
        let mut s = Session::new([(o, None), (opts(false, false), Some(addr("192.0.2.2:5000")))], 0, 5000 * MS);
        // A stranger racing the phone to the fresh port does not latch and is not forwarded.
        let (r, ev) = run(&mut s, 0, Channel::Rtp, "198.51.100.9:1234", &rtp(1, 666), 0);
        assert_eq!((r, ev.len()), (Route::Drop(DropReason::StrictSource), 0));
        let (r, _) = run(&mut s, 1, Channel::Rtp, "192.0.2.2:5000", &rtp(1, 7), MS);
        assert_eq!(r, Route::Drop(DropReason::NoDestination), "B's media must not go to the stranger");
        // The phone, from the signaling address with a NAT-chosen port, latches.
        let (r, ev) = run(&mut s, 0, Channel::Rtp, "203.0.113.7:61000", &rtp(1, 9), 2 * MS);
        assert!(matches!(r, Route::Forward { leg: 1, .. }));
        assert!(ev.contains(&SessionEvent::Latched { leg: 0, channel: Channel::Rtp, peer: addr("203.0.113.7:61000") }));
        // Once the phone is silent, only its own address may re-latch (a new NAT port), not a stranger.
        let (r, _) = run(&mut s, 0, Channel::Rtp, "198.51.100.9:1234", &rtp(2, 666), 5000 * MS);
        assert_eq!(r, Route::Drop(DropReason::StrictSource));
        let (r, ev) = run(&mut s, 0, Channel::Rtp, "203.0.113.7:62000", &rtp(2, 9), 5001 * MS);
        assert!(matches!(r, Route::Forward { .. }));
        assert!(matches!(ev[..], [SessionEvent::Relatched { to, .. }] if to == addr("203.0.113.7:62000")));
        assert_eq!(s.stats(0, 0).drops.strict_source, 2);
    }

    #[test]
    fn strict_leg_never_relatches() {
        let mut s = session((false, Some("192.0.2.1:4000")), (false, Some("192.0.2.2:5000")));
        let (r, _) = run(&mut s, 0, Channel::Rtp, "192.0.2.9:4000", &rtp(1, 1), 10_000 * MS);
        assert_eq!(r, Route::Drop(DropReason::StrictSource));
    }

    #[test]
    fn unknown_destination_is_a_counted_drop() {
        let mut s = session((false, Some("192.0.2.1:4000")), (true, None));
        let (r, _) = run(&mut s, 0, Channel::Rtp, "192.0.2.1:4000", &rtp(1, 1), 0);
        assert_eq!(r, Route::Drop(DropReason::NoDestination));
        let st = s.stats(0, 0);
        assert_eq!((st.rx_rtp.packets, st.drops.no_destination), (1, 1));
    }

    #[test]
    fn set_peer_clears_the_latch() {
        let mut s = session((true, None), (false, Some("192.0.2.2:5000")));
        run(&mut s, 0, Channel::Rtp, "203.0.113.7:61000", &rtp(1, 1), 0);
        s.set_peer(0, Some(addr("203.0.113.8:7000")));
        assert_eq!(s.peer(0, Channel::Rtp), Some(addr("203.0.113.8:7000")));
        let (_, ev) = run(&mut s, 0, Channel::Rtp, "203.0.113.9:7000", &rtp(1, 1), MS);
        assert!(matches!(ev[0], SessionEvent::Latched { .. }));
    }

    #[test]
    fn set_peer_with_the_same_address_keeps_the_latch() {
        let mut s = session((true, Some("10.0.0.5:4000")), (false, Some("192.0.2.2:5000")));
        run(&mut s, 0, Channel::Rtp, "203.0.113.7:61000", &rtp(1, 1), 0);
        // A session refresh repeats the (private) SDP address: media keeps going to the NAT.
        s.set_peer(0, Some(addr("10.0.0.5:4000")));
        assert_eq!(s.peer(0, Channel::Rtp), Some(addr("203.0.113.7:61000")));
        let (r, _) = run(&mut s, 1, Channel::Rtp, "192.0.2.2:5000", &rtp(1, 7), MS);
        assert_eq!(r, Route::Forward { leg: 0, socket: Channel::Rtp, dst: addr("203.0.113.7:61000") });
    }

    #[test]
    fn an_rtcp_latch_made_before_rtp_does_not_outlive_it() {
        // A stranger's RTCP reaches the fresh RTCP port before the phone's RTP: it latches, but
        // once RTP latches to the phone, the stranger gets nothing and sends nothing through.
        let mut s = session((true, None), (false, Some("192.0.2.2:5000")));
        run(&mut s, 0, Channel::Rtcp, "198.51.100.9:1235", &RTCP, 0);
        run(&mut s, 0, Channel::Rtp, "203.0.113.7:61000", &rtp(1, 1), MS);
        let (r, _) = run(&mut s, 1, Channel::Rtcp, "192.0.2.2:5001", &RTCP, 2 * MS);
        assert_eq!(r, Route::Forward { leg: 0, socket: Channel::Rtcp, dst: addr("203.0.113.7:61001") });
        let (r, _) = run(&mut s, 0, Channel::Rtcp, "198.51.100.9:1235", &RTCP, 3 * MS);
        assert_eq!(r, Route::Drop(DropReason::StrictSource));
        // The phone's own RTCP then latches normally.
        let (r, _) = run(&mut s, 0, Channel::Rtcp, "203.0.113.7:61001", &RTCP, 4 * MS);
        assert!(matches!(r, Route::Forward { leg: 1, .. }));
    }

    #[test]
    fn rtcp_follows_the_rtp_party() {
        // Separate RTCP port: once RTP latched, RTCP latches only from the RTP party's IP, and a
        // stranger cannot take the (mostly silent) RTCP channel over later either.
        let mut s = session((true, None), (false, Some("192.0.2.2:5000")));
        run(&mut s, 0, Channel::Rtp, "203.0.113.7:61000", &rtp(1, 1), 0);
        let (r, ev) = run(&mut s, 0, Channel::Rtcp, "198.51.100.9:1235", &RTCP, MS);
        assert_eq!((r, ev.len()), (Route::Drop(DropReason::StrictSource), 0));
        let (r, ev) = run(&mut s, 0, Channel::Rtcp, "203.0.113.7:61001", &RTCP, 2 * MS);
        assert!(matches!(r, Route::Forward { leg: 1, socket: Channel::Rtcp, .. }));
        assert!(matches!(ev[..], [SessionEvent::Latched { channel: Channel::Rtcp, .. }]));
        let (r, _) = run(&mut s, 0, Channel::Rtcp, "198.51.100.9:1235", &RTCP, 10_000 * MS);
        assert_eq!(r, Route::Drop(DropReason::StrictSource), "RTCP silent 10 s, still not a stranger's");
        assert_eq!(s.peer(0, Channel::Rtcp), Some(addr("203.0.113.7:61001")));

        // rtcp-mux: RTCP is accepted only from the RTP party's exact address, even when RTP has
        // been silent long enough for RTP itself to re-latch.
        let mut s = Session::new(
            [(opts(true, true), None), (opts(false, false), Some(addr("192.0.2.2:5000")))],
            0,
            0,
        );
        run(&mut s, 0, Channel::Rtp, "[2001:db8::7]:9000", &rtp(1, 1), 0);
        let (r, ev) = run(&mut s, 0, Channel::Rtp, "[2001:db8::66]:9000", &RTCP, 10_000 * MS);
        assert_eq!((r, ev.len()), (Route::Drop(DropReason::StrictSource), 0), "well-formed RTCP alone never re-latches");
        let (r, _) = run(&mut s, 1, Channel::Rtp, "192.0.2.2:5000", &rtp(1, 7), 10_001 * MS);
        assert_eq!(r, Route::Forward { leg: 0, socket: Channel::Rtp, dst: addr("[2001:db8::7]:9000") });
    }

    #[test]
    fn rtcp_mux_demultiplexes_and_routes_to_the_right_socket() {
        let mut s = Session::new(
            [(opts(true, true), None), (opts(false, false), Some(addr("192.0.2.2:5000")))],
            0,
            0,
        );
        // RTCP arriving on A's (only) socket goes out of B's RTCP socket to B's RTCP port.
        let (r, _) = run(&mut s, 0, Channel::Rtp, "[2001:db8::7]:9000", &RTCP, 0);
        assert_eq!(r, Route::Forward { leg: 1, socket: Channel::Rtcp, dst: addr("192.0.2.2:5001") });
        // RTP from B reaches A via its single socket; RTCP too, at the same address.
        run(&mut s, 0, Channel::Rtp, "[2001:db8::7]:9000", &rtp(1, 1), 0);
        let (r, _) = run(&mut s, 1, Channel::Rtcp, "192.0.2.2:5001", &RTCP, 0);
        assert_eq!(r, Route::Forward { leg: 0, socket: Channel::Rtp, dst: addr("[2001:db8::7]:9000") });
        assert_eq!(s.stats(0, 0).rx_rtcp.packets, 1);
        assert_eq!(s.stats(0, 0).rx_rtp.packets, 1);
    }

    #[test]
    fn media_timeout_fires_once_per_silence_and_again_if_undelivered() {
        let mut s = session((false, Some("192.0.2.1:4000")), (false, Some("192.0.2.2:5000")));
        let mut ev = Vec::new();
        let deliver = |s: &mut Session, now: u64, ev: &mut Vec<SessionEvent>, ok: bool| {
            s.check_timeout(now, &mut |e| {
                if ok {
                    ev.push(e);
                }
                ok
            })
        };
        deliver(&mut s, 4999 * MS, &mut ev, true);
        assert!(ev.is_empty());
        run(&mut s, 0, Channel::Rtp, "192.0.2.1:4000", &rtp(1, 1), 1000 * MS);
        deliver(&mut s, 5000 * MS, &mut ev, true);
        assert_eq!(ev, vec![SessionEvent::MediaTimeout { leg: 1 }]);
        // The event queue is full at 6 s: leg A's timeout is not lost, it comes on the next check.
        deliver(&mut s, 6000 * MS, &mut ev, false);
        deliver(&mut s, 6050 * MS, &mut ev, true);
        assert_eq!(ev, vec![SessionEvent::MediaTimeout { leg: 1 }, SessionEvent::MediaTimeout { leg: 0 }]);
        deliver(&mut s, 60_000 * MS, &mut ev, true);
        assert_eq!(ev.len(), 2, "once per silence");
    }

    #[test]
    fn send_failure_moves_tx_to_drops() {
        let mut s = session((false, Some("192.0.2.1:4000")), (false, Some("192.0.2.2:5000")));
        run(&mut s, 0, Channel::Rtp, "192.0.2.1:4000", &rtp(1, 1), 0);
        s.send_failed(1, Channel::Rtp, 172);
        let st = s.stats(1, 0);
        assert_eq!((st.tx_rtp.packets, st.tx_rtp.bytes, st.drops.send_failed), (0, 0, 1));
    }
}
