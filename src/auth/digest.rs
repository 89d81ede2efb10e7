//! Digest computations and the parameter syntax of `Digest k=v, k="v"` (RFC 7616 §3.3–3.5).

use crate::config::{DigestUriCheck, Secret};
use md5::Md5;
use sha2::{Digest, Sha256};
use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    pub fn from_name(s: &str) -> Option<Algorithm> {
        if s.eq_ignore_ascii_case("MD5") {
            Some(Algorithm::Md5)
        } else if s.eq_ignore_ascii_case("SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }

    /// Lower-case hex of the hash of `parts` joined by ':'.
    pub fn hex(self, parts: &[&[u8]]) -> String {
        fn run<D: Digest>(mut d: D, parts: &[&[u8]]) -> String {
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    d.update(b":");
                }
                d.update(p);
            }
            hex(&d.finalize())
        }
        match self {
            Algorithm::Md5 => run(Md5::new(), parts),
            Algorithm::Sha256 => run(Sha256::new(), parts),
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// `k=v, k="v"` pairs after the scheme word. Quoted values are unescaped. Returns `None` on a
/// syntax error (unbalanced quotes, a pair without `=`).
pub fn parse_params(value: &[u8]) -> Option<(String, Vec<(String, String)>)> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let (scheme, mut rest) = s.split_once(|c: char| c.is_ascii_whitespace())?;
    let mut out = Vec::new();
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == ',');
        if rest.is_empty() {
            break;
        }
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_ascii_lowercase();
        if key.is_empty() || key.contains(|c: char| c.is_ascii_whitespace() || c == ',') {
            return None;
        }
        rest = rest[eq + 1..].trim_start();
        let val;
        if let Some(q) = rest.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => v.push(chars.next()?.1),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => v.push(c),
                }
            }
            rest = &q[end?..];
            val = v;
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            val = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        out.push((key, val));
    }
    Some((scheme.to_string(), out))
}

fn get<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Issues and checks stateless nonces: `<seconds as hex>.<keyed hash>`.
pub struct Nonces {
    key: [u8; 32],
    lifetime_secs: u64,
}

impl Nonces {
    pub fn new(key: [u8; 32], lifetime_secs: u64) -> Nonces {
        Nonces { key, lifetime_secs }
    }

    fn mac(&self, ts: u64, salt: u64, source: IpAddr) -> String {
        let src = source_key(source);
        let mut d = Sha256::new();
        d.update(self.key);
        d.update(ts.to_be_bytes());
        d.update(salt.to_be_bytes());
        d.update(src);
        hex(&d.finalize()[..12])
    }

    /// A new nonce: `salt` (random) makes two challenges in the same second differ, so a
    /// client's nonce-count starts afresh with each (RFC 7616 §3.4 replay checks).
    pub fn issue(&self, now_secs: u64, salt: u64, source: IpAddr) -> String {
        format!("{now_secs:x}.{salt:x}.{}", self.mac(now_secs, salt, source))
    }

    /// `Ok(())` fresh and ours, `Err(true)` ours but stale, `Err(false)` not ours.
    pub fn check(&self, nonce: &str, now_secs: u64, source: IpAddr) -> Result<(), bool> {
        let mut parts = nonce.splitn(3, '.');
        let (Some(ts), Some(salt), Some(mac)) = (parts.next(), parts.next(), parts.next()) else { return Err(false) };
        let ts = u64::from_str_radix(ts, 16).map_err(|_| false)?;
        let salt = u64::from_str_radix(salt, 16).map_err(|_| false)?;
        if !constant_time_eq(mac.as_bytes(), self.mac(ts, salt, source).as_bytes()) {
            return Err(false);
        }
        if ts > now_secs || now_secs - ts > self.lifetime_secs {
            return Err(true);
        }
        Ok(())
    }
}

/// The nonce-counts seen per nonce (RFC 7616 §3.4: a server may refuse a reused nc), so a
/// captured request with valid credentials cannot be replayed while its nonce is fresh. Each
/// nonce keeps its highest nc and a 64-wide window below it (clients with several requests in
/// flight may use counts out of order). Bounded: at most `MAX_TRACKED` nonces; the oldest
/// (by issue time) go first, and a nonce pushed out is answered stale next time, never
/// accepted twice.
#[derive(Default)]
pub struct NonceCounts {
    seen: std::collections::HashMap<String, (u64, u32, u64)>,
}

