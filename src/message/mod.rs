//! The SIP message layer (RFC 3261 §7, §18.3, §20; RFC 5118 for IPv6 references).
//!
//! Bytes from a transport become either a validated [`Message`] or a precise [`MessageError`]
//! here, once; deeper code never re-parses. A message keeps the received bytes (`bytes::Bytes`)
//! and describes its start line, header lines and body as [`Span`]s into them, so forwarding is
//! byte-exact: only what a [`Patch`] edits changes on the way out.
//!
//! Layout: [`split`] cuts start line / header lines / body, [`uri`] and [`header`] decode the
//! values the proxy reads, [`validate`] applies the rules no grammar expresses (single
//! Content-Length, CSeq method, Max-Forwards range, required headers ...), [`response`] builds
//! the answers (including to messages that failed validation).
//!
//! Must never: panic on any input, allocate per byte, or rewrite bytes it was not asked to edit.

pub mod header;
pub mod response;
pub mod scan;
pub mod split;
pub mod uri;
pub mod validate;

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;

pub use header::{CSeq, Contact, ContactList, NameAddr, Via};
pub use split::{split, RawMessage, RawStart};
pub use uri::{Host, Scheme, Uri};
pub use validate::{parse, MessageError};

/// A byte range `start..end` of a message's buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    #[inline]
    pub fn new(start: usize, end: usize) -> Self {
        // Messages are capped far below 4 GiB by the transports; saturate rather than wrap.
        Span { start: start.min(u32::MAX as usize) as u32, end: end.min(u32::MAX as usize) as u32 }
    }
    #[inline]
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
    #[inline]
    pub fn of<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start as usize..self.end as usize]
    }
}

/// How the bytes arrived: a datagram carries one message and may be cut short or padded;
/// a stream was framed by Content-Length, which must therefore be present (RFC 3261 §18.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Datagram,
    Stream,
}

/// SIP methods. Extension methods are legal and are forwarded as they are (RFC 3261 §16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Options,
    Info,
    Update,
    Prack,
    Subscribe,
    Notify,
    Refer,
    Message,
    Publish,
    Extension,
}

impl Method {
    pub fn from_token(t: &[u8]) -> Method {
        // Methods are case-sensitive (RFC 3261 §7.1).
        match t {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"REGISTER" => Method::Register,
            b"OPTIONS" => Method::Options,
            b"INFO" => Method::Info,
            b"UPDATE" => Method::Update,
            b"PRACK" => Method::Prack,
            b"SUBSCRIBE" => Method::Subscribe,
            b"NOTIFY" => Method::Notify,
            b"REFER" => Method::Refer,
            b"MESSAGE" => Method::Message,
            b"PUBLISH" => Method::Publish,
            _ => Method::Extension,
        }
    }
}

/// Header names the proxy reads; everything else is [`HeaderName::Other`] and travels untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    MaxForwards,
    ContentLength,
    ContentType,
    Contact,
    Route,
    RecordRoute,
    Expires,
    MinExpires,
    Authorization,
    ProxyAuthorization,
    WwwAuthenticate,
    ProxyAuthenticate,
    Require,
    ProxyRequire,
    Supported,
    Unsupported,
    Allow,
    Accept,
    Date,
    Path,
    Other,
}

