//! Whether a call's media goes through the relay, decided per call from what sixgate knows of
//! each leg's flow (registrar binding, carrier config, the request's source) — never from
//! guesses about the SDP: relay when the families differ, when a leg is behind NAT (symmetric
//! RTP by latching), or when the operator says always.

use crate::config::RelayMode;

/// What the decision needs to know of one leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LegView {
    pub ipv6: bool,
    pub nat: bool,
}

/// Relay this call's media?
pub fn needs_relay(mode: RelayMode, a: LegView, b: LegView) -> bool {
    match mode {
        RelayMode::Always => true,
        RelayMode::Never => false,
        RelayMode::Auto => a.ipv6 != b.ipv6 || a.nat || b.nat,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_only_where_it_is_needed_unless_told() {
        let v6 = LegView { ipv6: true, nat: false };
        let v4 = LegView { ipv6: false, nat: false };
        let v4_nat = LegView { ipv6: false, nat: true };
        assert!(needs_relay(RelayMode::Auto, v6, v4), "families differ");
        assert!(!needs_relay(RelayMode::Auto, v6, v6), "two public IPv6 phones talk directly");
        assert!(!needs_relay(RelayMode::Auto, v4, v4));
        assert!(needs_relay(RelayMode::Auto, v4_nat, v4), "a NATed leg needs latching");
        assert!(needs_relay(RelayMode::Always, v6, v6));
        assert!(!needs_relay(RelayMode::Never, v6, v4));
    }
}
