//! Property tests: no input makes the parser, the response salvager, the stream framer, the
//! STUN responder or the datagram handler panic (the invariants live in `sixgate::fuzzing`,
//! shared with the libFuzzer target in `fuzz/`). Inputs are arbitrary bytes and, more usefully,
//! the torture vectors mutated (bytes flipped, cut, spliced), which keep most of the structure.

use proptest::prelude::*;
use sixgate::message::uri;
use sixgate::transport::stun;
use std::sync::OnceLock;

fn seeds() -> &'static Vec<Vec<u8>> {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/sip-torture");
        let mut v = Vec::new();
        for sub in ["rfc4475", "rfc5118"] {
            for e in std::fs::read_dir(dir.join(sub)).expect("torture corpus").flatten() {
                v.push(std::fs::read(e.path()).unwrap());
            }
        }
        v.sort();
        v
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Cut(usize),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
}

fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let m = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<usize>().prop_map(Mutation::Cut),
        (any::<usize>(), prop::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b' '), Just(b';'), Just(b','), Just(b'"'), Just(b'<'), Just(b'['), Just(b':'), any::<u8>()], 1..8)).prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<usize>(), 1usize..40).prop_map(|(i, n)| Mutation::Delete(i, n)),
    ];
    (0..61usize, prop::collection::vec(m, 1..6)).prop_map(|(seed, muts)| {
        let s = seeds();
        let mut v = s[seed % s.len()].clone();
        for m in muts {
            let len = v.len().max(1);
            match m {
                Mutation::Flip(i, b) => {
                    if !v.is_empty() {
                        v[i % len] = b;
                    }
                }
                Mutation::Cut(i) => v.truncate(i % len),
                Mutation::Insert(i, bytes) => {
                    let at = i % (v.len() + 1);
                    v.splice(at..at, bytes);
                }
                Mutation::Delete(i, n) => {
                    let at = i % len;
                    let end = (at + n).min(v.len());
                    if at < end {
                        v.drain(at..end);
                    }
                }
            }
        }
        v
    })
}

use sixgate::fuzzing::exercise;

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..2048)) {
        exercise(&data);
    }

    #[test]
    fn mutated_torture_vectors_never_panic(data in mutated()) {
        exercise(&data);
    }

    #[test]
    fn arbitrary_stun_headers_never_panic(body in prop::collection::vec(any::<u8>(), 0..200), ty in 0u16..0x4000) {
        let mut m = ty.to_be_bytes().to_vec();
        m.extend_from_slice(&(body.len() as u16).to_be_bytes());
        m.extend_from_slice(&stun::MAGIC_COOKIE.to_be_bytes());
        m.extend_from_slice(&[9u8; 12]);
        m.extend_from_slice(&body);
        exercise(&m);
    }

    /// The hand-written address parsers (faster than going through `str` and `std`'s generic
    /// parser) must accept and decode exactly what `std` does.
    #[test]
    fn address_parsers_agree_with_std(s in "[0-9a-fA-F:.]{0,45}", v4 in "[0-9.]{0,17}") {
        prop_assert_eq!(uri::parse_ipv6(s.as_bytes()), s.parse::<std::net::Ipv6Addr>().ok(), "{}", s);
        prop_assert_eq!(uri::parse_ipv4(v4.as_bytes()), v4.parse::<std::net::Ipv4Addr>().ok(), "{}", v4);
    }

    /// Random strings are rarely near a valid address, so also start from real addresses in
    /// their three text forms (compressed, full, dotted-quad tail) and change one character.
    #[test]
    fn address_parsers_agree_with_std_near_valid_addresses(
        bits in any::<u128>(),
        zero_mask in any::<u8>(),
        form in 0u8..3,
        edit in 0u8..4,
        at in any::<prop::sample::Index>(),
        ch in prop::sample::select(b"0123456789abcdefABCDEF:.g".to_vec()),
    ) {
        // Zero some groups so that `::` compression shows up often.
        let mut groups = [0u16; 8];
        for (i, g) in groups.iter_mut().enumerate() {
            *g = if zero_mask & (1 << i) != 0 { 0 } else { (bits >> (16 * i)) as u16 };
        }
        let a = std::net::Ipv6Addr::from(groups);
        let text = match form {
            0 => a.to_string(),
            1 => groups.iter().map(|g| format!("{g:x}")).collect::<Vec<_>>().join(":"),
            _ => {
                let o = a.octets();
                let head: Vec<String> = groups[..6].iter().map(|g| format!("{g:x}")).collect();
                format!("{}:{}.{}.{}.{}", head.join(":"), o[12], o[13], o[14], o[15])
            }
        };
        let mut b = text.into_bytes();
        let i = at.index(b.len() + 1);
        match edit {
            0 => {}
            1 if i < b.len() => { b.remove(i); }
            2 => b.insert(i, ch),
            _ if i < b.len() => b[i] = ch,
            _ => {}
        }
        let s = String::from_utf8(b).unwrap();
        prop_assert_eq!(uri::parse_ipv6(s.as_bytes()), s.parse::<std::net::Ipv6Addr>().ok(), "{}", s);
    }
}