impl HeaderName {
    /// Recognises long and compact forms (RFC 3261 §7.3.3), case-insensitively. `n` is a header
    /// name as the splitter accepts it (a token); other bytes may be misread.
    pub fn from_bytes(n: &[u8]) -> HeaderName {
        use HeaderName::*;
        if n.is_empty() {
            return Other;
        }
        if n.len() == 1 {
            return match n[0].to_ascii_lowercase() {
                b'v' => Via,
                b'f' => From,
                b't' => To,
                b'i' => CallId,
                b'l' => ContentLength,
                b'c' => ContentType,
                b'm' => Contact,
                b'k' => Supported,
                _ => Other,
            };
        }
        // One candidate per (length, first letter), then one folded comparison. Header names
        // are tokens (checked by the splitter); for tokens, `| 0x20` folds exactly the upper-case
        // letters onto lower case and maps no other token character onto a letter or `-`.
        let (candidate, lower): (HeaderName, &[u8]) = match (n.len(), n[0] | 0x20) {
            (2, b't') => (To, b"to"),
            (3, b'v') => (Via, b"via"),
            (4, b'f') => (From, b"from"),
            (4, b'c') => (CSeq, b"cseq"),
            (4, b'd') => (Date, b"date"),
            (4, b'p') => (Path, b"path"),
            (5, b'r') => (Route, b"route"),
            (5, b'a') => (Allow, b"allow"),
            (6, b'a') => (Accept, b"accept"),
            (7, b'c') if n[2] | 0x20 == b'l' => (CallId, b"call-id"),
            (7, b'c') => (Contact, b"contact"),
            (7, b'e') => (Expires, b"expires"),
            (7, b'r') => (Require, b"require"),
            (9, b's') => (Supported, b"supported"),
            (11, b'u') => (Unsupported, b"unsupported"),
            (11, b'm') => (MinExpires, b"min-expires"),
            (12, b'm') => (MaxForwards, b"max-forwards"),
            (12, b'c') => (ContentType, b"content-type"),
            (12, b'r') => (RecordRoute, b"record-route"),
            (13, b'a') => (Authorization, b"authorization"),
            (13, b'p') => (ProxyRequire, b"proxy-require"),
            (14, b'c') => (ContentLength, b"content-length"),
            (16, b'w') => (WwwAuthenticate, b"www-authenticate"),
            (18, b'p') => (ProxyAuthenticate, b"proxy-authenticate"),
            (19, b'p') => (ProxyAuthorization, b"proxy-authorization"),
            _ => return Other,
        };
        if folded_eq(n, lower) {
            candidate
        } else {
            Other
        }
    }
}

/// `n` (a token) equals `lower` (lower-case letters and `-`) ignoring ASCII case, compared a word at
/// a time. The lengths are equal.
#[inline]
fn folded_eq(n: &[u8], lower: &[u8]) -> bool {
    debug_assert_eq!(n.len(), lower.len());
    let len = n.len();
    let w8 = |s: &[u8], i: usize| u64::from_le_bytes(s[i..i + 8].try_into().unwrap());
    let w4 = |s: &[u8], i: usize| u32::from_le_bytes(s[i..i + 4].try_into().unwrap());
    if len >= 8 {
        let mut i = 0;
        while i + 8 < len {
            if w8(n, i) | 0x2020_2020_2020_2020 != w8(lower, i) {
                return false;
            }
            i += 8;
        }
        // The last (possibly overlapping) word.
        w8(n, len - 8) | 0x2020_2020_2020_2020 == w8(lower, len - 8)
    } else if len >= 4 {
        w4(n, 0) | 0x2020_2020 == w4(lower, 0) && w4(n, len - 4) | 0x2020_2020 == w4(lower, len - 4)
    } else {
        n.iter().zip(lower).all(|(&a, &b)| a | 0x20 == b)
    }
}

/// One header line as received: `name` and `value` point into the buffer (the value without
/// leading/trailing whitespace, folding kept), `line` covers the whole line with its line end.
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub name: HeaderName,
    pub name_span: Span,
    pub value: Span,
    pub line: Span,
}

/// A byte edit: replace `at` (empty = insert) with `with`. Patches never overlap.
#[derive(Clone, Debug)]
pub struct Patch {
    pub at: Span,
    pub with: Bytes,
}

/// The start line of a validated message.
#[derive(Clone, Debug)]
pub enum StartLine {
    Request { method: Method, method_span: Span, uri: Uri },
    Response { code: u16, reason: Span },
}

/// A validated SIP message. Accessors return slices of the received bytes.
#[derive(Clone, Debug)]
pub struct Message {
    buf: Bytes,
    pub start: StartLine,
    pub headers: Vec<Header>,
    pub body: Span,
    /// All Via values, top first.
    pub vias: Vec<Via>,
    pub from: NameAddr,
    pub to: NameAddr,
    pub call_id: Span,
    pub cseq: CSeq,
    /// `None` when absent (RFC 2543 peers); a proxy then adds 70 (RFC 3261 §16.6 step 3).
    pub max_forwards: Option<u32>,
    pub contacts: ContactList,
    pub expires: Option<u32>,
    patches: Vec<Patch>,
}

