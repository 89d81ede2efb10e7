//! Dialogs (RFC 3261 §12) as the proxy sees them: one per answered INVITE, with each leg's
//! transport, family and flow and the carrier used, for in-dialog admission, the media hand-off
//! and `sixgate ctl`. In-dialog requests are forwarded only when they belong to a dialog here,
//! so a made-up "in-dialog" request cannot reach a carrier unauthenticated.

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
    /// The authenticated user who placed the call, if a local user did.
    pub user: Option<String>,
    /// The carrier the call went to or came from.
    pub carrier: Option<String>,
    pub created: Instant,
    pub last_activity: Instant,
    /// Added to CSeq numbers from caller to callee (a carrier digest retry took one number).
    pub cseq_offset: u32,
}

impl Dialog {
    pub fn crosses_family(&self) -> bool {
        self.caller.is_ipv6() != self.callee.is_ipv6()
    }
}

/// Call-ID and the two tags; `(call_id, a, b)` and `(call_id, b, a)` name the same dialog.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DialogKey {
    pub call_id: Bytes,
    pub local_tag: Bytes,
    pub remote_tag: Bytes,
}

impl DialogKey {
    pub fn both(d: &Dialog) -> [DialogKey; 2] {
        [
            DialogKey { call_id: d.call_id.clone(), local_tag: d.caller_tag.clone(), remote_tag: d.callee_tag.clone() },
            DialogKey { call_id: d.call_id.clone(), local_tag: d.callee_tag.clone(), remote_tag: d.caller_tag.clone() },
        ]
    }
}
