//! Cuts a received message into start line, header lines and body (RFC 3261 §7, §7.3.1, §18.3).
//!
//! Only the structure is decided here: where each line and value begins and ends, the
//! Content-Length (needed to find the body) and the body. Values are decoded later by
//! [`super::validate`]. Leading CRLFs before the start line are skipped (§7.5); header lines may
//! be folded; lines end in CRLF (a bare LF is tolerated, as robust elements do).

use super::{scan, Framing, Header, HeaderName, MessageError, Span};
use bytes::Bytes;

/// More header lines than any real message carries; beyond this the message is refused.
pub const MAX_HEADER_LINES: usize = 256;

/// The start line as three (request) or three (response) lexical parts.
#[derive(Clone, Copy, Debug)]
pub enum RawStart {
    Request { method: Span, uri: Span, version: Span },
    Response { version: Span, code: Span, reason: Span },
}

/// A message cut into its parts, not yet validated.
#[derive(Clone, Debug)]
pub struct RawMessage {
    pub buf: Bytes,
    pub start: RawStart,
    pub headers: Vec<Header>,
    pub body: Span,
    pub content_length: Option<u32>,
}

/// Finds the end of the line starting at `from`: returns (end of content, start of next line).
/// Counts a CRLF line end in `crlf` (for the bare-CR check).
#[inline]
fn line_end(buf: &[u8], from: usize, crlf: &mut usize) -> Option<(usize, usize)> {
    let nl = from + memchr::memchr(b'\n', &buf[from..])?;
    let cr = nl > from && buf[nl - 1] == b'\r';
    *crlf += usize::from(cr);
    Some((nl - usize::from(cr), nl + 1))
}

/// Splits `buf` into a [`RawMessage`].
pub fn split(buf: Bytes, framing: Framing) -> Result<RawMessage, MessageError> {
    let b: &[u8] = &buf;
    let mut pos = 0;
    while pos < b.len() && (b[pos] == b'\r' || b[pos] == b'\n') {
        pos += 1;
    }
    if pos >= b.len() {
        return Err(MessageError::Empty);
    }
    let sl_start = pos;
    let mut crlf = 0;
    let (sl_end, mut pos) = line_end(b, pos, &mut crlf).ok_or(MessageError::NoEndOfHeaders)?;
    let start = split_start_line(b, sl_start, sl_end)?;

    let mut headers: Vec<Header> = Vec::with_capacity(16);
    let mut content_length: Option<u32> = None;
    let mut cl_seen = false;
    loop {
        if pos == b.len() && framing == Framing::Datagram {
            break; // a datagram that ends right after its last header line: no body
        }
        let (end, next) = line_end(b, pos, &mut crlf).ok_or(MessageError::NoEndOfHeaders)?;
        if end == pos {
            pos = next; // the empty line
            break;
        }
        if b[pos] == b' ' || b[pos] == b'\t' {
            // A continuation line with no header to continue.
            return Err(MessageError::MalformedHeaderLine);
        }
        // Fold continuation lines into this header's value.
        let (mut vend, mut lnext) = (end, next);
        while lnext < b.len() && (b[lnext] == b' ' || b[lnext] == b'\t') {
            let (e, n) = line_end(b, lnext, &mut crlf).ok_or(MessageError::NoEndOfHeaders)?;
            vend = e;
            lnext = n;
        }
        // `field-name HCOLON`: a token, optional SP/HT, then ':' (one pass over the name; a
        // token holds neither ':' nor whitespace, so this is the first ':' of the line).
        let line = &b[pos..vend];
        let name_len = line.iter().position(|&c| !scan::is_token(c)).unwrap_or(line.len());
        let mut colon = pos + name_len;
        while colon < vend && (b[colon] == b' ' || b[colon] == b'\t') {
            colon += 1;
        }
        if name_len == 0 || colon == vend || b[colon] != b':' {
            return Err(MessageError::MalformedHeaderLine);
        }
        let name_end = pos + name_len;
        let name_span = Span::new(pos, name_end);
        let name = HeaderName::from_bytes(name_span.of(b));
        let value = scan::trim(b, Span::new(colon + 1, vend));
        if name == HeaderName::ContentLength {
            if cl_seen {
                return Err(MessageError::DuplicateHeader("Content-Length"));
            }
            cl_seen = true;
            content_length = Some(parse_content_length(value.of(b))?);
        }
        if headers.len() == MAX_HEADER_LINES {
            return Err(MessageError::TooManyHeaders);
        }
        headers.push(Header { name, name_span, value, line: Span::new(pos, lnext) });
        pos = lnext;
    }

    // A CR that does not end a line, or a NUL, is refused: elements that treat a lone CR as a
    // line end (or stop at NUL) would read different headers than we forward (header injection).
    if has_bare_cr_or_nul(&b[sl_start..pos], crlf) {
        return Err(MessageError::ControlCharacter);
    }

    let available = b.len() - pos;
    let body_len = match (content_length, framing) {
        // A stream frame was cut at Content-Length by the framer; a body that does not fill it
        // exactly means we and the framer found different header ends (e.g. a bare "\n\n"
        // inside the headers), which could hide a second message in the frame.
        (Some(cl), Framing::Stream) if cl as usize != available => {
            return Err(MessageError::BadContentLength("does not match the stream frame"));
        }
        (Some(cl), _) => {
            let cl = cl as usize;
            if cl > available {
                return Err(MessageError::BodyShorterThanContentLength);
            }
            // On a datagram, octets past Content-Length are discarded (RFC 3261 §18.3).
            cl
        }
        (None, Framing::Datagram) => available,
        (None, Framing::Stream) => return Err(MessageError::MissingContentLength),
    };
    Ok(RawMessage { buf, start, headers, body: Span::new(pos, pos + body_len), content_length })
}

