//! URIs: SIP/SIPS (RFC 3261 §19.1, §25.1) with IPv6 references (RFC 5118), tel (RFC 3966) and
//! any other scheme kept as it came (RFC 3261 §8.2.2.1 answers unknown Request-URI schemes 416).
//!
//! A parsed [`Uri`] is spans into the message plus the host decoded to an address where it is
//! one. An IPv6 address must be a bracketed reference and a real address: `2001:db8:::1` is
//! refused even though RFC 3261's ABNF let it through (RFC 5118 §4.10).

use super::{scan, Span};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    Name(Span),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

impl Host {
    pub fn ip(&self) -> Option<IpAddr> {
        match *self {
            Host::V4(a) => Some(IpAddr::V4(a)),
            Host::V6(a) => Some(IpAddr::V6(a)),
            Host::Name(_) => None,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Uri {
    /// The whole URI.
    pub span: Span,
    pub scheme: Scheme,
    /// SIP/SIPS only: the user part (before any `:password`).
    pub user: Option<Span>,
    /// SIP/SIPS only.
    pub host: Option<Host>,
    /// SIP/SIPS only: the host as written (brackets included for IPv6).
    pub host_span: Span,
    pub port: Option<u16>,
    /// `;`-parameters, the leading `;` included; empty when there are none.
    pub params: Span,
    /// `?`-headers, the `?` excluded.
    pub headers: Option<Span>,
}

impl Uri {
    pub fn is_sip(&self) -> bool {
        matches!(self.scheme, Scheme::Sip | Scheme::Sips)
    }

    /// Looks up a URI parameter by name (case-insensitive). `Some(None)` for a flag like `;lr`.
    pub fn param<'a>(&self, buf: &'a [u8], name: &str) -> Option<Option<&'a [u8]>> {
        let p = self.params.of(buf);
        p.split(|&c| c == b';').filter(|s| !s.is_empty()).find_map(|kv| {
            let (k, v) = match kv.iter().position(|&c| c == b'=') {
                Some(i) => (&kv[..i], Some(&kv[i + 1..])),
                None => (kv, None),
            };
            k.eq_ignore_ascii_case(name.as_bytes()).then_some(v)
        })
    }
}

/// Characters of a URI that is not SIP: anything visible but the delimiters that would end it in
/// a header (`<>`, whitespace, quotes).
fn is_opaque_uri_char(c: u8) -> bool {
    c > b' ' && c < 0x7f && !matches!(c, b'<' | b'>' | b'"')
}

/// Parses the URI occupying exactly `span` of `buf`.
pub fn parse_uri(buf: &[u8], span: Span) -> Result<Uri, &'static str> {
    let s = span.of(buf);
    // The schemes a proxy sees all day, without the general scheme scan (`| 0x20` folds exactly
    // the upper-case letters onto "sip"/"s", nothing else).
    if s.len() > 5 && s[0] | 0x20 == b's' && s[1] | 0x20 == b'i' && s[2] | 0x20 == b'p' {
        let base = span.start as usize;
        if s[3] == b':' {
            return parse_sip_rest(buf, span, Scheme::Sip, base + 4);
        }
        if s[3] | 0x20 == b's' && s[4] == b':' {
            return parse_sip_rest(buf, span, Scheme::Sips, base + 5);
        }
    }
    let colon = s.iter().position(|&c| c == b':').ok_or("no URI scheme")?;
    let scheme = &s[..colon];
    if scheme.is_empty() || !scheme[0].is_ascii_alphabetic() || !scan::all(scheme, scan::SCHEME) {
        return Err("invalid URI scheme");
    }
    let scheme_kind = if scheme.eq_ignore_ascii_case(b"sip") {
        Scheme::Sip
    } else if scheme.eq_ignore_ascii_case(b"sips") {
        Scheme::Sips
    } else if scheme.eq_ignore_ascii_case(b"tel") {
        Scheme::Tel
    } else {
        Scheme::Other
    };
    let base = span.start as usize;
    let rest_start = base + colon + 1;
    if rest_start >= span.end as usize {
        return Err("empty URI after scheme");
    }
    if !matches!(scheme_kind, Scheme::Sip | Scheme::Sips) {
        if !buf[rest_start..span.end as usize].iter().all(|&c| is_opaque_uri_char(c)) {
            return Err("invalid character in URI");
        }
        return Ok(Uri {
            span,
            scheme: scheme_kind,
            user: None,
            host: None,
            host_span: Span::default(),
            port: None,
            params: Span::default(),
            headers: None,
        });
    }
    parse_sip_rest(buf, span, scheme_kind, rest_start)
}

