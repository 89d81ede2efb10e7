//! SDP (RFC 8866) as the relay hand-off needs it: parsed into a list of lines kept byte for
//! byte, with what offer/answer (RFC 3264) and address-family translation read — connection
//! data, media lines, `a=rtcp` (RFC 3605), direction, rtcp-mux, ICE — and rewritten so a party
//! sees only the relay's address of its own family. Everything not rewritten travels unchanged,
//! in order.
//!
//! Pure functions over bytes. Must never: emit an address of the other family, leave an ICE
//! candidate that points around the relay, or accept a body it cannot fully account for (the
//! caller answers 488 with the reason).

use std::net::IpAddr;

/// Why a body is refused (the reason phrase of the 488).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP is not UTF-8 text")]
    NotText,
    #[error("SDP line {0} is not <letter>=<value>")]
    BadLine(usize),
    #[error("SDP does not start with v=0")]
    NoVersion,
    #[error("SDP o= line is missing or malformed")]
    BadOrigin,
    #[error("SDP c= line is malformed or names a host name")]
    BadConnection,
    #[error("SDP c= names an address family we cannot serve")]
    UnknownFamily,
    #[error("SDP m= line is malformed or its port is out of range")]
    BadMedia,
    #[error("SDP m= line without connection data (no c= in it or at session level)")]
    NoConnection,
    #[error("SDP a=rtcp is malformed")]
    BadRtcp,
}

impl SdpError {
    /// The reason phrase of the 488 that refuses such a body.
    pub fn reason(&self) -> &'static str {
        match self {
            SdpError::NotText => "Not Acceptable Here (SDP is not UTF-8 text)",
            SdpError::BadLine(_) => "Not Acceptable Here (SDP line is not <letter>=<value>)",
            SdpError::NoVersion => "Not Acceptable Here (SDP does not start with v=0)",
            SdpError::BadOrigin => "Not Acceptable Here (SDP o= line missing or malformed)",
            SdpError::BadConnection => "Not Acceptable Here (SDP c= line malformed or a host name)",
            SdpError::UnknownFamily => "Not Acceptable Here (SDP c= names an address family we cannot serve)",
            SdpError::BadMedia => "Not Acceptable Here (SDP m= line malformed or port out of range)",
            SdpError::NoConnection => "Not Acceptable Here (SDP m= line without connection data)",
            SdpError::BadRtcp => "Not Acceptable Here (SDP a=rtcp malformed)",
        }
    }
}

/// Direction attribute of a stream (RFC 3264 §6.1), `sendrecv` when absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

/// One m= section, as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Media {
    /// `audio`, `video`, ...
    pub kind: String,
    /// 0: the stream is disabled (RFC 3264 §6) and stays so.
    pub port: u16,
    pub proto: String,
    /// The address its packets go to: the media-level c=, else the session-level one.
    /// Unspecified (0.0.0.0 / ::) is the legacy hold (RFC 3264 §8.4).
    pub addr: IpAddr,
    /// `a=rtcp:` port and address, if given (RFC 3605).
    pub rtcp: Option<(u16, Option<IpAddr>)>,
    pub rtcp_mux: bool,
    pub direction: Direction,
    /// Any ICE attribute in the section or at session level.
    pub ice: bool,
    /// The RTP clock rate of the first format (its `a=rtpmap`, else the static payload type's,
    /// RFC 3551), for the relay's jitter figures.
    pub clock_rate: u32,
}

/// A parsed SDP body: its lines (kept verbatim) and the streams.
#[derive(Clone, Debug)]
pub struct Sdp {
    text: String,
    /// (line type, byte range of the value) per line, in order.
    lines: Vec<(u8, std::ops::Range<usize>)>,
    /// Index into `lines` of each m= line.
    media_at: Vec<usize>,
    pub media: Vec<Media>,
    /// o= session version.
    pub version: u64,
}

/// ICE attributes (RFC 8839) that would let the parties reach each other around the relay.
const ICE_ATTRIBUTES: &[&str] = &["candidate", "ice-ufrag", "ice-pwd", "ice-options", "end-of-candidates", "remote-candidates", "ice-lite", "ice-mismatch", "ice-pacing"];

fn attr_name(value: &str) -> &str {
    value.split(':').next().unwrap_or("")
}

