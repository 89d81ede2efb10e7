//! Typed decoders for the header fields the proxy reads (RFC 3261 §20, §25.1).
//!
//! Each decoder takes the message bytes and a value span and returns spans and numbers; nothing
//! is copied. Linear whitespace (folding included) is allowed wherever RFC 3261 puts SWS/LWS.
//! Empty parameters (`;;`) and empty list elements (`,,`) are errors (RFC 4475 §3.1.2.1).
//! Headers not decoded here are never touched.

use super::scan::{self, Cursor};
use super::uri::{self, parse_uri, Host, Uri};
use super::Span;

/// A decoding problem, phrased for a reason phrase ("Bad Via header: {problem}").
pub type Problem = &'static str;

/// Walks `*( SEMI generic-param )` from the cursor to its end, calling `f(name, value)` for each.
pub fn parse_params(c: &mut Cursor<'_>, mut f: impl FnMut(Span, Option<Span>)) -> Result<(), Problem> {
    loop {
        c.skip_lws();
        if c.at_end() {
            return Ok(());
        }
        if c.peek() != Some(b';') {
            return Err("unexpected character before parameter");
        }
        c.pos += 1;
        c.skip_lws();
        let name = c.token().ok_or("empty parameter")?;
        let mut value = None;
        if c.eat(b'=') {
            c.skip_lws();
            value = Some(param_value(c)?);
        }
        f(name, value);
    }
}

/// `gen-value = token / host / quoted-string`; a bracketed IPv6 reference is accepted too
/// (RFC 5118 §4.5 asks for robustness with `received=[...]`).
fn param_value(c: &mut Cursor<'_>) -> Result<Span, Problem> {
    match c.peek() {
        Some(b'"') => c.quoted().ok_or("unbalanced quotes"),
        Some(b'[') => {
            let start = c.pos;
            while c.pos < c.end && c.buf[c.pos] != b']' {
                c.pos += 1;
            }
            if c.at_end() {
                return Err("unterminated IPv6 reference");
            }
            c.pos += 1;
            Ok(Span::new(start, c.pos))
        }
        _ => {
            let start = c.pos;
            while c.pos < c.end && (scan::is_token(c.buf[c.pos]) || c.buf[c.pos] == b':') {
                c.pos += 1;
            }
            if c.pos == start {
                return Err("empty parameter value");
            }
            Ok(Span::new(start, c.pos))
        }
    }
}

/// One Via value (RFC 3261 §20.42, RFC 3581 for rport).
#[derive(Clone, Copy, Debug)]
pub struct Via {
    /// The whole element (one of possibly several on the line).
    pub span: Span,
    pub transport: Span,
    pub host: Host,
    pub host_span: Span,
    pub port: Option<u16>,
    pub branch: Option<Span>,
    pub received: Option<Span>,
    /// The `rport` parameter (name and any value), for RFC 3581 filling.
    pub rport: Option<Span>,
    pub maddr: Option<Span>,
}

impl Via {
    /// RFC 3261 §8.1.1.7: a branch beginning with the magic cookie marks an RFC 3261 transaction.
    pub fn has_rfc3261_branch(&self, buf: &[u8]) -> bool {
        self.branch.is_some_and(|b| b.of(buf).starts_with(b"z9hG4bK"))
    }
}