fn parse_sip_rest(buf: &[u8], span: Span, scheme: Scheme, rest_start: usize) -> Result<Uri, &'static str> {
    let end = span.end as usize;
    // Refuse characters a URI cannot hold; '@' may appear only as the end of userinfo (user,
    // password, params and headers all have to escape it).
    let rest = &buf[rest_start..end];
    if !scan::all_uri_chars(rest) {
        return Err("invalid character in SIP URI");
    }
    let (user, host_start) = match memchr::memchr(b'@', rest) {
        Some(at) => {
            let userinfo = &rest[..at];
            let user_len = userinfo.iter().position(|&c| c == b':').unwrap_or(userinfo.len());
            if user_len == 0 {
                return Err("empty user part");
            }
            (Some(Span::new(rest_start, rest_start + user_len)), rest_start + at + 1)
        }
        None => (None, rest_start),
    };
    let (host, host_span, port, pos) = match host_and_port(buf, host_start, end) {
        Ok(hp) => hp,
        // On success the host-port holds at most one ':'; on failure, more than one means an
        // IPv6 address written without brackets, which deserves its own reason phrase.
        Err(e) => {
            let hostport_len =
                buf[host_start..end].iter().position(|&c| c == b';' || c == b'?').unwrap_or(end - host_start);
            let colons = buf[host_start..host_start + hostport_len].iter().filter(|&&c| c == b':').count();
            return Err(if buf.get(host_start) != Some(&b'[') && colons > 1 {
                "IPv6 address must be enclosed in [] (RFC 5118)"
            } else {
                e
            });
        }
    };
    let params_start = pos;
    let pos = pos + buf[pos..end].iter().position(|&c| c == b'?').unwrap_or(end - pos);
    let params = Span::new(params_start, pos);
    let p = params.of(buf);
    if p.ends_with(b";") || p.windows(2).any(|w| w[0] == b';' && w[1] == b';') {
        return Err("empty URI parameter");
    }
    let headers = (pos < end).then(|| Span::new(pos + 1, end));
    Ok(Uri { span, scheme, user, host: Some(host), host_span, port, params, headers })
}

/// `hostport` of a SIP URI from `start`, up to the `;` or `?` (or end) that must follow it.
/// Returns the host, its span, the port and the position after the host-port.
fn host_and_port(buf: &[u8], start: usize, end: usize) -> Result<(Host, Span, Option<u16>, usize), &'static str> {
    let (host, host_span, mut pos) = parse_host(buf, start, end)?;
    let mut port = None;
    if pos < end && buf[pos] == b':' {
        let pstart = pos + 1;
        let mut pend = pstart;
        while pend < end && buf[pend].is_ascii_digit() {
            pend += 1;
        }
        port = Some(parse_port(&buf[pstart..pend])?);
        pos = pend;
    }
    if pos < end && buf[pos] != b';' && buf[pos] != b'?' {
        return Err("unexpected character after host");
    }
    Ok((host, host_span, port, pos))
}

pub(crate) fn parse_port(digits: &[u8]) -> Result<u16, &'static str> {
    scan::parse_decimal(digits, 65535).map(|p| p as u16).ok_or("invalid port")
}