/// An ICE attribute: the known ones, any other `ice-*` (future extensions point around the
/// relay just as well), and anything named `candidate...` (a lenient ICE stack might read
/// `a=candidate#:` as a candidate; nothing legitimate is lost by dropping it).
fn is_ice(name: &str) -> bool {
    ICE_ATTRIBUTES.contains(&name) || name.starts_with("ice-") || name.starts_with("candidate")
}

/// `IN IP4 addr[/ttl[/n]]` or `IN IP6 addr[/n]`.
fn parse_connection(v: &str) -> Result<IpAddr, SdpError> {
    let mut it = v.split_ascii_whitespace();
    let (Some(net), Some(fam), Some(addr), None) = (it.next(), it.next(), it.next(), it.next()) else { return Err(SdpError::BadConnection) };
    if net != "IN" {
        return Err(SdpError::UnknownFamily);
    }
    let addr = addr.split('/').next().unwrap_or("");
    let ip: IpAddr = addr.parse().map_err(|_| SdpError::BadConnection)?;
    match (fam, ip) {
        ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)) => Ok(ip),
        ("IP4" | "IP6", _) => Err(SdpError::BadConnection),
        _ => Err(SdpError::UnknownFamily),
    }
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv6() {
        "IP6"
    } else {
        "IP4"
    }
}

