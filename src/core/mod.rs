//! The core: decides what happens to a validated message (RFC 3261 §8.2 UAS checks, §16.3
//! proxy request validation). For now sixgate answers requests addressed to itself (OPTIONS
//! pings, RFC 3261 §11) and refuses what it cannot yet serve with the right status; the
//! registrar and the proxy rooms plug in here as later issues land.
//!
//! Sans-IO: a message and where it came from go in, an [`Outbound`] (or nothing) comes out.
//! Must never: answer an ACK or a response, or let a request reach a carrier (none yet).

use crate::config::{Config, TransportKind};
use crate::message::{response::ResponseBuilder, HeaderName, Host, Message, MessageError, Method, Scheme};
use crate::metrics::Metrics;
use crate::transport::{self, Inbound};
use bytes::Bytes;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Methods sixgate answers itself today.
pub const ALLOW: &str = "OPTIONS";
/// Option tags sixgate supports as a UAS (none yet: outbound and path arrive with the registrar).
pub const SUPPORTED: &[&str] = &[];
pub const ACCEPT: &str = "application/sdp";

/// Bytes to send and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub dest: SocketAddr,
    pub bytes: Bytes,
}

pub struct Core {
    domains: Vec<String>,
    own_ips: Vec<IpAddr>,
    server: String,
    pub metrics: Arc<Metrics>,
}

impl Core {
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Core {
        let mut own_ips: Vec<IpAddr> = cfg.listen.iter().map(|l| l.addr.ip()).filter(|a| !a.is_unspecified()).collect();
        own_ips.extend(cfg.advertise.ipv6.map(IpAddr::V6));
        own_ips.extend(cfg.advertise.ipv4.map(IpAddr::V4));
        own_ips.sort();
        own_ips.dedup();
        Core { domains: cfg.sip.domains.clone(), own_ips, server: cfg.sip.server_header.clone(), metrics }
    }

    /// A message that passed validation.
    pub fn on_message(&self, mut msg: Message, from: Inbound) -> Option<Outbound> {
        if !msg.is_request() {
            // No client transactions exist yet, so every response is stray (RFC 3261 §18.1.2).
            self.metrics.inc("dropped", "stray_response");
            return None;
        }
        transport::stamp_received(&mut msg, from.remote);
        let (code, reason, extra) = self.decide(&msg)?;
        let dest = transport::response_destination(&msg, from);
        let mut r = ResponseBuilder::to(&msg, code, reason);
        for (name, value) in extra {
            r = r.header(name, value);
        }
        if !self.server.is_empty() {
            r = r.header("Server", &self.server);
        }
        self.metrics.inc("responses", status_label(code));
        Some(Outbound { dest, bytes: r.finish() })
    }

    /// Bytes that failed validation: answered when a response can be built, otherwise dropped.
    pub fn on_invalid(&self, buf: &[u8], err: &MessageError, from: Inbound) -> Option<Outbound> {
        tracing::debug!(remote = %from.remote, error = %err, "refused message");
        self.metrics.inc("invalid", err.label());
        match crate::message::response::reject(buf, err) {
            // A real request is larger than its 400 (which copies only five of its headers);
            // one built to be tiny is not answered.
            Some(bytes) if self.would_amplify(&from, bytes.len(), buf.len(), 2) => None,
            Some(bytes) => {
                self.metrics.inc("responses", status_label(err.status()));
                Some(Outbound { dest: from.remote, bytes })
            }
            None => {
                self.metrics.inc("dropped", "unanswerable");
                None
            }
        }
    }

    /// Whether an answer of `answer_len` bytes to a `request_len`-byte message must not be sent:
    /// on UDP the source address is unproven, so an answer more than `factor` times larger would
    /// make us an amplifier for spoofed traffic. Counted when it is refused.
    pub fn would_amplify(&self, from: &Inbound, answer_len: usize, request_len: usize, factor: usize) -> bool {
        let refused = from.transport == TransportKind::Udp && answer_len > factor * request_len;
        if refused {
            self.metrics.inc("dropped", "answer_larger_than_request");
        }
        refused
    }

