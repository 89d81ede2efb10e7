//! Byte-level grammar helpers shared by the message decoders (RFC 3261 §25.1).
//!
//! Everything here works on the received bytes and absolute offsets into them, so decoders can
//! hand back [`Span`]s instead of copies. Inside a header value a CR or LF can only be part of a
//! folded line (the splitter already cut the header lines), so linear whitespace here includes
//! them. Nothing in this module allocates.

use super::Span;

/// Character classes, one bit each, looked up in [`CLASS`] so every per-byte test is one load.
pub const TOKEN: u8 = 1;
pub const LWS: u8 = 2;
/// Hostname characters (alphanum, `-`, `.`, `_`).
pub const HOST: u8 = 4;
/// Characters that can never appear inside a SIP URI as written in a message (controls,
/// space, DEL, `<`, `>`, `"`) and every octet above 0x7f.
pub const NOT_URI: u8 = 8;
pub const DIGIT: u8 = 16;
/// URI scheme characters (alphanum, `+`, `-`, `.`).
pub const SCHEME: u8 = 32;

const fn build_classes() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        let alnum = c.is_ascii_alphanumeric();
        let mut v = 0;
        if alnum || matches!(c, b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~') {
            v |= TOKEN;
        }
        if matches!(c, b' ' | b'\t' | b'\r' | b'\n') {
            v |= LWS;
        }
        if alnum || matches!(c, b'-' | b'.' | b'_') {
            v |= HOST;
        }
        if c <= b' ' || c >= 0x7f || matches!(c, b'<' | b'>' | b'"') {
            v |= NOT_URI;
        }
        if c.is_ascii_digit() {
            v |= DIGIT;
        }
        if alnum || matches!(c, b'+' | b'-' | b'.') {
            v |= SCHEME;
        }
        t[i] = v;
        i += 1;
    }
    t
}

/// The class bits of every octet.
pub static CLASS: [u8; 256] = build_classes();

/// Whether `b` has any of the class bits in `mask`.
#[inline(always)]
pub fn is(b: u8, mask: u8) -> bool {
    CLASS[b as usize] & mask != 0
}

/// Whether every octet of `s` has one of the class bits in `mask`.
#[inline]
pub fn all(s: &[u8], mask: u8) -> bool {
    s.iter().all(|&b| is(b, mask))
}

/// Whether `s` is free of [`NOT_URI`] octets: visible ASCII but `<`, `>` and `"`. Written as a
/// branch-free fold over the whole slice so that the compiler vectorizes it.
#[inline]
pub fn all_uri_chars(s: &[u8]) -> bool {
    s.iter().fold(true, |ok, &c| ok & (c.wrapping_sub(0x21) < 0x5e) & (c != b'<') & (c != b'>') & (c != b'"'))
}

/// `token` characters of RFC 3261 §25.1 (alphanum and `-.!%*_+`'~`).
#[inline(always)]
pub fn is_token(b: u8) -> bool {
    is(b, TOKEN)
}

/// Linear white space inside a header value, folding included.
#[inline(always)]
pub fn is_lws(b: u8) -> bool {
    is(b, LWS)
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

    /// The bytes from the cursor to its end.
    #[inline(always)]
    fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos.min(self.end)..self.end]
    }

    /// Advances over octets of the classes in `mask`; returns how many.
    #[inline]
    pub fn skip_class(&mut self, mask: u8) -> usize {
        let rest = self.rest();
        let n = rest.iter().position(|&b| !is(b, mask)).unwrap_or(rest.len());
        self.pos += n;
        n
    }

    #[inline]
    pub fn skip_lws(&mut self) {
        self.skip_class(LWS);
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
        (self.skip_class(TOKEN) > 0).then(|| Span::new(start, self.pos))
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
    /// Jumps between the structural characters with memchr instead of walking every octet.
    pub fn find_top_level(&self, b: u8) -> usize {
        let (buf, end) = (self.buf, self.end);
        let mut i = self.pos;
        while i < end {
            let Some(off) = memchr::memchr3(b, b'"', b'<', &buf[i..end]) else { return end };
            i += off;
            match buf[i] {
                b'"' => {
                    // Skip the quoted string, honouring backslash escapes.
                    i += 1;
                    loop {
                        let Some(off) = memchr::memchr2(b'"', b'\\', &buf[i..end]) else { return end };
                        i += off;
                        if buf[i] == b'"' {
                            break;
                        }
                        i += 2;
                        if i >= end {
                            return end;
                        }
                    }
                    i += 1;
                }
                b'<' if b != b'<' => match memchr::memchr(b'>', &buf[i..end]) {
                    Some(off) => i += off + 1,
                    None => return end,
                },
                _ => return i,
            }
        }
        end
    }
}

/// Trims LWS on both ends of a span.
pub fn trim(buf: &[u8], span: Span) -> Span {
    let v = span.of(buf);
    let Some(first) = v.iter().position(|&b| !is_lws(b)) else {
        return Span::new(span.end as usize, span.end as usize);
    };
    let last = v.iter().rposition(|&b| !is_lws(b)).unwrap_or(first);
    let s = span.start as usize;
    Span::new(s + first, s + last + 1)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectorized_uri_check_matches_the_class_table() {
        for c in 0..=255u8 {
            assert_eq!(all_uri_chars(&[b'a', c, b'b']), !is(c, NOT_URI), "octet {c:#x}");
        }
    }
}