pub fn parse_via(buf: &[u8], span: Span) -> Result<Via, Problem> {
    let mut c = Cursor::new(buf, span);
    c.skip_lws();
    let v = span.of(buf);
    let at = c.pos - span.start as usize;
    if v.len() >= at + 8 && v[at..at + 3].eq_ignore_ascii_case(b"SIP") && &v[at + 3..at + 8] == b"/2.0/" {
        // `SIP/2.0/` written without inner whitespace, as nearly everyone does.
        c.pos += 8;
    } else {
        let proto = c.token().ok_or("missing protocol name")?;
        if !proto.of(buf).eq_ignore_ascii_case(b"SIP") {
            return Err("protocol is not SIP");
        }
        if !c.eat(b'/') {
            return Err("malformed sent-protocol");
        }
        c.skip_lws();
        let version = c.token().ok_or("missing protocol version")?;
        if version.of(buf) != b"2.0" {
            return Err("protocol version is not 2.0");
        }
        if !c.eat(b'/') {
            return Err("malformed sent-protocol");
        }
    }
    c.skip_lws();
    let transport = c.token().ok_or("missing transport")?;
    let before_host = c.pos;
    c.skip_lws();
    if c.pos == before_host {
        return Err("no whitespace before sent-by");
    }
    let (host, host_span, after) = uri::parse_host(buf, c.pos, c.end)?;
    c.pos = after;
    let mut port = None;
    if c.eat(b':') {
        c.skip_lws();
        let start = c.pos;
        while c.pos < c.end && c.buf[c.pos].is_ascii_digit() {
            c.pos += 1;
        }
        port = Some(uri::parse_port(&buf[start..c.pos])?);
    }
    let mut via = Via { span, transport, host, host_span, port, branch: None, received: None, rport: None, maddr: None };
    // The parameters the proxy acts on must be well-formed (RFC 3261 §20.42, RFC 3581 §3):
    // a branch has a value, `received` is an address, `rport` is empty or a port.
    // Each of them at most once: with two `received`, a client could keep one we never rewrite.
    let mut problem = None;
    let mut seen = 0u8;
    let mut once = |bit: u8, problem: &mut Option<Problem>| {
        if seen & bit != 0 {
            problem.get_or_insert("branch, received, rport or maddr given twice");
        }
        seen |= bit;
    };
    parse_params(&mut c, |name, value| {
        let n = name.of(buf);
        if n.eq_ignore_ascii_case(b"branch") {
            once(1, &mut problem);
            if value.is_none_or(|v| v.is_empty()) {
                problem.get_or_insert("branch without a value");
            }
            via.branch = value;
        } else if n.eq_ignore_ascii_case(b"received") {
            once(2, &mut problem);
            if !value.is_some_and(|v| is_ip_literal(v.of(buf))) {
                problem.get_or_insert("received is not an IP address");
            }
            via.received = value;
        } else if n.eq_ignore_ascii_case(b"rport") {
            once(4, &mut problem);
            if value.is_some_and(|v| uri::parse_port(v.of(buf)).is_err()) {
                problem.get_or_insert("rport is not a port number");
            }
            via.rport = Some(Span::new(name.start as usize, value.map_or(name.end, |v| v.end) as usize));
        } else if n.eq_ignore_ascii_case(b"maddr") {
            once(8, &mut problem);
            via.maddr = value;
        }
    })?;
    match problem {
        Some(p) => Err(p),
        None => Ok(via),
    }
}

/// An IPv4 or IPv6 address as `received` carries it (RFC 3261 §20.42; RFC 5118 §4.5 shows
/// IPv6 without brackets, some elements add them: both accepted).
fn is_ip_literal(v: &[u8]) -> bool {
    let v = v.strip_prefix(b"[").and_then(|v| v.strip_suffix(b"]")).unwrap_or(v);
    uri::parse_ipv4(v).is_some() || uri::parse_ipv6(v).is_some()
}

/// `name-addr` or `addr-spec` with header parameters (From, To, Contact, Route, Record-Route).
#[derive(Clone, Copy, Debug)]
pub struct NameAddr {
    pub span: Span,
    /// The display name as written (quotes included), if any.
    pub display: Option<Span>,
    pub uri: Uri,
    /// Whether the URI was enclosed in `<>`.
    pub bracketed: bool,
    pub tag: Option<Span>,
    pub expires: Option<Span>,
    /// Header parameters after the URI, leading `;` included.
    pub params: Span,
}

