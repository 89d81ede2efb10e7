//! sixgate: an IPv6-first SIP edge proxy and registrar. See `../shared/DESIGN.md` for the map.
//!
//! Rooms: [`config`] (TOML schema and validation), [`transport`] (sockets, framing, keepalive,
//! STUN), [`message`] (parse + validate + edit SIP messages), [`core`] (the stateless edge:
//! refusals of invalid bytes), [`engine`] (the sans-IO owner of all SIP state: proxy core,
//! dialogs), [`transaction`] (RFC 3261 §17 state machines), [`auth`] (digest), [`routing`]
//! (users, carriers, RFC 3263 DNS), [`registrar`] (bindings, NAT, Outbound, the store), [`media`] (SDP rewriting), [`driver`] (the tokio task that runs the engine),
//! [`server`] (start-up), [`metrics`] (counters).

pub mod auth;
pub mod config;
pub mod driver;
pub mod engine;
pub mod media;
pub mod message;
pub mod registrar;
pub mod core;
pub mod ctl;
pub mod metrics;
pub mod routing;
pub mod transaction;
pub mod transport;
pub mod server;

#[doc(hidden)]
pub mod fuzzing;
