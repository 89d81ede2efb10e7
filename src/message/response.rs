//! Building responses (RFC 3261 §8.2.6): to a validated request, and — for a request that failed
//! validation — from whatever Via/From/To/Call-ID/CSeq lines can still be found, so that the
//! sender learns *why* (RFC 3261 §8.2: "400 with a reason phrase naming the problem").
//!
//! Must never: answer a response, or answer when the headers a response needs are missing (such
//! bytes are dropped and counted by the caller).

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
/// consistent (RFC 3261 §8.2.6.2, §16.11).
fn stable_tag(req: &Message) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    req.slice(req.call_id).hash(&mut h);
    req.from.tag.map(|t| req.slice(t)).hash(&mut h);
    req.top_via().branch.map(|t| req.slice(t)).hash(&mut h);
    req.cseq.seq.hash(&mut h);
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
        if let Some(colon) = memchr::memchr(b':', line) {
            let name = super::HeaderName::from_bytes(line[..colon].trim_ascii_end());
            let value = super::scan::trim(buf, Span::new(line_start + colon + 1, end));
            // Only single-line values are salvaged; CR/LF can never leak into our output.
            let slot = match name {
                HeaderName::Via => {
                    vias.push(value);
                    None
                }
                HeaderName::From => Some(0),
                HeaderName::To => Some(1),
                HeaderName::CallId => Some(2),
                HeaderName::CSeq => Some(3),
                _ => None,
            };
            if let Some(i) = slot {
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
    for v in vias {
        out.put_slice(b"Via: ");
        out.put_slice(v.of(buf));
        out.put_slice(b"\r\n");
    }
    for (i, label) in ["From", "To", "Call-ID", "CSeq"].iter().enumerate() {
        out.put_slice(label.as_bytes());
        out.put_slice(b": ");
        out.put_slice(found[i].map_or(&b""[..], |s| s.of(buf)));
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"Content-Length: 0\r\n\r\n");
    Some(out.freeze())
}
