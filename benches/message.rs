//! Message layer speed: parse + validate (and serialize) of a typical INVITE with SDP, a
//! REGISTER and a 200 OK, side by side with two other Rust SIP parsers in the same run:
//! rsip 0.4 (the design card's original choice) and rsipstack 0.7's parser.
//!
//! The comparison is of "bytes in, usable message out": sixgate's parse also decodes and
//! validates Via, From, To, Call-ID, CSeq, Max-Forwards and Contact; rsip and rsipstack split
//! and keep headers as text, decoding them lazily on access.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sixgate::message::{parse, response::ResponseBuilder, Framing};

#[path = "common/messages.rs"]
mod messages;
use messages::{INVITE, OK, REGISTER};

fn bench_parsers(c: &mut Criterion) {
    for (name, text) in [("invite_sdp", INVITE), ("register", REGISTER), ("ok_200", OK)] {
        let bytes = Bytes::from_static(text.as_bytes());
        assert!(parse(bytes.clone(), Framing::Datagram).is_ok(), "{name} must be valid");
        let mut g = c.benchmark_group(format!("parse/{name}"));
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function("sixgate", |b| b.iter(|| parse(black_box(bytes.clone()), Framing::Datagram).unwrap()));
        // The structural cut alone (start line, header lines, body as spans): the share of the
        // work that compares with parsers that keep header values as text.
        g.bench_function("sixgate_split_only", |b| {
            b.iter(|| sixgate::message::split::split(black_box(bytes.clone()), Framing::Datagram).unwrap())
        });
        let rsip_ok = rsip::SipMessage::try_from(text.as_bytes()).is_ok();
        if rsip_ok {
            g.bench_function("rsip_0.4", |b| b.iter(|| rsip::SipMessage::try_from(black_box(text.as_bytes())).unwrap()));
        } else {
            eprintln!("rsip 0.4 cannot parse {name}: not benchmarked");
        }
        let rsipstack_ok = rsipstack::sip::SipMessage::try_from(text.as_bytes()).is_ok();
        if rsipstack_ok {
            g.bench_function("rsipstack_0.7", |b| {
                b.iter(|| rsipstack::sip::SipMessage::try_from(black_box(text.as_bytes())).unwrap())
            });
        } else {
            eprintln!("rsipstack 0.7 cannot parse {name}: not benchmarked");
        }
        g.finish();
    }
}

fn bench_serialize(c: &mut Criterion) {
    let mut g = c.benchmark_group("serialize");
    let invite = parse(Bytes::from_static(INVITE.as_bytes()), Framing::Datagram).unwrap();
    let src: std::net::SocketAddr = "[2001:db8:10::5]:40123".parse().unwrap();
    g.bench_function("invite_stamp_received_and_serialize", |b| {
        b.iter_batched(
            || invite.clone(),
            |mut m| {
                sixgate::transport::stamp_received(&mut m, src);
                m.to_bytes()
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("invite_forward_unchanged", |b| b.iter(|| black_box(&invite).to_bytes()));
    let register = parse(Bytes::from_static(REGISTER.as_bytes()), Framing::Datagram).unwrap();
    g.bench_function("register_build_200", |b| b.iter(|| ResponseBuilder::to(black_box(&register), 200, "OK").finish()));
    g.finish();
}

criterion_group!(benches, bench_parsers, bench_serialize);
criterion_main!(benches);