/// Parses `host` (RFC 3261 §25.1 / RFC 5118) starting at `start`: a hostname, an IPv4 address, or
/// a bracketed IPv6 reference. Returns the host, its span and the position after it.
pub(crate) fn parse_host(buf: &[u8], start: usize, end: usize) -> Result<(Host, Span, usize), &'static str> {
    if start < end && buf[start] == b'[' {
        let close = buf[start..end].iter().position(|&c| c == b']').ok_or("unterminated IPv6 reference")? + start;
        let addr = parse_ipv6(&buf[start + 1..close]).ok_or("invalid IPv6 address")?;
        return Ok((Host::V6(addr), Span::new(start, close + 1), close + 1));
    }
    // One pass: the extent of the host, whether it is all digits and dots, and whether it has
    // an empty label ("..").
    let s = &buf[start..end];
    let (mut len, mut numeric, mut double_dot, mut prev) = (0, true, false, 0u8);
    while len < s.len() && scan::is(s[len], scan::HOST) {
        let c = s[len];
        numeric &= c == b'.' || c.is_ascii_digit();
        double_dot |= c == b'.' && prev == b'.';
        prev = c;
        len += 1;
    }
    if len == 0 {
        return Err("missing host");
    }
    let text = &s[..len];
    let pos = start + len;
    let host = if numeric {
        // All digits and dots: must be a dotted-quad (a hostname's top label starts with a letter).
        Host::V4(parse_ipv4(text).ok_or("invalid IPv4 address")?)
    } else {
        if text[0] == b'.' || text[0] == b'-' || double_dot {
            return Err("invalid host name");
        }
        Host::Name(Span::new(start, pos))
    };
    Ok((host, Span::new(start, pos), pos))
}

/// A dotted-quad, four decimal octets without leading zeros (as `std` accepts them).
pub fn parse_ipv4(s: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut n = 0;
    for part in s.split(|&c| c == b'.') {
        if n == 4 || part.is_empty() || part.len() > 3 || (part.len() > 1 && part[0] == b'0') {
            return None;
        }
        let mut v: u16 = 0;
        for &d in part {
            if !d.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u16::from(d - b'0');
        }
        octets[n] = u8::try_from(v).ok()?;
        n += 1;
    }
    (n == 4).then(|| Ipv4Addr::from(octets))
}

/// An IPv6 address in RFC 4291 §2.2 text form: up to eight groups of 1–4 hex digits, at most one
/// `::`, optionally ending in a dotted-quad. Accepts exactly what `std`'s parser accepts.
pub fn parse_ipv6(s: &[u8]) -> Option<Ipv6Addr> {
    let len = s.len();
    let mut g = [0u16; 8];
    let mut n = 0; // groups written so far
    let mut gap: Option<usize> = None; // index in `g` where the groups after `::` begin
    let mut i = 0;
    if s.starts_with(b"::") {
        gap = Some(0);
        i = 2;
        if i == len {
            return Some(Ipv6Addr::UNSPECIFIED);
        }
    }
    loop {
        // One group: hex digits (at most 5 are read; 5 is already too many) ...
        let start = i;
        let mut v: u32 = 0;
        while i < len && i - start < 5 {
            let h = HEX[s[i] as usize];
            if h == 0xff {
                break;
            }
            v = (v << 4) | u32::from(h);
            i += 1;
        }
        // ... or, as the last thing, a dotted-quad standing for two groups.
        if i < len && s[i] == b'.' {
            if n > 6 {
                return None;
            }
            let v4 = parse_ipv4(&s[start..])?.octets();
            g[n] = u16::from_be_bytes([v4[0], v4[1]]);
            g[n + 1] = u16::from_be_bytes([v4[2], v4[3]]);
            n += 2;
            break;
        }
        let digits = i - start;
        if digits == 0 || digits > 4 || n == 8 {
            return None;
        }
        g[n] = v as u16;
        n += 1;
        if i == len {
            break;
        }
        if s[i] != b':' {
            return None;
        }
        i += 1;
        if i == len {
            return None; // trailing single ':'
        }
        if s[i] == b':' {
            if gap.is_some() {
                return None;
            }
            gap = Some(n);
            i += 1;
            if i == len {
                break;
            }
        }
    }
    match gap {
        None if n != 8 => return None,
        Some(_) if n > 7 => return None,
        None => {}
        Some(k) => {
            // Move the groups after `::` to the end and zero the gap.
            let tail = n - k;
            for j in (0..tail).rev() {
                g[8 - tail + j] = g[k + j];
            }
            g[k..8 - tail].fill(0);
        }
    }
    Some(Ipv6Addr::new(g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]))
}

