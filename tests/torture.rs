//! The SIP torture vectors (RFC 4475, RFC 5118) from `../shared/testdata/sip-torture/`, driven by
//! its manifest: every listed message must be classified as the RFC says. A new manifest line is
//! a new case; a new "valid-but-unusual" vector must be given its expected outcome below.

use bytes::Bytes;
use sixgate::message::{parse, response, Framing, MessageError, Scheme};
use std::path::PathBuf;

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/sip-torture")
}

struct Vector {
    file: String,
    section: String,
    expected: String,
    bytes: Bytes,
}

fn vectors() -> Vec<Vector> {
    let dir = corpus();
    let manifest = std::fs::read_to_string(dir.join("manifest.tsv"))
        .unwrap_or_else(|e| panic!("torture manifest missing at {}: {e}", dir.display()));
    manifest
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            assert!(cols.len() >= 3, "bad manifest line: {l}");
            let bytes = std::fs::read(dir.join(cols[0])).unwrap_or_else(|e| panic!("{}: {e}", cols[0]));
            Vector { file: cols[0].into(), section: cols[1].into(), expected: cols[2].into(), bytes: bytes.into() }
        })
        .collect()
}

/// What sixgate must do with each valid-but-unusual vector.
enum Unusual {
    /// Parsed and accepted by the message layer (what the core then does is tested in core).
    Accepted,
    /// Refused by the message layer with this error; `answered` tells whether a response can be built.
    Refused(fn(&MessageError) -> bool, bool),
}

fn unusual(file: &str) -> Option<Unusual> {
    use Unusual::*;
    let name = file.rsplit('/').next()?.trim_end_matches(".sip");
    Some(match name {
        "dblreq" | "trws" | "badbranch" | "unkscm" | "novelsc" | "unksm2" | "bext01" | "invut" | "regaut01"
        | "bcast" | "zeromf" | "cparam01" | "cparam02" | "regescrt" | "sdp01" | "inv2543" | "port-ambiguous"
        | "via-received-param-with-delim" => Accepted,
        // Call-ID, From, To missing: nothing to build a response from.
        "insuf" => Refused(|e| matches!(e, MessageError::MissingHeader(_)), false),
        "multi01" => Refused(|e| matches!(e, MessageError::DuplicateHeader(_)), true),
        "mcl01" => Refused(|e| *e == MessageError::DuplicateHeader("Content-Length"), true),
        _ => return None,
    })
}

#[test]
fn every_vector_is_classified_as_the_rfc_says() {
    let vs = vectors();
    assert!(vs.len() >= 61, "expected the full corpus, found {}", vs.len());
    let mut failures = Vec::new();
    for v in &vs {
        let result = parse(v.bytes.clone(), Framing::Datagram);
        let is_request = !v.bytes.starts_with(b"SIP/");
        let verdict = match (v.expected.as_str(), &result) {
            ("valid", Ok(_)) => Ok(()),
            ("valid", Err(e)) => Err(format!("refused a valid message: {e}")),
            ("invalid", Ok(_)) => Err("accepted an invalid message".to_string()),
            ("invalid", Err(e)) => {
                // A refused request is answered when its headers allow, with the error's status.
                match (is_request, response::reject(&v.bytes, e)) {
                    (true, Some(answer)) => {
                        let status = format!("SIP/2.0 {} ", e.status());
                        if answer.starts_with(status.as_bytes()) {
                            Ok(())
                        } else {
                            Err(format!("answer does not start with {status:?}"))
                        }
                    }
                    (false, Some(_)) => Err("answered a response".into()),
                    (_, None) => Ok(()), // dropped: nothing to answer to
                }
            }
            ("valid-but-unusual", r) => match (unusual(&v.file), r) {
                (None, _) => Err("no expected outcome recorded for this valid-but-unusual vector".into()),
                (Some(Unusual::Accepted), Ok(_)) => Ok(()),
                (Some(Unusual::Accepted), Err(e)) => Err(format!("refused: {e}")),
                (Some(Unusual::Refused(..)), Ok(_)) => Err("accepted, should be refused".into()),
                (Some(Unusual::Refused(check, answered)), Err(e)) => {
                    if !check(e) {
                        Err(format!("refused for the wrong reason: {e}"))
                    } else if response::reject(&v.bytes, e).is_some() != answered {
                        Err(format!("answerable should be {answered}"))
                    } else {
                        Ok(())
                    }
                }
            },
            (other, _) => Err(format!("unknown verdict {other:?} in manifest")),
        };
        if let Err(why) = verdict {
            failures.push(format!("{} ({}): {why}", v.file, v.section));
        }
    }
    assert!(failures.is_empty(), "{} vector(s) misclassified:\n{}", failures.len(), failures.join("\n"));
}

fn load(name: &str) -> Bytes {
    std::fs::read(corpus().join(name)).unwrap().into()
}

#[test]
fn dblreq_keeps_only_the_first_message() {
    let bytes = load("rfc4475/dblreq.sip");
    let m = parse(bytes.clone(), Framing::Datagram).unwrap();
    assert_eq!(m.method_bytes(), b"REGISTER");
    let out = m.to_bytes();
    assert!(out.len() < bytes.len());
    assert!(!out.windows(6).any(|w| w == b"INVITE"), "the second request must be discarded");
}

#[test]
fn wsinv_decodes_folded_and_compact_headers() {
    let m = parse(load("rfc4475/wsinv.sip"), Framing::Datagram).unwrap();
    assert_eq!(m.vias.len(), 3, "three Vias in two header lines");
    assert_eq!(m.max_forwards, Some(68));
    assert_eq!(m.cseq.seq, 9);
    assert_eq!(m.slice(m.to.tag.unwrap()), b"1918181833n");
    assert_eq!(m.slice(m.from.tag.unwrap()), b"98asjd8");
    assert_eq!(m.body.len(), 150);
    // Forwarded untouched when nothing was patched.
    assert_eq!(m.to_bytes(), load("rfc4475/wsinv.sip"));
}

#[test]
fn ipv6_vectors_decode_addresses() {
    let m = parse(load("rfc5118/mult-ip-in-header.sip"), Framing::Datagram).unwrap();
    assert_eq!(m.vias.len(), 3);
    assert_eq!(m.vias[0].host.ip(), Some("2001:db8::9:1".parse().unwrap()));
    assert_eq!(m.vias[0].port, Some(6050));
    assert_eq!(m.vias[1].host.ip(), Some("192.0.2.1".parse().unwrap()));
    let m = parse(load("rfc5118/ipv4-mapped-ipv6.sip"), Framing::Datagram).unwrap();
    assert_eq!(m.top_via().port, Some(19823));
    let m = parse(load("rfc5118/port-ambiguous.sip"), Framing::Datagram).unwrap();
    let uri = m.request_uri().unwrap();
    assert_eq!(uri.port, None);
    assert_eq!(uri.host.unwrap().ip(), Some("2001:db8::10:5070".parse().unwrap()));
}

#[test]
fn unknown_request_uri_scheme_is_kept() {
    let m = parse(load("rfc4475/unkscm.sip"), Framing::Datagram).unwrap();
    assert_eq!(m.request_uri().unwrap().scheme, Scheme::Other);
}

#[test]
fn stream_framing_requires_content_length() {
    let m = load("rfc4475/inv2543.sip");
    assert_eq!(parse(m, Framing::Stream).unwrap_err(), MessageError::MissingContentLength);
}
