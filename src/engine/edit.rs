//! The edits a proxy makes to the messages it forwards (RFC 3261 §16.6, §16.7 step 3), as patches
//! on the received bytes: everything else travels byte-exact. Also builds the requests a proxy
//! originates on a branch's behalf: ACK for a non-2xx answer (§17.1.1.3) and CANCEL (§9.1).

use crate::message::{header::parse_addr_list, HeaderName, Message, NameAddr, Span};
use bytes::{BufMut, Bytes, BytesMut};

/// One Route header element as received.
#[derive(Clone, Copy, Debug)]
pub struct RouteEntry {
    /// The header line it stands on.
    pub line: Span,
    pub element: Span,
    pub addr: NameAddr,
}

/// All Route elements, top first. Elements that do not parse are skipped (validation let the
/// message through, so they are rare; they will be forwarded untouched).
pub fn routes(msg: &Message) -> Vec<RouteEntry> {
    elements(msg, HeaderName::Route)
}

/// All elements of the name-addr list headers `name` (Route, Record-Route), top first.
pub fn elements(msg: &Message, name: HeaderName) -> Vec<RouteEntry> {
    let mut out = Vec::new();
    let mut addrs = Vec::new();
    for h in msg.headers_named(name) {
        addrs.clear();
        if parse_addr_list(msg.bytes(), h.value, &mut addrs).is_ok() {
            for a in &addrs {
                out.push(RouteEntry { line: h.line, element: a.span, addr: *a });
            }
        }
    }
    out
}

/// What to change in a request on its way out.
#[derive(Debug, Default)]
pub struct Forward<'a> {
    /// A new Request-URI, or keep it.
    pub request_uri: Option<&'a str>,
    /// Header lines (each ending in CRLF) to add on top: our Via, Record-Route(s).
    pub top: &'a str,
    /// Lines to add at the end of the headers (credentials for a carrier).
    pub bottom: &'a str,
    /// The top Route elements to remove (ours); a prefix of [`routes`].
    pub pop_routes: usize,
    /// The last Route element to remove (strict-router compatibility, §16.4).
    pub pop_last_route: bool,
    /// Header lines to drop entirely (our realm's Proxy-Authorization).
    pub drop_lines: &'a [Span],
    /// A CSeq number to write instead of the received one (carrier digest retry).
    pub cseq: Option<u32>,
    /// A new body (SDP rewritten for the relay), with Content-Length to match.
    pub body: Option<&'a str>,
}

/// The request `msg` as it leaves on one branch.
pub fn forward_request(msg: &Message, f: &Forward<'_>) -> Bytes {
    let mut m = msg.clone();
    if let (Some(ruri), Some(u)) = (f.request_uri, msg.request_uri()) {
        m.patch(u.span, Bytes::copy_from_slice(ruri.as_bytes()));
    }
    // Max-Forwards: decremented, or added as 70 when absent (§16.6 step 3).
    let mut top = String::with_capacity(f.top.len() + 20);
    top.push_str(f.top);
    match (msg.max_forwards, msg.headers_named(HeaderName::MaxForwards).next()) {
        (Some(n), Some(h)) => m.patch(h.value, Bytes::from(n.saturating_sub(1).to_string())),
        _ => top.push_str("Max-Forwards: 70\r\n"),
    }
    let all = routes(msg);
    let mut removed: Vec<RouteEntry> = all.iter().take(f.pop_routes).copied().collect();
    if f.pop_last_route && all.len() > f.pop_routes {
        if let Some(last) = all.last() {
            removed.push(*last);
        }
    }
    remove_route_elements(&mut m, &all, &removed);
    for &line in f.drop_lines {
        m.patch(line, Bytes::new());
    }
    if let Some(seq) = f.cseq {
        if let Some(h) = msg.headers_named(HeaderName::CSeq).next() {
            let method = msg.slice(msg.cseq.method);
            m.patch(h.value, Bytes::from([seq.to_string().as_bytes(), b" ", method].concat()));
        }
    }
    if let Some(body) = f.body {
        set_body(&mut m, msg, body);
    }
    if let Some(first) = msg.headers.first() {
        m.patch(Span::new(first.line.start as usize, first.line.start as usize), Bytes::from(top));
    }
    if !f.bottom.is_empty() {
        if let Some(last) = msg.headers.last() {
            m.patch(Span::new(last.line.end as usize, last.line.end as usize), Bytes::copy_from_slice(f.bottom.as_bytes()));
        }
    }
    m.to_bytes()
}

