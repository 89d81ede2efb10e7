//! Matching messages to transactions (RFC 3261 §17.1.3, §17.2.3): by the top Via branch with the
//! magic cookie, and by the RFC 2543 rules for peers whose branch lacks it.

use crate::config::TransportKind;
use crate::message::{Message, Method};
use bytes::Bytes;
use std::hash::{Hash, Hasher};

/// Which server transaction a method belongs to: ACK goes with its INVITE; CANCEL has its own.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KeyMethod {
    Invite,
    Cancel,
    Other(Bytes),
}

impl KeyMethod {
    fn of(msg: &Message) -> KeyMethod {
        let m = msg.method().unwrap_or(Method::Extension);
        match m {
            Method::Invite | Method::Ack => KeyMethod::Invite,
            Method::Cancel => KeyMethod::Cancel,
            _ => KeyMethod::Other(Bytes::copy_from_slice(msg.method_bytes())),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ServerKey {
    /// RFC 3261: branch, sent-by and method — and the transport it arrived on: a request is
    /// retransmitted on the transport it was sent on (§18.1.1), so the same branch over another
    /// transport is another client's request (or a test's), not a retransmission.
    Branch { branch: Bytes, sent_by: Bytes, method: KeyMethod, transport: TransportKind },
    /// RFC 2543 (§17.2.3 last paragraphs): a hash of Request-URI, From tag, Call-ID, CSeq number
    /// and the top Via, with the method. The To tag is left out so the ACK matches its INVITE.
    Legacy { hash: u64, method: KeyMethod },
}

impl ServerKey {
    pub fn of(msg: &Message, transport: TransportKind) -> ServerKey {
        let buf = msg.bytes();
        let via = msg.top_via();
        let method = KeyMethod::of(msg);
        if via.has_rfc3261_branch(buf) {
            let branch = via.branch.map_or(Bytes::new(), |b| buf.slice(b.start as usize..b.end as usize));
            let mut sent_by = msg.slice(via.host_span).to_ascii_lowercase();
            if let Some(p) = via.port {
                sent_by.extend_from_slice(format!(":{p}").as_bytes());
            }
            return ServerKey::Branch { branch, sent_by: Bytes::from(sent_by), method, transport };
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        msg.request_uri().map(|u| msg.slice(u.span)).hash(&mut h);
        msg.from.tag.map(|t| msg.slice(t)).hash(&mut h);
        msg.slice(msg.call_id).hash(&mut h);
        msg.cseq.seq.hash(&mut h);
        msg.slice(via.span).hash(&mut h);
        ServerKey::Legacy { hash: h.finish(), method }
    }

    /// The key of the INVITE transaction a CANCEL refers to (same branch, method INVITE).
    pub fn invite_of_cancel(&self) -> ServerKey {
        match self {
            ServerKey::Branch { branch, sent_by, transport, .. } => {
                ServerKey::Branch { branch: branch.clone(), sent_by: sent_by.clone(), method: KeyMethod::Invite, transport: *transport }
            }
            ServerKey::Legacy { hash, .. } => ServerKey::Legacy { hash: *hash, method: KeyMethod::Invite },
        }
    }
}

/// A client transaction is found by the branch we generated and the CSeq method (§17.1.3).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub branch: Bytes,
    pub method: Bytes,
}

impl ClientKey {
    /// The key of a request we send, and of the responses to it (they carry our Via on top);
    /// `None` when the top Via has no branch.
    pub fn of(msg: &Message) -> Option<ClientKey> {
        let via = msg.top_via();
        let b = via.branch?;
        let buf = msg.bytes();
        Some(ClientKey { branch: buf.slice(b.start as usize..b.end as usize), method: Bytes::copy_from_slice(msg.slice(msg.cseq.method)) })
    }
}
