//! Offer/answer (RFC 3264) through the relay for one call: which relay session carries each
//! m-line, what each party's SDP tells the relay (its peer per stream), and the SDP each party is
//! shown (the relay's address of the family that party's leg uses, the leg's ports, no ICE,
//! its own o= version line). Leg A of every session faces the caller, leg B the callee.
//!
//! Pure data and functions: the engine ([`crate::engine`]) asks the relay for sessions and
//! applies the peer updates this module computes. Must never: show a party an address of the
//! other party, or leave an active m-line pointing anywhere but the relay.

use super::sdp::{Direction, Sdp};
use sixgate_relay::{Family, LegAddrs, LegId, LegSpec, SessionId, SessionSpec};
use std::net::{IpAddr, SocketAddr};

/// A call's two sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Caller,
    Callee,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Caller => Side::Callee,
            Side::Callee => Side::Caller,
        }
    }
    pub fn leg(self) -> LegId {
        match self {
            Side::Caller => LegId::A,
            Side::Callee => LegId::B,
        }
    }
    /// Caller 0, callee 1: the leg index and the index into per-side pairs.
    pub fn index(self) -> usize {
        match self {
            Side::Caller => 0,
            Side::Callee => 1,
        }
    }
}

/// The most active m-lines one offer may relay (audio, video, a second video, ...).
pub const MAX_STREAMS: usize = 8;

/// One relayed m-line: its relay session and the local addresses of both legs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stream {
    pub session: SessionId,
    pub legs: [LegAddrs; 2],
}

impl Stream {
    pub fn family(&self, side: Side) -> Family {
        Family::of(&self.legs[side.index()].rtp)
    }
    pub fn addrs(&self, side: Side) -> LegAddrs {
        self.legs[side.index()]
    }
}

/// What the relay needs to know of one party to build its legs: the family its signaling
/// flow uses, whether it is behind NAT (then its leg latches, only from `signal_ip`), and the
/// address its signaling comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Party {
    pub family: Family,
    pub nat: bool,
    pub signal_ip: IpAddr,
}

impl Party {
    /// Its relay leg: latching (symmetric RTP) from its signaling address when behind NAT, a
    /// strict peer otherwise. `peer` is what its SDP announced, if anything.
    pub fn leg(&self, family: Family, peer: Option<SocketAddr>, rtcp_mux: bool, clock_rate: u32) -> LegSpec {
        // A NATed party's SDP names its private address: never send there (it may be a host
        // of ours); wait for the latch unless it named the public address it signals from.
        let peer = peer.filter(|p| !self.nat || p.ip() == self.signal_ip);
        LegSpec { family, peer, latch: self.nat, rtcp_mux, clock_rate, latch_from: Some(self.signal_ip) }
    }
}

/// The o= version we show a side: it goes up by one whenever what that side sees changes
/// (the sender's version or our ports), and stays put when nothing did (RFC 3264 §8).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Versions {
    shown: [Option<Shown>; 2],
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Shown {
    theirs: u64,
    ours: u64,
    ports: Vec<u16>,
}

impl Versions {
    fn next(&mut self, toward: Side, theirs: u64, ports: &[u16]) -> u64 {
        let slot = &mut self.shown[toward.index()];
        let ours = match slot {
            Some(s) if s.theirs == theirs && s.ports == ports => s.ours,
            Some(s) => s.ours.saturating_add(1).max(theirs),
            None => theirs,
        };
        *slot = Some(Shown { theirs, ours, ports: ports.to_vec() });
        ours
    }
}

/// The media of a call (or of one branch's offer in flight): a stream per m-line (`None`:
/// disabled, or not relayed) and the versions shown to each side.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallMedia {
    pub streams: Vec<Option<Stream>>,
    pub versions: Versions,
    /// Per m-line, the direction each side's latest SDP declared (caller, callee; `Inactive`
    /// for a disabled line or the legacy 0.0.0.0 hold): which way media is expected to flow.
    pub declared: Vec<[Option<Direction>; 2]>,
}

impl CallMedia {
    /// Whether `from` is expected to send on m-line `i`: its SDP says it sends and the other
    /// side's says it receives (RFC 3264 §6.1). False until both sides have spoken.
    pub fn expects(&self, i: usize, from: Side) -> bool {
        let Some(d) = self.declared.get(i) else { return false };
        let sends = matches!(d[from.index()], Some(Direction::SendRecv | Direction::SendOnly));
        let receives = matches!(d[from.other().index()], Some(Direction::SendRecv | Direction::RecvOnly));
        sends && receives
    }
}