pub fn parse_name_addr(buf: &[u8], span: Span) -> Result<NameAddr, Problem> {
    let mut c = Cursor::new(buf, span);
    c.skip_lws();
    let mut display = None;
    let uri_span;
    let bracketed;
    if c.peek() == Some(b'<') {
        // The common `<URI>;params` form: nothing to look for before the URI.
    } else if c.peek() == Some(b'"') {
        display = Some(c.quoted().ok_or("unbalanced quotes")?);
        c.skip_lws();
        if c.peek() != Some(b'<') {
            return Err("quoted display name without <URI>");
        }
    } else {
        // A token display name before `<`, or an addr-spec (no `<` at all).
        let first_lt = c.find_top_level(b'<');
        if first_lt < c.end {
            let d = scan::trim(buf, Span::new(c.pos, first_lt));
            if !scan::all(d.of(buf), scan::TOKEN | scan::LWS) {
                return Err("display name must be quoted");
            }
            if !d.is_empty() {
                display = Some(d);
            }
            c.pos = first_lt;
        }
    }
    if c.peek() == Some(b'<') {
        let open = c.pos;
        let close = buf[open..c.end].iter().position(|&b| b == b'>').ok_or("missing '>'")? + open;
        let inner = Span::new(open + 1, close);
        if inner.of(buf).first().is_some_and(|&b| scan::is_lws(b))
            || inner.of(buf).last().is_some_and(|&b| scan::is_lws(b))
        {
            return Err("whitespace inside <URI>");
        }
        uri_span = inner;
        bracketed = true;
        c.pos = close + 1;
    } else {
        // addr-spec: the URI ends at the first ';' or whitespace; its parameters are header
        // parameters. A URI with '?' headers (or ',') must be bracketed (RFC 3261 §20).
        let start = c.pos;
        while c.pos < c.end && c.buf[c.pos] != b';' && !scan::is_lws(c.buf[c.pos]) {
            c.pos += 1;
        }
        uri_span = Span::new(start, c.pos);
        if uri_span.of(buf).iter().any(|&b| b == b'?' || b == b',') {
            return Err("URI with '?' or ',' must be enclosed in <>");
        }
        if uri_span.of(buf).contains(&b'"') {
            return Err("unbalanced quotes");
        }
        bracketed = false;
    }
    let uri = parse_uri(buf, uri_span)?;
    let params_start = c.pos;
    let mut tag = None;
    let mut expires = None;
    parse_params(&mut c, |name, value| {
        let n = name.of(buf);
        if n.eq_ignore_ascii_case(b"tag") {
            tag = value;
        } else if n.eq_ignore_ascii_case(b"expires") {
            expires = value;
        }
    })?;
    Ok(NameAddr { span, display, uri, bracketed, tag, expires, params: Span::new(params_start, c.end) })
}

/// A Contact header value: `*` or a list of addresses.
#[derive(Clone, Debug, Default)]
pub enum ContactList {
    #[default]
    None,
    Star,
    Addrs(Vec<Contact>),
}

pub type Contact = NameAddr;

/// Decodes every element of a Contact/Route/Record-Route/Path value into `out`.
pub fn parse_addr_list(buf: &[u8], value: Span, out: &mut Vec<NameAddr>) -> Result<(), Problem> {
    scan::for_each_element(buf, value, |el| {
        if el.is_empty() {
            return Err("empty list element");
        }
        out.push(parse_name_addr(buf, el)?);
        Ok(())
    })
}

/// `CSeq: 1*DIGIT LWS Method` with the number below 2^31 (RFC 3261 §8.1.1.5).
#[derive(Clone, Copy, Debug, Default)]
pub struct CSeq {
    pub seq: u32,
    pub method: Span,
}

pub fn parse_cseq(buf: &[u8], span: Span) -> Result<CSeq, Problem> {
    let mut c = Cursor::new(buf, span);
    c.skip_lws();
    let start = c.pos;
    while c.pos < c.end && c.buf[c.pos].is_ascii_digit() {
        c.pos += 1;
    }
    let seq = scan::parse_decimal(&buf[start..c.pos], (1 << 31) - 1).ok_or("sequence number missing or not below 2^31")?;
    let before = c.pos;
    c.skip_lws();
    if c.pos == before {
        return Err("no whitespace before method");
    }
    let method = c.token().ok_or("missing method")?;
    c.skip_lws();
    if !c.at_end() {
        return Err("trailing characters");
    }
    Ok(CSeq { seq: seq as u32, method })
}