impl Sdp {
    pub fn parse(body: &[u8]) -> Result<Sdp, SdpError> {
        let text = std::str::from_utf8(body).map_err(|_| SdpError::NotText)?.to_string();
        let mut lines = Vec::new();
        let mut at = 0;
        for (n, raw) in text.split_inclusive('\n').enumerate() {
            let line = raw.trim_end_matches(['\r', '\n']);
            let start = at;
            at += raw.len();
            if line.is_empty() {
                continue; // a trailing empty line
            }
            let b = line.as_bytes();
            // A bare CR or another control character inside a line would hide a second line
            // from us that a phone might still read.
            if b.len() < 2 || !b[0].is_ascii_lowercase() || b[1] != b'=' || b.iter().any(|&c| c < 0x20 && c != b'\t' || c == 0x7f) {
                return Err(SdpError::BadLine(n + 1));
            }
            if b[0] == b'a' {
                // attribute = token [":" value] (RFC 8866 §9): "candidate1 1 udp ..." is not an
                // attribute anybody may act on.
                let name = attr_name(&line[2..]);
                let token = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`{|}~".contains(&c);
                if name.is_empty() || !name.bytes().all(token) {
                    return Err(SdpError::BadLine(n + 1));
                }
            }
            lines.push((b[0], start + 2..start + line.len()));
        }
        if lines.first().map(|(t, r)| (*t, &text[r.clone()])) != Some((b'v', "0")) {
            return Err(SdpError::NoVersion);
        }
        let origin = lines.iter().find(|(t, _)| *t == b'o').map(|(_, r)| &text[r.clone()]).ok_or(SdpError::BadOrigin)?;
        let o: Vec<&str> = origin.split_ascii_whitespace().collect();
        if o.len() != 6 {
            return Err(SdpError::BadOrigin);
        }
        let version = o[2].parse::<u64>().map_err(|_| SdpError::BadOrigin)?;
        // Session level: up to the first m=.
        let first_m = lines.iter().position(|(t, _)| *t == b'm').unwrap_or(lines.len());
        let mut session_addr = None;
        let mut session_dir = Direction::SendRecv;
        let mut session_ice = false;
        for (t, r) in &lines[..first_m] {
            let v = &text[r.clone()];
            match t {
                b'c' => session_addr = Some(parse_connection(v)?),
                b'a' => {
                    session_ice |= is_ice(attr_name(v));
                    session_dir = direction(v).unwrap_or(session_dir);
                }
                _ => {}
            }
        }
        let media_at: Vec<usize> = (first_m..lines.len()).filter(|&i| lines[i].0 == b'm').collect();
        let mut media = Vec::with_capacity(media_at.len());
        for (k, &m) in media_at.iter().enumerate() {
            let end = media_at.get(k + 1).copied().unwrap_or(lines.len());
            let v = &text[lines[m].1.clone()];
            let f: Vec<&str> = v.split_ascii_whitespace().collect();
            if f.len() < 4 {
                return Err(SdpError::BadMedia);
            }
            let port = f[1].split('/').next().and_then(|p| p.parse::<u16>().ok()).ok_or(SdpError::BadMedia)?;
            let mut mm = Media {
                kind: f[0].to_string(),
                port,
                proto: f[2].to_string(),
                addr: IpAddr::from([0, 0, 0, 0]),
                rtcp: None,
                rtcp_mux: false,
                direction: session_dir,
                ice: session_ice,
                clock_rate: static_clock_rate(f[0], f[3]),
            };
            let mut addr = session_addr;
            for (t, r) in &lines[m + 1..end] {
                let v = &text[r.clone()];
                match t {
                    b'c' => addr = Some(parse_connection(v)?),
                    b'a' => {
                        let name = attr_name(v);
                        mm.ice |= is_ice(name);
                        mm.rtcp_mux |= name == "rtcp-mux";
                        mm.direction = direction(v).unwrap_or(mm.direction);
                        if name == "rtcp" {
                            mm.rtcp = Some(parse_rtcp(v)?);
                        }
                        if let Some(rate) = rtpmap_rate(v, f[3]) {
                            mm.clock_rate = rate;
                        }
                    }
                    _ => {}
                }
            }
            mm.addr = match addr {
                Some(a) => a,
                None if port == 0 => mm.addr,
                None => return Err(SdpError::NoConnection),
            };
            media.push(mm);
        }
        Ok(Sdp { text, lines, media_at, media, version })
    }

    /// The body rewritten for a party that must see only `addr` (the relay's address of its
    /// family): every c= and the o= address name it (a hold's unspecified address becomes that
    /// family's unspecified one), each active m= gets `ports[i]` (RTP; RTCP on the next port in
    /// `a=rtcp`), disabled streams keep port 0, ICE attributes go when `strip_ice`, the o=
    /// version is `version`. Lines end in CRLF.
    pub fn rewrite(&self, addr: IpAddr, ports: &[u16], version: u64, strip_ice: bool) -> String {
        let unspecified = if addr.is_ipv6() { IpAddr::from([0u16; 8]) } else { IpAddr::from([0u8; 4]) };
        let mut out = String::with_capacity(self.text.len() + 64);
        let mut m_index: Option<usize> = None;
        for (i, (t, r)) in self.lines.iter().enumerate() {
            let v = &self.text[r.clone()];
            if *t == b'm' {
                m_index = self.media_at.iter().position(|&x| x == i);
            }
            let media = m_index.and_then(|k| self.media.get(k).map(|m| (k, m)));
            match t {
                b'o' => {
                    let f: Vec<&str> = v.split_ascii_whitespace().collect();
                    out.push_str(&format!("o={} {} {version} IN {} {addr}\r\n", f[0], f[1], family(addr)));
                }
                b'c' => {
                    let held = parse_connection(v).is_ok_and(|a| a.is_unspecified());
                    let a = if held { unspecified } else { addr };
                    out.push_str(&format!("c=IN {} {a}\r\n", family(a)));
                }
                b'm' => {
                    let Some((k, m)) = media else { continue }; // every m= line is indexed
                    let port = if m.port == 0 { 0 } else { ports.get(k).copied().unwrap_or(m.port) };
                    let mut f = v.splitn(2, ' ');
                    let kind = f.next().unwrap_or("");
                    let rest = f.next().unwrap_or("");
                    // Keep a port count ("/2") and everything after the port as written.
                    let after_port = rest.split_once(' ').map_or("", |(_, x)| x);
                    let count = rest.split(' ').next().and_then(|p| p.split_once('/')).map(|(_, c)| format!("/{c}")).unwrap_or_default();
                    out.push_str(&format!("m={kind} {port}{count} {after_port}\r\n"));
                }
                b'a' if strip_ice && is_ice(attr_name(v)) => {}
                b'a' if attr_name(v) == "rtcp" => {
                    let rtp = media.map(|(k, m)| if m.port == 0 { 0 } else { ports.get(k).copied().unwrap_or(m.port) }).unwrap_or(0);
                    // With rtcp-mux the relay's leg takes RTCP on its RTP port (RFC 5761 §5.1.3).
                    let mux = media.is_some_and(|(_, m)| m.rtcp_mux);
                    let rtcp = if rtp == 0 || mux { rtp } else { rtp.saturating_add(1) };
                    out.push_str(&format!("a=rtcp:{rtcp} IN {} {addr}\r\n", family(addr)));
                }
                _ => {
                    out.push(*t as char);
                    out.push('=');
                    out.push_str(v);
                    out.push_str("\r\n");
                }
            }
        }
        out
    }
}

/// The clock rate of static payload type `pt` (RFC 3551 tables 4 and 5); 8 kHz for audio and
/// 90 kHz for video when it is dynamic (an `a=rtpmap` then says).
fn static_clock_rate(kind: &str, pt: &str) -> u32 {
    match (kind, pt.parse::<u8>()) {
        (_, Ok(6)) => 16_000,
        (_, Ok(10 | 11)) => 44_100,
        (_, Ok(14 | 25 | 26 | 28 | 31 | 32 | 33 | 34)) => 90_000,
        (_, Ok(16)) => 11_025,
        (_, Ok(17)) => 22_050,
        ("video", _) => 90_000,
        _ => 8_000,
    }
}

/// `rtpmap:<pt> <name>/<rate>[/<channels>]` for payload type `pt`: its rate, if sane.
fn rtpmap_rate(a: &str, pt: &str) -> Option<u32> {
    let (p, enc) = a.strip_prefix("rtpmap:")?.split_once(' ')?;
    if p.trim() != pt {
        return None;
    }
    enc.split('/').nth(1)?.trim().parse::<u32>().ok().filter(|r| (1..=192_000).contains(r))
}

fn direction(a: &str) -> Option<Direction> {
    match a {
        "sendrecv" => Some(Direction::SendRecv),
        "sendonly" => Some(Direction::SendOnly),
        "recvonly" => Some(Direction::RecvOnly),
        "inactive" => Some(Direction::Inactive),
        _ => None,
    }
}

/// `rtcp:port [IN IP4|IP6 addr]` (RFC 3605 §2.1).
fn parse_rtcp(v: &str) -> Result<(u16, Option<IpAddr>), SdpError> {
    let rest = v.strip_prefix("rtcp:").ok_or(SdpError::BadRtcp)?;
    let (port, conn) = match rest.split_once(' ') {
        Some((p, c)) => (p, Some(c)),
        None => (rest, None),
    };
    let port = port.trim().parse::<u16>().map_err(|_| SdpError::BadRtcp)?;
    let addr = conn.map(parse_connection).transpose().map_err(|_| SdpError::BadRtcp)?;
    Ok((port, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER_V6_ICE: &str = "v=0\r\no=alice 2890844526 7 IN IP6 2001:db8::10\r\ns=-\r\nc=IN IP6 2001:db8::10\r\nt=0 0\r\n\
        a=ice-options:trickle\r\nm=audio 49170 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-15\r\na=rtcp:49171 IN IP6 2001:db8::10\r\na=ice-ufrag:8hhY\r\na=ice-pwd:asd88fgpdd777uzjYhagZg\r\n\
        a=candidate:1 1 UDP 2130706431 2001:db8::10 49170 typ host\r\na=candidate:2 1 UDP 1694498815 192.0.2.3 45664 typ srflx raddr 10.0.1.1 rport 8998\r\n\
        a=end-of-candidates\r\na=sendrecv\r\nm=video 51372 RTP/AVP 99\r\nc=IN IP6 2001:db8::11\r\na=rtpmap:99 h263-1998/90000\r\na=rtcp-mux\r\n\
        m=application 0 UDP/BFCP *\r\n";

    #[test]
    fn parse_reads_streams_and_rewrite_hides_the_other_family() {
        let sdp = Sdp::parse(OFFER_V6_ICE.as_bytes()).unwrap();
        assert_eq!(sdp.version, 7);
        assert_eq!(sdp.media.len(), 3);
        let a = &sdp.media[0];
        assert_eq!((a.kind.as_str(), a.port, a.addr, a.rtcp, a.ice, a.direction), ("audio", 49170, "2001:db8::10".parse().unwrap(), Some((49171, Some("2001:db8::10".parse().unwrap()))), true, Direction::SendRecv));
        assert!(sdp.media[1].rtcp_mux && sdp.media[1].addr == "2001:db8::11".parse::<IpAddr>().unwrap());
        assert_eq!(sdp.media[2].port, 0);

        let relay: IpAddr = "203.0.113.5".parse().unwrap();
        let out = sdp.rewrite(relay, &[30000, 30002, 30004], 8, true);
        assert!(!out.contains("2001:db8") && !out.contains("IP6"), "{out}");
        assert!(!out.contains("candidate") && !out.contains("ice-"), "{out}");
        assert!(out.starts_with("v=0\r\no=alice 2890844526 8 IN IP4 203.0.113.5\r\ns=-\r\nc=IN IP4 203.0.113.5\r\n"), "{out}");
        assert!(out.contains("m=audio 30000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n"));
        assert!(out.contains("a=rtcp:30001 IN IP4 203.0.113.5\r\n"));
        assert!(out.contains("m=video 30002 RTP/AVP 99\r\nc=IN IP4 203.0.113.5\r\na=rtpmap:99 h263-1998/90000\r\na=rtcp-mux\r\n"));
        assert!(out.contains("m=application 0 UDP/BFCP *\r\n"), "a disabled stream stays disabled");
        assert!(out.contains("a=fmtp:101 0-15\r\na=rtcp:"), "other lines unchanged and in order");
        // The rewritten body parses again, with the same streams.
        let again = Sdp::parse(out.as_bytes()).unwrap();
        assert_eq!(again.media.iter().map(|m| m.port).collect::<Vec<_>>(), [30000, 30002, 0]);
        assert!(again.media.iter().all(|m| !m.ice));
    }

    #[test]
    fn anything_named_like_a_candidate_goes_with_ice() {
        let odd = "v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=candidate#:1 1 udp 1 192.0.2.1 4000 typ host\r\n";
        let out = Sdp::parse(odd.as_bytes()).unwrap().rewrite("2001:db8::5".parse().unwrap(), &[40000], 3, true);
        assert!(!out.contains("candidate") && !out.contains("192.0.2.1"), "{out}");
    }

    #[test]
    fn legacy_hold_keeps_its_meaning_in_the_other_family() {
        let held = "v=0\no=- 1 2 IN IP4 192.0.2.1\ns=-\nc=IN IP4 0.0.0.0\nt=0 0\nm=audio 4000 RTP/AVP 0\na=sendonly\n";
        let sdp = Sdp::parse(held.as_bytes()).unwrap();
        assert_eq!(sdp.media[0].direction, Direction::SendOnly);
        assert!(sdp.media[0].addr.is_unspecified());
        let out = sdp.rewrite("2001:db8::5".parse().unwrap(), &[40000], 3, true);
        assert!(out.contains("c=IN IP6 ::\r\n") && out.contains("a=sendonly\r\n"), "{out}");
    }

    #[test]
    fn bad_bodies_are_refused_with_a_reason() {
        let cases: &[(&str, SdpError)] = &[
            ("o=- 1 1 IN IP4 1.2.3.4\r\n", SdpError::NoVersion),
            ("v=0\r\nthis is not sdp\r\n", SdpError::BadLine(2)),
            ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nt=0 0\ra=ice-ufrag:x\r\n", SdpError::BadLine(3)),
            ("v=0\r\ns=-\r\n", SdpError::BadOrigin),
            ("v=0\r\no=- 1 x IN IP4 1.2.3.4\r\ns=-\r\n", SdpError::BadOrigin),
            ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 media.example.com\r\nm=audio 1 RTP/AVP 0\r\n", SdpError::BadConnection),
            ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=ATM NSAP 47.0005\r\nm=audio 1 RTP/AVP 0\r\n", SdpError::UnknownFamily),
            ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 2001:db8::1\r\nm=audio 1 RTP/AVP 0\r\n", SdpError::BadConnection),
            ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nm=audio 70000 RTP/AVP 0\r\n", SdpError::BadMedia),
            ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nm=audio 4000 RTP/AVP 0\r\n", SdpError::NoConnection),
            ("v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp:abc\r\n", SdpError::BadRtcp),
        ];
        for (body, want) in cases {
            assert_eq!(Sdp::parse(body.as_bytes()).unwrap_err(), *want, "{body}");
        }
        assert_eq!(Sdp::parse(&[0xff, 0xfe]).unwrap_err(), SdpError::NotText);
    }
}
