//! Building responses (RFC 3261 §8.2.6): to a validated request, and — for a request that failed
//! validation — from whatever Via/From/To/Call-ID/CSeq lines can still be found, so that the
//! sender learns *why* (RFC 3261 §8.2: "400 with a reason phrase naming the problem").
//!
//! Must never: answer a response, or answer when the headers a response needs are missing (such
//! bytes are dropped and counted by the caller).

use super::scan::Cursor;
use super::{HeaderName, Message, MessageError, Span};
use bytes::{BufMut, Bytes, BytesMut};
use std::hash::{Hash, Hasher};

/// A response under construction; the mandatory headers are already written.
pub struct ResponseBuilder {
    out: BytesMut,
}

impl ResponseBuilder {
    /// Starts a response to `req` (a validated request). The Via lines are copied with their
    /// patches (received/rport), From/To/Call-ID/CSeq as received; To gets a tag unless the
    /// response is a 100 or the request's To already has one.
    pub fn to(req: &Message, code: u16, reason: &str) -> ResponseBuilder {
        let mut out = BytesMut::with_capacity(512 + req.bytes().len() / 2);
        status_line(&mut out, code, reason);
        for h in req.headers_named(HeaderName::Via) {
            out.put_slice(b"Via: ");
            req.write_span(&mut out, h.value);
            out.put_slice(b"\r\n");
        }
        let b = req.bytes();
        for (name, label) in [(HeaderName::From, "From"), (HeaderName::To, "To")] {
            if let Some(h) = req.headers_named(name).next() {
                out.put_slice(label.as_bytes());
                out.put_slice(b": ");
                out.put_slice(h.value.of(b));
                if name == HeaderName::To && code > 100 && req.to.tag.is_none() {
                    out.put_slice(b";tag=");
                    out.put_slice(stable_tag(req).as_bytes());
                }
                out.put_slice(b"\r\n");
            }
        }
        out.put_slice(b"Call-ID: ");
        out.put_slice(req.call_id.of(b));
        out.put_slice(b"\r\nCSeq: ");
        if let Some(h) = req.headers_named(HeaderName::CSeq).next() {
            out.put_slice(h.value.of(b));
        }
        out.put_slice(b"\r\n");
        ResponseBuilder { out }
    }

    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.out.put_slice(name.as_bytes());
        self.out.put_slice(b": ");
        self.out.put_slice(value.as_ref());
        self.out.put_slice(b"\r\n");
        self
    }

    /// Ends the headers with `Content-Length: 0`.
    pub fn finish(mut self) -> Bytes {
        self.out.put_slice(b"Content-Length: 0\r\n\r\n");
        self.out.freeze()
    }

    pub fn finish_with_body(mut self, content_type: &str, body: &[u8]) -> Bytes {
        self = self.header("Content-Type", content_type);
        self.out.put_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        self.out.put_slice(body);
        self.out.freeze()
    }
}

fn status_line(out: &mut BytesMut, code: u16, reason: &str) {
    out.put_slice(b"SIP/2.0 ");
    out.put_slice(code.to_string().as_bytes());
    out.put_u8(b' ');
    // A reason phrase is one line of text: never let a problem description break the framing.
    out.extend(reason.bytes().map(|c| if c < b' ' { b' ' } else { c }));
    out.put_slice(b"\r\n");
}

/// A To tag that is the same for retransmissions of one request, so stateless answers stay
/// consistent (RFC 3261 §8.2.6.2, §16.11); the ACK of a non-2xx answer (same branch, Call-ID,
/// From tag and CSeq number) carries it back, which is how that ACK is recognised.
pub fn stable_tag(req: &Message) -> String {
    to_tag((
        req.slice(req.call_id),
        req.from.tag.map(|t| req.slice(t)),
        req.top_via().branch.map(|t| req.slice(t)),
        req.cseq.seq,
    ))
}

