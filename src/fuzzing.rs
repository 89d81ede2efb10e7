//! The invariants every input must keep, shared by the property tests (`tests/fuzz_parsers.rs`)
//! and the coverage-guided libFuzzer target (`fuzz/`), so both check the same things:
//! nothing panics; an unedited message serializes to the bytes it was parsed from; a request
//! stamped with received/rport parses again with the stamp; a refused message gets a clean
//! response (never for a response or an ACK; no NUL, no bare CR/LF) or is dropped; the datagram
//! handler, the STUN responder and the stream framer take anything.

use crate::config::{Config, TransportKind};
use crate::core::Core;
use crate::message::{parse, response, Framing};
use crate::metrics::Metrics;
use crate::transport::{framing::StreamFramer, stamp_received, stun, udp, Inbound};
use bytes::Bytes;
use std::sync::{Arc, OnceLock};

fn core() -> &'static Core {
    static CORE: OnceLock<Core> = OnceLock::new();
    CORE.get_or_init(|| Core::new(&Config::embedded(), Arc::new(Metrics::default())))
}

fn inbound() -> Inbound {
    Inbound {
        transport: TransportKind::Udp,
        local: "[::1]:5060".parse().expect("literal"),
        remote: "[2001:db8::1]:4000".parse().expect("literal"),
    }
}

/// Runs `data` through every parser and handler; panics if an invariant breaks.
pub fn exercise(data: &[u8]) {
    for framing in [Framing::Datagram, Framing::Stream] {
        match parse(Bytes::copy_from_slice(data), framing) {
            Ok(m) => {
                // Serializing an unedited message reproduces its bytes (minus any trailing extra).
                assert!(data.starts_with(&m.to_bytes()), "unedited message must serialize byte-exact");
                if m.is_request() {
                    let mut m = m;
                    let src: std::net::SocketAddr = "[2001:db8::99]:4999".parse().expect("literal");
                    stamp_received(&mut m, src);
                    let again = parse(m.to_bytes(), framing).expect("a stamped message parses again");
                    let r = again.top_via().received.expect("received present");
                    assert_eq!(again.slice(r), b"2001:db8::99");
                }
            }
            Err(e) => {
                if let Some(answer) = response::reject(data, &e) {
                    // Whatever the input, an answer is never for a response or an ACK, and
                    // its lines are clean: no NUL, every CR and LF part of a CRLF.
                    let first = data.iter().position(|&c| c != b'\r' && c != b'\n').unwrap_or(data.len());
                    let start = &data[first..];
                    assert!(!(start.len() >= 4 && start[..4].eq_ignore_ascii_case(b"SIP/")), "a response was answered");
                    assert!(!start.starts_with(b"ACK "), "an ACK was answered");
                    assert!(!answer.contains(&0), "NUL in an answer");
                    for (i, &c) in answer.iter().enumerate() {
                        let ok = match c {
                            b'\r' => answer.get(i + 1) == Some(&b'\n'),
                            b'\n' => i > 0 && answer[i - 1] == b'\r',
                            _ => true,
                        };
                        assert!(ok, "bare CR or LF in an answer");
                    }
                    assert!(answer.ends_with(b"\r\n\r\n"));
                }
            }
        }
    }
    let _ = udp::handle_datagram(core(), data, inbound(), 65535);
    let _ = stun::answer(data, inbound().remote);
    let mut f = StreamFramer::new(4096);
    for chunk in data.chunks(7) {
        f.push(chunk);
        for _ in 0..64 {
            match f.next_frame() {
                Ok(Some(_)) => continue,
                _ => break,
            }
        }
    }
}
