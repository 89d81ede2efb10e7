//! NAT detection for a registering or calling phone (what RFC 3581 and RFC 5626 exist for):
//! the phone wrote one address into Via and Contact, its packets came from another. Pure
//! functions; the registrar stores the reason with the binding, the media hand-off latches a
//! caller's relay leg on it.

use std::net::{IpAddr, SocketAddr};

/// Addresses that cannot be reached from the public Internet: RFC 1918, CGNAT (100.64/10),
/// loopback, link-local, ULA (fc00::/7), unspecified, and IPv4-mapped forms of these.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            a.is_private() || a.is_loopback() || a.is_link_local() || a.is_unspecified() || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => is_private(IpAddr::V4(v4)),
            None => {
                let s = a.segments()[0];
                a.is_loopback() || a.is_unspecified() || (s & 0xfe00) == 0xfc00 || (s & 0xffc0) == 0xfe80
            }
        },
    }
}

/// [`nat_reason`] for a request as it arrived from `source`: its top Via's sent-by and its
/// first Contact (when an IP literal) against the source.
pub fn request_nat(msg: &crate::message::Message, source: SocketAddr, reliable: bool) -> Option<&'static str> {
    let (via, contact) = declared_addrs(msg);
    nat_reason(source, reliable, via, contact)
}

/// An address and port a message declares (port 5060 when absent).
pub type Declared = Option<(IpAddr, u16)>;

/// The addresses a request declares for its sender: the top Via's sent-by and the first
/// Contact's host and port, each when an IP literal.
pub fn declared_addrs(msg: &crate::message::Message) -> (Declared, Declared) {
    let via = msg.top_via();
    let via_addr = via.host.ip().map(|ip| (ip, via.port.unwrap_or(5060)));
    let contact = match &msg.contacts {
        crate::message::ContactList::Addrs(v) => v.first().and_then(|c| std::str::from_utf8(msg.slice(c.uri.span)).ok()),
        _ => None,
    };
    let contact_addr = contact.and_then(|u| crate::config::TargetUri::parse(u).ok()).and_then(|u| u.ip.map(|ip| (ip, u.port.unwrap_or(5060))));
    (via_addr, contact_addr)
}

/// Why a phone is behind NAT, or `None`. `via` is the top Via's sent-by (the port 5060 when
/// absent), `contact` the Contact's host and port when it is an IP literal. A private address
/// counts only when it is not the source itself (a phone on the operator's own LAN is not
/// behind NAT); on a reliable transport the source port says nothing (a new connection gets
/// an ephemeral port), so only addresses are compared there.
pub fn nat_reason(source: SocketAddr, reliable: bool, via: Option<(IpAddr, u16)>, contact: Option<(IpAddr, u16)>) -> Option<&'static str> {
    let same = |ip: IpAddr| ip == source.ip() || ip.to_canonical() == source.ip().to_canonical();
    if let Some((ip, port)) = via {
        if !same(ip) {
            return Some(if is_private(ip) { "Via names a private address" } else { "Via address differs from the source" });
        }
        if !reliable && port != source.port() {
            return Some("Via port differs from the source port");
        }
    }
    if let Some((ip, port)) = contact {
        if !same(ip) {
            return Some(if is_private(ip) { "Contact names a private address" } else { "Contact address differs from the source" });
        }
        if !reliable && port != source.port() {
            return Some("Contact port differs from the source port");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_ranges() {
        for p in ["10.1.2.3", "172.16.0.1", "192.168.1.10", "100.64.0.1", "100.127.255.1", "127.0.0.1", "169.254.1.1", "::1", "fe80::1", "fd00::1", "::ffff:192.168.0.1"] {
            assert!(is_private(ip(p)), "{p}");
        }
        for p in ["100.128.0.1", "198.51.100.1", "2001:db8::1", "8.8.8.8", "::ffff:8.8.8.8"] {
            assert!(!is_private(ip(p)), "{p}");
        }
    }

    #[test]
    fn nat_is_seen_where_the_packet_and_the_message_disagree() {
        let src: SocketAddr = "198.51.100.7:40123".parse().unwrap();
        let lan = Some((ip("192.168.1.10"), 5060));
        assert_eq!(nat_reason(src, false, lan, lan), Some("Via names a private address"));
        assert_eq!(nat_reason(src, false, Some((ip("198.51.100.7"), 5060)), None), Some("Via port differs from the source port"));
        assert_eq!(nat_reason(src, false, Some((ip("198.51.100.7"), 40123)), lan), Some("Contact names a private address"));
        assert_eq!(nat_reason(src, false, Some((ip("198.51.100.7"), 40123)), Some((ip("198.51.100.7"), 40123))), None);
        // TCP: an ephemeral source port is normal.
        assert_eq!(nat_reason(src, true, Some((ip("198.51.100.7"), 5060)), Some((ip("198.51.100.7"), 5060))), None);
        // An IPv6 phone with its public address everywhere: no NAT.
        let v6: SocketAddr = "[2001:db8::10]:5060".parse().unwrap();
        assert_eq!(nat_reason(v6, false, Some((ip("2001:db8::10"), 5060)), Some((ip("2001:db8::10"), 5060))), None);
        // A LAN phone registering on the LAN: private, but the source itself.
        let lan_src: SocketAddr = "192.168.1.10:5060".parse().unwrap();
        assert_eq!(nat_reason(lan_src, false, lan, lan), None);
        // A hostname in Via cannot be compared: only the Contact decides.
        assert_eq!(nat_reason(src, false, None, None), None);
    }
}