/// Removes `removed` (elements of `all`) from their header lines: a line whose elements all go
/// is removed whole; otherwise the removed elements (a prefix or a suffix of the line) are cut
/// together with their separating comma.
fn remove_route_elements(m: &mut Message, all: &[RouteEntry], removed: &[RouteEntry]) {
    let mut lines: Vec<Span> = removed.iter().map(|r| r.line).collect();
    lines.dedup();
    for line in lines {
        let on_line: Vec<&RouteEntry> = all.iter().filter(|r| r.line == line).collect();
        let gone: Vec<bool> = on_line.iter().map(|r| removed.iter().any(|x| x.element == r.element)).collect();
        if gone.iter().all(|&g| g) {
            m.patch(line, Bytes::new());
            continue;
        }
        // Leading run removed: cut from the first element to the first kept one.
        let lead = gone.iter().take_while(|&&g| g).count();
        if lead > 0 {
            m.patch(Span::new(on_line[0].element.start as usize, on_line[lead].element.start as usize), Bytes::new());
        }
        // Trailing run removed: cut from the end of the last kept element to the line's value end.
        let trail = gone.iter().rev().take_while(|&&g| g).count();
        if trail > 0 && lead < on_line.len() {
            let last_kept = on_line[on_line.len() - trail - 1];
            let end = on_line[on_line.len() - 1].element.end;
            m.patch(Span::new(last_kept.element.end as usize, end as usize), Bytes::new());
        }
    }
}

/// A response with our top Via removed (§16.7 step 3), as it goes upstream, and its CSeq number
/// set back to `cseq` when the branch sent another one (a carrier's digest round took a number).
pub fn pop_via_and_cseq(resp: &Message, cseq: Option<u32>, body: Option<&str>) -> Bytes {
    let mut m = resp.clone();
    if let Some(body) = body {
        set_body(&mut m, resp, body);
    }
    if let (Some(seq), Some(h)) = (cseq, resp.headers_named(HeaderName::CSeq).next()) {
        let method = resp.slice(resp.cseq.method);
        m.patch(h.value, Bytes::from([seq.to_string().as_bytes(), b" ", method].concat()));
    }
    if let Some(h) = resp.headers_named(HeaderName::Via).next() {
        let first = resp.vias[0];
        match resp.vias.get(1) {
            // The next Via shares the line: cut `first, ` up to it.
            Some(next) if next.span.start < h.line.end => m.patch(Span::new(first.span.start as usize, next.span.start as usize), Bytes::new()),
            _ => m.patch(h.line, Bytes::new()),
        }
    }
    m.to_bytes()
}

/// Replaces the body of `orig` (patched as `m`) and its Content-Length, adding the header where
/// it was left out (allowed on UDP, RFC 3261 §18.3, but the length changed).
fn set_body(m: &mut Message, orig: &Message, body: &str) {
    m.patch(orig.body, Bytes::copy_from_slice(body.as_bytes()));
    match orig.headers_named(HeaderName::ContentLength).next() {
        Some(h) => m.patch(h.value, Bytes::from(body.len().to_string())),
        None => {
            if let Some(last) = orig.headers.last() {
                m.patch(Span::new(last.line.end as usize, last.line.end as usize), Bytes::from(format!("Content-Length: {}\r\n", body.len())));
            }
        }
    }
}

/// Copies one header line of `req` by name (first occurrence), name as written.
fn copy_line(out: &mut BytesMut, req: &Message, name: HeaderName) {
    if let Some(h) = req.headers_named(name).next() {
        out.put_slice(req.slice(h.line));
    }
}

/// The ACK for a non-2xx final response to the INVITE `sent` that we sent on a branch (§17.1.1.3):
/// same Request-URI, top Via, Call-ID, From, CSeq number and Route; To from the response.
pub fn ack_for(sent: &Message, resp: &Message) -> Bytes {
    let mut out = BytesMut::with_capacity(512);
    originated_start(&mut out, sent, "ACK");
    if let Some(h) = resp.headers_named(HeaderName::To).next() {
        out.put_slice(resp.slice(h.line));
    }
    originated_tail(&mut out, sent, "ACK");
    out.freeze()
}

/// The CANCEL for the INVITE `sent` on a branch (§9.1).
pub fn cancel_for(sent: &Message) -> Bytes {
    let mut out = BytesMut::with_capacity(512);
    originated_start(&mut out, sent, "CANCEL");
    copy_line(&mut out, sent, HeaderName::To);
    originated_tail(&mut out, sent, "CANCEL");
    out.freeze()
}

fn originated_start(out: &mut BytesMut, sent: &Message, method: &str) {
    out.put_slice(method.as_bytes());
    out.put_u8(b' ');
    if let Some(u) = sent.request_uri() {
        out.put_slice(sent.slice(u.span));
    }
    out.put_slice(b" SIP/2.0\r\n");
    // Only our own Via, the first element of the request we sent (validation guarantees one).
    out.put_slice(b"Via: ");
    out.put_slice(sent.slice(sent.vias[0].span));
    out.put_slice(b"\r\n");
    out.put_slice(b"Max-Forwards: 70\r\n");
    copy_line(out, sent, HeaderName::From);
}