/// A peer the relay must learn from a party's SDP (`None`: the party holds with 0.0.0.0/::).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerUpdate {
    pub session: SessionId,
    pub leg: LegId,
    pub peer: Option<SocketAddr>,
}

/// The streams an offer needs: those already relayed in a compatible family are reused; each
/// active m-line without one (a new stream, or one whose sender now uses another family) needs
/// a new session, built from `sender` and `receiver`. Returns the specs to create, by m-line.
pub fn sessions_needed(
    sdp: &Sdp,
    from: Side,
    current: &CallMedia,
    sender: &Party,
    receiver: &Party,
    receiver_family: impl Fn(usize) -> Family,
) -> Vec<(usize, SessionSpec)> {
    let mut out = Vec::new();
    for (i, m) in sdp.media.iter().enumerate() {
        if m.port == 0 {
            continue;
        }
        let family = if m.addr.is_unspecified() { sender.family } else { family_of(m.addr) };
        let reusable = current.streams.get(i).copied().flatten().filter(|s| s.family(from) == family);
        if reusable.is_some() {
            continue;
        }
        let peer = (!m.addr.is_unspecified()).then(|| SocketAddr::new(m.addr, m.port));
        let mine = sender.leg(family, peer, m.rtcp_mux, m.clock_rate);
        let theirs = receiver.leg(receiver_family(i), None, m.rtcp_mux, m.clock_rate);
        let legs = match from {
            Side::Caller => [mine, theirs],
            Side::Callee => [theirs, mine],
        };
        out.push((i, SessionSpec { legs, media_timeout: None }));
    }
    out
}

/// How many active m-lines an SDP has.
pub fn active_streams(sdp: &Sdp) -> usize {
    sdp.media.iter().filter(|m| m.port != 0).count()
}

/// Translates an SDP that `from` sent, through `media`: the peers the relay learns for `from`'s
/// legs, and the body `from.other()` is shown. An active m-line with no stream is shown
/// disabled (port 0): nothing may point around the relay.
pub fn translate(sdp: &Sdp, from: Side, media: &mut CallMedia) -> (Vec<PeerUpdate>, String) {
    let to = from.other();
    let mut updates = Vec::new();
    let mut ports = Vec::with_capacity(sdp.media.len());
    let mut addr = None;
    media.declared.resize(media.declared.len().max(sdp.media.len()), [None; 2]);
    for (i, m) in sdp.media.iter().enumerate() {
        let held = m.port == 0 || m.addr.is_unspecified();
        media.declared[i][from.index()] = Some(if held { Direction::Inactive } else { m.direction });
        let stream = media.streams.get(i).copied().flatten().filter(|_| m.port != 0);
        let Some(s) = stream else {
            ports.push(0);
            continue;
        };
        let shown = s.addrs(to).rtp;
        addr.get_or_insert(shown.ip());
        ports.push(shown.port());
        // A peer of the wrong family cannot be sent to (the sender changed family without a
        // new session, which the offer path prevents; an answer may still do it): latch only.
        let peer = (!m.addr.is_unspecified() && family_of(m.addr) == s.family(from)).then(|| SocketAddr::new(m.addr, m.port));
        updates.push(PeerUpdate { session: s.session, leg: from.leg(), peer });
    }
    // No stream at all (every m-line disabled): the relay's address of the receiver's family
    // from any stream we hold, else the sender's own lines with ports 0 carry no address.
    let addr = addr
        .or_else(|| media.streams.iter().flatten().next().map(|s| s.addrs(to).rtp.ip()))
        .unwrap_or(IpAddr::from([0u8, 0, 0, 0]));
    let version = media.versions.next(to, sdp.version, &ports);
    (updates, sdp.rewrite(addr, &ports, version, true))
}