/// A header whose value is one decimal number (Max-Forwards, Expires, Min-Expires).
pub fn parse_number(buf: &[u8], span: Span, max: u64) -> Result<u64, Problem> {
    scan::parse_decimal(span.of(buf), max).ok_or("not a number in range")
}

/// `Call-ID: word ["@" word]`: one run of visible characters.
pub fn check_call_id(buf: &[u8], span: Span) -> Result<(), Problem> {
    let v = span.of(buf);
    // Branch-free fold so the check vectorizes.
    if v.is_empty() || !v.iter().fold(true, |ok, &b| ok & (b > b' ') & (b != 0x7f)) {
        return Err("empty or contains whitespace");
    }
    Ok(())
}

/// `Date: Sun, 06 Nov 1994 08:49:37 GMT` (RFC 3261 §20.17: rfc1123-date, GMT only).
pub fn check_date(buf: &[u8], span: Span) -> Result<(), Problem> {
    const DAYS: [&[u8]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
    const MONTHS: [&[u8]; 12] =
        [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];
    let v = span.of(buf);
    let digits = |r: std::ops::Range<usize>| v[r].iter().all(u8::is_ascii_digit);
    let ok = v.len() == 29
        && DAYS.contains(&&v[0..3])
        && &v[3..5] == b", "
        && digits(5..7)
        && v[7] == b' '
        && MONTHS.contains(&&v[8..11])
        && v[11] == b' '
        && digits(12..16)
        && v[16] == b' '
        && digits(17..19)
        && v[19] == b':'
        && digits(20..22)
        && v[22] == b':'
        && digits(23..25)
        && &v[25..] == b" GMT";
    if ok {
        Ok(())
    } else {
        Err("not an RFC 1123 date in GMT")
    }
}

/// Credentials or a challenge (RFC 3261 §20.7/§20.27/§20.28/§20.44, RFC 7616):
/// `scheme` then comma-separated `name=value` pairs (values token or quoted).
#[derive(Clone, Debug)]
pub struct AuthParams {
    pub scheme: Span,
    pub params: Vec<(Span, Span)>,
}

impl AuthParams {
    /// The value of `name`, quotes removed (escapes are left as they are; digest values have none).
    pub fn get<'a>(&self, buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
        self.params.iter().find(|(n, _)| n.of(buf).eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| {
            let v = v.of(buf);
            if v.len() >= 2 && v[0] == b'"' && v[v.len() - 1] == b'"' {
                &v[1..v.len() - 1]
            } else {
                v
            }
        })
    }
}

