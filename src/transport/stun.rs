//! STUN Binding on the SIP UDP port (RFC 5389 §6, §7.3, §15.2): phones behind NAT learn their
//! public address from the same socket they register from. Sans-IO: bytes and the source address
//! in, the response bytes out.
//!
//! Answers Binding requests with XOR-MAPPED-ADDRESS (IPv4 and IPv6), checks a request's
//! FINGERPRINT (a mismatch is dropped) and adds one to the answer when the request carried one,
//! and answers 420 with UNKNOWN-ATTRIBUTES for comprehension-required attributes it does not
//! know. Must never: answer anything but a well-formed Binding request.

use std::net::{IpAddr, SocketAddr};

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
const HEADER_LEN: usize = 20;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const BINDING_ERROR: u16 = 0x0111;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_ERROR_CODE: u16 = 0x0009;
const ATTR_UNKNOWN_ATTRIBUTES: u16 = 0x000A;
const ATTR_FINGERPRINT: u16 = 0x8028;
const ATTR_SOFTWARE: u16 = 0x8022;
const FINGERPRINT_XOR: u32 = 0x5354_554E;
/// Comprehension-required attributes that a Binding request may carry and we can ignore safely
/// (USERNAME and MESSAGE-INTEGRITY are for authenticated STUN, which SIP keepalives don't use;
/// PRIORITY/USE-CANDIDATE/ICE-CONTROLLED/ICE-CONTROLLING are ICE's, RFC 8445).
const IGNORABLE_REQUIRED: [u16; 5] = [0x0006, 0x0008, 0x0024, 0x0025, 0x0000];

/// Whether a datagram looks like STUN (RFC 5389 §6: top two bits zero, magic cookie), as opposed
/// to SIP, which starts with a letter.
pub fn is_stun(d: &[u8]) -> bool {
    d.len() >= HEADER_LEN && d[0] & 0xC0 == 0 && u32::from_be_bytes([d[4], d[5], d[6], d[7]]) == MAGIC_COOKIE
}