fn family_of(ip: IpAddr) -> Family {
    if ip.is_ipv6() {
        Family::V6
    } else {
        Family::V4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(id: u64, a: &str, b: &str) -> Stream {
        let la = |s: &str| {
            let rtp: SocketAddr = s.parse().unwrap();
            LegAddrs { rtp, rtcp: SocketAddr::new(rtp.ip(), rtp.port() + 1) }
        };
        Stream { session: SessionId(id), legs: [la(a), la(b)] }
    }

    const OFFER: &str = "v=0\r\no=alice 1 5 IN IP6 2001:db8::10\r\ns=-\r\nc=IN IP6 2001:db8::10\r\nt=0 0\r\n\
        m=audio 4000 RTP/AVP 0\r\na=candidate:1 1 UDP 1 2001:db8::10 4000 typ host\r\nm=video 0 RTP/AVP 96\r\n";

    #[test]
    fn an_offer_is_shown_with_the_relay_of_the_receivers_family_and_tells_the_relay_its_peer() {
        let sdp = Sdp::parse(OFFER.as_bytes()).unwrap();
        let mut media = CallMedia { streams: vec![Some(stream(7, "[2001:db8::1]:30000", "192.0.2.1:31000")), None], ..Default::default() };
        let (updates, body) = translate(&sdp, Side::Caller, &mut media);
        assert_eq!(updates, [PeerUpdate { session: SessionId(7), leg: LegId::A, peer: Some("[2001:db8::10]:4000".parse().unwrap()) }]);
        assert!(body.contains("c=IN IP4 192.0.2.1\r\n") && body.contains("m=audio 31000 RTP/AVP 0\r\n") && body.contains("m=video 0 RTP/AVP 96\r\n"), "{body}");
        assert!(!body.contains("2001:db8") && !body.contains("candidate"), "{body}");
        assert!(body.contains("o=alice 1 5 IN IP4 192.0.2.1"), "first version shown is the sender's: {body}");
        // The same SDP again (a 200 repeating the 183's answer): same version; a change: +1.
        assert!(translate(&sdp, Side::Caller, &mut media).1.contains(" 5 IN IP4"));
        media.streams[0] = Some(stream(8, "[2001:db8::1]:30002", "192.0.2.1:31002"));
        assert!(translate(&sdp, Side::Caller, &mut media).1.contains(" 6 IN IP4"));
    }

    #[test]
    fn sessions_follow_a_family_change_and_new_streams_only() {
        let sdp = Sdp::parse(OFFER.as_bytes()).unwrap();
        let caller = Party { family: Family::V6, nat: false, signal_ip: "2001:db8::10".parse().unwrap() };
        let callee = Party { family: Family::V4, nat: true, signal_ip: "198.51.100.9".parse().unwrap() };
        let none = CallMedia::default();
        let specs = sessions_needed(&sdp, Side::Caller, &none, &caller, &callee, |_| Family::V4);
        assert_eq!(specs.len(), 1, "one active m-line, one session");
        let (i, spec) = specs[0];
        assert_eq!(i, 0);
        assert_eq!((spec.legs[0].family, spec.legs[0].peer, spec.legs[0].latch), (Family::V6, Some("[2001:db8::10]:4000".parse().unwrap()), false));
        assert_eq!((spec.legs[1].family, spec.legs[1].peer, spec.legs[1].latch, spec.legs[1].latch_from), (Family::V4, None, true, Some(callee.signal_ip)));
        // Reused while the caller stays on IPv6; a new session once it offers IPv4.
        let held = CallMedia { streams: vec![Some(stream(7, "[2001:db8::1]:30000", "192.0.2.1:31000"))], ..Default::default() };
        assert!(sessions_needed(&sdp, Side::Caller, &held, &caller, &callee, |_| Family::V4).is_empty());
        let v4 = Sdp::parse(OFFER.replace("IN IP6 2001:db8::10", "IN IP4 203.0.113.7").as_bytes()).unwrap();
        let again = sessions_needed(&v4, Side::Caller, &held, &caller, &callee, |_| Family::V4);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].1.legs[0].family, Family::V4);
    }

    #[test]
    fn a_natted_party_is_never_sent_to_its_private_address() {
        let p = Party { family: Family::V4, nat: true, signal_ip: "198.51.100.9".parse().unwrap() };
        assert_eq!(p.leg(Family::V4, Some("192.168.1.20:4000".parse().unwrap()), false, 8000).peer, None);
        assert!(p.leg(Family::V4, Some("198.51.100.9:4000".parse().unwrap()), false, 8000).peer.is_some());
    }

    #[test]
    fn legacy_hold_clears_the_peer_and_keeps_the_hold() {
        let held = Sdp::parse(b"v=0\r\no=- 1 2 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=sendonly\r\n").unwrap();
        let mut media = CallMedia { streams: vec![Some(stream(3, "192.0.2.1:30000", "[2001:db8::1]:31000"))], ..Default::default() };
        let (u, body) = translate(&held, Side::Caller, &mut media);
        assert_eq!(u[0].peer, None);
        assert!(body.contains("c=IN IP6 ::\r\n") && body.contains("a=sendonly"), "{body}");
    }
}