/// Our To tags: a hash of what identifies the request, so a retransmission gets the same one.
fn to_tag(identity: impl Hash) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    identity.hash(&mut h);
    format!("sg{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// The answer to a request that failed validation, built from the raw bytes: the Via lines and
/// the first From, To, Call-ID and CSeq lines found. `None` when the bytes are not a request or
/// lack one of those headers (then nothing can be answered: drop and count).
pub fn reject(buf: &[u8], err: &MessageError) -> Option<Bytes> {
    let mut pos = 0;
    while pos < buf.len() && (buf[pos] == b'\r' || buf[pos] == b'\n') {
        pos += 1;
    }
    if buf.len() - pos < 4 || buf[pos..pos + 4].eq_ignore_ascii_case(b"SIP/") {
        return None;
    }
    // An ACK is never answered (RFC 3261 §17.2.1): not even a broken one.
    if buf[pos..].starts_with(b"ACK ") {
        return None;
    }
    let mut vias: Vec<Span> = Vec::new();
    let mut found: [Option<Span>; 4] = [None; 4]; // From, To, Call-ID, CSeq
    let mut line_start = match memchr::memchr(b'\n', &buf[pos..]) {
        Some(i) => pos + i + 1,
        None => return None,
    };
    let mut lines = 0;
    while line_start < buf.len() && lines < super::split::MAX_HEADER_LINES {
        lines += 1;
        let nl = memchr::memchr(b'\n', &buf[line_start..]).map_or(buf.len(), |i| line_start + i);
        let mut end = nl;
        while end > line_start && (buf[end - 1] == b'\r') {
            end -= 1;
        }
        if end == line_start {
            break; // end of headers
        }
        let line = &buf[line_start..end];
        if line[0] == b' ' || line[0] == b'\t' {
            line_start = nl + 1;
            continue; // a folded continuation: not salvaged
        }
        // A line with a lone CR or a NUL is never copied into our answer (header injection).
        if line.iter().any(|&c| c == b'\r' || c == 0) {
            line_start = nl + 1;
            continue;
        }
        if let Some(colon) = memchr::memchr(b':', line) {
            let name = super::HeaderName::from_bytes(line[..colon].trim_ascii_end());
            let value = super::scan::trim(buf, Span::new(line_start + colon + 1, end));
            // Only single-line values are salvaged; CR/LF can never leak into our output.
            let slot = match name {
                HeaderName::Via if !value.is_empty() => {
                    vias.push(value);
                    None
                }
                HeaderName::From => Some(0),
                HeaderName::To => Some(1),
                HeaderName::CallId => Some(2),
                HeaderName::CSeq => Some(3),
                _ => None,
            };
            if let Some(i) = slot.filter(|_| !value.is_empty()) {
                found[i].get_or_insert(value);
            }
        }
        line_start = nl + 1;
    }
    if vias.is_empty() || found.iter().any(Option::is_none) {
        return None;
    }
    let mut out = BytesMut::with_capacity(512);
    status_line(&mut out, err.status(), &err.to_string());
    for v in &vias {
        out.put_slice(b"Via: ");
        out.put_slice(v.of(buf));
        out.put_slice(b"\r\n");
    }
    let [from, to, call_id, cseq] = found.map(|s| s.map_or(&b""[..], |s| s.of(buf)));
    for (label, value) in [("From", from), ("To", to), ("Call-ID", call_id), ("CSeq", cseq)] {
        out.put_slice(label.as_bytes());
        out.put_slice(b": ");
        out.put_slice(value);
        if label == "To" && !has_tag_param(value) {
            // A final response carries a To tag (RFC 3261 §8.2.6.2); the same for every
            // retransmission of the request.
            out.put_slice(b";tag=");
            out.put_slice(to_tag((call_id, cseq, vias.first().map(|v| v.of(buf)))).as_bytes());
        }
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"Content-Length: 0\r\n\r\n");
    Some(out.freeze())
}

/// True if a To value (name-addr or addr-spec) already has a `tag` parameter (with or without
/// a value: either way, adding a second one would make it worse). Header parameters are the
/// `;`-separated items outside quoted strings and outside the `<URI>`.
fn has_tag_param(value: &[u8]) -> bool {
    let mut c = Cursor::new(value, Span::new(0, value.len()));
    loop {
        c.pos = c.find_top_level(b';');
        if c.at_end() {
            return false;
        }
        c.pos += 1;
        let rest = value[c.pos..].trim_ascii_start();
        if rest.len() >= 3
            && rest[..3].eq_ignore_ascii_case(b"tag")
            && matches!(rest[3..].trim_ascii_start().first(), None | Some(b'=' | b';'))
        {
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(head: &str) -> Vec<u8> {
        format!("{head}\r\nContent-Length: 0\r\n\r\n").into_bytes()
    }

    const OK_HEADERS: &str = "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: c1\r\nCSeq: 1 INVITE";

    #[test]
    fn reject_answers_with_the_reason_and_a_to_tag() {
        let buf = req(&format!("INVITE sip:b@x SIP/2.0\r\n{OK_HEADERS}\r\nMax-Forwards: 300"));
        let err = MessageError::BadHeader { header: "Max-Forwards", problem: "above 255" };
        let a = reject(&buf, &err).unwrap();
        let text = std::str::from_utf8(&a).unwrap();
        assert!(text.starts_with("SIP/2.0 400 Bad Max-Forwards header: above 255\r\n"), "{text}");
        assert!(text.contains("\r\nTo: <sip:b@x>;tag=sg"), "{text}");
        assert_eq!(reject(&buf, &err).unwrap(), a, "same tag for a retransmission");
        // A To that has its tag keeps it, and gets no second one.
        let buf = req(&format!("INVITE sip:b@x SIP/2.0\r\n{}\r\nMax-Forwards: 300", OK_HEADERS.replace("<sip:b@x>", "<sip:b@x;tag=u>;tag=9")));
        let a = reject(&buf, &err).unwrap();
        assert_eq!(a.windows(4).filter(|w| w == b"tag=").count(), 3, "From tag, URI param, To tag");
    }

    #[test]
    fn to_tag_is_found_where_it_is_and_only_there() {
        for (to, has) in [
            ("<sip:b@x>", false),
            ("<sip:b@x>;tag=1", true),
            ("<sip:b@x> ; TAG = 1", true),
            ("<sip:b@x;tag=u>", false),
            ("sip:b@x;tag=1", true),
            ("sip:b@x", false),
            ("\"a>b\" <sip:b@x>;tag=1", true),
            ("\"a;tag=2\" <sip:b@x>", false),
            ("<sip:b@x>;x=\"a>b;tag=c\"", false),
            ("<sip:b@x>;x=\"a>b\";tag=1", true),
            ("<sip:b@x>;tag", true),
            ("<sip:b@x>;tagx=1", false),
        ] {
            assert_eq!(has_tag_param(to.as_bytes()), has, "{to}");
        }
    }

    #[test]
    fn reject_does_not_answer_ack_empty_headers_or_injected_lines() {
        let err = MessageError::MalformedHeaderLine;
        let ack = req(&format!("ACK sip:b@x SIP/2.0\r\n{}", OK_HEADERS.replace("INVITE", "ACK")));
        assert!(reject(&ack, &err).is_none(), "ACK is never answered");
        let empty = req(&format!("INVITE sip:b@x SIP/2.0\r\n{}", OK_HEADERS.replace("Call-ID: c1", "Call-ID: ")));
        assert!(reject(&empty, &err).is_none(), "no Call-ID value, nothing to match the answer to");
        // A lone CR inside the From line must not reach our answer as a line break.
        let injected = req(&format!("INVITE sip:b@x SIP/2.0\r\n{}\r\nFrom: <sip:a@x>\rX-Evil: 1", OK_HEADERS.replace("From: <sip:a@x>;tag=1\r\n", "")));
        assert!(reject(&injected, &err).is_none());
        let both = req(&format!("INVITE sip:b@x SIP/2.0\r\nSubject: a\rRoute: <sip:evil>\r\n{OK_HEADERS}"));
        let a = reject(&both, &MessageError::ControlCharacter).unwrap();
        assert!(!a.windows(4).any(|w| w == b"evil"));
    }
}
