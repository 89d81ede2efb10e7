//! Per-phone NAT and SIP ALG diagnosis (`sixgate ctl diagnose USER`), from what sixgate already
//! sees: the addresses a phone writes into Via, Contact and SDP against the source of its
//! packets, what the keepalives taught about its NAT's mapping lifetime, and where its RTP
//! really came from. Pure: the engine keeps the [`Evidence`] of each local user (the last
//! REGISTER, the last call it placed, the first RTP latched for that call) and the flow state;
//! [`diagnose`] turns them into findings, each with what to do.
//!
//! Must never: report NAT or an ALG for a phone whose addresses all agree with its packets.

use super::nat::is_private;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};

/// One request as it arrived: the addresses it declares, and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signaling {
    /// Unix seconds.
    pub at: u64,
    pub reliable: bool,
    pub source: SocketAddr,
    /// The top Via's sent-by (port 5060 when absent), when an IP literal.
    pub via: Option<(IpAddr, u16)>,
    /// A port the Via's `rport` already carried (RFC 3581 has the phone send it empty).
    pub via_rport: Option<u16>,
    /// The first Contact's host and port, when an IP literal.
    pub contact: Option<(IpAddr, u16)>,
    /// The body (an INVITE's SDP offer), kept as received (a slice of the message, no copy)
    /// and parsed only when a diagnosis asks: the call path pays nothing for it.
    pub body: bytes::Bytes,
    /// Content-Length declared and body bytes received, when they differ.
    pub length_mismatch: Option<(usize, usize)>,
    pub user_agent: Option<String>,
}

impl Signaling {
    /// What a request shows of its sender.
    pub fn of(msg: &crate::message::Message, source: SocketAddr, reliable: bool, at: u64) -> Signaling {
        let (via_addr, contact) = super::nat::declared_addrs(msg);
        let rport = msg.top_via().rport.and_then(|s| std::str::from_utf8(msg.slice(s)).ok()).and_then(|t| t.split_once('=')).and_then(|(_, v)| v.trim().parse().ok());
        // On a datagram, octets past Content-Length are discarded (RFC 3261 §18.3): more of
        // them than the header admits is a body something rewrote without fixing the header.
        let received = msg.bytes().len().saturating_sub(msg.body.start as usize);
        let extra = msg.bytes().get(msg.body.end as usize..).unwrap_or_default();
        let rewritten = !reliable && extra.iter().any(|b| !b.is_ascii_whitespace());
        let declared = msg.header_value(crate::message::HeaderName::ContentLength).and_then(|v| std::str::from_utf8(v).ok()).and_then(|v| v.trim().parse::<usize>().ok());
        Signaling {
            at,
            reliable,
            source,
            via: via_addr,
            via_rport: rport,
            contact,
            body: msg.body_bytes(),
            length_mismatch: declared.filter(|_| rewritten).map(|d| (d, received)),
            user_agent: msg.headers.iter().find(|h| msg.slice(h.name_span).eq_ignore_ascii_case(b"User-Agent")).map(|h| msg.text(h.value).into_owned()),
        }
    }
}

impl Signaling {
    /// The SDP's first active stream (`c=` address, `m=` port), for a request with an offer.
    pub fn sdp(&self) -> Option<SocketAddr> {
        let sdp = crate::media::sdp::Sdp::parse(&self.body).ok()?;
        sdp.media.iter().find(|m| m.port != 0 && !m.addr.is_unspecified()).map(|m| SocketAddr::new(m.addr, m.port))
    }
}

/// Where the RTP of a call the phone placed came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaSeen {
    pub at: u64,
    /// The source of the first packet the relay accepted from it.
    pub latched: SocketAddr,
}

/// What the engine keeps per local user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    pub register: Option<Signaling>,
    pub invite: Option<Signaling>,
    pub media: Option<MediaSeen>,
}

/// The flow a phone is registered over, as the registrar knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowView {
    pub remote: SocketAddr,
    pub reliable: bool,
    pub keepalive_interval: u64,
    pub survived_secs: Option<u64>,
    pub lost_after_secs: Option<u64>,
    pub missed: u32,
}