    /// The answer to a request: status, reason and extra headers; `None` for no answer at all.
    fn decide(&self, msg: &Message) -> Option<Answer> {
        let method = msg.method()?;
        if method == Method::Ack {
            self.metrics.inc("dropped", "ack_without_transaction");
            return None;
        }
        let uri = msg.request_uri()?;
        if !matches!(uri.scheme, Scheme::Sip | Scheme::Sips | Scheme::Tel) {
            return Some((416, "Unsupported URI Scheme", vec![]));
        }
        // RFC 3261 §16.3 step 6: Proxy-Require names extensions the proxy must support; none are.
        let unsupported = self.unsupported_tags(msg, HeaderName::ProxyRequire);
        if !unsupported.is_empty() {
            return Some((420, "Bad Extension", vec![("Unsupported", unsupported.join(", "))]));
        }
        let for_us = self.addressed_to_us(msg) || (msg.max_forwards == Some(0) && method == Method::Options);
        if msg.max_forwards == Some(0) && !for_us {
            return Some((483, "Too Many Hops", vec![]));
        }
        if !for_us {
            // No routing yet: an edge never relays for domains it does not serve.
            return Some(if self.in_our_domain(msg) { (404, "Not Found", vec![]) } else { (403, "Relaying Denied", vec![]) });
        }
        let unsupported = self.unsupported_tags(msg, HeaderName::Require);
        if !unsupported.is_empty() && method != Method::Cancel {
            return Some((420, "Bad Extension", vec![("Unsupported", unsupported.join(", "))]));
        }
        Some(match method {
            Method::Options => (
                200,
                "OK",
                vec![("Allow", ALLOW.into()), ("Supported", SUPPORTED.join(", ")), ("Accept", ACCEPT.into())],
            ),
            Method::Cancel | Method::Bye => (481, "Call/Transaction Does Not Exist", vec![]),
            Method::Extension => (501, "Not Implemented", vec![("Allow", ALLOW.into())]),
            _ => (405, "Method Not Allowed", vec![("Allow", ALLOW.into())]),
        })
    }

    fn unsupported_tags(&self, msg: &Message, name: HeaderName) -> Vec<String> {
        let mut out = Vec::new();
        for h in msg.headers_named(name) {
            for tag in msg.slice(h.value).split(|&b| b == b',') {
                let t = tag.trim_ascii();
                if !t.is_empty() && !SUPPORTED.iter().any(|s| s.as_bytes().eq_ignore_ascii_case(t)) {
                    out.push(String::from_utf8_lossy(t).into_owned());
                }
            }
        }
        out
    }

    fn host_is_ours(&self, msg: &Message, host: Host) -> bool {
        match host {
            Host::Name(s) => {
                let name = msg.slice(s);
                self.domains.iter().any(|d| d.as_bytes().eq_ignore_ascii_case(name))
            }
            Host::V4(a) => self.own_ips.contains(&IpAddr::V4(a)) || self.domains.iter().any(|d| d == &a.to_string()),
            Host::V6(a) => self.own_ips.contains(&IpAddr::V6(a)) || self.domains.iter().any(|d| d.parse() == Ok(IpAddr::V6(a))),
        }
    }

    fn in_our_domain(&self, msg: &Message) -> bool {
        msg.request_uri().and_then(|u| u.host).is_some_and(|h| self.host_is_ours(msg, h))
    }

    /// RFC 3261 §16.4-ish: a Request-URI of one of our domains/addresses with no user part.
    fn addressed_to_us(&self, msg: &Message) -> bool {
        msg.request_uri().is_some_and(|u| u.is_sip() && u.user.is_none() && u.host.is_some_and(|h| self.host_is_ours(msg, h)))
    }
}

fn status_label(code: u16) -> &'static str {
    match code {
        200 => "200",
        400 => "400",
        403 => "403",
        404 => "404",
        405 => "405",
        416 => "416",
        420 => "420",
        481 => "481",
        483 => "483",
        501 => "501",
        505 => "505",
        513 => "513",
        _ => "other",
    }
}

