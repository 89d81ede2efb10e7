//! Byte-level grammar helpers shared by the message decoders (RFC 3261 §25.1).
//!
//! Everything here works on the received bytes and absolute offsets into them, so decoders can
//! hand back [`Span`]s instead of copies. Inside a header value a CR or LF can only be part of a
//! folded line (the splitter already cut the header lines), so linear whitespace here includes
//! them. Nothing in this module allocates.

use super::Span;

/// `token` characters of RFC 3261 §25.1 (alphanum and `-.!%*_+`'~`).
#[inline]
pub fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(b, b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~')
}

/// Linear white space inside a header value, folding included.
#[inline]
pub fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// A read position over `buf[pos..end]`.
#[derive(Clone, Copy)]
pub struct Cursor<'a> {
    pub buf: &'a [u8],
    pub pos: usize,
    pub end: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8], span: Span) -> Self {
        Cursor { buf, pos: span.start as usize, end: span.end as usize }
    }

    #[inline]
    pub fn at_end(&self) -> bool {
        self.pos >= self.end
    }

    #[inline]
    pub fn peek(&self) -> Option<u8> {
        if self.pos < self.end {
            Some(self.buf[self.pos])
        } else {
            None
        }
    }

    #[inline]
    pub fn skip_lws(&mut self) {
        while self.pos < self.end && is_lws(self.buf[self.pos]) {
            self.pos += 1;
        }
    }

    /// Consumes `b` (after optional LWS) if it is next; otherwise leaves the cursor as it was.
    pub fn eat(&mut self, b: u8) -> bool {
        let save = self.pos;
        self.skip_lws();
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            self.pos = save;
            false
        }
    }

    /// A run of token characters; `None` if there is none.
    pub fn token(&mut self) -> Option<Span> {
        let start = self.pos;
        while self.pos < self.end && is_token(self.buf[self.pos]) {
            self.pos += 1;
        }
        (self.pos > start).then(|| Span::new(start, self.pos))
    }

    /// A quoted string starting at the cursor (which must be at `"`), quotes included in the span.
    /// `None` when the closing quote is missing.
    pub fn quoted(&mut self) -> Option<Span> {
        let start = self.pos;
        if self.peek() != Some(b'"') {
            return None;
        }
        let mut i = self.pos + 1;
        while i < self.end {
            match self.buf[i] {
                b'\\' => i += 2,
                b'"' => {
                    self.pos = i + 1;
                    return Some(Span::new(start, self.pos));
                }
                _ => i += 1,
            }
        }
        None
    }

    /// Position of the next `b` at nesting level zero (outside quotes and `<>`), or `end`.
    pub fn find_top_level(&self, b: u8) -> usize {
        let mut i = self.pos;
        let mut in_quotes = false;
        let mut in_angle = false;
        while i < self.end {
            let c = self.buf[i];
            if in_quotes {
                if c == b'\\' {
                    i += 1;
                } else if c == b'"' {
                    in_quotes = false;
                }
            } else if c == b && !in_angle {
                return i;
            } else if c == b'"' {
                in_quotes = true;
            } else if c == b'<' {
                in_angle = true;
            } else if c == b'>' {
                in_angle = false;
            }
            i += 1;
        }
        self.end
    }
}

/// Trims LWS on both ends of a span.
pub fn trim(buf: &[u8], span: Span) -> Span {
    let (mut s, mut e) = (span.start as usize, span.end as usize);
    while s < e && is_lws(buf[s]) {
        s += 1;
    }
    while e > s && is_lws(buf[e - 1]) {
        e -= 1;
    }
    Span::new(s, e)
}

/// Splits a header value into its comma-separated elements (commas inside quotes or `<>` do not
/// count). Calls `f` with each trimmed element; an empty element is reported as an empty span so
/// that the caller can reject `,,`.
pub fn for_each_element<E>(
    buf: &[u8],
    value: Span,
    mut f: impl FnMut(Span) -> Result<(), E>,
) -> Result<(), E> {
    let mut c = Cursor::new(buf, value);
    loop {
        let stop = c.find_top_level(b',');
        f(trim(buf, Span::new(c.pos, stop)))?;
        if stop >= c.end {
            return Ok(());
        }
        c.pos = stop + 1;
    }
}

/// Parses an unsigned decimal number made only of digits, refusing overflow past `max`.
pub fn parse_decimal(digits: &[u8], max: u64) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        if n > max {
            return None;
        }
    }
    Some(n)
}