/// True if `block` holds a CR not followed by LF, or a NUL that is not a quoted-pair inside a
/// quoted string (`"...\<NUL>..."` is legal, RFC 3261 §25.1; RFC 4475 §3.1.1.2 has one).
/// `crlf` is the number of CRLF line ends in `block`: when the CRs and NULs number exactly that,
/// there is nothing to look at (SIMD counts instead of a visit per line).
#[inline]
fn has_bare_cr_or_nul(block: &[u8], crlf: usize) -> bool {
    if memchr::memchr_iter(b'\r', block).count() == crlf && memchr::memchr(0, block).is_none() {
        return false;
    }
    // Rare: one linear pass that knows where quoted strings are (per line, conservatively).
    let mut in_quotes = false;
    let mut i = 0;
    while i < block.len() {
        match block[i] {
            b'\r' if block.get(i + 1) != Some(&b'\n') => return true,
            0 => return true,
            b'\n' => in_quotes = false,
            b'"' => in_quotes = !in_quotes,
            b'\\' if in_quotes && !matches!(block.get(i + 1), Some(b'\r' | b'\n')) => i += 1, // quoted-pair
            _ => {}
        }
        i += 1;
    }
    false
}

fn parse_content_length(v: &[u8]) -> Result<u32, MessageError> {
    if v.first() == Some(&b'-') {
        return Err(MessageError::BadContentLength("negative"));
    }
    scan::parse_decimal(v, u64::from(u32::MAX))
        .map(|n| n as u32)
        .ok_or(MessageError::BadContentLength("not a number in range"))
}

