//! Property test of the SDP parser and rewriter (`sixgate::media::sdp`): any mutation of real
//! offers never panics; whatever parses rewrites into a body that parses again, with the same
//! streams (disabled ones still disabled), and that names no address of the other family.

use proptest::prelude::*;
use sixgate::media::sdp::Sdp;

const BODIES: &[&str] = &[
    "v=0\r\no=alice 2890844526 2890844526 IN IP6 2001:db8::10\r\ns=-\r\nc=IN IP6 2001:db8::10\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=rtcp:49171\r\na=sendrecv\r\n",
    "v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=call\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\na=ice-ufrag:x\r\nm=audio 4000 RTP/SAVPF 111\r\na=candidate:1 1 udp 1 192.0.2.1 4000 typ host\r\na=rtcp-mux\r\nm=video 0 RTP/AVP 96\r\n",
    "v=0\no=- 5 5 IN IP4 10.0.0.2\ns=-\nt=0 0\nm=audio 5004/2 RTP/AVP 0\nc=IN IP4 0.0.0.0\na=inactive\nm=video 5006 RTP/AVP 31\nc=IN IP6 ::1\n",
];

fn mutated() -> impl Strategy<Value = Vec<u8>> {
    (0..BODIES.len(), prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..6)).prop_map(|(i, edits)| {
        let mut b = BODIES[i].as_bytes().to_vec();
        for (at, byte, op) in edits {
            let k = at.index(b.len() + 1);
            match op {
                0 if k < b.len() => b[k] = byte,
                1 => b.insert(k, byte),
                _ if k < b.len() => {
                    b.remove(k);
                }
                _ => {}
            }
        }
        b
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
    #[test]
    fn sdp_parse_and_rewrite_hold_their_invariants(body in mutated(), v6 in any::<bool>(), strip in any::<bool>()) {
        let Ok(sdp) = Sdp::parse(&body) else { return Ok(()) };
        let relay: std::net::IpAddr = if v6 { "2001:db8:ffff::5".parse().unwrap() } else { "203.0.113.5".parse().unwrap() };
        let ports: Vec<u16> = (0..sdp.media.len()).map(|i| 30000 + 2 * i as u16).collect();
        let out = sdp.rewrite(relay, &ports, sdp.version.wrapping_add(1), strip);
        let again = Sdp::parse(out.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}: {out}")))?;
        prop_assert_eq!(again.media.len(), sdp.media.len());
        for (a, b) in sdp.media.iter().zip(&again.media) {
            prop_assert_eq!(a.port == 0, b.port == 0);
            prop_assert_eq!(b.addr.is_ipv6(), v6, "{}", out);
        }
        let other = if v6 { " IP4 " } else { " IP6 " };
        prop_assert!(!out.contains(other), "{}", out);
        if strip {
            prop_assert!(!out.contains("a=candidate") && !out.contains("a=ice-"), "{}", out);
        }
    }
}

#[test]
fn the_seed_bodies_parse() {
    // Otherwise the property above would only ever see refusals.
    for b in BODIES {
        assert!(Sdp::parse(b.as_bytes()).is_ok(), "{b}");
    }
}
