//! Property test of the stateful engine (the invariants live in `sixgate::fuzzing::
//! exercise_engine`, shared with the libFuzzer target `engine_input`): any sequence of messages
//! from phones and carriers, with time jumps and the engine's own messages replayed at it,
//! never panics, and every table drains once time has passed.

use proptest::prelude::*;

/// Messages a phone or a carrier would send, as templates the strategy picks and mutates.
const TEMPLATES: &[&str] = &[
    "INVITE sip:+442079999999@sixgate.test SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::10]:5062;branch=z9hG4bKB1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:alice@sixgate.test>;tag=T1\r\nTo: <sip:+442079999999@sixgate.test>\r\nCall-ID: C1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
    "INVITE sip:+442071234567@sixgate.test SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKB2\r\nMax-Forwards: 70\r\nFrom: <sip:+441@198.51.100.1>;tag=T2\r\nTo: <sip:+442071234567@sixgate.test>\r\nCall-ID: C2\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
    "CANCEL sip:+442079999999@sixgate.test SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::10]:5062;branch=z9hG4bKB1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:alice@sixgate.test>;tag=T1\r\nTo: <sip:+442079999999@sixgate.test>\r\nCall-ID: C1\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n",
    "ACK sip:+442079999999@sixgate.test SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::10]:5062;branch=z9hG4bKB1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:alice@sixgate.test>;tag=T1\r\nTo: <sip:+442079999999@sixgate.test>;tag=R1\r\nCall-ID: C1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
    "BYE sip:+442079999999@198.51.100.1 SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::10]:5062;branch=z9hG4bKB3;rport\r\nRoute: <sip:[2001:db8::5]:5060;lr>, <sip:192.0.2.5:5060;lr>\r\nMax-Forwards: 70\r\nFrom: <sip:alice@sixgate.test>;tag=T1\r\nTo: <sip:+442079999999@sixgate.test>;tag=R1\r\nCall-ID: C1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
    "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.5:5060;branch=z9hG4bK-sg0;rport\r\nVia: SIP/2.0/UDP [2001:db8::10]:5062;branch=z9hG4bKB1;rport\r\nRecord-Route: <sip:192.0.2.5:5060;lr>\r\nFrom: <sip:alice@sixgate.test>;tag=T1\r\nTo: <sip:+442079999999@sixgate.test>;tag=R1\r\nCall-ID: C1\r\nCSeq: 1 INVITE\r\nContact: <sip:x@198.51.100.1>\r\nContent-Length: 0\r\n\r\n",
    "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 192.0.2.5:5060;branch=z9hG4bK-sg0;rport\r\nFrom: <sip:alice@sixgate.test>;tag=T1\r\nTo: <sip:+442079999999@sixgate.test>;tag=R1\r\nCall-ID: C1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
    "REGISTER sip:sixgate.test SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.10:5060;branch=z9hG4bKB5;rport\r\nMax-Forwards: 70\r\nFrom: <sip:alice@sixgate.test>;tag=T5\r\nTo: <sip:alice@sixgate.test>\r\nCall-ID: C5\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@192.168.1.10:5060>;expires=60\r\nContent-Length: 0\r\n\r\n",
    "REGISTER sip:sixgate.test SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::10]:5062;branch=z9hG4bKB6;rport\r\nMax-Forwards: 70\r\nFrom: <sip:alice@sixgate.test>;tag=T6\r\nTo: <sip:alice@sixgate.test>\r\nCall-ID: C6\r\nCSeq: 2 REGISTER\r\nAuthorization: Digest username=\"alice\", realm=\"sixgate.test\", nonce=\"1.2.abc\", uri=\"sip:sixgate.test\", response=\"00\", qop=auth, nc=00000001, cnonce=\"x\"\r\nContact: *\r\nExpires: 0\r\nContent-Length: 0\r\n\r\n",
    "OPTIONS sip:sixgate.test SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKB4\r\nMax-Forwards: 70\r\nFrom: <sip:alice@sixgate.test>;tag=T4\r\nTo: <sip:sixgate.test>\r\nCall-ID: C4\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
];

/// A step: peer/time byte, then a template with a few of its identifiers swapped (so
/// branches, tags and Call-IDs collide or differ), or a one-byte "replay the engine's message".
fn step() -> impl Strategy<Value = Vec<u8>> {
    let swap = prop::sample::select(vec!["B1", "B2", "B3", "T1", "R1", "C1", "C2", "sg0", "180", "200", "INVITE", "+44", "expires=60", "alice@sixgate"]);
    let with = prop::sample::select(vec!["B9", "T9", "R9", "C9", "486", "503", "401", "MESSAGE", "+1", "sg1", "100", "expires=0", "pbx@sixgate"]);
    prop_oneof![
        (1u8..=255, 0..TEMPLATES.len(), prop::collection::vec((swap, with), 0..3)).prop_map(|(ctl, i, swaps)| {
            let mut t = TEMPLATES[i].to_string();
            for (a, b) in swaps {
                t = t.replacen(a, b, 1);
            }
            let mut v = vec![ctl];
            v.extend_from_slice(t.as_bytes());
            v
        }),
        (1u8..=255, any::<u8>()).prop_map(|(ctl, k)| vec![ctl, k.max(1)]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn engine_never_panics_and_its_tables_drain(steps in prop::collection::vec(step(), 1..40)) {
        let mut data = Vec::new();
        for s in steps {
            data.extend_from_slice(&s);
            data.extend_from_slice(b"\0\0");
        }
        sixgate::fuzzing::exercise_engine(&data);
    }
}
