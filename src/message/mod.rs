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
    /// Recognises long and compact forms (RFC 3261 §7.3.3), case-insensitively.
    pub fn from_bytes(n: &[u8]) -> HeaderName {
        use HeaderName::*;
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
        let eq = |s: &str| n.eq_ignore_ascii_case(s.as_bytes());
        match n.len() {
            2 if eq("To") => To,
            3 if eq("Via") => Via,
            4 if eq("From") => From,
            4 if eq("CSeq") => CSeq,
            4 if eq("Date") => Date,
            4 if eq("Path") => Path,
            5 if eq("Route") => Route,
            5 if eq("Allow") => Allow,
            6 if eq("Accept") => Accept,
            7 if eq("Call-ID") => CallId,
            7 if eq("Contact") => Contact,
            7 if eq("Expires") => Expires,
            7 if eq("Require") => Require,
            9 if eq("Supported") => Supported,
            11 if eq("Unsupported") => Unsupported,
            11 if eq("Min-Expires") => MinExpires,
            12 if eq("Max-Forwards") => MaxForwards,
            12 if eq("Content-Type") => ContentType,
            12 if eq("Record-Route") => RecordRoute,
            13 if eq("Authorization") => Authorization,
            13 if eq("Proxy-Require") => ProxyRequire,
            14 if eq("Content-Length") => ContentLength,
            16 if eq("WWW-Authenticate") => WwwAuthenticate,
            18 if eq("Proxy-Authenticate") => ProxyAuthenticate,
            19 if eq("Proxy-Authorization") => ProxyAuthorization,
            _ => Other,
        }
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