pub fn parse_auth(buf: &[u8], span: Span) -> Result<AuthParams, Problem> {
    let mut c = Cursor::new(buf, span);
    c.skip_lws();
    let scheme = c.token().ok_or("missing scheme")?;
    let mut params = Vec::with_capacity(10);
    c.skip_lws();
    if c.at_end() {
        return Ok(AuthParams { scheme, params });
    }
    let rest = Span::new(c.pos, c.end);
    scan::for_each_element(buf, rest, |el| {
        let mut e = Cursor::new(buf, el);
        let name = e.token().ok_or("empty auth parameter")?;
        if !e.eat(b'=') {
            return Err("auth parameter without '='");
        }
        e.skip_lws();
        let value = match e.peek() {
            Some(b'"') => e.quoted().ok_or("unbalanced quotes")?,
            _ => e.token().ok_or("empty auth parameter value")?,
        };
        e.skip_lws();
        if !e.at_end() {
            return Err("trailing characters in auth parameter");
        }
        params.push((name, value));
        Ok(())
    })?;
    Ok(AuthParams { scheme, params })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(s: &str) -> Span {
        Span::new(0, s.len())
    }

    #[test]
    fn via_with_lws_and_ipv6() {
        let s = "SIP  /   2.0\r\n /UDP\r\n    [2001:db8::9:1]:6050 ;branch=\r\n z9hG4bK1;rport;received=[2001:db8::1]";
        let v = parse_via(s.as_bytes(), sp(s)).unwrap();
        assert_eq!(v.transport.of(s.as_bytes()), b"UDP");
        assert_eq!(v.port, Some(6050));
        assert_eq!(v.branch.unwrap().of(s.as_bytes()), b"z9hG4bK1");
        assert_eq!(v.rport.unwrap().of(s.as_bytes()), b"rport");
        assert!(parse_via(b"SIP/2.0/UDP 192.0.2.15;;", Span::new(0, 24)).is_err());
        assert!(parse_via(b"SIP/3.0/UDP h", Span::new(0, 13)).is_err());
    }

    #[test]
    fn via_parameters_the_proxy_acts_on_must_be_well_formed() {
        let ok = ["SIP/2.0/UDP h;branch=z9hG4bK1;rport=5060;received=192.0.2.1", "SIP/2.0/UDP h;rport;received=2001:db8::1"];
        for v in ok {
            assert!(parse_via(v.as_bytes(), sp(v)).is_ok(), "{v}");
        }
        let bad = [
            ("SIP/2.0/UDP h;branch", "branch without a value"),
            ("SIP/2.0/UDP h;received=evil.example.com", "received is not an IP address"),
            ("SIP/2.0/UDP h;received", "received is not an IP address"),
            ("SIP/2.0/UDP h;rport=abc", "rport is not a port number"),
            ("SIP/2.0/UDP h;rport=70000", "rport is not a port number"),
            ("SIP/2.0/UDP h;received=192.0.2.1;received=192.0.2.2", "branch, received, rport or maddr given twice"),
            ("SIP/2.0/UDP h;branch=z9hG4bK1;rport;BRANCH=z9hG4bK2", "branch, received, rport or maddr given twice"),
        ];
        for (v, why) in bad {
            assert_eq!(parse_via(v.as_bytes(), sp(v)).unwrap_err(), why, "{v}");
        }
    }

    #[test]
    fn name_addr_forms() {
        let s = "\"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8";
        let n = parse_name_addr(s.as_bytes(), sp(s)).unwrap();
        assert_eq!(n.tag.unwrap().of(s.as_bytes()), b"98asjd8");
        assert!(n.bracketed);
        let s = "sip:user@example.com;tag=1;expires=60";
        let n = parse_name_addr(s.as_bytes(), sp(s)).unwrap();
        assert!(!n.bracketed);
        assert_eq!(n.expires.unwrap().of(s.as_bytes()), b"60");
        for bad in ["\"Mr. J. User <sip:j.user@example.com>", "Bell, Alexander <sip:a@b>", "\"W\" < sip:t@e.org >", "sip:u@e.com?Route=x", "<sip:a@b>;;"] {
            assert!(parse_name_addr(bad.as_bytes(), sp(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn cseq_and_date() {
        let s = "0009\r\n  INVITE";
        let c = parse_cseq(s.as_bytes(), sp(s)).unwrap();
        assert_eq!(c.seq, 9);
        assert!(parse_cseq(b"2147483648 INVITE", Span::new(0, 17)).is_err());
        assert!(check_date(b"Sat, 13 Nov 2010 23:29:00 GMT", Span::new(0, 29)).is_ok());
        assert!(check_date(b"Fri, 01 Jan 2010 16:00:00 EST", Span::new(0, 29)).is_err());
    }

    #[test]
    fn auth_params() {
        let s = "Digest username=\"alice\", realm=\"x\",nonce=\"a,b\", uri=\"sip:x\", response=\"0f\", algorithm=MD5";
        let a = parse_auth(s.as_bytes(), sp(s)).unwrap();
        assert_eq!(a.scheme.of(s.as_bytes()), b"Digest");
        assert_eq!(a.get(s.as_bytes(), "nonce"), Some(&b"a,b"[..]));
        assert_eq!(a.get(s.as_bytes(), "ALGORITHM"), Some(&b"MD5"[..]));
        let s = "NoOneKnowsThisScheme opaque-data=here";
        assert!(parse_auth(s.as_bytes(), sp(s)).is_ok());
    }
}