impl Message {
    #[inline]
    pub fn bytes(&self) -> &Bytes {
        &self.buf
    }
    #[inline]
    pub fn slice(&self, span: Span) -> &[u8] {
        span.of(&self.buf)
    }
    /// A span as text, for logging and comparisons; invalid UTF-8 is replaced.
    pub fn text(&self, span: Span) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.slice(span))
    }
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }
    pub fn method(&self) -> Option<Method> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }
    pub fn method_bytes(&self) -> &[u8] {
        match &self.start {
            StartLine::Request { method_span, .. } => self.slice(*method_span),
            StartLine::Response { .. } => self.slice(self.cseq.method),
        }
    }
    pub fn request_uri(&self) -> Option<&Uri> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }
    pub fn top_via(&self) -> &Via {
        // validation guarantees at least one Via
        &self.vias[0]
    }
    pub fn body_bytes(&self) -> Bytes {
        self.buf.slice(self.body.start as usize..self.body.end as usize)
    }
    /// Header lines with this name, in order.
    pub fn headers_named(&self, name: HeaderName) -> impl Iterator<Item = &Header> {
        self.headers.iter().filter(move |h| h.name == name)
    }
    pub fn header_value(&self, name: HeaderName) -> Option<&[u8]> {
        self.headers_named(name).next().map(|h| self.slice(h.value))
    }

    /// Registers an edit. Edits are applied by [`Message::write_span`] / [`Message::to_bytes`].
    pub fn patch(&mut self, at: Span, with: Bytes) {
        let pos = self.patches.partition_point(|p| p.at.start < at.start || (p.at.start == at.start && p.at.end <= at.start));
        self.patches.insert(pos, Patch { at, with });
    }

    /// Appends `span` of the message to `out`, with every patch inside it applied.
    pub fn write_span(&self, out: &mut BytesMut, span: Span) {
        let mut pos = span.start;
        for p in &self.patches {
            if p.at.start < span.start || p.at.end > span.end {
                continue;
            }
            out.put_slice(&self.buf[pos as usize..p.at.start as usize]);
            out.put_slice(&p.with);
            pos = p.at.end;
        }
        out.put_slice(&self.buf[pos as usize..span.end as usize]);
    }

    /// The message as it should leave: received bytes with the patches applied. Bytes past the
    /// body (a second message in one datagram) are not part of the message and are left out.
    pub fn to_bytes(&self) -> Bytes {
        let whole = Span::new(0, self.body.end as usize);
        if self.patches.is_empty() {
            return self.buf.slice(0..whole.end as usize);
        }
        let extra: usize = self.patches.iter().map(|p| p.with.len()).sum();
        let mut out = BytesMut::with_capacity(whole.len() + extra);
        self.write_span(&mut out, whole);
        out.freeze()
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::HeaderName::{self, *};

    const NAMES: &[(&str, HeaderName)] = &[
        ("To", To), ("Via", Via), ("From", From), ("CSeq", CSeq), ("Date", Date), ("Path", Path),
        ("Route", Route), ("Allow", Allow), ("Accept", Accept), ("Call-ID", CallId),
        ("Contact", Contact), ("Expires", Expires), ("Require", Require), ("Supported", Supported),
        ("Unsupported", Unsupported), ("Min-Expires", MinExpires), ("Max-Forwards", MaxForwards),
        ("Content-Type", ContentType), ("Record-Route", RecordRoute),
        ("Authorization", Authorization), ("Proxy-Require", ProxyRequire),
        ("Content-Length", ContentLength), ("WWW-Authenticate", WwwAuthenticate),
        ("Proxy-Authenticate", ProxyAuthenticate), ("Proxy-Authorization", ProxyAuthorization),
    ];

    /// The obvious definition the fast path must agree with.
    fn reference(n: &[u8]) -> HeaderName {
        NAMES.iter().find(|(s, _)| s.as_bytes().eq_ignore_ascii_case(n)).map_or(Other, |&(_, h)| h)
    }

    #[test]
    fn header_names_match_the_reference_under_every_one_byte_change() {
        let tokens: Vec<u8> = (0u8..=255).filter(|&c| super::scan::is_token(c)).collect();
        for &(name, expect) in NAMES {
            for variant in [name.to_string(), name.to_ascii_lowercase(), name.to_ascii_uppercase()] {
                assert_eq!(HeaderName::from_bytes(variant.as_bytes()), expect, "{variant}");
                let mut b = variant.into_bytes();
                for i in 0..b.len() {
                    let orig = b[i];
                    for &t in &tokens {
                        b[i] = t;
                        assert_eq!(HeaderName::from_bytes(&b), reference(&b), "{:?}", String::from_utf8_lossy(&b));
                    }
                    b[i] = orig;
                }
            }
        }
        assert_eq!(HeaderName::from_bytes(b""), Other);
        assert_eq!(HeaderName::from_bytes(b"m"), Contact);
        assert_eq!(HeaderName::from_bytes(b"X-Via"), Other);
    }
}
