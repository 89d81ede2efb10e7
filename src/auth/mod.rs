//! HTTP Digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760 for SHA-256): the
//! proxy's 407 challenges, the check of a phone's credentials, and the client side that answers a
//! carrier's 401/407.
//!
//! Nonces are stateless: a timestamp and a keyed hash of it and the client's source (IPv4
//! address or IPv6 /64), so a challenge costs no memory and a nonce cannot be used from another
//! network or after its lifetime. Sans-IO: time comes in as seconds since the engine started.
//! Must never: accept a response without recomputing it, compare secrets in variable time, or
//! log a password or HA1.

pub mod digest;

pub use digest::{
    answer_challenge, challenge_headers, nonce_time, parse_params, verify, Algorithm, Challenge, Credentials, NonceCounts, Nonces,
    Verdict,
};
pub mod ban;
pub use ban::Bans;
