//! Media hand-off (DESIGN.md "media/"): SDP parsing and rewriting between address families
//! ([`sdp`], RFC 8866 / RFC 3264 / RFC 3605). The offer/answer state per dialog and the relay
//! sessions (`sixgate-relay`) plug in here next (issue: calls across address families).

pub mod sdp;