fn originated_tail(out: &mut BytesMut, sent: &Message, method: &str) {
    copy_line(out, sent, HeaderName::CallId);
    out.put_slice(format!("CSeq: {} {method}\r\n", sent.cseq.seq).as_bytes());
    for h in sent.headers_named(HeaderName::Route) {
        out.put_slice(sent.slice(h.line));
    }
    out.put_slice(b"Content-Length: 0\r\n\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{parse, Framing};

    fn msg(s: &str) -> Message {
        parse(Bytes::copy_from_slice(s.as_bytes()), Framing::Datagram).unwrap()
    }

    const INVITE: &str = "INVITE sip:sixgate@[::1];lr SIP/2.0\r\nVia: SIP/2.0/UDP [::1]:4000;branch=z9hG4bK1\r\n\
        Route: <sip:[::1];lr>, <sip:127.0.0.1;lr>, <sip:192.0.2.9;lr>\r\nRoute: <sip:last.example;lr>\r\nMax-Forwards: 10\r\n\
        From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: c\r\nCSeq: 5 INVITE\r\nProxy-Authorization: Digest x=y\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn forward_edits_only_what_it_must() {
        let m = msg(INVITE);
        let auth = m.headers_named(HeaderName::ProxyAuthorization).next().unwrap().line;
        let out = forward_request(
            &m,
            &Forward { request_uri: Some("sip:+44@192.0.2.1"), top: "Via: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKx\r\n", pop_routes: 2, drop_lines: &[auth], cseq: Some(6), ..Default::default() },
        );
        let s = std::str::from_utf8(&out).unwrap();
        assert!(s.starts_with("INVITE sip:+44@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKx\r\nVia: SIP/2.0/UDP [::1]:4000"), "{s}");
        assert!(s.contains("\r\nRoute: <sip:192.0.2.9;lr>\r\nRoute: <sip:last.example;lr>\r\nMax-Forwards: 9\r\n"), "{s}");
        assert!(!s.contains("Proxy-Authorization"), "{s}");
        assert!(s.contains("CSeq: 6 INVITE\r\n"), "{s}");
        assert!(msg(s).is_request());
        // Strict-router compatibility: the last Route goes, the top ones stay.
        let out = forward_request(&m, &Forward { pop_last_route: true, ..Default::default() });
        let s = std::str::from_utf8(&out).unwrap();
        assert!(s.contains("Route: <sip:[::1];lr>, <sip:127.0.0.1;lr>, <sip:192.0.2.9;lr>\r\nMax-Forwards: 9"), "{s}");
        assert!(!s.contains("last.example"));
        // The whole first line and nothing else.
        let out = forward_request(&m, &Forward { pop_routes: 3, ..Default::default() });
        let s = std::str::from_utf8(&out).unwrap();
        assert!(s.contains("Via: SIP/2.0/UDP [::1]:4000;branch=z9hG4bK1\r\nRoute: <sip:last.example;lr>\r\n"), "{s}");
    }

    #[test]
    fn pop_via_removes_exactly_our_via() {
        let r = msg("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKa, SIP/2.0/UDP [::1]:4000;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\nCall-ID: c\r\nCSeq: 5 INVITE\r\nContent-Length: 0\r\n\r\n");
        let s = String::from_utf8(pop_via_and_cseq(&r, None, None).to_vec()).unwrap();
        assert!(s.starts_with("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP [::1]:4000;branch=z9hG4bK1\r\nFrom"), "{s}");
        let r = msg("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKa\r\nVia: SIP/2.0/UDP [::1]:4000;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\nCall-ID: c\r\nCSeq: 5 INVITE\r\nContent-Length: 0\r\n\r\n");
        let s = String::from_utf8(pop_via_and_cseq(&r, None, None).to_vec()).unwrap();
        assert!(s.starts_with("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP [::1]:4000;branch=z9hG4bK1\r\nFrom"), "{s}");
    }

    #[test]
    fn ack_and_cancel_copy_the_right_lines() {
        let sent = msg("INVITE sip:b@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKa\r\nVia: SIP/2.0/UDP [::1]:4000;branch=z9hG4bK1\r\nRoute: <sip:192.0.2.9;lr>\r\nMax-Forwards: 69\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: c\r\nCSeq: 5 INVITE\r\nContent-Length: 0\r\n\r\n");
        let resp = msg("SIP/2.0 486 Busy Here\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKa\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=99\r\nCall-ID: c\r\nCSeq: 5 INVITE\r\nContent-Length: 0\r\n\r\n");
        let ack = msg(std::str::from_utf8(&ack_for(&sent, &resp)).unwrap());
        assert_eq!(ack.method(), Some(crate::message::Method::Ack));
        assert_eq!(ack.vias.len(), 1);
        assert_eq!(ack.slice(ack.to.tag.unwrap()), b"99");
        assert_eq!(ack.cseq.seq, 5);
        assert!(ack.header_value(HeaderName::Route).is_some());
        let cancel = msg(std::str::from_utf8(&cancel_for(&sent)).unwrap());
        assert_eq!(cancel.method(), Some(crate::message::Method::Cancel));
        assert!(cancel.to.tag.is_none());
        assert_eq!(cancel.slice(cancel.top_via().branch.unwrap()), b"z9hG4bKa");
    }
}
