//! Validation: from split bytes to a [`Message`] the rest of sixgate can trust (RFC 3261 §8.2,
//! §16.3, §18.3; RFC 4475; RFC 5118).
//!
//! Rules that no grammar states live here: SIP/2.0 only; one Content-Length that matches the body;
//! single-valued headers present once; CSeq below 2^31 with the request's method; Max-Forwards at
//! most 255; status codes 100–699; no escaped headers in a Request-URI; the required headers
//! (Via, From, To, Call-ID, CSeq). A missing Max-Forwards is accepted (RFC 2543 peers, RFC 4475
//! §3.4.1): the proxy adds one when forwarding (RFC 3261 §16.6 step 3).
//!
//! Every failure is a [`MessageError`] whose `Display` is the reason phrase of the answer.

use super::header::{self, ContactList};
use super::split::{split, RawStart};
use super::uri::parse_uri;
use super::{Framing, HeaderName, Message, Method, StartLine};
use bytes::Bytes;

/// Why a message was refused. `Display` gives the reason phrase sent back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("Empty message")]
    Empty,
    #[error("Message Too Large")]
    TooLarge,
    #[error("No end of headers")]
    NoEndOfHeaders,
    #[error("Malformed start line: {0}")]
    BadStartLine(&'static str),
    #[error("Version Not Supported")]
    VersionNotSupported,
    #[error("Bad status code")]
    BadStatusCode,
    #[error("Malformed header line")]
    MalformedHeaderLine,
    #[error("Bare CR or NUL in header section")]
    ControlCharacter,
    #[error("Too many header lines")]
    TooManyHeaders,
    #[error("Bad Content-Length: {0}")]
    BadContentLength(&'static str),
    #[error("Content-Length required on stream transports")]
    MissingContentLength,
    #[error("Body shorter than Content-Length")]
    BodyShorterThanContentLength,
    #[error("Missing {0} header")]
    MissingHeader(&'static str),
    #[error("Multiple {0} headers")]
    DuplicateHeader(&'static str),
    #[error("Bad {header} header: {problem}")]
    BadHeader { header: &'static str, problem: &'static str },
    #[error("CSeq method does not match request method")]
    CSeqMethodMismatch,
    #[error("Bad Request-URI: {0}")]
    BadRequestUri(&'static str),
    #[error("Escaped headers not allowed in Request-URI")]
    EscapedHeadersInRequestUri,
}

impl MessageError {
    /// The status code a request refused for this reason is answered with.
    pub fn status(&self) -> u16 {
        match self {
            MessageError::VersionNotSupported => 505,
            MessageError::TooLarge | MessageError::TooManyHeaders => 513,
            _ => 400,
        }
    }

    /// A stable label for drop/error counters.
    pub fn label(&self) -> &'static str {
        match self {
            MessageError::Empty => "empty",
            MessageError::TooLarge => "too_large",
            MessageError::NoEndOfHeaders => "no_end_of_headers",
            MessageError::BadStartLine(_) => "bad_start_line",
            MessageError::VersionNotSupported => "version",
            MessageError::BadStatusCode => "bad_status_code",
            MessageError::MalformedHeaderLine => "malformed_header_line",
            MessageError::ControlCharacter => "control_character",
            MessageError::TooManyHeaders => "too_many_headers",
            MessageError::BadContentLength(_) => "bad_content_length",
            MessageError::MissingContentLength => "missing_content_length",
            MessageError::BodyShorterThanContentLength => "body_short",
            MessageError::MissingHeader(_) => "missing_header",
            MessageError::DuplicateHeader(_) => "duplicate_header",
            MessageError::BadHeader { .. } => "bad_header",
            MessageError::CSeqMethodMismatch => "cseq_mismatch",
            MessageError::BadRequestUri(_) => "bad_request_uri",
            MessageError::EscapedHeadersInRequestUri => "escaped_headers_in_ruri",
        }
    }
}

fn bad(header: &'static str) -> impl Fn(&'static str) -> MessageError {
    move |problem| MessageError::BadHeader { header, problem }
}

/// Parses and validates one message.
pub fn parse(buf: Bytes, framing: Framing) -> Result<Message, MessageError> {
    let raw = split(buf, framing)?;
    let b: &[u8] = &raw.buf;

    let start = match raw.start {
        RawStart::Request { method, uri, version } => {
            check_version(version.of(b))?;
            let uri = parse_uri(b, uri).map_err(MessageError::BadRequestUri)?;
            if uri.is_sip() && uri.headers.is_some() {
                return Err(MessageError::EscapedHeadersInRequestUri);
            }
            StartLine::Request { method: Method::from_token(method.of(b)), method_span: method, uri }
        }
        RawStart::Response { version, code, reason } => {
            check_version(version.of(b))?;
            let c = code.of(b);
            if c.len() != 3 {
                return Err(MessageError::BadStatusCode);
            }
            let code = super::scan::parse_decimal(c, 699).filter(|&n| n >= 100).ok_or(MessageError::BadStatusCode)?;
            StartLine::Response { code: code as u16, reason }
        }
    };

    let mut vias = Vec::with_capacity(4);
    let mut from = None;
    let mut to = None;
    let mut call_id = None;
    let mut cseq = None;
    let mut max_forwards = None;
    let mut expires = None;
    let mut contacts = ContactList::None;
    let mut addrs = Vec::new();
    for h in &raw.headers {
        let v = h.value;
        match h.name {
            HeaderName::Via => super::scan::for_each_element(b, v, |el| {
                if el.is_empty() {
                    return Err(bad("Via")("empty list element"));
                }
                vias.push(header::parse_via(b, el).map_err(bad("Via"))?);
                Ok(())
            })?,
            HeaderName::From => once(&mut from, "From", || header::parse_name_addr(b, v).map_err(bad("From")))?,
            HeaderName::To => once(&mut to, "To", || header::parse_name_addr(b, v).map_err(bad("To")))?,
            HeaderName::CallId => once(&mut call_id, "Call-ID", || {
                header::check_call_id(b, v).map_err(bad("Call-ID")).map(|_| v)
            })?,
            HeaderName::CSeq => once(&mut cseq, "CSeq", || header::parse_cseq(b, v).map_err(bad("CSeq")))?,
            HeaderName::MaxForwards => once(&mut max_forwards, "Max-Forwards", || {
                header::parse_number(b, v, 255).map(|n| n as u32).map_err(|_| bad("Max-Forwards")("not a number from 0 to 255"))
            })?,
            HeaderName::Expires => once(&mut expires, "Expires", || {
                // RFC 3261 §20.19 allows any delta-seconds; values past 2^32-1 are clamped.
                let d = v.of(b);
                if d.is_empty() || !d.iter().all(u8::is_ascii_digit) {
                    return Err(bad("Expires")("not a number"));
                }
                Ok(header::parse_number(b, v, u64::from(u32::MAX)).map_or(u32::MAX, |n| n as u32))
            })?,
            HeaderName::Contact => {
                if v.of(b) == b"*" {
                    if !matches!(contacts, ContactList::None) {
                        return Err(bad("Contact")("'*' mixed with addresses"));
                    }
                    contacts = ContactList::Star;
                } else {
                    if matches!(contacts, ContactList::Star) {
                        return Err(bad("Contact")("'*' mixed with addresses"));
                    }
                    let mut list = match std::mem::take(&mut contacts) {
                        ContactList::Addrs(l) => l,
                        _ => Vec::with_capacity(2),
                    };
                    header::parse_addr_list(b, v, &mut list).map_err(bad("Contact"))?;
                    contacts = ContactList::Addrs(list);
                }
            }
            HeaderName::Route | HeaderName::RecordRoute | HeaderName::Path => {
                let name = match h.name {
                    HeaderName::Route => "Route",
                    HeaderName::RecordRoute => "Record-Route",
                    _ => "Path",
                };
                addrs.clear();
                header::parse_addr_list(b, v, &mut addrs).map_err(bad(name))?;
                if addrs.iter().any(|a| !a.bracketed) {
                    return Err(bad(name)("URI must be enclosed in <>"));
                }
            }
            HeaderName::Date => header::check_date(b, v).map_err(bad("Date"))?,
            _ => {}
        }
    }

    if vias.is_empty() {
        return Err(MessageError::MissingHeader("Via"));
    }
    let from = from.ok_or(MessageError::MissingHeader("From"))?;
    let to = to.ok_or(MessageError::MissingHeader("To"))?;
    let call_id = call_id.ok_or(MessageError::MissingHeader("Call-ID"))?;
    let cseq = cseq.ok_or(MessageError::MissingHeader("CSeq"))?;
    if let StartLine::Request { method_span, .. } = &start {
        if cseq.method.of(b) != method_span.of(b) {
            return Err(MessageError::CSeqMethodMismatch);
        }
    }

    Ok(Message {
        start,
        headers: raw.headers,
        body: raw.body,
        vias,
        from,
        to,
        call_id,
        cseq,
        max_forwards,
        contacts,
        expires,
        patches: Vec::new(),
        buf: raw.buf,
    })
}

fn once<T>(
    slot: &mut Option<T>,
    name: &'static str,
    decode: impl FnOnce() -> Result<T, MessageError>,
) -> Result<(), MessageError> {
    if slot.is_some() {
        return Err(MessageError::DuplicateHeader(name));
    }
    *slot = Some(decode()?);
    Ok(())
}

/// `SIP/2.0` only; another well-formed version is answered 505 (RFC 3261 §21.5.6).
fn check_version(v: &[u8]) -> Result<(), MessageError> {
    if v.len() == 7 && v[..4].eq_ignore_ascii_case(b"SIP/") && &v[4..] == b"2.0" {
        return Ok(());
    }
    let well_formed = v.len() > 4 && v[..4].eq_ignore_ascii_case(b"SIP/") && {
        let rest = &v[4..];
        let dot = rest.iter().position(|&c| c == b'.');
        dot.is_some_and(|d| {
            d > 0 && d + 1 < rest.len() && rest[..d].iter().all(u8::is_ascii_digit) && rest[d + 1..].iter().all(u8::is_ascii_digit)
        })
    };
    Err(if well_formed { MessageError::VersionNotSupported } else { MessageError::BadStartLine("bad SIP version") })
}