fn split_start_line(b: &[u8], start: usize, end: usize) -> Result<RawStart, MessageError> {
    let line = &b[start..end];
    if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"SIP/") {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        let sp1 = memchr::memchr(b' ', line).ok_or(MessageError::BadStartLine("no status code"))?;
        let code_start = sp1 + 1;
        let code_end = memchr::memchr(b' ', &line[code_start..]).map_or(line.len(), |i| code_start + i);
        let reason_start = (code_end + 1).min(line.len());
        return Ok(RawStart::Response {
            version: Span::new(start, start + sp1),
            code: Span::new(start + code_start, start + code_end),
            reason: Span::new(start + reason_start, end),
        });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version CRLF. Trailing whitespace is tolerated
    // (RFC 4475 §3.1.2.10), but any other extra whitespace is an error (§3.1.2.8, §3.1.2.9).
    let mut trimmed = line.len();
    while trimmed > 0 && (line[trimmed - 1] == b' ' || line[trimmed - 1] == b'\t') {
        trimmed -= 1;
    }
    let line = &line[..trimmed];
    let sp1 = memchr::memchr(b' ', line).ok_or(MessageError::BadStartLine("not a Request-Line"))?;
    let sp2 = memchr::memrchr(b' ', line).filter(|&i| i > sp1).ok_or(MessageError::BadStartLine("not a Request-Line"))?;
    let method = &line[..sp1];
    if method.is_empty() || !scan::all(method, scan::TOKEN) {
        return Err(MessageError::BadStartLine("method is not a token"));
    }
    let uri = &line[sp1 + 1..sp2];
    if uri.is_empty() || uri.iter().any(|&c| c == b' ' || c == b'\t') {
        return Err(MessageError::BadStartLine("whitespace in Request-URI or between its elements"));
    }
    Ok(RawStart::Request {
        method: Span::new(start, start + sp1),
        uri: Span::new(start + sp1 + 1, start + sp2),
        version: Span::new(start + sp2 + 1, start + trimmed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n";

    fn msg(extra: &str, body: &str) -> Bytes {
        format!("{HEAD}{extra}Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes().into()
    }

    #[test]
    fn bare_cr_or_nul_in_headers_is_refused() {
        // A lone CR would be a line end to some elements: "Subject: x\rRoute: <sip:evil>".
        let m = msg("Subject: x\rRoute: <sip:evil>\r\n", "");
        assert_eq!(split(m, Framing::Datagram).unwrap_err(), MessageError::ControlCharacter);
        let m = msg("Subject: x\0y\r\n", "");
        assert_eq!(split(m, Framing::Datagram).unwrap_err(), MessageError::ControlCharacter);
        assert!(split(msg("To: \"a\\\0b\" <sip:b@x>\r\n", ""), Framing::Datagram).is_ok(), "quoted-pair NUL");
        for bad in ["Subject: a\\\0b\r\n", "To: \"a\\\\\0b\" <sip:b@x>\r\n", "To: \"a\" \\\0 <sip:b@x>\r\n"] {
            // Outside quotes, after an escaped backslash, after the closing quote: not a quoted-pair.
            assert_eq!(split(msg(bad, ""), Framing::Datagram).unwrap_err(), MessageError::ControlCharacter, "{bad:?}");
        }
        let m: Bytes = format!("OPTIONS sip:a@example.com\r SIP/2.0\r\n{}", "Content-Length: 0\r\n\r\n").into_bytes().into();
        assert_eq!(split(m, Framing::Datagram).unwrap_err(), MessageError::ControlCharacter);
        // In the body anything goes, and CRLF / bare LF line ends are fine.
        assert!(split(msg("Subject: x\n", "a\rb\0c"), Framing::Stream).is_ok());
    }

    #[test]
    fn stream_body_must_fill_the_frame() {
        // The framer cut this frame at "\r\n\r\n" + Content-Length; a bare "\n\n" earlier in it
        // must not make the rest of the frame a body we ignore (or a message we skip).
        let frame: Bytes = format!("{HEAD}Subject: x\n\nINVITE sip:b@example.com SIP/2.0\r\nContent-Length: 0\r\n\r\n")
            .into_bytes()
            .into();
        assert!(matches!(split(frame, Framing::Stream).unwrap_err(), MessageError::MissingContentLength));
        let frame: Bytes = format!("{HEAD}Content-Length: 0\r\nSubject: x\n\nINVITE sip:b@example.com SIP/2.0\r\nContent-Length: 0\r\n\r\n")
            .into_bytes()
            .into();
        assert_eq!(split(frame, Framing::Stream).unwrap_err(), MessageError::BadContentLength("does not match the stream frame"));
        let mut m = msg("", "abc").to_vec();
        m.extend_from_slice(b"xyz");
        assert!(matches!(split(m.clone().into(), Framing::Stream).unwrap_err(), MessageError::BadContentLength(_)));
        // A datagram drops octets past Content-Length (RFC 3261 §18.3).
        assert_eq!(split(m.into(), Framing::Datagram).unwrap().body.len(), 3);
    }
}