/// Hex digit values; 0xff for anything else.
static HEX: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => 0xff,
        };
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> Result<Uri, &'static str> {
        parse_uri(s.as_bytes(), Span::new(0, s.len()))
    }

    #[test]
    fn ipv6_references() {
        let u = uri("sip:[2001:db8::10]:5070;transport=udp").unwrap();
        assert_eq!(u.host, Some(Host::V6("2001:db8::10".parse().unwrap())));
        assert_eq!(u.port, Some(5070));
        // RFC 5118 §4.3: the last group is part of the address, there is no port.
        let u = uri("sip:[2001:db8::10:5070]").unwrap();
        assert_eq!(u.port, None);
        assert!(uri("sip:2001:db8::10").is_err(), "unbracketed IPv6 must be refused");
        assert!(uri("sip:user@[2001:db8:::192.0.2.1]").is_err(), "three colons");
        assert!(uri("sip:user@[2001:db8::192.0.2.1]").is_ok());
        assert!(uri("sip:[::ffff:192.0.2.10]:19823").is_ok());
    }

    #[test]
    fn user_params_headers() {
        let s = "sip:alice:pw@example.com:5061;lr;transport=tcp?Subject=x";
        let u = uri(s).unwrap();
        assert_eq!(u.user.unwrap().of(s.as_bytes()), b"alice");
        assert_eq!(u.port, Some(5061));
        assert_eq!(u.param(s.as_bytes(), "lr"), Some(None));
        assert_eq!(u.param(s.as_bytes(), "TRANSPORT"), Some(Some(&b"tcp"[..])));
        assert_eq!(u.headers.unwrap().of(s.as_bytes()), b"Subject=x");
    }

    #[test]
    fn address_parsers_agree_with_std() {
        let cases = [
            "::", "::1", "1::", "2001:db8::10", "2001:db8:0:0:0:0:0:1", "2001:db8::192.0.2.1", "::ffff:192.0.2.10",
            "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8", "1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:7:1.2.3.4",
            "2001:db8:::1", ":1", "1:", "1::2::3", "12345::", "g::", "1:2:3:4:5:6:7:8:9", "1.2.3.4", "::1.2.3", "",
            "::01.2.3.4", "::1.2.3.4:5", ":::", "1:2:3:4:5:6:7", "::1:2:3:4:5:6:7:8", "fe80::1%eth0", "AbCd::eF",
        ];
        for c in cases {
            assert_eq!(parse_ipv6(c.as_bytes()), c.parse::<Ipv6Addr>().ok(), "{c}");
        }
        for c in ["1.2.3.4", "255.255.255.255", "256.1.1.1", "01.2.3.4", "1.2.3", "1.2.3.4.5", "1..2.3", "", "0.0.0.0"] {
            assert_eq!(parse_ipv4(c.as_bytes()), c.parse::<Ipv4Addr>().ok(), "{c}");
        }
    }

    #[test]
    fn other_schemes_are_kept() {
        assert_eq!(uri("tel:+15551234").unwrap().scheme, Scheme::Tel);
        assert_eq!(uri("soap.beep://192.0.2.103:3002").unwrap().scheme, Scheme::Other);
        assert!(uri("<sip:a@b>").is_err());
        assert!(uri("sip:").is_err());
        assert!(uri("sip:a@").is_err());
        assert!(uri("sip:1.2.3.400").is_err());
        assert!(uri("sip:host:99999").is_err());
    }
}
