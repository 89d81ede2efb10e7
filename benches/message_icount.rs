//! Instruction counts for the message parsers: `benches/message_icount.sh` runs this binary under
//! `valgrind --tool=callgrind` with 0 and N iterations and divides the difference by N. Unlike
//! wall time, the count does not depend on what else the machine is doing, so the ratios between
//! parsers are repeatable on a shared 2-core box.
//!
//! usage: message_icount <sixgate|sixgate_split_only|rsip_0.4|rsipstack_0.7> <invite_sdp|register|ok_200> <iterations>

#[path = "common/messages.rs"]
mod messages;

use bytes::Bytes;
use sixgate::message::{parse, split::split, Framing};
use std::hint::black_box;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let [parser, msg, n] = &args[..] else {
        eprintln!("usage: message_icount PARSER MESSAGE ITERATIONS");
        std::process::exit(2);
    };
    let text = match msg.as_str() {
        "invite_sdp" => messages::INVITE,
        "register" => messages::REGISTER,
        "ok_200" => messages::OK,
        other => panic!("unknown message {other}"),
    };
    let n: u64 = n.parse().expect("iterations");
    let bytes = Bytes::from_static(text.as_bytes());
    let mut ok = 0u64;
    for _ in 0..n {
        ok += match parser.as_str() {
            "sixgate" => parse(black_box(bytes.clone()), Framing::Datagram).is_ok(),
            "sixgate_split_only" => split(black_box(bytes.clone()), Framing::Datagram).is_ok(),
            "rsip_0.4" => rsip::SipMessage::try_from(black_box(text.as_bytes())).is_ok(),
            "rsipstack_0.7" => rsipstack::sip::SipMessage::try_from(black_box(text.as_bytes())).is_ok(),
            other => panic!("unknown parser {other}"),
        } as u64;
    }
    assert_eq!(ok, n, "{parser} failed to parse {msg}");
}
