//! SDP parse + rewrite for the relay hand-off (`sixgate::media::sdp`): a typical phone's audio
//! offer, and an audio+video WebRTC-style offer with ICE candidates (stripped on the way).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sixgate::media::sdp::Sdp;
use std::hint::black_box;

const AUDIO: &str = "v=0\r\no=- 3917423541 3917423541 IN IP6 2001:db8:1::10\r\ns=baresip\r\nc=IN IP6 2001:db8:1::10\r\nt=0 0\r\n\
m=audio 10680 RTP/AVP 9 0 8 101\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=rtcp:10681\r\na=ptime:20\r\na=sendrecv\r\n";

const AV_ICE: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 192.0.2.10\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
a=msid-semantic: WMS stream\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 103 9 0 8 126\r\nc=IN IP4 192.0.2.10\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
a=candidate:1 1 udp 2122260223 192.0.2.10 54400 typ host generation 0\r\na=candidate:2 1 udp 1686052607 198.51.100.7 54400 typ srflx raddr 192.0.2.10 rport 54400\r\n\
a=candidate:3 1 tcp 1518280447 192.0.2.10 9 typ host tcptype active\r\na=ice-ufrag:Oyef\r\na=ice-pwd:7e4w3vW7e2iLAdR5zfmJdjbC\r\na=ice-options:trickle\r\n\
a=fingerprint:sha-256 49:66:12:17:0D:1C:91:AE:57:4C:C6:36:DD:D5:97:D2:7D:62:C9:9A:7F:B9:A3:F4:70:03:E7:43:91:73:23:5E\r\n\
a=setup:actpass\r\na=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtpmap:103 ISAC/16000\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:126 telephone-event/8000\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 100 101\r\nc=IN IP4 192.0.2.10\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
a=candidate:1 1 udp 2122260223 192.0.2.10 54401 typ host generation 0\r\na=ice-ufrag:Oyef\r\na=ice-pwd:7e4w3vW7e2iLAdR5zfmJdjbC\r\n\
a=mid:1\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:100 VP8/90000\r\na=rtcp-fb:100 nack\r\na=rtpmap:101 VP9/90000\r\n";

fn bench_sdp(c: &mut Criterion) {
    let mut g = c.benchmark_group("sdp_parse_rewrite");
    g.throughput(Throughput::Elements(1));
    let v4: std::net::IpAddr = "203.0.113.5".parse().unwrap();
    let v6: std::net::IpAddr = "2001:db8::5".parse().unwrap();
    g.bench_function("audio_v6_to_v4", |b| {
        b.iter(|| {
            let sdp = Sdp::parse(black_box(AUDIO.as_bytes())).unwrap();
            sdp.rewrite(v4, &[30000], sdp.version + 1, true)
        })
    });
    g.bench_function("audio_video_ice_v4_to_v6", |b| {
        b.iter(|| {
            let sdp = Sdp::parse(black_box(AV_ICE.as_bytes())).unwrap();
            sdp.rewrite(v6, &[30000, 30002], sdp.version + 1, true)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_sdp);
criterion_main!(benches);