/// One finding: how serious, what was seen, what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// "ok", "info", "warning" or "problem".
    pub level: String,
    /// A short name scripts can match: `no-registration`, `no-nat`, `nat`, `sip-alg`,
    /// `nat-lifetime`, `symmetric-rtp`, `asymmetric-rtp`, ...
    pub topic: String,
    pub seen: String,
    pub action: String,
}

fn finding(level: &str, topic: &str, seen: String, action: &str) -> Finding {
    Finding { level: level.into(), topic: topic.into(), seen, action: action.into() }
}

fn show(a: (IpAddr, u16)) -> String {
    SocketAddr::new(a.0, a.1).to_string()
}

/// The findings for one phone.
pub fn diagnose(user: &str, e: &Evidence, flow: Option<&FlowView>) -> Vec<Finding> {
    let mut out = Vec::new();
    let Some(reg) = &e.register else {
        out.push(finding(
            "problem",
            "no-registration",
            format!("{user} has not registered since sixgate started (or its registration failed authentication)"),
            "check the phone's server address, username and password; `journalctl -u sixgate` shows refused REGISTERs with their reason",
        ));
        return out;
    };
    let src = reg.source;
    let same = |ip: IpAddr| ip.to_canonical() == src.ip().to_canonical();
    let via_off = reg.via.filter(|v| !same(v.0));
    let contact_off = reg.contact.filter(|c| !same(c.0));
    let via_port_off = reg.via.filter(|v| same(v.0) && !reg.reliable && v.1 != src.port());
    // A SIP ALG rewrites what it understands: the Contact (or SDP) shows the router's public
    // address while the Via still names the phone's private one.
    let alg_contact = via_off.is_some() && reg.contact.is_some_and(|c| same(c.0));
    let alg_sdp = e.invite.as_ref().is_some_and(|i| i.via.is_some_and(|v| !same_as(v.0, i.source)) && i.sdp().is_some_and(|s| same_as(s.ip(), i.source)));
    let alg_rport = reg.via_rport.filter(|&p| p != src.port() && !reg.reliable);
    let alg_length = e.invite.as_ref().and_then(|i| i.length_mismatch);
    if alg_contact || alg_sdp || alg_rport.is_some() || alg_length.is_some() {
        let mut what = Vec::new();
        if alg_contact {
            what.push(format!("Contact names {} (the packet's public source) while Via still names {}", show(reg.contact.unwrap_or((src.ip(), src.port()))), show(via_off.unwrap_or((src.ip(), 0)))));
        }
        if alg_sdp {
            what.push("the SDP of its last call names the router's public address while its Via names a private one".into());
        }
        if let Some(p) = alg_rport {
            what.push(format!("its Via arrived with rport={p} already filled in, but the packet came from port {}", src.port()));
        }
        if let Some((declared, got)) = alg_length {
            what.push(format!("its last INVITE declared Content-Length {declared} but carried {got} body bytes (a rewritten body)"));
        }
        out.push(finding(
            "problem",
            "sip-alg",
            format!("a SIP ALG on the phone's router rewrites its messages: {}", what.join("; ")),
            "turn off \"SIP ALG\" / \"SIP helper\" / \"SIP passthrough\" on the router (nf_nat_sip on Linux): sixgate handles the NAT itself, and ALG rewrites break calls and authentication",
        ));
    }
    match (via_off, contact_off, via_port_off) {
        (None, None, None) => out.push(finding(
            "ok",
            "no-nat",
            format!("Via and Contact agree with the packet source {src}: no NAT between the phone and sixgate"),
            "nothing to do",
        )),
        _ => {
            let private = via_off.or(contact_off).is_some_and(|a| is_private(a.0));
            let mut seen = format!("the phone's packets come from {src}");
            if let Some(v) = via_off.or(via_port_off) {
                seen.push_str(&format!(", its Via names {}", show(v)));
            }
            if let Some(c) = contact_off {
                seen.push_str(&format!(", its Contact names {}", show(c)));
            }
            seen.push_str(if private { " (a private address): it is behind NAT" } else { ": something between it and sixgate translates addresses" });
            let action = if src.is_ipv4() {
                "sixgate answers to the source (rport/received), keeps the mapping open with keepalives and relays its media; for a lasting fix give the phone IPv6 (public addresses, no NAT)"
            } else {
                "an IPv6 phone should need no NAT: check for NPTv6 or a NAT66 on its router"
            };
            out.push(finding("info", "nat", seen, action));
        }
    }
    if let Some(f) = flow {
        match (f.survived_secs, f.lost_after_secs) {
            (_, Some(lost)) if f.missed > 0 || f.survived_secs.is_none_or(|s| s < lost) => out.push(finding(
                "warning",
                "nat-lifetime",
                format!(
                    "a keepalive sent after {lost} s without a packet from the phone went unanswered{}: the router may forget its UDP mapping that soon, and calls to the phone then fail",
                    f.survived_secs.map_or(String::new(), |s| format!(" (after {s} s one was answered)"))
                ),
                "lower [registrar] keepalive_interval_secs below that, or have the phone register over TCP or with Outbound (RFC 5626) and a shorter expiry",
            )),
            (Some(s), _) => out.push(finding(
                "ok",
                "nat-lifetime",
                format!("the NAT mapping survived {s} s of silence (keepalives every {} s were all answered)", f.keepalive_interval),
                "nothing to do",
            )),
            (None, _) if via_off.is_some() || contact_off.is_some() => out.push(finding(
                "info",
                "nat-lifetime",
                if f.reliable { "the phone registered over a connection: no UDP mapping to keep alive".into() } else { "no keepalive answered yet: the mapping lifetime is not known yet".into() },
                "ask again after a few keepalive intervals",
            )),
            _ => {}
        }
    }
    if let Some(m) = &e.media {
        // The offer of the last call it placed: the call this media belongs to.
        let offered = e.invite.as_ref().and_then(Signaling::sdp);
        let symmetric = offered.is_some_and(|s| s == m.latched);
        let seen = match offered {
            Some(s) if s == m.latched => format!("its last call's RTP came from {} as its SDP announced: symmetric RTP, no translation", m.latched),
            Some(s) if s.ip() == m.latched.ip() => format!("its last call's RTP came from {} but its SDP announced port {}: it does not send from the port it receives on", m.latched, s.port()),
            Some(s) => format!("its last call's RTP came from {} while its SDP announced {s}: the NAT translates its media (the relay latched to the real source)", m.latched),
            None => format!("its last call's RTP came from {}", m.latched),
        };
        out.push(if symmetric || offered.is_some_and(|s| s.ip() != m.latched.ip()) {
            finding(if symmetric { "ok" } else { "info" }, "symmetric-rtp", seen, "nothing to do: the relay sends back to where the RTP comes from")
        } else {
            finding("warning", "asymmetric-rtp", seen, "enable \"symmetric RTP\" on the phone; the relay latches to the real source, but peers without a relay will not reach it")
        });
    } else if let Some(i) = &e.invite {
        if i.sdp().is_some() {
            out.push(finding(
                "info",
                "rtp",
                "no RTP seen from the phone's calls through the relay yet (direct media is not observed)".into(),
                "place a call through sixgate, then ask again",
            ));
        }
    }
    out
}