#[derive(Debug, PartialEq, Eq)]
pub enum StunError {
    NotBindingRequest,
    Malformed(&'static str),
}

/// The answer to a Binding request from `src`.
pub fn answer(req: &[u8], src: SocketAddr) -> Result<Vec<u8>, StunError> {
    if !is_stun(req) {
        return Err(StunError::Malformed("not STUN"));
    }
    let msg_type = u16::from_be_bytes([req[0], req[1]]);
    let len = u16::from_be_bytes([req[2], req[3]]) as usize;
    if !len.is_multiple_of(4) || HEADER_LEN + len != req.len() {
        return Err(StunError::Malformed("length does not match the datagram"));
    }
    if msg_type != BINDING_REQUEST {
        return Err(StunError::NotBindingRequest);
    }
    let txid = &req[8..20];
    let mut fingerprint = false;
    let mut unknown: Vec<u16> = Vec::new();
    let mut pos = HEADER_LEN;
    while pos + 4 <= req.len() {
        let ty = u16::from_be_bytes([req[pos], req[pos + 1]]);
        let alen = u16::from_be_bytes([req[pos + 2], req[pos + 3]]) as usize;
        let padded = (alen + 3) & !3;
        if pos + 4 + alen > req.len() {
            return Err(StunError::Malformed("attribute runs past the message"));
        }
        if fingerprint {
            return Err(StunError::Malformed("attribute after FINGERPRINT"));
        }
        if ty == ATTR_FINGERPRINT {
            // RFC 5389 §15.5: CRC-32 of everything before the attribute, XOR 0x5354554E, with
            // the header length already counting the FINGERPRINT. A mismatch is not STUN for us.
            let want = crc32(&req[..pos]) ^ FINGERPRINT_XOR;
            if alen != 4 || req[pos + 4..pos + 8] != want.to_be_bytes() {
                return Err(StunError::Malformed("FINGERPRINT does not match"));
            }
            fingerprint = true;
        } else if ty < 0x8000 && !IGNORABLE_REQUIRED.contains(&ty) && unknown.len() < 16 {
            unknown.push(ty);
        }
        pos += 4 + padded;
    }

    let mut out = Vec::with_capacity(64);
    let (ty, _) = if unknown.is_empty() { (BINDING_SUCCESS, ()) } else { (BINDING_ERROR, ()) };
    out.extend_from_slice(&ty.to_be_bytes());
    out.extend_from_slice(&[0, 0]); // length, filled below
    out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(txid);
    if unknown.is_empty() {
        put_xor_mapped(&mut out, src, txid);
    } else {
        // ERROR-CODE 420 Unknown Attribute, then the list (RFC 5389 §15.6, §15.9).
        let reason = b"Unknown Attribute";
        put_attr(&mut out, ATTR_ERROR_CODE, &[&[0, 0, 4, 20], reason]);
        let list: Vec<u8> = unknown.iter().flat_map(|t| t.to_be_bytes()).collect();
        put_attr(&mut out, ATTR_UNKNOWN_ATTRIBUTES, &[&list]);
    }
    put_attr(&mut out, ATTR_SOFTWARE, &[b"sixgate"]);
    if fingerprint {
        let final_len = (out.len() - HEADER_LEN + 8) as u16;
        out[2..4].copy_from_slice(&final_len.to_be_bytes());
        let crc = crc32(&out) ^ FINGERPRINT_XOR;
        put_attr(&mut out, ATTR_FINGERPRINT, &[&crc.to_be_bytes()]);
    }
    let len = (out.len() - HEADER_LEN) as u16;
    out[2..4].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

fn put_attr(out: &mut Vec<u8>, ty: u16, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.extend_from_slice(&ty.to_be_bytes());
    out.extend_from_slice(&(len as u16).to_be_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
    out.resize(out.len() + ((4 - len % 4) % 4), 0);
}

fn put_xor_mapped(out: &mut Vec<u8>, src: SocketAddr, txid: &[u8]) {
    let xport = src.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let cookie = MAGIC_COOKIE.to_be_bytes();
    match src.ip() {
        IpAddr::V4(a) => {
            let o = a.octets();
            let x: Vec<u8> = o.iter().zip(cookie.iter()).map(|(a, b)| a ^ b).collect();
            put_attr(out, ATTR_XOR_MAPPED_ADDRESS, &[&[0, 0x01], &xport.to_be_bytes(), &x]);
        }
        IpAddr::V6(a) => {
            let key: Vec<u8> = cookie.iter().chain(txid.iter()).copied().collect();
            let x: Vec<u8> = a.octets().iter().zip(key.iter()).map(|(a, b)| a ^ b).collect();
            put_attr(out, ATTR_XOR_MAPPED_ADDRESS, &[&[0, 0x02], &xport.to_be_bytes(), &x]);
        }
    }
}

/// CRC-32 (ISO 3309 / ITU-T V.42, as FINGERPRINT requires), bitwise: STUN rates don't need a table.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Decodes XOR-MAPPED-ADDRESS from a Binding success response (used by tests and diagnostics).
pub fn decode_xor_mapped(resp: &[u8]) -> Option<SocketAddr> {
    if resp.len() < HEADER_LEN || u16::from_be_bytes([resp[0], resp[1]]) != BINDING_SUCCESS {
        return None;
    }
    let txid = &resp[8..20];
    let mut pos = HEADER_LEN;
    while pos + 4 <= resp.len() {
        let ty = u16::from_be_bytes([resp[pos], resp[pos + 1]]);
        let alen = u16::from_be_bytes([resp[pos + 2], resp[pos + 3]]) as usize;
        let v = resp.get(pos + 4..pos + 4 + alen)?;
        if ty == ATTR_XOR_MAPPED_ADDRESS && alen >= 8 {
            let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
            let cookie = MAGIC_COOKIE.to_be_bytes();
            return match v[1] {
                0x01 => {
                    let o: Vec<u8> = v[4..8].iter().zip(cookie.iter()).map(|(a, b)| a ^ b).collect();
                    Some(SocketAddr::new(IpAddr::from([o[0], o[1], o[2], o[3]]), port))
                }
                0x02 if alen >= 20 => {
                    let key: Vec<u8> = cookie.iter().chain(txid.iter()).copied().collect();
                    let mut o = [0u8; 16];
                    for i in 0..16 {
                        o[i] = v[4 + i] ^ key[i];
                    }
                    Some(SocketAddr::new(IpAddr::from(o), port))
                }
                _ => None,
            };
        }
        pos += 4 + ((alen + 3) & !3);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(txid: [u8; 12], attrs: &[u8]) -> Vec<u8> {
        let mut r = vec![0x00, 0x01];
        r.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        r.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        r.extend_from_slice(&txid);
        r.extend_from_slice(attrs);
        r
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn rfc5769_ipv4_xor_mapped_address() {
        // RFC 5769 §2.2: 192.0.2.1:32853 encodes as port 0xa147, address e1 12 a6 43.
        let src: SocketAddr = "192.0.2.1:32853".parse().unwrap();
        let resp = answer(&request([0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae], &[]), src).unwrap();
        assert_eq!(&resp[20..32], &[0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43]);
        assert_eq!(decode_xor_mapped(&resp), Some(src));
    }

    #[test]
    fn rfc5769_ipv6_xor_mapped_address() {
        // RFC 5769 §2.3: 2001:db8:1234:5678:11:2233:4455:6677 port 32853.
        let txid = [0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae];
        let src: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853".parse().unwrap();
        let resp = answer(&request(txid, &[]), src).unwrap();
        let want = [
            0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4,
            0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
        ];
        assert_eq!(&resp[20..44], &want);
        assert_eq!(decode_xor_mapped(&resp), Some(src));
    }

    #[test]
    fn fingerprint_echoed_and_unknown_attributes_refused() {
        let src: SocketAddr = "[::1]:5000".parse().unwrap();
        // A request with a FINGERPRINT that does not match is dropped, one that matches answered.
        let mut req = request([1; 12], &[0x80, 0x28, 0x00, 0x04, 1, 2, 3, 4]);
        assert_eq!(answer(&req, src), Err(StunError::Malformed("FINGERPRINT does not match")));
        let n = req.len();
        let crc = crc32(&req[..n - 8]) ^ FINGERPRINT_XOR;
        req[n - 4..].copy_from_slice(&crc.to_be_bytes());
        let mut after = request([1; 12], &[0x80, 0x28, 0x00, 0x04, 0, 0, 0, 0, 0x80, 0x22, 0, 0]);
        let crc = crc32(&after[..20]) ^ FINGERPRINT_XOR; // a FINGERPRINT right for its position
        after[24..28].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(answer(&after, src), Err(StunError::Malformed("attribute after FINGERPRINT")));
        let resp = answer(&req, src).unwrap();
        let n = resp.len();
        assert_eq!(&resp[n - 8..n - 4], &[0x80, 0x28, 0x00, 0x04]);
        let crc = crc32(&resp[..n - 8]) ^ FINGERPRINT_XOR;
        assert_eq!(&resp[n - 4..], &crc.to_be_bytes());
        let resp = answer(&request([1; 12], &[0x00, 0x33, 0, 0]), src).unwrap();
        assert_eq!(&resp[0..2], &[0x01, 0x11]);
        assert!(answer(&request([1; 12], &[0x00, 0x33, 0, 8]), src).is_err(), "attribute past the end");
        let mut ind = request([1; 12], &[]);
        ind[1] = 0x11; // indication
        assert_eq!(answer(&ind, src), Err(StunError::NotBindingRequest));
    }
}