impl NonceCounts {
    pub const MAX_TRACKED: usize = 200_000;

    /// Records `nc` for `nonce` (issued at `issued` seconds); false when it was used before or
    /// lies below the window.
    pub fn accept(&mut self, nonce: &str, issued: u64, nc: u32) -> bool {
        if !self.seen.contains_key(nonce) && self.seen.len() >= Self::MAX_TRACKED {
            // Drop the oldest eighth: amortised, and never a nonce newer than one kept.
            let mut ages: Vec<u64> = self.seen.values().map(|(t, _, _)| *t).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 8];
            self.seen.retain(|_, (t, _, _)| *t > cut);
        }
        let (_, max, window) = self.seen.entry(nonce.to_string()).or_insert((issued, 0, 0));
        if nc > *max {
            let shift = nc - *max;
            *window = if shift >= 64 { 0 } else { *window << shift };
            *window |= 1;
            *max = nc;
            return true;
        }
        let back = *max - nc;
        if back >= 64 || *window & (1 << back) != 0 {
            return false;
        }
        *window |= 1 << back;
        true
    }

    /// Forgets nonces issued before `oldest` (they are stale anyway).
    pub fn prune(&mut self, oldest: u64) {
        self.seen.retain(|_, (t, _, _)| *t >= oldest);
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// The issue time (seconds) a nonce of ours carries.
pub fn nonce_time(nonce: &str) -> Option<u64> {
    u64::from_str_radix(nonce.split_once('.')?.0, 16).ok()
}

/// What a nonce is bound to: the caller's network ([`crate::transport::source_key`]: an IPv4
/// address or an IPv6 /64, inside which privacy addresses rotate), as 16 bytes.
fn source_key(ip: IpAddr) -> [u8; 16] {
    match crate::transport::source_key(ip) {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `Proxy-Authenticate` (or `WWW-Authenticate`) values for a new challenge, one per
/// algorithm in the order given (RFC 8760 §2.4: most preferred first; the client uses the first
/// it supports).
pub fn challenge_headers(realm: &str, nonce: &str, stale: bool, algorithms: &[Algorithm]) -> Vec<String> {
    algorithms
        .iter()
        .map(|a| {
            let stale = if stale { ", stale=true" } else { "" };
            format!("Digest realm=\"{realm}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"{stale}", a.name())
        })
        .collect()
}

/// The outcome of checking one Authorization/Proxy-Authorization value.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Credentials are right: the authenticated username, the nonce and its nonce-count (with
    /// qop), for the caller's replay check ([`NonceCounts`]).
    Ok { user: String, nonce: String, nc: Option<u32> },
    /// A credentials value we cannot read or that lacks a field: 400, not a wrong password.
    Malformed(&'static str),
    /// Right credentials with a nonce that is not (or no longer) good here: challenge again
    /// with stale=true.
    Stale,
    /// Not for our realm: ignore this header.
    OtherRealm,
    /// Wrong: unknown user, bad response, foreign nonce, uri mismatch... (reason for logs).
    Denied(&'static str),
}

/// Looks up a user's secret by username.
pub trait Credentials {
    fn secret(&self, username: &str) -> Option<&Secret>;
}

/// Checks a `Digest ...` credentials value for `method` against the request.
#[allow(clippy::too_many_arguments)]
pub fn verify(
    value: &[u8],
    method: &[u8],
    request_uri: &[u8],
    realm: &str,
    uri_check: DigestUriCheck,
    nonces: &Nonces,
    now_secs: u64,
    source: IpAddr,
    users: &dyn Credentials,
) -> Verdict {
    let Some((scheme, p)) = parse_params(value) else { return Verdict::Malformed("credentials are not auth-param syntax") };
    if !scheme.eq_ignore_ascii_case("Digest") {
        return Verdict::Denied("not Digest");
    }
    if get(&p, "realm") != Some(realm) {
        return Verdict::OtherRealm;
    }
    let (Some(username), Some(nonce), Some(uri), Some(response)) = (get(&p, "username"), get(&p, "nonce"), get(&p, "uri"), get(&p, "response")) else {
        return Verdict::Malformed("credentials lack username, nonce, uri or response");
    };
    let alg = match get(&p, "algorithm") {
        None => Algorithm::Md5,
        Some(a) => match Algorithm::from_name(a) {
            Some(a) => a,
            None => return Verdict::Denied("unsupported algorithm"),
        },
    };
    if uri_check == DigestUriCheck::Strict && !same_uri(uri.as_bytes(), request_uri) {
        return Verdict::Denied("digest uri does not match the Request-URI");
    }
    let Some(secret) = users.secret(username) else { return Verdict::Denied("unknown user") };
    let ha1 = match (secret, alg) {
        (Secret::Password(pw), a) => a.hex(&[username.as_bytes(), realm.as_bytes(), pw.as_bytes()]),
        (Secret::Ha1 { md5: Some(h), .. }, Algorithm::Md5) | (Secret::Ha1 { sha256: Some(h), .. }, Algorithm::Sha256) => h.clone(),
        (Secret::Ha1 { .. }, _) => return Verdict::Denied("no HA1 of this algorithm is configured for this user"),
    };
    let ha2 = alg.hex(&[method, uri.as_bytes()]);
    let mut count = None;
    let expected = match get(&p, "qop") {
        None => alg.hex(&[ha1.as_bytes(), nonce.as_bytes(), ha2.as_bytes()]),
        Some(q) if q.eq_ignore_ascii_case("auth") => {
            let (Some(nc), Some(cnonce)) = (get(&p, "nc"), get(&p, "cnonce")) else {
                return Verdict::Malformed("qop without nc or cnonce");
            };
            match u32::from_str_radix(nc, 16) {
                Ok(n) if nc.len() == 8 => count = Some(n),
                _ => return Verdict::Malformed("nc is not 8 hex digits"),
            }
            alg.hex(&[ha1.as_bytes(), nonce.as_bytes(), nc.as_bytes(), cnonce.as_bytes(), q.as_bytes(), ha2.as_bytes()])
        }
        Some(_) => return Verdict::Denied("unsupported qop"),
    };
    if !constant_time_eq(expected.as_bytes(), response.to_ascii_lowercase().as_bytes()) {
        return Verdict::Denied("wrong response");
    }
    // The response is right, so the password is: a nonce that is old, from before a restart
    // (new key) or from another network of the phone is answered with a fresh challenge
    // (stale=true, RFC 7616 §3.3), never with 403.
    match nonces.check(nonce, now_secs, source) {
        Ok(()) => Verdict::Ok { user: username.to_string(), nonce: nonce.to_string(), nc: count },
        Err(_) => Verdict::Stale,
    }
}

/// Two SIP URIs name the same scheme, user, host and port (parameters are not compared: clients
/// differ in which they copy into the digest).
fn same_uri(a: &[u8], b: &[u8]) -> bool {
    use crate::message::{uri::parse_uri, Span};
    let (Ok(x), Ok(y)) = (parse_uri(a, Span::new(0, a.len())), parse_uri(b, Span::new(0, b.len()))) else {
        return a == b;
    };
    if !x.is_sip() || !y.is_sip() {
        // tel: and other schemes have no user/host to compare: the whole URI must match.
        return a == b;
    }
    let user = |u: &crate::message::Uri, buf: &[u8]| u.user.map(|s| s.of(buf).to_vec());
    let host = |u: &crate::message::Uri, buf: &[u8]| u.host_span.of(buf).to_ascii_lowercase();
    x.scheme == y.scheme && user(&x, a) == user(&y, b) && host(&x, a) == host(&y, b) && x.port == y.port
}

/// A parsed 401/407 challenge from a carrier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Algorithm,
    pub qop_auth: bool,
}

impl Challenge {
    /// Parses a `WWW-Authenticate`/`Proxy-Authenticate` value; `None` for anything we cannot
    /// answer (another scheme, an unknown algorithm, no realm or nonce).
    pub fn parse(value: &[u8]) -> Option<Challenge> {
        let (scheme, p) = parse_params(value)?;
        if !scheme.eq_ignore_ascii_case("Digest") {
            return None;
        }
        let algorithm = match get(&p, "algorithm") {
            None => Algorithm::Md5,
            Some(a) => Algorithm::from_name(a)?,
        };
        let qop_auth = match get(&p, "qop") {
            None => false,
            Some(q) => {
                let auth = q.split(',').any(|x| x.trim().eq_ignore_ascii_case("auth"));
                if !auth {
                    return None;
                }
                true
            }
        };
        Some(Challenge {
            realm: get(&p, "realm")?.to_string(),
            nonce: get(&p, "nonce")?.to_string(),
            opaque: get(&p, "opaque").map(str::to_string),
            algorithm,
            qop_auth,
        })
    }
}

/// The credentials value answering `ch` for a request of `method` to `uri`.
pub fn answer_challenge(ch: &Challenge, username: &str, password: &str, method: &[u8], uri: &str, cnonce: &str) -> String {
    let a = ch.algorithm;
    let ha1 = a.hex(&[username.as_bytes(), ch.realm.as_bytes(), password.as_bytes()]);
    let ha2 = a.hex(&[method, uri.as_bytes()]);
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut v = format!(
        "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", algorithm={}",
        esc(username),
        esc(&ch.realm),
        esc(&ch.nonce),
        esc(uri),
        a.name()
    );
    if ch.qop_auth {
        let nc = "00000001";
        let r = a.hex(&[ha1.as_bytes(), ch.nonce.as_bytes(), nc.as_bytes(), cnonce.as_bytes(), b"auth", ha2.as_bytes()]);
        v.push_str(&format!(", response=\"{r}\", qop=auth, nc={nc}, cnonce=\"{cnonce}\""));
    } else {
        let r = a.hex(&[ha1.as_bytes(), ch.nonce.as_bytes(), ha2.as_bytes()]);
        v.push_str(&format!(", response=\"{r}\""));
    }
    if let Some(o) = &ch.opaque {
        v.push_str(&format!(", opaque=\"{}\"", esc(o)));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    struct One(Secret);
    impl Credentials for One {
        fn secret(&self, u: &str) -> Option<&Secret> {
            (u == "alice").then_some(&self.0)
        }
    }

    #[test]
    fn rfc_2617_example_response() {
        // RFC 2617 §3.5 (with qop=auth): Mufasa / "Circle Of Life".
        let ch = Challenge {
            realm: "testrealm@host.com".into(),
            nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093".into(),
            opaque: Some("5ccc069c403ebaf9f0171e9517f40e41".into()),
            algorithm: Algorithm::Md5,
            qop_auth: true,
        };
        let v = answer_challenge(&ch, "Mufasa", "Circle Of Life", b"GET", "/dir/index.html", "0a4f113b");
        assert!(v.contains("response=\"6629fae49393a05397450978507c4ef1\""), "{v}");
    }

    #[test]
    fn rfc_7616_sha256_example() {
        // RFC 7616 §3.9.1.
        let ch = Challenge {
            realm: "http-auth@example.org".into(),
            nonce: "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v".into(),
            opaque: None,
            algorithm: Algorithm::Sha256,
            qop_auth: true,
        };
        let v = answer_challenge(&ch, "Mufasa", "Circle of Life", b"GET", "/dir/index.html", "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ");
        assert!(v.contains("753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"), "{v}");
    }

    #[test]
    fn verify_accepts_right_and_refuses_wrong_credentials() {
        let nonces = Nonces::new([7; 32], 300);
        let src: IpAddr = "2001:db8:1:2::10".parse().unwrap();
        let nonce = nonces.issue(100, 42, src);
        let users = One(Secret::Password("secret".into()));
        let ch = Challenge { realm: "sixgate".into(), nonce: nonce.clone(), opaque: None, algorithm: Algorithm::Md5, qop_auth: true };
        let ruri = b"sip:+44123@[::1]:5060";
        let good = answer_challenge(&ch, "alice", "secret", b"INVITE", "sip:+44123@[::1]:5060", "abc");
        let check = |v: &str, now: u64, from: IpAddr, uri_check| {
            verify(v.as_bytes(), b"INVITE", ruri, "sixgate", uri_check, &nonces, now, from, &users)
        };
        let ok = Verdict::Ok { user: "alice".into(), nonce: nonce.clone(), nc: Some(1) };
        assert_eq!(check(&good, 150, src, DigestUriCheck::Strict), ok);
        // Another address in the same /64 (privacy address rotation): fine.
        assert_eq!(check(&good, 150, "2001:db8:1:2::99".parse().unwrap(), DigestUriCheck::Strict), ok);
        assert_eq!(check(&good, 150, "2001:db8:9::1".parse().unwrap(), DigestUriCheck::Strict), Verdict::Stale, "another network: challenged again");
        assert_eq!(check(&good, 401, src, DigestUriCheck::Strict), Verdict::Stale);
        let wrong = answer_challenge(&ch, "alice", "guess", b"INVITE", "sip:+44123@[::1]:5060", "abc");
        assert_eq!(check(&wrong, 150, src, DigestUriCheck::Strict), Verdict::Denied("wrong response"));
        // sipp 3.6's uri: strict refuses, lenient accepts (the hash still covers it).
        let sipp = answer_challenge(&ch, "alice", "secret", b"INVITE", "sip:::1:5060", "abc");
        assert_eq!(check(&sipp, 150, src, DigestUriCheck::Strict), Verdict::Denied("digest uri does not match the Request-URI"));
        assert_eq!(check(&sipp, 150, src, DigestUriCheck::Lenient), ok);
        let other = answer_challenge(&Challenge { realm: "other".into(), ..ch.clone() }, "alice", "secret", b"INVITE", "x", "c");
        assert_eq!(check(&other, 150, src, DigestUriCheck::Strict), Verdict::OtherRealm);
        // SHA-256 and an MD5-only HA1.
        let sha = answer_challenge(&Challenge { algorithm: Algorithm::Sha256, ..ch.clone() }, "alice", "secret", b"INVITE", "sip:+44123@[::1]:5060", "q");
        assert_eq!(check(&sha, 150, src, DigestUriCheck::Strict), ok);
        let ha1 = Algorithm::Md5.hex(&[b"alice", b"sixgate", b"secret"]);
        let users = One(Secret::Ha1 { md5: Some(ha1), sha256: None });
        let v = |s: &str| verify(s.as_bytes(), b"INVITE", ruri, "sixgate", DigestUriCheck::Strict, &nonces, 150, src, &users);
        assert_eq!(v(&good), ok);
        assert!(matches!(v(&sha), Verdict::Denied(_)));
        // A missing field is malformed (400), not a wrong password.
        let cut = good.replace("response=", "resp=");
        assert!(matches!(v(&cut), Verdict::Malformed(_)));
        // An SHA-256-only HA1 answers SHA-256 and not MD5.
        let h = Algorithm::Sha256.hex(&[b"alice", b"sixgate", b"secret"]);
        let users = One(Secret::Ha1 { md5: None, sha256: Some(h) });
        let v = |s: &str| verify(s.as_bytes(), b"INVITE", ruri, "sixgate", DigestUriCheck::Strict, &nonces, 150, src, &users);
        assert!(matches!(v(&sha), Verdict::Ok { .. }));
        assert!(matches!(v(&good), Verdict::Denied(_)));
    }

    #[test]
    fn nonce_counts_refuse_replays_within_a_window() {
        let mut c = NonceCounts::default();
        assert!(c.accept("n1", 5, 1));
        assert!(!c.accept("n1", 5, 1), "same nc twice");
        assert!(c.accept("n1", 5, 3));
        assert!(c.accept("n1", 5, 2), "out of order inside the window");
        assert!(!c.accept("n1", 5, 2));
        assert!(c.accept("n1", 5, 100));
        assert!(!c.accept("n1", 5, 30), "below the window");
        assert!(c.accept("n2", 6, 1), "per nonce");
        c.prune(6);
        assert_eq!(c.len(), 1);
        assert_eq!(nonce_time("1f.2a.abc"), Some(31));
    }

    #[test]
    fn tel_uris_are_compared_whole() {
        assert!(same_uri(b"tel:+441234", b"tel:+441234"));
        assert!(!same_uri(b"tel:+441234", b"tel:+19005550000"));
        assert!(same_uri(b"sip:+44@[::1]:5060", b"sip:+44@[::1]:5060;user=phone"));
    }

    #[test]
    fn params_parse_quotes_and_garbage() {
        let (s, p) = parse_params(br#"Digest realm="a\"b", nonce=xyz ,qop="auth,auth-int""#).unwrap();
        assert_eq!(s, "Digest");
        assert_eq!(p, vec![("realm".into(), "a\"b".into()), ("nonce".into(), "xyz".into()), ("qop".into(), "auth,auth-int".into())]);
        assert!(parse_params(br#"Digest realm="open"#).is_none());
        assert!(parse_params(b"Digest novalue").is_none());
        assert!(parse_params(b"").is_none());
    }
}