/// Status code, reason phrase and extra headers of an answer the core decided on.
type Answer = (u16, &'static str, Vec<(&'static str, String)>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{parse, Framing};

    fn core() -> Core {
        Core::new(&Config::embedded(), Arc::new(Metrics::default()))
    }

    fn inbound() -> Inbound {
        Inbound { transport: TransportKind::Udp, local: "[::1]:5060".parse().unwrap(), remote: "[::1]:40000".parse().unwrap() }
    }

    fn answer(text: &str) -> Option<String> {
        let m = parse(Bytes::copy_from_slice(text.as_bytes()), Framing::Datagram).unwrap();
        core().on_message(m, inbound()).map(|o| String::from_utf8(o.bytes.to_vec()).unwrap())
    }

    fn request(method: &str, ruri: &str, extra: &str) -> String {
        format!(
            "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP [::1]:40000;branch=z9hG4bK1;rport\r\nMax-Forwards: 70\r\n\
             From: <sip:a@localhost>;tag=1\r\nTo: <{ruri}>\r\nCall-ID: c1\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
        )
    }

    #[test]
    fn options_to_the_proxy_itself() {
        let a = answer(&request("OPTIONS", "sip:localhost", "")).unwrap();
        assert!(a.starts_with("SIP/2.0 200 OK\r\n"), "{a}");
        assert!(a.contains("\r\nAllow: OPTIONS\r\n") && a.contains("\r\nAccept: application/sdp\r\n"));
        assert!(a.contains("Via: SIP/2.0/UDP [::1]:40000;branch=z9hG4bK1;rport=40000;received=::1\r\n"), "{a}");
        assert!(a.contains("To: <sip:localhost>;tag=sg"), "{a}");
        let a = answer(&request("OPTIONS", "sip:[::1]:5060", "")).unwrap();
        assert!(a.starts_with("SIP/2.0 200 OK\r\n"), "{a}");
    }

    #[test]
    fn refusals_carry_the_right_status() {
        let cases = [
            (request("OPTIONS", "sip:bob@example.net", ""), "403"),
            (request("OPTIONS", "sip:bob@localhost", ""), "404"),
            (request("OPTIONS", "sip:localhost", "Proxy-Require: foo\r\n"), "420"),
            (request("OPTIONS", "sip:localhost", "Require: foo\r\n"), "420"),
            (request("OPTIONS", "nobodyknowsthisscheme:x", ""), "416"),
            (request("REGISTER", "sip:localhost", ""), "405"),
            (request("BYE", "sip:localhost", ""), "481"),
            (request("FOO", "sip:localhost", ""), "501"),
            (request("INVITE", "sip:bob@example.net", "").replace("Max-Forwards: 70", "Max-Forwards: 0"), "483"),
            (request("OPTIONS", "sip:bob@example.net", "").replace("Max-Forwards: 70", "Max-Forwards: 0"), "200"),
        ];
        for (req, code) in cases {
            let a = answer(&req).unwrap();
            assert!(a.starts_with(&format!("SIP/2.0 {code} ")), "want {code} for\n{req}\ngot\n{a}");
        }
        assert_eq!(answer(&request("ACK", "sip:localhost", "")), None);
    }

    #[test]
    fn invalid_requests_get_a_400_but_never_an_amplified_one_on_udp() {
        let core = core();
        let bad = request("OPTIONS", "sip:localhost", "").replace("Max-Forwards: 70", "Max-Forwards: 300");
        let err = parse(Bytes::copy_from_slice(bad.as_bytes()), Framing::Datagram).unwrap_err();
        let out = core.on_invalid(bad.as_bytes(), &err, inbound()).unwrap();
        assert!(out.bytes.starts_with(b"SIP/2.0 400 Bad Max-Forwards header"));
        // The bare minimum a 400 can be built from, with a long reason: larger than the request.
        let tiny = "X a:b SIP/2.0\r\nv:c\r\nf:d\r\nt:e\r\ni:f\r\nCSeq:1 X\r\n\r\n";
        let err = MessageError::BadRequestUri("not a valid URI of any scheme we know of");
        assert!(crate::message::response::reject(tiny.as_bytes(), &err).unwrap().len() > 2 * tiny.len());
        assert!(core.on_invalid(tiny.as_bytes(), &err, inbound()).is_none(), "UDP: not sent");
        let tcp = Inbound { transport: TransportKind::Tcp, ..inbound() };
        assert!(core.on_invalid(tiny.as_bytes(), &err, tcp).is_some(), "TCP: the handshake proved the address");
    }
}