fn same_as(ip: IpAddr, source: SocketAddr) -> bool {
    ip.to_canonical() == source.ip().to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(source: &str, via: &str, contact: &str) -> Signaling {
        let a = |s: &str| {
            let x: SocketAddr = s.parse().unwrap();
            (x.ip(), x.port())
        };
        Signaling { at: 0, reliable: false, source: source.parse().unwrap(), via: Some(a(via)), via_rport: None, contact: Some(a(contact)), body: Default::default(), length_mismatch: None, user_agent: None }
    }

    fn topics(f: &[Finding]) -> Vec<&str> {
        f.iter().map(|f| f.topic.as_str()).collect()
    }

    #[test]
    fn an_ipv6_phone_with_public_addresses_has_no_nat_and_no_alg() {
        let e = Evidence { register: Some(sig("[2001:db8::10]:5060", "[2001:db8::10]:5060", "[2001:db8::10]:5060")), ..Default::default() };
        assert_eq!(topics(&diagnose("bob", &e, None)), ["no-nat"]);
    }

    #[test]
    fn a_phone_behind_nat_is_told_apart_from_one_behind_an_alg() {
        let nat = Evidence { register: Some(sig("203.0.113.7:40000", "192.168.1.10:5060", "192.168.1.10:5060")), ..Default::default() };
        let f = diagnose("alice", &nat, None);
        assert_eq!(topics(&f), ["nat"]);
        assert!(f[0].seen.contains("192.168.1.10:5060") && f[0].seen.contains("private"), "{f:?}");
        // The router rewrote the Contact to its public address and port, not the Via.
        let alg = Evidence { register: Some(sig("203.0.113.7:40000", "192.168.1.10:5060", "203.0.113.7:40000")), ..Default::default() };
        let f = diagnose("alice", &alg, None);
        assert_eq!(topics(&f), ["sip-alg", "nat"]);
        assert!(f[0].action.contains("SIP ALG"));
        // A pre-filled rport that is not the source port.
        let mut r = sig("[2001:db8::10]:5060", "[2001:db8::10]:5060", "[2001:db8::10]:5060");
        r.via_rport = Some(5099);
        assert_eq!(topics(&diagnose("bob", &Evidence { register: Some(r), ..Default::default() }, None)), ["sip-alg", "no-nat"]);
    }

    #[test]
    fn keepalives_tell_the_mapping_lifetime() {
        let e = Evidence { register: Some(sig("203.0.113.7:40000", "192.168.1.10:5060", "192.168.1.10:5060")), ..Default::default() };
        let flow = |survived, lost, missed| FlowView { remote: "203.0.113.7:40000".parse().unwrap(), reliable: false, keepalive_interval: 60, survived_secs: survived, lost_after_secs: lost, missed };
        let f = diagnose("alice", &e, Some(&flow(Some(60), None, 0)));
        assert!(f.iter().any(|f| f.topic == "nat-lifetime" && f.level == "ok" && f.seen.contains("60 s")), "{f:?}");
        let f = diagnose("alice", &e, Some(&flow(Some(20), Some(45), 1)));
        assert!(f.iter().any(|f| f.topic == "nat-lifetime" && f.level == "warning" && f.seen.contains("after 45 s")), "{f:?}");
    }

    #[test]
    fn rtp_from_where_the_sdp_said_is_symmetric() {
        let reg = Some(sig("[2001:db8::10]:5060", "[2001:db8::10]:5060", "[2001:db8::10]:5060"));
        let mut invite = sig("[2001:db8::10]:5060", "[2001:db8::10]:5060", "[2001:db8::10]:5060");
        invite.body = bytes::Bytes::from_static(b"v=0\r\no=- 1 1 IN IP6 2001:db8::10\r\ns=-\r\nc=IN IP6 2001:db8::10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n");
        let media = |latched: &str| Some(MediaSeen { at: 0, latched: latched.parse().unwrap() });
        let f = diagnose("bob", &Evidence { register: reg.clone(), invite: Some(invite.clone()), media: media("[2001:db8::10]:4000") }, None);
        assert!(f.iter().any(|f| f.topic == "symmetric-rtp" && f.level == "ok"), "{f:?}");
        let f = diagnose("bob", &Evidence { register: reg, invite: Some(invite), media: media("[2001:db8::10]:4100") }, None);
        assert!(f.iter().any(|f| f.topic == "asymmetric-rtp"), "{f:?}");
    }

    #[test]
    fn a_user_who_never_registered_is_told_so() {
        assert_eq!(topics(&diagnose("carol", &Evidence::default(), None)), ["no-registration"]);
    }
}
