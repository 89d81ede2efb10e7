//! Dialogs (RFC 3261 §12) as the proxy sees them: one per answered INVITE (or SUBSCRIBE), with
//! each leg's transport, family and flow, where each side's in-dialog requests go, and the
//! carrier used — for in-dialog admission, the media hand-off and `sixgate ctl`.
//!
//! In-dialog requests are forwarded only when they belong to a dialog here, come from one of its
//! two parties, and then only to the *other* party's stored target — never to wherever the
//! request's Route or Request-URI points — so an "in-dialog" request cannot reach a carrier (or
//! any other host) that the authenticated call did not already reach.

use super::Hop;
use crate::config::TransportKind;
use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Instant;

/// One side of a call: where its messages come from and go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leg {
    pub transport: TransportKind,
    /// Our socket on this side.
    pub local: SocketAddr,
    /// The peer's address (source of its messages).
    pub remote: SocketAddr,
}

impl Leg {
    pub fn is_ipv6(&self) -> bool {
        self.local.is_ipv6()
    }
}

#[derive(Clone, Debug)]
pub struct Dialog {
    pub call_id: Bytes,
    pub caller_tag: Bytes,
    pub callee_tag: Bytes,
    pub caller: Leg,
    pub callee: Leg,
    /// Where requests from the callee go: the flow the INVITE came on (for a carrier: its
    /// Contact when that lies in its source CIDRs).
    pub caller_target: Hop,
    /// Where requests from the caller go: the hop the INVITE went to (same carrier rule).
    pub callee_target: Hop,
    /// The address each side's Contact named, admitted as a source of that side's requests.
    pub caller_contact: Option<std::net::IpAddr>,
    pub callee_contact: Option<std::net::IpAddr>,
    /// The carrier on each side, if any (its source CIDRs may send for that side).
    pub caller_carrier: Option<usize>,
    pub callee_carrier: Option<usize>,
    /// The authenticated user who placed the call, if a local user did.
    pub user: Option<String>,
    /// The carrier the call went to or came from.
    pub carrier: Option<String>,
    pub created: Instant,
    pub last_activity: Instant,
    /// Added to CSeq numbers from caller to callee (a carrier digest retry took one number).
    pub cseq_offset: u32,
    /// What ending the call from the middle needs (a media timeout).
    pub teardown: Teardown,
    /// The relay sessions of a relayed call (`None`: direct media).
    pub media: Option<super::media::DialogMedia>,
    /// Made by a provisional answer and not yet confirmed by a 2xx (RFC 3261 §12.1).
    pub early: bool,
    /// An INVITE dialog's times and parties, for its call record (`None`: SUBSCRIBE/REFER).
    pub call: Option<super::calls::CallInfo>,
    /// One-way audio watch of a relayed call.
    pub watch: super::calls::MediaWatch,
}

/// Enough of both parties to send each a BYE in the other's name.
#[derive(Clone, Debug, Default)]
pub struct Teardown {
    /// The caller's From and the callee's To, as written (tags included).
    pub caller_from: String,
    pub callee_to: String,
    /// Each party's Contact URI (the Request-URI of requests to it).
    pub caller_uri: String,
    pub callee_uri: String,
    /// Route values toward each party (proxies beyond us), nearest first.
    pub caller_routes: Vec<String>,
    pub callee_routes: Vec<String>,
    /// The highest CSeq each party used so far.
    pub caller_cseq: u32,
    pub callee_cseq: u32,
}

impl Dialog {
    pub fn crosses_family(&self) -> bool {
        self.caller.is_ipv6() != self.callee.is_ipv6()
    }
}

/// A request's Call-ID, From tag and To tag. A dialog is found under both orders of its tags:
/// (caller, callee) for requests from the caller, (callee, caller) for requests from the callee.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DialogKey {
    pub call_id: Bytes,
    pub from_tag: Bytes,
    pub to_tag: Bytes,
}

impl DialogKey {
    pub fn both(d: &Dialog) -> [DialogKey; 2] {
        [
            DialogKey { call_id: d.call_id.clone(), from_tag: d.caller_tag.clone(), to_tag: d.callee_tag.clone() },
            DialogKey { call_id: d.call_id.clone(), from_tag: d.callee_tag.clone(), to_tag: d.caller_tag.clone() },
        ]
    }

    /// The key of a request (its To tag must be present for it to be in a dialog).
    pub fn of(msg: &crate::message::Message) -> DialogKey {
        let tag = |t: Option<crate::message::Span>| Bytes::copy_from_slice(t.map_or(&[][..], |t| msg.slice(t)));
        DialogKey { call_id: Bytes::copy_from_slice(msg.slice(msg.call_id)), from_tag: tag(msg.from.tag), to_tag: tag(msg.to.tag) }
    }
}

/// Whether two addresses are of one network: the same IPv4 address, or the same IPv6 /64
/// (IPv4-mapped IPv6 addresses count as their IPv4 address).
pub fn same_network(a: std::net::IpAddr, b: std::net::IpAddr) -> bool {
    use std::net::IpAddr::{V4, V6};
    let norm = |ip: std::net::IpAddr| match ip {
        V6(x) => x.to_ipv4_mapped().map_or(ip, V4),
        v4 => v4,
    };
    crate::transport::source_key(norm(a)) == crate::transport::source_key(norm(b))
}
