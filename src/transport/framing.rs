//! Stream framing for SIP over TCP (RFC 3261 §18.3): messages are delimited by the end of the
//! headers plus Content-Length; CRLFCRLF between messages is a keepalive ping (RFC 5626 §3.5.1).
//!
//! Sans-IO: push received bytes, pull [`Frame`]s. Bounded: a header block or a whole message
//! larger than the limit is an error, after which the connection must be closed (the stream can
//! no longer be trusted to be in step). Must never: buffer without limit or scan a byte twice
//! while waiting for the end of the headers.

use super::PING;
use bytes::{Bytes, BytesMut};

#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A CRLFCRLF keepalive: answer with a single CRLF.
    Ping,
    /// One complete message (start line through body).
    Message(Bytes),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message larger than {0} bytes")]
    TooLarge(usize),
    #[error("no Content-Length in a stream message")]
    MissingContentLength,
    #[error("bad Content-Length")]
    BadContentLength,
}

pub struct StreamFramer {
    buf: BytesMut,
    max_message: usize,
    /// How far the search for the end of the headers has already looked.
    scanned: usize,
    /// Length of the message whose headers are complete and whose body is still arriving.
    awaiting: Option<usize>,
}

impl StreamFramer {
    pub fn new(max_message: usize) -> Self {
        StreamFramer { buf: BytesMut::with_capacity(4096), max_message, scanned: 0, awaiting: None }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered but not yet framed.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The header block of a message that failed framing, for answering it with a 400.
    pub fn head(&self) -> &[u8] {
        &self.buf[..self.buf.len().min(self.max_message)]
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(total) = self.awaiting {
            return Ok(self.take(total));
        }
        // Keepalives and stray line ends between messages.
        loop {
            if self.buf.starts_with(PING) {
                let _ = self.buf.split_to(PING.len());
                self.scanned = 0;
                return Ok(Some(Frame::Ping));
            }
            if self.buf.starts_with(b"\r\n") && (self.buf.len() >= 4 || (self.buf.len() == 3 && self.buf[2] != b'\r')) {
                let _ = self.buf.split_to(2); // a pong or a stray CRLF: ignore
                self.scanned = 0;
                continue;
            }
            if self.buf.first() == Some(&b'\r') || self.buf.first() == Some(&b'\n') {
                if self.buf.len() >= 2 && !self.buf.starts_with(b"\r\n") {
                    let _ = self.buf.split_to(1); // a lone CR or LF
                    self.scanned = 0;
                    continue;
                }
                return Ok(None);
            }
            break;
        }
        let from = self.scanned.saturating_sub(3);
        let Some(rel) = memchr::memmem::find(&self.buf[from..], b"\r\n\r\n") else {
            self.scanned = self.buf.len();
            if self.buf.len() > self.max_message {
                return Err(FrameError::TooLarge(self.max_message));
            }
            return Ok(None);
        };
        let head_end = from + rel + 4;
        let cl = content_length(&self.buf[..head_end])?;
        let total = head_end.checked_add(cl).ok_or(FrameError::TooLarge(self.max_message))?;
        if total > self.max_message {
            return Err(FrameError::TooLarge(self.max_message));
        }
        Ok(self.take(total))
    }

    /// The message of `total` bytes once it is all there; until then remembers its length so the
    /// headers are not searched again.
    fn take(&mut self, total: usize) -> Option<Frame> {
        if self.buf.len() < total {
            self.awaiting = Some(total);
            return None;
        }
        self.awaiting = None;
        self.scanned = 0;
        Some(Frame::Message(self.buf.split_to(total).freeze()))
    }
}

/// The Content-Length of a header block (long or compact name); exactly one is required.
fn content_length(head: &[u8]) -> Result<usize, FrameError> {
    let mut found = None;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(b"Content-Length") || name.eq_ignore_ascii_case(b"l") {
            if found.is_some() {
                return Err(FrameError::BadContentLength);
            }
            let v = line[colon + 1..].trim_ascii();
            let n = crate::message::scan::parse_decimal(v, 1 << 31).ok_or(FrameError::BadContentLength)?;
            found = Some(n as usize);
        }
    }
    found.ok_or(FrameError::MissingContentLength)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nl: 5\r\n\r\nhello";

    #[test]
    fn frames_split_anywhere() {
        let mut stream = Vec::new();
        stream.extend_from_slice(PING);
        stream.extend_from_slice(MSG);
        stream.extend_from_slice(b"\r\n");
        stream.extend_from_slice(MSG);
        for cut in 0..stream.len() {
            let mut f = StreamFramer::new(1000);
            let mut got = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                f.push(part);
                while let Some(fr) = f.next_frame().unwrap() {
                    got.push(fr);
                }
            }
            assert_eq!(got.len(), 3, "cut at {cut}: {got:?}");
            assert_eq!(got[0], Frame::Ping);
            assert_eq!(got[1], Frame::Message(Bytes::from_static(MSG)));
            assert_eq!(got[2], Frame::Message(Bytes::from_static(MSG)));
        }
    }

    #[test]
    fn limits_and_errors() {
        let mut f = StreamFramer::new(64);
        f.push(&[b'A'; 100]);
        assert_eq!(f.next_frame(), Err(FrameError::TooLarge(64)));
        let mut f = StreamFramer::new(1000);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\n");
        assert_eq!(f.next_frame(), Err(FrameError::MissingContentLength));
        let mut f = StreamFramer::new(100);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 5000\r\n\r\n");
        assert_eq!(f.next_frame(), Err(FrameError::TooLarge(100)));
    }
}
